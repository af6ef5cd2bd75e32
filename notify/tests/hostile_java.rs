//! Hostile messages from the Java WebSocket, against notify's client over a real socket.
//!
//! A server of this test accepts the client, sends one hostile message on the first
//! connection, and records every message the client writes. The client must end a session
//! that breaks its limits and connect again, and ignore messages it does not use, while
//! messages sent afterwards still arrive. `docs/hostile-inputs.md` lists them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use monitor_notify::java_ws::incoming::MAX_INCOMING_BYTES;
use monitor_notify::java_ws::JavaWs;
use monitor_notify::settings::WsSettings;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    received: Mutex<Vec<String>>,
}

/// Serves clients; the first connection gets `hostile` right after the handshake.
async fn start_server(hostile: Message) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/websocket/monitor", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&server_seen);
            let hostile = hostile.clone();
            tokio::spawn(async move {
                let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
                let number = seen.connections.fetch_add(1, Ordering::SeqCst);
                if number == 0 {
                    let _ = socket.send(hostile).await;
                }
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        seen.received.lock().unwrap().push(text.to_string());
                    }
                }
            });
        }
    });
    (url, seen)
}

/// Sends `{"type":"probe","n":n}` until one reaches the server; returns the session it used.
async fn deliver_probe(ws: &JavaWs, seen: &Seen, n: u32) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probe = json!({"type": "probe", "n": n});
        if ws.send(&probe).await
            && seen
                .received
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.contains(&format!("\"n\":{n}")))
        {
            return ws.connection().session;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "probe {n} never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn java_message_over_one_mib() {
    let hostile = Message::text("x".repeat(MAX_INCOMING_BYTES + 1));
    let (url, seen) = start_server(hostile).await;
    let (ws, task) = JavaWs::new(WsSettings::local(&url));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(task.run(shutdown.clone()));

    // The oversized message ends the first session; the client connects again and delivers.
    let reconnected = async {
        while seen.connections.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reconnected)
        .await
        .expect("the client connects again after the oversized message");
    let session = deliver_probe(&ws, &seen, 1).await;
    assert!(
        session >= 2,
        "the probe goes over a new session, got session {session}"
    );

    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn java_message_that_is_not_json() {
    let (url, seen) = start_server(Message::text("{\"type\": \"pong\"")).await;
    let (ws, task) = JavaWs::new(WsSettings::local(&url));
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(task.run(shutdown.clone()));

    // The broken message is ignored (logged at debug); the session goes on.
    deliver_probe(&ws, &seen, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let session = deliver_probe(&ws, &seen, 2).await;
    assert_eq!(session, 1, "the first session carries both probes");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

    shutdown.cancel();
    handle.await.unwrap();
}
