//! Shared pieces of the notify tests: each test's own database and subject prefix on the
//! services that `scripts/test` starts ([`monitor_tests::TestEnv`]), a WebSocket peer that
//! speaks the Java side of the protocol, devkit's backend-stub with its record files, and
//! polling.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::{SinkExt, StreamExt};
use monitor_core::messages::{Alert, AlertState, AlertType, Chain, Finding, MESSAGE_VERSION};
use monitor_core::settings::{DbSettings, NatsSettings, RuntimeSettings};
use monitor_core::{codec, Subjects};
use monitor_devkit::backend_stub::{run_backend_stub, BackendStub};
use monitor_notify::{NotifySettings, WsSettings, WsTiming};
use monitor_tests::{wait_for, ProcessBuilder, TestEnv};
use serde_json::{json, Value};
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Maximum wait for something a test expects; reaching it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// One test's database, subject prefix and JetStream context.
pub struct Env {
    pub test: TestEnv,
    pub db: DbSettings,
    pub nats: NatsSettings,
    pub pool: MySqlPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
}

impl Env {
    /// Creates the test's database `t_notify_<name>_…` with the migrations applied, and the
    /// streams and buckets under the prefix of the same name.
    pub async fn new(name: &str) -> Env {
        // Logs of in-process stages only on request: `RUST_LOG=info scripts/test -p monitor-notify`.
        if std::env::var_os("RUST_LOG").is_some() {
            monitor_core::telemetry::init(monitor_core::telemetry::LogFormat::Text);
        }
        let test = TestEnv::new(&format!("notify_{name}")).await;
        test.topology().await;
        Env {
            db: test.db_settings(),
            nats: test.nats_settings(),
            pool: test.pool().clone(),
            js: test.jetstream().await,
            subjects: test.subjects(),
            test,
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
        for bucket in [
            self.subjects.tasks_bucket(),
            self.subjects.leases_bucket(),
            self.subjects.notify_status_bucket(),
        ] {
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

    /// Starts a backend stub on a free port, writing to the test's `stub` directory.
    pub async fn start_stub(&self) -> Stub {
        Stub::start(
            "127.0.0.1:0".parse().expect("valid address"),
            &self.test.work_dir().join("stub"),
        )
        .await
    }

    /// The notify binary with this test's settings, pushing to `ws_url`. It runs with the
    /// protocol's timings: reconnects back off up to 30 s.
    pub fn notify_process(&self, ws_url: &str) -> ProcessBuilder {
        self.test.stage("notify").arg("run").env("WS_URL", ws_url)
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

    /// Counts the rows of `monitor_alert_log_v2` with the key `alert_key`.
    pub async fn row_count(&self, alert_key: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM monitor_alert_log_v2 WHERE alert_key = ?")
            .bind(alert_key)
            .fetch_one(&self.pool)
            .await
            .expect("failed to count rows")
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
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for(PATIENCE, Duration::from_millis(50), check)
        .await
        .unwrap_or_else(|| panic!("timed out after {PATIENCE:?} waiting for {what}"))
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

/// devkit's backend-stub run in this process, recording to files in `dir` so that a test can
/// stop it and start it again on the same address and keep one record of both runs. It checks
/// every message against the Java protocol and writes the violations to their own file.
pub struct Stub {
    pub addr: SocketAddr,
    out: PathBuf,
    violations: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Stub {
    /// Starts the stub on `addr` (port 0 picks one), appending to `dir/backend-stub.jsonl`.
    pub async fn start(addr: SocketAddr, dir: &Path) -> Stub {
        Self::start_with(addr, dir, BackendStub::default()).await
    }

    /// Starts the stub with `stub`'s token and pong behaviour.
    pub async fn start_with(addr: SocketAddr, dir: &Path, stub: BackendStub) -> Stub {
        std::fs::create_dir_all(dir).expect("failed to create the stub directory");
        let out = dir.join("backend-stub.jsonl");
        let violations = dir.join("backend-stub-violations.jsonl");
        let listener = TcpListener::bind(addr)
            .await
            .expect("failed to bind the stub");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .await
            .expect("failed to open the stub output");
        let stub = BackendStub {
            answer_pings: true,
            violations: Some(violations.clone()),
            ..stub
        };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            run_backend_stub(listener, stub, file, token)
                .await
                .expect("backend-stub failed");
        });
        Stub {
            addr,
            out,
            violations,
            shutdown,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/websocket/monitor", self.addr)
    }

    /// Messages recorded so far, over every run in the same directory, whose `type` is `kind`.
    pub fn received(&self, kind: &str) -> Vec<Value> {
        read_records(&self.out)
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }

    /// Waits until at least `count` messages of type `kind` were recorded and returns them.
    pub async fn wait_for(&self, kind: &str, count: usize) -> Vec<Value> {
        eventually(&format!("{count} {kind} messages at the stub"), || async {
            let received = self.received(kind);
            (received.len() >= count).then_some(received)
        })
        .await
    }

    /// Fails the test if any message the stub received broke the Java protocol.
    pub fn assert_no_violations(&self) {
        monitor_tests::assert_no_stub_violations(&self.violations);
    }

    pub fn violations_path(&self) -> &Path {
        &self.violations
    }

    /// Stops the stub and waits until every received message is written.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Reads a file of JSON lines, skipping a line that is not complete yet.
pub fn read_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}
