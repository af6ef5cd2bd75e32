//! Shared pieces of the notify tests: each test's own database and subject prefix on the
//! shared services, a WebSocket peer that speaks the Java side of the protocol, and polling.
//!
//! Services come from `TEST_NATS_URL`, `TEST_DB_HOST`, `TEST_DB_PORT`, `TEST_DB_USER` and
//! `TEST_DB_PASSWORD`, with the development defaults (NATS on 127.0.0.1:14222, MariaDB on
//! 127.0.0.1:3306 as root without a password).

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::{SinkExt, StreamExt};
use monitor_core::messages::{Alert, AlertState, AlertType, Chain, Finding, MESSAGE_VERSION};
use monitor_core::settings::{DbSettings, NatsSettings, RuntimeSettings};
use monitor_core::{codec, topology, Subjects};
use monitor_notify::{NotifySettings, WsSettings, WsTiming};
use serde_json::{json, Value};
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Maximum wait for something a test expects; reaching it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One test's database, subject prefix and JetStream context.
pub struct Env {
    pub db: DbSettings,
    pub nats: NatsSettings,
    pub pool: MySqlPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
}

impl Env {
    /// Creates the database `t_notify_<name>_<pid>_<n>` with the migrations applied, and the
    /// streams under the prefix of the same name.
    pub async fn new(name: &str) -> Env {
        // Logs only on request: `RUST_LOG=info cargo test -p monitor-notify`.
        if std::env::var_os("RUST_LOG").is_some() {
            monitor_core::telemetry::init(monitor_core::telemetry::LogFormat::Text);
        }
        let id = format!(
            "t_notify_{}_{}_{}",
            &name[..name.len().min(24)],
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let port: u16 = var_or("TEST_DB_PORT", "3306")
            .parse()
            .expect("TEST_DB_PORT must be a port number");
        let db = DbSettings {
            host: var_or("TEST_DB_HOST", "127.0.0.1"),
            user: var_or("TEST_DB_USER", "root"),
            password: monitor_core::settings::Redacted(var_or("TEST_DB_PASSWORD", "")),
            ..DbSettings::local(port, &id)
        };
        let nats = NatsSettings::local(&var_or("TEST_NATS_URL", "nats://127.0.0.1:14222"), &id);

        let pool = monitor_core::db::migrate(&db)
            .await
            .expect("failed to migrate the test database");
        let client = nats
            .connect("notify-test")
            .await
            .expect("failed to connect to NATS");
        let js = jetstream::new(client);
        topology::ensure(&js, &nats)
            .await
            .expect("failed to create the test streams");
        let subjects = nats.subjects();
        Env {
            db,
            nats,
            pool,
            js,
            subjects,
        }
    }

    /// Drops this test's database, streams and buckets; a failed test skips it and leaves them
    /// for inspection.
    pub async fn cleanup(self) {
        for stream in [
            self.subjects.events_stream(),
            self.subjects.alerts_stream(),
            self.subjects.status_stream(),
            self.subjects.dead_stream(),
        ] {
            let _ = self.js.delete_stream(&stream).await;
        }
        for bucket in [self.subjects.tasks_bucket(), self.subjects.leases_bucket()] {
            let _ = self.js.delete_key_value(&bucket).await;
        }
        // The name was built from letters, digits and '_' only, so it is safe in the statement.
        let statement = format!("DROP DATABASE IF EXISTS `{}`", self.db.name);
        sqlx::query(&statement)
            .execute(&self.pool)
            .await
            .expect("failed to drop the test database");
        self.pool.close().await;
    }

    /// Settings of a notify stage for this test, pushing to `ws_url` with short reconnects.
    pub fn notify_settings(&self, ws_url: &str) -> NotifySettings {
        NotifySettings {
            db: self.db.clone(),
            nats: self.nats.clone(),
            ws: WsSettings {
                timing: WsTiming {
                    reconnect_max: Duration::from_secs(1),
                    ..WsTiming::default()
                },
                ..WsSettings::local(ws_url)
            },
            runtime: RuntimeSettings::default(),
        }
    }

    /// Publishes an alert as evaluate does, with `msg_id` as its `Nats-Msg-Id`.
    pub async fn publish_alert(&self, alert: &Alert, msg_id: &str) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let payload = codec::encode(alert).expect("failed to encode the alert");
        self.publish(self.subjects.alerts(alert.task_id), headers, payload)
            .await;
    }

    pub async fn publish(&self, subject: String, headers: async_nats::HeaderMap, payload: Vec<u8>) {
        self.js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .expect("failed to publish")
            .await
            .expect("the stream did not store the message");
    }

    /// Number of messages the durable consumer `name` has acked (its ack floor).
    pub async fn acked(&self, stream: &str, name: &str) -> u64 {
        let stream = self.js.get_stream(stream).await.expect("missing stream");
        match stream.consumer_info(name).await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(_) => 0,
        }
    }

    /// Waits until the consumer `name` has acked or terminated the first `count` messages.
    pub async fn wait_acked(&self, stream: &str, name: &str, count: u64) {
        eventually(
            &format!("consumer {name} to ack {count} messages"),
            || async { (self.acked(stream, name).await >= count).then_some(()) },
        )
        .await
    }

    /// Starts notify in this process; cancel the returned token to stop it.
    pub fn start_notify(
        &self,
        settings: NotifySettings,
    ) -> (CancellationToken, JoinHandle<anyhow::Result<()>>) {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(monitor_notify::run(settings, shutdown.clone()));
        (shutdown, handle)
    }
}

/// Stops a notify stage started by [`Env::start_notify`] and checks that it ended cleanly.
pub async fn stop_notify((shutdown, handle): (CancellationToken, JoinHandle<anyhow::Result<()>>)) {
    shutdown.cancel();
    let result = tokio::time::timeout(PATIENCE, handle)
        .await
        .expect("notify did not stop")
        .expect("notify panicked");
    result.expect("notify failed");
}

/// Polls `check` every 50 ms until it returns `Some`, for at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A price alert of task 4 on one token, like evaluate raises.
pub fn price_alert(id: &str, event_time_ms: i64) -> Alert {
    Alert {
        v: MESSAGE_VERSION,
        id: id.to_owned(),
        task_id: 4,
        config_id: 2,
        config_version: 3,
        batch_id: Some(12345),
        target_id: Some(77),
        chain: Chain::Eth,
        alert_type: AlertType::PriceChange,
        state: AlertState::Confirmed,
        target_value: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
        token_name: Some("Wrapped Ether".into()),
        token_symbol: Some("WETH".into()),
        findings: vec![Finding {
            rule: AlertType::PriceChange,
            observed: 6.1,
            threshold: 5.0,
            window_sec: Some(300),
            reason: "price rose 6.1% in 300s (>= 5%)".into(),
        }],
        event_time_ms,
        first_event_time_ms: Some(event_time_ms - 300_000),
        price: Some(1650.0),
        market_cap: Some(2e11),
        extra_json: None,
    }
}

/// A free port on the loopback interface, for a peer that starts later.
pub async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("failed to bind");
    listener
        .local_addr()
        .expect("bound listener has an address")
}

/// A message the peer received, with the number of the connection it came on (from 1).
#[derive(Debug, Clone)]
pub struct Received {
    pub connection: usize,
    pub message: Value,
}

/// The Java side of the protocol: greets with `connected`, answers `ping` with `pong` (unless
/// told not to), records every message and the `Authorization` header of every connection.
pub struct JavaPeer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    connections: Arc<AtomicUsize>,
    kick: broadcast::Sender<()>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl JavaPeer {
    pub async fn start(addr: SocketAddr, answer_pings: bool) -> JavaPeer {
        let listener = TcpListener::bind(addr)
            .await
            .expect("failed to bind the peer");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (kick, _) = broadcast::channel(4);
        let shutdown = CancellationToken::new();

        let peer = PeerState {
            received: received.clone(),
            authorizations: authorizations.clone(),
            connections: connections.clone(),
            kick: kick.clone(),
            shutdown: shutdown.clone(),
            answer_pings,
        };
        let task = tokio::spawn(peer.serve(listener));
        JavaPeer {
            addr,
            received,
            authorizations,
            connections,
            kick,
            shutdown,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/websocket/monitor", self.addr)
    }

    /// Messages received so far whose `type` is `kind`, in arrival order.
    pub fn received(&self, kind: &str) -> Vec<Received> {
        self.received
            .lock()
            .expect("peer lock")
            .iter()
            .filter(|r| r.message["type"] == kind)
            .cloned()
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.authorizations.lock().expect("peer lock").clone()
    }

    /// Closes every open connection, as a restarting Java backend does.
    pub fn kick(&self) {
        let _ = self.kick.send(());
    }

    /// Waits until at least `count` messages of type `kind` arrived and returns them.
    pub async fn wait_for(&self, kind: &str, count: usize) -> Vec<Received> {
        eventually(&format!("{count} {kind} messages"), || async {
            let received = self.received(kind);
            (received.len() >= count).then_some(received)
        })
        .await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

#[derive(Clone)]
struct PeerState {
    received: Arc<Mutex<Vec<Received>>>,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    connections: Arc<AtomicUsize>,
    kick: broadcast::Sender<()>,
    shutdown: CancellationToken,
    answer_pings: bool,
}

impl PeerState {
    async fn serve(self, listener: TcpListener) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tasks.spawn(self.clone().connection(stream));
                    }
                }
            }
        }
        drop(listener);
        while tasks.join_next().await.is_some() {}
    }

    async fn connection(self, stream: tokio::net::TcpStream) {
        let mut authorization = None;
        // tungstenite fixes the callback's error type, an HTTP response.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            authorization = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(response)
        };
        let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
            return;
        };
        self.authorizations
            .lock()
            .expect("peer lock")
            .push(authorization);
        let number = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let mut kick = self.kick.subscribe();

        let greeting = json!({"type": "connected", "sessionId": format!("s{number}"), "message": "WebSocket连接成功", "timestamp": 0});
        if socket
            .send(Message::text(greeting.to_string()))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let frame = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = kick.recv() => break,
                frame = socket.next() => frame,
            };
            let Some(Ok(frame)) = frame else { return };
            let Message::Text(text) = frame else { continue };
            let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            let is_ping = message["type"] == "ping";
            self.received.lock().expect("peer lock").push(Received {
                connection: number,
                message,
            });
            if is_ping && self.answer_pings {
                let pong = json!({"type": "pong", "timestamp": 0});
                if socket.send(Message::text(pong.to_string())).await.is_err() {
                    return;
                }
            }
        }
        let _ = socket.close(None).await;
    }
}
