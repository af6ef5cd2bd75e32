//! notify against devkit's backend-stub, the Java-side peer that the end-to-end tests and the
//! demo use: the token, the greeting, pongs and the alert message must all interoperate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, price_alert, stop_notify, Env};
use monitor_core::settings::Redacted;
use monitor_devkit::backend_stub::{run_backend_stub, BackendStub};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
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
