//! The evaluate consumer against a real nats-server: alerts, deduplication, dead letters,
//! unknown tasks and two instances sharing the durable consumer.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::datetime;
use common::*;
use monitor_core::codec;
use monitor_core::messages::{AlertType, MESSAGE_VERSION};
use monitor_evaluate::consumer::{DEAD_REASON_HEADER, DEAD_SOURCE_SUBJECT_HEADER};

#[tokio::test]
async fn frame_alerts_reach_alerts_stream() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("alerts").await?;
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.put_batch(&batch_spec(TASK_ID)).await?;
    let evaluate = pipeline.start();

    // One trade that is large and lifts the window's volume over its minimum.
    pipeline
        .publish_frame(&frame(
            TASK_ID,
            1,
            vec![trade_event(T0, 20_000.0, 150_000.0)],
        ))
        .await?;
    pipeline.wait_settled().await?;

    let alerts = pipeline.alerts().await?;
    let bucket = T0 / 1000 / i64::from(COOLDOWN_SEC);
    let ids: Vec<&str> = alerts.iter().map(|(_, a)| a.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            format!("{TASK_ID}:{WETH}:large_trade:{bucket}"),
            format!("{TASK_ID}:{WETH}:volume_change:{bucket}"),
        ]
    );
    for (message, alert) in &alerts {
        assert_eq!(header(message, "Nats-Msg-Id"), Some(alert.id.as_str()));
        assert_eq!(message.subject.as_str(), pipeline.subjects.alerts(TASK_ID));
        assert_eq!((alert.config_id, alert.config_version), (5, 2));
        assert_eq!(alert.batch_id, Some(BATCH_ID));
        assert_eq!(alert.target_id, Some(TARGET_ID));
        assert_eq!(alert.token_symbol.as_deref(), Some("WETH"));
        assert_eq!(alert.token_name.as_deref(), Some("Wrapped Ether"));
        assert_eq!(alert.event_time_ms, T0);
        assert_eq!(alert.price, Some(2000.0));
        assert_eq!(alert.market_cap, Some(5e9));
    }
    let large = &alerts[0].1;
    assert_eq!(large.alert_type, AlertType::LargeTrade);
    assert_eq!(large.findings.len(), 1);
    assert_eq!(large.findings[0].observed, 20_000.0);
    assert_eq!(large.findings[0].threshold, 10_000.0);
    let volume = &alerts[1].1;
    assert_eq!(volume.findings[0].observed, 150_000.0);
    assert_eq!(volume.findings[0].window_sec, Some(60));
    assert_eq!(volume.first_event_time_ms, Some(T0 - 30_000));
    assert!(pipeline.dead_letters().await?.is_empty());

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn same_frame_twice_yields_one_alert() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("dedup").await?;
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.put_batch(&batch_spec(TASK_ID)).await?;
    let evaluate = pipeline.start();

    // Two frames with the same events under different message ids, as when ingest restarts
    // and publishes a frame again: the events stream stores both.
    let events = vec![trade_event(T0, 20_000.0, 0.0)];
    pipeline
        .publish_frame(&frame(TASK_ID, 1, events.clone()))
        .await?;
    pipeline.publish_frame(&frame(TASK_ID, 2, events)).await?;
    pipeline.wait_settled().await?;

    let stored_frames = pipeline
        .stream_messages(&pipeline.subjects.events_stream())
        .await?;
    assert_eq!(stored_frames.len(), 2);
    let alerts = pipeline.alerts().await?;
    assert_eq!(
        alerts.len(),
        1,
        "alerts: {:?}",
        alerts.iter().map(|(_, a)| &a.id).collect::<Vec<_>>()
    );
    assert_eq!(alerts[0].1.alert_type, AlertType::LargeTrade);

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn garbage_frame_is_dead_lettered() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("garbage").await?;
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.put_batch(&batch_spec(TASK_ID)).await?;
    let evaluate = pipeline.start();

    let subject =
        pipeline
            .subjects
            .batch_events(monitor_core::messages::Chain::Eth, TASK_ID, BATCH_ID);
    let garbage = b"\xc1\xff not msgpack".to_vec();
    pipeline
        .publish_raw(&subject, "garbage-1", garbage.clone())
        .await?;
    // The consumer goes on with the next frame.
    pipeline
        .publish_frame(&frame(TASK_ID, 1, vec![trade_event(T0, 20_000.0, 0.0)]))
        .await?;
    pipeline.wait_settled().await?;

    let dead = pipeline.dead_letters().await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subject.as_str(), pipeline.subjects.dead("evaluate"));
    assert_eq!(dead[0].payload.as_ref(), garbage.as_slice());
    assert_eq!(
        header(&dead[0], DEAD_SOURCE_SUBJECT_HEADER),
        Some(subject.as_str())
    );
    let reason = header(&dead[0], DEAD_REASON_HEADER).unwrap_or_default();
    assert!(
        reason.starts_with("failed to decode event frame (14 bytes)"),
        "reason: {reason}"
    );

    let alerts = pipeline.alerts().await?;
    assert_eq!(alerts.len(), 1);

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn newer_frame_version_is_dead_lettered() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("version").await?;
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.put_batch(&batch_spec(TASK_ID)).await?;
    let evaluate = pipeline.start();

    let mut newer = frame(TASK_ID, 1, vec![trade_event(T0, 20_000.0, 0.0)]);
    newer.v = MESSAGE_VERSION + 1;
    pipeline.publish_frame(&newer).await?;
    pipeline.wait_settled().await?;

    let dead = pipeline.dead_letters().await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.as_ref(), codec::encode(&newer)?.as_slice());
    let expected = format!(
        "unsupported event frame version {}, this build reads up to {MESSAGE_VERSION}",
        MESSAGE_VERSION + 1
    );
    assert_eq!(
        header(&dead[0], DEAD_REASON_HEADER),
        Some(expected.as_str())
    );
    assert!(pipeline.alerts().await?.is_empty());

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn unknown_task_is_dead_lettered_after_timeout() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("unknown").await?;
    let timeout = Duration::from_secs(1);
    let mut settings = pipeline.settings.clone();
    settings.unknown_task_timeout = timeout;
    let evaluate = pipeline.start_with(settings);

    let orphan = frame(999, 1, vec![trade_event(T0, 20_000.0, 0.0)]);
    pipeline.publish_frame(&orphan).await?;
    wait_for("the frame in the dead stream", || async {
        Ok(!pipeline.dead_letters().await?.is_empty())
    })
    .await?;
    pipeline.wait_settled().await?;

    let dead = pipeline.dead_letters().await?;
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0], DEAD_REASON_HEADER).unwrap_or_default();
    assert_eq!(
        reason,
        "task 999 is not in the tasks bucket, 1s after the frame's first delivery"
    );
    assert_eq!(
        header(&dead[0], DEAD_SOURCE_SUBJECT_HEADER),
        Some(pipeline.frame_subject(&orphan).as_str())
    );

    // Both times are the server's, so the comparison does not depend on this machine's clock.
    let stored = pipeline
        .stream_messages(&pipeline.subjects.events_stream())
        .await?;
    let stored_at = stored[0].time;
    let dead_at = dead[0].time;
    assert!(
        datetime::add_std_duration(stored_at, timeout).map_err(anyhow::Error::msg)? <= dead_at,
        "dead-lettered at {dead_at}, before the timeout since {stored_at}"
    );
    assert!(pipeline.alerts().await?.is_empty());

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn stored_frame_of_unknown_task_gets_whole_timeout_from_first_delivery() -> anyhow::Result<()>
{
    let pipeline = Pipeline::new("backlog").await?;
    let timeout = Duration::from_secs(2);
    let orphan = frame(999, 1, vec![trade_event(T0, 20_000.0, 0.0)]);
    pipeline.publish_frame(&orphan).await?;
    // The frame waits in the stream for longer than the timeout before evaluate starts, as a
    // backlog does after an outage. Its first delivery is after the start.
    tokio::time::sleep(timeout + Duration::from_secs(1)).await;
    let started = datetime::now();
    let mut settings = pipeline.settings.clone();
    settings.unknown_task_timeout = timeout;
    let evaluate = pipeline.start_with(settings);

    wait_for("the frame in the dead stream", || async {
        Ok(!pipeline.dead_letters().await?.is_empty())
    })
    .await?;
    let dead_at = pipeline.dead_letters().await?[0].time;
    // The server and this test read the same machine clock.
    assert!(
        datetime::add_std_duration(started, timeout).map_err(anyhow::Error::msg)? <= dead_at,
        "dead-lettered at {dead_at}, before the timeout since the start at {started}"
    );
    let info = pipeline.consumer_info().await?.expect("consumer exists");
    assert!(
        info.delivered.consumer_sequence >= 2,
        "the frame was redelivered before it was given up: {info:?}"
    );

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn frame_waits_for_task_that_arrives_later() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("late_task").await?;
    let mut settings = pipeline.settings.clone();
    settings.unknown_task_timeout = Duration::from_secs(30);
    let evaluate = pipeline.start_with(settings);

    pipeline
        .publish_frame(&frame(TASK_ID, 1, vec![trade_event(T0, 20_000.0, 0.0)]))
        .await?;
    // The frame is delivered while its task is unknown, so it is nakked. Once the task and
    // its batch are in the bucket, the redelivery is judged.
    wait_for("the first delivery", || async {
        Ok(pipeline
            .consumer_info()
            .await?
            .is_some_and(|info| info.delivered.stream_sequence >= 1))
    })
    .await?;
    assert!(pipeline.alerts().await?.is_empty());
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.put_batch(&batch_spec(TASK_ID)).await?;
    wait_for("the alert", || async {
        Ok(!pipeline.alerts().await?.is_empty())
    })
    .await?;
    pipeline.wait_settled().await?;

    let alerts = pipeline.alerts().await?;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].1.token_symbol.as_deref(), Some("WETH"));
    assert!(pipeline.dead_letters().await?.is_empty());
    let info = pipeline.consumer_info().await?.expect("consumer exists");
    assert!(
        info.num_redelivered >= 1 || info.delivered.consumer_sequence >= 2,
        "the frame was redelivered: {info:?}"
    );

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn removed_task_frame_is_dead_lettered() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("removed").await?;
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.delete_task(TASK_ID).await?;
    // A long timeout: the frame must go to the dead stream because its task was removed, not
    // because the wait for an unknown task ran out.
    let mut settings = pipeline.settings.clone();
    settings.unknown_task_timeout = Duration::from_secs(600);
    let evaluate = pipeline.start_with(settings);

    let orphan = frame(TASK_ID, 1, vec![trade_event(T0, 20_000.0, 0.0)]);
    pipeline.publish_frame(&orphan).await?;
    pipeline.wait_settled().await?;

    let dead = pipeline.dead_letters().await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.as_ref(), codec::encode(&orphan)?.as_slice());
    assert_eq!(
        header(&dead[0], DEAD_REASON_HEADER),
        Some(format!("task {TASK_ID} was removed from the tasks bucket").as_str())
    );
    assert_eq!(
        header(&dead[0], DEAD_SOURCE_SUBJECT_HEADER),
        Some(pipeline.frame_subject(&orphan).as_str())
    );
    assert!(pipeline.alerts().await?.is_empty());

    evaluate.stop().await?;
    Ok(())
}

#[tokio::test]
async fn two_instances_store_each_alert_once() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("two").await?;
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.put_batch(&batch_spec(TASK_ID)).await?;
    let mut settings = pipeline.settings.clone();
    // Small pulls spread the frames over both instances.
    settings.pull_batch = 4;
    let first = pipeline.start_with(settings.clone());
    let second = pipeline.start_with(settings);

    // Each frame has a large trade in its own cooldown bucket, so its own alert id. Every
    // frame is published twice under different message ids, so both instances may judge the
    // same events.
    const FRAMES: u64 = 60;
    for seq in 0..FRAMES {
        let time_ms = T0 + seq as i64 * i64::from(COOLDOWN_SEC) * 1000;
        let events = vec![trade_event(time_ms, 20_000.0, 0.0)];
        pipeline
            .publish_frame(&frame(TASK_ID, seq, events.clone()))
            .await?;
        pipeline
            .publish_frame(&frame(TASK_ID, FRAMES + seq, events))
            .await?;
    }
    pipeline.wait_settled().await?;

    let alerts = pipeline.alerts().await?;
    let ids: HashSet<&str> = alerts.iter().map(|(_, a)| a.id.as_str()).collect();
    assert_eq!(alerts.len(), FRAMES as usize);
    assert_eq!(ids.len(), FRAMES as usize);
    assert!(pipeline.dead_letters().await?.is_empty());

    first.stop().await?;
    second.stop().await?;
    Ok(())
}

#[tokio::test]
async fn failed_alert_publish_retries_frame() -> anyhow::Result<()> {
    let pipeline = Pipeline::new("publish_failure").await?;
    pipeline.put_task(&task_spec(TASK_ID)).await?;
    pipeline.put_batch(&batch_spec(TASK_ID)).await?;
    let mut settings = pipeline.settings.clone();
    settings.unknown_task_timeout = Duration::from_secs(3);
    let evaluate = pipeline.start_with(settings);
    wait_for("the evaluate consumer", || async {
        Ok(pipeline.consumer_info().await?.is_some())
    })
    .await?;

    // Without the alerts stream, no publish of an alert is acknowledged. Evaluate created the
    // stream at start and does not create it again while it runs.
    pipeline
        .js
        .delete_stream(pipeline.subjects.alerts_stream())
        .await?;
    pipeline
        .publish_frame(&frame(TASK_ID, 1, vec![trade_event(T0, 20_000.0, 0.0)]))
        .await?;
    wait_for("the frame nakked and redelivered", || async {
        Ok(pipeline
            .consumer_info()
            .await?
            .is_some_and(|info| info.num_redelivered >= 1 && info.ack_floor.stream_sequence == 0))
    })
    .await?;

    // Once the stream is back, the retried frame's alert is stored.
    monitor_core::topology::ensure(&pipeline.js, &pipeline.settings.nats).await?;
    wait_for("the alert", || async {
        Ok(!pipeline.alerts().await?.is_empty())
    })
    .await?;
    pipeline.wait_settled().await?;
    assert_eq!(pipeline.alerts().await?.len(), 1);
    assert!(pipeline.dead_letters().await?.is_empty());

    evaluate.stop().await?;
    Ok(())
}
