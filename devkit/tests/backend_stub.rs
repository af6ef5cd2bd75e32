//! `devkit backend-stub` over real WebSocket connections, in-process and as the built binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

use std::net::SocketAddr;
use std::path::Path;
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

use monitor_core::settings::Redacted;
use monitor_devkit::backend_stub::{
    run_backend_stub, BackendStub, BackendStubError, CONNECTED_MESSAGE,
};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound for one message, so the test fails only when the stub is stuck.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(20);

struct Stub {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), BackendStubError>>,
}

impl Stub {
    async fn start(stub: BackendStub, out: &Path) -> Stub {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_backend_stub(listener, stub, file, shutdown.clone()));
        Stub {
            address,
            shutdown,
            task,
        }
    }

    /// Stops the stub. Every received message is in the output file afterwards.
    async fn stop(self) {
        self.shutdown.cancel();
        timeout(MESSAGE_TIMEOUT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn connect(address: SocketAddr, bearer: Option<&str>) -> Result<Client, WsError> {
    let mut request = format!("ws://{address}/websocket/monitor")
        .into_client_request()
        .unwrap();
    if let Some(token) = bearer {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        request.headers_mut().insert("Authorization", value);
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(client, _)| client)
}

async fn next_json(client: &mut Client) -> Value {
    loop {
        let message = timeout(MESSAGE_TIMEOUT, client.next())
            .await
            .expect("no message from backend-stub in time")
            .expect("connection ended")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

async fn send_text(client: &mut Client, text: &str) {
    client.send(Message::text(text.to_owned())).await.unwrap();
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {line:?} is not JSON: {e}"))
        })
        .collect()
}

fn now_ms() -> i64 {
    monitor_core::time::now_ms()
}

#[tokio::test]
async fn connected_greeting_on_connect() {
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start(BackendStub::default(), &dir.path().join("out.jsonl")).await;
    let before = now_ms();

    let mut client = connect(stub.address, None).await.unwrap();
    let greeting = next_json(&mut client).await;

    assert_eq!(greeting["type"], "connected");
    assert_eq!(greeting["message"], CONNECTED_MESSAGE);
    let session_id = greeting["sessionId"].as_str().unwrap();
    assert_eq!(session_id.len(), 36, "{session_id}");
    let timestamp = greeting["timestamp"].as_i64().unwrap();
    assert!(
        timestamp >= before && timestamp <= now_ms(),
        "timestamp {timestamp} is not now in ms"
    );
    stub.stop().await;
}

#[tokio::test]
async fn ping_gets_pong() {
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start(
        BackendStub {
            answer_pings: true,
            ..BackendStub::default()
        },
        &dir.path().join("out.jsonl"),
    )
    .await;
    let mut client = connect(stub.address, None).await.unwrap();
    next_json(&mut client).await;

    send_text(&mut client, r#"{"type":"ping"}"#).await;
    let pong = next_json(&mut client).await;

    assert_eq!(pong["type"], "pong");
    assert!(
        pong["timestamp"].as_i64().unwrap() > 1_600_000_000_000,
        "{pong}"
    );
    stub.stop().await;
}

#[tokio::test]
async fn messages_recorded_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let stub = Stub::start(
        BackendStub {
            answer_pings: true,
            ..BackendStub::default()
        },
        &out,
    )
    .await;
    let mut first = connect(stub.address, None).await.unwrap();
    let mut second = connect(stub.address, None).await.unwrap();
    next_json(&mut first).await;
    next_json(&mut second).await;

    let alert_text = "{\n  \"type\": \"alert\",\n  \"data\": {\"alertId\": 1, \"alertType\": \"large_trade\", \"alertData\": {\"tokenSymbol\": \"W ETH\"}},\n  \"timestamp\": 1\n}";
    let alert: Value = serde_json::from_str(alert_text).unwrap();
    send_text(&mut first, alert_text).await;
    send_text(&mut first, "not json").await;
    send_text(
        &mut second,
        r#"{"type":"batch_heartbeat","data":{"batchId":7,"timestamp":1700000000}}"#,
    )
    .await;
    // A pong proves the stub read everything sent before the ping on that connection.
    for client in [&mut first, &mut second] {
        send_text(client, r#"{"type":"ping"}"#).await;
        assert_eq!(next_json(client).await["type"], "pong");
    }
    stub.stop().await;

    let lines = read_lines(&out);
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.contains(&alert), "{lines:?}");
    assert!(lines.contains(&json!("not json")), "{lines:?}");
    assert!(lines.contains(
        &json!({"type": "batch_heartbeat", "data": {"batchId": 7, "timestamp": 1_700_000_000}})
    ));
    assert_eq!(lines.iter().filter(|l| l["type"] == "ping").count(), 2);
    let text = std::fs::read_to_string(&out).unwrap();
    let compact = r#"{"type":"alert","data":{"alertId":1,"alertType":"large_trade","alertData":{"tokenSymbol":"W ETH"}},"timestamp":1}"#;
    assert!(
        text.lines().any(|line| line == compact),
        "alert not kept in order and compact: {text}"
    );
}

#[tokio::test]
async fn bearer_token_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start(
        BackendStub {
            token: Some(Redacted("s3cret".into())),
            answer_pings: true,
            ..BackendStub::default()
        },
        &dir.path().join("out.jsonl"),
    )
    .await;

    for bearer in [None, Some("wrong")] {
        match connect(stub.address, bearer).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401, "bearer {bearer:?}")
            }
            Err(other) => panic!("bearer {bearer:?}: expected HTTP 401, got {other}"),
            Ok(_) => panic!("bearer {bearer:?}: expected HTTP 401, the handshake succeeded"),
        }
    }
    let mut client = connect(stub.address, Some("s3cret")).await.unwrap();
    assert_eq!(next_json(&mut client).await["type"], "connected");
    stub.stop().await;
}

#[tokio::test]
async fn no_pong_mode_stays_silent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let stub = Stub::start(BackendStub::default(), &out).await;
    let mut client = connect(stub.address, None).await.unwrap();
    next_json(&mut client).await;

    send_text(&mut client, r#"{"type":"ping"}"#).await;
    client.close(None).await.unwrap();
    // After our close frame the stub may send only its own close frame, never a pong.
    while let Some(message) = timeout(MESSAGE_TIMEOUT, client.next()).await.unwrap() {
        match message {
            Ok(Message::Text(text)) => panic!("stub replied {text} with pongs disabled"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    stub.stop().await;

    assert_eq!(read_lines(&out), vec![json!({"type": "ping"})]);
}

#[tokio::test]
async fn binary_appends_to_out_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    std::fs::write(&out, "{\"existing\":true}\n").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_devkit"))
        .args([
            "backend-stub",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "t",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first_line = timeout(MESSAGE_TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let address: SocketAddr = first_line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first_line}"))
        .parse()
        .unwrap();

    let mut client = connect(address, Some("t")).await.unwrap();
    next_json(&mut client).await;
    send_text(
        &mut client,
        r#"{"type":"task_status","data":{"taskId":3,"status":1}}"#,
    )
    .await;
    send_text(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "pong");

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = timeout(MESSAGE_TIMEOUT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "backend-stub exited with {status}");

    let recorded = read_lines(&out);
    assert_eq!(
        recorded,
        vec![
            json!({"existing": true}),
            json!({"type": "task_status", "data": {"taskId": 3, "status": 1}}),
            json!({"type": "ping"}),
        ]
    );
}
