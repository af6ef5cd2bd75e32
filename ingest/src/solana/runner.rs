//! The runner of one Solana block task: its PubSub connection, subscriptions and block
//! fetches.
//!
//! Slots come from `slotSubscribe`; the time between two slot notifications of one session is
//! the block interval (PubSub carries no block time). Program logs come from one
//! `logsSubscribe` with `mentions` per program id, at the task's commitment. When the task
//! watches large transactions, every slot's block is fetched with `getBlock` over HTTP, at
//! most [`MAX_FETCHES`] at a time, and each transaction's SOL transfer (the gains of its
//! balances) is priced at the native price. Slots missed between two notifications, also
//! across a reconnect, are fetched too, up to [`MAX_GAP_SLOTS`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use monitor_core::messages::{
    BatchStatus, Block, ChainStatus, Event, EventKind, ProgramLog, Transaction,
};
use monitor_core::time::now_ms;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::{interval_at, sleep_until, Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::rpc::{GetBlockError, SolanaRpc};
use super::transfers::{block_transfers, Transfer};
use crate::block_task::confirm::Confirmations;
use crate::block_task::jsonrpc::{shown_value, Notification, RpcError, RpcSocket};
use crate::block_task::output::TaskOutput;
use crate::block_task::price::{NativePrice, Quote};
use crate::block_task::settings::{ChainSettings, NodeUrl};
use crate::block_task::{
    reconnect_delay, BlockContext, BlockTaskConfig, RunnerHandles, StopRequest,
};

/// `getBlock` requests in flight at most.
pub const MAX_FETCHES: usize = 4;
/// Slots waiting for their block at most; older ones are reported and dropped.
pub const MAX_QUEUED_SLOTS: usize = 2_000;
/// Slots fetched at most when notifications skipped some.
pub const MAX_GAP_SLOTS: u64 = 1_000;
/// Slots whose events stay tracked for confirmations.
const SLOT_WINDOW: u64 = 512;
/// A session that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);

type Fetch = Pin<Box<dyn Future<Output = (u64, Result<Option<Value>, GetBlockError>)> + Send>>;

enum SessionEnd {
    Stop,
    Resubscribe,
    Lost(RpcError),
}

/// Subscription ids of the current session.
#[derive(Default)]
struct Subscriptions {
    slots: Option<String>,
    /// Program id by subscription id.
    programs: HashMap<String, String>,
}

/// The task of one Solana block task.
pub struct SolanaRunner {
    context: Arc<BlockContext>,
    config: BlockTaskConfig,
    config_rx: watch::Receiver<BlockTaskConfig>,
    stop: StopRequest,
    output: TaskOutput,
    price: NativePrice,
    rpc: Option<SolanaRpc>,
    tracker: Confirmations,
    subscriptions: Subscriptions,
    heartbeat: Interval,
    failures: u32,
    last_slot: Option<u64>,
    /// When the last slot of this session was notified. It is `None` at the start of a
    /// session, so the downtime of a reconnect does not count as a block interval.
    last_slot_at: Option<Instant>,
    queued_slots: VecDeque<u64>,
    fetches: FuturesUnordered<Fetch>,
    waiting_for_price: bool,
}

impl SolanaRunner {
    pub fn new(handles: RunnerHandles) -> Self {
        let RunnerHandles {
            context,
            mut config_rx,
            stop,
            next_seq,
        } = handles;
        let config = config_rx.borrow_and_update().clone();
        let output = TaskOutput::new(&context, &config, next_seq);
        let price = context.prices.price(config.chain);
        let period = context.heartbeat_interval;
        let mut heartbeat = interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        SolanaRunner {
            tracker: Confirmations::new(config.rules.confirmations, SLOT_WINDOW),
            rpc: None,
            context,
            config,
            config_rx,
            stop,
            output,
            price,
            subscriptions: Subscriptions::default(),
            heartbeat,
            failures: 0,
            last_slot: None,
            last_slot_at: None,
            queued_slots: VecDeque::new(),
            fetches: FuturesUnordered::new(),
            waiting_for_price: false,
        }
    }

    /// Runs until stopped, then publishes the buffered events and reports `stopped`.
    #[tracing::instrument(name = "block_task", skip_all, fields(task_id = self.config.task_id, chain = %self.config.chain))]
    pub async fn run(mut self) {
        info!(rules = ?self.config.rules, "solana block task runner started");
        self.rpc = self.http_endpoint();
        match self.context.chains.ws_url(self.config.chain).cloned() {
            Some(url) => self.follow_chain(&url).await,
            None => self.idle_without_endpoint().await,
        }
        let reason = self.stop.reason();
        self.output.drain(Some(reason)).await;
    }

    /// Builds the HTTP client for `getBlock`, or reports why large transfers cannot be judged.
    fn http_endpoint(&mut self) -> Option<SolanaRpc> {
        self.config.rules.large_transactions.as_ref()?;
        let chains = &self.context.chains;
        let Some(url) = &chains.solana_rpc_url else {
            let message =
                "SOLANA_RPC_URL is not set, so large SOL transfers are not judged".to_owned();
            warn!("no Solana HTTP endpoint, large transfers are not judged");
            self.output.record_error(message);
            return None;
        };
        match SolanaRpc::new(url.url().clone(), &chains.solana_commitment) {
            Ok(rpc) => Some(rpc),
            Err(error) => {
                let message =
                    format!("failed to build the HTTP client for SOLANA_RPC_URL: {error}");
                warn!(error = %error, "failed to build the Solana HTTP client");
                self.output.record_error(message);
                None
            }
        }
    }

    async fn follow_chain(&mut self, url: &NodeUrl) {
        while !self.stop.is_stopped() {
            let started = Instant::now();
            let end = match self.open_session(url).await {
                Ok(mut socket) => self.serve(&mut socket).await,
                Err(error) => SessionEnd::Lost(error),
            };
            match end {
                SessionEnd::Stop => return,
                SessionEnd::Resubscribe => {
                    info!("subscriptions changed, connecting again");
                    self.failures = 0;
                }
                SessionEnd::Lost(error) => {
                    if started.elapsed() >= STABLE_AFTER {
                        self.failures = 0;
                    }
                    let delay = reconnect_delay(self.failures);
                    self.failures = self.failures.saturating_add(1);
                    warn!(node = %url, error = %error, retry_in_ms = delay.as_millis() as u64, "node connection failed, reconnecting");
                    let message = format!("node connection failed: {error}");
                    self.output.record_error(message.clone());
                    self.output.set_status(BatchStatus::Error, Some(message));
                    if self.wait(delay).await {
                        return;
                    }
                }
            }
        }
    }

    async fn idle_without_endpoint(&mut self) {
        let variable = ChainSettings::ws_url_variable(self.config.chain);
        let message = format!("{variable} is not set, so this ingest instance cannot follow sol");
        warn!(
            variable,
            "no node endpoint for the task's chain, the task does not run"
        );
        self.output.record_error(message.clone());
        self.output.set_status(BatchStatus::Error, Some(message));
        while !self.wait(Duration::from_secs(3600)).await {}
    }

    /// Waits for `delay` while publishing and sending heartbeats; returns true when stopped.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            self.output.start_publishes();
            tokio::select! {
                () = self.stop.cancelled() => return true,
                () = sleep_until(until) => return false,
                () = self.output.settle() => {}
                _ = self.heartbeat.tick() => self.output.queue_heartbeat(),
                changed = self.config_rx.changed() => match changed {
                    Ok(()) => { self.apply_config(); }
                    Err(_) => return true,
                },
            }
        }
    }

    async fn open_session(&mut self, url: &NodeUrl) -> Result<RpcSocket, RpcError> {
        let mut socket = RpcSocket::connect(url.url()).await?;
        self.subscriptions = Subscriptions::default();
        self.last_slot_at = None;

        let commitment = self.context.chains.solana_commitment.clone();
        for program_id in program_ids(&self.config) {
            let params = json!([{"mentions": [program_id]}, {"commitment": commitment}]);
            let id = socket.subscribe("logsSubscribe", params).await?;
            self.subscriptions.programs.insert(id, program_id);
        }
        self.subscriptions.slots = Some(socket.subscribe("slotSubscribe", json!([])).await?);

        info!(node = %url, programs = self.subscriptions.programs.len(), commitment = %commitment, "node connected and subscribed");
        self.output.set_status(BatchStatus::Running, None);
        Ok(socket)
    }

    async fn serve(&mut self, socket: &mut RpcSocket) -> SessionEnd {
        loop {
            self.output.start_publishes();
            let price_ready = self.check_price();
            if price_ready {
                self.start_fetches();
            }
            let reading = self.output.reads_allowed();
            tokio::select! {
                () = self.stop.cancelled() => return SessionEnd::Stop,
                changed = self.config_rx.changed() => match changed {
                    Ok(()) => if self.apply_config() {
                        return SessionEnd::Resubscribe;
                    },
                    Err(_) => return SessionEnd::Stop,
                },
                () = self.output.settle() => {}
                _ = self.heartbeat.tick() => self.output.queue_heartbeat(),
                () = self.price.changed(), if !price_ready => {}
                Some((slot, fetched)) = self.fetches.next(), if !self.fetches.is_empty() => {
                    self.on_block_fetched(slot, fetched);
                }
                notification = socket.next(), if reading => match notification {
                    Ok(notification) => self.on_notification(notification),
                    Err(error) => return SessionEnd::Lost(error),
                },
            }
        }
    }

    /// Applies a new config; returns true when the subscriptions must change.
    fn apply_config(&mut self) -> bool {
        let next = self.config_rx.borrow_and_update().clone();
        if next == self.config {
            return false;
        }
        let resubscribe = program_ids(&next) != program_ids(&self.config);
        info!(
            config_version = next.config_version,
            resubscribe, "block task config changed"
        );
        self.tracker.set_depth(next.rules.confirmations);
        let had_transfers = self.config.rules.large_transactions.is_some();
        self.config = next;
        if !had_transfers && self.config.rules.large_transactions.is_some() {
            self.rpc = self.http_endpoint();
        }
        resubscribe
    }

    /// Returns whether transfers can be priced (or need no price); reports a missing price
    /// once as the task's status.
    fn check_price(&mut self) -> bool {
        let needs_price = self.rpc.is_some() && self.config.rules.large_transactions.is_some();
        let ready = !needs_price || self.price.current().is_some();
        if !ready && !self.waiting_for_price {
            let reason = self.price.missing_reason(self.config.chain);
            warn!(reason = %reason, "no native price, blocks are fetched once there is one");
            self.output.record_error(reason.clone());
            self.output.set_status(BatchStatus::Error, Some(reason));
            self.waiting_for_price = true;
        } else if ready && self.waiting_for_price {
            info!("native price available, fetching blocks again");
            self.output.set_status(BatchStatus::Running, None);
            self.waiting_for_price = false;
        }
        ready
    }

    fn on_notification(&mut self, notification: Notification) {
        let subscription = &notification.subscription;
        if Some(subscription) == self.subscriptions.slots.as_ref() {
            match parse_slot_notification(&notification.result) {
                Ok(slot) => self.on_slot(slot),
                Err(reason) => self.on_malformed("slotNotification", &reason, &notification.result),
            }
        } else if let Some(program_id) = self.subscriptions.programs.get(subscription).cloned() {
            match parse_logs_notification(&program_id, &notification.result) {
                Ok(log) => self.on_program_log(log),
                Err(reason) => self.on_malformed("logsNotification", &reason, &notification.result),
            }
        } else {
            debug!(subscription = %subscription, method = %notification.method, "notification of an unknown subscription skipped");
        }
    }

    fn on_malformed(&mut self, source: &str, reason: &str, value: &Value) {
        warn!(source, reason, value = %shown_value(value), "malformed notification skipped");
        self.output
            .record_error(format!("malformed {source}: {reason}"));
    }

    fn on_slot(&mut self, slot: u64) {
        if self.last_slot.is_some_and(|last| slot <= last) {
            debug!(slot, "slot not newer than the last one, skipped");
            return;
        }
        let now = Instant::now();
        let interval_sec = self
            .last_slot_at
            .map(|at| now.duration_since(at).as_secs_f64());
        if self.config.rules.new_blocks.is_some() {
            let event = block_event(slot, interval_sec, now_ms());
            if self.tracker.track(slot, "", &event) {
                self.output.emit(event);
            }
        }
        if self.rpc.is_some() {
            self.queue_slots(slot);
        }
        for event in self.tracker.on_head(slot) {
            self.output.emit(event);
        }
        self.last_slot = Some(slot);
        self.last_slot_at = Some(now);
        self.output.set_last_block(slot);
    }

    /// Queues the slots since the last one for `getBlock`, the newest [`MAX_GAP_SLOTS`] at
    /// most, and keeps the queue within [`MAX_QUEUED_SLOTS`].
    fn queue_slots(&mut self, slot: u64) {
        let first = self.last_slot.map_or(slot, |last| last + 1);
        let kept_first = first.max(slot.saturating_sub(MAX_GAP_SLOTS - 1));
        if kept_first > first {
            let message = format!(
                "slots {first} to {} were missed and their blocks are not fetched",
                kept_first - 1
            );
            warn!(
                from = first,
                to = kept_first - 1,
                "slot gap too long, older slots skipped"
            );
            self.output.record_error(message);
        }
        self.queued_slots.extend(kept_first..=slot);
        let excess = self.queued_slots.len().saturating_sub(MAX_QUEUED_SLOTS);
        if excess > 0 {
            let dropped: Vec<u64> = self.queued_slots.drain(..excess).collect();
            let message = format!(
                "{excess} slots from {} were not fetched: block fetches fell behind",
                dropped[0]
            );
            warn!(
                dropped = excess,
                "block fetches fell behind, oldest queued slots dropped"
            );
            self.output.record_error(message);
        }
    }

    fn start_fetches(&mut self) {
        let Some(rpc) = &self.rpc else {
            return;
        };
        while self.fetches.len() < MAX_FETCHES {
            let Some(slot) = self.queued_slots.pop_front() else {
                break;
            };
            let rpc = rpc.clone();
            self.fetches
                .push(Box::pin(async move { (slot, rpc.block(slot).await) }));
        }
    }

    fn on_block_fetched(&mut self, slot: u64, fetched: Result<Option<Value>, GetBlockError>) {
        let block = match fetched {
            Ok(Some(block)) => block,
            Ok(None) => {
                debug!(slot, "slot has no block");
                return;
            }
            Err(error) => {
                warn!(slot, error = %error, "block not fetched, its large transfers are not judged");
                self.output.record_error(error.to_string());
                return;
            }
        };
        let (block_time, transfers) = match block_transfers(&block) {
            Ok(read) => read,
            Err(error) => {
                warn!(slot, error = %error, "block not readable, its large transfers are not judged");
                self.output.record_error(format!("slot {slot}: {error}"));
                return;
            }
        };
        let (Some(rule), Some(quote)) =
            (&self.config.rules.large_transactions, self.price.current())
        else {
            return;
        };
        let threshold = rule.threshold_usd;
        let source_time_ms = block_time.map_or_else(now_ms, |t| t * 1000);
        debug!(slot, transfers = transfers.len(), "block fetched");
        for transfer in transfers {
            let value_usd = transfer.sol() * quote.usd;
            if !reaches(value_usd, threshold) {
                continue;
            }
            let event = transfer_event(&transfer, slot, &quote, source_time_ms, now_ms());
            if self.tracker.track(slot, "", &event) {
                self.output.emit(event);
            }
        }
    }

    fn on_program_log(&mut self, log: ProgramLog) {
        let slot = log.slot;
        let now = now_ms();
        let event = Event {
            source_time_ms: now,
            ingest_time_ms: now,
            target: None,
            kind: EventKind::ProgramLog(log),
            snapshot: None,
        };
        if self.tracker.track(slot, "", &event) {
            self.output.emit(event);
        }
    }
}

/// Reads the slot of a `slotNotification` result (`{"parent": .., "root": .., "slot": ..}`).
/// Returns the reason when the slot is missing or not a `u64`.
pub fn parse_slot_notification(result: &Value) -> Result<u64, String> {
    let slot = &result["slot"];
    slot.as_u64().ok_or_else(|| {
        format!(
            "slot must be a whole number >= 0, got {}",
            shown_value(slot)
        )
    })
}

/// Reads a `logsNotification` result
/// (`{"context": {"slot": ..}, "value": {"signature": .., "err": .., "logs": [..]}}`) into the
/// program log of `program_id` that it reports. Returns the reason when the slot or the
/// signature is missing, or when `logs` is neither `null` nor an array of strings. A log line
/// that is not a string makes the result malformed instead of being dropped.
pub fn parse_logs_notification(program_id: &str, result: &Value) -> Result<ProgramLog, String> {
    let slot = &result["context"]["slot"];
    let slot = slot.as_u64().ok_or_else(|| {
        format!(
            "context.slot must be a whole number >= 0, got {}",
            shown_value(slot)
        )
    })?;
    let value = &result["value"];
    let signature = &value["signature"];
    let signature = signature.as_str().ok_or_else(|| {
        format!(
            "value.signature must be a string, got {}",
            shown_value(signature)
        )
    })?;
    let logs = match &value["logs"] {
        Value::Null => Vec::new(),
        Value::Array(lines) => lines
            .iter()
            .map(|line| {
                line.as_str().map(str::to_owned).ok_or_else(|| {
                    format!(
                        "value.logs must contain only strings, got {}",
                        shown_value(line)
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(format!(
                "value.logs must be an array of strings or null, got {}",
                shown_value(other)
            ))
        }
    };
    Ok(ProgramLog {
        signature: signature.to_owned(),
        slot,
        program_id: program_id.to_owned(),
        logs,
        failed: !value["err"].is_null(),
        status: ChainStatus::New,
    })
}

/// Returns the program ids whose logs the task watches, in config order.
fn program_ids(config: &BlockTaskConfig) -> Vec<String> {
    config
        .rules
        .program_logs
        .as_ref()
        .map(|rule| rule.program_ids.clone())
        .unwrap_or_default()
}

/// Builds the event of a new slot. PubSub gives slots no hash and no time, so the slot number
/// replaces the hash and the notification's arrival time is the source time.
fn block_event(slot: u64, interval_sec: Option<f64>, now_ms: i64) -> Event {
    Event {
        source_time_ms: now_ms,
        ingest_time_ms: now_ms,
        target: None,
        kind: EventKind::Block(Block {
            number: slot,
            hash: slot.to_string(),
            interval_sec,
            status: ChainStatus::New,
        }),
        snapshot: None,
    }
}

fn transfer_event(
    transfer: &Transfer,
    slot: u64,
    quote: &Quote,
    source_time_ms: i64,
    now_ms: i64,
) -> Event {
    Event {
        source_time_ms,
        ingest_time_ms: now_ms,
        target: None,
        kind: EventKind::Transaction(Transaction {
            hash: transfer.signature.clone(),
            block_number: Some(slot),
            from: transfer.from.clone(),
            to: Some(transfer.to.clone()),
            value_native: transfer.sol(),
            value_usd: Some(transfer.sol() * quote.usd),
            pending: false,
            native_price_usd: Some(quote.usd),
            price_source: Some(quote.source.clone()),
            status: ChainStatus::New,
        }),
        snapshot: None,
    }
}

/// Tests `observed >= threshold` with evaluate's tolerance for floating-point rounding.
fn reaches(observed: f64, threshold: f64) -> bool {
    observed >= threshold - threshold.abs().max(1.0) * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_event_is_priced() {
        let transfer = Transfer {
            signature: "sig".into(),
            from: "A".into(),
            to: "B".into(),
            lamports: 2_500_000_000,
        };
        let quote = Quote {
            usd: 200.0,
            source: "setting NATIVE_PRICE_USD_SOL".into(),
        };

        let event = transfer_event(&transfer, 110_130_000, &quote, 1_638_693_800_000, 1);

        let EventKind::Transaction(tx) = event.kind else {
            panic!("expected a transaction");
        };
        assert_eq!(tx.value_native, 2.5);
        assert_eq!(tx.value_usd, Some(500.0));
        assert_eq!(tx.block_number, Some(110_130_000));
        assert_eq!(event.source_time_ms, 1_638_693_800_000);
    }

    #[test]
    fn logs_notification_is_read() {
        let result = json!({
            "context": {"slot": 110_130_000},
            "value": {"signature": "sig", "err": {"InstructionError": [0, "Custom"]}, "logs": ["Program log: a"]}
        });

        let log = parse_logs_notification("Program", &result).unwrap();

        assert_eq!(log.slot, 110_130_000);
        assert_eq!(log.signature, "sig");
        assert_eq!(log.program_id, "Program");
        assert_eq!(log.logs, vec!["Program log: a".to_owned()]);
        assert!(log.failed);
    }

    #[test]
    fn logs_that_are_not_strings_are_malformed() {
        let result = |logs: Value| json!({"context": {"slot": 5}, "value": {"signature": "sig", "err": null, "logs": logs}});

        assert_eq!(
            parse_logs_notification("Program", &result(json!(["a", 1]))).unwrap_err(),
            "value.logs must contain only strings, got 1"
        );
        assert_eq!(
            parse_logs_notification("Program", &result(json!(0))).unwrap_err(),
            "value.logs must be an array of strings or null, got 0"
        );
        let log = parse_logs_notification("Program", &result(Value::Null)).unwrap();
        assert!(log.logs.is_empty());
    }

    #[test]
    fn slot_must_be_a_u64() {
        assert_eq!(
            parse_slot_notification(&json!({"parent": 1, "root": 0, "slot": 2})),
            Ok(2)
        );
        assert_eq!(
            parse_slot_notification(&json!({"slot": -1})).unwrap_err(),
            "slot must be a whole number >= 0, got -1"
        );
        assert_eq!(
            parse_slot_notification(&json!({})).unwrap_err(),
            "slot must be a whole number >= 0, got null"
        );
    }

    #[test]
    fn slot_event_uses_the_slot_as_hash() {
        let event = block_event(42, Some(0.4), 9);

        assert!(
            matches!(event.kind, EventKind::Block(ref b) if b.hash == "42" && b.interval_sec == Some(0.4))
        );
    }
}
