//! Message types carried by NATS between the stages.
//!
//! Every message has a `v` field with [`MESSAGE_VERSION`]. Payloads are MessagePack with named
//! fields (see [`crate::codec`]), so adding an optional field (`#[serde(default)]`) never breaks
//! an older reader. A reader that meets a `v` newer than it knows rejects the message rather
//! than guessing at its meaning.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rules::{ConfigError, Rules, TriggerLogic};

/// Version written into every message; readers reject messages with a higher one.
pub const MESSAGE_VERSION: u16 = 1;

/// A chain as the tables spell it (`chain_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Chain {
    Sol,
    Eth,
    Bsc,
}

impl Chain {
    /// The chain's path segment in the Birdeye WebSocket URL and its `x-chain` header.
    pub fn birdeye_name(self) -> &'static str {
        match self {
            Chain::Sol => "solana",
            Chain::Eth => "ethereum",
            Chain::Bsc => "bsc",
        }
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Chain::Sol => "sol",
            Chain::Eth => "eth",
            Chain::Bsc => "bsc",
        })
    }
}

impl FromStr for Chain {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sol" | "solana" => Ok(Chain::Sol),
            "eth" | "ethereum" => Ok(Chain::Eth),
            "bsc" => Ok(Chain::Bsc),
            other => Err(format!("unknown chain {other:?}, expected sol, eth or bsc")),
        }
    }
}

/// `monitor_task_v2.task_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    Smart,
    Batch,
    Block,
}

impl TaskType {
    /// Token tasks watch a list of token addresses cut into batches.
    pub fn has_targets(self) -> bool {
        matches!(self, TaskType::Smart | TaskType::Batch)
    }
}

impl FromStr for TaskType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "smart" => Ok(TaskType::Smart),
            "batch" => Ok(TaskType::Batch),
            "block" => Ok(TaskType::Block),
            other => Err(format!(
                "unknown task type {other:?}, expected smart, batch or block"
            )),
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskType::Smart => "smart",
            TaskType::Batch => "batch",
            TaskType::Block => "block",
        })
    }
}

/// Status of a batch as the Java side and `monitor_batch_v2.status` spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    #[default]
    Pending,
    Running,
    Paused,
    Stopped,
    Completed,
    Error,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Pending => "pending",
            BatchStatus::Running => "running",
            BatchStatus::Paused => "paused",
            BatchStatus::Stopped => "stopped",
            BatchStatus::Completed => "completed",
            BatchStatus::Error => "error",
        }
    }

    /// Whether ingest may run a batch that the Java side left in this status.
    pub fn is_runnable(self) -> bool {
        !matches!(self, BatchStatus::Paused | BatchStatus::Stopped)
    }
}

impl FromStr for BatchStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pending" | "" => Ok(BatchStatus::Pending),
            "running" => Ok(BatchStatus::Running),
            "paused" => Ok(BatchStatus::Paused),
            "stopped" => Ok(BatchStatus::Stopped),
            "completed" => Ok(BatchStatus::Completed),
            "error" => Ok(BatchStatus::Error),
            other => Err(format!("unknown batch status {other:?}")),
        }
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Control plane: the tasks bucket.

/// Snapshot of one active task, stored under `task.<task_id>` in the tasks bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub v: u16,
    pub task_id: u64,
    pub name: String,
    pub task_type: TaskType,
    pub chain: Chain,
    pub epoch: u32,
    /// The config in force; `None` when the task has no valid config at all.
    pub config: Option<ConfigSpec>,
    /// Batches of the current epoch (empty for block tasks).
    pub batches: Vec<BatchRef>,
    /// Validation error of the stored `events_config` when it is invalid; `config` then holds
    /// the last valid rules, if there ever were any.
    #[serde(default)]
    pub config_error: Option<ConfigError>,
    /// Time the allocator built this snapshot.
    pub published_ms: i64,
}

impl TaskSpec {
    pub fn rules(&self) -> Option<&Rules> {
        self.config.as_ref().map(|c| &c.rules)
    }
}

/// The config of a task: identity, version and the validated rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSpec {
    pub config_id: u64,
    pub version: u64,
    pub name: String,
    pub trigger_logic: TriggerLogic,
    pub rules: Rules,
}

/// A batch of the current epoch as listed in its task's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRef {
    pub batch_id: u64,
    pub batch_no: u32,
    pub item_count: u32,
    pub status: BatchStatus,
}

/// Targets of one batch, stored under `batch.<batch_id>` in the tasks bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSpec {
    pub v: u16,
    pub batch_id: u64,
    pub task_id: u64,
    pub epoch: u32,
    pub batch_no: u32,
    pub status: BatchStatus,
    pub targets: Vec<TargetSpec>,
}

/// One watched token, as read from `monitor_task_target_v2`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetSpec {
    pub target_id: u64,
    pub address: String,
    #[serde(default)]
    pub pair_address: Option<String>,
    #[serde(default)]
    pub token_name: Option<String>,
    #[serde(default)]
    pub token_symbol: Option<String>,
    #[serde(default)]
    pub market_cap: Option<f64>,
    #[serde(default)]
    pub source: Option<String>,
    pub batch_order: u32,
}

// ---------------------------------------------------------------------------------------------
// Data plane: event frames.

/// Events of one batch (or one block task), published by ingest to the events stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    pub v: u16,
    pub task_id: u64,
    /// `None` for block tasks, which have no batches.
    pub batch_id: Option<u64>,
    pub epoch: u32,
    pub chain: Chain,
    /// Consumer id of the ingest instance that produced the frame.
    pub producer: String,
    /// Sequence number of the frame within (producer, batch); part of the `Nats-Msg-Id`.
    pub seq: u64,
    pub events: Vec<Event>,
}

impl EventFrame {
    /// The `Nats-Msg-Id` under which JetStream deduplicates a retried publish.
    pub fn msg_id(&self) -> String {
        match self.batch_id {
            Some(batch_id) => format!("{}:{}:{}", self.producer, batch_id, self.seq),
            None => format!("{}:task{}:{}", self.producer, self.task_id, self.seq),
        }
    }
}

/// One observation from a feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Chain or feed time of the observation, in milliseconds.
    pub source_time_ms: i64,
    /// Time ingest parsed it, in milliseconds.
    pub ingest_time_ms: i64,
    /// The watched token (token tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetRef>,
    pub kind: EventKind,
    /// State of the target's windows after this event (token tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<TokenSnapshot>,
}

/// Reference to a target inside an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    pub target_id: u64,
    pub address: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

/// What an event observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    Trade(Trade),
    Price(Price),
    Holders(Holders),
    Block(Block),
    Transaction(Transaction),
    Log(Log),
    ProgramLog(ProgramLog),
}

/// A swap of the watched token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    pub side: Side,
    pub volume_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A price candle or tick of the watched token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_usd: Option<f64>,
}

/// Holder statistics of the watched token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holders {
    #[serde(default)]
    pub holders: Option<u64>,
    /// Share of the supply held by the top N holders, in percent.
    #[serde(default)]
    pub top_share_pct: Option<f64>,
    #[serde(default)]
    pub top_n: Option<u32>,
}

/// Where an event of a block task stands on the chain. Evaluate turns it into the state of
/// the alerts the event raises: `New` gives `provisional` when the task waits for
/// confirmations (or the transaction is pending) and `confirmed` otherwise, `Confirmed` gives
/// `confirmed` and `Removed` gives `retracted`. Ingest sends an event again with `Confirmed` or
/// `Removed` and the same source time, so the alert keeps its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainStatus {
    /// First report of the event.
    #[default]
    New,
    /// The block is buried under the task's `confirmations`, or a pending transaction was mined.
    Confirmed,
    /// A reorg removed the block, or a pending transaction was dropped.
    Removed,
}

/// A new block header (an EVM block or a Solana slot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub number: u64,
    pub hash: String,
    /// Seconds since the previous block, when the adapter saw it.
    #[serde(default)]
    pub interval_sec: Option<f64>,
    #[serde(default)]
    pub status: ChainStatus,
}

/// A transaction of a block (or a pending one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub hash: String,
    #[serde(default)]
    pub block_number: Option<u64>,
    pub from: String,
    #[serde(default)]
    pub to: Option<String>,
    /// Native amount (ETH, BNB, SOL) as a decimal.
    pub value_native: f64,
    #[serde(default)]
    pub value_usd: Option<f64>,
    #[serde(default)]
    pub pending: bool,
    /// USD price of the native token used for `value_usd`.
    #[serde(default)]
    pub native_price_usd: Option<f64>,
    /// Where that price came from, for example `birdeye` or `setting NATIVE_PRICE_USD_ETH`.
    #[serde(default)]
    pub price_source: Option<String>,
    #[serde(default)]
    pub status: ChainStatus,
}

/// A contract log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log {
    pub address: String,
    pub topics: Vec<String>,
    pub data: String,
    pub block_number: u64,
    pub tx_hash: String,
    pub log_index: u64,
    #[serde(default)]
    pub removed: bool,
    /// Decoded ERC-20 `Transfer` or `Approval`, when the log is one.
    #[serde(default)]
    pub decoded: Option<DecodedLog>,
    #[serde(default)]
    pub block_hash: Option<String>,
    #[serde(default)]
    pub status: ChainStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodedLog {
    pub event: String,
    pub from: String,
    pub to: String,
    /// Raw token amount as a decimal string (it may exceed 64 bits).
    pub amount: String,
}

/// Solana program log lines of one transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramLog {
    pub signature: String,
    pub slot: u64,
    pub program_id: String,
    pub logs: Vec<String>,
    /// Whether the transaction failed (`err` of the notification was not null).
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub status: ChainStatus,
}

/// State of a target when an event was seen: last values and one entry per window length
/// that the task's rules use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TokenSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market_cap: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liquidity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_share_pct: Option<f64>,
    #[serde(default)]
    pub windows: Vec<WindowStats>,
}

impl TokenSnapshot {
    pub fn window(&self, window_sec: u32) -> Option<&WindowStats> {
        self.windows.iter().find(|w| w.window_sec == window_sec)
    }
}

/// Rolling figures of one target over one window length, ending at the event's source time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WindowStats {
    pub window_sec: u32,
    /// Source time of the oldest observation still inside the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    pub volume_usd: f64,
    pub buy_usd: f64,
    pub sell_usd: f64,
    pub trades: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_holders: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Alerts.

/// Which rule raised an alert; also the `alert_type` column and the WebSocket `alertType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertType {
    PriceChange,
    VolumeChange,
    HolderChange,
    LargeTrade,
    CumulativeBuy,
    TopHolders,
    Composite,
    BlockEvent,
    LargeTransaction,
    ContractEvent,
}

impl AlertType {
    /// Whether block tasks raise this alert type (their alerts can change state).
    pub fn is_block_alert(self) -> bool {
        matches!(
            self,
            AlertType::BlockEvent | AlertType::LargeTransaction | AlertType::ContractEvent
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertType::PriceChange => "price_change",
            AlertType::VolumeChange => "volume_change",
            AlertType::HolderChange => "holder_change",
            AlertType::LargeTrade => "large_trade",
            AlertType::CumulativeBuy => "cumulative_buy",
            AlertType::TopHolders => "top_holders",
            AlertType::Composite => "composite",
            AlertType::BlockEvent => "block_event",
            AlertType::LargeTransaction => "large_transaction",
            AlertType::ContractEvent => "contract_event",
        }
    }
}

impl fmt::Display for AlertType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Provisional,
    #[default]
    Confirmed,
    Retracted,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Provisional => "provisional",
            AlertState::Confirmed => "confirmed",
            AlertState::Retracted => "retracted",
        }
    }
}

/// An alert raised by evaluate, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub v: u16,
    /// Deterministic id `<task>:<target or tx/log/block id>:<rule>:<cooldown bucket>`; also the
    /// `Nats-Msg-Id` and `monitor_alert_log_v2.alert_key`.
    pub id: String,
    pub task_id: u64,
    pub config_id: u64,
    pub config_version: u64,
    #[serde(default)]
    pub batch_id: Option<u64>,
    #[serde(default)]
    pub target_id: Option<u64>,
    pub chain: Chain,
    pub alert_type: AlertType,
    pub state: AlertState,
    /// Address of the token, transaction hash or block hash the alert is about.
    pub target_value: String,
    #[serde(default)]
    pub token_name: Option<String>,
    #[serde(default)]
    pub token_symbol: Option<String>,
    /// One entry per rule that held (several for a `composite` alert).
    pub findings: Vec<Finding>,
    /// Source time of the event that completed the condition.
    pub event_time_ms: i64,
    /// Source time of the oldest event that the condition covers (window start).
    #[serde(default)]
    pub first_event_time_ms: Option<i64>,
    /// Market figures at the time of the alert.
    #[serde(default)]
    pub price: Option<f64>,
    #[serde(default)]
    pub market_cap: Option<f64>,
    /// Chain-specific facts (block number, tx hash, log lines, ...), as JSON text.
    #[serde(default)]
    pub extra_json: Option<String>,
}

impl Alert {
    /// The `Nats-Msg-Id` of this delivery. A token alert is delivered once, under its id. A
    /// block alert may be delivered once per state (provisional, then confirmed or retracted),
    /// so its msg id is `<id>:<state>`, and the alerts stream drops only a repeat of the same
    /// state.
    pub fn msg_id(&self) -> String {
        if self.alert_type.is_block_alert() {
            format!("{}:{}", self.id, self.state.as_str())
        } else {
            self.id.clone()
        }
    }
}

/// One rule that held: what it measured against what limit, over which window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: AlertType,
    pub observed: f64,
    pub threshold: f64,
    #[serde(default)]
    pub window_sec: Option<u32>,
    /// Short English explanation for logs, for example `price rose 6.1% in 300s (>= 5%)`.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Status.

/// What a status message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusScope {
    Batch { task_id: u64, batch_id: u64 },
    Task { task_id: u64 },
}

/// Periodic liveness report of a batch or block task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u16,
    pub scope: StatusScope,
    pub consumer_id: String,
    /// Percent of the batch's targets seen since the subscription started.
    pub progress: f64,
    pub item_count: u32,
    pub events: u64,
    pub errors: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_event_ms: Option<i64>,
    /// Last block number or slot (block tasks).
    #[serde(default)]
    pub last_block: Option<u64>,
    pub sent_ms: i64,
}

/// A batch or task changed status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub v: u16,
    pub scope: StatusScope,
    pub consumer_id: String,
    pub status: BatchStatus,
    #[serde(default)]
    pub reason: Option<String>,
    pub item_count: u32,
    pub progress: f64,
    pub errors: u64,
    pub sent_ms: i64,
}

/// Everything published on the status stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StatusMessage {
    Heartbeat(Heartbeat),
    Change(StatusChange),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_alert(state: AlertState, alert_type: AlertType) -> Alert {
        Alert {
            v: MESSAGE_VERSION,
            id: "7:0xabc:large_transaction:5".into(),
            task_id: 7,
            config_id: 1,
            config_version: 1,
            batch_id: None,
            target_id: None,
            chain: Chain::Eth,
            alert_type,
            state,
            target_value: "0xabc".into(),
            token_name: None,
            token_symbol: None,
            findings: Vec::new(),
            event_time_ms: 0,
            first_event_time_ms: None,
            price: None,
            market_cap: None,
            extra_json: None,
        }
    }

    #[test]
    fn block_alert_msg_id_carries_state() {
        let provisional = block_alert(AlertState::Provisional, AlertType::LargeTransaction);
        let retracted = block_alert(AlertState::Retracted, AlertType::LargeTransaction);

        assert_eq!(
            provisional.msg_id(),
            "7:0xabc:large_transaction:5:provisional"
        );
        assert_eq!(retracted.msg_id(), "7:0xabc:large_transaction:5:retracted");
    }

    #[test]
    fn token_alert_msg_id_is_alert_id() {
        let alert = block_alert(AlertState::Confirmed, AlertType::LargeTrade);

        assert_eq!(alert.msg_id(), alert.id);
    }

    #[test]
    fn transaction_without_status_decodes_as_new() {
        #[derive(Serialize)]
        struct OldTransaction {
            hash: String,
            from: String,
            value_native: f64,
        }
        let old = OldTransaction {
            hash: "0x1".into(),
            from: "0x2".into(),
            value_native: 1.5,
        };
        let bytes = rmp_serde::to_vec_named(&old).unwrap();

        let decoded: Transaction = rmp_serde::from_slice(&bytes).unwrap();

        assert_eq!(decoded.status, ChainStatus::New);
        assert_eq!(decoded.price_source, None);
        assert!(!decoded.pending);
    }

    #[test]
    fn empty_optional_fields_are_left_out() {
        let event = Event {
            source_time_ms: 1,
            ingest_time_ms: 2,
            target: None,
            kind: EventKind::Trade(Trade {
                side: Side::Buy,
                volume_usd: 10.0,
                price_usd: None,
                tx_hash: None,
                owner: None,
            }),
            snapshot: Some(TokenSnapshot {
                windows: vec![WindowStats {
                    window_sec: 60,
                    ..WindowStats::default()
                }],
                ..TokenSnapshot::default()
            }),
        };
        let bytes = rmp_serde::to_vec_named(&event).unwrap();
        let text = String::from_utf8_lossy(&bytes);

        for name in [
            "target",
            "price_usd",
            "tx_hash",
            "market_cap",
            "start_price",
            "start_holders",
        ] {
            assert!(!text.contains(name), "{name} is written although empty");
        }
        assert!(text.contains("volume_usd"));
        assert!(text.contains("window_sec"));
        let decoded: Event = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn explicit_nulls_still_decode() {
        let with_nulls = serde_json::json!({
            "source_time_ms": 1, "ingest_time_ms": 2, "target": null,
            "kind": {"Trade": {"side": "sell", "volume_usd": 3.0, "price_usd": null,
                               "tx_hash": null, "owner": null}},
            "snapshot": null,
        });
        let bytes = rmp_serde::to_vec_named(&with_nulls).unwrap();

        let decoded: Event = rmp_serde::from_slice(&bytes).unwrap();

        assert_eq!(decoded.target, None);
        assert_eq!(decoded.snapshot, None);
        assert!(matches!(
            decoded.kind,
            EventKind::Trade(Trade {
                price_usd: None,
                ..
            })
        ));
    }
}
