//! The runner of one EVM block task: its node connection, subscriptions and chain state.
//!
//! The loop reads notifications only while the event buffer has room and, for a task that
//! prices transactions, while a native price is known. Otherwise it stops reading, so the
//! node's socket pushes back. Handling a head may take several requests (block bodies, missed blocks, parents of a
//! fork, logs of a gap); they run one after another inside the handler, and notifications that
//! arrive meanwhile wait in the socket's backlog. A failed request ends the session: the
//! runner reconnects with backoff and the first head of the next session fills the gap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use monitor_core::messages::{BatchStatus, ChainStatus, Event, EventKind};
use monitor_core::rules::BlockRules;
use monitor_core::time::now_ms;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::{interval_at, sleep_until, Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::chain::{ChainView, Placement};
use super::events::{block_event, log_event, transaction_event, value_usd};
use super::pending::PendingTxs;
use super::types::{
    self, parse_block, parse_header, parse_log, parse_transaction, BlockBody, Header, RawLog,
    RawTransaction,
};
use crate::block_task::confirm::{with_status, Confirmations, EventKey};
use crate::block_task::jsonrpc::{Notification, RpcError, RpcSocket};
use crate::block_task::output::TaskOutput;
use crate::block_task::price::NativePrice;
use crate::block_task::settings::{ChainSettings, NodeUrl};
use crate::block_task::{
    reconnect_delay, BlockContext, BlockTaskConfig, RunnerHandles, StopRequest,
};

/// Blocks whose events stay tracked for a reorg, and the deepest reorg followed back.
pub const REORG_WINDOW: u64 = 128;
/// Missed blocks fetched after a reconnect, at most; older ones are reported as a gap.
pub const MAX_GAP_BLOCKS: u64 = 10_000;
/// Blocks per `eth_getLogs` request when the logs of missed blocks are fetched.
pub const LOGS_CHUNK_BLOCKS: u64 = 500;
/// A session that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Block times remembered by hash, for logs that arrive before or after their block.
const BLOCK_TIMES_KEPT: usize = 1024;
/// Minimum time between two warnings about malformed notifications.
const MALFORMED_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The reason a session ended.
enum SessionEnd {
    Stop,
    /// The task's subscriptions changed: connect again with the new ones.
    Resubscribe,
    Lost(RpcError),
}

/// Subscription ids of the current session.
#[derive(Default)]
struct Subscriptions {
    heads: Option<String>,
    logs: Option<String>,
    pending: Option<String>,
}

/// Times of recent blocks by hash, including blocks a reorg removed.
#[derive(Default)]
struct BlockTimes {
    times: HashMap<String, u64>,
    order: VecDeque<String>,
}

impl BlockTimes {
    fn insert(&mut self, hash: &str, timestamp: u64) {
        if self.times.insert(hash.to_owned(), timestamp).is_none() {
            self.order.push_back(hash.to_owned());
        }
        while self.order.len() > BLOCK_TIMES_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.times.remove(&oldest);
            }
        }
    }

    fn get(&self, hash: &str) -> Option<u64> {
        self.times.get(hash).copied()
    }
}

/// The task of one EVM block task.
pub struct EvmRunner {
    context: Arc<BlockContext>,
    config: BlockTaskConfig,
    config_rx: watch::Receiver<BlockTaskConfig>,
    stop: StopRequest,
    output: TaskOutput,
    price: NativePrice,
    chain: ChainView,
    tracker: Confirmations,
    pending: PendingTxs,
    block_times: BlockTimes,
    subscriptions: Subscriptions,
    heartbeat: Interval,
    failures: u32,
    /// Block from which logs are fetched again at the first head of a session, because logs
    /// of the last block before a disconnect may not have arrived.
    refetch_logs_from: Option<u64>,
    waiting_for_price: bool,
    last_malformed_warning: Option<Instant>,
}

impl EvmRunner {
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
        EvmRunner {
            tracker: Confirmations::new(config.rules.confirmations, REORG_WINDOW),
            context,
            config,
            config_rx,
            stop,
            output,
            price,
            chain: ChainView::new(REORG_WINDOW as usize),
            pending: PendingTxs::default(),
            block_times: BlockTimes::default(),
            subscriptions: Subscriptions::default(),
            heartbeat,
            failures: 0,
            refetch_logs_from: None,
            waiting_for_price: false,
            last_malformed_warning: None,
        }
    }

    /// Runs until stopped, then publishes the buffered events and reports `stopped`.
    #[tracing::instrument(name = "block_task", skip_all, fields(task_id = self.config.task_id, chain = %self.config.chain))]
    pub async fn run(mut self) {
        info!(rules = ?self.config.rules, "evm block task runner started");
        match self.context.chains.ws_url(self.config.chain).cloned() {
            Some(url) => self.follow_chain(&url).await,
            None => self.idle_without_endpoint().await,
        }
        let reason = self.stop.reason();
        self.output.drain(Some(reason)).await;
    }

    async fn follow_chain(&mut self, url: &NodeUrl) {
        while !self.stop.is_stopped() {
            let started = Instant::now();
            let end = match self.open_session(url).await {
                Ok(mut rpc) => self.serve(&mut rpc).await,
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

    /// Reports the missing endpoint and keeps heartbeats going until stopped.
    // NOTE: the task's lease stays with this instance meanwhile, so every ingest instance
    // needs the same endpoints: another instance with the endpoint does not take the task over.
    async fn idle_without_endpoint(&mut self) {
        let variable = ChainSettings::ws_url_variable(self.config.chain);
        let message = format!(
            "{variable} is not set, so this ingest instance cannot follow {}",
            self.config.chain
        );
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
        let mut rpc = RpcSocket::connect(url.url()).await?;
        self.subscriptions = Subscriptions::default();

        if let Some(filter) = logs_filter(&self.config.rules) {
            let id = rpc
                .subscribe("eth_subscribe", json!(["logs", filter]))
                .await?;
            self.subscriptions.logs = Some(id);
            self.refetch_logs_from = self.chain.last().map(|h| h.number);
        }
        self.subscriptions.heads = Some(rpc.subscribe("eth_subscribe", json!(["newHeads"])).await?);
        if self.watches_pending() {
            self.subscriptions.pending = Some(self.subscribe_pending(&mut rpc).await?);
        }

        info!(
            node = %url,
            logs = self.subscriptions.logs.is_some(),
            pending = self.subscriptions.pending.is_some(),
            "node connected and subscribed"
        );
        self.output.set_status(BatchStatus::Running, None);
        Ok(rpc)
    }

    /// Subscribes to pending transactions as full objects, or as hashes on nodes that do not
    /// offer objects.
    async fn subscribe_pending(&mut self, rpc: &mut RpcSocket) -> Result<String, RpcError> {
        match rpc
            .subscribe("eth_subscribe", json!(["newPendingTransactions", true]))
            .await
        {
            Ok(id) => Ok(id),
            Err(RpcError::Server { message, .. }) => {
                info!(reason = %message, "node offers pending transaction hashes only, fetching each by hash");
                rpc.subscribe("eth_subscribe", json!(["newPendingTransactions"]))
                    .await
            }
            Err(error) => Err(error),
        }
    }

    async fn serve(&mut self, rpc: &mut RpcSocket) -> SessionEnd {
        loop {
            self.output.start_publishes();
            let price_ready = self.check_price();
            let reading = self.output.reads_allowed() && price_ready;
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
                notification = rpc.next(), if reading => {
                    let handled = match notification {
                        Ok(notification) => self.on_notification(rpc, notification).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = handled {
                        return SessionEnd::Lost(error);
                    }
                }
            }
        }
    }

    /// Applies a new config; returns true when the subscriptions must change.
    fn apply_config(&mut self) -> bool {
        let next = self.config_rx.borrow_and_update().clone();
        if next == self.config {
            return false;
        }
        let resubscribe = logs_filter(&next.rules) != logs_filter(&self.config.rules)
            || watches_pending(&next) != watches_pending(&self.config);
        info!(
            config_version = next.config_version,
            resubscribe, "block task config changed"
        );
        self.tracker.set_depth(next.rules.confirmations);
        self.config = next;
        resubscribe
    }

    /// Returns whether transactions can be priced (or need no price); reports a missing
    /// price once as the task's status.
    fn check_price(&mut self) -> bool {
        let needs_price = self.config.rules.large_transactions.is_some();
        let ready = !needs_price || self.price.current().is_some();
        if !ready && !self.waiting_for_price {
            let reason = self.price.missing_reason(self.config.chain);
            warn!(reason = %reason, "no native price, the task waits for one before it reads more blocks");
            self.output.record_error(reason.clone());
            self.output.set_status(BatchStatus::Error, Some(reason));
            self.waiting_for_price = true;
        } else if ready && self.waiting_for_price {
            info!("native price available, reading blocks again");
            self.output.set_status(BatchStatus::Running, None);
            self.waiting_for_price = false;
        }
        ready
    }

    fn watches_pending(&self) -> bool {
        watches_pending(&self.config)
    }

    async fn on_notification(
        &mut self,
        rpc: &mut RpcSocket,
        notification: Notification,
    ) -> Result<(), RpcError> {
        let subscription = Some(&notification.subscription);
        if subscription == self.subscriptions.heads.as_ref() {
            match parse_header(&notification.result) {
                Ok(head) => self.on_head(rpc, head).await?,
                Err(error) => self.on_malformed("newHeads", &error),
            }
        } else if subscription == self.subscriptions.logs.as_ref() {
            match parse_log(&notification.result) {
                Ok(log) => self.on_log(rpc, log).await?,
                Err(error) => self.on_malformed("logs", &error),
            }
        } else if subscription == self.subscriptions.pending.as_ref() {
            self.on_pending(rpc, &notification.result).await?;
        } else {
            debug!(subscription = %notification.subscription, "notification of an unknown subscription skipped");
        }
        Ok(())
    }

    fn on_malformed(&mut self, source: &'static str, error: &types::ParseError) {
        let message = format!("malformed {source} notification: {error}");
        let now = Instant::now();
        let quiet = self
            .last_malformed_warning
            .is_some_and(|at| now.duration_since(at) < MALFORMED_WARN_INTERVAL);
        if !quiet {
            warn!(source, error = %error, "malformed notification skipped");
            self.last_malformed_warning = Some(now);
        }
        self.output.record_error(message);
    }

    // -----------------------------------------------------------------------------------------
    // Heads: following the chain.

    async fn on_head(&mut self, rpc: &mut RpcSocket, head: Header) -> Result<(), RpcError> {
        let head_number = head.number;
        let mut segment: VecDeque<BlockBody> = VecDeque::new();
        let mut gap_from = None;
        match self.chain.place(&head) {
            Placement::Known => {
                debug!(number = head.number, "head already processed");
                return Ok(());
            }
            Placement::Extends | Placement::Fork => {}
            Placement::Gap { from, to } => {
                let from = self.bounded_gap_start(from, to);
                info!(from, to, "fetching missed blocks");
                for number in from..=to {
                    match self.block_by_number(rpc, number).await? {
                        Some(body) => segment.push_back(body),
                        None => {
                            self.output.record_error(format!("the node does not know block {number}, it is fetched again at the next head"));
                            return Ok(());
                        }
                    }
                }
                gap_from = Some(from);
            }
        }
        segment.push_back(BlockBody {
            header: head,
            transactions: None,
        });

        if !self.follow_fork_back(rpc, &mut segment).await? {
            return Ok(());
        }
        self.retract_replaced(segment.front().map_or(head_number, |b| b.header.number));
        for body in segment {
            self.process_block(rpc, body).await?;
        }
        self.fetch_missed_logs(rpc, gap_from, head_number).await
    }

    /// Keeps the last [`MAX_GAP_BLOCKS`] of a gap and reports the rest.
    fn bounded_gap_start(&mut self, from: u64, to: u64) -> u64 {
        let count = to + 1 - from;
        if count <= MAX_GAP_BLOCKS {
            return from;
        }
        let kept_from = to + 1 - MAX_GAP_BLOCKS;
        let message = format!("blocks {from} to {} were missed and are not fetched (more than {MAX_GAP_BLOCKS} blocks)", kept_from - 1);
        warn!(
            from,
            to = kept_from - 1,
            "gap too long, older blocks skipped"
        );
        self.output.record_error(message);
        kept_from
    }

    /// Fetches parents by hash until the segment joins the chain view; false when the fork
    /// cannot be followed because the node no longer has a parent.
    async fn follow_fork_back(
        &mut self,
        rpc: &mut RpcSocket,
        segment: &mut VecDeque<BlockBody>,
    ) -> Result<bool, RpcError> {
        let mut depth = 0;
        loop {
            let Some(front) = segment.front() else {
                return Ok(false);
            };
            if self.chain.links(&front.header) {
                return Ok(true);
            }
            if depth >= REORG_WINDOW {
                let message = format!("reorg deeper than {REORG_WINDOW} blocks below block {}; alerts of the blocks it replaced beyond that are not retracted", front.header.number);
                warn!(number = front.header.number, "reorg deeper than the window");
                self.output.record_error(message);
                return Ok(true);
            }
            let parent_hash = front.header.parent_hash.clone();
            match self.block_by_hash(rpc, &parent_hash).await? {
                Some(parent) => segment.push_front(parent),
                None => {
                    self.output.record_error(format!("the node does not know block {parent_hash}, the fork is followed at the next head"));
                    return Ok(false);
                }
            }
            depth += 1;
        }
    }

    /// Drops the blocks from `number` on from the chain view and sends their events again as
    /// removed.
    fn retract_replaced(&mut self, number: u64) {
        let replaced = self.chain.truncate_from(number);
        if replaced.is_empty() {
            return;
        }
        info!(
            from = number,
            blocks = replaced.len(),
            "reorg: blocks replaced"
        );
        for header in replaced {
            for event in self.tracker.on_block_removed(header.number, &header.hash) {
                self.output.emit(event);
            }
        }
    }

    async fn process_block(
        &mut self,
        rpc: &mut RpcSocket,
        body: BlockBody,
    ) -> Result<(), RpcError> {
        let header = body.header;
        let now = now_ms();
        let parent = self
            .chain
            .last()
            .filter(|p| p.number + 1 == header.number && p.hash == header.parent_hash);
        let interval_sec = parent.map(|p| header.timestamp as f64 - p.timestamp as f64);

        if self.config.rules.new_blocks.is_some() {
            let event = block_event(&header, interval_sec, now);
            self.track_and_emit(header.number, &header.hash, event);
        }
        if self.config.rules.large_transactions.is_some() {
            let transactions = match body.transactions {
                Some(transactions) => transactions,
                None => self.transactions_of(rpc, &header).await?,
            };
            self.on_block_transactions(&header, &transactions, now);
        }

        debug!(number = header.number, interval_sec, "block processed");
        self.block_times.insert(&header.hash, header.timestamp);
        self.output.set_last_block(header.number);
        let number = header.number;
        self.chain.push(header);
        for event in self.tracker.on_head(number) {
            self.output.emit(event);
        }
        self.check_pending(rpc, number).await
    }

    async fn transactions_of(
        &mut self,
        rpc: &mut RpcSocket,
        header: &Header,
    ) -> Result<Vec<RawTransaction>, RpcError> {
        match self.block_by_hash(rpc, &header.hash).await? {
            Some(BlockBody {
                transactions: Some(transactions),
                ..
            }) => Ok(transactions),
            _ => {
                let message = format!("the node returned no transactions for block {} ({}), its large transactions are not judged", header.number, header.hash);
                warn!(number = header.number, hash = %header.hash, "block body missing");
                self.output.record_error(message);
                Ok(Vec::new())
            }
        }
    }

    /// Reports the block's transactions that reach the task's threshold, and marks pending
    /// ones as mined.
    fn on_block_transactions(
        &mut self,
        header: &Header,
        transactions: &[RawTransaction],
        now: i64,
    ) {
        let Some(rule) = &self.config.rules.large_transactions else {
            return;
        };
        let threshold = rule.threshold_usd;
        let Some(quote) = self.price.current() else {
            let reason = self.price.missing_reason(self.config.chain);
            self.output
                .record_error(format!("block {} not priced: {reason}", header.number));
            return;
        };
        let source_time_ms = header.timestamp as i64 * 1000;
        for tx in transactions {
            if self.pending.contains(&tx.hash) {
                self.on_mined_pending(&tx.hash, header.number, &header.hash);
                continue;
            }
            if tx.value_wei == 0 || !reaches(value_usd(tx, &quote), threshold) {
                continue;
            }
            let event = transaction_event(tx, Some(header.number), &quote, source_time_ms, now);
            self.track_and_emit(header.number, &header.hash, event);
        }
    }

    fn track_and_emit(&mut self, block_number: u64, block_hash: &str, event: Event) {
        if self.tracker.track(block_number, block_hash, &event) {
            self.output.emit(event);
        }
    }

    /// Fetches the logs of missed blocks, and of the last block before a reconnect, in
    /// chunks of [`LOGS_CHUNK_BLOCKS`].
    async fn fetch_missed_logs(
        &mut self,
        rpc: &mut RpcSocket,
        gap_from: Option<u64>,
        head: u64,
    ) -> Result<(), RpcError> {
        let Some(filter) = logs_filter(&self.config.rules) else {
            return Ok(());
        };
        let refetch = self.refetch_logs_from.take();
        let Some(from) = [gap_from, refetch].into_iter().flatten().min() else {
            return Ok(());
        };
        let Some(to) = head.checked_sub(1).filter(|to| *to >= from) else {
            return Ok(());
        };
        let mut chunk_start = from;
        while chunk_start <= to {
            let chunk_end = (chunk_start + LOGS_CHUNK_BLOCKS - 1).min(to);
            let mut params = filter.clone();
            params.insert("fromBlock".into(), json!(types::to_quantity(chunk_start)));
            params.insert("toBlock".into(), json!(types::to_quantity(chunk_end)));
            let result = rpc.request("eth_getLogs", json!([params])).await?;
            let logs = result.as_array().cloned().unwrap_or_default();
            debug!(
                from = chunk_start,
                to = chunk_end,
                logs = logs.len(),
                "fetched logs of missed blocks"
            );
            for value in logs {
                match parse_log(&value) {
                    Ok(log) => self.on_log(rpc, log).await?,
                    Err(error) => self.on_malformed("eth_getLogs", &error),
                }
            }
            chunk_start = chunk_end + 1;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Logs.

    async fn on_log(&mut self, rpc: &mut RpcSocket, log: RawLog) -> Result<(), RpcError> {
        let key = EventKey::Log {
            tx_hash: log.tx_hash.clone(),
            log_index: log.log_index,
        };
        if log.removed {
            let event = match self.tracker.forget(log.block_number, &key) {
                Some(first) => with_status(&first, ChainStatus::Removed),
                None => {
                    let timestamp = self.block_time(rpc, &log).await?;
                    log_event(&log, timestamp, now_ms())
                }
            };
            info!(tx_hash = %log.tx_hash, log_index = log.log_index, block = log.block_number, "log removed by a reorg");
            self.output.emit(event);
            return Ok(());
        }
        let timestamp = self.block_time(rpc, &log).await?;
        let event = log_event(&log, timestamp, now_ms());
        self.track_and_emit(log.block_number, &log.block_hash, event);
        Ok(())
    }

    /// Returns the time of a log's block: from the log, the chain view, the remembered times,
    /// or the node. A block the node no longer has gets the current time.
    async fn block_time(&mut self, rpc: &mut RpcSocket, log: &RawLog) -> Result<u64, RpcError> {
        if let Some(timestamp) = log.block_timestamp {
            return Ok(timestamp);
        }
        if let Some(timestamp) = self
            .chain
            .by_hash(&log.block_hash)
            .map(|h| h.timestamp)
            .or_else(|| self.block_times.get(&log.block_hash))
        {
            return Ok(timestamp);
        }
        let result = rpc
            .request("eth_getBlockByHash", json!([log.block_hash, false]))
            .await?;
        match parse_header(&result) {
            Ok(header) => {
                self.block_times.insert(&header.hash, header.timestamp);
                Ok(header.timestamp)
            }
            Err(_) => {
                let message = format!(
                    "block {} of log {}:{} is unknown to the node, the log gets the current time",
                    log.block_hash, log.tx_hash, log.log_index
                );
                warn!(block_hash = %log.block_hash, "block of a log not found");
                self.output.record_error(message);
                Ok((now_ms() / 1000) as u64)
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Pending transactions.

    async fn on_pending(&mut self, rpc: &mut RpcSocket, value: &Value) -> Result<(), RpcError> {
        let Some(rule) = &self.config.rules.large_transactions else {
            return Ok(());
        };
        let threshold = rule.threshold_usd;
        let tx = match value {
            Value::String(hash) => {
                let result = rpc
                    .request("eth_getTransactionByHash", json!([hash]))
                    .await?;
                if result.is_null() {
                    return Ok(());
                }
                parse_transaction(&result)
            }
            other => parse_transaction(other),
        };
        let tx = match tx {
            Ok(tx) => tx,
            Err(error) => {
                self.on_malformed("newPendingTransactions", &error);
                return Ok(());
            }
        };
        if tx.block_number.is_some() || self.pending.contains(&tx.hash) {
            return Ok(());
        }
        let Some(quote) = self.price.current() else {
            return Ok(());
        };
        if !reaches(value_usd(&tx, &quote), threshold) {
            return Ok(());
        }

        let now = now_ms();
        let event = transaction_event(&tx, None, &quote, now, now);
        let last_block = self.output.counters.last_block.unwrap_or(0);
        if self
            .pending
            .insert(&tx.hash, event.clone(), last_block, Instant::now())
        {
            info!(tx_hash = %tx.hash, "large pending transaction");
            self.output.emit(event);
        }
        Ok(())
    }

    /// Marks a followed pending transaction as mined in block `number`. It is confirmed now
    /// (without `confirmations`) or once buried, and retracted if that block is replaced.
    fn on_mined_pending(&mut self, hash: &str, number: u64, block_hash: &str) {
        let Some(first) = self.pending.take(hash) else {
            return;
        };
        let mut mined = first;
        if let EventKind::Transaction(tx) = &mut mined.kind {
            tx.pending = false;
            tx.block_number = Some(number);
        }
        info!(tx_hash = %hash, block = number, "pending transaction mined");
        self.tracker.track(number, block_hash, &mined);
        if self.tracker.depth() == 0 {
            self.output
                .emit(with_status(&mined, ChainStatus::Confirmed));
        }
    }

    /// Looks up followed pending transactions. One the node no longer returns was dropped.
    async fn check_pending(&mut self, rpc: &mut RpcSocket, head: u64) -> Result<(), RpcError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for hash in self.pending.expire(Instant::now()) {
            debug!(tx_hash = %hash, "pending transaction followed too long, forgotten");
        }
        for hash in self.pending.due_for_check(head) {
            let result = rpc
                .request("eth_getTransactionByHash", json!([hash]))
                .await?;
            if result.is_null() {
                if let Some(first) = self.pending.take(&hash) {
                    info!(tx_hash = %hash, "pending transaction dropped");
                    self.output.emit(with_status(&first, ChainStatus::Removed));
                }
                continue;
            }
            let mined_in = parse_transaction(&result)
                .ok()
                .and_then(|tx| tx.block_number);
            let block_hash = result.get("blockHash").and_then(Value::as_str);
            if let (Some(number), Some(block_hash)) = (mined_in, block_hash) {
                self.on_mined_pending(&hash, number, &block_hash.to_ascii_lowercase());
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Requests.

    async fn block_by_number(
        &mut self,
        rpc: &mut RpcSocket,
        number: u64,
    ) -> Result<Option<BlockBody>, RpcError> {
        let full = self.config.rules.large_transactions.is_some();
        let result = rpc
            .request(
                "eth_getBlockByNumber",
                json!([types::to_quantity(number), full]),
            )
            .await?;
        parse_block(&result).map_err(|e| RpcError::Unexpected {
            method: "eth_getBlockByNumber".into(),
            problem: e.to_string(),
        })
    }

    async fn block_by_hash(
        &mut self,
        rpc: &mut RpcSocket,
        hash: &str,
    ) -> Result<Option<BlockBody>, RpcError> {
        let full = self.config.rules.large_transactions.is_some();
        let result = rpc
            .request("eth_getBlockByHash", json!([hash, full]))
            .await?;
        parse_block(&result).map_err(|e| RpcError::Unexpected {
            method: "eth_getBlockByHash".into(),
            problem: e.to_string(),
        })
    }
}

/// Returns whether the task follows pending transactions: an eth task with
/// `monitor_pending_txs` and the large transaction threshold they are judged against.
fn watches_pending(config: &BlockTaskConfig) -> bool {
    config.chain == monitor_core::messages::Chain::Eth
        && config.rules.pending_txs
        && config.rules.large_transactions.is_some()
}

/// Builds the `logs` subscription filter of the task's contract events rule: its addresses
/// and the topic0 of each signature (empty lists leave that part open). `None` without the
/// rule.
pub fn logs_filter(rules: &BlockRules) -> Option<Map<String, Value>> {
    let rule = rules.contract_events.as_ref()?;
    let mut filter = Map::new();
    if !rule.addresses.is_empty() {
        filter.insert("address".into(), json!(rule.addresses));
    }
    let topics = rule.topics();
    if !topics.is_empty() {
        filter.insert("topics".into(), json!([topics]));
    }
    Some(filter)
}

/// Tests `observed >= threshold` with evaluate's tolerance for floating-point rounding, so
/// ingest never drops a transaction that evaluate would judge large.
fn reaches(observed: f64, threshold: f64) -> bool {
    observed >= threshold - threshold.abs().max(1.0) * 1e-9
}

#[cfg(test)]
mod tests {
    use monitor_core::rules::ContractEventsRule;

    use super::*;

    #[test]
    fn logs_filter_lists_addresses_and_topics() {
        let rules = BlockRules {
            contract_events: Some(ContractEventsRule {
                addresses: vec!["0xdac17f958d2ee523a2206206994597c13d831ec7".into()],
                signatures: vec![
                    "Transfer(address,address,uint256)".into(),
                    "Approval(address,address,uint256)".into(),
                ],
            }),
            ..BlockRules::default()
        };

        let filter = Value::Object(logs_filter(&rules).unwrap());

        assert_eq!(
            filter,
            json!({
                "address": ["0xdac17f958d2ee523a2206206994597c13d831ec7"],
                "topics": [[
                    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
                    "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
                ]]
            })
        );
    }

    #[test]
    fn open_rule_filters_nothing() {
        let rules = BlockRules {
            contract_events: Some(ContractEventsRule {
                addresses: Vec::new(),
                signatures: Vec::new(),
            }),
            ..BlockRules::default()
        };

        assert_eq!(logs_filter(&rules), Some(Map::new()));
        assert_eq!(logs_filter(&BlockRules::default()), None);
    }

    #[test]
    fn block_times_keep_the_newest() {
        let mut times = BlockTimes::default();
        for i in 0..(BLOCK_TIMES_KEPT as u64 + 5) {
            times.insert(&format!("0x{i}"), i);
        }

        assert_eq!(times.get("0x0"), None);
        assert_eq!(
            times.get(&format!("0x{}", BLOCK_TIMES_KEPT + 4)),
            Some(BLOCK_TIMES_KEPT as u64 + 4)
        );
    }
}
