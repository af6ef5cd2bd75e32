//! Heartbeats and status changes forwarded to the Java WebSocket, and the WebSocket client's
//! connection handling, against real NATS JetStream and a WebSocket peer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::time::Duration;

use common::{eventually, stop_notify, Env, JavaPeer};
use monitor_core::codec;
use monitor_core::messages::{
    BatchStatus, Heartbeat, StatusChange, StatusMessage, StatusScope, MESSAGE_VERSION,
};
use monitor_core::settings::Redacted;
use monitor_core::time::now_ms;
use monitor_notify::java_ws::JavaWs;
use monitor_notify::{WsSettings, WsTiming};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const BATCH: StatusScope = StatusScope::Batch {
    task_id: 4,
    batch_id: 12345,
};
const TASK: StatusScope = StatusScope::Task { task_id: 9 };

fn heartbeat(scope: StatusScope, sent_ms: i64) -> Heartbeat {
    Heartbeat {
        v: MESSAGE_VERSION,
        scope,
        consumer_id: "server-01-12345".into(),
        progress: 50.0,
        item_count: 99,
        events: 120,
        errors: 0,
        last_error: None,
        last_event_ms: Some(sent_ms - 1_000),
        last_block: Some(21_000_000),
        sent_ms,
    }
}

fn change(scope: StatusScope, status: BatchStatus, sent_ms: i64) -> StatusChange {
    StatusChange {
        v: MESSAGE_VERSION,
        scope,
        consumer_id: "server-01-12345".into(),
        status,
        reason: None,
        item_count: 50,
        progress: 30.0,
        errors: 1,
        sent_ms,
    }
}

async fn publish_status(env: &Env, message: &StatusMessage) {
    let scope = match message {
        StatusMessage::Heartbeat(h) => h.scope,
        StatusMessage::Change(c) => c.scope,
    };
    let subject = match scope {
        StatusScope::Batch { task_id, batch_id } => env.subjects.batch_status(task_id, batch_id),
        StatusScope::Task { task_id } => env.subjects.task_status(task_id),
    };
    let payload = codec::encode(message).unwrap();
    env.publish(subject, async_nats::HeaderMap::new(), payload)
        .await;
}

#[tokio::test]
async fn heartbeats_and_status_reach_java_in_its_shapes() {
    let env = Env::new("shapes").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let notify = env.start_notify(env.notify_settings(&peer.url()));
    eventually("notify to connect", || async {
        (peer.connections() == 1).then_some(())
    })
    .await;
    let sent_ms = now_ms();

    publish_status(&env, &StatusMessage::Heartbeat(heartbeat(BATCH, sent_ms))).await;
    publish_status(
        &env,
        &StatusMessage::Change(change(BATCH, BatchStatus::Running, sent_ms)),
    )
    .await;
    publish_status(&env, &StatusMessage::Heartbeat(heartbeat(TASK, sent_ms))).await;
    publish_status(
        &env,
        &StatusMessage::Change(change(TASK, BatchStatus::Running, sent_ms)),
    )
    .await;

    let batch_heartbeat = peer.wait_for("batch_heartbeat", 1).await;
    assert_eq!(
        batch_heartbeat[0].message,
        json!({
            "type": "batch_heartbeat",
            "data": {
                "batchId": 12345,
                "taskId": 4,
                "consumerId": "server-01-12345",
                "progress": 50,
                "timestamp": sent_ms / 1000,
                "totalAlerts": 0,
                "lastAlertTime": null,
            }
        })
    );
    let batch_status = peer.wait_for("batch_status", 1).await;
    assert_eq!(
        batch_status[0].message,
        json!({
            "type": "batch_status",
            "data": {
                "batchId": 12345,
                "status": "running",
                "details": {
                    "itemCount": 50,
                    "progress": 30,
                    "errorCount": 1,
                    "totalAlerts": 0,
                    "lastAlertTime": null,
                },
                "timestamp": sent_ms,
            },
            "timestamp": sent_ms,
        })
    );
    let task_heartbeat = peer.wait_for("task_heartbeat", 1).await;
    assert_eq!(
        task_heartbeat[0].message,
        json!({
            "type": "task_heartbeat",
            "data": {
                "taskId": 9,
                "consumerId": "server-01-12345",
                "lastBlock": 21_000_000,
                "timestamp": sent_ms,
                "totalAlerts": 0,
                "lastAlertTime": null,
            },
            "timestamp": sent_ms,
        })
    );
    let task_status = peer.wait_for("task_status", 1).await;
    assert_eq!(
        task_status[0].message,
        json!({
            "type": "task_status",
            "data": {
                "taskId": 9,
                "status": 1,
                "message": "任务运行中",
                "timestamp": sent_ms,
                "totalAlerts": 0,
                "lastAlertTime": null,
            },
            "timestamp": sent_ms,
        })
    );

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn stale_heartbeat_is_dropped_and_acked() {
    let env = Env::new("stale").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let notify = env.start_notify(env.notify_settings(&peer.url()));
    eventually("notify to connect", || async {
        (peer.connections() == 1).then_some(())
    })
    .await;

    let ten_minutes_ago = now_ms() - 600_000;
    publish_status(
        &env,
        &StatusMessage::Heartbeat(heartbeat(BATCH, ten_minutes_ago)),
    )
    .await;
    let fresh = now_ms();
    publish_status(&env, &StatusMessage::Heartbeat(heartbeat(BATCH, fresh))).await;

    // Messages are handled in stream order, so the stale one was handled before this arrived.
    let received = peer.wait_for("batch_heartbeat", 1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message["data"]["timestamp"], fresh / 1000);
    env.wait_acked(
        &env.subjects.status_stream(),
        monitor_core::Subjects::NOTIFY_STATUS_CONSUMER,
        2,
    )
    .await;

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn latest_batch_status_is_sent_again_after_reconnect() {
    let env = Env::new("resend").await;
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let notify = env.start_notify(env.notify_settings(&peer.url()));
    eventually("notify to connect", || async {
        (peer.connections() == 1).then_some(())
    })
    .await;
    let first = now_ms();

    publish_status(
        &env,
        &StatusMessage::Change(change(BATCH, BatchStatus::Pending, first)),
    )
    .await;
    publish_status(
        &env,
        &StatusMessage::Change(change(BATCH, BatchStatus::Running, first + 1)),
    )
    .await;
    peer.wait_for("batch_status", 2).await;
    peer.kick();
    let after_reconnect = eventually("the status to be sent on the second connection", || async {
        let on_second: Vec<_> = peer
            .received("batch_status")
            .into_iter()
            .filter(|r| r.connection == 2)
            .collect();
        (!on_second.is_empty()).then_some(on_second)
    })
    .await;

    assert_eq!(
        after_reconnect.len(),
        1,
        "only the latest status of the batch is sent again"
    );
    assert_eq!(after_reconnect[0].message["data"]["status"], "running");
    assert_eq!(after_reconnect[0].message["data"]["timestamp"], first + 1);

    stop_notify(notify).await;
    peer.stop().await;
    env.cleanup().await;
}

fn fast_timing(pong_timeout: Duration) -> WsTiming {
    WsTiming {
        ping_interval: Duration::from_millis(200),
        pong_timeout,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        ..WsTiming::default()
    }
}

#[tokio::test]
async fn client_reconnects_when_pong_is_missing() {
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), false).await;
    let settings = WsSettings {
        timing: fast_timing(Duration::from_millis(300)),
        ..WsSettings::local(&peer.url())
    };
    let (ws, socket) = JavaWs::new(settings);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(socket.run(shutdown.clone()));

    eventually("a second connection", || async {
        (peer.connections() >= 2).then_some(())
    })
    .await;
    let pings = peer.received("ping");
    assert!(!pings.is_empty(), "the client pings before it gives up");
    assert!(ws.connection().session >= 1);

    shutdown.cancel();
    task.await.unwrap();
    peer.stop().await;
}

#[tokio::test]
async fn client_keeps_connection_while_pongs_arrive() {
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    // A generous pong timeout, so a slow machine cannot cause a reconnect.
    let settings = WsSettings {
        timing: fast_timing(Duration::from_secs(10)),
        ..WsSettings::local(&peer.url())
    };
    let (ws, socket) = JavaWs::new(settings);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(socket.run(shutdown.clone()));

    // Five pings each answered within the timeout: still the first connection.
    peer.wait_for("ping", 5).await;
    assert_eq!(peer.connections(), 1);
    assert_eq!(ws.connection().session, 1);

    shutdown.cancel();
    task.await.unwrap();
    peer.stop().await;
}

#[tokio::test]
async fn client_sends_bearer_token_and_reports_written_messages() {
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let settings = WsSettings {
        token: Redacted("s3cr3t".into()),
        ..WsSettings::local(&peer.url())
    };
    let (ws, socket) = JavaWs::new(settings);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(socket.run(shutdown.clone()));
    eventually("the client to connect", || async {
        ws.connection().connected.then_some(())
    })
    .await;

    assert!(ws.send(&json!({"type": "probe", "n": 1})).await);
    let received = peer.wait_for("probe", 1).await;
    assert_eq!(received[0].message["n"], 1);
    assert_eq!(
        peer.authorizations(),
        vec![Some("Bearer s3cr3t".to_owned())]
    );

    peer.stop().await;
    eventually("the client to notice the closed socket", || async {
        (!ws.connection().connected).then_some(())
    })
    .await;
    assert!(!ws.send(&json!({"type": "probe", "n": 2})).await);

    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn send_all_writes_messages_in_order() {
    let peer = JavaPeer::start("127.0.0.1:0".parse().unwrap(), true).await;
    let (ws, socket) = JavaWs::new(WsSettings::local(&peer.url()));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(socket.run(shutdown.clone()));
    eventually("the client to connect", || async {
        ws.connection().connected.then_some(())
    })
    .await;

    let messages: Vec<_> = (0..300).map(|n| json!({"type": "probe", "n": n})).collect();
    assert!(ws.send_all(&messages).await);
    assert!(ws.send_all(&[]).await);
    let received = peer.wait_for("probe", 300).await;
    let order: Vec<_> = received.iter().map(|r| r.message["n"].clone()).collect();
    assert_eq!(order, (0..300).map(|n| json!(n)).collect::<Vec<_>>());

    peer.stop().await;
    eventually("the client to notice the closed socket", || async {
        (!ws.connection().connected).then_some(())
    })
    .await;
    assert!(!ws.send_all(&messages[..2]).await);

    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn wss_url_starts_tls_handshake() {
    use tokio::io::AsyncReadExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_ws, socket) = JavaWs::new(WsSettings::local(&format!(
        "wss://localhost:{}/websocket/monitor",
        addr.port()
    )));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(socket.run(shutdown.clone()));

    let (mut stream, _) = tokio::time::timeout(common::PATIENCE, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut record_header = [0u8; 3];
    stream.read_exact(&mut record_header).await.unwrap();

    // A TLS record of type 22 (handshake), version 3.x: the client hello, not plain HTTP.
    assert_eq!(record_header[0], 0x16);
    assert_eq!(record_header[1], 0x03);

    shutdown.cancel();
    task.await.unwrap();
}
