use super::*;
use crate::store::TargetRow;

fn task_row(task_type: &str) -> TaskRow {
    TaskRow {
        id: 5,
        name: "majors".into(),
        task_type: task_type.into(),
        chain_type: "eth".into(),
        status: 1,
        del_flag: 0,
        current_epoch: 3,
    }
}

fn config(config_id: u64, version: u64, events_config: &str) -> ConfigRow {
    ConfigRow {
        config_id,
        version,
        name: format!("config {config_id}"),
        min_transaction_usd: Some(50_000.0),
        cumulative_min_amount_usd: None,
        time_interval: None,
        top_holders_threshold: None,
        events_config: Some(events_config.into()),
        trigger_logic: Some("OR".into()),
    }
}

fn item(batch_id: u64, item_order: u32, target_id: u64) -> ItemRow {
    ItemRow {
        batch_id,
        item_order,
        target: TargetRow {
            id: target_id,
            value: format!("0x{target_id:040x}"),
            pair_address: None,
            token_name: Some(format!("token {target_id}")),
            token_symbol: None,
            market_cap: Some(1.5e9),
            source: Some("birdeye".into()),
        },
    }
}

fn batch(id: u64, batch_no: u32, status: &str, item_count: u32) -> BatchRow {
    BatchRow {
        id,
        batch_no,
        epoch: 3,
        status: status.into(),
        item_count,
    }
}

fn state(task_type: &str, configs: Vec<ConfigRow>) -> TaskState {
    let task = task_row(task_type);
    let kind = TaskKind::of(&task).unwrap();
    TaskState {
        task,
        kind,
        configs,
        batches: vec![batch(70, 1, "pending", 2), batch(71, 2, "paused", 1)],
        items: vec![item(70, 0, 11), item(70, 1, 12), item(71, 0, 13)],
    }
}

const VALID: &str = r#"{"volume": {"window_sec": 60, "min_volume_usd": 100000}}"#;
const INVALID: &str = r#"{"volume": {"window_sec": 60, "min_volume_usd": -5}}"#;

#[test]
fn valid_config_becomes_the_spec_config() {
    let (snapshot, notices) = build(&state("smart", vec![config(7, 2, VALID)]), None, 1);
    let config = snapshot.task.config.as_ref().unwrap();
    assert_eq!((config.config_id, config.version), (7, 2));
    assert!(config.rules.as_token().unwrap().volume.is_some());
    assert_eq!(snapshot.task.config_error, None);
    assert!(notices.is_empty(), "{notices:?}");
}

#[test]
fn invalid_config_keeps_previous_rules() {
    let (first, _) = build(&state("smart", vec![config(7, 2, VALID)]), None, 1);
    let (second, notices) = build(
        &state("smart", vec![config(7, 3, INVALID)]),
        Some(&first.task),
        2,
    );

    assert_eq!(second.task.config, first.task.config);
    let error = second.task.config_error.as_ref().unwrap();
    assert_eq!(
        (error.config_id, error.version, error.field.as_str()),
        (7, 3, "volume.min_volume_usd")
    );
    assert!(matches!(
        notices.as_slice(),
        [Notice::InvalidConfig {
            kept_previous: true,
            ..
        }]
    ));
}

#[test]
fn invalid_config_without_previous_has_no_rules() {
    let (snapshot, notices) = build(&state("smart", vec![config(7, 3, INVALID)]), None, 1);
    assert_eq!(snapshot.task.config, None);
    assert!(snapshot.task.config_error.is_some());
    assert!(matches!(
        notices.as_slice(),
        [Notice::InvalidConfig {
            kept_previous: false,
            ..
        }]
    ));
}

#[test]
fn extra_configs_are_reported() {
    let configs = vec![config(9, 1, VALID), config(4, 1, VALID)];
    let (snapshot, notices) = build(&state("batch", configs), None, 1);
    assert_eq!(snapshot.task.config.unwrap().config_id, 9);
    assert_eq!(
        notices,
        vec![Notice::ExtraConfigs {
            task_id: 5,
            used: 9,
            ignored: vec![4]
        }]
    );
}

#[test]
fn task_without_config_runs_no_rules() {
    let (snapshot, notices) = build(&state("smart", vec![]), None, 1);
    assert_eq!(snapshot.task.config, None);
    assert_eq!(notices, vec![Notice::NoConfig { task_id: 5 }]);
}

#[test]
fn batch_specs_list_their_targets_in_order() {
    let (snapshot, _) = build(&state("smart", vec![config(7, 2, VALID)]), None, 1);
    assert_eq!(snapshot.task.epoch, 3);
    assert_eq!(snapshot.batches.len(), 2);
    let first = &snapshot.batches[0];
    assert_eq!(
        (first.batch_id, first.batch_no, first.epoch, first.task_id),
        (70, 1, 3, 5)
    );
    let ids: Vec<(u64, u32)> = first
        .targets
        .iter()
        .map(|t| (t.target_id, t.batch_order))
        .collect();
    assert_eq!(ids, vec![(11, 0), (12, 1)]);
    assert_eq!(first.targets[0].market_cap, Some(1.5e9));
    assert_eq!(snapshot.batches[1].status, BatchStatus::Paused);
    let refs: Vec<(u64, u32, u32)> = snapshot
        .task
        .batches
        .iter()
        .map(|b| (b.batch_id, b.batch_no, b.item_count))
        .collect();
    assert_eq!(refs, vec![(70, 1, 2), (71, 2, 1)]);
}

#[test]
fn unknown_batch_status_is_published_as_pending() {
    let mut state = state("smart", vec![config(7, 2, VALID)]);
    state.batches[0].status = "sleeping".into();
    let (snapshot, notices) = build(&state, None, 1);
    assert_eq!(snapshot.batches[0].status, BatchStatus::Pending);
    assert!(notices.contains(&Notice::UnknownBatchStatus {
        batch_id: 70,
        status: "sleeping".into()
    }));
}

#[test]
fn block_task_parses_block_rules() {
    let mut state = state(
        "block",
        vec![config(
            8,
            1,
            r#"{"monitor_new_blocks": true, "block_interval_threshold": 30}"#,
        )],
    );
    state.batches.clear();
    state.items.clear();
    let (snapshot, notices) = build(&state, None, 1);
    assert!(snapshot.batches.is_empty());
    assert!(snapshot.task.batches.is_empty());
    assert!(
        snapshot.task.config.unwrap().rules.as_block().is_some(),
        "{notices:?}"
    );
}

#[test]
fn unknown_chain_is_an_invalid_task() {
    let mut task = task_row("smart");
    task.chain_type = "tron".into();
    let error = TaskKind::of(&task).unwrap_err();
    assert_eq!(
        (error.task_id, error.column, error.value.as_str()),
        (5, "chain_type", "tron")
    );
}

#[test]
fn same_content_ignores_publish_time() {
    let (a, _) = build(&state("smart", vec![config(7, 2, VALID)]), None, 1);
    let (b, _) = build(&state("smart", vec![config(7, 2, VALID)]), None, 2);
    assert!(same_task_content(&a.task, &b.task));
    let (c, _) = build(&state("smart", vec![config(7, 3, VALID)]), None, 2);
    assert!(!same_task_content(&a.task, &c.task));
}
