//! Hostile Birdeye frames against the ingest stage, over a real WebSocket and a real NATS.
//!
//! Each test makes the feed server send one malformed or adversarial frame and then a good
//! trade (on the same connection, or on the next one when the bad frame ends the connection).
//! It checks the one-line error that the batch reports as `last_error` in its heartbeats
//! (the same text ingest logs), and that the good trade still reached the events stream, so
//! the batch went on. `docs/hostile-inputs.md` lists them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use monitor_core::messages::{EventKind, StatusMessage, StatusScope};
use monitor_ingest::settings::IngestSettings;
use serde_json::{json, Value};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;
use url::Url;

const BATCH_ID: u64 = 401;
const TASK_ID: u64 = 4;
const WSOL: &str = "So11111111111111111111111111111111111111112";
const USDC_SOL: &str = "EPjFWdd5AufqSSqeM2qNu7xTDqQSL5yMo6PvYJ5zkqX3";

/// An ingest stage of one test, in this process.
struct Ingest {
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), monitor_ingest::IngestError>>,
}

impl Ingest {
    fn start(nats: &Nats, feed_url: Url, max_frame_bytes: Option<usize>) -> Ingest {
        let prefix = nats.settings.subject_prefix.clone();
        let mut settings = IngestSettings::local(&nats.settings.url, &prefix, feed_url, API_KEY);
        if let Some(max_frame_bytes) = max_frame_bytes {
            settings.feed.max_frame_bytes = max_frame_bytes;
        }
        settings.heartbeat_interval = Duration::from_millis(200);
        settings.runtime.consumer_id_prefix = Some(prefix);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(monitor_ingest::run(settings, shutdown.clone()));
        Ingest { shutdown, handle }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// The good trade that follows every bad frame.
fn good_trade() -> String {
    let trades = recorded_trades(2);
    simple_trade_frame(WETH, &trades[1], 1)
}

fn good_trade_hash() -> String {
    format!("0x{:064x}", 1)
}

/// A valid trade frame of the recording with `edit` applied to its `data`.
fn trade_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let trades = recorded_trades(1);
    let mut frame: Value = serde_json::from_str(&simple_trade_frame(WETH, &trades[0], 0)).unwrap();
    edit(frame["data"].as_object_mut().unwrap());
    frame.to_string()
}

/// Serves `bad` and then the good trade on the trades channel, runs ingest, and returns the
/// `last_error` of the batch once the good trade was published.
async fn last_error_after(test: &str, bad: Vec<Action>) -> String {
    last_error_with_limit(test, bad, None).await
}

async fn last_error_with_limit(
    test: &str,
    bad: Vec<Action>,
    max_frame_bytes: Option<usize>,
) -> String {
    let server = FeedServer::start(move |sub| match (sub.channel, sub.repeat) {
        (FeedChannel::Trades, 0) => {
            let mut actions = bad.clone();
            actions.push(Action::Send(good_trade()));
            actions
        }
        (FeedChannel::Trades, _) => vec![Action::Send(good_trade())],
        _ => vec![],
    })
    .await;
    let url = server.url.clone();
    let error = run_batch(test, url, max_frame_bytes).await;
    drop(server);
    error
}

/// Runs ingest on one batch watching WETH, waits for the good trade in the events stream and
/// for a heartbeat that reports an error, and returns that error.
async fn run_batch(test: &str, feed_url: Url, max_frame_bytes: Option<usize>) -> String {
    let nats = Nats::new(&unique_prefix(test)).await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    nats.put_batch(&batch(BATCH_ID, TASK_ID, 1, &[(41, WETH, None)]))
        .await;
    nats.put_task(&task(TASK_ID, 1, token_rules(), &[BATCH_ID]))
        .await;
    let ingest = Ingest::start(&nats, feed_url, max_frame_bytes);

    let mut frames = Vec::new();
    read_frames_until(&mut events, &mut frames, "the good trade after the bad frame", |frames| {
        frames.iter().flat_map(|p| &p.frame.events).any(|e| {
            matches!(&e.kind, EventKind::Trade(t) if t.tx_hash.as_deref() == Some(good_trade_hash().as_str()))
        })
    })
    .await;
    let published_targets: Vec<String> = frames
        .iter()
        .flat_map(|p| &p.frame.events)
        .filter_map(|e| e.target.as_ref().map(|t| t.address.clone()))
        .collect();
    assert!(
        published_targets.iter().all(|a| a == WETH),
        "only the batch's target is published: {published_targets:?}"
    );

    let mut records = Vec::new();
    read_status_until(
        &mut status,
        &mut records,
        "a heartbeat with the error",
        |records| {
            records
                .iter()
                .any(|r| heartbeat_error(&r.message).is_some())
        },
    )
    .await;
    let error = records
        .iter()
        .find_map(|r| heartbeat_error(&r.message))
        .unwrap();

    ingest.stop().await;
    nats.cleanup().await;
    error
}

fn heartbeat_error(message: &StatusMessage) -> Option<String> {
    match message {
        StatusMessage::Heartbeat(h) if matches!(h.scope, StatusScope::Batch { batch_id, .. } if batch_id == BATCH_ID) => {
            h.last_error.clone()
        }
        _ => None,
    }
}

fn assert_one_line(error: &str, expected: &str) {
    assert_eq!(error, expected);
    assert!(!error.contains('\n'));
}

#[tokio::test]
async fn truncated_json_frame() {
    let frame = good_trade();
    let bad = frame[..frame.len() / 2].to_owned();
    let error = last_error_after("truncated", vec![Action::Send(bad.clone())]).await;
    assert!(
        error.starts_with("malformed <invalid JSON> frame: EOF while parsing"),
        "{error}"
    );
}

#[tokio::test]
async fn volume_usd_as_string() {
    let bad = trade_with(|d| {
        d.insert("volumeUSD".into(), json!("43440.1416"));
    });
    let error = last_error_after("volume_as_string", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed TXS_DATA frame: volumeUSD must be a number, got \"43440.1416\"",
    );
}

#[tokio::test]
async fn nan_price() {
    let bad = trade_with(|_| {}).replace("\"tokenPrice\":1666.8", "\"tokenPrice\":NaN");
    assert!(bad.contains("NaN"));
    let error = last_error_after("nan_price", vec![Action::Send(bad)]).await;
    assert!(
        error.starts_with("malformed <invalid JSON> frame: expected value at line 1 column "),
        "{error}"
    );
}

#[tokio::test]
async fn infinite_price() {
    let bad = trade_with(|_| {}).replace("\"tokenPrice\":1666.8", "\"tokenPrice\":1e999");
    assert!(bad.contains("1e999"));
    let error = last_error_after("infinite_price", vec![Action::Send(bad)]).await;
    assert!(
        error.starts_with("malformed <invalid JSON> frame: number out of range at line 1 column "),
        "{error}"
    );
}

#[tokio::test]
async fn negative_volume_usd() {
    let bad = trade_with(|d| {
        d.insert("volumeUSD".into(), json!(-43440.1416));
    });
    let error = last_error_after("negative_volume", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed TXS_DATA frame: volumeUSD must not be negative, got -43440.1416",
    );
}

#[tokio::test]
async fn volume_usd_over_2_pow_64() {
    let bad = trade_with(|_| {}).replace(
        "\"volumeUSD\":43440.1416",
        "\"volumeUSD\":18446744073709551616",
    );
    assert!(bad.contains("18446744073709551616"));
    let error = last_error_after("volume_over_2_pow_64", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed TXS_DATA frame: volumeUSD must be at most 1e15 USD, got 1.8446744073709552e19",
    );
}

#[tokio::test]
async fn frame_of_20_mb() {
    let bad = format!(
        "{{\"type\":\"TXS_DATA\",\"data\":{{\"note\":\"{}\"}}}}",
        "x".repeat(20 << 20)
    );
    let error = last_error_after("frame_20_mb", vec![Action::Send(bad)]).await;
    assert!(
        error.starts_with(
            "trades connection lost: read failed: Space limit exceeded: Message too long: "
        ),
        "{error}"
    );
    assert!(error.ends_with(" > 4194304"), "{error}");
}

/// `MAX_FRAME_BYTES` lowers the limit: a 2 KiB frame ends a connection limited to 1 KiB.
#[tokio::test]
async fn frame_over_max_frame_bytes_setting() {
    let bad = format!(
        "{{\"type\":\"TXS_DATA\",\"data\":{{\"note\":\"{}\"}}}}",
        "x".repeat(2048)
    );
    let error =
        last_error_with_limit("frame_over_setting", vec![Action::Send(bad)], Some(1024)).await;
    assert_one_line(
        &error,
        "trades connection lost: read failed: Space limit exceeded: Message too long: 2086 > 1024",
    );
}

#[tokio::test]
async fn deeply_nested_frame() {
    let bad = format!(
        "{{\"type\":\"TXS_DATA\",\"data\":{}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let error = last_error_after("deeply_nested", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed <invalid JSON> frame: recursion limit exceeded at line 1 column 153",
    );
}

#[tokio::test]
async fn frame_without_type() {
    let bad = r#"{"data":{"volumeUSD":1}}"#.to_owned();
    let error = last_error_after("no_type", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed <no type> frame: the frame has no string field type: {\"data\":{\"volumeUSD\":1}}",
    );
}

#[tokio::test]
async fn addresses_of_wrong_chain() {
    let trades = recorded_trades(1);
    let bad = complex_trade_frame(WSOL, USDC_SOL, &trades[0], 0);
    let error = last_error_after("wrong_chain", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        &format!("malformed TXS_DATA frame: neither from.address \"{WSOL}\" nor to.address \"{USDC_SOL}\" is a subscribed token (pair \"0x11b815efb8f581194ae79006d24e0d814b7697f6\")"),
    );
}

#[tokio::test]
async fn timestamp_far_in_future() {
    let bad = trade_with(|d| {
        d.remove("blockUnixTimeMs");
        d.insert("blockUnixTime".into(), json!(99_999_999_999_i64));
    });
    let error = last_error_after("future_time", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed TXS_DATA frame: blockUnixTime must be a positive time in seconds, got 99999999999",
    );
}

#[tokio::test]
async fn timestamp_far_in_past() {
    let bad = trade_with(|d| {
        d.insert("blockUnixTimeMs".into(), json!(-1_675_329_600_138_i64));
    });
    let error = last_error_after("past_time", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed TXS_DATA frame: blockUnixTimeMs must be a positive time in milliseconds, got -1675329600138",
    );
}

#[tokio::test]
async fn candle_with_high_below_low() {
    let bad = json!({"type": "PRICE_DATA", "data": {"o": 1666.8, "h": 1600.0, "l": 1700.0, "c": 1666.8,
        "eventType": "ohlcv", "type": "1m", "unixTime": 1_675_329_600, "v": 1.0, "symbol": "WETH", "address": WETH}})
    .to_string();
    let error = last_error_after("high_below_low", vec![Action::Send(bad)]).await;
    assert_one_line(
        &error,
        "malformed PRICE_DATA frame: h must be >= l, got h = 1600 and l = 1700",
    );
}

/// A frame for an address the batch never subscribed is counted and skipped without an
/// error; the trade after it is published, and no event names the unknown address.
#[tokio::test]
async fn trade_for_unsubscribed_address() {
    let trades = recorded_trades(1);
    let unknown = simple_trade_frame(PEPE, &trades[0], 0);
    let bad_then_error = vec![
        Action::Send(unknown),
        // A malformed frame after it, so that the batch has an error to report.
        Action::Send("{".into()),
    ];
    let error = last_error_after("unsubscribed", bad_then_error).await;
    assert!(
        error.starts_with("malformed <invalid JSON> frame: EOF while parsing"),
        "{error}"
    );
}

/// A binary frame that is not UTF-8, from a server of this test (the scripted server sends
/// text only).
#[tokio::test]
async fn invalid_utf8_binary_frame() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("ws://{}/socket", listener.local_addr().unwrap())).unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_invalid_utf8(stream));
        }
    });
    let error = run_batch("invalid_utf8", url, None).await;
    server.abort();
    assert_one_line(
        &error,
        "malformed <invalid JSON> frame: expected value at line 1 column 1",
    );
}

/// Answers the trades subscription with invalid UTF-8 in a binary frame, then the good trade.
// The handshake callback's error type is tungstenite's HTTP response, which is large.
#[allow(clippy::result_large_err)]
async fn serve_invalid_utf8(stream: tokio::net::TcpStream) {
    let answer_protocol = |_: &Request, mut response: Response| {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("echo-protocol"),
        );
        Ok(response)
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, answer_protocol).await else {
        return;
    };
    let _ = socket.send(Message::text(r#"{"type":"WELCOME"}"#)).await;
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            if text.contains("SUBSCRIBE_TXS") {
                let invalid = Bytes::from_static(&[0x7b, 0xff, 0xfe, 0x7d]);
                let _ = socket.send(Message::Binary(invalid)).await;
                let _ = socket.send(Message::text(good_trade())).await;
            }
        }
    }
}
