//! The main job end to end: recorded real trades in, alerts out in MySQL and on the Java
//! WebSocket.
//!
//! Runs the real binaries as processes against the test's own database and subject prefix:
//! `devkit seed` creates the WETH task, `devkit feed-replay` serves the 1,000 recorded Binance
//! ETH/USDT trades over the Birdeye protocol, `devkit backend-stub` plays the Java side, and
//! `allocator`, `ingest`, `evaluate` and `notify` run as in production. The expected alerts
//! come from an independent brute-force model of the rules (`monitor_tests::recorded`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use monitor_core::messages::TaskType;
use monitor_core::rules::{parse_config, ConfigRow, Rules};
use monitor_tests::recorded::{expected_alerts, load_trades, ExpectedAlert};
use monitor_tests::{free_port, wait_until, workspace_dir, Process, TestEnv};
use serde_json::Value;
use sqlx::Row;

const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";

fn trades_csv() -> PathBuf {
    workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv")
}

/// Runs `devkit seed` and returns the task id it printed.
async fn seed(env: &TestEnv) -> u64 {
    let output = env
        .stage("devkit")
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

/// Reads the task's config back from MySQL and parses it the way the allocator does.
async fn task_rules(env: &TestEnv, task_id: u64) -> monitor_core::rules::TokenRules {
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
    match parse_config(&config, TaskType::Smart).expect("the seeded config is valid").rules {
        Rules::Token(rules) => rules,
        Rules::Block(_) => panic!("the seeded task is a token task"),
    }
}

/// Starts a devkit server on a free port and waits until it listens.
async fn start_devkit_server(env: &TestEnv, name: &str, args: &[&str]) -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let process = env
        .stage("devkit")
        .arg(name)
        .args(["--listen", address.as_str()])
        .args(args)
        .spawn(name);
    assert!(
        process.wait_for_log("listening on", Duration::from_secs(30)).await,
        "{name} did not start:\n{}",
        process.log()
    );
    (process, address)
}

/// One alert row of `monitor_alert_log_v2`.
#[derive(Debug)]
struct AlertRow {
    id: i64,
    alert_key: String,
    alert_type: String,
    target_value: String,
    notify_status: String,
    data: Value,
}

async fn alert_rows(env: &TestEnv, task_id: u64) -> Vec<AlertRow> {
    sqlx::query(
        "SELECT id, alert_key, alert_type, target_value, notify_status, \
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
        notify_status: row.get("notify_status"),
        data: serde_json::from_str(&row.get::<String, _>("alert_data")).expect("alert_data is JSON"),
    })
    .collect()
}

/// The `alert` messages the backend stub recorded, by alertId.
fn stub_alerts(path: &PathBuf) -> BTreeMap<i64, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["type"] == "alert")
        .filter_map(|message| Some((message["data"]["alertId"].as_i64()?, message)))
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_trades_produce_exact_alerts_in_mysql_and_on_websocket() {
    let env = TestEnv::new("main_job").await;
    let task_id = seed(&env).await;
    let rules = task_rules(&env, task_id).await;
    let trades = load_trades(&trades_csv()).expect("the recorded trades load");
    let expected = expected_alerts(&trades, &rules);
    for alert_type in ["large_trade", "cumulative_buy", "volume_change", "price_change"] {
        assert!(
            expected.iter().any(|a| a.alert_type.as_str() == alert_type),
            "the seeded config should make {alert_type} fire on the recorded trades"
        );
    }

    let csv = trades_csv();
    let (_feed, feed_address) = start_devkit_server(
        &env,
        "feed-replay",
        &[
            "--csv",
            csv.to_str().expect("utf-8 path"),
            "--token",
            WETH,
            "--symbol",
            "WETH",
            "--chain",
            "ethereum",
            "--speed",
            "0",
        ],
    )
    .await;
    let stub_file = env.work_dir().join("backend-stub.jsonl");
    let violations_file = env.work_dir().join("backend-stub-violations.jsonl");
    let (_stub, stub_address) = start_devkit_server(
        &env,
        "backend-stub",
        &[
            "--out",
            stub_file.to_str().expect("utf-8 path"),
            "--violations",
            violations_file.to_str().expect("utf-8 path"),
        ],
    )
    .await;

    let allocate = env
        .stage("allocator")
        .args(["allocate", "--task-id", &task_id.to_string()])
        .output("allocate", Duration::from_secs(60))
        .await;
    assert!(allocate.status.success(), "allocator allocate failed: {allocate:?}");

    let feed_url = format!("ws://{feed_address}");
    let ws_url = format!("ws://{stub_address}/websocket/monitor");
    let _allocator = env.stage("allocator").arg("run").spawn("allocator");
    let _evaluate = env.stage("evaluate").arg("run").spawn("evaluate");
    let _notify = env
        .stage("notify")
        .arg("run")
        .env("WS_URL", &ws_url)
        .spawn("notify");
    let _ingest = env
        .stage("ingest")
        .arg("run")
        .env("BIRDEYE_WS_URL", &feed_url)
        .env("BIRDEYE_API_KEY", "test-key")
        .spawn("ingest");

    // Wait until every expected alert is in MySQL and on the WebSocket (bounded).
    let complete = wait_until(Duration::from_secs(120), Duration::from_millis(250), || async {
        let rows = alert_rows(&env, task_id).await;
        let received = stub_alerts(&stub_file);
        rows.len() >= expected.len() && rows.iter().all(|row| received.contains_key(&row.id))
    })
    .await;
    // Give a late duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = alert_rows(&env, task_id).await;
    let received = stub_alerts(&stub_file);
    assert!(
        complete,
        "not every expected alert arrived: {} expected, {} rows, {} pushed",
        expected.len(),
        rows.len(),
        received.len()
    );

    assert_rows_match_expected(&rows, &expected, task_id);
    assert_stub_received_every_row(&rows, &received);
    monitor_tests::assert_no_stub_violations(&violations_file);
}

fn assert_rows_match_expected(rows: &[AlertRow], expected: &[ExpectedAlert], task_id: u64) {
    let by_key: BTreeMap<&str, &AlertRow> = rows.iter().map(|r| (r.alert_key.as_str(), r)).collect();
    assert_eq!(by_key.len(), rows.len(), "an alert_key appears twice");
    let expected_keys: Vec<String> = expected.iter().map(|e| e.id(task_id, WETH)).collect();
    let actual_keys: Vec<&str> = by_key.keys().copied().collect();
    let mut expected_sorted = expected_keys.clone();
    expected_sorted.sort();
    assert_eq!(actual_keys, expected_sorted, "alert keys differ from the model");

    for alert in expected {
        let row = by_key[alert.id(task_id, WETH).as_str()];
        assert_eq!(row.alert_type, alert.alert_type.as_str(), "type of {}", row.alert_key);
        assert_eq!(row.target_value, WETH, "target of {}", row.alert_key);
        let observed = row.data["observed"].as_f64().expect("alertData.observed is a number");
        let threshold = row.data["threshold"].as_f64().expect("alertData.threshold is a number");
        assert!(
            close(observed, alert.observed),
            "observed of {}: {observed} in MySQL, {} expected",
            row.alert_key,
            alert.observed
        );
        assert!(
            close(threshold, alert.threshold),
            "threshold of {}: {threshold} in MySQL, {} expected",
            row.alert_key,
            alert.threshold
        );
        assert_eq!(row.notify_status, "pushed", "notify_status of {}", row.alert_key);
    }
}

fn assert_stub_received_every_row(rows: &[AlertRow], received: &BTreeMap<i64, Value>) {
    for row in rows {
        let message = received
            .get(&row.id)
            .unwrap_or_else(|| panic!("the backend stub never received alert {}", row.id));
        let data = &message["data"];
        assert_eq!(data["alertType"], row.alert_type.as_str(), "alertType of {}", row.id);
        assert!(message["timestamp"].is_i64(), "top-level timestamp of {}", row.id);
        let alert_data = &data["alertData"];
        for field in ["tokenName", "tokenSymbol", "ca", "priceChange", "volume", "marketCap"] {
            assert!(
                alert_data.get(field).is_some(),
                "alertData.{field} missing in alert {}: {message}",
                row.id
            );
        }
        assert_eq!(alert_data["ca"], WETH, "alertData.ca of {}", row.id);
        assert_eq!(alert_data["tokenSymbol"], "WETH", "alertData.tokenSymbol of {}", row.id);
        assert!(
            alert_data["title"].as_str().is_some_and(|t| t.contains("WETH")),
            "alertData.title of {} names the token: {}",
            row.id,
            alert_data["title"]
        );
        assert_eq!(alert_data["observed"], row.data["observed"], "observed of {}", row.id);
        assert_eq!(alert_data["threshold"], row.data["threshold"], "threshold of {}", row.id);
    }
}
