//! Epochs end to end: targets added and removed while events flow switch the task to new
//! epochs without missing an event of an unchanged target or storing an alert twice; old
//! epochs stop only after the new ones run and their rows go after the grace period; an epoch
//! written by another writer (the Java side) is followed.
//!
//! `devkit feed-replay --live` plays a live feed: a connection opened during a switch gets only
//! the trades due from then on, so a gap between the old batch stopping and the new one
//! subscribing would be a hole in the stored events.

// The test prints the switch figures for `--nocapture`, and panics on a broken set-up: a panic
// is the test failure.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

mod control_plane_support;

use std::collections::{BTreeMap, BTreeSet};

use control_plane_support::*;
use monitor_core::messages::{BatchStatus, EventKind, StatusMessage, TaskSpec};
use monitor_tests::recorded::load_trades;
use monitor_tests::{wait_until, TestEnv};

const LARGE_TRADES: &str = r#"{"large_trade": {"side": "any"}, "cooldown_sec": 1}"#;
/// Shift between two passes of the looping replay: the recorded span (207 s) rounded up to
/// whole minutes.
const PASS_MS: i64 = 240_000;

/// Time (`sent_ms`, the ingest's clock when the batch changed) of each batch's first change
/// to `status`. Stream order may differ, because each runner publishes its own changes.
async fn first_status(bus: &Bus, task_id: u64, status: BatchStatus) -> BTreeMap<u64, i64> {
    let mut first = BTreeMap::new();
    for (_, subject, message) in bus.statuses(task_id).await {
        let StatusMessage::Change(change) = message else {
            continue;
        };
        let Some(batch_id) = subject
            .rsplit('.')
            .next()
            .and_then(|id| id.parse::<u64>().ok())
        else {
            continue;
        };
        if change.status == status && subject != bus.subjects.task_status(task_id) {
            first.entry(batch_id).or_insert(change.sent_ms);
        }
    }
    first
}

/// Waits until the task is at `epoch` and every batch of it runs; returns the spec.
async fn wait_epoch_running(bus: &Bus, task_id: u64, epoch: u32) -> TaskSpec {
    let spec = bus
        .wait_task(task_id, |s| s.epoch == epoch)
        .await
        .unwrap_or_else(|| panic!("task {task_id} reaches epoch {epoch}"));
    let running = wait_until(LIMIT, POLL, || async {
        let running = first_status(bus, task_id, BatchStatus::Running).await;
        spec.batches
            .iter()
            .all(|b| running.contains_key(&b.batch_id))
    })
    .await;
    assert!(
        running,
        "every batch of epoch {epoch} runs: {:?}",
        spec.batches
    );
    spec
}

/// Checks that every batch of `old` stopped, and only after every batch of `new` ran.
async fn assert_stopped_after_new_ran(bus: &Bus, task_id: u64, old: &TaskSpec, new: &TaskSpec) {
    let stopped = wait_until(LIMIT, POLL, || async {
        let stopped = first_status(bus, task_id, BatchStatus::Stopped).await;
        old.batches
            .iter()
            .all(|b| stopped.contains_key(&b.batch_id))
    })
    .await;
    assert!(stopped, "every batch of epoch {} stopped", old.epoch);
    let running = first_status(bus, task_id, BatchStatus::Running).await;
    let stopped = first_status(bus, task_id, BatchStatus::Stopped).await;
    let last_new_running = new
        .batches
        .iter()
        .map(|b| running[&b.batch_id])
        .max()
        .unwrap();
    for batch in &old.batches {
        assert!(
            stopped[&batch.batch_id] >= last_new_running,
            "batch {} of epoch {} stopped (at {} ms) before epoch {} ran (at {last_new_running} ms)",
            batch.batch_id,
            old.epoch,
            stopped[&batch.batch_id],
            new.epoch
        );
    }
}

/// Distinct trades of a target in the task's stored frames: transaction hashes per source
/// time in milliseconds.
fn trades_by_time(
    frames: &[monitor_core::messages::EventFrame],
    address: &str,
) -> BTreeMap<i64, BTreeSet<String>> {
    let mut trades: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for event in frames.iter().flat_map(|f| f.events.iter()) {
        let EventKind::Trade(trade) = &event.kind else {
            continue;
        };
        if event.target.as_ref().is_some_and(|t| t.address == address) {
            let hash = trade
                .tx_hash
                .clone()
                .expect("feed-replay trades carry a hash");
            trades.entry(event.source_time_ms).or_default().insert(hash);
        }
    }
    trades
}

/// The number of recorded trades at each replayed time within `first ..= last`.
fn expected_trades(first: i64, last: i64) -> BTreeMap<i64, usize> {
    let recorded = load_trades(&trades_csv()).expect("the recorded trades load");
    let mut expected: BTreeMap<i64, usize> = BTreeMap::new();
    for pass in 0..=(last - recorded[0].time_ms) / PASS_MS {
        for trade in &recorded {
            let time = trade.time_ms + pass * PASS_MS;
            if (first..=last).contains(&time) {
                *expected.entry(time).or_default() += 1;
            }
        }
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_switches_miss_no_event_and_repeat_no_alert() {
    let env = TestEnv::new("cp_epochs").await;
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
    let task_id = insert_task(&env, "batch", config_id).await;
    let mut targets = BTreeMap::new();
    for address in [WETH, DAI, USDC] {
        targets.insert(address, insert_target(&env, task_id, address).await);
    }
    let (_feed, feed_url) = start_feed(
        &env,
        &[WETH, DAI, USDC, LINK],
        &["--speed", "2", "--loop", "--live"],
    )
    .await;
    let _allocator = start_allocator(
        &env,
        &[
            ("CONFIG_POLL_INTERVAL", "0.5"),
            ("BATCH_SIZE", "2"),
            ("EPOCH_GRACE_PERIOD", "3"),
        ],
    );
    let _ingest = start_ingest(&env, &feed_url);
    let _evaluate = start_evaluate(&env);

    let epoch1 = wait_epoch_running(&bus, task_id, 1).await;
    assert_eq!(epoch1.batches.len(), 2, "three targets in batches of two");
    let flowing = wait_until(LIMIT, POLL, || async {
        let frames = bus.frames(task_id).await;
        [WETH, DAI, USDC]
            .iter()
            .all(|a| !trades_by_time(&frames, a).is_empty())
    })
    .await;
    assert!(flowing, "trades of every target reach the events stream");

    // Add a target: epoch 2.
    insert_target(&env, task_id, LINK).await;
    let epoch2 = wait_epoch_running(&bus, task_id, 2).await;
    assert_stopped_after_new_ran(&bus, task_id, &epoch1, &epoch2).await;

    // Remove a target: epoch 3.
    set_target_status(&env, targets[USDC], 0).await;
    let epoch3 = wait_epoch_running(&bus, task_id, 3).await;
    assert_stopped_after_new_ran(&bus, task_id, &epoch2, &epoch3).await;
    let epoch3_batches: BTreeSet<u64> = epoch3.batches.iter().map(|b| b.batch_id).collect();
    let after_switch = wait_until(LIMIT, POLL, || async {
        let frames: Vec<_> = bus
            .frames(task_id)
            .await
            .into_iter()
            .filter(|f| f.batch_id.is_some_and(|id| epoch3_batches.contains(&id)))
            .collect();
        [WETH, DAI]
            .iter()
            .all(|a| !trades_by_time(&frames, a).is_empty())
    })
    .await;
    assert!(
        after_switch,
        "epoch 3 delivers trades of the unchanged targets"
    );

    // Every trade of an unchanged target between its first and last stored one is stored.
    // Trades of the same millisecond may be split over two frames, so the first and the last
    // millisecond read may be partly stored yet, and only the ones between them are checked.
    let frames = bus.frames(task_id).await;
    for address in [WETH, DAI] {
        let seen = trades_by_time(&frames, address);
        let (first, last) = (
            *seen.keys().next().unwrap(),
            *seen.keys().next_back().unwrap(),
        );
        let mut expected = expected_trades(first, last);
        expected.remove(&first);
        expected.remove(&last);
        assert!(
            expected.len() >= 10,
            "too few trades of {address} to check: {}",
            expected.len()
        );
        let missing: Vec<i64> = expected
            .iter()
            .filter(|(time, count)| seen.get(time).map_or(0, BTreeSet::len) < **count)
            .map(|(time, _)| *time)
            .collect();
        println!(
            "{address}: {} trades from {first} to {last} across 3 epochs, {} missing",
            expected.values().sum::<usize>(),
            missing.len()
        );
        assert!(
            missing.is_empty(),
            "trades of {address} missing at {missing:?}"
        );
    }

    // Each alert is stored once, and every second with a trade raised one (cooldown 1 s).
    let alerts = bus.alerts(task_id).await;
    let ids: BTreeSet<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), alerts.len(), "an alert id is stored twice");
    for address in [WETH, DAI] {
        let alerted: BTreeSet<i64> = alerts
            .iter()
            .filter(|a| a.target_value == address)
            .map(|a| a.event_time_ms / 1000)
            .collect();
        let traded: BTreeSet<i64> = trades_by_time(&frames, address)
            .keys()
            .map(|t| t / 1000)
            .collect();
        let unalerted: Vec<&i64> = traded.difference(&alerted).collect();
        assert!(
            unalerted.is_empty(),
            "seconds with trades of {address} but no alert: {unalerted:?}"
        );
    }

    // The rows and specs of epochs 1 and 2 go after the 3 s grace period.
    let deleted = wait_until(LIMIT, POLL, || async {
        batch_rows(&env, task_id, 1).await == 0 && batch_rows(&env, task_id, 2).await == 0
    })
    .await;
    assert!(
        deleted,
        "rows of replaced epochs deleted after the grace period"
    );
    for batch in epoch1.batches.iter().chain(&epoch2.batches) {
        let gone = wait_until(LIMIT, POLL, || async {
            bus.batch_spec(batch.batch_id).await.is_none()
        })
        .await;
        assert!(gone, "spec of batch {} deleted", batch.batch_id);
    }
    assert_eq!(
        batch_rows(&env, task_id, 3).await,
        epoch3.batches.len() as i64
    );
}

/// Writes epoch `epoch` of a task the way the Java side may: its own batches, items and
/// target positions, and `current_epoch`, in one transaction. `batches` lists target ids per
/// batch number.
async fn write_epoch_as_java(env: &TestEnv, task_id: u64, epoch: u32, batches: &[&[u64]]) {
    let mut tx = env.pool().begin().await.unwrap();
    for (index, targets) in batches.iter().enumerate() {
        let batch_no = index as u32 + 1;
        let batch_id = sqlx::query(
            "INSERT INTO monitor_batch_v2 (task_id, batch_no, epoch, status, item_count) VALUES (?, ?, ?, 'pending', ?)",
        )
        .bind(task_id)
        .bind(batch_no)
        .bind(epoch)
        .bind(targets.len() as u32)
        .execute(&mut *tx)
        .await
        .unwrap()
        .last_insert_id();
        for (order, target_id) in targets.iter().enumerate() {
            sqlx::query("INSERT INTO monitor_batch_item_v2 (batch_id, target_id, item_order) VALUES (?, ?, ?)")
                .bind(batch_id)
                .bind(target_id)
                .bind(order as u32)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(
                "UPDATE monitor_task_target_v2 SET batch_id = ?, batch_order = ? WHERE id = ?",
            )
            .bind(batch_no)
            .bind(order as u32)
            .bind(target_id)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    sqlx::query("UPDATE monitor_task_v2 SET current_epoch = ? WHERE id = ?")
        .bind(epoch)
        .bind(task_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_written_by_java_is_followed() {
    let env = TestEnv::new("cp_java_epoch").await;
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
    let task_id = insert_task(&env, "batch", config_id).await;
    let mut target_ids = Vec::new();
    for address in [WETH, DAI, USDC] {
        target_ids.push(insert_target(&env, task_id, address).await);
    }
    let (_feed, feed_url) = start_feed(
        &env,
        &[WETH, DAI, USDC],
        &["--speed", "2", "--loop", "--live"],
    )
    .await;
    let allocator = start_allocator(&env, &[("CONFIG_POLL_INTERVAL", "0.5")]);
    let _ingest = start_ingest(&env, &feed_url);
    let epoch1 = wait_epoch_running(&bus, task_id, 1).await;
    assert_eq!(epoch1.batches.len(), 1);

    // The Java side splits the same targets into two batches of its own.
    write_epoch_as_java(&env, task_id, 2, &[&target_ids[..2], &target_ids[2..]]).await;
    let epoch2 = wait_epoch_running(&bus, task_id, 2).await;
    assert_stopped_after_new_ran(&bus, task_id, &epoch1, &epoch2).await;

    let counts: Vec<u32> = epoch2.batches.iter().map(|b| b.item_count).collect();
    assert_eq!(
        counts,
        vec![2, 1],
        "the published epoch is the one Java wrote"
    );
    assert_eq!(
        current_epoch(&env, task_id).await,
        2,
        "the allocator did not replace it"
    );
    assert_eq!(
        batch_rows(&env, task_id, 3).await,
        0,
        "no epoch 3 was written"
    );
    assert_eq!(
        strip_colours(&allocator.log()).matches("epoch written").count(),
        1,
        "the allocator wrote only epoch 1:\n{}",
        allocator.log()
    );
}
