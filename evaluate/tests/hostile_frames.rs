//! Hostile event frames for the evaluate consumer, on a real nats-server.
//!
//! Ingest validates what it publishes, so these frames come only from a faulty or hostile
//! producer on the events subjects. Each test publishes one such frame and then a good one,
//! and checks the one-line reason with which the hostile frame is dead-lettered (or, for a
//! large frame, that it is judged), and that the good frame's alert still arrives, so the
//! consumer went on. `docs/hostile-inputs.md` lists them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use monitor_core::messages::{Alert, Event};
use monitor_evaluate::consumer::DEAD_REASON_HEADER;

/// What the consumer did with a hostile frame followed by a good one.
struct Outcome {
    alerts: Vec<Alert>,
    dead_reasons: Vec<String>,
}

const GOOD_TIME: i64 = T0 + 3_600_000;

/// Publishes `hostile` as frame 1 and a good frame 2, and returns what settled.
async fn judge(test: &str, hostile: Vec<Event>) -> Outcome {
    let pipeline = Pipeline::new(test).await.unwrap();
    pipeline.put_task(&task_spec(TASK_ID)).await.unwrap();
    pipeline.put_batch(&batch_spec(TASK_ID)).await.unwrap();
    let evaluate = pipeline.start();

    pipeline
        .publish_frame(&frame(TASK_ID, 1, hostile))
        .await
        .unwrap();
    pipeline
        .publish_frame(&frame(
            TASK_ID,
            2,
            vec![trade_event(GOOD_TIME, 20_000.0, 0.0)],
        ))
        .await
        .unwrap();
    pipeline.wait_settled().await.unwrap();

    let alerts: Vec<Alert> = pipeline
        .alerts()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert!(
        alerts.iter().any(|a| a.event_time_ms == GOOD_TIME),
        "the good frame after the hostile one is judged: {alerts:?}"
    );
    let dead_reasons = pipeline
        .dead_letters()
        .await
        .unwrap()
        .iter()
        .map(|m| header(m, DEAD_REASON_HEADER).unwrap_or_default().to_owned())
        .collect();
    evaluate.stop().await.unwrap();
    Outcome {
        alerts,
        dead_reasons,
    }
}

/// Asserts that the hostile frame was dead-lettered with `reason` and raised no alert.
fn assert_dead_lettered(outcome: &Outcome, reason: &str) {
    assert_eq!(outcome.dead_reasons, vec![reason.to_owned()]);
    assert!(!reason.contains('\n'));
    let hostile: Vec<&Alert> = outcome
        .alerts
        .iter()
        .filter(|a| a.event_time_ms != GOOD_TIME)
        .collect();
    assert!(
        hostile.is_empty(),
        "the hostile frame raised alerts: {hostile:?}"
    );
}

#[tokio::test]
async fn nan_volume_in_event() {
    let outcome = judge("nan_volume", vec![trade_event(T0, f64::NAN, 0.0)]).await;
    assert_dead_lettered(
        &outcome,
        "invalid event frame ingest-test:410:1: event 0 has trade.volume_usd = NaN, expected a finite number >= 0",
    );
}

#[tokio::test]
async fn infinite_volume_in_event() {
    let outcome = judge("infinite_volume", vec![trade_event(T0, 1.0, f64::INFINITY)]).await;
    assert_dead_lettered(
        &outcome,
        "invalid event frame ingest-test:410:1: event 0 has window.volume_usd = inf, expected a finite number >= 0",
    );
}

#[tokio::test]
async fn negative_volume_in_event() {
    let outcome = judge("negative_volume", vec![trade_event(T0, -20_000.0, 0.0)]).await;
    assert_dead_lettered(
        &outcome,
        "invalid event frame ingest-test:410:1: event 0 has trade.volume_usd = -20000, expected a finite number >= 0",
    );
}

#[tokio::test]
async fn source_time_far_in_future() {
    let mut event = trade_event(T0, 20_000.0, 0.0);
    event.source_time_ms = i64::MAX;
    let outcome = judge("future_time", vec![event]).await;
    assert_dead_lettered(
        &outcome,
        "invalid event frame ingest-test:410:1: event 0 has source_time_ms = 9223372036854775807, expected a time between 1970 and 2200",
    );
}

#[tokio::test]
async fn source_time_far_in_past() {
    let mut event = trade_event(T0, 20_000.0, 0.0);
    event.source_time_ms = i64::MIN;
    let outcome = judge("past_time", vec![event]).await;
    assert_dead_lettered(
        &outcome,
        "invalid event frame ingest-test:410:1: event 0 has source_time_ms = -9223372036854775808, expected a time between 1970 and 2200",
    );
}

/// 2,000 events (about 860 KB, under NATS' 1 MiB payload limit; ingest sends at most 256) are
/// judged like any frame: none reaches a threshold, so only the good frame alerts.
#[tokio::test]
async fn frame_with_2000_events() {
    let events: Vec<Event> = (0..2_000).map(|i| trade_event(T0 + i, 1.0, 1.0)).collect();
    let outcome = judge("two_thousand_events", events).await;
    assert!(
        outcome.dead_reasons.is_empty(),
        "{:?}",
        outcome.dead_reasons
    );
    assert_eq!(outcome.alerts.len(), 1, "{:?}", outcome.alerts);
}
