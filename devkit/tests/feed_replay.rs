//! `devkit feed-replay` over real WebSocket connections, in-process and as the built binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use monitor_core::messages::Chain;
use monitor_devkit::feed_replay::frames::{TxsShape, USDT_ADDRESS};
use monitor_devkit::feed_replay::{FeedReplay, FeedReplaySettings, WETH_ADDRESS, WETH_USDT_POOL};
use monitor_devkit::trades::{load_csv, Trade};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound for one frame, so the test fails only when the server is stuck.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);
const OTHER_TOKEN: &str = "0x6b175474e89094c44da98b954eedeac495271d0f";

fn trades_csv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../data/binance-ethusdt-trades-2023-02-02/trades.csv")
}

fn recorded_trades() -> Vec<Trade> {
    load_csv(&trades_csv()).unwrap()
}

/// `buy` or `sell`, as the protocol spells it.
fn side_name(trade: &Trade) -> String {
    serde_json::to_value(trade.side)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn settings() -> FeedReplaySettings {
    FeedReplaySettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        csv: trades_csv(),
        token: vec![WETH_ADDRESS.into()],
        symbol: "WETH".into(),
        decimals: 18,
        pair: WETH_USDT_POOL.into(),
        chain: Chain::Eth,
        speed: 0.0,
        looping: false,
        live: false,
        txs_shape: TxsShape::Simple,
        api_key: None,
        ping_interval: Duration::from_secs(15),
        close_after: None,
        synthetic_tokens: None,
        recording: None,
        rest_rps: None,
    }
}

struct Server {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(settings: FeedReplaySettings) -> Server {
        let replay = Arc::new(FeedReplay::load(&settings).unwrap());
        let listener = TcpListener::bind(settings.listen).await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(replay.serve(listener, shutdown.clone()));
        Server {
            address,
            shutdown,
            task,
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.address)
    }

    async fn connect(&self) -> Client {
        let (client, response) = connect(&self.url("/socket/ethereum?x-api-key=test"), true)
            .await
            .unwrap();
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            "echo-protocol"
        );
        client
    }

    async fn stop(self) {
        self.shutdown.cancel();
        timeout(FRAME_TIMEOUT, self.task).await.unwrap().unwrap();
    }
}

async fn connect(
    url: &str,
    echo_protocol: bool,
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    WsError,
> {
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "Origin",
        HeaderValue::from_static("ws://public-api.birdeye.so"),
    );
    if echo_protocol {
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("echo-protocol"),
        );
    }
    tokio_tungstenite::connect_async(request).await
}

/// Reads the next text frame as JSON. Pings are skipped because the client replies to them itself.
async fn next_json(client: &mut Client) -> Value {
    loop {
        let message = timeout(FRAME_TIMEOUT, client.next())
            .await
            .expect("no frame from feed-replay in time")
            .expect("connection ended")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn send(client: &mut Client, message: Value) {
    client
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

fn subscribe_txs_complex(addresses: &[&str]) -> Value {
    let query = addresses
        .iter()
        .map(|a| format!("address = {a}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    json!({"type": "SUBSCRIBE_TXS", "data": {"queryType": "complex", "query": query}})
}

fn subscribe_price_complex(addresses: &[&str]) -> Value {
    let query = addresses
        .iter()
        .map(|a| format!("(address = {a} AND chartType = 1m AND currency = usd)"))
        .collect::<Vec<_>>()
        .join(" OR ");
    json!({"type": "SUBSCRIBE_PRICE", "data": {"queryType": "complex", "query": query}})
}

/// Reads `count` frames of `kind`, failing on any other data frame.
async fn read_frames(client: &mut Client, kind: &str, count: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(count);
    while frames.len() < count {
        let frame = next_json(client).await;
        assert_eq!(
            frame["type"],
            kind,
            "frame {} of {count}: {frame}",
            frames.len()
        );
        frames.push(frame);
    }
    frames
}

#[tokio::test]
async fn welcome_is_sent_on_connect() {
    let server = Server::start(settings()).await;
    let mut client = server.connect().await;

    assert_eq!(next_json(&mut client).await, json!({"type": "WELCOME"}));
    server.stop().await;
}

#[tokio::test]
async fn txs_replay_sends_every_row() {
    let trades = recorded_trades();
    let server = Server::start(settings()).await;
    let mut client = server.connect().await;
    assert_eq!(next_json(&mut client).await["type"], "WELCOME");

    send(
        &mut client,
        subscribe_txs_complex(&[OTHER_TOKEN, WETH_ADDRESS]),
    )
    .await;
    let frames = read_frames(&mut client, "TXS_DATA", trades.len()).await;

    for (frame, trade) in frames.iter().zip(&trades) {
        let data = &frame["data"];
        assert_eq!(data["blockUnixTimeMs"], trade.timestamp_ms, "{frame}");
        assert_eq!(data["blockUnixTime"], trade.timestamp_ms / 1000, "{frame}");
        assert_eq!(data["volumeUSD"].as_f64(), Some(trade.cost), "{frame}");
        assert_eq!(data["tokenAddress"], WETH_ADDRESS, "{frame}");
        assert_eq!(data["tokenPrice"].as_f64(), Some(trade.price), "{frame}");
        let side = data["side"].as_str().unwrap();
        let token_leg = if side == "buy" {
            &data["to"]
        } else {
            &data["from"]
        };
        assert_eq!(side, side_name(trade), "{frame}");
        assert_eq!(token_leg["address"], WETH_ADDRESS, "{frame}");
        assert_eq!(token_leg["price"].as_f64(), Some(trade.price), "{frame}");
    }

    // At speed 0 a frame beyond the last row would be due at once, so it would be sent before
    // the server reads this later message and replies to it.
    send(
        &mut client,
        json!({"type": "SUBSCRIBE_TXS", "data": {"queryType": "complex", "query": "address ="}}),
    )
    .await;
    let after_last_row = next_json(&mut client).await;
    assert_eq!(
        after_last_row["type"], "ERROR",
        "a frame beyond the last row: {after_last_row}"
    );
    server.stop().await;
}

#[tokio::test]
async fn price_candles_match_trades() {
    let trades = recorded_trades();
    let server = Server::start(settings()).await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    send(
        &mut client,
        subscribe_price_complex(&[WETH_ADDRESS, OTHER_TOKEN]),
    )
    .await;
    let frames = read_frames(&mut client, "PRICE_DATA", trades.len()).await;

    let mut minute = -1;
    let (mut open, mut high, mut low, mut volume) = (0.0, 0.0, 0.0, 0.0);
    for (frame, trade) in frames.iter().zip(&trades) {
        let trade_minute = trade.timestamp_ms / 60_000 * 60;
        if trade_minute != minute {
            (minute, open, high, low, volume) =
                (trade_minute, trade.price, trade.price, trade.price, 0.0);
        }
        high = f64::max(high, trade.price);
        low = f64::min(low, trade.price);
        volume += trade.amount;

        let data = &frame["data"];
        assert_eq!(data["unixTime"], minute, "{frame}");
        assert_eq!(data["o"].as_f64(), Some(open), "{frame}");
        assert_eq!(data["h"].as_f64(), Some(high), "{frame}");
        assert_eq!(data["l"].as_f64(), Some(low), "{frame}");
        assert_eq!(data["c"].as_f64(), Some(trade.price), "{frame}");
        let sent_volume = data["v"].as_f64().unwrap();
        assert!(
            (sent_volume - volume).abs() < 1e-9 * volume.max(1.0),
            "{frame}: expected v {volume}"
        );
        assert_eq!(data["address"], WETH_ADDRESS, "{frame}");
        assert_eq!(data["type"], "1m", "{frame}");
        assert_eq!(data["eventType"], "ohlcv", "{frame}");
    }
    server.stop().await;
}

#[tokio::test]
async fn unparsable_query_gets_error() {
    let server = Server::start(settings()).await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    let broken = json!({"type": "SUBSCRIBE_PRICE", "data": {"queryType": "complex", "query": "(address = X AND chartType = 1m"}});
    send(&mut client, broken).await;
    let error = next_json(&mut client).await;
    assert_eq!(error["type"], "ERROR");
    let message = error["data"]["message"].as_str().unwrap();
    assert!(message.contains("SUBSCRIBE_PRICE"), "{message}");
    assert!(message.contains("expected \")\""), "{message}");

    send(&mut client, json!("not an object")).await;
    assert_eq!(next_json(&mut client).await["type"], "ERROR");

    send(&mut client, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    let first = next_json(&mut client).await;
    assert_eq!(first["type"], "TXS_DATA");
    assert_eq!(
        first["data"]["blockUnixTimeMs"],
        recorded_trades()[0].timestamp_ms
    );
    server.stop().await;
}

#[tokio::test]
async fn simple_subscription_starts_replay() {
    let server = Server::start(settings()).await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    let simple = json!({"type": "SUBSCRIBE_PRICE", "data": {"queryType": "simple", "chartType": "1m", "address": WETH_ADDRESS.to_uppercase().replace("0X", "0x"), "currency": "usd"}});
    send(&mut client, simple).await;

    let frame = next_json(&mut client).await;
    assert_eq!(frame["type"], "PRICE_DATA");
    server.stop().await;
}

#[tokio::test]
async fn other_token_gets_no_data() {
    let server = Server::start(settings()).await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    send(&mut client, subscribe_txs_complex(&[OTHER_TOKEN])).await;
    // An error reply marks the point where the subscription above was fully handled.
    send(
        &mut client,
        json!({"type": "SUBSCRIBE_TOKEN_STATS", "data": {}}),
    )
    .await;

    let reply = next_json(&mut client).await;
    assert_eq!(reply["type"], "ERROR", "data for an unknown token: {reply}");
    assert!(reply["data"]["message"]
        .as_str()
        .unwrap()
        .contains("SUBSCRIBE_TOKEN_STATS"));
    server.stop().await;
}

#[tokio::test]
async fn complex_shape_names_pair() {
    let trades = recorded_trades();
    let server = Server::start(FeedReplaySettings {
        txs_shape: TxsShape::Complex,
        ..settings()
    })
    .await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    send(&mut client, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    let frames = read_frames(&mut client, "TXS_DATA", 20).await;

    for (frame, trade) in frames.iter().zip(&trades) {
        let data = &frame["data"];
        assert!(data.get("side").is_none(), "{frame}");
        assert!(data.get("tokenAddress").is_none(), "{frame}");
        assert_eq!(data["address"], WETH_USDT_POOL, "{frame}");
        let (token_leg, usd_leg) = match side_name(trade).as_str() {
            "buy" => (&data["to"], &data["from"]),
            _ => (&data["from"], &data["to"]),
        };
        assert_eq!(token_leg["address"], WETH_ADDRESS, "{frame}");
        assert_eq!(token_leg["price"].as_f64(), Some(trade.price), "{frame}");
        assert_eq!(usd_leg["address"], USDT_ADDRESS, "{frame}");
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_replay_independently() {
    let trades = recorded_trades();
    let server = Server::start(settings()).await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    next_json(&mut first).await;
    next_json(&mut second).await;

    send(&mut first, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    read_frames(&mut first, "TXS_DATA", 500).await;
    send(&mut second, subscribe_txs_complex(&[WETH_ADDRESS])).await;

    let second_first = next_json(&mut second).await;
    assert_eq!(
        second_first["data"]["blockUnixTimeMs"],
        trades[0].timestamp_ms
    );
    let rest = read_frames(&mut first, "TXS_DATA", trades.len() - 500).await;
    assert_eq!(
        rest.last().unwrap()["data"]["blockUnixTimeMs"],
        trades.last().unwrap().timestamp_ms
    );
    server.stop().await;
}

#[tokio::test]
async fn handshake_checks_chain_protocol_key() {
    let server = Server::start(FeedReplaySettings {
        api_key: Some(monitor_core::settings::Redacted("secret".into())),
        ..settings()
    })
    .await;

    let status = |result: Result<_, WsError>| match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP rejection, got {other}"),
        Ok(_) => panic!("expected an HTTP rejection, the handshake succeeded"),
    };
    assert_eq!(
        status(connect(&server.url("/socket/solana?x-api-key=secret"), true).await),
        404
    );
    assert_eq!(
        status(connect(&server.url("/socket/ethereum?x-api-key=wrong"), true).await),
        401
    );
    assert_eq!(
        status(connect(&server.url("/socket/ethereum"), true).await),
        401
    );
    assert_eq!(
        status(connect(&server.url("/socket/ethereum?x-api-key=secret"), false).await),
        400
    );

    let (mut client, _) = connect(&server.url("/socket/ethereum?x-api-key=secret"), true)
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["type"], "WELCOME");
    server.stop().await;
}

#[tokio::test]
async fn pings_sent_on_interval() {
    let server = Server::start(FeedReplaySettings {
        ping_interval: Duration::from_millis(50),
        ..settings()
    })
    .await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    let ping = timeout(FRAME_TIMEOUT, async {
        loop {
            if let Some(Ok(Message::Ping(_))) = client.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping within {FRAME_TIMEOUT:?}");
    server.stop().await;
}

#[tokio::test]
async fn close_after_closes_connection() {
    let server = Server::start(FeedReplaySettings {
        close_after: Some(5),
        ..settings()
    })
    .await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    send(&mut client, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    read_frames(&mut client, "TXS_DATA", 5).await;

    let next = timeout(FRAME_TIMEOUT, client.next()).await.unwrap();
    assert!(
        matches!(next, Some(Ok(Message::Close(Some(_)))) | None),
        "expected a close frame after 5 frames, got {next:?}"
    );
    server.stop().await;
}

/// A second token for the tests that replay several tokens: DAI on Ethereum.
const DAI_ADDRESS: &str = "0x6b175474e89094c44da98b954eedeac495271d0f";

#[tokio::test]
async fn several_tokens_each_replay_the_file() {
    let trades = recorded_trades();
    let server = Server::start(FeedReplaySettings {
        token: vec![WETH_ADDRESS.into(), DAI_ADDRESS.into()],
        ..settings()
    })
    .await;
    let mut both = server.connect().await;
    let mut dai_only = server.connect().await;
    next_json(&mut both).await;
    next_json(&mut dai_only).await;

    send(
        &mut both,
        subscribe_txs_complex(&[WETH_ADDRESS, DAI_ADDRESS]),
    )
    .await;
    send(&mut dai_only, subscribe_txs_complex(&[DAI_ADDRESS])).await;
    let frames = read_frames(&mut both, "TXS_DATA", 2 * trades.len()).await;
    let dai_frames = read_frames(&mut dai_only, "TXS_DATA", trades.len()).await;

    for token in [WETH_ADDRESS, DAI_ADDRESS] {
        let times: Vec<i64> = frames
            .iter()
            .filter(|f| f["data"]["tokenAddress"] == token)
            .map(|f| f["data"]["blockUnixTimeMs"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = trades.iter().map(|t| t.timestamp_ms).collect();
        assert_eq!(times, expected, "every trade once, in order, for {token}");
    }
    assert!(dai_frames
        .iter()
        .all(|f| f["data"]["tokenAddress"] == DAI_ADDRESS));
    server.stop().await;
}

#[tokio::test]
async fn live_replay_shares_one_timeline() {
    let trades = recorded_trades();
    let speed = 100.0;
    let server = Server::start(FeedReplaySettings {
        speed,
        looping: true,
        live: true,
        ..settings()
    })
    .await;
    let mut early = server.connect().await;
    let mut late = server.connect().await;
    next_json(&mut early).await;
    next_json(&mut late).await;

    // One second at speed 100 is 100 s of recorded time that a subscription now misses.
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(&mut early, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    let first_early = next_json(&mut early).await;
    send(&mut late, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    let first_late = next_json(&mut late).await;

    let time = |frame: &Value| frame["data"]["blockUnixTimeMs"].as_i64().unwrap();
    assert!(
        time(&first_early) >= trades[0].timestamp_ms + 100_000,
        "the first frame is due on the server's timeline, not the file's first row: {}",
        first_early
    );
    // The later subscription joins the same timeline: the early connection sends the same
    // trade (time and hash) too.
    let mut early_frame = first_early;
    while time(&early_frame) < time(&first_late) {
        early_frame = next_json(&mut early).await;
    }
    assert_eq!(time(&early_frame), time(&first_late));
    assert_eq!(early_frame["data"]["txHash"], first_late["data"]["txHash"]);
    server.stop().await;
}

#[tokio::test]
async fn live_replay_needs_a_pace() {
    let error = FeedReplay::load(&FeedReplaySettings {
        live: true,
        speed: 0.0,
        ..settings()
    })
    .unwrap_err();
    assert!(error.to_string().contains("--live"), "{error}");
}

#[tokio::test]
async fn loop_shifts_times_forward() {
    let trades = recorded_trades();
    let server = Server::start(FeedReplaySettings {
        looping: true,
        ..settings()
    })
    .await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    send(&mut client, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    let frames = read_frames(&mut client, "TXS_DATA", trades.len() + 1).await;

    let first_pass = &frames[0]["data"];
    let second_pass = &frames[trades.len()]["data"];
    // 09:20:00.138 to 09:23:27.493 rounds up to a 4-minute pass.
    assert_eq!(
        second_pass["blockUnixTimeMs"].as_i64().unwrap()
            - first_pass["blockUnixTimeMs"].as_i64().unwrap(),
        240_000
    );
    assert_ne!(first_pass["txHash"], second_pass["txHash"]);
    server.stop().await;
}

#[tokio::test]
async fn binary_prints_address_and_stops() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_devkit"))
        .args([
            "feed-replay",
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "0",
            "--csv",
        ])
        .arg(trades_csv())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first_line = timeout(FRAME_TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let address = first_line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first_line}"));

    let (mut client, _) = connect(&format!("ws://{address}/ethereum"), true)
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["type"], "WELCOME");
    send(&mut client, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    assert_eq!(next_json(&mut client).await["type"], "TXS_DATA");

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = timeout(FRAME_TIMEOUT, child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "feed-replay exited with {status}");
}

#[tokio::test]
async fn shutdown_aborts_stalled_connection() {
    let server = Server::start(FeedReplaySettings {
        looping: true,
        ..settings()
    })
    .await;
    let mut client = server.connect().await;
    next_json(&mut client).await;

    // The looping replay fills the socket buffers because this client never reads again.
    send(&mut client, subscribe_txs_complex(&[WETH_ADDRESS])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    server.stop().await;
    drop(client);
}
