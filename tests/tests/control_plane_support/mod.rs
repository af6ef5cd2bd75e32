//! Shared set-up of the control plane's end-to-end tests.
//!
//! Builds a test's task tables in its own database, starts the real binaries (`allocator`,
//! `ingest`, `evaluate`, `devkit feed-replay`) with the test's settings, publishes config
//! change notices on the test's own Redis channel, and reads what the stages wrote: the tasks
//! bucket and the events, alerts and status streams.

// Helpers panic on failure: a panic is the test failure. Not every test file uses every helper.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::{Alert, BatchSpec, EventFrame, StatusMessage, TaskSpec};
use monitor_core::Subjects;
use monitor_tests::{free_port, wait_for, workspace_dir, Process, TestEnv};

/// Wrapped Ether, the token of the recorded trades.
pub const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
/// Further tokens that feed-replay serves with the same trades.
pub const DAI: &str = "0x6b175474e89094c44da98b954eedeac495271d0f";
pub const USDC: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
pub const LINK: &str = "0x514910771af9ca656af840dff83e8264ecf986ca";

/// Upper bound of every wait, far above what a healthy run needs.
pub const LIMIT: Duration = Duration::from_secs(90);
/// Interval between two checks of a wait.
pub const POLL: Duration = Duration::from_millis(100);

pub fn trades_csv() -> PathBuf {
    workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv")
}

/// A config row as the Java side writes it.
pub struct ConfigValues<'a> {
    pub events_config: &'a str,
    pub min_transaction_usd: f64,
    pub version: u64,
}

pub async fn insert_config(env: &TestEnv, values: &ConfigValues<'_>) -> u64 {
    sqlx::query(
        "INSERT INTO monitor_config_v2 (config_name, chain_type, min_transaction_usd, \
         events_config, trigger_logic, version) VALUES ('control plane', 'eth', ?, ?, 'OR', ?)",
    )
    .bind(values.min_transaction_usd)
    .bind(values.events_config)
    .bind(values.version)
    .execute(env.pool())
    .await
    .expect("insert config")
    .last_insert_id()
}

pub async fn update_config(env: &TestEnv, config_id: u64, values: &ConfigValues<'_>) {
    sqlx::query(
        "UPDATE monitor_config_v2 SET events_config = ?, min_transaction_usd = ?, version = ? \
         WHERE id = ?",
    )
    .bind(values.events_config)
    .bind(values.min_transaction_usd)
    .bind(values.version)
    .bind(config_id)
    .execute(env.pool())
    .await
    .expect("update config");
}

/// Inserts a task and links it to `config_id` with `config_order` 0.
pub async fn insert_task(env: &TestEnv, task_type: &str, config_id: u64) -> u64 {
    let task_id = sqlx::query(
        "INSERT INTO monitor_task_v2 (task_name, task_type, chain_type) VALUES ('watch', ?, 'eth')",
    )
    .bind(task_type)
    .execute(env.pool())
    .await
    .expect("insert task")
    .last_insert_id();
    link_config(env, task_id, config_id, 0).await;
    task_id
}

pub async fn link_config(env: &TestEnv, task_id: u64, config_id: u64, order: i32) {
    sqlx::query(
        "INSERT INTO monitor_task_config_v2 (task_id, config_id, config_order) VALUES (?, ?, ?)",
    )
    .bind(task_id)
    .bind(config_id)
    .bind(order)
    .execute(env.pool())
    .await
    .expect("link config");
}

/// Inserts an active target and returns its id.
pub async fn insert_target(env: &TestEnv, task_id: u64, address: &str) -> u64 {
    sqlx::query(
        "INSERT INTO monitor_task_target_v2 (task_id, target_value, token_symbol, source) \
         VALUES (?, ?, 'TKN', 'birdeye')",
    )
    .bind(task_id)
    .bind(address)
    .execute(env.pool())
    .await
    .expect("insert target")
    .last_insert_id()
}

pub async fn set_target_status(env: &TestEnv, target_id: u64, status: i8) {
    sqlx::query("UPDATE monitor_task_target_v2 SET status = ? WHERE id = ?")
        .bind(status)
        .bind(target_id)
        .execute(env.pool())
        .await
        .expect("update target status");
}

pub async fn set_task_flags(env: &TestEnv, task_id: u64, status: i8, del_flag: i8) {
    sqlx::query("UPDATE monitor_task_v2 SET status = ?, del_flag = ? WHERE id = ?")
        .bind(status)
        .bind(del_flag)
        .bind(task_id)
        .execute(env.pool())
        .await
        .expect("update task status");
}

pub async fn current_epoch(env: &TestEnv, task_id: u64) -> u32 {
    let epoch: i32 = sqlx::query_scalar("SELECT current_epoch FROM monitor_task_v2 WHERE id = ?")
        .bind(task_id)
        .fetch_one(env.pool())
        .await
        .expect("read current epoch");
    epoch as u32
}

/// Number of `monitor_batch_v2` rows of an epoch.
pub async fn batch_rows(env: &TestEnv, task_id: u64, epoch: u32) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM monitor_batch_v2 WHERE task_id = ? AND epoch = ?")
        .bind(task_id)
        .bind(epoch)
        .fetch_one(env.pool())
        .await
        .expect("count batch rows")
}

/// The Redis channel of this test's config change notices.
pub fn config_channel(env: &TestEnv) -> String {
    format!("{}:config", env.id())
}

/// Starts `allocator run` with this test's channel and the given extra settings.
pub fn start_allocator(env: &TestEnv, settings: &[(&str, &str)]) -> Process {
    env.stage("allocator")
        .arg("run")
        .env("CONFIG_CHANGED_CHANNEL", config_channel(env))
        .envs(settings.iter().copied())
        .spawn("allocator")
}

/// Starts `devkit feed-replay` for the tokens on a free port; returns it and its URL.
pub async fn start_feed(env: &TestEnv, tokens: &[&str], args: &[&str]) -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let csv = trades_csv();
    let mut command = env
        .stage("devkit")
        .arg("feed-replay")
        .args(["--listen", address.as_str()])
        .args(["--csv", csv.to_str().expect("utf-8 path")])
        .args(["--chain", "ethereum"]);
    for token in tokens {
        command = command.args(["--token", token]);
    }
    let feed = command.args(args).spawn("feed-replay");
    assert!(
        feed.wait_for_log("listening on", LIMIT).await,
        "feed-replay did not start:\n{}",
        feed.log()
    );
    (feed, format!("ws://{address}"))
}

/// Starts `ingest run` on the feed; heartbeats are rare so that status changes stand out.
pub fn start_ingest(env: &TestEnv, feed_url: &str) -> Process {
    env.stage("ingest")
        .arg("run")
        .env("BIRDEYE_WS_URL", feed_url)
        .env("BIRDEYE_API_KEY", "test-key")
        .env("HEARTBEAT_INTERVAL", "600")
        .spawn("ingest")
}

pub fn start_evaluate(env: &TestEnv) -> Process {
    env.stage("evaluate").arg("run").spawn("evaluate")
}

/// Publishes `{"configId": N, "version": M}` on this test's channel.
pub async fn publish_notice(env: &TestEnv, config_id: u64, version: u64) {
    let mut connection = env.redis_connection().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(config_channel(env))
        .arg(format!(
            r#"{{"configId": {config_id}, "version": {version}}}"#
        ))
        .query_async(&mut connection)
        .await
        .expect("publish the config change notice");
}

/// Waits until the allocator subscribes to this test's channel.
pub async fn wait_subscribed(env: &TestEnv) -> bool {
    let channel = config_channel(env);
    wait_for(LIMIT, POLL, || async {
        let mut connection = env.redis_connection().await;
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut connection)
            .await
            .ok()?;
        (counts.first()?.1 >= 1).then_some(())
    })
    .await
    .is_some()
}

/// The stages' NATS view of one test.
pub struct Bus {
    pub jetstream: jetstream::Context,
    pub subjects: Subjects,
    pub tasks: jetstream::kv::Store,
}

impl Bus {
    pub async fn new(env: &TestEnv) -> Bus {
        let topology = env.topology().await;
        Bus {
            jetstream: env.jetstream().await,
            subjects: topology.subjects,
            tasks: topology.tasks,
        }
    }

    pub async fn task_spec(&self, task_id: u64) -> Option<TaskSpec> {
        let bytes = self
            .tasks
            .get(Subjects::task_key(task_id))
            .await
            .expect("read task spec")?;
        Some(codec::decode(&bytes).expect("decode task spec"))
    }

    pub async fn batch_spec(&self, batch_id: u64) -> Option<BatchSpec> {
        let bytes = self
            .tasks
            .get(Subjects::batch_key(batch_id))
            .await
            .expect("read batch spec")?;
        Some(codec::decode(&bytes).expect("decode batch spec"))
    }

    /// Waits for the task's spec to satisfy `check`.
    pub async fn wait_task<F>(&self, task_id: u64, check: F) -> Option<TaskSpec>
    where
        F: Fn(&TaskSpec) -> bool,
    {
        wait_for(LIMIT, POLL, || async {
            self.task_spec(task_id).await.filter(|spec| check(spec))
        })
        .await
    }

    /// Every alert of a task stored in the alerts stream, in stream order.
    pub async fn alerts(&self, task_id: u64) -> Vec<Alert> {
        self.read(
            &self.subjects.alerts_stream(),
            &self.subjects.alerts(task_id),
        )
        .await
        .into_iter()
        .map(|m| codec::decode(&m.payload).expect("decode alert"))
        .collect()
    }

    /// Every event frame of a task stored in the events stream, in stream order.
    pub async fn frames(&self, task_id: u64) -> Vec<EventFrame> {
        let filter = format!("{}.events.*.{task_id}.>", self.subjects.prefix());
        self.read(&self.subjects.events_stream(), &filter)
            .await
            .into_iter()
            .map(|m| codec::decode(&m.payload).expect("decode event frame"))
            .collect()
    }

    /// Every status message of a task's batches and of the task, with stream sequences.
    pub async fn statuses(&self, task_id: u64) -> Vec<(u64, String, StatusMessage)> {
        let filter = format!("{}.status.*.{task_id}.>", self.subjects.prefix());
        let mut out: Vec<(u64, String, StatusMessage)> = self
            .read(&self.subjects.status_stream(), &filter)
            .await
            .into_iter()
            .map(|m| {
                let message = codec::decode(&m.payload).expect("decode status message");
                (m.sequence, m.subject, message)
            })
            .collect();
        let task_subject = self.subjects.task_status(task_id);
        for m in self
            .read(&self.subjects.status_stream(), &task_subject)
            .await
        {
            let message = codec::decode(&m.payload).expect("decode status message");
            out.push((m.sequence, m.subject, message));
        }
        out.sort_by_key(|(sequence, _, _)| *sequence);
        out
    }

    /// Reads every message of `stream` on `filter` that is stored now.
    async fn read(&self, stream: &str, filter: &str) -> Vec<StoredMessage> {
        let stream = self
            .jetstream
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("open stream {stream}: {e}"));
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: filter.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("create a consumer on {filter}: {e}"));
        let mut out = Vec::new();
        loop {
            let mut batch = consumer
                .batch()
                .max_messages(1000)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("fetch a batch");
            let mut fetched = 0;
            let mut caught_up = false;
            while let Some(message) = batch.next().await {
                let message = message.expect("read a message");
                let info = message.info().expect("message metadata");
                caught_up = info.pending == 0;
                out.push(StoredMessage {
                    sequence: info.stream_sequence,
                    subject: message.subject.to_string(),
                    payload: message.payload.clone(),
                });
                fetched += 1;
            }
            if fetched == 0 || caught_up {
                return out;
            }
        }
    }
}

struct StoredMessage {
    sequence: u64,
    subject: String,
    payload: Bytes,
}

/// Starts `devkit backend-stub`, recording into the test's work directory, and `notify run`
/// pushing to it. Returns both processes and the file of recorded messages.
pub async fn start_notify_and_stub(env: &TestEnv) -> (Process, Process, PathBuf) {
    let address = format!("127.0.0.1:{}", free_port());
    let out = env.work_dir().join("backend-stub.jsonl");
    let stub = env
        .stage("devkit")
        .arg("backend-stub")
        .args(["--listen", address.as_str()])
        .args(["--out", out.to_str().expect("utf-8 path")])
        .spawn("backend-stub");
    assert!(
        stub.wait_for_log("listening on", LIMIT).await,
        "backend-stub did not start:\n{}",
        stub.log()
    );
    let notify = env
        .stage("notify")
        .arg("run")
        .env("WS_URL", format!("ws://{address}/websocket/monitor"))
        .spawn("notify");
    (stub, notify, out)
}

/// The `data` of every `task_status` message the backend stub received for a task.
pub fn stub_task_statuses(out: &std::path::Path, task_id: u64) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["type"] == "task_status")
        .map(|message| message["data"].clone())
        .filter(|data| data["taskId"] == task_id)
        .collect()
}

/// Removes the terminal colour codes (`ESC [ ... m`) from a log text.
pub fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for code in chars.by_ref() {
                if code == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
