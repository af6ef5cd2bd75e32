//! Config versions against real MariaDB and NATS: a poll skips what was applied, and an older
//! version written by a second allocator never replaces a newer one in the tasks bucket.

// Helpers outside #[test] functions panic on failure too: a panic is the test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{addresses, Fixture, VALID_RULES};
use monitor_allocator::order::Strategy;
use monitor_allocator::snapshot::Snapshot;
use monitor_core::messages::TaskSpec;

const OTHER_RULES: &str = r#"{"price_change": {"window_sec": 60, "rise_pct": 5}}"#;

/// Builds a snapshot of `spec` that claims to come from `version` of its config.
fn with_version(spec: &TaskSpec, version: u64) -> Snapshot {
    let mut task = spec.clone();
    if let Some(config) = task.config.as_mut() {
        config.version = version;
    }
    Snapshot {
        task,
        batches: Vec::new(),
    }
}

/// Moves the update times of the task's own rows an hour back, so that only a config change
/// can make the task due within the watermark overlap.
async fn age_task_rows(fx: &Fixture, task_id: u64) {
    for table in [
        "monitor_task_v2",
        "monitor_task_target_v2",
        "monitor_batch_v2",
    ] {
        let column = if table == "monitor_task_v2" {
            "id"
        } else {
            "task_id"
        };
        sqlx::query(&format!(
            "UPDATE {table} SET update_time = NOW(3) - INTERVAL 1 HOUR WHERE {column} = ?"
        ))
        .bind(task_id)
        .execute(&fx.pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE monitor_task_config_v2 SET create_time = NOW(3) - INTERVAL 1 HOUR WHERE task_id = ?")
        .bind(task_id)
        .execute(&fx.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn poll_skips_applied_config_version() {
    let fx = Fixture::new("skipver").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(1, 3)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    plane.poll().await.unwrap();
    age_task_rows(&fx, task_id).await;

    fx.update_config(config_id, OTHER_RULES, 2).await;
    let applying = plane.poll().await.unwrap();
    // The change is still inside the watermark overlap, but version 2 is published now.
    let after = plane.poll().await.unwrap();

    assert_eq!(
        applying.synced, 1,
        "the poll after the change syncs the task"
    );
    assert_eq!(
        fx.task_spec(task_id).await.unwrap().config.unwrap().version,
        2
    );
    assert_eq!(after.synced, 0, "the applied version is not reloaded");
}

#[tokio::test]
async fn poll_reloads_config_when_version_differs() {
    let fx = Fixture::new("newver").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(2, 3)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    plane.poll().await.unwrap();

    fx.update_config(config_id, OTHER_RULES, 2).await;
    plane.poll().await.unwrap();
    fx.update_config(config_id, VALID_RULES, 3).await;
    let report = plane.poll().await.unwrap();

    assert_eq!(report.synced, 1);
    let config = fx.task_spec(task_id).await.unwrap().config.unwrap();
    assert_eq!(config.version, 3);
    assert!(config.rules.as_token().unwrap().volume.is_some());
}

#[tokio::test]
async fn older_config_version_never_overwrites_newer() {
    let fx = Fixture::new("olderver").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(3, 3)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    let first = fx.task_spec(task_id).await.unwrap();

    // Two allocators: `slow` saw version 1 and read version 2 from the database; `fast` read
    // version 3 later and wrote first.
    let mut slow = fx.publisher("allocator-slow");
    slow.load_all().await.unwrap();
    let mut fast = fx.publisher("allocator-fast");
    fast.load_all().await.unwrap();
    let fast_report = fast.publish(&with_version(&first, 3)).await.unwrap();
    let slow_report = slow.publish(&with_version(&first, 2)).await.unwrap();

    assert!(fast_report.task_written);
    assert!(slow_report.superseded, "version 2 is not written over 3");
    assert!(!slow_report.task_written);
    let stored = fx.task_spec(task_id).await.unwrap();
    assert_eq!(stored.config.unwrap().version, 3);

    // A newer version from the slow allocator is written on the revision it read back.
    let later = slow.publish(&with_version(&first, 4)).await.unwrap();
    assert!(later.task_written);
    assert_eq!(
        fx.task_spec(task_id).await.unwrap().config.unwrap().version,
        4
    );
}

#[tokio::test]
async fn older_epoch_never_overwrites_newer() {
    let fx = Fixture::new("olderepoch").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(4, 3)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    let first = fx.task_spec(task_id).await.unwrap();

    let mut slow = fx.publisher("allocator-slow");
    slow.load_all().await.unwrap();
    let mut fast = fx.publisher("allocator-fast");
    fast.load_all().await.unwrap();
    let mut newer = with_version(&first, 1);
    newer.task.epoch = first.epoch + 1;
    newer.task.name = "renamed".into();
    fast.publish(&newer).await.unwrap();
    let mut stale = with_version(&first, 1);
    stale.task.name = "stale".into();
    let report = slow.publish(&stale).await.unwrap();

    assert!(report.superseded);
    let stored = fx.task_spec(task_id).await.unwrap();
    assert_eq!(stored.epoch, first.epoch + 1);
    assert_eq!(stored.name, "renamed");
}

#[tokio::test]
async fn restarted_publisher_writes_after_delete() {
    let fx = Fixture::new("redelete").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(5, 2)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();

    // Stop, then start the task again: the key's last operation is a delete marker.
    fx.set_task_status(task_id, 0).await;
    plane.poll().await.unwrap();
    assert!(fx.task_spec(task_id).await.is_none());
    let mut restarted = fx.plane(Strategy::Sticky, 99).await;
    fx.set_task_status(task_id, 1).await;
    restarted.poll().await.unwrap();

    assert!(
        fx.task_spec(task_id).await.is_some(),
        "the task is published again over its delete marker"
    );
}
