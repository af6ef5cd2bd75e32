//! Shared steps of the block task end-to-end tests: a block task in MySQL, the pipeline's
//! processes, and reading what reached MySQL and the Java WebSocket stub.

// Helpers panic on failure: a panic is the test failure. Not every test file uses every helper.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

pub mod anvil;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use monitor_tests::{free_port, wait_until, Process, TestEnv};
use serde_json::Value;
use sqlx::Row;

/// Upper bound for the pipeline to turn recorded or produced chain data into alerts.
pub const ALERT_TIMEOUT: Duration = Duration::from_secs(120);

/// Inserts a config with `events_config` and an active block task on `chain` using it;
/// returns the task id.
pub async fn insert_block_task(env: &TestEnv, chain: &str, events_config: &Value) -> u64 {
    let config_id = sqlx::query(
        "INSERT INTO monitor_config_v2 (config_name, config_category, chain_type, events_config, \
         trigger_logic, version, status, del_flag) VALUES ('block rules', 'block', ?, ?, 'OR', 1, 1, 0)",
    )
    .bind(chain)
    .bind(events_config.to_string())
    .execute(env.pool())
    .await
    .expect("the config row is inserted")
    .last_insert_id();
    let task_id = sqlx::query(
        "INSERT INTO monitor_task_v2 (task_name, task_type, chain_type, status, del_flag) \
         VALUES ('block task', 'block', ?, 1, 0)",
    )
    .bind(chain)
    .execute(env.pool())
    .await
    .expect("the task row is inserted")
    .last_insert_id();
    sqlx::query(
        "INSERT INTO monitor_task_config_v2 (task_id, config_id, config_order) VALUES (?, ?, 0)",
    )
    .bind(task_id)
    .bind(config_id)
    .execute(env.pool())
    .await
    .expect("the task config link is inserted");
    task_id
}

/// Replaces the `events_config` of the task's config and bumps its version, as the Java side
/// does when a user edits the rules.
pub async fn update_events_config(env: &TestEnv, task_id: u64, events_config: &Value) {
    let updated = sqlx::query(
        "UPDATE monitor_config_v2 c JOIN monitor_task_config_v2 tc ON tc.config_id = c.id \
         SET c.events_config = ?, c.version = c.version + 1 WHERE tc.task_id = ?",
    )
    .bind(events_config.to_string())
    .bind(task_id)
    .execute(env.pool())
    .await
    .expect("the config row is updated");
    assert_eq!(updated.rows_affected(), 1, "task {task_id} has one config");
}

/// Starts a devkit server on a free port and waits until it listens; returns its address.
pub async fn start_devkit_server(env: &TestEnv, name: &str, args: &[&str]) -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let mut command = env.stage("devkit");
    for part in name.split(' ') {
        command = command.arg(part);
    }
    let log_name = name.replace(' ', "-");
    let process = command
        .args(["--listen", address.as_str()])
        .args(args)
        .spawn(&log_name);
    assert!(
        process
            .wait_for_log("listening on", Duration::from_secs(30))
            .await,
        "{name} did not start:\n{}",
        process.log()
    );
    (process, address)
}

/// The processes of one pipeline run; killed when dropped.
pub struct Pipeline {
    pub stub_file: PathBuf,
    pub ingest: Process,
    pub processes: Vec<Process>,
}

/// Starts the backend stub, allocator, evaluate, notify and ingest (with `ingest_env` added,
/// for the node endpoints and prices). Heartbeats are sent every second.
pub async fn start_pipeline(env: &TestEnv, ingest_env: &[(&str, &str)]) -> Pipeline {
    let stub_file = env.work_dir().join("backend-stub.jsonl");
    let (stub, stub_address) = start_devkit_server(
        env,
        "backend-stub",
        &["--out", stub_file.to_str().expect("utf-8 path")],
    )
    .await;
    let ws_url = format!("ws://{stub_address}/websocket/monitor");
    let allocator = env.stage("allocator").arg("run").spawn("allocator");
    let evaluate = env.stage("evaluate").arg("run").spawn("evaluate");
    let notify = env
        .stage("notify")
        .arg("run")
        .env("WS_URL", &ws_url)
        .spawn("notify");
    let ingest = env
        .stage("ingest")
        .arg("run")
        .env("HEARTBEAT_INTERVAL", "1")
        .envs(ingest_env.iter().copied())
        .spawn("ingest");
    Pipeline {
        stub_file,
        ingest,
        processes: vec![stub, allocator, evaluate, notify],
    }
}

/// One row of `monitor_alert_log_v2`.
#[derive(Debug, Clone)]
pub struct AlertRow {
    pub id: i64,
    pub alert_key: String,
    pub alert_type: String,
    pub target_value: String,
    pub state: String,
    pub notify_status: String,
    pub data: Value,
}

pub async fn alert_rows(env: &TestEnv, task_id: u64) -> Vec<AlertRow> {
    sqlx::query(
        "SELECT id, alert_key, alert_type, target_value, state, notify_status, \
                CAST(alert_data AS CHAR) AS alert_data \
         FROM monitor_alert_log_v2 WHERE task_id = ? ORDER BY id",
    )
    .bind(task_id)
    .fetch_all(env.pool())
    .await
    .expect("alert rows can be read")
    .into_iter()
    .map(|row| AlertRow {
        id: row.get("id"),
        alert_key: row.get("alert_key"),
        alert_type: row.get("alert_type"),
        target_value: row.get("target_value"),
        state: row.get("state"),
        notify_status: row.get("notify_status"),
        data: serde_json::from_str(&row.get::<String, _>("alert_data"))
            .expect("alert_data is JSON"),
    })
    .collect()
}

/// Returns the alert rows by alert key.
pub fn by_key(rows: &[AlertRow]) -> BTreeMap<String, AlertRow> {
    rows.iter()
        .map(|r| (r.alert_key.clone(), r.clone()))
        .collect()
}

/// Waits until the task's alert keys are exactly `expected` (in any order) and every row is
/// pushed, or until the timeout passes. Returns the rows by key in both cases.
pub async fn wait_for_alerts(
    env: &TestEnv,
    task_id: u64,
    expected: &[String],
) -> BTreeMap<String, AlertRow> {
    let mut wanted: Vec<String> = expected.to_vec();
    wanted.sort();
    wait_until(ALERT_TIMEOUT, Duration::from_millis(250), || async {
        let rows = by_key(&alert_rows(env, task_id).await);
        rows.keys().cloned().collect::<Vec<_>>() == wanted
            && rows.values().all(|r| r.notify_status == "pushed")
    })
    .await;
    by_key(&alert_rows(env, task_id).await)
}

/// Returns every message the backend stub recorded, in arrival order.
pub fn stub_messages(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

/// Returns the messages of `message_type` that the stub recorded.
pub fn stub_messages_of(path: &PathBuf, message_type: &str) -> Vec<Value> {
    stub_messages(path)
        .into_iter()
        .filter(|m| m["type"] == message_type)
        .collect()
}

/// Waits until the stub received a `task_heartbeat` of the task with `lastBlock` at least
/// `block`; returns the last block reported.
pub async fn wait_for_heartbeat(path: &PathBuf, task_id: u64, block: u64) -> Option<u64> {
    let last_block = || {
        stub_messages_of(path, "task_heartbeat")
            .iter()
            .filter(|m| m["data"]["taskId"] == task_id)
            .filter_map(|m| m["data"]["lastBlock"].as_u64())
            .max()
    };
    wait_until(ALERT_TIMEOUT, Duration::from_millis(250), || async {
        last_block().is_some_and(|b| b >= block)
    })
    .await;
    last_block()
}

/// Returns the alert id that evaluate builds for a block task: `<task>:<subject>:<type>:<bucket>`
/// with the bucket `source_time_sec / cooldown_sec`.
pub fn block_alert_id(
    task_id: u64,
    subject: &str,
    alert_type: &str,
    time_sec: u64,
    cooldown_sec: u64,
) -> String {
    format!(
        "{task_id}:{subject}:{alert_type}:{}",
        time_sec / cooldown_sec
    )
}
