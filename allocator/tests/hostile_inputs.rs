//! Hostile rows and notices for the allocator, against a real MariaDB and NATS.
//!
//! Each test writes one malformed or adversarial input into the Java-owned tables next to a
//! well-formed task, runs one poll of the control plane, and checks two things: the error the
//! input must produce (the config error published in the task spec, the notice logged for a
//! target, or the allocation error), and that the well-formed task was published in the same
//! poll, so the stage went on. `docs/hostile-inputs.md` lists them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroU32;

use common::{addresses, Fixture, VALID_RULES};
use monitor_allocator::allocate::{allocate_task, AllocateError, AllocationPlan};
use monitor_allocator::control::{ControlOptions, ControlPlane};
use monitor_allocator::order::Strategy;
use monitor_allocator::redis_watch::parse_notice;
use monitor_allocator::snapshot::{self, Notice, TaskKind};
use monitor_allocator::store;
use monitor_core::messages::Chain;

const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
const USDT: &str = "0xdac17f958d2ee523a2206206994597c13d831ec7";
const WSOL: &str = "So11111111111111111111111111111111111111112";

/// A well-formed task with one target, which every poll must publish.
async fn good_task(fx: &Fixture) -> u64 {
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &[USDT.to_owned()]).await;
    task_id
}

async fn poll_once(fx: &Fixture) {
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane
        .poll()
        .await
        .expect("a poll completes whatever the rows hold");
}

async fn assert_good_task_published(fx: &Fixture, task_id: u64) {
    let spec = fx
        .task_spec(task_id)
        .await
        .expect("the well-formed task is published in the same poll");
    assert!(spec.config.is_some(), "the well-formed task has its rules");
    assert_eq!(spec.batches.len(), 1);
    let batch = fx.batch_spec(spec.batches[0].batch_id).await.unwrap();
    assert_eq!(batch.targets.len(), 1);
}

/// Stores `events_config` for a token task, polls, and returns the published config error.
async fn rejected_config(test: &str, events_config: &str) -> String {
    let fx = Fixture::new(test).await;
    let config_id = fx.insert_config(events_config).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &[WETH.to_owned()]).await;
    let good = good_task(&fx).await;

    poll_once(&fx).await;

    let spec = fx
        .task_spec(task_id)
        .await
        .expect("the task is published with its error");
    assert!(
        spec.config.is_none(),
        "no rules are in force: {:?}",
        spec.config
    );
    assert_good_task_published(&fx, good).await;
    let error = spec
        .config_error
        .expect("the config error is published")
        .to_string();
    assert!(!error.contains('\n'), "one line: {error}");
    error.replace(&format!("invalid config {config_id} "), "invalid config N ")
}

#[tokio::test]
async fn config_with_10000_rules() {
    let rules: Vec<String> = (0..10_000)
        .map(|i| format!("\"rule_{i}\": {{\"window_sec\": 60}}"))
        .collect();
    let error = rejected_config("ten_thousand_rules", &format!("{{{}}}", rules.join(","))).await;
    assert_eq!(
        error,
        "invalid config N version 1: events_config must have at most 256 entries, got 10000 keys"
    );
}

#[tokio::test]
async fn events_config_over_one_mib() {
    let padding = "x".repeat(1 << 20);
    let text = format!(
        "{{\"volume\": {{\"window_sec\": 60, \"min_volume_usd\": 1}}, \"note\": \"{padding}\"}}"
    );
    let error = rejected_config("config_over_one_mib", &text).await;
    assert_eq!(
        error,
        format!(
            "invalid config N version 1: events_config must be at most 1048576 bytes, got {} bytes",
            text.len()
        )
    );
}

#[tokio::test]
async fn deeply_nested_events_config() {
    let text = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let error = rejected_config("deeply_nested_config", &text).await;
    assert!(
        error.starts_with("invalid config N version 1: events_config must be valid JSON (recursion limit exceeded at line 1 column 636), got {\"a\":"),
        "{error}"
    );
}

#[tokio::test]
async fn truncated_events_config() {
    let error = rejected_config(
        "truncated_config",
        r#"{"volume": {"window_sec": 60, "min_vol"#,
    )
    .await;
    assert_eq!(
        error,
        "invalid config N version 1: events_config must be valid JSON (EOF while parsing a string at line 1 column 38), got {\"volume\": {\"window_sec\": 60, \"min_vol"
    );
}

#[tokio::test]
async fn threshold_given_as_string() {
    let error = rejected_config(
        "threshold_as_string",
        r#"{"volume": {"window_sec": 60, "min_volume_usd": "100000"}}"#,
    )
    .await;
    assert_eq!(
        error,
        "invalid config N version 1: volume.min_volume_usd must be a number, got \"100000\""
    );
}

#[tokio::test]
async fn nan_threshold() {
    let error = rejected_config(
        "nan_threshold",
        r#"{"volume": {"window_sec": 60, "min_volume_usd": NaN}}"#,
    )
    .await;
    assert_eq!(
        error,
        "invalid config N version 1: events_config must be valid JSON (expected value at line 1 column 49), got {\"volume\": {\"window_sec\": 60, \"min_volume_usd\": NaN}}"
    );
}

#[tokio::test]
async fn infinite_threshold() {
    let error = rejected_config(
        "infinite_threshold",
        r#"{"volume": {"window_sec": 60, "min_volume_usd": 1e999}}"#,
    )
    .await;
    assert_eq!(
        error,
        "invalid config N version 1: events_config must be valid JSON (number out of range at line 1 column 53), got {\"volume\": {\"window_sec\": 60, \"min_volume_usd\": 1e999}}"
    );
}

#[tokio::test]
async fn negative_threshold() {
    let error = rejected_config(
        "negative_threshold",
        r#"{"volume": {"window_sec": 60, "min_volume_usd": -5}}"#,
    )
    .await;
    assert_eq!(
        error,
        "invalid config N version 1: volume.min_volume_usd must be > 0, got -5"
    );
}

#[tokio::test]
async fn threshold_over_2_pow_64() {
    let error = rejected_config(
        "threshold_over_2_pow_64",
        r#"{"volume": {"window_sec": 60, "min_volume_usd": 18446744073709551616}}"#,
    )
    .await;
    assert_eq!(
        error,
        "invalid config N version 1: volume.min_volume_usd must be between 0 and 1000000000000000, got 18446744073709552000"
    );
}

#[tokio::test]
async fn contract_address_of_wrong_chain() {
    let fx = Fixture::new("contract_wrong_chain").await;
    let config_id = fx
        .insert_config(&format!(
            r#"{{"monitor_contract_events": true, "contract_addresses": ["{WSOL}"], "event_signatures": ["Transfer(address,address,uint256)"]}}"#
        ))
        .await;
    let task_id = fx.insert_task("block", "eth", config_id).await;
    let good = good_task(&fx).await;

    poll_once(&fx).await;

    let spec = fx
        .task_spec(task_id)
        .await
        .expect("the block task is published with its error");
    let error = spec
        .config_error
        .expect("the config error is published")
        .to_string();
    assert_eq!(
        error,
        format!("invalid config {config_id} version 1: contract_addresses[0] must be 0x followed by 40 hex digits, got {WSOL}")
    );
    assert_good_task_published(&fx, good).await;
}

/// Allocates and publishes a task with `targets`, and returns the notices of its snapshot
/// and the addresses in its batch specs.
async fn publish_targets(
    fx: &Fixture,
    chain: &str,
    targets: &[String],
) -> (u64, Vec<Notice>, Vec<String>) {
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", chain, config_id).await;
    fx.insert_targets(task_id, targets).await;
    poll_once(fx).await;

    let task = store::task(&fx.pool, task_id)
        .await
        .unwrap()
        .expect("the task row exists");
    let kind = TaskKind::of(&task).unwrap();
    let state = snapshot::load(&fx.pool, task, kind).await.unwrap();
    let (_, notices) = snapshot::build(&state, None, 0);

    let spec = fx.task_spec(task_id).await.expect("the task is published");
    let mut published = Vec::new();
    for batch in &spec.batches {
        let batch = fx
            .batch_spec(batch.batch_id)
            .await
            .expect("its batches are published");
        published.extend(batch.targets.into_iter().map(|t| t.address));
    }
    (task_id, notices, published)
}

#[tokio::test]
async fn target_address_with_sql() {
    let fx = Fixture::new("target_with_sql").await;
    let hostile = "0x'; DROP TABLE monitor_task_v2; --".to_owned();
    let good = good_task(&fx).await;
    let (task_id, notices, published) =
        publish_targets(&fx, "eth", &[hostile.clone(), WETH.to_owned()]).await;

    assert_eq!(
        published,
        vec![WETH.to_owned()],
        "only the valid target is watched"
    );
    assert!(
        notices.iter().any(|n| matches!(n, Notice::InvalidTarget { task_id: t, chain: Chain::Eth, address, .. } if *t == task_id && *address == hostile)),
        "{notices:?}"
    );
    let stored: String = sqlx::query_scalar(
        "SELECT target_value FROM monitor_task_target_v2 WHERE task_id = ? ORDER BY id LIMIT 1",
    )
    .bind(task_id)
    .fetch_one(&fx.pool)
    .await
    .expect("monitor_task_target_v2 still exists");
    assert_eq!(stored, hostile, "the value was bound, not run");
    assert_good_task_published(&fx, good).await;
}

#[tokio::test]
async fn target_address_of_wrong_chain() {
    let fx = Fixture::new("target_wrong_chain").await;
    let good = good_task(&fx).await;
    let (task_id, notices, published) =
        publish_targets(&fx, "eth", &[WSOL.to_owned(), WETH.to_owned()]).await;

    assert_eq!(published, vec![WETH.to_owned()]);
    assert!(
        notices.iter().any(|n| matches!(n, Notice::InvalidTarget { task_id: t, address, .. } if *t == task_id && address == WSOL)),
        "{notices:?}"
    );
    assert_good_task_published(&fx, good).await;
}

#[tokio::test]
async fn duplicated_targets() {
    let fx = Fixture::new("duplicated_targets").await;
    let good = good_task(&fx).await;
    let upper = format!("0x{}", WETH[2..].to_ascii_uppercase());
    let (task_id, notices, published) = publish_targets(
        &fx,
        "eth",
        &[WETH.to_owned(), WETH.to_owned(), upper.clone()],
    )
    .await;

    assert_eq!(
        published,
        vec![WETH.to_owned()],
        "the address is watched once"
    );
    let duplicates: Vec<&Notice> = notices
        .iter()
        .filter(|n| matches!(n, Notice::DuplicateTarget { task_id: t, .. } if *t == task_id))
        .collect();
    assert_eq!(duplicates.len(), 2, "{notices:?}");
    assert_good_task_published(&fx, good).await;
}

#[tokio::test]
async fn batch_with_zero_targets() {
    let fx = Fixture::new("zero_targets").await;
    let good = good_task(&fx).await;
    let (task_id, notices, published) = publish_targets(&fx, "eth", &[]).await;

    let spec = fx.task_spec(task_id).await.unwrap();
    assert!(
        spec.batches.is_empty(),
        "no batch for no targets: {:?}",
        spec.batches
    );
    assert!(published.is_empty());
    assert!(notices.is_empty(), "{notices:?}");
    assert_good_task_published(&fx, good).await;
}

#[tokio::test]
async fn batch_with_100_targets() {
    let fx = Fixture::new("hundred_targets").await;
    let good = good_task(&fx).await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(7, 100)).await;

    let mut plane = fx.plane(Strategy::Seed, 100).await;
    plane.poll().await.unwrap();

    let spec = fx.task_spec(task_id).await.unwrap();
    assert_eq!(
        spec.batches.len(),
        1,
        "100 targets fill one batch of BATCH_SIZE 100"
    );
    let batch = fx.batch_spec(spec.batches[0].batch_id).await.unwrap();
    assert_eq!(batch.targets.len(), 100);
    assert_good_task_published(&fx, good).await;
}

#[tokio::test]
async fn task_over_max_targets_per_task() {
    let fx = Fixture::new("over_max_targets").await;
    let good = good_task(&fx).await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(8, 6)).await;

    let plan = AllocationPlan {
        strategy: Strategy::Seed,
        batch_size: NonZeroU32::new(99).unwrap(),
        max_targets: 5,
    };
    let error = allocate_task(&fx.pool, task_id, plan).await.unwrap_err();
    assert!(matches!(
        error,
        AllocateError::TooManyTargets {
            count: 6,
            max: 5,
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        format!("task {task_id} has 6 active targets, more than MAX_TARGETS_PER_TASK (5); it is not allocated until targets are removed or the limit is raised")
    );

    let mut settings = fx.settings();
    settings.max_targets_per_task = 5;
    let mut plane = ControlPlane::new(
        fx.pool.clone(),
        fx.publisher("allocator-test-1"),
        ControlOptions::from(&settings),
    );
    plane.load_published().await.unwrap();
    let report = plane.poll().await.unwrap();
    assert_eq!(report.failed, 1, "{report:?}");
    assert!(
        fx.task_spec(task_id).await.is_none(),
        "the oversized task is not published"
    );
    assert_eq!(fx.current_epoch(task_id).await, 0, "and not allocated");
    assert_good_task_published(&fx, good).await;
}

#[test]
fn config_notice_truncated() {
    let error = parse_notice(r#"{"configId": 7, "vers"#).unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"invalid config change notice "{\"configId\": 7, \"vers": EOF while parsing a string at line 1 column 21"#
    );
    assert_eq!(
        parse_notice(r#"{"configId": 7}"#).unwrap().config_id,
        7,
        "the next notice parses"
    );
}

#[test]
fn config_notice_with_id_over_2_pow_64() {
    let error = parse_notice(r#"{"configId": 18446744073709551616}"#).unwrap_err();
    assert!(
        error.to_string().starts_with(
            r#"invalid config change notice "{\"configId\": 18446744073709551616}": invalid"#
        ),
        "{error}"
    );
    assert_eq!(
        parse_notice(r#"{"configId": 8}"#).unwrap().config_id,
        8,
        "the next notice parses"
    );
}
