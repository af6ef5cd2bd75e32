//! Allocation against real MariaDB and NATS: epochs, idempotence, KV specs, config errors.

// Helpers outside #[test] functions panic on failure too: a panic is the test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;

use common::{addresses, Fixture, INVALID_RULES, VALID_RULES};
use monitor_allocator::allocate::{allocate_task, Allocation, AllocationPlan};
use monitor_allocator::control::TaskOutcome;
use monitor_allocator::order::{seed_assignment, Strategy, Target};
use monitor_core::messages::{BatchStatus, StatusMessage, StatusScope};
use monitor_core::Subjects;

fn seed_plan(batch_size: u32) -> AllocationPlan {
    AllocationPlan {
        strategy: Strategy::Seed,
        batch_size: NonZeroU32::new(batch_size).unwrap(),
        max_targets: 100_000,
    }
}

#[tokio::test]
async fn allocate_writes_one_epoch() {
    let fx = Fixture::new("epoch").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    let values = addresses(1, 150);
    let target_ids = fx.insert_targets(task_id, &values).await;
    let mut plane = fx.plane(Strategy::Seed, 99).await;

    let outcome = plane.allocate_and_publish(task_id).await.unwrap();

    assert!(
        matches!(
            outcome,
            TaskOutcome::Published {
                epoch: 1,
                allocation: Some(Allocation::Written {
                    epoch: 1,
                    previous_epoch: 0,
                    batches: 2,
                    targets: 150
                }),
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(fx.current_epoch(task_id).await, 1);

    let batches = fx.batch_rows(task_id, 1).await;
    let numbers: Vec<(u32, &str, u32)> = batches
        .iter()
        .map(|(_, no, status, count)| (*no, status.as_str(), *count))
        .collect();
    assert_eq!(numbers, vec![(1, "pending", 99), (2, "pending", 51)]);

    // The items and the targets' columns follow the md5 order of the seed.
    let targets: Vec<Target> = target_ids
        .iter()
        .zip(&values)
        .map(|(id, v)| Target {
            id: *id,
            value: v.clone(),
        })
        .collect();
    let expected = seed_assignment(task_id, &targets, NonZeroU32::new(99).unwrap());
    let expected_items: Vec<(u32, u32, u64)> = expected
        .placements()
        .map(|p| (p.batch_no, p.batch_order, p.target_id))
        .collect();
    assert_eq!(fx.items(task_id, 1).await, expected_items);
    let expected_positions: HashMap<u64, (u32, u32)> = expected
        .placements()
        .map(|p| (p.target_id, (p.batch_no, p.batch_order)))
        .collect();
    for (target_id, batch_no, order) in fx.target_positions(task_id).await {
        let (want_no, want_order) = expected_positions[&target_id];
        assert_eq!(batch_no, Some(want_no), "batch_id of target {target_id}");
        assert_eq!(order, Some(want_order), "batch_order of target {target_id}");
    }

    // The KV specs describe the same epoch.
    let spec = fx.task_spec(task_id).await.expect("task spec published");
    assert_eq!(spec.epoch, 1);
    let refs: Vec<(u64, u32, u32, BatchStatus)> = spec
        .batches
        .iter()
        .map(|b| (b.batch_id, b.batch_no, b.item_count, b.status))
        .collect();
    let rows: Vec<(u64, u32, u32, BatchStatus)> = batches
        .iter()
        .map(|(id, no, _, count)| (*id, *no, *count, BatchStatus::Pending))
        .collect();
    assert_eq!(refs, rows);
    let config = spec.config.as_ref().expect("valid config in the spec");
    assert_eq!((config.config_id, config.version), (config_id, 1));
    assert_eq!(spec.config_error, None);

    for (batch_id, batch_no, _, _) in &batches {
        let batch = fx
            .batch_spec(*batch_id)
            .await
            .expect("batch spec published");
        assert_eq!(
            (batch.task_id, batch.epoch, batch.batch_no),
            (task_id, 1, *batch_no)
        );
        let listed: Vec<(u32, u32, u64)> = batch
            .targets
            .iter()
            .map(|t| (*batch_no, t.batch_order, t.target_id))
            .collect();
        let wanted: Vec<(u32, u32, u64)> = expected_items
            .iter()
            .copied()
            .filter(|(no, _, _)| no == batch_no)
            .collect();
        assert_eq!(listed, wanted);
        let first = &batch.targets[0];
        let address = &values[target_ids
            .iter()
            .position(|id| *id == first.target_id)
            .unwrap()];
        assert_eq!(&first.address, address);
        assert_eq!(first.market_cap, Some(1234.5));
        assert_eq!(first.source.as_deref(), Some("birdeye"));
    }
}

#[tokio::test]
async fn allocate_twice_keeps_epoch() {
    let fx = Fixture::new("twice").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "sol", config_id).await;
    fx.insert_targets(task_id, &addresses(2, 30)).await;
    let mut plane = fx.plane(Strategy::Seed, 99).await;
    plane.allocate_and_publish(task_id).await.unwrap();
    let task_revision = fx.revision(&Subjects::task_key(task_id)).await;

    // A fresh control plane, as a second `allocator allocate` run would be.
    let mut again = fx.plane(Strategy::Seed, 99).await;
    let outcome = again.allocate_and_publish(task_id).await.unwrap();

    match outcome {
        TaskOutcome::Published {
            epoch,
            allocation,
            report,
        } => {
            assert_eq!(epoch, 1);
            assert_eq!(allocation, Some(Allocation::Unchanged { epoch: 1 }));
            assert!(!report.task_written, "unchanged task spec is not rewritten");
            assert_eq!(report.batches_written, 0);
        }
        other => panic!("expected a published task, got {other:?}"),
    }
    assert_eq!(fx.current_epoch(task_id).await, 1);
    assert_eq!(fx.batch_rows(task_id, 2).await.len(), 0, "no second epoch");
    assert_eq!(
        fx.revision(&Subjects::task_key(task_id)).await,
        task_revision
    );
}

#[tokio::test]
async fn added_target_creates_next_epoch() {
    let fx = Fixture::new("added").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "bsc", config_id).await;
    fx.insert_targets(task_id, &addresses(3, 120)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.allocate_and_publish(task_id).await.unwrap();
    let first_items = fx.items(task_id, 1).await;

    let added = fx.insert_targets(task_id, &addresses(4, 1)).await[0];
    let outcome = plane.allocate_and_publish(task_id).await.unwrap();

    assert!(
        matches!(outcome, TaskOutcome::Published { epoch: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(fx.current_epoch(task_id).await, 2);
    let second = fx.batch_rows(task_id, 2).await;
    let counts: Vec<(u32, u32)> = second
        .iter()
        .map(|(_, no, _, count)| (*no, *count))
        .collect();
    assert_eq!(counts, vec![(1, 99), (2, 22)]);
    assert_eq!(
        fx.batch_rows(task_id, 1).await.len(),
        2,
        "the replaced epoch stays for the grace period"
    );

    // Sticky: every target keeps its place, the new one takes the first free position.
    let second_items = fx.items(task_id, 2).await;
    for item in &first_items {
        assert!(second_items.contains(item), "{item:?} kept its place");
    }
    assert!(second_items.contains(&(2, 21, added)));
    let positions = fx.target_positions(task_id).await;
    assert!(positions.contains(&(added, Some(2), Some(21))));

    let spec = fx.task_spec(task_id).await.unwrap();
    assert_eq!(spec.epoch, 2);
    let ids: Vec<u64> = spec.batches.iter().map(|b| b.batch_id).collect();
    let rows: Vec<u64> = second.iter().map(|(id, _, _, _)| *id).collect();
    assert_eq!(ids, rows);
    let batch = fx.batch_spec(rows[1]).await.unwrap();
    assert_eq!(batch.epoch, 2);
    assert_eq!(batch.targets.len(), 22);
}

#[tokio::test]
async fn removed_target_clears_its_position() {
    let fx = Fixture::new("removed").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    let ids = fx.insert_targets(task_id, &addresses(5, 10)).await;
    let mut plane = fx.plane(Strategy::Seed, 99).await;
    plane.allocate_and_publish(task_id).await.unwrap();

    sqlx::query("UPDATE monitor_task_target_v2 SET status = 0 WHERE id = ?")
        .bind(ids[3])
        .execute(&fx.pool)
        .await
        .unwrap();
    plane.allocate_and_publish(task_id).await.unwrap();

    assert_eq!(fx.current_epoch(task_id).await, 2);
    let listed: Vec<u64> = fx
        .items(task_id, 2)
        .await
        .iter()
        .map(|(_, _, id)| *id)
        .collect();
    assert_eq!(listed.len(), 9);
    assert!(!listed.contains(&ids[3]));
    let positions = fx.target_positions(task_id).await;
    assert!(positions.contains(&(ids[3], None, None)), "{positions:?}");
}

#[tokio::test]
async fn failed_allocation_writes_nothing() {
    let fx = Fixture::new("atomic").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(6, 150)).await;
    // The last statement of the transaction, the epoch switch, fails.
    sqlx::query(
        "CREATE TRIGGER reject_epoch BEFORE UPDATE ON monitor_task_v2 FOR EACH ROW \
         IF NEW.current_epoch <> OLD.current_epoch THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'epoch switch rejected by test'; END IF",
    )
    .execute(&fx.pool)
    .await
    .unwrap();

    let error = allocate_task(&fx.pool, task_id, seed_plan(99))
        .await
        .unwrap_err();

    assert!(
        error.to_string().contains("epoch switch rejected by test"),
        "{error}"
    );
    assert_eq!(fx.current_epoch(task_id).await, 0);
    let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM monitor_batch_v2")
        .fetch_one(&fx.pool)
        .await
        .unwrap();
    let items: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM monitor_batch_item_v2")
        .fetch_one(&fx.pool)
        .await
        .unwrap();
    assert_eq!((batches, items), (0, 0));
    for (target_id, batch_no, order) in fx.target_positions(task_id).await {
        assert_eq!(
            (batch_no, order),
            (None, None),
            "target {target_id} untouched"
        );
    }
}

#[tokio::test]
async fn concurrent_allocations_write_one_epoch() {
    let fx = Fixture::new("race").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(7, 200)).await;

    let runs = (0..4).map(|_| {
        let pool = fx.pool.clone();
        tokio::spawn(async move { allocate_task(&pool, task_id, seed_plan(99)).await })
    });
    let results: Vec<Allocation> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().unwrap())
        .collect();

    let written = results
        .iter()
        .filter(|a| matches!(a, Allocation::Written { .. }))
        .count();
    assert_eq!(written, 1, "{results:?}");
    assert!(results.iter().all(|a| a.epoch() == 1), "{results:?}");
    let epochs: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT epoch FROM monitor_batch_v2 WHERE task_id = ?")
            .bind(task_id)
            .fetch_all(&fx.pool)
            .await
            .unwrap();
    assert_eq!(epochs, vec![1]);
}

#[tokio::test]
async fn invalid_config_keeps_previous_rules() {
    let fx = Fixture::new("invalid").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(8, 5)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.allocate_and_publish(task_id).await.unwrap();
    let valid = fx.task_spec(task_id).await.unwrap().config.unwrap();

    fx.update_config(config_id, INVALID_RULES, 2).await;
    plane.sync_task(task_id).await.unwrap();

    let spec = fx.task_spec(task_id).await.unwrap();
    assert_eq!(
        spec.config.as_ref(),
        Some(&valid),
        "the last valid rules stay in force"
    );
    let error = spec.config_error.as_ref().expect("config error published");
    assert_eq!((error.config_id, error.version), (config_id, 2));
    assert_eq!(error.field, "volume.min_volume_usd");
    let status = fx
        .last_task_status(task_id)
        .await
        .expect("status message for the error");
    let StatusMessage::Change(change) = status else {
        panic!("expected a status change, got {status:?}")
    };
    assert_eq!(change.scope, StatusScope::Task { task_id });
    assert_eq!(change.status, BatchStatus::Running);
    assert!(
        change
            .reason
            .as_deref()
            .unwrap()
            .contains("volume.min_volume_usd"),
        "{:?}",
        change.reason
    );

    // A fresh control plane (a restarted allocator) also keeps the rules from the bucket.
    let mut restarted = fx.plane(Strategy::Sticky, 99).await;
    restarted.sync_task(task_id).await.unwrap();
    assert_eq!(
        fx.task_spec(task_id).await.unwrap().config.as_ref(),
        Some(&valid)
    );

    fx.update_config(config_id, VALID_RULES, 3).await;
    plane.sync_task(task_id).await.unwrap();

    let spec = fx.task_spec(task_id).await.unwrap();
    assert_eq!(spec.config_error, None);
    assert_eq!(spec.config.unwrap().version, 3);
    let StatusMessage::Change(cleared) = fx.last_task_status(task_id).await.unwrap() else {
        panic!("expected a status change")
    };
    assert_eq!(cleared.status, BatchStatus::Running);
    assert!(
        cleared.reason.as_deref().unwrap().contains("版本 3"),
        "{:?}",
        cleared.reason
    );
}

#[tokio::test]
async fn invalid_first_config_publishes_no_rules() {
    let fx = Fixture::new("norules").await;
    let config_id = fx.insert_config("{not json").await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(9, 3)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;

    plane.allocate_and_publish(task_id).await.unwrap();

    let spec = fx.task_spec(task_id).await.unwrap();
    assert_eq!(spec.config, None);
    let error = spec.config_error.expect("config error published");
    assert_eq!(error.field, "events_config");
    let StatusMessage::Change(change) = fx.last_task_status(task_id).await.unwrap() else {
        panic!("expected a status change")
    };
    assert_eq!(change.status, BatchStatus::Error);
}

#[tokio::test]
async fn block_task_has_no_batches() {
    let fx = Fixture::new("block").await;
    let config_id = fx
        .insert_config(r#"{"monitor_new_blocks": true, "block_interval_threshold": 30}"#)
        .await;
    let task_id = fx.insert_task("block", "eth", config_id).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;

    let outcome = plane.allocate_and_publish(task_id).await.unwrap();

    assert!(
        matches!(
            outcome,
            TaskOutcome::Published {
                epoch: 0,
                allocation: None,
                ..
            }
        ),
        "{outcome:?}"
    );
    let spec = fx.task_spec(task_id).await.unwrap();
    assert!(spec.batches.is_empty());
    assert!(spec.config.unwrap().rules.as_block().is_some());
    let batches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM monitor_batch_v2")
        .fetch_one(&fx.pool)
        .await
        .unwrap();
    assert_eq!(batches, 0);
}
