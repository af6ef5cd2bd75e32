//! The task that runs one batch: both feed sockets, the targets' windows, the publishers.
//!
//! A [`BatchRunner`] consumes its [`RunnerConfig`] (the batch's targets and the window lengths
//! of its task's rules, updated through a watch channel) and produces event frames, heartbeats
//! and status changes. It owns everything of its batch in one tokio task: the price and trade
//! connections, the per-target state and the publish buffers, so no per-target task or timer
//! exists. Every branch of its loop calls one named handler.
//!
//! At its start it reads the stored events of its targets back into their windows
//! ([`crate::history`]). It connects to the feed meanwhile, and reads the feed once the
//! history has caught up.
//!
//! Guarantees: when the event buffer is full (NATS slow or down) the runner stops reading its
//! sockets until the buffer is half empty, so the feed is pushed back instead of events being
//! dropped. A new config changes the windows without reconnecting. On stop it closes the
//! sockets, publishes the events it buffered (for at most [`DRAIN_TIMEOUT`]), then publishes a
//! `stopped` status change.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use futures::FutureExt;
use monitor_core::messages::{BatchSpec, BatchStatus, Chain, EventFrame};
use monitor_core::subjects::Subjects;
use monitor_core::time::now_ms;
use tokio::sync::{mpsc, watch};
use tokio::time::{interval_at, sleep_until, timeout_at, Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::birdeye::{self, Channel, FeedMessage, ParseError};
use crate::feed::{FeedConnection, FeedEvent};
use crate::history::{
    History, HistoryRequest, OwnFrames, Repeats, Stored, HISTORY_SLACK, HISTORY_WAIT_LIMIT,
};
use crate::holders::{HolderPolls, HolderSnapshot};
use crate::publish::{EncodeError, FrameHeader, FrameOutcome, FramePublisher};
use crate::settings::FeedSettings;
use crate::status::{BatchCounters, StatusOutcome, StatusPublisher, StatusSource};
use crate::target::{Outcome, Restored, Targets};

/// Time a stopping runner has to publish what it holds.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum feed events handled per pass of a runner's select loop, so that one busy connection
/// cannot hold off the stop signal, the other connection or the publish acknowledgements.
const READY_EVENTS_PER_PASS: usize = 64;
/// Extra time to publish the final `stopped` status change.
const STATUS_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Handles and settings shared by every runner of this instance.
pub struct RunnerContext {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub consumer_id: String,
    pub feed: FeedSettings,
    pub heartbeat_interval: Duration,
    pub max_buffered_events: usize,
    /// The instance's holder poller, shared by every batch.
    pub holders: HolderPolls,
}

/// Batch and window lengths of a runner. The supervisor sends a new value when the task's rules
/// or the batch's targets change. Task, batch, epoch and chain stay fixed for a runner.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    pub task_id: u64,
    pub chain: Chain,
    pub epoch: u32,
    /// Window lengths in seconds that the task's rules use.
    pub window_lengths: Vec<u32>,
    /// Present when the task's rules judge holder counts or the top holders' share.
    pub holders: Option<HolderNeeds>,
    pub batch: Arc<BatchSpec>,
}

/// Stop request of a runner: a cancellation token (a child of the shutdown token) and the
/// reason reported in the runner's `stopped` status change.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
    /// Set when the batch runs on in another instance, which reports its status from then on.
    handed_over: Arc<AtomicBool>,
}

impl StopSignal {
    /// Creates a signal that also fires when `shutdown` is cancelled.
    pub fn child_of(shutdown: &CancellationToken) -> Self {
        StopSignal {
            token: shutdown.child_token(),
            reason: Arc::default(),
            handed_over: Arc::default(),
        }
    }

    /// Marks the batch as running on in another instance, so that the runner stops without
    /// reporting `stopped`. Call it before [`StopSignal::stop`], because the runner reads it once stopped.
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Relaxed);
    }

    pub fn is_handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// Stops the runner; the first reason given is the one reported.
    pub fn stop(&self, reason: impl Into<String>) {
        let _ = self.reason.set(reason.into());
        self.token.cancel();
    }

    pub async fn stopped(&self) {
        self.token.cancelled().await;
    }

    /// Returns the reason given to [`StopSignal::stop`], or the shutdown's.
    pub fn reason(&self) -> String {
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| "ingest is shutting down".to_owned())
    }
}

/// Holder figures that a batch's rules need from the holder poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderNeeds {
    /// Number of top holders whose share is computed; `None` when only counts are needed.
    pub top_n: Option<u32>,
}

/// A runner's status, sent to the supervisor on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerNotice {
    pub batch_id: u64,
    pub status: BatchStatus,
}

/// Counts repeated log lines and lets through at most `limit` per minute.
struct LogLimiter {
    limit: u32,
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new(limit: u32) -> Self {
        LogLimiter {
            limit,
            window_start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Returns whether the last call to [`LogLimiter::allow`] let its line through.
    fn logged_last(&self) -> bool {
        self.suppressed == 0
    }

    /// Returns `Some(lines suppressed since the last one logged)` when this line may be logged.
    fn allow(&mut self) -> Option<u64> {
        if self.window_start.elapsed() >= Duration::from_secs(60) {
            self.window_start = Instant::now();
            self.logged = 0;
        }
        if self.logged >= self.limit {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The task of one batch.
pub struct BatchRunner {
    context: Arc<RunnerContext>,
    config: RunnerConfig,
    config_rx: watch::Receiver<RunnerConfig>,
    stop: StopSignal,
    notices: mpsc::UnboundedSender<RunnerNotice>,
    targets: Targets,
    prices: FeedConnection,
    trades: FeedConnection,
    /// Snapshots from the holder poller, while the rules need holders.
    holder_snapshots: Option<mpsc::Receiver<HolderSnapshot>>,
    /// Event subjects whose stored frames contain the history of the targets: the batch's own
    /// and those of the earlier batches of its targets.
    history_subjects: Vec<String>,
    /// Stored events read back into every window, from the start until shortly after `running`.
    start_read: Option<HistoryRead>,
    /// Stored events read back into the windows of lengths that a config change added.
    new_windows_read: Option<HistoryRead>,
    /// Live trades and candles dropped because the stored events read back carried them.
    live_repeats: u64,
    /// Sequence number of the batch's next frame, shared with the publisher.
    next_seq: Arc<AtomicU64>,
    frames: FramePublisher,
    status: StatusPublisher,
    source: StatusSource,
    counters: BatchCounters,
    batch_status: BatchStatus,
    reads_paused: bool,
    publish_failing: bool,
    status_failing: bool,
    malformed_log: LogLimiter,
    /// Catching up after an outage fills and drains the buffer many times a second.
    pause_log: LogLimiter,
    too_old_log: LogLimiter,
}

impl BatchRunner {
    /// Prepares a runner; nothing connects before [`BatchRunner::run`].
    pub fn new(
        context: Arc<RunnerContext>,
        mut config_rx: watch::Receiver<RunnerConfig>,
        stop: StopSignal,
        next_seq: Arc<AtomicU64>,
        notices: mpsc::UnboundedSender<RunnerNotice>,
        earlier_batches: &[u64],
    ) -> Self {
        let config = config_rx.borrow_and_update().clone();
        let batch_id = config.batch.batch_id;
        let targets = Targets::new(&config.batch.targets, &config.window_lengths);
        let addresses = targets.addresses();
        let url = birdeye::feed_url(
            &context.feed.ws_url,
            config.chain,
            context.feed.api_key.expose(),
        );
        let prices = FeedConnection::with_stall_timeout(
            Channel::Prices,
            url.clone(),
            birdeye::price_subscriptions(&addresses),
            context.feed.stall_timeout,
        )
        .with_max_frame_bytes(context.feed.max_frame_bytes);
        let trades = FeedConnection::with_stall_timeout(
            Channel::Trades,
            url,
            birdeye::trade_subscriptions(&addresses),
            context.feed.stall_timeout,
        )
        .with_max_frame_bytes(context.feed.max_frame_bytes);

        let history_subjects = std::iter::once(batch_id)
            .chain(earlier_batches.iter().copied())
            .map(|id| {
                context
                    .subjects
                    .batch_events(config.chain, config.task_id, id)
            })
            .collect();
        let frames = FramePublisher::new(
            context.js.clone(),
            context
                .subjects
                .batch_events(config.chain, config.task_id, batch_id),
            FrameHeader {
                task_id: config.task_id,
                batch_id,
                epoch: config.epoch,
                chain: config.chain,
                producer: context.consumer_id.clone(),
            },
            Arc::clone(&next_seq),
            context.max_buffered_events,
        );
        let status = StatusPublisher::new(
            context.js.clone(),
            context.subjects.batch_status(config.task_id, batch_id),
        );
        let source = StatusSource {
            task_id: config.task_id,
            batch_id,
            consumer_id: context.consumer_id.clone(),
            item_count: targets.len() as u32,
        };
        BatchRunner {
            context,
            config,
            config_rx,
            stop,
            notices,
            targets,
            prices,
            trades,
            holder_snapshots: None,
            history_subjects,
            start_read: None,
            new_windows_read: None,
            live_repeats: 0,
            next_seq,
            frames,
            status,
            source,
            counters: BatchCounters::default(),
            batch_status: BatchStatus::Pending,
            reads_paused: false,
            publish_failing: false,
            status_failing: false,
            malformed_log: LogLimiter::new(10),
            pause_log: LogLimiter::new(10),
            too_old_log: LogLimiter::new(10),
        }
    }

    /// Runs until the stop token is cancelled, then drains and reports `stopped`.
    #[tracing::instrument(name = "batch", skip_all, fields(
        task_id = self.config.task_id,
        batch_id = self.config.batch.batch_id,
        epoch = self.config.epoch,
    ))]
    pub async fn run(mut self) {
        info!(
            targets = self.targets.len(),
            windows = ?self.config.window_lengths,
            feed = %birdeye::redact_url(&birdeye::feed_url(&self.context.feed.ws_url, self.config.chain, "")),
            "batch runner started"
        );
        if !self.targets.duplicates().is_empty() {
            warn!(addresses = ?self.targets.duplicates(), "batch lists an address more than once, the later entries are ignored");
        }
        if self.targets.is_empty() {
            // Nothing to subscribe: report running so that an epoch switch is not held up.
            self.set_status(
                BatchStatus::Running,
                Some("the batch has no targets".into()),
            );
        } else {
            self.set_status(BatchStatus::Pending, Some("connecting to the feed".into()));
        }
        self.sync_holder_polls();
        self.start_history();
        let mut heartbeat = heartbeat_timer(self.context.heartbeat_interval);

        loop {
            self.start_publishes();
            let reading = !self.reads_paused && !self.targets.is_empty();
            // An open connection's data waits in its socket until the history has caught up.
            let holding = self.holds_feed();
            let read_prices = reading && !(holding && self.prices.is_open());
            let read_trades = reading && !(holding && self.trades.is_open());
            let hold_until = self.hold_deadline();
            tokio::select! {
                () = self.stop.stopped() => break,
                changed = self.config_rx.changed() => match changed {
                    Ok(()) => self.apply_config(),
                    Err(_) => break,
                },
                outcome = self.frames.next_outcome() => self.on_frame_outcome(outcome),
                outcome = self.status.next_outcome() => self.on_status_outcome(outcome),
                event = self.prices.next(), if read_prices => self.on_feed_events(Channel::Prices, event),
                event = self.trades.next(), if read_trades => self.on_feed_events(Channel::Trades, event),
                snapshot = next_snapshot(&mut self.holder_snapshots), if reading && !holding => self.on_holders(snapshot),
                stored = next_stored(&mut self.start_read), if self.start_read.is_some() => self.on_stored(ReadKind::Start, stored),
                stored = next_stored(&mut self.new_windows_read), if self.new_windows_read.is_some() => self.on_stored(ReadKind::NewWindows, stored),
                () = sleep_until(hold_until), if holding => self.on_hold_limit(),
                _ = heartbeat.tick() => self.queue_heartbeat(),
            }
            self.check_backpressure();
        }

        self.drain().await;
    }

    fn start_publishes(&mut self) {
        if let Err(error) = self.frames.start_next() {
            self.on_encode_error(error);
        }
        if let Err(error) = self.status.start_next() {
            error!(error = %error, "failed to encode a status message, it is dropped");
        }
    }

    fn apply_config(&mut self) {
        let next = self.config_rx.borrow_and_update().clone();
        if next.window_lengths != self.config.window_lengths {
            info!(from = ?self.config.window_lengths, to = ?next.window_lengths, "window lengths changed");
            self.targets.set_window_lengths(&next.window_lengths);
            let added: Vec<u32> = next
                .window_lengths
                .iter()
                .filter(|length| !self.config.window_lengths.contains(length))
                .map(|length| (*length).max(1))
                .collect();
            self.read_new_windows(added);
        }
        if next.batch != self.config.batch {
            let before = self.targets.addresses();
            self.targets
                .update_specs(&next.batch.targets, &next.window_lengths);
            self.source.item_count = self.targets.len() as u32;
            let after = self.targets.addresses();
            if before != after {
                info!(
                    targets = after.len(),
                    "batch targets changed, subscribing again"
                );
                self.prices
                    .set_subscriptions(birdeye::price_subscriptions(&after));
                self.trades
                    .set_subscriptions(birdeye::trade_subscriptions(&after));
                self.refresh_status(Some("targets changed, subscribing again".into()));
            } else {
                debug!("target details changed");
            }
        }
        let holders_changed = next.holders != self.config.holders;
        let targets_changed = next.batch != self.config.batch;
        self.config = next;
        if holders_changed || targets_changed {
            self.sync_holder_polls();
        }
    }

    /// Registers the targets with the holder poller while the rules need holders.
    fn sync_holder_polls(&mut self) {
        let batch_id = self.source.batch_id;
        match self.config.holders {
            Some(needs) if !self.targets.is_empty() => {
                let receiver = self.context.holders.register(
                    batch_id,
                    self.config.chain,
                    self.targets.addresses(),
                    needs.top_n,
                );
                info!(targets = self.targets.len(), top_n = ?needs.top_n, "holder polls registered");
                self.holder_snapshots = Some(receiver);
            }
            _ => {
                if self.holder_snapshots.take().is_some() {
                    info!("holder polls no longer needed");
                }
                self.context.holders.unregister(batch_id);
            }
        }
    }

    /// Starts reading the stored events of the batch's targets back into their windows.
    fn start_history(&mut self) {
        let Some(&longest) = self.config.window_lengths.iter().max() else {
            return;
        };
        if self.targets.is_empty() {
            return;
        }
        let request = self.history_request(longest, true);
        debug!(subjects = ?request.subjects, since_ms = request.since_ms, "reading the window history");
        self.targets.start_history();
        self.start_read = Some(HistoryRead::start(&self.context.js, request, None));
    }

    /// Reads the stored events of the batch's targets into the windows of lengths that a
    /// config change added, up to the last frame stored now.
    fn read_new_windows(&mut self, lengths: Vec<u32>) {
        let Some(&longest) = lengths.iter().max() else {
            return;
        };
        if self.targets.is_empty() {
            return;
        }
        // A start read that has not caught up still brings frames from before the change, into
        // every window: a second read of those would count them twice.
        let start_behind = self
            .start_read
            .as_ref()
            .is_some_and(|read| read.history.caught_up_after().is_none());
        if start_behind || self.new_windows_read.is_some() {
            warn!(lengths = ?lengths, "new windows start from live data: an earlier window history is still being read");
            return;
        }
        let request = self.history_request(longest, false);
        debug!(subjects = ?request.subjects, since_ms = request.since_ms, lengths = ?lengths, "reading the history of new windows");
        self.new_windows_read = Some(HistoryRead::start(&self.context.js, request, Some(lengths)));
    }

    /// Returns the read of the stored frames over the last `window_sec`, skipping the frames
    /// this runner publishes from now on.
    fn history_request(&self, window_sec: u32, follow: bool) -> HistoryRequest {
        let span_ms = i64::from(window_sec) * 1000 + HISTORY_SLACK.as_millis() as i64;
        HistoryRequest {
            stream: self.context.subjects.events_stream(),
            subjects: self.history_subjects.clone(),
            since_ms: now_ms() - span_ms,
            follow,
            own: OwnFrames {
                producer: self.context.consumer_id.clone(),
                batch_id: self.source.batch_id,
                first_seq: self.next_seq.load(Ordering::Relaxed),
            },
        }
    }

    fn reads(&self) -> impl Iterator<Item = &HistoryRead> {
        self.start_read.iter().chain(&self.new_windows_read)
    }

    /// Returns whether feed data waits for a history read to catch up.
    fn holds_feed(&self) -> bool {
        self.reads().any(|read| read.history.holds_feed())
    }

    /// Returns when the feed data stops waiting at the latest.
    fn hold_deadline(&self) -> Instant {
        self.reads()
            .filter(|read| read.history.holds_feed())
            .map(|read| read.history.hold_deadline())
            .min()
            .unwrap_or_else(Instant::now)
    }

    fn on_hold_limit(&mut self) {
        for read in self.reads() {
            let waited = read.history.hold_deadline() <= Instant::now();
            if waited && read.history.caught_up_after().is_none() {
                warn!(
                    wait_ms = HISTORY_WAIT_LIMIT.as_millis() as u64,
                    frames = read.counts.frames,
                    lengths = ?read.lengths,
                    "window history not caught up in time, reading the feed with partial windows"
                );
            }
        }
    }

    /// Adds a stored frame's observations to the windows, or ends a history read.
    fn on_stored(&mut self, kind: ReadKind, stored: Stored) {
        let slot = match kind {
            ReadKind::Start => &mut self.start_read,
            ReadKind::NewWindows => &mut self.new_windows_read,
        };
        let Some(read) = slot else {
            return;
        };
        match stored {
            Stored::Frame(frame) => read.add(&frame, &mut self.targets),
            // The loop reads the feed again from its next pass.
            Stored::CaughtUp => {}
            Stored::End => {
                let live_repeats = (kind == ReadKind::Start).then_some(self.live_repeats);
                read.log_end(live_repeats);
                *slot = None;
                if kind == ReadKind::Start {
                    self.targets.end_history();
                }
            }
        }
    }

    fn on_holders(&mut self, snapshot: HolderSnapshot) {
        let outcome = self.targets.on_holders(&snapshot, now_ms());
        self.accept_holders(outcome, &snapshot);
    }

    fn accept_holders(&mut self, outcome: Outcome, snapshot: &HolderSnapshot) {
        match outcome {
            Outcome::Event(event) => {
                self.counters.record_event(event.source_time_ms);
                self.frames.push(*event);
            }
            Outcome::Unknown => {
                debug!(address = %snapshot.address, "holder snapshot of an address no longer in the batch, skipped");
            }
            Outcome::TooOld => {
                self.counters.too_old += 1;
                debug!(address = %snapshot.address, "holder snapshot older than every window, dropped");
            }
            // Holder polls are never compared with stored events.
            Outcome::Repeat => {}
        }
    }

    /// Handles `first` and then the events that the same connection has ready at once, up to
    /// [`READY_EVENTS_PER_PASS`] in all. A burst of frames then costs one pass of the select
    /// loop instead of one per frame, whose futures each register and remove a waker. Publishes
    /// start and backpressure applies after each event, as in the loop.
    fn on_feed_events(&mut self, channel: Channel, first: FeedEvent) {
        self.on_feed_event(channel, first);
        for _ in 1..READY_EVENTS_PER_PASS {
            self.start_publishes();
            self.check_backpressure();
            if self.reads_paused || self.holds_feed() {
                break;
            }
            // `next` is cancel-safe, so dropping it when nothing is ready loses nothing.
            let Some(event) = self.connection(channel).next().now_or_never() else {
                break;
            };
            self.on_feed_event(channel, event);
        }
    }

    fn on_feed_event(&mut self, channel: Channel, event: FeedEvent) {
        match event {
            FeedEvent::Subscribed => {
                info!(channel = %channel, targets = self.targets.len(), "feed connected and subscribed");
                if let Some(gap) = self.connection(channel).take_gap() {
                    self.counters.record_gap(gap.duration_ms());
                    warn!(
                        channel = %channel,
                        gap_start_ms = gap.start_ms,
                        gap_end_ms = gap.end_ms,
                        gap_ms = gap.duration_ms(),
                        gaps_total = self.counters.gaps,
                        "feed gap closed, data sent meanwhile was not received"
                    );
                }
                self.refresh_status(None);
            }
            FeedEvent::Frame(text) => self.on_frame(channel, &text),
            FeedEvent::ConnectFailed { error, retry_in } => {
                warn!(channel = %channel, error = %error, retry_in_ms = retry_in.as_millis() as u64, "feed connection failed, retrying");
                let message = format!("{channel} connection failed: {error}");
                self.counters.record_error(message.clone());
                self.refresh_status(Some(message));
            }
            FeedEvent::Closed { reason, retry_in } => {
                warn!(channel = %channel, reason = %reason, retry_in_ms = retry_in.as_millis() as u64, "feed connection lost, reconnecting");
                let message = format!("{channel} connection lost: {reason}");
                self.counters.record_error(message.clone());
                self.refresh_status(Some(message));
            }
        }
    }

    fn on_frame(&mut self, channel: Channel, text: &str) {
        let targets = &self.targets;
        let parsed = birdeye::parse_frame(text, |address| targets.is_watched(address));
        crate::metrics::feed_frame(channel);
        let ingest_time_ms = now_ms();
        match parsed {
            Ok(FeedMessage::Welcome) => debug!(channel = %channel, "feed sent WELCOME"),
            Ok(FeedMessage::Price(price)) => {
                self.connection(channel).data_received();
                let outcome = self.targets.on_price(&price, ingest_time_ms);
                self.accept(channel, outcome, &price.address, price.time_ms);
            }
            Ok(FeedMessage::Trades(trades)) => {
                self.connection(channel).data_received();
                for trade in trades {
                    let outcome = self.targets.on_trade(&trade, ingest_time_ms);
                    self.accept(channel, outcome, &trade.address, trade.time_ms);
                }
            }
            Ok(FeedMessage::Error(message)) => self.on_feed_error(channel, message),
            Ok(FeedMessage::Other(frame_type)) => {
                debug!(channel = %channel, frame_type = %frame_type, "feed frame type not used, skipped")
            }
            Err(error) => self.on_malformed(channel, error),
        }
    }

    fn accept(&mut self, channel: Channel, outcome: Outcome, address: &str, source_time_ms: i64) {
        match outcome {
            Outcome::Event(event) => {
                self.counters.record_event(event.source_time_ms);
                self.frames.push(*event);
            }
            Outcome::Repeat => {
                self.live_repeats += 1;
                debug!(channel = %channel, address, source_time_ms, "feed data already read back from the stream, dropped");
            }
            Outcome::Unknown => {
                self.counters.unknown_targets += 1;
                debug!(channel = %channel, address, "feed data for an address that is not a target of this batch, skipped");
            }
            Outcome::TooOld => {
                self.counters.too_old += 1;
                if let Some(suppressed) = self.too_old_log.allow() {
                    warn!(
                        channel = %channel,
                        address,
                        source_time_ms,
                        too_old_total = self.counters.too_old,
                        suppressed,
                        "observation older than every window of its target, dropped"
                    );
                }
            }
        }
    }

    fn on_feed_error(&mut self, channel: Channel, message: String) {
        let retry_in = self.connection(channel).reconnect();
        warn!(channel = %channel, message = %message, retry_in_ms = retry_in.as_millis() as u64, "feed sent ERROR, reconnecting");
        let error = format!("{channel} feed sent ERROR: {message}");
        self.counters.record_error(error.clone());
        self.refresh_status(Some(error));
    }

    fn on_malformed(&mut self, channel: Channel, error: ParseError) {
        self.counters.malformed_frames += 1;
        if let Some(suppressed) = self.malformed_log.allow() {
            warn!(
                channel = %channel,
                frame_type = %error.frame_type,
                problem = %error.problem,
                malformed_total = self.counters.malformed_frames,
                suppressed,
                "malformed feed frame skipped"
            );
        }
        self.counters.record_error(error.to_string());
    }

    fn on_frame_outcome(&mut self, outcome: FrameOutcome) {
        match outcome {
            FrameOutcome::Acked {
                seq,
                events,
                duplicate,
            } => {
                if self.publish_failing {
                    info!(seq, "event frame published again after failures");
                    self.publish_failing = false;
                }
                debug!(seq, events, duplicate, "event frame acknowledged");
                crate::metrics::frame_published(events);
            }
            FrameOutcome::Retrying {
                seq,
                msg_id,
                attempt,
                error,
                retry_in,
            } => {
                self.publish_failing = true;
                warn!(
                    seq,
                    msg_id = %msg_id,
                    attempt,
                    error = %error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    buffered = self.frames.len(),
                    "event frame publish failed, retrying with the same msg id"
                );
            }
            FrameOutcome::Dropped { seq, events, error } => {
                error!(seq, events, error = %error, "event frame can never be published, its events are dropped");
                self.counters.dropped_events += events as u64;
                self.counters
                    .record_error(format!("frame {seq} with {events} events dropped: {error}"));
            }
        }
    }

    fn on_encode_error(&mut self, error: EncodeError) {
        error!(seq = error.seq, events = error.events, error = %error.source, "failed to encode an event frame, its events are dropped");
        self.counters.dropped_events += error.events as u64;
        self.counters.record_error(error.to_string());
    }

    fn on_status_outcome(&mut self, outcome: StatusOutcome) {
        match outcome {
            StatusOutcome::Sent => {
                if self.status_failing {
                    info!("status published again after failures");
                    self.status_failing = false;
                }
            }
            StatusOutcome::Retrying { error, retry_in } => {
                if !self.status_failing {
                    warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, "status publish failed, retrying");
                }
                self.status_failing = true;
            }
            StatusOutcome::Superseded => debug!("failing heartbeat replaced by a newer one"),
        }
    }

    fn queue_heartbeat(&mut self) {
        let heartbeat = self
            .source
            .heartbeat(&self.counters, self.targets.progress());
        debug!(
            events = self.counters.events,
            errors = self.counters.errors,
            "heartbeat"
        );
        self.status.push(heartbeat);
    }

    /// Running when both channels are subscribed; error when one is down after a failure.
    fn refresh_status(&mut self, reason: Option<String>) {
        let both_open = self.prices.is_open() && self.trades.is_open();
        let next = match (both_open, &reason) {
            (true, _) => BatchStatus::Running,
            (false, Some(_)) => BatchStatus::Error,
            (false, None) => self.batch_status,
        };
        if next == self.batch_status {
            return;
        }
        info!(from = %self.batch_status, to = %next, reason = reason.as_deref().unwrap_or(""), "batch status changed");
        self.set_status(next, reason);
    }

    fn set_status(&mut self, status: BatchStatus, reason: Option<String>) {
        self.batch_status = status;
        if status == BatchStatus::Running {
            if let Some(read) = &mut self.start_read {
                read.history.close_after_tail();
            }
        }
        let change = self
            .source
            .change(status, reason, &self.counters, self.targets.progress());
        self.status.push(change);
        // The supervisor drops its receiver only when it exits, and then no one needs this.
        let _ = self.notices.send(RunnerNotice {
            batch_id: self.source.batch_id,
            status,
        });
    }

    /// Pauses feed reads when the event buffer is full and resumes them once it is half
    /// empty, so that a slow NATS does not toggle the reads on every acknowledgement.
    fn check_backpressure(&mut self) {
        if !self.reads_paused && self.frames.is_full() {
            self.reads_paused = true;
            self.counters.read_pauses += 1;
            if let Some(suppressed) = self.pause_log.allow() {
                warn!(
                    buffered = self.frames.len(),
                    pauses_total = self.counters.read_pauses,
                    suppressed,
                    "event buffer full, feed reads paused until NATS acknowledges"
                );
            }
        } else if self.reads_paused && self.frames.is_half_empty() {
            self.reads_paused = false;
            if self.pause_log.logged_last() {
                info!(
                    buffered = self.frames.len(),
                    "event buffer half empty, feed reads resumed"
                );
            }
        }
    }

    fn connection(&mut self, channel: Channel) -> &mut FeedConnection {
        match channel {
            Channel::Prices => &mut self.prices,
            Channel::Trades => &mut self.trades,
        }
    }

    /// Closes the sockets, publishes what is buffered, and reports `stopped`.
    async fn drain(mut self) {
        self.context.holders.unregister(self.source.batch_id);
        self.holder_snapshots = None;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        tokio::join!(self.prices.close(), self.trades.close());

        while !self.frames.is_empty() {
            self.start_publishes();
            match timeout_at(deadline, self.frames.next_outcome()).await {
                Ok(outcome) => self.on_frame_outcome(outcome),
                Err(_) => break,
            }
        }
        let lost = self.frames.len();
        if lost > 0 {
            error!(
                events = lost,
                "runner stopped before NATS acknowledged these events, they are dropped"
            );
            self.counters.dropped_events += lost as u64;
        }

        let reason = self.stop.reason();
        if self.stop.is_handed_over() {
            // Its `stopped` would come after the new owner's `running` and replace it.
            info!(reason = %reason, "batch runner stopping, the new owner reports its status");
        } else {
            info!(reason = %reason, "batch runner stopping");
            self.set_status(BatchStatus::Stopped, Some(reason));
        }
        let status_deadline = Instant::now() + STATUS_DRAIN_TIMEOUT;
        while !self.status.is_idle() {
            self.start_publishes();
            match timeout_at(status_deadline, self.status.next_outcome()).await {
                Ok(outcome) => self.on_status_outcome(outcome),
                Err(_) => {
                    warn!("stopped status not acknowledged in time");
                    break;
                }
            }
        }
        info!(
            events = self.counters.events,
            errors = self.counters.errors,
            dropped_events = self.counters.dropped_events,
            "batch runner stopped"
        );
    }
}

/// Waits for the next holder snapshot; never completes without a registration.
async fn next_snapshot(snapshots: &mut Option<mpsc::Receiver<HolderSnapshot>>) -> HolderSnapshot {
    if let Some(receiver) = snapshots {
        if let Some(snapshot) = receiver.recv().await {
            return snapshot;
        }
    }
    std::future::pending().await
}

/// Returns what comes next from a history read; only polled while there is one.
async fn next_stored(read: &mut Option<HistoryRead>) -> Stored {
    match read {
        Some(read) => read.history.next().await,
        None => std::future::pending().await,
    }
}

/// The two history reads of a runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadKind {
    /// At the start, into every window.
    Start,
    /// After a config change, into the windows of the lengths it added.
    NewWindows,
}

/// One history read of a runner and what it added so far.
struct HistoryRead {
    history: History,
    /// The window lengths it fills; `None` for every window.
    lengths: Option<Vec<u32>>,
    /// The stored trades and candles of a read for new windows, which compares them only with
    /// one another: the live ones went to the other windows.
    seen: Repeats,
    counts: HistoryCounts,
}

impl HistoryRead {
    fn start(js: &jetstream::Context, request: HistoryRequest, lengths: Option<Vec<u32>>) -> Self {
        HistoryRead {
            history: History::start(js.clone(), request),
            lengths,
            seen: Repeats::default(),
            counts: HistoryCounts::default(),
        }
    }

    fn add(&mut self, frame: &EventFrame, targets: &mut Targets) {
        let counts = &mut self.counts;
        counts.frames += 1;
        for event in &frame.events {
            let restored = match &self.lengths {
                None => targets.restore(event),
                Some(lengths) => targets.restore_into(event, lengths, &mut self.seen),
            };
            match restored {
                Restored::Added => counts.added += 1,
                Restored::Repeat => counts.repeats += 1,
                Restored::TooOld => counts.too_old += 1,
                Restored::NotOurs => {}
            }
        }
    }

    /// Logs what the read added. `live_repeats` counts the live observations dropped so far,
    /// which only the start read compares.
    fn log_end(&self, live_repeats: Option<u64>) {
        let counts = &self.counts;
        info!(
            frames = counts.frames,
            added = counts.added,
            repeats = counts.repeats,
            live_repeats = ?live_repeats,
            too_old = counts.too_old,
            caught_up_ms = self
                .history
                .caught_up_after()
                .map(|after| after.as_millis() as u64),
            elapsed_ms = self.history.elapsed().as_millis() as u64,
            lengths = ?self.lengths,
            "window history read"
        );
    }
}

/// Counts of a history read, for the log line at its end.
#[derive(Debug, Default)]
struct HistoryCounts {
    frames: u64,
    added: u64,
    /// Stored observations already counted.
    repeats: u64,
    too_old: u64,
}

fn heartbeat_timer(period: Duration) -> Interval {
    let mut timer = interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}
