//! notify against devkit's backend-stub, the Java-side peer that the end-to-end tests and the
//! demo use: the token, the greeting, pongs and the alert message must all interoperate, and
//! the stub must report messages that break the protocol.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, price_alert, stop_notify, Env};
use futures::{SinkExt, StreamExt};
use monitor_core::settings::Redacted;
use monitor_devkit::backend_stub::{run_backend_stub, BackendStub};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Runs the stub with a required token; returns its URL, the lines it recorded and its stop token.
async fn start_stub(token: &str) -> (String, Arc<Mutex<Vec<Value>>>, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/websocket/monitor", listener.local_addr().unwrap());
    let (writer, reader) = tokio::io::duplex(1 << 16);
    let stub = BackendStub {
        token: Some(Redacted(token.to_owned())),
        answer_pings: true,
        ..BackendStub::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(run_backend_stub(listener, stub, writer, shutdown.clone()));

    let recorded = Arc::new(Mutex::new(Vec::new()));
    let sink = recorded.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock()
                .unwrap()
                .push(serde_json::from_str(&line).unwrap());
        }
    });
    (url, recorded, shutdown)
}

fn of_type(recorded: &Mutex<Vec<Value>>, kind: &str) -> Vec<Value> {
    recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == kind)
        .cloned()
        .collect()
}

#[tokio::test]
async fn alert_and_pings_reach_backend_stub_with_token() {
    let env = Env::new("stub").await;
    let (url, recorded, stub_shutdown) = start_stub("s3cr3t").await;
    let mut settings = env.notify_settings(&url);
    settings.ws.token = Redacted("s3cr3t".into());
    settings.ws.timing.ping_interval = Duration::from_millis(200);
    let notify = env.start_notify(settings);
    let alert = price_alert("4:0xc02a:price_change:5580010", 1_700_000_002_000);

    env.publish_alert(&alert, &alert.id).await;
    let pushed = eventually("the alert at the stub", || async {
        of_type(&recorded, "alert").into_iter().next()
    })
    .await;
    let row_id: i64 = sqlx::query_scalar("SELECT id FROM monitor_alert_log_v2 WHERE alert_key = ?")
        .bind(&alert.id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(pushed["data"]["alertId"], row_id);
    // Pings keep flowing, so the stub's pongs were read in time and the session stayed open.
    eventually("three pings at the stub", || async {
        (of_type(&recorded, "ping").len() >= 3).then_some(())
    })
    .await;

    stop_notify(notify).await;
    stub_shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn wrong_token_keeps_alert_pending() {
    let env = Env::new("badtoken").await;
    let (url, recorded, stub_shutdown) = start_stub("s3cr3t").await;
    let mut settings = env.notify_settings(&url);
    settings.ws.token = Redacted("wrong".into());
    let notify = env.start_notify(settings);
    let alert = price_alert("4:0xc02a:price_change:5580011", 1_700_000_003_000);

    env.publish_alert(&alert, &alert.id).await;
    env.wait_acked(
        &env.subjects.alerts_stream(),
        monitor_core::Subjects::NOTIFY_ALERTS_CONSUMER,
        1,
    )
    .await;

    let status: String =
        sqlx::query_scalar("SELECT notify_status FROM monitor_alert_log_v2 WHERE alert_key = ?")
            .bind(&alert.id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(status, "pending");
    assert!(
        recorded.lock().unwrap().is_empty(),
        "the stub rejects the handshake, so it records nothing"
    );

    stop_notify(notify).await;
    stub_shutdown.cancel();
    env.cleanup().await;
}

/// Connects a plain WebSocket client to the stub and reads its `connected` greeting.
async fn raw_client(
    stub: &common::Stub,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut client, _) = tokio_tungstenite::connect_async(stub.url()).await.unwrap();
    let greeting = client.next().await.unwrap().unwrap();
    assert!(greeting.to_text().unwrap().contains("connected"));
    client
}

#[tokio::test]
async fn stub_records_violation_and_keeps_connection() {
    let env = Env::new("stub_violation").await;
    let stub = common::Stub::start("127.0.0.1:0".parse().unwrap(), &env.test.work_dir()).await;
    let mut client = raw_client(&stub).await;

    let bad = r#"{"type":"alert","data":{"alertId":"12","alertType":"large_trade","alertData":{},"timestamp":1733313600000},"timestamp":1733313600}"#;
    client.send(Message::text(bad)).await.unwrap();
    client
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .unwrap();
    let pong = client.next().await.unwrap().unwrap();
    assert!(
        pong.to_text().unwrap().contains("pong"),
        "without --strict the connection stays open: {pong:?}"
    );

    let violations = eventually("the violation line", || async {
        let lines = common::read_records(stub.violations_path());
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    assert_eq!(violations.len(), 1, "the ping is valid: {violations:?}");
    assert_eq!(violations[0]["type"], "alert");
    assert_eq!(violations[0]["message"]["data"]["alertId"], "12");
    let errors: Vec<&str> = violations[0]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("data.alertId:")),
        "{errors:?}"
    );
    assert!(errors.contains(&"data.alertData.ca: missing"), "{errors:?}");
    assert!(
        errors.iter().any(|e| e.starts_with("timestamp:")),
        "{errors:?}"
    );
    assert_eq!(
        stub.received("alert").len(),
        1,
        "the message is recorded too"
    );

    let path = stub.violations_path().to_owned();
    let check = std::panic::catch_unwind(|| monitor_tests::assert_no_stub_violations(&path));
    assert!(
        check.is_err(),
        "the harness check fails the test on a violation"
    );
    stub.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn strict_stub_closes_connection_on_violation() {
    let env = Env::new("stub_strict").await;
    let strict = BackendStub {
        strict: true,
        ..BackendStub::default()
    };
    let stub =
        common::Stub::start_with("127.0.0.1:0".parse().unwrap(), &env.test.work_dir(), strict)
            .await;
    let violations_path = stub.violations_path().to_owned();
    let mut client = raw_client(&stub).await;

    let bad = r#"{"type":"batch_heartbeat","data":{"batchId":1,"taskId":4,"consumerId":"c","progress":50,"timestamp":1733313600000}}"#;
    client.send(Message::text(bad)).await.unwrap();
    let closed = client.next().await.unwrap().unwrap();

    match closed {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
        other => panic!("expected a close frame with code 1008, got {other:?}"),
    }
    stub.stop().await;
    let violations = common::read_records(&violations_path);
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0]["type"], "batch_heartbeat");
    env.cleanup().await;
}

#[tokio::test]
async fn valid_messages_leave_violations_file_empty() {
    let env = Env::new("stub_valid").await;
    let stub = common::Stub::start("127.0.0.1:0".parse().unwrap(), &env.test.work_dir()).await;
    let path = stub.violations_path().to_owned();
    let notify = env.start_notify(env.notify_settings(&stub.url()));
    let alert = price_alert("4:0xc02a:price_change:5580012", 1_700_000_004_000);

    env.publish_alert(&alert, &alert.id).await;
    stub.wait_for("alert", 1).await;

    stop_notify(notify).await;
    stub.stop().await;
    assert!(
        path.exists(),
        "the stub creates the violations file at start"
    );
    monitor_tests::assert_no_stub_violations(&path);
    env.cleanup().await;
}
