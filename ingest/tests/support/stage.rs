//! The real binaries as processes: `devkit feed-replay` and `ingest`, on the services of a
//! [`monitor_tests::TestEnv`], plus readers of the leases bucket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use monitor_core::messages::{EventFrame, StatusMessage};
use monitor_tests::{free_port, NatsServer, Process, ProcessBuilder, TestEnv};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Nats, StreamReader, API_KEY, WAIT_LIMIT};

/// Returns the path of the shipped ETH/USDT trades.
pub fn trades_csv() -> std::path::PathBuf {
    monitor_tests::workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv")
}

/// NATS handles on the test environment's prefix.
pub async fn nats_of(env: &TestEnv) -> Nats {
    Nats {
        settings: env.nats_settings(),
        js: env.jetstream().await,
        topology: env.topology().await,
    }
}

/// NATS handles on a private server of the test, with the test environment's prefix.
pub async fn nats_on(server: &NatsServer, env: &TestEnv) -> Nats {
    let settings = server.settings(env);
    let client = async_nats::connect(settings.url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let topology = monitor_core::topology::ensure(&js, &settings)
        .await
        .unwrap();
    Nats {
        settings,
        js,
        topology,
    }
}

/// A `devkit feed-replay` process on a fixed port, so that it can be restarted on the same
/// address.
pub struct FeedReplayProcess {
    pub port: u16,
    builder: ProcessBuilder,
    pub process: Option<Process>,
    runs: usize,
}

impl FeedReplayProcess {
    /// Starts `devkit feed-replay` with the shipped CSV, the test API key and `args`.
    pub async fn start(env: &TestEnv, args: &[&str]) -> FeedReplayProcess {
        let port = free_port();
        let builder = env
            .command(monitor_tests::bin("devkit"))
            .args(["feed-replay", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--api-key", API_KEY, "--csv"])
            .arg(trades_csv())
            .args(args);
        let mut replay = FeedReplayProcess {
            port,
            builder,
            process: None,
            runs: 0,
        };
        replay.start_again().await;
        replay
    }

    /// Returns the base URL that ingest takes as `BIRDEYE_WS_URL`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/socket", self.port)
    }

    /// Returns the base URL that ingest takes as `BIRDEYE_API_URL`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same port and waits until it listens.
    pub async fn start_again(&mut self) {
        self.runs += 1;
        let process = self.builder.spawn(&format!("feed-replay-{}", self.port));
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + WAIT_LIMIT;
        // Each run appends to the same log, so count the lines of this run.
        while process.log().matches(&listening).count() < self.runs {
            assert!(
                Instant::now() < deadline,
                "feed-replay did not listen on port {}; see {}",
                self.port,
                process.log_path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.process = Some(process);
    }
}

/// Prepares an `ingest` process of the test, fed by `feed`, with `extra` settings.
pub fn ingest(env: &TestEnv, feed: &FeedReplayProcess, extra: &[(&str, &str)]) -> ProcessBuilder {
    fed_by(env.stage("ingest"), feed)
        .env("HEARTBEAT_INTERVAL", "1")
        .envs(extra.iter().copied())
}

/// Points the Birdeye settings of an ingest process at `feed`.
pub fn fed_by(builder: ProcessBuilder, feed: &FeedReplayProcess) -> ProcessBuilder {
    builder
        .env("BIRDEYE_WS_URL", feed.ws_url())
        .env("BIRDEYE_API_URL", feed.api_url())
        .env("BIRDEYE_API_KEY", API_KEY)
}

/// Returns the consumer id of an ingest process of this test, `<test id>-<pid>-<run>`, read
/// from its member key because the run part is random.
pub async fn consumer_id(leases: &kv::Store, env: &TestEnv, process: &Process) -> String {
    member_with_prefix(leases, &format!("{}-{}-", env.id(), process.pid())).await
}

/// Waits for a member whose consumer id starts with `prefix` and returns that id.
pub async fn member_with_prefix(leases: &kv::Store, prefix: &str) -> String {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let member = lease_entries(leases)
            .await
            .into_keys()
            .filter_map(|key| key.strip_prefix("member.").map(str::to_owned))
            .find(|id| id.starts_with(prefix));
        if let Some(member) = member {
            return member;
        }
        assert!(
            Instant::now() < deadline,
            "no member {prefix}* joined the leases bucket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns every key of the leases bucket with its value as text.
pub async fn lease_entries(leases: &kv::Store) -> BTreeMap<String, String> {
    let keys: Vec<String> = match leases.keys().await {
        Ok(keys) => keys.try_collect().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut entries = BTreeMap::new();
    for key in keys {
        if let Ok(Some(value)) = leases.get(&key).await {
            entries.insert(key, String::from_utf8_lossy(&value).into_owned());
        }
    }
    entries
}

/// Polls the leases bucket until `done` holds for its entries; panics after `limit`.
pub async fn wait_for_leases(
    leases: &kv::Store,
    what: &str,
    limit: Duration,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let entries = lease_entries(leases).await;
        if done(&entries) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; leases: {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages of a stream collected by a background task, in stream order.
pub struct Collected<T> {
    items: Arc<Mutex<Vec<T>>>,
    task: JoinHandle<()>,
}

impl<T> Drop for Collected<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Clone + std::fmt::Debug> Collected<T> {
    pub fn snapshot(&self) -> Vec<T> {
        self.items.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the items collected so far; panics after `limit`.
    pub async fn wait(&self, what: &str, limit: Duration, done: impl Fn(&[T]) -> bool) -> Vec<T> {
        let deadline = Instant::now() + limit;
        loop {
            let items = self.snapshot();
            if done(&items) {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {} items collected, the last: {:#?}",
                items.len(),
                items.iter().rev().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An event frame with the time the stream stored it.
#[derive(Debug, Clone)]
pub struct StoredFrame {
    pub frame: EventFrame,
    pub stored_ms: i64,
}

/// A status message with its subject.
#[derive(Debug, Clone)]
pub struct StoredStatus {
    pub subject: String,
    pub message: StatusMessage,
}

/// Collects every event frame of the events stream, from its first message.
pub async fn collect_frames(nats: &Nats) -> Collected<StoredFrame> {
    let reader = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    collect(reader, |message| StoredFrame {
        frame: monitor_core::codec::decode(&message.payload).unwrap(),
        stored_ms: message
            .info()
            .map(|info| (info.published.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or_default(),
    })
}

/// Collects every status message, from the first one the stream still holds.
pub async fn collect_status(nats: &Nats) -> Collected<StoredStatus> {
    let reader = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    collect(reader, |message| StoredStatus {
        subject: message.subject.to_string(),
        message: monitor_core::codec::decode(&message.payload).unwrap(),
    })
}

fn collect<T: Send + 'static>(
    mut reader: StreamReader,
    convert: impl Fn(&async_nats::jetstream::Message) -> T + Send + 'static,
) -> Collected<T> {
    let items = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&items);
    let task = tokio::spawn(async move {
        loop {
            if let Some(message) = reader.next(Duration::from_secs(1)).await {
                sink.lock().unwrap().push(convert(&message));
            }
        }
    });
    Collected { items, task }
}
