//! Hostile input from a Solana node against the ingest stage, over a real WebSocket, real HTTP
//! and a real NATS.
//!
//! The test node serves PubSub (`slotSubscribe`, `logsSubscribe`) and `getBlock` on loopback
//! ports. Each test makes it send one malformed notification or `getBlock` response and then a
//! good one, and runs a sol block task that watches a program's logs and large SOL transfers.
//! It checks the one-line error that the task reports as `last_error` in its heartbeats (the
//! same text ingest logs), and that the event of the good input still reached the events
//! stream, so the task went on. `docs/hostile-inputs.md` lists them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use monitor_core::messages::{
    Chain, ConfigSpec, EventKind, StatusMessage, StatusScope, TaskSpec, TaskType, MESSAGE_VERSION,
};
use monitor_core::rules::{
    BlockRules, LargeTransactionsRule, ProgramLogsRule, Rules, TriggerLogic,
};
use monitor_ingest::block_task::settings::NodeUrl;
use monitor_ingest::settings::IngestSettings;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use url::Url;

const TASK_ID: u64 = 7;
const PROGRAM_ID: &str = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA";
/// Subscription ids that the test node returns.
const SLOT_SUBSCRIPTION: u64 = 1;
const LOGS_SUBSCRIPTION: u64 = 2;
/// The slot of the hostile input and the slot of the good block after it.
const BAD_SLOT: u64 = 110_130_000;
const GOOD_SLOT: u64 = 110_130_001;
const SOL_PRICE_USD: f64 = 200.0;
/// Minimum USD value of a transfer event. The good transfer, 5 SOL at 200 USD, reaches it.
const THRESHOLD_USD: f64 = 500.0;
/// The signature of the good transaction or program log that follows every hostile input.
const GOOD_SIGNATURE: &str =
    "3dmDSn23jc3jwKPwDXbRQjUrmnZ7sY2hhyCgQYKo4nAcM5HwtEMeDU7ZQ7Y1SkX1ZUcDzxJZgTC3Qd8GDh71Hcbp";

/// What the test node sends for the `getBlock` of a slot.
#[derive(Debug, Clone)]
enum BlockReply {
    /// A JSON body with its `Content-Length`.
    Json(String),
    /// Headers that declare a body of this many bytes, and no body.
    DeclaredLength(u64),
    /// A chunked body without `Content-Length`: this many bytes of JSON whitespace.
    Chunked(usize),
}

/// A Solana node of one test: PubSub over WebSocket and JSON-RPC over HTTP.
struct SolanaNode {
    ws_url: Url,
    rpc_url: Url,
    tasks: Vec<JoinHandle<()>>,
}

impl SolanaNode {
    /// Sends `notifications` in order once the runner subscribed to slots, and responds to
    /// `getBlock` with the body stored for the slot in `blocks`. Other slots get error -32007
    /// (skipped).
    async fn start(notifications: Vec<Value>, blocks: HashMap<u64, BlockReply>) -> SolanaNode {
        let notifications: Arc<Vec<String>> =
            Arc::new(notifications.iter().map(Value::to_string).collect());
        let blocks = Arc::new(blocks);

        let pubsub = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_url = Url::parse(&format!("ws://{}", pubsub.local_addr().unwrap())).unwrap();
        let pubsub_task = tokio::spawn(async move {
            loop {
                let (stream, _) = pubsub.accept().await.unwrap();
                tokio::spawn(serve_pubsub(stream, notifications.clone()));
            }
        });

        let rpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rpc_url = Url::parse(&format!("http://{}/", rpc.local_addr().unwrap())).unwrap();
        let rpc_task = tokio::spawn(async move {
            loop {
                let (stream, _) = rpc.accept().await.unwrap();
                tokio::spawn(serve_rpc(stream, blocks.clone()));
            }
        });

        SolanaNode {
            ws_url,
            rpc_url,
            tasks: vec![pubsub_task, rpc_task],
        }
    }
}

impl Drop for SolanaNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Responds to the subscribe requests of one PubSub connection and sends the notifications
/// after the slot subscription, which the runner requests last.
async fn serve_pubsub(stream: TcpStream, notifications: Arc<Vec<String>>) {
    let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let request: Value = serde_json::from_str(&text).unwrap();
        let subscription = match request["method"].as_str() {
            Some("slotSubscribe") => SLOT_SUBSCRIPTION,
            Some("logsSubscribe") => LOGS_SUBSCRIPTION,
            _ => continue,
        };
        let response = json!({"jsonrpc": "2.0", "result": subscription, "id": request["id"]});
        if socket
            .send(Message::text(response.to_string()))
            .await
            .is_err()
        {
            return;
        }
        if subscription == SLOT_SUBSCRIPTION {
            for notification in notifications.iter() {
                if socket
                    .send(Message::text(notification.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Responds to one HTTP JSON-RPC request and closes the connection.
async fn serve_rpc(mut stream: TcpStream, blocks: Arc<HashMap<u64, BlockReply>>) {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let body_start = loop {
        let read = stream.read(&mut chunk).await.unwrap();
        if read == 0 {
            return;
        }
        received.extend_from_slice(&chunk[..read]);
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let headers = String::from_utf8_lossy(&received[..body_start]).to_lowercase();
    let length: usize = headers
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0);
    while received.len() < body_start + length {
        let read = stream.read(&mut chunk).await.unwrap();
        if read == 0 {
            return;
        }
        received.extend_from_slice(&chunk[..read]);
    }
    let request: Value = serde_json::from_slice(&received[body_start..]).unwrap();

    let slot = request["params"][0].as_u64().unwrap();
    let skipped = || {
        let body = json!({
            "jsonrpc": "2.0",
            "error": {"code": -32007, "message": format!("Slot {slot} was skipped")},
            "id": request["id"],
        });
        BlockReply::Json(body.to_string())
    };
    let reply = blocks.get(&slot).cloned().unwrap_or_else(skipped);
    let headers = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n";
    match reply {
        BlockReply::Json(body) => {
            let response = format!("{headers}content-length: {}\r\n\r\n{body}", body.len());
            let _ = stream.write_all(response.as_bytes()).await;
        }
        BlockReply::DeclaredLength(length) => {
            let response = format!("{headers}content-length: {length}\r\n\r\n");
            let _ = stream.write_all(response.as_bytes()).await;
            // Keeps the connection open until the client closes it.
            while stream.read(&mut chunk).await.is_ok_and(|read| read > 0) {}
        }
        BlockReply::Chunked(length) => {
            let response = format!("{headers}transfer-encoding: chunked\r\n\r\n");
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            let piece = vec![b' '; 1 << 20];
            let mut sent = 0;
            while sent < length {
                let size = piece.len().min(length - sent);
                let mut frame = format!("{size:x}\r\n").into_bytes();
                frame.extend_from_slice(&piece[..size]);
                frame.extend_from_slice(b"\r\n");
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
                sent += size;
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        }
    }
    let _ = stream.shutdown().await;
}

fn slot_notification(slot: u64) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "slotNotification",
        "params": {
            "result": {"parent": slot - 1, "root": slot - 32, "slot": slot},
            "subscription": SLOT_SUBSCRIPTION,
        },
    })
}

fn logs_notification(slot: u64, signature: &str, logs: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "logsNotification",
        "params": {
            "result": {
                "context": {"slot": slot},
                "value": {"signature": signature, "err": null, "logs": logs},
            },
            "subscription": LOGS_SUBSCRIPTION,
        },
    })
}

/// Builds a `getBlock` response with one transaction, in which `Payer` sends 5 SOL to
/// `Receiver`.
fn block_response(slot: u64, block_time: Value, signature: &str) -> String {
    json!({
        "jsonrpc": "2.0",
        "result": {
            "blockTime": block_time,
            "parentSlot": slot - 1,
            "transactions": [{
                "meta": {
                    "err": null,
                    "preBalances": [10_000_005_000u64, 1_000_000_000u64],
                    "postBalances": [5_000_000_000u64, 6_000_000_000u64],
                },
                "transaction": {
                    "signatures": [signature],
                    "message": {"accountKeys": [{"pubkey": "Payer"}, {"pubkey": "Receiver"}]},
                },
            }],
        },
        "id": slot,
    })
    .to_string()
}

fn block_task() -> TaskSpec {
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id: TASK_ID,
        name: "hostile solana node".into(),
        task_type: TaskType::Block,
        chain: Chain::Sol,
        epoch: 1,
        config: Some(ConfigSpec {
            config_id: 1,
            version: 1,
            name: "sol block rules".into(),
            trigger_logic: TriggerLogic::Or,
            rules: Rules::Block(BlockRules {
                new_blocks: None,
                large_transactions: Some(LargeTransactionsRule {
                    threshold_usd: THRESHOLD_USD,
                }),
                contract_events: None,
                program_logs: Some(ProgramLogsRule {
                    program_ids: vec![PROGRAM_ID.to_owned()],
                }),
                pending_txs: false,
                confirmations: 0,
                cooldown_sec: 300,
            }),
        }),
        batches: Vec::new(),
        config_error: None,
        published_ms: 0,
    }
}

/// Runs ingest with the block task against `node`, waits for the event of the good input and
/// for a heartbeat that reports an error, and returns that error.
async fn last_error_after(test: &str, node: SolanaNode) -> String {
    let nats = Nats::new(&unique_prefix(test)).await;
    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    nats.put_task(&block_task()).await;

    let prefix = nats.settings.subject_prefix.clone();
    // No Birdeye key, so the native price comes from NATIVE_PRICE_USD_SOL and no feed is opened.
    let unused_feed = Url::parse("ws://127.0.0.1:9/").unwrap();
    let mut settings = IngestSettings::local(&nats.settings.url, &prefix, unused_feed, "");
    settings.chains.solana_ws_url = Some(node.ws_url.as_str().parse::<NodeUrl>().unwrap());
    settings.chains.solana_rpc_url = Some(node.rpc_url.as_str().parse::<NodeUrl>().unwrap());
    settings.chains.native_price_usd_sol = Some(SOL_PRICE_USD);
    settings.heartbeat_interval = Duration::from_millis(200);
    settings.runtime.consumer_id_prefix = Some(prefix);
    let shutdown = CancellationToken::new();
    let ingest = tokio::spawn(monitor_ingest::run(settings, shutdown.clone()));

    let mut frames = Vec::new();
    read_frames_until(
        &mut events,
        &mut frames,
        "the event of the good input",
        |frames| {
            frames
                .iter()
                .flat_map(|p| &p.frame.events)
                .any(|e| match &e.kind {
                    EventKind::ProgramLog(log) => log.signature == GOOD_SIGNATURE,
                    EventKind::Transaction(tx) => tx.hash == GOOD_SIGNATURE,
                    _ => false,
                })
        },
    )
    .await;

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

    shutdown.cancel();
    ingest.await.unwrap().unwrap();
    drop(node);
    nats.cleanup().await;
    error
}

fn heartbeat_error(message: &StatusMessage) -> Option<String> {
    match message {
        StatusMessage::Heartbeat(h) if h.scope == StatusScope::Task { task_id: TASK_ID } => {
            h.last_error.clone()
        }
        _ => None,
    }
}

fn assert_one_line(error: &str, expected: &str) {
    assert_eq!(error, expected);
    assert!(!error.chars().any(char::is_control), "{error:?}");
}

/// Serves the hostile `getBlock` body for the first slot and the good block for the second.
async fn last_error_after_block(test: &str, bad_body: String) -> String {
    last_error_after_reply(test, BlockReply::Json(bad_body)).await
}

async fn last_error_after_reply(test: &str, bad_reply: BlockReply) -> String {
    let notifications = vec![slot_notification(BAD_SLOT), slot_notification(GOOD_SLOT)];
    let good_block = block_response(GOOD_SLOT, json!(1_638_693_800), GOOD_SIGNATURE);
    let blocks = HashMap::from([
        (BAD_SLOT, bad_reply),
        (GOOD_SLOT, BlockReply::Json(good_block)),
    ]);
    last_error_after(test, SolanaNode::start(notifications, blocks).await).await
}

#[tokio::test]
async fn logs_notification_with_number_logs() {
    let notifications = vec![
        logs_notification(BAD_SLOT, "bad", json!(0)),
        logs_notification(BAD_SLOT, GOOD_SIGNATURE, json!(["Program log: ok"])),
    ];
    let node = SolanaNode::start(notifications, HashMap::new()).await;

    let error = last_error_after("sol_number_logs", node).await;

    assert_one_line(
        &error,
        "malformed logsNotification: value.logs must be an array of strings or null, got 0",
    );
}

#[tokio::test]
async fn logs_notification_with_number_line() {
    let notifications = vec![
        logs_notification(BAD_SLOT, "bad", json!(["Program log: a", 7])),
        logs_notification(BAD_SLOT, GOOD_SIGNATURE, json!(["Program log: ok"])),
    ];
    let node = SolanaNode::start(notifications, HashMap::new()).await;

    let error = last_error_after("sol_number_line", node).await;

    assert_one_line(
        &error,
        "malformed logsNotification: value.logs must contain only strings, got 7",
    );
}

#[tokio::test]
async fn get_block_without_result_or_error() {
    let bad = json!({"jsonrpc": "2.0", "id": BAD_SLOT}).to_string();

    let error = last_error_after_block("sol_no_result", bad).await;

    assert_one_line(
        &error,
        "getBlock 110130000 returned a response with neither result nor error: \
         {\"id\":110130000,\"jsonrpc\":\"2.0\"}",
    );
}

#[tokio::test]
async fn get_block_error_with_newline() {
    let bad = json!({
        "jsonrpc": "2.0",
        "error": {"code": -32000, "message": "node failure\nsecond line"},
        "id": BAD_SLOT,
    })
    .to_string();

    let error = last_error_after_block("sol_error_newline", bad).await;

    assert_one_line(
        &error,
        "getBlock 110130000 failed with code -32000: node failure\\nsecond line",
    );
}

#[tokio::test]
async fn block_time_far_in_future() {
    let bad = block_response(BAD_SLOT, json!(i64::MAX), "bad");

    let error = last_error_after_block("sol_block_time", bad).await;

    assert_one_line(
        &error,
        "slot 110130000: invalid getBlock result: blockTime must be a time in seconds between \
         1970 and 2200, got 9223372036854775807",
    );
}

#[tokio::test]
async fn block_time_as_string() {
    let bad = block_response(BAD_SLOT, json!("1638693800"), "bad");

    let error = last_error_after_block("sol_block_time_string", bad).await;

    assert_one_line(
        &error,
        "slot 110130000: invalid getBlock result: blockTime must be a time in seconds between \
         1970 and 2200, got \"1638693800\"",
    );
}

#[tokio::test]
async fn get_block_declaring_300_mib() {
    let error = last_error_after_reply(
        "sol_declared_300_mib",
        BlockReply::DeclaredLength(300 << 20),
    )
    .await;

    assert_one_line(
        &error,
        "getBlock 110130000 returned a response larger than 268435456 bytes",
    );
}

#[tokio::test]
async fn get_block_chunked_over_256_mib() {
    let error = last_error_after_reply("sol_chunked_257_mib", BlockReply::Chunked(257 << 20)).await;

    assert_one_line(
        &error,
        "getBlock 110130000 returned a response larger than 268435456 bytes",
    );
}
