//! Test helpers: NATS access under a test's own prefix, a scripted Birdeye WebSocket server,
//! recorded trades turned into feed frames, and readers of the events and status streams.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod stage;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{SinkExt, StreamExt};
use monitor_core::codec;
use monitor_core::messages::{
    BatchRef, BatchSpec, BatchStatus, Chain, ConfigSpec, EventFrame, StatusMessage, TargetSpec,
    TaskSpec, TaskType, MESSAGE_VERSION,
};
use monitor_core::rules::{
    CumulativeBuyRule, LargeTradeRule, PriceChangeRule, Rules, SideFilter, TokenRules,
    TriggerLogic, VolumeRule,
};
use monitor_core::settings::NatsSettings;
use monitor_core::topology::{self, Topology};
use monitor_core::Subjects;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use url::Url;

pub const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
pub const PEPE: &str = "0x6982508145454ce325ddbf47a25d4ec3d2311933";
pub const USDT: &str = "0xdac17f958d2ee523a2206206994597c13d831ec7";
pub const API_KEY: &str = "test-key";

/// Upper bound for any wait; reached only when the behaviour under test is broken.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Returns the URL of the shared NATS server (`TEST_NATS_URL`, default the development server).
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:14222".into())
}

/// Returns a subject prefix that no other test or run uses.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t_ingest_{name}_{}_{}_{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// NATS handles of one test.
pub struct Nats {
    pub settings: NatsSettings,
    pub js: jetstream::Context,
    pub topology: Topology,
}

impl Nats {
    pub async fn new(prefix: &str) -> Nats {
        let settings = NatsSettings::local(&nats_url(), prefix);
        let client = async_nats::connect(settings.url.as_str()).await.unwrap();
        let js = jetstream::new(client);
        let topology = topology::ensure(&js, &settings).await.unwrap();
        Nats {
            settings,
            js,
            topology,
        }
    }

    pub fn subjects(&self) -> &Subjects {
        &self.topology.subjects
    }

    pub async fn put_task(&self, task: &TaskSpec) {
        let bytes = codec::encode(task).unwrap();
        self.topology
            .tasks
            .put(Subjects::task_key(task.task_id), bytes.into())
            .await
            .unwrap();
    }

    pub async fn put_batch(&self, batch: &BatchSpec) {
        let bytes = codec::encode(batch).unwrap();
        self.topology
            .tasks
            .put(Subjects::batch_key(batch.batch_id), bytes.into())
            .await
            .unwrap();
    }

    /// Removes every stream and bucket of the test's prefix.
    pub async fn cleanup(&self) {
        let subjects = self.subjects();
        for stream in [
            subjects.events_stream(),
            subjects.alerts_stream(),
            subjects.status_stream(),
            subjects.dead_stream(),
        ] {
            let _ = self.js.delete_stream(&stream).await;
        }
        let _ = self.js.delete_key_value(subjects.tasks_bucket()).await;
        let _ = self.js.delete_key_value(subjects.leases_bucket()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks and batches.

pub fn token_rules() -> TokenRules {
    TokenRules {
        price_change: Some(PriceChangeRule {
            window_sec: 60,
            rise_pct: Some(5.0),
            fall_pct: Some(5.0),
        }),
        volume: Some(VolumeRule {
            window_sec: 300,
            min_volume_usd: 100_000.0,
        }),
        holder_change: None,
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: 10_000.0,
        }),
        cumulative_buy: Some(CumulativeBuyRule {
            window_sec: 120,
            min_usd: 50_000.0,
        }),
        top_holders: None,
        cooldown_sec: 300,
    }
}

pub fn task(task_id: u64, epoch: u32, rules: TokenRules, batch_ids: &[u64]) -> TaskSpec {
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id,
        name: format!("ingest test task {task_id}"),
        task_type: TaskType::Batch,
        chain: Chain::Eth,
        epoch,
        config: Some(ConfigSpec {
            config_id: 1,
            version: u64::from(epoch),
            name: "ingest test config".into(),
            trigger_logic: TriggerLogic::Or,
            rules: Rules::Token(rules),
        }),
        batches: batch_ids
            .iter()
            .enumerate()
            .map(|(i, id)| BatchRef {
                batch_id: *id,
                batch_no: i as u32 + 1,
                item_count: 2,
                status: BatchStatus::Pending,
            })
            .collect(),
        config_error: None,
        published_ms: 0,
    }
}

pub fn batch(
    batch_id: u64,
    task_id: u64,
    epoch: u32,
    targets: &[(u64, &str, Option<f64>)],
) -> BatchSpec {
    BatchSpec {
        v: MESSAGE_VERSION,
        batch_id,
        task_id,
        epoch,
        batch_no: 1,
        status: BatchStatus::Pending,
        targets: targets
            .iter()
            .enumerate()
            .map(|(i, (target_id, address, market_cap))| TargetSpec {
                target_id: *target_id,
                address: (*address).to_owned(),
                pair_address: None,
                token_name: None,
                token_symbol: None,
                market_cap: *market_cap,
                source: Some("test".into()),
                batch_order: i as u32 + 1,
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Recorded trades and the feed frames built from them.

/// One row of the recorded ETH/USDT trades.
#[derive(Debug, Clone, Copy)]
pub struct RecordedTrade {
    pub time_ms: i64,
    pub is_buy: bool,
    pub price: f64,
    pub amount: f64,
    pub cost: f64,
}

/// Reads the first `count` trades of `data/binance-ethusdt-trades-2023-02-02/trades.csv`.
pub fn recorded_trades(count: usize) -> Vec<RecordedTrade> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/binance-ethusdt-trades-2023-02-02/trades.csv"
    );
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .take(count)
        .map(|line| {
            // ,timestamp,id,type,side,price,amount,cost,date
            let fields: Vec<&str> = line.split(',').collect();
            RecordedTrade {
                time_ms: fields[1].parse().unwrap(),
                is_buy: fields[4] == "buy",
                price: fields[5].parse().unwrap(),
                amount: fields[6].parse().unwrap(),
                cost: fields[7].parse().unwrap(),
            }
        })
        .collect()
}

/// `TXS_DATA` in the simple shape (token subscription), as Birdeye sends it.
pub fn simple_trade_frame(token: &str, trade: &RecordedTrade, tx: usize) -> String {
    let (from, to) = if trade.is_buy {
        (
            leg("USDT", USDT, trade.cost, 1.0),
            leg("WETH", token, trade.amount, trade.price),
        )
    } else {
        (
            leg("WETH", token, trade.amount, trade.price),
            leg("USDT", USDT, trade.cost, 1.0),
        )
    };
    json!({
        "type": "TXS_DATA",
        "data": {
            "blockUnixTime": trade.time_ms / 1000,
            "blockUnixTimeMs": trade.time_ms,
            "owner": "0x2b6ed29a95753c3ad948348e3e7b1a251080ffb9",
            "source": "uniswap_v2",
            "txHash": format!("0x{tx:064x}"),
            "side": if trade.is_buy { "buy" } else { "sell" },
            "tokenAddress": token,
            "alias": null,
            "isTradeOnBe": false,
            "platform": "0x7a250d5630b4cf539739df2c5dacb4c659f2488d",
            "volumeUSD": trade.cost,
            "from": from,
            "to": to,
            "tokenPrice": trade.price,
        }
    })
    .to_string()
}

/// `TXS_DATA` in the complex shape (pair subscription): no token address and no side.
pub fn complex_trade_frame(
    from_token: &str,
    to_token: &str,
    trade: &RecordedTrade,
    tx: usize,
) -> String {
    json!({
        "type": "TXS_DATA",
        "data": {
            "blockUnixTime": trade.time_ms / 1000,
            "blockUnixTimeMs": trade.time_ms,
            "owner": "0x2b6ed29a95753c3ad948348e3e7b1a251080ffb9",
            "source": "uniswap_v3",
            "txHash": format!("0x{tx:064x}"),
            "address": "0x11b815efb8f581194ae79006d24e0d814b7697f6",
            "volumeUSD": trade.cost,
            "from": leg("A", from_token, trade.cost, 1.0),
            "to": leg("B", to_token, trade.amount, trade.price),
        }
    })
    .to_string()
}

fn leg(symbol: &str, address: &str, amount: f64, price: f64) -> Value {
    json!({
        "symbol": symbol,
        "decimals": 18,
        "address": address,
        "amount": amount,
        "uiAmount": amount,
        "price": price,
        "nearestPrice": price,
        "changeAmount": amount,
        "uiChangeAmount": amount,
    })
}

/// A 1-minute candle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candle {
    pub unix_time: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

/// Builds the current 1-minute candle after each trade, as the feed emits it.
pub fn candles_after_each_trade(trades: &[RecordedTrade]) -> Vec<Candle> {
    let mut candles: Vec<Candle> = Vec::new();
    for trade in trades {
        let minute = trade.time_ms / 60_000 * 60;
        let next = match candles.last() {
            Some(last) if last.unix_time == minute => Candle {
                high: last.high.max(trade.price),
                low: last.low.min(trade.price),
                close: trade.price,
                volume: last.volume + trade.amount,
                ..*last
            },
            _ => Candle {
                unix_time: minute,
                open: trade.price,
                high: trade.price,
                low: trade.price,
                close: trade.price,
                volume: trade.amount,
            },
        };
        candles.push(next);
    }
    candles
}

pub fn price_frame(token: &str, candle: &Candle) -> String {
    json!({
        "type": "PRICE_DATA",
        "data": {
            "o": candle.open,
            "h": candle.high,
            "l": candle.low,
            "c": candle.close,
            "eventType": "ohlcv",
            "type": "1m",
            "unixTime": candle.unix_time,
            "v": candle.volume,
            "symbol": "WETH",
            "address": token,
        }
    })
    .to_string()
}

pub fn error_frame(message: &str) -> String {
    json!({ "type": "ERROR", "data": { "message": message } }).to_string()
}

// ---------------------------------------------------------------------------------------------
// A scripted Birdeye WebSocket server.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedChannel {
    Prices,
    Trades,
}

/// A subscription message the server received.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Number of the connection, counting from 0 in accept order.
    pub connection: usize,
    pub channel: FeedChannel,
    /// How many identical subscriptions came before this one (0 for the first, 1 after one
    /// reconnect, ...).
    pub repeat: usize,
    pub text: String,
    pub addresses: Vec<String>,
}

/// The request line and headers of a WebSocket handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub path: String,
    pub query: Option<String>,
    pub protocol: Option<String>,
    pub origin: Option<String>,
}

/// What the server does after a subscription.
#[derive(Debug, Clone)]
pub enum Action {
    Send(String),
    Close,
}

type Script = Box<dyn Fn(&Subscription) -> Vec<Action> + Send + Sync>;

struct ServerState {
    script: Script,
    refuse_handshakes: AtomicBool,
    refused: AtomicUsize,
    connections: AtomicUsize,
    handshakes: Mutex<Vec<Handshake>>,
    subscriptions: Mutex<Vec<Subscription>>,
}

#[derive(Debug, Clone)]
struct Push {
    channel: FeedChannel,
    address: String,
    text: String,
}

/// A WebSocket server on 127.0.0.1 that speaks the Birdeye protocol: it sends `WELCOME`,
/// records subscriptions, and replies to each with the frames its script returns. Frames can
/// also be pushed to every live connection subscribed to an address.
pub struct FeedServer {
    pub url: Url,
    state: Arc<ServerState>,
    pushes: broadcast::Sender<Push>,
    task: JoinHandle<()>,
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FeedServer {
    pub async fn start(
        script: impl Fn(&Subscription) -> Vec<Action> + Send + Sync + 'static,
    ) -> FeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ServerState {
            script: Box::new(script),
            refuse_handshakes: AtomicBool::new(false),
            refused: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            handshakes: Mutex::new(Vec::new()),
            subscriptions: Mutex::new(Vec::new()),
        });
        let (pushes, _) = broadcast::channel(1024);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), pushes.clone()));
        FeedServer {
            url: Url::parse(&format!("ws://127.0.0.1:{port}/socket")).unwrap(),
            state,
            pushes,
            task,
        }
    }

    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.state.subscriptions.lock().unwrap().clone()
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.state.handshakes.lock().unwrap().clone()
    }

    /// Handshakes that completed.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Makes later handshakes fail with HTTP 503 (or succeed again).
    pub fn refuse_handshakes(&self, refuse: bool) {
        self.state.refuse_handshakes.store(refuse, Ordering::SeqCst);
    }

    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Sends a frame on every live connection of `channel` subscribed to `address`.
    pub fn push(&self, channel: FeedChannel, address: &str, text: String) {
        let _ = self.pushes.send(Push {
            channel,
            address: address.to_owned(),
            text,
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<ServerState>,
    pushes: broadcast::Sender<Push>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve(stream, Arc::clone(&state), pushes.subscribe()));
    }
}

// The handshake callback's signature is tungstenite's, large error type included.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, state: Arc<ServerState>, mut pushes: broadcast::Receiver<Push>) {
    let callback_state = Arc::clone(&state);
    let callback =
        move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
            let header_text = |name: header::HeaderName| {
                request
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let handshake = Handshake {
                path: request.uri().path().to_owned(),
                query: request.uri().query().map(str::to_owned),
                protocol: header_text(header::SEC_WEBSOCKET_PROTOCOL),
                origin: header_text(header::ORIGIN),
            };
            let refuse = callback_state.refuse_handshakes.load(Ordering::SeqCst);
            let protocol_ok = handshake.protocol.as_deref() == Some("echo-protocol");
            callback_state.handshakes.lock().unwrap().push(handshake);
            if refuse || !protocol_ok {
                callback_state.refused.fetch_add(1, Ordering::SeqCst);
                let mut error = ErrorResponse::new(Some("unavailable".into()));
                *error.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Err(error);
            }
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("echo-protocol"),
            );
            Ok(response)
        };
    let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let connection = state.connections.fetch_add(1, Ordering::SeqCst);
    let (mut sink, mut source) = socket.split();
    if sink
        .send(Message::text(r#"{"type":"WELCOME"}"#))
        .await
        .is_err()
    {
        return;
    }

    let mut subscribed: Option<(FeedChannel, Vec<String>)> = None;
    loop {
        tokio::select! {
            message = source.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(_)) => continue,
                    _ => return,
                };
                let Some(subscription) = record_subscription(&state, connection, &text) else {
                    continue;
                };
                subscribed = Some((subscription.channel, subscription.addresses.clone()));
                for action in (state.script)(&subscription) {
                    let sent = match action {
                        Action::Send(frame) => sink.send(Message::text(frame)).await,
                        Action::Close => {
                            let _ = sink.send(Message::Close(None)).await;
                            return;
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            }
            push = pushes.recv() => {
                let Ok(push) = push else { continue };
                let matches = subscribed.as_ref().is_some_and(|(channel, addresses)| {
                    *channel == push.channel && addresses.contains(&push.address)
                });
                if matches && sink.send(Message::text(push.text)).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn record_subscription(state: &ServerState, connection: usize, text: &str) -> Option<Subscription> {
    let value: Value = serde_json::from_str(text).ok()?;
    let channel = match value["type"].as_str()? {
        "SUBSCRIBE_PRICE" => FeedChannel::Prices,
        "SUBSCRIBE_TXS" => FeedChannel::Trades,
        _ => return None,
    };
    let query = value["data"]["query"].as_str()?;
    let addresses = query
        .split("address = ")
        .skip(1)
        .map(|rest| rest.split([' ', ')']).next().unwrap_or_default().to_owned())
        .collect();
    let mut subscriptions = state.subscriptions.lock().unwrap();
    let repeat = subscriptions.iter().filter(|s| s.text == text).count();
    let subscription = Subscription {
        connection,
        channel,
        repeat,
        text: text.to_owned(),
        addresses,
    };
    subscriptions.push(subscription.clone());
    Some(subscription)
}

// ---------------------------------------------------------------------------------------------
// Reading the streams.

/// A frame read from the events stream.
#[derive(Debug, Clone)]
pub struct Published {
    pub subject: String,
    pub msg_id: Option<String>,
    pub frame: EventFrame,
}

/// An ordered consumer of every message of a stream, from its first message.
pub struct StreamReader {
    messages: consumer::pull::Ordered,
}

impl StreamReader {
    pub async fn new(js: &jetstream::Context, stream: &str) -> StreamReader {
        let stream = js.get_stream(stream).await.unwrap();
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig::default())
            .await
            .unwrap();
        StreamReader {
            messages: consumer.messages().await.unwrap(),
        }
    }

    /// Returns the next message, or `None` when none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<jetstream::Message> {
        match timeout(wait, self.messages.next()).await {
            Ok(Some(message)) => Some(message.unwrap()),
            Ok(None) => panic!("ordered consumer ended"),
            Err(_) => None,
        }
    }
}

/// Reads event frames into `seen` until `done(seen)` holds; panics after [`WAIT_LIMIT`].
pub async fn read_frames_until(
    reader: &mut StreamReader,
    seen: &mut Vec<Published>,
    what: &str,
    done: impl Fn(&[Published]) -> bool,
) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}; frames so far: {seen:#?}"
        );
        if let Some(message) = reader.next(left.min(Duration::from_secs(1))).await {
            let msg_id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned());
            seen.push(Published {
                subject: message.subject.to_string(),
                msg_id,
                frame: codec::decode(&message.payload).unwrap(),
            });
        }
    }
}

/// A status message with the order in which the stream stored it.
#[derive(Debug, Clone)]
pub struct StatusRecord {
    pub subject: String,
    pub message: StatusMessage,
}

/// Reads status messages into `seen` until `done(seen)` holds; panics after [`WAIT_LIMIT`].
pub async fn read_status_until(
    reader: &mut StreamReader,
    seen: &mut Vec<StatusRecord>,
    what: &str,
    done: impl Fn(&[StatusRecord]) -> bool,
) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}; status so far: {seen:#?}"
        );
        if let Some(message) = reader.next(left.min(Duration::from_secs(1))).await {
            seen.push(StatusRecord {
                subject: message.subject.to_string(),
                message: codec::decode(&message.payload).unwrap(),
            });
        }
    }
}

/// Polls `condition` until it holds; panics after [`WAIT_LIMIT`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}
