//! Helpers of the operations tests (`ops_*.rs`): the demo task, the devkit servers, the alert
//! rows and the stub's record, the model's expected alert ids, and a plain HTTP GET for the
//! metrics endpoints.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_core::messages::TaskType;
use monitor_core::rules::{parse_config, ConfigRow, Rules};
use monitor_tests::recorded::{expected_alerts, load_trades};
use monitor_tests::{free_port, workspace_dir, Process, ProcessBuilder, TestEnv};
use serde_json::Value;
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The token of the recorded trades (WETH on Ethereum).
pub const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";

pub fn trades_csv() -> PathBuf {
    workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv")
}

/// Runs `devkit seed` with `extra` environment and returns the task id it printed.
pub async fn seed(env: &TestEnv, extra: &[(&str, &str)]) -> u64 {
    let output = env
        .stage("devkit")
        .envs(extra.iter().copied())
        .arg("seed")
        .output("seed", Duration::from_secs(60))
        .await;
    assert!(output.status.success(), "devkit seed failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("task_id="))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("devkit seed printed no task_id: {stdout}"))
}

/// Runs `allocator allocate` for the task.
pub async fn allocate(env: &TestEnv, task_id: u64) {
    let output = env
        .stage("allocator")
        .args(["allocate", "--task-id", &task_id.to_string()])
        .output("allocate", Duration::from_secs(60))
        .await;
    assert!(
        output.status.success(),
        "allocator allocate failed: {output:?}"
    );
}

/// Starts a devkit server on a free port, waits until it listens, and returns its address.
pub async fn start_devkit_server(env: &TestEnv, name: &str, args: &[&str]) -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let process = env
        .stage("devkit")
        .arg(name)
        .args(["--listen", address.as_str()])
        .args(args)
        .spawn(name);
    assert!(
        process
            .wait_for_log("listening on", Duration::from_secs(30))
            .await,
        "{name} did not start:\n{}",
        process.log()
    );
    (process, address)
}

/// Starts feed-replay on the recorded trades at `speed` (0: as fast as ingest reads).
pub async fn start_feed_replay(env: &TestEnv, speed: &str, extra: &[&str]) -> (Process, String) {
    let csv = trades_csv();
    let mut args = vec![
        "--csv",
        csv.to_str().expect("utf-8 path"),
        "--token",
        WETH,
        "--symbol",
        "WETH",
        "--chain",
        "ethereum",
        "--speed",
        speed,
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    start_devkit_server(env, "feed-replay", &refs).await
}

/// The ids of the alerts the recorded trades must raise for the task, from the brute-force
/// model of the rules.
pub async fn expected_alert_ids(env: &TestEnv, task_id: u64) -> BTreeSet<String> {
    let row = sqlx::query(
        "SELECT c.id, c.version, c.config_name, \
                CAST(c.min_transaction_usd AS DOUBLE) AS min_transaction_usd, \
                CAST(c.cumulative_min_amount_usd AS DOUBLE) AS cumulative_min_amount_usd, \
                c.time_interval, CAST(c.top_holders_threshold AS DOUBLE) AS top_holders_threshold, \
                c.events_config, c.trigger_logic \
         FROM monitor_config_v2 c JOIN monitor_task_config_v2 tc ON tc.config_id = c.id \
         WHERE tc.task_id = ?",
    )
    .bind(task_id)
    .fetch_one(env.pool())
    .await
    .expect("the seeded task has a config");
    let config = ConfigRow {
        config_id: row.get::<i64, _>("id") as u64,
        version: row.get::<i64, _>("version") as u64,
        name: row.get("config_name"),
        min_transaction_usd: row.get("min_transaction_usd"),
        cumulative_min_amount_usd: row.get("cumulative_min_amount_usd"),
        time_interval: row.get::<Option<i32>, _>("time_interval").map(i64::from),
        top_holders_threshold: row.get("top_holders_threshold"),
        events_config: row.get("events_config"),
        trigger_logic: row.get("trigger_logic"),
    };
    let rules = match parse_config(&config, TaskType::Smart)
        .expect("the seeded config is valid")
        .rules
    {
        Rules::Token(rules) => rules,
        Rules::Block(_) => panic!("the seeded task is a token task"),
    };
    let trades = load_trades(&trades_csv()).expect("the recorded trades load");
    expected_alerts(&trades, &rules)
        .iter()
        .map(|alert| alert.id(task_id, WETH))
        .collect()
}

/// One row of `monitor_alert_log_v2`.
#[derive(Debug, Clone)]
pub struct AlertRow {
    pub id: i64,
    pub alert_key: String,
    pub alert_type: String,
    pub notify_status: String,
}

pub async fn alert_rows(env: &TestEnv, task_id: u64) -> Vec<AlertRow> {
    sqlx::query(
        "SELECT id, alert_key, alert_type, notify_status FROM monitor_alert_log_v2 \
         WHERE task_id = ? ORDER BY id",
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
        notify_status: row.get("notify_status"),
    })
    .collect()
}

/// How often the backend stub received an `alert` message for each alertId.
pub fn stub_alert_counts(path: &Path) -> BTreeMap<i64, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for message in text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
    {
        if message["type"] != "alert" {
            continue;
        }
        if let Some(id) = message["data"]["alertId"].as_i64() {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Sends `GET path` to `address` and returns the status code and the body. Errors (nothing
/// listening yet) come back as `None`.
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .ok()
        .flatten()
}

/// Returns the value of every sample of `name` (`name{labels} value` or `name value`).
pub fn samples(metrics: &str, name: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let labelled = series
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'));
            if series != name && !labelled {
                return None;
            }
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Returns the sum of every sample of `name`.
pub fn total(metrics: &str, name: &str) -> f64 {
    samples(metrics, name).iter().map(|(_, value)| value).sum()
}

/// A stage started with `METRICS_ADDR` on a free port.
pub struct Stage {
    pub process: Process,
    pub builder: ProcessBuilder,
    pub metrics_addr: String,
}

impl Stage {
    /// Starts `binary run` with METRICS_ADDR on a free loopback port and the given settings.
    pub fn start(env: &TestEnv, binary: &str, name: &str, extra: &[(&str, String)]) -> Stage {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let builder = env
            .stage(binary)
            .arg("run")
            .env("METRICS_ADDR", &metrics_addr)
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let process = builder.spawn(name);
        Stage {
            process,
            builder,
            metrics_addr,
        }
    }

    /// Reads `/metrics`, or `None` when the endpoint does not answer.
    pub async fn metrics(&self) -> Option<String> {
        match http_get(&self.metrics_addr, "/metrics").await {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Reads `/healthz`.
    pub async fn health(&self) -> Option<(u16, String)> {
        http_get(&self.metrics_addr, "/healthz").await
    }
}
