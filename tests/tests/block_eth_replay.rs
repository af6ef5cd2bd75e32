//! A block task on recorded Ethereum mainnet blocks, end to end.
//!
//! `devkit chain-replay eth` serves blocks 17173049 and 17173050 (ethereum-etl's recording in
//! `data/`) as an EVM node: `newHeads` and `logs` notifications and block bodies. The real
//! allocator, ingest, evaluate and notify run against the test's database and subject prefix,
//! with `devkit backend-stub` as the Java side. The alerts expected in MySQL and on the
//! WebSocket are computed here from the data files alone. They are every block further than
//! the threshold from its parent, every transaction worth at least the USD threshold at the
//! configured ETH price, and every USDT and USDC `Transfer` log.

// Helpers panic on failure: a panic is the test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod block_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use block_support::{
    alert_rows, block_alert_id, by_key, insert_block_task, start_devkit_server, start_pipeline,
    stub_messages_of, wait_for_alerts, wait_for_heartbeat, AlertRow, ALERT_TIMEOUT,
};
use monitor_tests::{wait_until, workspace_dir, TestEnv};
use serde_json::{json, Value};

const USDT: &str = "0xdac17f958d2ee523a2206206994597c13d831ec7";
const USDC: &str = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
/// keccak-256 of `Transfer(address,address,uint256)`, as every ERC-20 `Transfer` log has it.
const TRANSFER_TOPIC: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
const ETH_PRICE_USD: u128 = 2_000;
const THRESHOLD_USD: u128 = 10_000;
const INTERVAL_THRESHOLD_SEC: u64 = 10;
/// The default `cooldown_sec` of a config that sets none.
const COOLDOWN_SEC: u64 = 300;

fn recording_dir() -> PathBuf {
    workspace_dir().join("data/eth-mainnet-blocks-17173049-17173050")
}

/// Reads the JSON objects of one ethereum-etl file, with each line's text for exact integers.
fn read_lines(name: &str) -> Vec<(String, Value)> {
    let path = recording_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            (
                line.to_owned(),
                serde_json::from_str(line).expect("recorded JSON line"),
            )
        })
        .collect()
}

/// Reads an integer field from a line's text, so values beyond 64 bits stay exact.
fn raw_integer(line: &str, field: &str) -> u128 {
    let key = format!("\"{field}\": ");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("{field} missing in {line}"))
        + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not an integer in {line}"))
}

/// An alert the recording must produce.
#[derive(Debug, Clone)]
struct Expected {
    alert_type: &'static str,
    subject: String,
    time_sec: u64,
    /// Raw token amount of a Transfer (from token_transfers.json), or the wei value of a
    /// transaction.
    amount: Option<u128>,
}

fn expected_alerts() -> Vec<Expected> {
    let mut expected = Vec::new();

    let mut blocks: Vec<(u64, u64)> = read_lines("blocks.json")
        .iter()
        .map(|(_, b)| {
            (
                b["number"].as_u64().unwrap(),
                b["timestamp"].as_u64().unwrap(),
            )
        })
        .collect();
    blocks.sort();
    for pair in blocks.windows(2) {
        let ((_, parent_time), (number, time)) = (pair[0], pair[1]);
        if time - parent_time > INTERVAL_THRESHOLD_SEC {
            expected.push(Expected {
                alert_type: "block_event",
                subject: number.to_string(),
                time_sec: time,
                amount: None,
            });
        }
    }

    for (line, tx) in read_lines("transactions.json") {
        let wei = raw_integer(&line, "value");
        if wei * ETH_PRICE_USD >= THRESHOLD_USD * 10u128.pow(18) {
            expected.push(Expected {
                alert_type: "large_transaction",
                subject: tx["hash"].as_str().unwrap().to_owned(),
                time_sec: tx["block_timestamp"].as_u64().unwrap(),
                amount: Some(wei),
            });
        }
    }

    let transfers: BTreeMap<(String, u64), u128> = read_lines("token_transfers.json")
        .into_iter()
        .map(|(line, t)| {
            let key = (
                t["transaction_hash"].as_str().unwrap().to_owned(),
                t["log_index"].as_u64().unwrap(),
            );
            (key, raw_integer(&line, "value"))
        })
        .collect();
    for (_, log) in read_lines("logs.json") {
        let address = log["address"].as_str().unwrap();
        let topic0 = log["topics"][0].as_str().unwrap_or_default();
        if (address == USDT || address == USDC) && topic0 == TRANSFER_TOPIC {
            let tx_hash = log["transaction_hash"].as_str().unwrap().to_owned();
            let log_index = log["log_index"].as_u64().unwrap();
            expected.push(Expected {
                alert_type: "contract_event",
                subject: format!("{tx_hash}:{log_index}"),
                time_sec: log["block_timestamp"].as_u64().unwrap(),
                amount: transfers.get(&(tx_hash, log_index)).copied(),
            });
        }
    }
    expected
}

fn events_config() -> Value {
    json!({
        "monitor_new_blocks": true,
        "block_interval_threshold": INTERVAL_THRESHOLD_SEC,
        "monitor_large_transactions": true,
        "transaction_amount_threshold": THRESHOLD_USD,
        "monitor_contract_events": true,
        "contract_addresses": [USDT, USDC],
        "event_signatures": ["Transfer(address,address,uint256)"]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_eth_blocks_produce_exact_alerts() {
    let env = TestEnv::new("block_eth_replay").await;
    let expected = expected_alerts();
    for alert_type in ["block_event", "large_transaction", "contract_event"] {
        assert!(
            expected.iter().any(|e| e.alert_type == alert_type),
            "the recording should produce a {alert_type} alert with this config"
        );
    }
    let task_id = insert_block_task(&env, "eth", &events_config()).await;
    let dir = recording_dir();
    let (_node, node_address) = start_devkit_server(
        &env,
        "chain-replay eth",
        &["--dir", dir.to_str().expect("utf-8 path"), "--speed", "0"],
    )
    .await;

    let node_url = format!("ws://{node_address}");
    let price = ETH_PRICE_USD.to_string();
    let pipeline = start_pipeline(
        &env,
        &[
            ("EVM_WS_URL_ETH", &node_url),
            ("NATIVE_PRICE_USD_ETH", &price),
        ],
    )
    .await;

    let ids: Vec<String> = expected
        .iter()
        .map(|e| block_alert_id(task_id, &e.subject, e.alert_type, e.time_sec, COOLDOWN_SEC))
        .collect();
    let rows = wait_for_alerts(&env, task_id, &ids).await;
    let mut wanted = ids.clone();
    wanted.sort();
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        wanted,
        "alert keys differ from the recording's; ingest log: {}",
        pipeline.ingest.log_path().display()
    );

    for (alert, id) in expected.iter().zip(&ids) {
        check_row(&rows[id], alert);
    }
    check_websocket(&pipeline.stub_file, &rows).await;
    let last_block = wait_for_heartbeat(&pipeline.stub_file, task_id, 17_173_050).await;
    assert_eq!(
        last_block,
        Some(17_173_050),
        "task_heartbeat carries the last block"
    );
}

fn check_row(row: &AlertRow, alert: &Expected) {
    let key = &row.alert_key;
    assert_eq!(row.alert_type, alert.alert_type, "type of {key}");
    assert_eq!(
        row.state, "confirmed",
        "state of {key}: no confirmations were asked"
    );
    assert_eq!(row.notify_status, "pushed", "notify_status of {key}");
    let extra = &row.data["extra"];
    match alert.alert_type {
        "large_transaction" => {
            let wei = alert.amount.expect("a transaction has a value");
            let native = wei as f64 / 1e18;
            let observed = row.data["observed"].as_f64().expect("observed");
            assert!(
                (observed - native * ETH_PRICE_USD as f64).abs() < 1e-6,
                "USD value of {key}: {observed}"
            );
            assert_eq!(
                row.data["threshold"],
                json!(THRESHOLD_USD as f64),
                "threshold of {key}"
            );
            assert_eq!(
                extra["price_source"], "setting NATIVE_PRICE_USD_ETH",
                "price source of {key}"
            );
            assert_eq!(
                extra["native_price_usd"],
                json!(ETH_PRICE_USD as f64),
                "price of {key}"
            );
            assert_eq!(row.target_value, alert.subject, "target of {key}");
        }
        "contract_event" => {
            let amount = alert
                .amount
                .expect("every USDT and USDC Transfer is in token_transfers.json");
            assert_eq!(
                extra["decoded"]["event"], "Transfer",
                "decoded event of {key}"
            );
            assert_eq!(
                extra["decoded"]["amount"],
                amount.to_string(),
                "decoded amount of {key}"
            );
            assert_eq!(
                extra["signature"], "Transfer(address,address,uint256)",
                "signature of {key}"
            );
            assert!(
                row.target_value == USDT || row.target_value == USDC,
                "contract of {key}"
            );
        }
        "block_event" => {
            assert_eq!(row.data["observed"], json!(12.0), "interval of {key}");
            assert_eq!(
                row.data["threshold"],
                json!(INTERVAL_THRESHOLD_SEC as f64),
                "threshold of {key}"
            );
            assert_eq!(
                extra["block_number"],
                json!(17_173_050u64),
                "block of {key}"
            );
        }
        other => panic!("unexpected alert type {other}"),
    }
}

async fn check_websocket(stub_file: &PathBuf, rows: &BTreeMap<String, AlertRow>) {
    let pushed_by_row = || -> BTreeMap<i64, Value> {
        stub_messages_of(stub_file, "alert")
            .into_iter()
            .filter_map(|m| Some((m["data"]["alertId"].as_i64()?, m)))
            .collect()
    };
    // Notify marks a row pushed once the message is on its socket, and the stub records the
    // message in its file a moment later.
    wait_until(ALERT_TIMEOUT, Duration::from_millis(250), || async {
        let pushed = pushed_by_row();
        rows.values().all(|row| pushed.contains_key(&row.id))
    })
    .await;
    let pushed = pushed_by_row();
    for row in rows.values() {
        let message = pushed
            .get(&row.id)
            .unwrap_or_else(|| panic!("the backend stub never received alert {}", row.alert_key));
        assert_eq!(
            message["data"]["alertType"],
            row.alert_type.as_str(),
            "alertType of {}",
            row.alert_key
        );
        assert_eq!(
            message["data"]["alertData"]["alertKey"],
            row.alert_key.as_str()
        );
        assert_eq!(message["data"]["alertData"]["state"], "confirmed");
        assert!(
            message["data"]["alertData"]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("ETH ")),
            "title of {} names the chain: {}",
            row.alert_key,
            message["data"]["alertData"]["title"]
        );
    }
}

/// Lowest and highest price of the recorded Binance ETH/USDT trades that `devkit
/// feed-replay` sends as WETH candles.
fn recorded_price_range() -> (f64, f64) {
    let path = workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv");
    let text = std::fs::read_to_string(&path).expect("the recorded trades exist");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = header.iter().position(|h| *h == "price").unwrap();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').nth(column).unwrap().parse::<f64>().unwrap())
        .fold((f64::MAX, f64::MIN), |(low, high), p| {
            (low.min(p), high.max(p))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_eth_blocks_priced_from_birdeye_feed() {
    let env = TestEnv::new("block_eth_feed_price").await;
    let (low, high) = recorded_price_range();
    let large_at = |price: f64| -> Vec<String> {
        read_lines("transactions.json")
            .iter()
            .filter(|(line, _)| {
                raw_integer(line, "value") as f64 / 1e18 * price >= THRESHOLD_USD as f64
            })
            .map(|(_, tx)| tx["hash"].as_str().unwrap().to_owned())
            .collect()
    };
    let large = large_at(low);
    assert_eq!(
        large,
        large_at(high),
        "the threshold gives the same transactions at any recorded price"
    );
    let rules =
        json!({"monitor_large_transactions": true, "transaction_amount_threshold": THRESHOLD_USD});
    let task_id = insert_block_task(&env, "eth", &rules).await;

    let dir = recording_dir();
    let (_node, node_address) = start_devkit_server(
        &env,
        "chain-replay eth",
        &["--dir", dir.to_str().unwrap(), "--speed", "0"],
    )
    .await;
    let trades = workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv");
    let (_feed, feed_address) = start_devkit_server(
        &env,
        "feed-replay",
        &[
            "--csv",
            trades.to_str().unwrap(),
            "--chain",
            "ethereum",
            "--speed",
            "0",
        ],
    )
    .await;
    let node_url = format!("ws://{node_address}");
    let feed_url = format!("ws://{feed_address}");
    let _pipeline = start_pipeline(
        &env,
        &[
            ("EVM_WS_URL_ETH", node_url.as_str()),
            ("BIRDEYE_WS_URL", feed_url.as_str()),
            ("BIRDEYE_API_KEY", "test-key"),
            // No request may leave the machine: the REST API is polled only for token tasks.
            ("BIRDEYE_API_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;

    let times: BTreeMap<String, u64> = read_lines("transactions.json")
        .into_iter()
        .map(|(_, tx)| {
            (
                tx["hash"].as_str().unwrap().to_owned(),
                tx["block_timestamp"].as_u64().unwrap(),
            )
        })
        .collect();
    let ids: Vec<String> = large
        .iter()
        .map(|hash| {
            block_alert_id(
                task_id,
                hash,
                "large_transaction",
                times[hash],
                COOLDOWN_SEC,
            )
        })
        .collect();
    let rows = wait_for_alerts(&env, task_id, &ids).await;
    let mut wanted = ids.clone();
    wanted.sort();
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        wanted,
        "large transactions at the feed's price"
    );
    for row in rows.values() {
        let extra = &row.data["extra"];
        let price = extra["native_price_usd"].as_f64().unwrap();
        let native = extra["value_native"].as_f64().unwrap();
        let observed = row.data["observed"].as_f64().unwrap();
        assert_eq!(
            extra["price_source"], "birdeye",
            "price source of {}",
            row.alert_key
        );
        assert!(
            (low..=high).contains(&price),
            "price {price} of {} is a recorded WETH price",
            row.alert_key
        );
        assert!(
            (observed - native * price).abs() < 1e-6,
            "USD value of {} is value times price",
            row.alert_key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_logs_retract_their_alerts() {
    let env = TestEnv::new("block_eth_removed_logs").await;
    let transfers: Vec<Expected> = expected_alerts()
        .into_iter()
        .filter(|e| e.alert_type == "contract_event")
        .collect();
    let last_block_time = read_lines("blocks.json")
        .iter()
        .map(|(_, b)| b["timestamp"].as_u64().unwrap())
        .max()
        .unwrap();
    let rules = json!({
        "monitor_contract_events": true,
        "contract_addresses": [USDT, USDC],
        "event_signatures": ["Transfer(address,address,uint256)"]
    });
    let task_id = insert_block_task(&env, "eth", &rules).await;
    let dir = recording_dir();
    let (_node, node_address) = start_devkit_server(
        &env,
        "chain-replay eth",
        &[
            "--dir",
            dir.to_str().unwrap(),
            "--speed",
            "0",
            "--remove-last-block",
        ],
    )
    .await;
    let node_url = format!("ws://{node_address}");
    let pipeline = start_pipeline(&env, &[("EVM_WS_URL_ETH", node_url.as_str())]).await;

    let ids: Vec<String> = transfers
        .iter()
        .map(|e| block_alert_id(task_id, &e.subject, e.alert_type, e.time_sec, COOLDOWN_SEC))
        .collect();
    let removed = |alert: &Expected| alert.time_sec == last_block_time;
    assert!(
        transfers.iter().any(removed) && !transfers.iter().all(removed),
        "both blocks have transfers"
    );
    let settled = wait_until(ALERT_TIMEOUT, Duration::from_millis(250), || async {
        let rows = by_key(&alert_rows(&env, task_id).await);
        transfers.iter().zip(&ids).all(|(alert, id)| {
            let state = if removed(alert) {
                "retracted"
            } else {
                "confirmed"
            };
            rows.get(id)
                .is_some_and(|r| r.state == state && r.notify_status == "pushed")
        })
    })
    .await;
    let rows = by_key(&alert_rows(&env, task_id).await);
    assert!(settled, "not every alert reached its state: {rows:?}");
    assert_eq!(
        rows.len(),
        ids.len(),
        "one row per Transfer, retracted or not"
    );

    let retractions_of = |row_id: i64| {
        stub_messages_of(&pipeline.stub_file, "alert_update")
            .iter()
            .filter(|m| m["data"]["alertId"] == row_id && m["data"]["state"] == "retracted")
            .count()
    };
    let retracted_rows: Vec<i64> = transfers
        .iter()
        .zip(&ids)
        .filter(|(alert, _)| removed(alert))
        .map(|(_, id)| rows[id].id)
        .collect();
    let pushed = wait_until(ALERT_TIMEOUT, Duration::from_millis(250), || async {
        retracted_rows
            .iter()
            .all(|row_id| retractions_of(*row_id) >= 1)
    })
    .await;
    assert!(
        pushed,
        "every retraction reached the Java side as alert_update"
    );
    for (alert, id) in transfers.iter().zip(&ids) {
        let expected = usize::from(removed(alert));
        assert_eq!(
            retractions_of(rows[id].id),
            expected,
            "alert_update retracted of {id}"
        );
    }
}
