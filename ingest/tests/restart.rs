//! A restarted `ingest` whose host name and pid repeat, as in a restarted container where it
//! runs as pid 1, publishes under a new consumer id. Its frames' message ids start with that
//! id, so JetStream stores its first frames instead of dropping them as duplicates of the
//! previous run's.
//!
//! Each run is made pid 1 of a new pid namespace with `unshare`, which needs root or user
//! namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use monitor_tests::{ProcessBuilder, TestEnv};
use support::stage::*;
use support::*;

const TASK_ID: u64 = 95;
const BATCH_ID: u64 = 9501;

/// Prepares `ingest` as pid 1 of its own pid namespace.
fn ingest_as_pid_1(env: &TestEnv, feed: &FeedReplayProcess) -> ProcessBuilder {
    let unshare = env
        .command("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(monitor_tests::bin("ingest"))
        .envs(env.stage_env());
    fed_by(unshare, feed)
}

#[tokio::test]
async fn restart_as_same_pid_stores_first_frames() {
    let env = TestEnv::new("ingest_restart_same_pid").await;
    let nats = nats_of(&env).await;
    let feed = FeedReplayProcess::start(&env, &["--speed", "2", "--loop"]).await;
    let frames = collect_frames(&nats).await;
    nats.put_batch(&batch(BATCH_ID, TASK_ID, 1, &[(95_001, WETH, None)]))
        .await;
    nats.put_task(&task(TASK_ID, 1, token_rules(), &[BATCH_ID]))
        .await;

    let mut first = ingest_as_pid_1(&env, &feed).spawn("ingest-first");
    frames
        .wait("20 frames of the first run", WAIT_LIMIT, |f| f.len() >= 20)
        .await;
    first.kill().await;
    let first_run = frames.snapshot();
    let first_producer = first_run[0].frame.producer.clone();
    let pid = first_producer
        .strip_prefix(&format!("{}-", env.id()))
        .and_then(|rest| rest.split('-').next());
    assert_eq!(pid, Some("1"), "the first run is pid 1: {first_producer}");

    // The second run starts once the killed run's lease has expired.
    let restarted_ms = monitor_core::time::now_ms();
    let mut second = ingest_as_pid_1(&env, &feed).spawn("ingest-second");
    let is_second = |f: &StoredFrame| f.frame.events[0].ingest_time_ms >= restarted_ms;
    let stored = frames
        .wait("a frame of the second run", WAIT_LIMIT * 2, |f| {
            f.iter().any(is_second)
        })
        .await;
    let second_run = stored.iter().find(|f| is_second(f)).unwrap();
    assert_eq!(
        second_run.frame.seq,
        1,
        "the first frame stored from the second run has seq {}, after {} frames of the first run",
        second_run.frame.seq,
        first_run.len()
    );
    assert_ne!(second_run.frame.producer, first_producer);

    // With `--kill-child`, killing `unshare` kills its ingest too.
    second.kill().await;
}
