//! Task lifecycle end to end: a task switched off (status 0 or del_flag 1) leaves the tasks
//! bucket and ingest stops its batch, closing the feed connections; switched on again it comes
//! back. A second config linked to a task is ignored with a warning.

// The test prints how long each switch took, for `--nocapture`, and panics on a broken set-up:
// a panic is the test failure.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

mod control_plane_support;

use std::time::Instant;

use control_plane_support::*;
use monitor_core::messages::{BatchStatus, StatusMessage};
use monitor_tests::{wait_until, Process, TestEnv};

const LARGE_TRADES: &str = r#"{"large_trade": {"side": "any"}, "cooldown_sec": 1}"#;
const VOLUME: &str = r#"{"volume": {"window_sec": 60, "min_volume_usd": 1000}}"#;

/// Stream sequences of the batch's status changes to `status`.
async fn status_changes(bus: &Bus, task_id: u64, batch_id: u64, status: BatchStatus) -> Vec<u64> {
    let subject = bus.subjects.batch_status(task_id, batch_id);
    bus.statuses(task_id)
        .await
        .into_iter()
        .filter(|(_, s, _)| *s == subject)
        .filter_map(|(sequence, _, message)| match message {
            StatusMessage::Change(change) if change.status == status => Some(sequence),
            _ => None,
        })
        .collect()
}

/// Waits until the batch has published `status` after stream sequence `after`; returns its
/// sequence.
async fn wait_status_after(
    bus: &Bus,
    task_id: u64,
    batch_id: u64,
    status: BatchStatus,
    after: u64,
) -> Option<u64> {
    monitor_tests::wait_for(LIMIT, POLL, || async {
        status_changes(bus, task_id, batch_id, status)
            .await
            .into_iter()
            .find(|sequence| *sequence > after)
    })
    .await
}

fn count(process: &Process, text: &str) -> usize {
    process.log().matches(text).count()
}

/// Switches the task off with `status`/`del_flag`, checks that its batch stops and its feed
/// connections close, then switches it on and checks that the batch runs again.
async fn switch_off_and_on(
    env: &TestEnv,
    bus: &Bus,
    feed: &Process,
    task_id: u64,
    batch_id: u64,
    off: (i8, i8),
    running_at: u64,
) -> u64 {
    let closed_before = count(feed, "feed-replay connection closed");
    let opened_before = count(feed, "feed-replay connection opened");

    let switched = Instant::now();
    set_task_flags(env, task_id, off.0, off.1).await;
    let gone = wait_until(LIMIT, POLL, || async {
        bus.task_spec(task_id).await.is_none()
    })
    .await;
    assert!(
        gone,
        "task {task_id} left the tasks bucket after status {} del_flag {}",
        off.0, off.1
    );
    let stopped = wait_status_after(bus, task_id, batch_id, BatchStatus::Stopped, running_at).await;
    assert!(stopped.is_some(), "batch {batch_id} published stopped");
    let closed = wait_until(LIMIT, POLL, || async {
        count(feed, "feed-replay connection closed") >= closed_before + 2
    })
    .await;
    assert!(
        closed,
        "both feed connections of batch {batch_id} closed:\n{}",
        feed.log()
    );
    println!(
        "status {} del_flag {}: batch stopped {:?} after the switch",
        off.0,
        off.1,
        switched.elapsed()
    );

    let switched = Instant::now();
    set_task_flags(env, task_id, 1, 0).await;
    let back = bus
        .wait_task(task_id, |s| {
            s.batches.iter().any(|b| b.batch_id == batch_id)
        })
        .await;
    assert!(back.is_some(), "task {task_id} published again");
    let running = wait_status_after(
        bus,
        task_id,
        batch_id,
        BatchStatus::Running,
        stopped.unwrap_or(0),
    )
    .await;
    assert!(running.is_some(), "batch {batch_id} runs again");
    let reopened = count(feed, "feed-replay connection opened") >= opened_before + 2;
    assert!(
        reopened,
        "ingest opened new feed connections:\n{}",
        feed.log()
    );
    println!(
        "switched on: batch running {:?} after the switch",
        switched.elapsed()
    );
    running.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_task_stops_and_comes_back() {
    let env = TestEnv::new("cp_lifecycle").await;
    let bus = Bus::new(&env).await;
    let config_id = insert_config(
        &env,
        &ConfigValues {
            events_config: LARGE_TRADES,
            min_transaction_usd: 1.0,
            version: 1,
        },
    )
    .await;
    let task_id = insert_task(&env, "smart", config_id).await;
    insert_target(&env, task_id, WETH).await;
    let (feed, feed_url) = start_feed(&env, &[WETH], &["--speed", "5", "--loop"]).await;
    let _allocator = start_allocator(&env, &[("CONFIG_POLL_INTERVAL", "0.5")]);
    let _ingest = start_ingest(&env, &feed_url);
    let spec = bus
        .wait_task(task_id, |s| !s.batches.is_empty())
        .await
        .expect("task published");
    let batch_id = spec.batches[0].batch_id;
    let running = wait_status_after(&bus, task_id, batch_id, BatchStatus::Running, 0)
        .await
        .expect("batch runs");

    let running = switch_off_and_on(&env, &bus, &feed, task_id, batch_id, (0, 0), running).await;
    switch_off_and_on(&env, &bus, &feed, task_id, batch_id, (1, 1), running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_config_is_ignored_with_warning() {
    let env = TestEnv::new("cp_two_configs").await;
    let bus = Bus::new(&env).await;
    let first = insert_config(
        &env,
        &ConfigValues {
            events_config: LARGE_TRADES,
            min_transaction_usd: 1.0,
            version: 1,
        },
    )
    .await;
    let second = insert_config(
        &env,
        &ConfigValues {
            events_config: VOLUME,
            min_transaction_usd: 1.0,
            version: 1,
        },
    )
    .await;
    let task_id = insert_task(&env, "smart", first).await;
    insert_target(&env, task_id, WETH).await;
    let allocator = start_allocator(&env, &[("CONFIG_POLL_INTERVAL", "0.5")]);
    assert!(
        bus.wait_task(task_id, |_| true).await.is_some(),
        "task published"
    );

    link_config(&env, task_id, second, 1).await;
    let warned = allocator
        .wait_for_log(
            "task links more than one config, only the first is used",
            LIMIT,
        )
        .await;

    assert!(
        warned,
        "the allocator warns about the second config:\n{}",
        allocator.log()
    );
    let warning = strip_colours(&allocator.log())
        .lines()
        .find(|line| line.contains("task links more than one config"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        warning.contains(&format!("ignored=[{second}]")),
        "{warning}"
    );
    let spec = bus.task_spec(task_id).await.expect("task spec");
    let config = spec.config.expect("config in force");
    assert_eq!(config.config_id, first, "the first config stays in force");
    assert!(config
        .rules
        .as_token()
        .expect("token rules")
        .volume
        .is_none());
}
