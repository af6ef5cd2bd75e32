//! The load generator's Birdeye server: synthetic trades for many targets at a chosen rate.
//!
//! Consumes WebSocket clients that speak Birdeye's protocol as ingest does: the upgrade checks,
//! `WELCOME` and the subscription queries are those of `devkit feed-replay`
//! ([`crate::feed_replay::handshake`], [`crate::feed_replay::query`]). Produces `TXS_DATA`
//! frames in feed-replay's simple layout, one trade per frame. A connection sends trades only
//! for the targets it subscribed on the trades channel, cycling through them as
//! [`super::schedule`] plans. Price subscriptions are accepted and get no data.
//!
//! The run's phase ([`Phase`]) is shared by every connection through a watch channel. Each
//! connection paces itself at its share of the rate (its targets over all targets), so no
//! central task or timer per target exists. A trade is stamped when its frame is written: the
//! trade time (`blockUnixTimeMs`) is the wall clock, and the transaction hash carries a
//! [`TradeTag`] with the run clock, so the backend stub can match the alert to the send time.
//! At full speed a connection writes bursts of frames and waits whenever ingest stops reading,
//! so the feed goes as fast as the pipeline takes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use monitor_core::messages::{Chain, Side};
use monitor_core::time::now_ms;

use super::schedule::{planned_trade, Pacer, Phase, PlannedTrade, TradeTag};
use super::RunClock;
use crate::feed_replay::frames::{error_frame, welcome_frame, USDT_ADDRESS};
use crate::feed_replay::handshake::{Gate, HandshakeOutcome};
use crate::feed_replay::query::{parse_client_message, Channel, ClientMessage};

/// Rate of the probe phase, in trades per second over all targets: slow enough not to load
/// a pipeline that is still starting, fast enough to raise an alert within seconds.
pub const PROBE_RATE: f64 = 200.0;
/// Frames written before one flush.
const BURST: u64 = 64;
/// Read buffer of a connection: a client sends only subscription messages.
const READ_BUFFER_BYTES: usize = 4 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait of a sender for room in the in-flight window before it checks again.
const WINDOW_RECHECK: Duration = Duration::from_millis(20);
/// Time that open connections get to close after shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const USDT_DECIMALS: u32 = 6;
const TOKEN_DECIMALS: u32 = 18;

type Socket = WebSocketStream<TcpStream>;
type WsResult<T> = Result<T, tokio_tungstenite::tungstenite::Error>;

/// A synthetic token and the fixed facts of its trades.
#[derive(Debug, Clone)]
struct TargetInfo {
    address: String,
    symbol: String,
    owner: String,
    price_usd: f64,
    /// `price_usd` as JSON, written once for every frame of the target.
    price_text: String,
}

impl TargetInfo {
    fn new(address: String, symbol: String, owner: String, price_usd: f64) -> Self {
        let price_text = ryu::Buffer::new().format_finite(price_usd).to_owned();
        TargetInfo {
            address,
            symbol,
            owner,
            price_usd,
            price_text,
        }
    }
}

/// Counts shared by the connections and read by the run.
#[derive(Debug, Default)]
pub struct FeedCounters {
    /// Trades sent, by phase.
    sent: [AtomicU64; 5],
    /// Large trades sent in the measured phase.
    large_measured: AtomicU64,
    /// Distinct (target, second of the trade time) of the measured large trades: the alert
    /// ids they raise, since the config's cooldown is one second.
    large_measured_ids: Mutex<HashSet<(u32, i64)>>,
    /// The same for the large trades of every phase.
    large_ids: Mutex<HashSet<(u32, i64)>>,
    /// Targets currently subscribed on a trades connection.
    subscribed: AtomicUsize,
    connections: AtomicUsize,
}

impl FeedCounters {
    pub fn sent(&self, phase: Phase) -> u64 {
        self.sent[phase as usize].load(Ordering::Relaxed)
    }

    pub fn large_measured(&self) -> u64 {
        self.large_measured.load(Ordering::Relaxed)
    }

    /// Alerts the measured large trades should raise.
    pub fn expected_measured_alerts(&self) -> u64 {
        self.large_measured_ids
            .lock()
            .map(|ids| ids.len() as u64)
            .unwrap_or(0)
    }

    /// The (target index, second) of every measured large trade's alert.
    pub fn measured_alert_ids(&self) -> Vec<(u32, i64)> {
        self.large_measured_ids
            .lock()
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn subscribed_targets(&self) -> usize {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Bound of the events between the feed and the backend stub when the feed sends at full
/// speed, so that the load measures the whole pipeline's rate instead of filling ingest's
/// buffers. Events in flight are estimated from the large trades, one in `period`: the alerts
/// they should raise minus the alerts received, times the period.
#[derive(Debug)]
pub struct InFlightWindow {
    limit: u64,
    period: u64,
    expected: AtomicU64,
    received: AtomicU64,
    changed: Notify,
}

impl InFlightWindow {
    /// A window of `limit` events when one trade in `period` is large.
    pub fn new(limit: u64, period: u64) -> Arc<InFlightWindow> {
        Arc::new(InFlightWindow {
            limit,
            period,
            expected: AtomicU64::new(0),
            received: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    /// Estimated events sent and not yet through the pipeline.
    pub fn in_flight(&self) -> u64 {
        let expected = self.expected.load(Ordering::Relaxed);
        let received = self.received.load(Ordering::Relaxed);
        expected.saturating_sub(received) * self.period
    }

    pub fn is_open(&self) -> bool {
        self.in_flight() < self.limit
    }

    fn add_expected(&self, alerts: u64) {
        self.expected.fetch_add(alerts, Ordering::Relaxed);
    }

    /// Counts an alert received and wakes the senders waiting for room.
    pub fn add_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// Waits for a window change, or for [`WINDOW_RECHECK`] in case a change was missed.
async fn wait_for(changed: Option<tokio::sync::futures::Notified<'_>>) {
    match changed {
        Some(changed) => {
            let _ = timeout(WINDOW_RECHECK, changed).await;
        }
        None => std::future::pending().await,
    }
}

/// The server, ready to accept connections.
pub struct LoadFeed {
    targets: Vec<TargetInfo>,
    /// Lower-case address to target index.
    index: HashMap<String, usize>,
    /// Whether each target is subscribed on some trades connection.
    owned: Mutex<Vec<bool>>,
    gate: Gate,
    rate: Option<f64>,
    /// One trade in this many is large.
    large_every: u64,
    /// Bound of the events in flight at full speed; `None` at a fixed rate.
    window: Option<Arc<InFlightWindow>>,
    phase: watch::Receiver<Phase>,
    clock: RunClock,
    counters: Arc<FeedCounters>,
    /// Count of connections accepted so far, which numbers them.
    connections: AtomicU64,
}

impl LoadFeed {
    /// Prepares a feed for `addresses` at `rate` trades per second, or at full speed within
    /// `window` when `rate` is `None`, one trade in `large_every` being large. The run changes the phase through the sender of `phase`.
    pub fn new(
        addresses: &[String],
        chain: Chain,
        rate: Option<f64>,
        large_every: u64,
        window: Option<Arc<InFlightWindow>>,
        phase: watch::Receiver<Phase>,
        clock: RunClock,
    ) -> LoadFeed {
        let targets: Vec<TargetInfo> = addresses
            .iter()
            .enumerate()
            .map(|(i, address)| {
                TargetInfo::new(
                    address.clone(),
                    format!("LG{i}"),
                    format!("0x{:040x}", 0xa11ce_u64 << 32 | i as u64),
                    0.5 + (i % 1000) as f64 / 100.0,
                )
            })
            .collect();
        let index = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| (a.to_ascii_lowercase(), i))
            .collect();
        LoadFeed {
            owned: Mutex::new(vec![false; targets.len()]),
            targets,
            index,
            gate: Gate {
                chain,
                api_key: None,
            },
            rate,
            large_every,
            window,
            phase,
            clock,
            counters: Arc::default(),
            connections: AtomicU64::new(0),
        }
    }

    pub fn counters(&self) -> Arc<FeedCounters> {
        Arc::clone(&self.counters)
    }

    /// Accepts connections until `shutdown` is cancelled, then closes them.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Small frames must leave at once: latency is what this server measures.
                        let _ = stream.set_nodelay(true);
                        connections.spawn(serve_connection(stream, peer, Arc::clone(&self), shutdown.clone()));
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "loadgen feed failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // A connection blocked on a client that stopped reading cannot see the shutdown.
        let drain = async { while connections.join_next().await.is_some() {} };
        if timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            connections.shutdown().await;
        }
    }

    /// Marks targets as subscribed; returns those that were not subscribed yet.
    fn claim(&self, addresses: &[String]) -> Vec<usize> {
        let Ok(mut owned) = self.owned.lock() else {
            return Vec::new();
        };
        let mut claimed = Vec::new();
        for address in addresses {
            let Some(&target) = self.index.get(&address.to_ascii_lowercase()) else {
                continue;
            };
            if !owned[target] {
                owned[target] = true;
                claimed.push(target);
            }
        }
        self.counters
            .subscribed
            .fetch_add(claimed.len(), Ordering::Relaxed);
        claimed
    }

    fn release(&self, targets: &[usize]) {
        if let Ok(mut owned) = self.owned.lock() {
            for &target in targets {
                owned[target] = false;
            }
        }
        self.counters
            .subscribed
            .fetch_sub(targets.len(), Ordering::Relaxed);
    }

    /// Rate of one connection with `targets` of the feed's targets in `phase`.
    fn connection_rate(&self, phase: Phase, targets: usize) -> Option<f64> {
        let share = targets as f64 / self.targets.len().max(1) as f64;
        match phase {
            Phase::Probe => Some(PROBE_RATE * share),
            _ => self.rate.map(|rate| rate * share),
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    feed: Arc<LoadFeed>,
    shutdown: CancellationToken,
) {
    let mut outcome = HandshakeOutcome::default();
    #[allow(clippy::result_large_err)]
    let callback = |request: &_, response| feed.gate.respond(request, response, &mut outcome);
    let socket = match timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(socket_config())),
    )
    .await
    {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::warn!(%peer, error = %error, "loadgen feed handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "loadgen feed handshake timed out");
            return;
        }
    };

    feed.counters.connections.fetch_add(1, Ordering::Relaxed);
    let mut connection = Connection::new(socket, Arc::clone(&feed));
    let result = connection.run(&shutdown).await;
    feed.release(&connection.targets);
    feed.counters.connections.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => tracing::debug!(%peer, "loadgen feed connection closed"),
        Err(error) => tracing::debug!(%peer, error = %error, "loadgen feed connection failed"),
    }
}

/// Socket settings with a small read buffer. Tungstenite zeroes up to `read_buffer_size`
/// bytes of its buffer before every read (tungstenite 0.30, `FrameCodec::read_in`), and the
/// 128 KiB default made that 18 % of the load generator's CPU time, although a client sends
/// only subscriptions. A larger message still grows the buffer to its size.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)
}

/// One client connection: its subscribed targets and its pacing.
struct Connection {
    socket: Socket,
    feed: Arc<LoadFeed>,
    phase: watch::Receiver<Phase>,
    current: Phase,
    /// Target indices, in subscription order.
    targets: Vec<usize>,
    /// Trades sent on this connection since it first subscribed; selects target and round.
    next: u64,
    pacer: Pacer,
    phase_started: Instant,
    /// Offset of this connection's sends within each period of its rate, from 0 to 1. All
    /// connections switch phase at the same instant, so without the offset they would send in
    /// bursts of one trade per connection, which real feeds do not.
    send_offset: f64,
}

impl Connection {
    fn new(socket: Socket, feed: Arc<LoadFeed>) -> Self {
        let phase = feed.phase.clone();
        let number = feed.connections.fetch_add(1, Ordering::Relaxed);
        Connection {
            send_offset: spread_offset(number),
            socket,
            feed,
            phase,
            current: Phase::Idle,
            targets: Vec::new(),
            next: 0,
            pacer: Pacer::new(None),
            phase_started: Instant::now(),
        }
    }

    async fn run(&mut self, shutdown: &CancellationToken) -> WsResult<()> {
        self.socket.send(Message::text(welcome_frame())).await?;
        self.switch_phase();
        loop {
            // Created before the check, so an alert that opens the window in between wakes it.
            let window_changed = self.feed.window.as_ref().map(|w| w.changed());
            let window_open = self.feed.window.as_ref().is_none_or(|w| w.is_open());
            let can_send = self.current.is_sending() && !self.targets.is_empty();
            let sending = can_send && window_open;
            let due_at = if sending {
                self.pacer
                    .next_due()
                    .map(|after| self.phase_started + after)
            } else {
                None
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = self.socket.close(None).await;
                    return Ok(());
                }
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    self.switch_phase();
                }
                incoming = self.socket.next() => match incoming {
                    None | Some(Ok(Message::Close(_))) => return Ok(()),
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await?,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error),
                },
                _ = sleep_until(due_at.unwrap_or_else(Instant::now)), if sending => self.send_due().await?,
                () = wait_for(window_changed), if can_send && !window_open => {}
            }
        }
    }

    fn switch_phase(&mut self) {
        self.current = *self.phase.borrow_and_update();
        self.restart_pacing();
    }

    fn restart_pacing(&mut self) {
        let rate = self.feed.connection_rate(self.current, self.targets.len());
        self.pacer = Pacer::new(rate);
        let delay = match rate {
            Some(rate) if rate > 0.0 => Duration::try_from_secs_f64(self.send_offset / rate)
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(1)),
            _ => Duration::ZERO,
        };
        self.phase_started = Instant::now() + delay;
    }

    async fn on_text(&mut self, text: &str) -> WsResult<()> {
        match parse_client_message(text) {
            Ok(ClientMessage::Subscribe {
                channel: Channel::Txs,
                addresses,
            }) => {
                let claimed = self.feed.claim(&addresses);
                tracing::debug!(
                    addresses = addresses.len(),
                    claimed = claimed.len(),
                    "loadgen feed trades subscription"
                );
                self.targets.extend(claimed);
                // The share of the rate grew with the targets.
                self.restart_pacing();
                Ok(())
            }
            Ok(ClientMessage::Unsubscribe(Channel::Txs)) => {
                self.feed.release(&std::mem::take(&mut self.targets));
                Ok(())
            }
            // Prices are not generated: the load is trades only.
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(error = %error, "loadgen feed rejected a client message");
                self.socket
                    .send(Message::text(error_frame(&error.to_string())))
                    .await
            }
        }
    }

    /// Writes the trades due now, then flushes. At full speed this waits while the client
    /// does not read, which is the backpressure the run measures.
    async fn send_due(&mut self) -> WsResult<()> {
        let count = self.pacer.due(self.phase_started.elapsed(), BURST);
        let phase = self.current;
        let mut large_ids = Vec::new();
        for _ in 0..count {
            let trade = self.next_trade();
            let (text, time_ms) = self.build_frame(&trade, phase);
            if trade.large {
                large_ids.push((trade.target as u32, time_ms.div_euclid(1000)));
            }
            self.socket.feed(Message::text(text)).await?;
        }
        self.socket.flush().await?;
        self.pacer.record(count);

        self.feed.counters.sent[phase as usize].fetch_add(count, Ordering::Relaxed);
        if !large_ids.is_empty() {
            self.record_large(phase, large_ids);
        }
        Ok(())
    }

    /// Counts the alert ids that large trades will raise, for the drain and the window. An id
    /// first raised in an earlier phase is not expected again: its alert carries the earlier
    /// trade's tag.
    fn record_large(&self, phase: Phase, large_ids: Vec<(u32, i64)>) {
        let counters = &self.feed.counters;
        if phase == Phase::Measure {
            counters
                .large_measured
                .fetch_add(large_ids.len() as u64, Ordering::Relaxed);
        }
        let new_ids: Vec<(u32, i64)> = match counters.large_ids.lock() {
            Ok(mut ids) => large_ids.into_iter().filter(|id| ids.insert(*id)).collect(),
            Err(_) => Vec::new(),
        };
        if let Some(window) = &self.feed.window {
            window.add_expected(new_ids.len() as u64);
        }
        if phase == Phase::Measure {
            if let Ok(mut ids) = counters.large_measured_ids.lock() {
                ids.extend(new_ids);
            }
        }
    }

    fn next_trade(&mut self) -> PlannedTrade {
        let position = (self.next % self.targets.len() as u64) as usize;
        let round = self.next / self.targets.len() as u64;
        self.next += 1;
        planned_trade(
            self.targets[position],
            round,
            self.feed.targets.len(),
            self.feed.large_every,
        )
    }

    /// Builds the frame of a trade sent now; returns it with the trade time in milliseconds.
    fn build_frame(&self, trade: &PlannedTrade, phase: Phase) -> (String, i64) {
        let tag = TradeTag {
            phase,
            seq: trade.seq,
            sent_ns: self.feed.clock.elapsed_ns(),
        };
        let time_ms = now_ms();
        let target = &self.feed.targets[trade.target];
        (txs_frame(target, trade, tag, time_ms), time_ms)
    }
}

/// Returns the send offset of connection `number`, from 0 to 1: multiples of the golden ratio
/// modulo 1 spread any number of connections evenly over the period.
fn spread_offset(number: u64) -> f64 {
    const GOLDEN_RATIO_FRACTION: f64 = 0.618_033_988_749_894_9;
    (number as f64 * GOLDEN_RATIO_FRACTION).fract()
}

/// One side of a swap, as the `from` and `to` objects of `TXS_DATA` carry it, with its
/// numbers already written as JSON.
struct Leg<'a> {
    symbol: &'a str,
    decimals: u32,
    address: &'a str,
    /// Base units, without a sign.
    amount: &'a str,
    /// Token units, without a sign.
    ui_amount: &'a str,
    price: &'a str,
    /// Whether the trader gives this side, which makes its change amounts negative.
    given_by_trader: bool,
}

/// Converts `ui_amount` tokens of `decimals` decimals to base units.
fn base_units(ui_amount: f64, decimals: u32) -> u128 {
    (ui_amount * 10f64.powi(decimals as i32)) as u128
}

/// Initial capacity of a trade frame's string, so that it never grows: a frame is about 830
/// bytes.
const FRAME_CAPACITY: usize = 1024;

/// Writes `TXS_DATA` in feed-replay's simple layout (token subscription). The frame is built
/// for every trade of the load, so it is assembled from string pieces, with `ryu` and `itoa`
/// for the numbers, instead of serde_json or `write!`, and each number is formatted once
/// however often the frame repeats it. Its strings are the run's hex addresses, `LG<n>`
/// symbols and fixed words, which need no escaping. Its floats are finite, and `ryu` writes
/// those as valid JSON numbers.
fn txs_frame(target: &TargetInfo, trade: &PlannedTrade, tag: TradeTag, time_ms: i64) -> String {
    let token_amount = trade.volume_usd / target.price_usd;
    let mut volume_text = ryu::Buffer::new();
    let volume = volume_text.format_finite(trade.volume_usd);
    let mut token_amount_text = ryu::Buffer::new();
    let mut token_units = itoa::Buffer::new();
    let mut usdt_units = itoa::Buffer::new();
    let token_given = trade.side == Side::Sell;
    let token = Leg {
        symbol: &target.symbol,
        decimals: TOKEN_DECIMALS,
        address: &target.address,
        amount: token_units.format(base_units(token_amount, TOKEN_DECIMALS)),
        ui_amount: token_amount_text.format_finite(token_amount),
        price: &target.price_text,
        given_by_trader: token_given,
    };
    let usdt = Leg {
        symbol: "USDT",
        decimals: USDT_DECIMALS,
        address: USDT_ADDRESS,
        amount: usdt_units.format(base_units(trade.volume_usd, USDT_DECIMALS)),
        ui_amount: volume,
        price: "1.0",
        given_by_trader: !token_given,
    };
    // A buy takes the token out of the pool: the trader gives USDT and receives the token.
    let (from, to, side) = match trade.side {
        Side::Buy => (usdt, token, "buy"),
        Side::Sell => (token, usdt, "sell"),
    };

    let mut frame = FrameText(String::with_capacity(FRAME_CAPACITY));
    frame.push(r#"{"type":"TXS_DATA","data":{"blockUnixTime":"#);
    frame.integer(time_ms.div_euclid(1000));
    frame.push(r#","blockUnixTimeMs":"#);
    frame.integer(time_ms);
    frame.push(r#","owner":""#);
    frame.push(&target.owner);
    frame.push(r#"","source":"uniswap_v3","txHash":""#);
    tag.write_tx_hash(&mut frame.0);
    frame.push(r#"","side":""#);
    frame.push(side);
    frame.push(r#"","tokenAddress":""#);
    frame.push(&target.address);
    frame.push(r#"","alias":null,"isTradeOnBe":false,"platform":"uniswap","volumeUSD":"#);
    frame.push(volume);
    frame.push(r#","from":"#);
    frame.leg(&from);
    frame.push(r#","to":"#);
    frame.leg(&to);
    frame.push(r#","tokenPrice":"#);
    frame.push(&target.price_text);
    frame.push("}}");
    frame.0
}

/// The text of a trade frame being written.
struct FrameText(String);

impl FrameText {
    fn push(&mut self, text: &str) {
        self.0.push_str(text);
    }

    fn integer(&mut self, value: impl itoa::Integer) {
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    /// Writes a number given as JSON text, negated when `negative`.
    fn signed(&mut self, number: &str, negative: bool) {
        if negative && number != "0" {
            self.push("-");
        }
        self.push(number);
    }

    fn leg(&mut self, leg: &Leg<'_>) {
        self.push(r#"{"symbol":""#);
        self.push(leg.symbol);
        self.push(r#"","decimals":"#);
        self.integer(leg.decimals);
        self.push(r#","address":""#);
        self.push(leg.address);
        self.push(r#"","amount":"#);
        self.push(leg.amount);
        self.push(r#","uiAmount":"#);
        self.push(leg.ui_amount);
        self.push(r#","price":"#);
        self.push(leg.price);
        self.push(r#","nearestPrice":"#);
        self.push(leg.price);
        self.push(r#","changeAmount":"#);
        self.signed(leg.amount, leg.given_by_trader);
        self.push(r#","uiChangeAmount":"#);
        self.signed(leg.ui_amount, leg.given_by_trader);
        self.push(r#","typeSwap":""#);
        self.push(if leg.given_by_trader { "from" } else { "to" });
        self.push(r#""}"#);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn target() -> TargetInfo {
        TargetInfo::new(
            "0x10ad000000000000000000000000000000000007".into(),
            "LG7".into(),
            format!("0x{:040x}", 7),
            2.0,
        )
    }

    #[test]
    fn send_offsets_spread_over_the_period() {
        let mut offsets: Vec<f64> = (0..102).map(spread_offset).collect();
        assert!(offsets.iter().all(|o| (0.0..1.0).contains(o)));
        offsets.sort_by(f64::total_cmp);
        let widest_gap = offsets
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .fold(0.0, f64::max);
        assert!(widest_gap < 0.05, "gap {widest_gap}");
    }

    #[test]
    fn frame_has_the_simple_trade_layout() {
        let trade = PlannedTrade {
            seq: 42,
            target: 7,
            large: true,
            side: Side::Buy,
            volume_usd: 150_000.0,
        };
        let tag = TradeTag {
            phase: Phase::Measure,
            seq: 42,
            sent_ns: 5_000,
        };
        let frame: Value =
            serde_json::from_str(&txs_frame(&target(), &trade, tag, 1_700_000_000_123)).unwrap();
        let data = &frame["data"];

        assert_eq!(frame["type"], "TXS_DATA");
        assert_eq!(data["side"], "buy");
        assert_eq!(data["tokenAddress"], target().address);
        assert_eq!(data["blockUnixTime"], 1_700_000_000);
        assert_eq!(data["blockUnixTimeMs"], 1_700_000_000_123i64);
        assert_eq!(data["volumeUSD"], 150_000.0);
        assert_eq!(data["to"]["address"], target().address);
        assert_eq!(data["to"]["uiAmount"], 75_000.0);
        assert_eq!(data["from"]["address"], USDT_ADDRESS);
        assert_eq!(data["from"]["amount"], 150_000_000_000u64);
        assert_eq!(data["from"]["changeAmount"], -150_000_000_000i64);
        assert_eq!(data["from"]["uiChangeAmount"], -150_000.0);
        assert_eq!(data["from"]["typeSwap"], "from");
        assert_eq!(data["to"]["changeAmount"], data["to"]["amount"]);
        assert_eq!(data["to"]["uiChangeAmount"], 75_000.0);
        assert_eq!(data["to"]["typeSwap"], "to");
        for price in [
            &data["tokenPrice"],
            &data["to"]["price"],
            &data["to"]["nearestPrice"],
        ] {
            assert_eq!(*price, 2.0);
        }
        assert_eq!(data["from"]["price"], 1.0);
        let hash = data["txHash"].as_str().unwrap();
        assert_eq!(TradeTag::from_tx_hash(hash), Some(tag));
    }

    #[test]
    fn sell_gives_the_token() {
        let trade = PlannedTrade {
            seq: 1,
            target: 7,
            large: false,
            side: Side::Sell,
            volume_usd: 10.0,
        };
        let tag = TradeTag {
            phase: Phase::Warmup,
            seq: 1,
            sent_ns: 1,
        };
        let frame: Value = serde_json::from_str(&txs_frame(&target(), &trade, tag, 1)).unwrap();
        assert_eq!(frame["data"]["side"], "sell");
        assert_eq!(frame["data"]["from"]["address"], target().address);
        assert_eq!(frame["data"]["to"]["address"], USDT_ADDRESS);
    }
}
