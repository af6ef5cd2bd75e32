//! Feed and NATS outages with the real `ingest` binary, the real `devkit feed-replay` and real
//! nats-servers: a killed or stalled feed is re-opened and reported through the status stream,
//! and a stopped NATS server loses no event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use monitor_core::messages::{BatchStatus, EventKind, StatusMessage, StatusScope};
use monitor_tests::{NatsServer, Signal, TestEnv};
use support::stage::*;
use support::*;

const TASK_ID: u64 = 90;
const BATCH_ID: u64 = 9001;

async fn put_one_batch(nats: &Nats) {
    nats.put_batch(&batch(BATCH_ID, TASK_ID, 1, &[(90_001, WETH, None)]))
        .await;
    nats.put_task(&task(TASK_ID, 1, token_rules(), &[BATCH_ID]))
        .await;
}

/// Removes the terminal colour codes of the text log format.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn changes(records: &[StoredStatus]) -> Vec<(BatchStatus, String)> {
    records
        .iter()
        .filter_map(|r| match &r.message {
            StatusMessage::Change(c) => Some((c.status, c.reason.clone().unwrap_or_default())),
            StatusMessage::Heartbeat(_) => None,
        })
        .collect()
}

fn has_change(records: &[StoredStatus], status: BatchStatus, after: usize) -> Option<usize> {
    records
        .iter()
        .enumerate()
        .skip(after)
        .find(|(_, r)| matches!(&r.message, StatusMessage::Change(c) if c.status == status))
        .map(|(i, _)| i)
}

#[tokio::test]
async fn killed_feed_is_reopened_and_reported() {
    let env = TestEnv::new("ingest_killed_feed").await;
    let nats = nats_of(&env).await;
    let mut feed = FeedReplayProcess::start(&env, &["--speed", "2", "--loop"]).await;
    let status = collect_status(&nats).await;
    let frames = collect_frames(&nats).await;
    put_one_batch(&nats).await;
    let mut ingest_process = ingest(&env, &feed, &[]).spawn("ingest");
    let me = consumer_id(&nats.topology.leases, &env, &ingest_process).await;

    let records = status
        .wait("running and a heartbeat with events", WAIT_LIMIT, |r| {
            has_change(r, BatchStatus::Running, 0).is_some()
                && r.iter()
                    .any(|r| matches!(&r.message, StatusMessage::Heartbeat(h) if h.events > 0))
        })
        .await;
    let first = changes(&records);
    assert_eq!(
        first[0].0,
        BatchStatus::Pending,
        "the runner reports pending first: {first:?}"
    );
    let subject = nats.subjects().batch_status(TASK_ID, BATCH_ID);
    assert!(records.iter().all(|r| r.subject == subject));

    feed.kill().await;
    let killed_at = records.len();
    let records = status
        .wait("error while the feed is down", WAIT_LIMIT, |r| {
            has_change(r, BatchStatus::Error, killed_at).is_some()
        })
        .await;
    let error_at = has_change(&records, BatchStatus::Error, killed_at).unwrap();
    let StatusMessage::Change(error) = &records[error_at].message else {
        unreachable!()
    };
    let reason = error.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("connection lost"),
        "error reason: {reason:?}"
    );

    // Heartbeats go on while the feed is down, counting the errors.
    let records = status
        .wait("a heartbeat after the error", WAIT_LIMIT, |r| {
            r[error_at..]
                .iter()
                .any(|r| matches!(&r.message, StatusMessage::Heartbeat(_)))
        })
        .await;
    let heartbeat = records[error_at..]
        .iter()
        .find_map(|r| match &r.message {
            StatusMessage::Heartbeat(h) => Some(h.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(heartbeat.consumer_id, me);
    assert_eq!(
        heartbeat.scope,
        StatusScope::Batch {
            task_id: TASK_ID,
            batch_id: BATCH_ID
        }
    );
    assert_eq!(heartbeat.progress, 100.0, "the only target was seen");
    assert_eq!(heartbeat.item_count, 1);
    assert!(heartbeat.events > 0);
    assert!(heartbeat.errors >= 1);
    assert!(heartbeat.last_error.is_some());
    assert!(heartbeat.last_event_ms.is_some());

    tokio::time::sleep(Duration::from_secs(2)).await;
    feed.start_again().await;
    let restarted_ms = monitor_core::time::now_ms();
    status
        .wait("running again after the restart", WAIT_LIMIT, |r| {
            has_change(r, BatchStatus::Running, error_at).is_some()
        })
        .await;
    frames
        .wait("events after the restart", WAIT_LIMIT, |f| {
            f.iter()
                .flat_map(|f| &f.frame.events)
                .any(|e| e.ingest_time_ms > restarted_ms)
        })
        .await;
    assert!(
        ingest_process
            .wait_for_log("feed gap closed", WAIT_LIMIT)
            .await,
        "the gap is logged"
    );
    let log = strip_ansi(&ingest_process.log());
    let gap_line = log.lines().find(|l| l.contains("feed gap closed")).unwrap();
    assert!(gap_line.contains("gap_ms="), "{gap_line}");
    assert!(gap_line.contains("gaps_total=1"), "{gap_line}");

    ingest_process.terminate().await;
    let records = status
        .wait("stopped with a reason", WAIT_LIMIT, |r| {
            has_change(r, BatchStatus::Stopped, 0).is_some()
        })
        .await;
    let stopped = changes(&records);
    let (_, reason) = stopped
        .iter()
        .find(|(s, _)| *s == BatchStatus::Stopped)
        .unwrap();
    assert_eq!(reason, "ingest is shutting down");
}

#[tokio::test]
async fn stalled_feed_is_replaced() {
    let env = TestEnv::new("ingest_stalled_feed").await;
    let nats = nats_of(&env).await;
    let mut feed = FeedReplayProcess::start(&env, &["--speed", "1", "--loop"]).await;
    let status = collect_status(&nats).await;
    put_one_batch(&nats).await;
    let mut ingest_process = ingest(&env, &feed, &[("FEED_STALL_TIMEOUT", "3")]).spawn("ingest");

    status
        .wait("running", WAIT_LIMIT, |r| {
            has_change(r, BatchStatus::Running, 0).is_some()
        })
        .await;
    // A frozen server keeps the socket open but sends no frame and no pong.
    feed.process.as_mut().unwrap().send_signal(Signal::SIGSTOP);
    let records = status
        .wait("error after the stall timeout", WAIT_LIMIT, |r| {
            has_change(r, BatchStatus::Error, 0).is_some()
        })
        .await;
    let error = changes(&records)
        .into_iter()
        .find(|(s, _)| *s == BatchStatus::Error)
        .unwrap();
    assert!(error.1.contains("stalled"), "error reason: {:?}", error.1);

    feed.process.as_mut().unwrap().send_signal(Signal::SIGCONT);
    let error_at = has_change(&records, BatchStatus::Error, 0).unwrap();
    status
        .wait("running again", WAIT_LIMIT, |r| {
            has_change(r, BatchStatus::Running, error_at).is_some()
        })
        .await;
    ingest_process.terminate().await;
}

/// Connects to a private server with the test's prefix and makes its streams and buckets.
#[tokio::test]
async fn nats_outage_buffers_then_publishes_in_order() {
    let env = TestEnv::new("ingest_nats_outage").await;
    let mut server = NatsServer::start(&env).await;
    let nats = nats_on(&server, &env).await;
    let feed = FeedReplayProcess::start(&env, &["--speed", "5"]).await;
    put_one_batch(&nats).await;
    let ingest_process = ingest(&env, &feed, &[("MAX_BUFFERED_EVENTS", "50")])
        .env("NATS_URL", server.url())
        .spawn("ingest");

    let mut reader = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut seen = Vec::new();
    read_frames_until(&mut reader, &mut seen, "the first events", |f| {
        !f.is_empty()
    })
    .await;
    drop(reader);

    // The outage is shorter than the lease TTL, so the batch keeps its lease and keeps
    // reading until its buffer is full.
    server.stop().await;
    assert!(
        ingest_process
            .wait_for_log("event buffer full, feed reads paused", WAIT_LIMIT)
            .await,
        "the runner stops reading its feed when the buffer is full"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.start_again().await;
    let nats = nats_on(&server, &env).await;

    let recorded = recorded_trades(usize::MAX);
    let trades_in = |frames: &[Published]| {
        frames
            .iter()
            .flat_map(|p| &p.frame.events)
            .filter(|e| matches!(e.kind, EventKind::Trade(_)))
            .count()
    };
    let mut reader = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut frames = Vec::new();
    read_frames_until(
        &mut reader,
        &mut frames,
        "400 trades after the outage",
        |f| trades_in(f) >= 400,
    )
    .await;
    assert!(
        ingest_process
            .log()
            .contains("event buffer half empty, feed reads resumed"),
        "reads resume once NATS takes the buffer"
    );

    let seqs: Vec<u64> = frames.iter().map(|p| p.frame.seq).collect();
    assert_eq!(
        seqs,
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "every frame stored once, in order"
    );
    let trades: Vec<(i64, f64)> = frames
        .iter()
        .flat_map(|p| &p.frame.events)
        .filter_map(|e| match &e.kind {
            EventKind::Trade(t) => Some((e.source_time_ms, t.volume_usd)),
            _ => None,
        })
        .collect();
    for (i, (time_ms, volume)) in trades.iter().enumerate() {
        assert_eq!(
            (*time_ms, *volume),
            (recorded[i].time_ms, recorded[i].cost),
            "trade {i} differs from the replay: one was lost or reordered"
        );
    }
}
