//! Judging the events of block tasks: new blocks, large transactions, contract and program
//! logs.
//!
//! Consumes a frame of a `block` task (events `Block`, `Transaction`, `Log`, `ProgramLog`)
//! and the task's [`BlockRules`]; produces `block_event`, `large_transaction` and
//! `contract_event` alerts. Like the token engine it is a pure function of its inputs, so a
//! redelivered or replayed frame gives the same alerts with the same ids.
//!
//! Which event judges which rule:
//! - `Block`: `block_event` when the time since the previous block is greater than
//!   `block_interval_threshold`.
//! - `Transaction`: `large_transaction` when its USD value reaches
//!   `transaction_amount_threshold` (inclusive). Pending transactions are judged only when
//!   `chain_specific.eth.monitor_pending_txs` is on; mined ones only when
//!   `monitor_large_transactions` is on.
//! - `Log`: `contract_event` when its contract is one of `contract_addresses` (or the list is
//!   empty) and its topic0 is the keccak-256 hash of one of `event_signatures` (or the list is
//!   empty).
//! - `ProgramLog`: `contract_event` when its program is one of
//!   `chain_specific.sol.program_ids`.
//!
//! The alert state follows the event's [`ChainStatus`]: `Removed` gives `retracted`,
//! `Confirmed` gives `confirmed`, and `New` gives `provisional` when the task waits for
//! `confirmations` or the transaction is still pending, else `confirmed`.
//!
//! Alert ids are `<task_id>:<subject>:<alert_type>:<bucket>`. The subject is the block number,
//! the transaction hash (or Solana signature), or `<tx hash>:<log index>` for an EVM log, and
//! the bucket is `source_time_ms / 1000 / cooldown_sec`. Ingest sends a confirmation or
//! removal with the source time of the first report, so every state of an alert has one id.
//! Within one frame an alert is raised once per state.

use std::collections::HashSet;

use monitor_core::messages::{
    Alert, AlertState, AlertType, Block, ChainStatus, ConfigSpec, DecodedLog, Event, EventFrame,
    EventKind, Finding, Log, ProgramLog, TaskSpec, Transaction, MESSAGE_VERSION,
};
use monitor_core::rules::BlockRules;
use serde::Serialize;

use crate::engine::alert_id;

/// Judges a frame of a block task against its rules.
pub fn evaluate_block(
    task: &TaskSpec,
    config: &ConfigSpec,
    rules: &BlockRules,
    frame: &EventFrame,
) -> Vec<Alert> {
    let judge = BlockJudge {
        task,
        config,
        rules,
        frame,
        topics: rules
            .contract_events
            .as_ref()
            .map(|r| r.topics())
            .unwrap_or_default(),
    };
    let mut seen_ids = HashSet::new();
    let mut alerts = Vec::new();
    for event in &frame.events {
        let Some(alert) = judge.judge_event(event) else {
            continue;
        };
        // Keyed by msg id: a log and its removal in one frame are two deliveries.
        if seen_ids.insert(alert.msg_id()) {
            alerts.push(alert);
        }
    }
    alerts
}

/// A rule that held on one chain event, before it becomes an alert.
struct Held {
    alert_type: AlertType,
    /// Block number, transaction hash or log id in the alert id.
    subject: String,
    /// Contract, transaction or block the Java side shows as the alert's target.
    target_value: String,
    status: ChainStatus,
    /// A pending transaction stays provisional until it is mined.
    pending: bool,
    finding: Finding,
    facts: ChainFacts,
}

struct BlockJudge<'a> {
    task: &'a TaskSpec,
    config: &'a ConfigSpec,
    rules: &'a BlockRules,
    frame: &'a EventFrame,
    /// topic0 of every configured event signature.
    topics: Vec<String>,
}

impl BlockJudge<'_> {
    fn judge_event(&self, event: &Event) -> Option<Alert> {
        let held = match &event.kind {
            EventKind::Block(block) => self.judge_block(block),
            EventKind::Transaction(tx) => self.judge_transaction(tx),
            EventKind::Log(log) => self.judge_log(log),
            EventKind::ProgramLog(log) => self.judge_program_log(log),
            EventKind::Trade(_) | EventKind::Price(_) | EventKind::Holders(_) => None,
        }?;
        Some(self.build_alert(event, held))
    }

    fn judge_block(&self, block: &Block) -> Option<Held> {
        let rule = self.rules.new_blocks.as_ref()?;
        let interval = block.interval_sec?;
        let threshold = rule.interval_threshold_sec;
        if interval <= threshold {
            return None;
        }
        let reason = format!(
            "block {} came {interval:.3}s after the previous one (> {threshold}s)",
            block.number
        );
        Some(Held {
            alert_type: AlertType::BlockEvent,
            subject: block.number.to_string(),
            target_value: block.hash.clone(),
            status: block.status,
            pending: false,
            finding: finding(AlertType::BlockEvent, interval, threshold, reason),
            facts: ChainFacts {
                block_number: Some(block.number),
                block_hash: Some(block.hash.clone()),
                interval_sec: Some(interval),
                ..ChainFacts::default()
            },
        })
    }

    fn judge_transaction(&self, tx: &Transaction) -> Option<Held> {
        // Pending transactions are judged against the same threshold, so they need both.
        let watched = !tx.pending || self.rules.pending_txs;
        let rule = self.rules.large_transactions.as_ref().filter(|_| watched)?;
        let value_usd = tx.value_usd?;
        if !reaches(value_usd, rule.threshold_usd) {
            return None;
        }
        let kind = if tx.pending {
            "pending transaction"
        } else {
            "transaction"
        };
        let reason = format!(
            "{kind} of {} native (${value_usd:.2} at ${}/unit from {}) (>= ${})",
            tx.value_native,
            tx.native_price_usd.unwrap_or(f64::NAN),
            tx.price_source.as_deref().unwrap_or("unknown source"),
            rule.threshold_usd
        );
        Some(Held {
            alert_type: AlertType::LargeTransaction,
            subject: tx.hash.clone(),
            target_value: tx.hash.clone(),
            status: tx.status,
            pending: tx.pending,
            finding: finding(
                AlertType::LargeTransaction,
                value_usd,
                rule.threshold_usd,
                reason,
            ),
            facts: ChainFacts {
                block_number: tx.block_number,
                tx_hash: Some(tx.hash.clone()),
                from: Some(tx.from.clone()),
                to: tx.to.clone(),
                value_native: Some(tx.value_native),
                value_usd: Some(value_usd),
                native_price_usd: tx.native_price_usd,
                price_source: tx.price_source.clone(),
                pending: tx.pending.then_some(true),
                ..ChainFacts::default()
            },
        })
    }

    fn judge_log(&self, log: &Log) -> Option<Held> {
        let rule = self.rules.contract_events.as_ref()?;
        let address = log.address.to_ascii_lowercase();
        if !rule.addresses.is_empty() && !rule.addresses.contains(&address) {
            return None;
        }
        let topic0 = log.topics.first().map(|t| t.to_ascii_lowercase());
        let signature = match topic0 {
            Some(topic0) => self
                .topics
                .iter()
                .position(|t| *t == topic0)
                .map(|i| rule.signatures[i].clone()),
            None => None,
        };
        if !self.topics.is_empty() && signature.is_none() {
            return None;
        }
        let event_name = signature
            .clone()
            .or_else(|| log.decoded.as_ref().map(|d| d.event.clone()))
            .unwrap_or_else(|| "event".to_owned());
        let reason = format!(
            "{event_name} from {address} in transaction {} (log {})",
            log.tx_hash, log.log_index
        );
        Some(Held {
            alert_type: AlertType::ContractEvent,
            subject: format!("{}:{}", log.tx_hash, log.log_index),
            target_value: address.clone(),
            status: if log.removed {
                ChainStatus::Removed
            } else {
                log.status
            },
            pending: false,
            finding: finding(AlertType::ContractEvent, 1.0, 1.0, reason),
            facts: ChainFacts {
                block_number: Some(log.block_number),
                block_hash: log.block_hash.clone(),
                tx_hash: Some(log.tx_hash.clone()),
                log_index: Some(log.log_index),
                contract: Some(address),
                signature: signature.or_else(|| log.decoded.as_ref().map(|d| d.event.clone())),
                topics: log.topics.clone(),
                data: Some(log.data.clone()),
                decoded: log.decoded.clone(),
                ..ChainFacts::default()
            },
        })
    }

    fn judge_program_log(&self, log: &ProgramLog) -> Option<Held> {
        let rule = self.rules.program_logs.as_ref()?;
        if !rule.program_ids.contains(&log.program_id) {
            return None;
        }
        let reason = format!(
            "transaction {} mentions program {} in slot {}",
            log.signature, log.program_id, log.slot
        );
        Some(Held {
            alert_type: AlertType::ContractEvent,
            subject: log.signature.clone(),
            target_value: log.program_id.clone(),
            status: log.status,
            pending: false,
            finding: finding(AlertType::ContractEvent, 1.0, 1.0, reason),
            facts: ChainFacts {
                slot: Some(log.slot),
                tx_hash: Some(log.signature.clone()),
                program_id: Some(log.program_id.clone()),
                logs: log.logs.clone(),
                failed: log.failed.then_some(true),
                ..ChainFacts::default()
            },
        })
    }

    fn build_alert(&self, event: &Event, held: Held) -> Alert {
        let task = self.task;
        Alert {
            v: MESSAGE_VERSION,
            id: alert_id(
                task.task_id,
                &held.subject,
                held.alert_type,
                event.source_time_ms,
                self.rules.cooldown_sec,
            ),
            task_id: task.task_id,
            config_id: self.config.config_id,
            config_version: self.config.version,
            batch_id: None,
            target_id: None,
            chain: self.frame.chain,
            alert_type: held.alert_type,
            state: alert_state(held.status, held.pending, self.rules.confirmations),
            target_value: held.target_value,
            token_name: None,
            token_symbol: None,
            findings: vec![held.finding],
            event_time_ms: event.source_time_ms,
            first_event_time_ms: Some(event.source_time_ms),
            price: held.facts.native_price_usd,
            market_cap: None,
            extra_json: serde_json::to_string(&held.facts).ok(),
        }
    }
}

/// Returns the state of an alert raised by an event with this chain status.
pub fn alert_state(status: ChainStatus, pending: bool, confirmations: u32) -> AlertState {
    match status {
        ChainStatus::Removed => AlertState::Retracted,
        ChainStatus::Confirmed => AlertState::Confirmed,
        ChainStatus::New if pending || confirmations > 0 => AlertState::Provisional,
        ChainStatus::New => AlertState::Confirmed,
    }
}

/// Tests `observed >= threshold`, forgiving the rounding error of binary floating point.
fn reaches(observed: f64, threshold: f64) -> bool {
    observed >= threshold - threshold.abs().max(1.0) * 1e-9
}

fn finding(rule: AlertType, observed: f64, threshold: f64, reason: String) -> Finding {
    Finding {
        rule,
        observed,
        threshold,
        window_sec: None,
        reason,
    }
}

/// Chain facts of a block alert, stored as JSON in `Alert::extra_json` (the Java side gets
/// them in `alertData.extra`). Only the fields of the event's kind are present.
#[derive(Debug, Default, Serialize)]
struct ChainFacts {
    #[serde(skip_serializing_if = "Option::is_none")]
    block_number: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<u64>,
    /// Transaction hash, or the signature of a Solana transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    tx_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_native: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    native_price_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contract: Option<String>,
    /// The configured signature that matched topic0, or the decoded event's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decoded: Option<DecodedLog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    program_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    logs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<bool>,
}

#[cfg(test)]
mod tests;
