use monitor_core::messages::{Chain, TaskType};
use monitor_core::rules::{
    ContractEventsRule, LargeTransactionsRule, NewBlocksRule, ProgramLogsRule, TriggerLogic,
};

use super::*;

const TASK_ID: u64 = 9;
/// A source time on a whole 300-second boundary.
const T0: i64 = 1_683_030_000_000;
const USDT: &str = "0xdac17f958d2ee523a2206206994597c13d831ec7";
const TRANSFER_TOPIC: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
const TOKEN_PROGRAM: &str = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA";

fn rules() -> BlockRules {
    BlockRules {
        new_blocks: Some(NewBlocksRule {
            interval_threshold_sec: 20.0,
        }),
        large_transactions: Some(LargeTransactionsRule {
            threshold_usd: 100_000.0,
        }),
        contract_events: Some(ContractEventsRule {
            addresses: vec![USDT.into()],
            signatures: vec!["Transfer(address,address,uint256)".into()],
        }),
        program_logs: Some(ProgramLogsRule {
            program_ids: vec![TOKEN_PROGRAM.into()],
        }),
        pending_txs: false,
        confirmations: 0,
        cooldown_sec: 300,
    }
}

fn task(rules: BlockRules) -> TaskSpec {
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id: TASK_ID,
        name: "eth blocks".into(),
        task_type: TaskType::Block,
        chain: Chain::Eth,
        epoch: 1,
        config: Some(ConfigSpec {
            config_id: 5,
            version: 2,
            name: "block rules".into(),
            trigger_logic: TriggerLogic::Or,
            rules: monitor_core::rules::Rules::Block(rules),
        }),
        batches: Vec::new(),
        config_error: None,
        published_ms: T0,
    }
}

fn judge(rules: BlockRules, kinds: Vec<EventKind>) -> Vec<Alert> {
    let task = task(rules.clone());
    let frame = EventFrame {
        v: MESSAGE_VERSION,
        task_id: TASK_ID,
        batch_id: None,
        epoch: 1,
        chain: Chain::Eth,
        producer: "ingest-1".into(),
        seq: 1,
        events: kinds
            .into_iter()
            .map(|kind| Event {
                source_time_ms: T0,
                ingest_time_ms: T0 + 50,
                target: None,
                kind,
                snapshot: None,
            })
            .collect(),
    };
    let config = task.config.as_ref().unwrap();
    evaluate_block(&task, config, &rules, &frame)
}

fn block(number: u64, interval_sec: f64) -> EventKind {
    EventKind::Block(Block {
        number,
        hash: format!("0xb{number}"),
        interval_sec: Some(interval_sec),
        status: ChainStatus::New,
    })
}

fn transaction(hash: &str, value_usd: f64) -> Transaction {
    Transaction {
        hash: hash.into(),
        block_number: Some(17_173_049),
        from: "0xfrom".into(),
        to: Some("0xto".into()),
        value_native: value_usd / 2_000.0,
        value_usd: Some(value_usd),
        pending: false,
        native_price_usd: Some(2_000.0),
        price_source: Some("setting NATIVE_PRICE_USD_ETH".into()),
        status: ChainStatus::New,
    }
}

fn log(address: &str, topic0: &str, log_index: u64) -> Log {
    Log {
        address: address.into(),
        topics: vec![topic0.into()],
        data: "0x".into(),
        block_number: 17_173_049,
        tx_hash: "0xt1".into(),
        log_index,
        removed: false,
        decoded: None,
        block_hash: Some("0xb1".into()),
        status: ChainStatus::New,
    }
}

#[test]
fn block_interval_above_threshold_raises_block_event() {
    let alerts = judge(rules(), vec![block(100, 20.0), block(101, 20.5)]);

    assert_eq!(
        alerts.len(),
        1,
        "20s equals the threshold and does not exceed it"
    );
    let alert = &alerts[0];
    assert_eq!(
        alert.id,
        format!("{TASK_ID}:101:block_event:{}", T0 / 1000 / 300)
    );
    assert_eq!(alert.alert_type, AlertType::BlockEvent);
    assert_eq!(alert.target_value, "0xb101");
    assert_eq!(alert.findings[0].observed, 20.5);
    assert_eq!(alert.findings[0].threshold, 20.0);
    assert_eq!(alert.state, AlertState::Confirmed);
    assert_eq!(alert.batch_id, None);
}

#[test]
fn transaction_reaching_threshold_raises_large_transaction() {
    let alerts = judge(
        rules(),
        vec![
            EventKind::Transaction(transaction("0xsmall", 99_999.0)),
            EventKind::Transaction(transaction("0xexact", 100_000.0)),
        ],
    );

    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(
        alert.id,
        format!("{TASK_ID}:0xexact:large_transaction:{}", T0 / 1000 / 300)
    );
    assert_eq!(alert.target_value, "0xexact");
    assert_eq!(alert.price, Some(2_000.0));
    let extra: serde_json::Value =
        serde_json::from_str(alert.extra_json.as_deref().unwrap()).unwrap();
    assert_eq!(extra["price_source"], "setting NATIVE_PRICE_USD_ETH");
    assert_eq!(extra["tx_hash"], "0xexact");
    assert_eq!(extra["block_number"], 17_173_049);
}

#[test]
fn pending_transaction_needs_pending_rule() {
    let mut pending = transaction("0xpending", 500_000.0);
    pending.pending = true;
    let kinds = vec![EventKind::Transaction(pending)];

    assert!(judge(rules(), kinds.clone()).is_empty());

    let mut with_pending = rules();
    with_pending.pending_txs = true;
    let alerts = judge(with_pending, kinds);
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].state,
        AlertState::Provisional,
        "pending is never final"
    );
}

#[test]
fn log_must_match_contract_and_signature() {
    let other_contract = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
    let approval = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925";
    let alerts = judge(
        rules(),
        vec![
            EventKind::Log(log(USDT, TRANSFER_TOPIC, 3)),
            EventKind::Log(log(other_contract, TRANSFER_TOPIC, 4)),
            EventKind::Log(log(USDT, approval, 5)),
        ],
    );

    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(
        alert.id,
        format!("{TASK_ID}:0xt1:3:contract_event:{}", T0 / 1000 / 300)
    );
    assert_eq!(alert.target_value, USDT);
    let extra: serde_json::Value =
        serde_json::from_str(alert.extra_json.as_deref().unwrap()).unwrap();
    assert_eq!(extra["signature"], "Transfer(address,address,uint256)");
    assert_eq!(extra["log_index"], 3);
}

#[test]
fn empty_lists_match_every_log() {
    let mut any = rules();
    any.contract_events = Some(ContractEventsRule {
        addresses: Vec::new(),
        signatures: Vec::new(),
    });
    let alerts = judge(
        any,
        vec![EventKind::Log(log(
            "0x0000000000000000000000000000000000000001",
            "0x01",
            0,
        ))],
    );

    assert_eq!(alerts.len(), 1);
}

#[test]
fn contract_address_matches_in_any_case() {
    let checksummed = "0xdAC17F958D2ee523a2206206994597C13D831ec7";
    let alerts = judge(
        rules(),
        vec![EventKind::Log(log(checksummed, TRANSFER_TOPIC, 1))],
    );

    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].target_value, USDT);
}

#[test]
fn program_log_of_watched_program_raises_contract_event() {
    let program_log = |program_id: &str| {
        EventKind::ProgramLog(ProgramLog {
            signature: "5sig".into(),
            slot: 110_130_000,
            program_id: program_id.into(),
            logs: vec!["Program log: Instruction: Transfer".into()],
            failed: false,
            status: ChainStatus::New,
        })
    };
    let alerts = judge(
        rules(),
        vec![
            program_log("11111111111111111111111111111111"),
            program_log(TOKEN_PROGRAM),
        ],
    );

    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].id,
        format!("{TASK_ID}:5sig:contract_event:{}", T0 / 1000 / 300)
    );
    assert_eq!(alerts[0].target_value, TOKEN_PROGRAM);
    let extra: serde_json::Value =
        serde_json::from_str(alerts[0].extra_json.as_deref().unwrap()).unwrap();
    assert_eq!(extra["logs"][0], "Program log: Instruction: Transfer");
}

#[test]
fn confirmations_make_new_alerts_provisional() {
    let mut waiting = rules();
    waiting.confirmations = 3;
    let mut confirmed = transaction("0xbig", 200_000.0);
    confirmed.status = ChainStatus::Confirmed;

    let first = judge(
        waiting.clone(),
        vec![EventKind::Transaction(transaction("0xbig", 200_000.0))],
    );
    let second = judge(waiting, vec![EventKind::Transaction(confirmed)]);

    assert_eq!(first[0].state, AlertState::Provisional);
    assert_eq!(second[0].state, AlertState::Confirmed);
    assert_eq!(first[0].id, second[0].id, "both states belong to one alert");
    assert_ne!(first[0].msg_id(), second[0].msg_id());
}

#[test]
fn removed_log_retracts_its_alert() {
    let mut removed = log(USDT, TRANSFER_TOPIC, 3);
    removed.removed = true;

    let first = judge(rules(), vec![EventKind::Log(log(USDT, TRANSFER_TOPIC, 3))]);
    let second = judge(rules(), vec![EventKind::Log(removed)]);

    assert_eq!(first[0].state, AlertState::Confirmed);
    assert_eq!(second[0].state, AlertState::Retracted);
    assert_eq!(first[0].id, second[0].id);
}

#[test]
fn alert_state_follows_chain_status() {
    assert_eq!(
        alert_state(ChainStatus::New, false, 0),
        AlertState::Confirmed
    );
    assert_eq!(
        alert_state(ChainStatus::New, false, 2),
        AlertState::Provisional
    );
    assert_eq!(
        alert_state(ChainStatus::New, true, 0),
        AlertState::Provisional
    );
    assert_eq!(
        alert_state(ChainStatus::Confirmed, true, 2),
        AlertState::Confirmed
    );
    assert_eq!(
        alert_state(ChainStatus::Removed, false, 0),
        AlertState::Retracted
    );
}

#[test]
fn same_id_in_one_frame_is_raised_once() {
    let alerts = judge(
        rules(),
        vec![
            EventKind::Transaction(transaction("0xbig", 200_000.0)),
            EventKind::Transaction(transaction("0xbig", 200_000.0)),
        ],
    );

    assert_eq!(alerts.len(), 1);
}
