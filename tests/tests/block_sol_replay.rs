//! A block task on the recorded Solana block of slot 110130000, end to end.
//!
//! `devkit chain-replay sol` serves the recorded `getBlock` response (`data/`) as a Solana
//! node: slot notifications for the recorded slot and two slots after it (which have no
//! block), program logs by `mentions`, and `getBlock` over HTTP. The real pipeline runs as in
//! production. The expected alerts are computed here from the data file alone:
//! - a `contract_event` for every transaction whose account keys include the SPL Token
//!   program (the `mentions` rule);
//! - a `large_transaction` for every successful transaction whose balance gains reach the
//!   USD threshold at the configured SOL price;
//! - a `block_event` for each of the two later slots, announced 3 s apart with a 1 s
//!   threshold.

// Helpers panic on failure: a panic is the test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod block_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use block_support::{
    alert_rows, insert_block_task, start_devkit_server, start_pipeline, wait_for_heartbeat,
    AlertRow, ALERT_TIMEOUT,
};
use monitor_tests::{wait_until, workspace_dir, TestEnv};
use serde_json::{json, Value};

const SLOT: u64 = 110_130_000;
const TOKEN_PROGRAM: &str = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA";
const SOL_PRICE_USD: u64 = 200;
const THRESHOLD_USD: u64 = 10_000;
const COOLDOWN_SEC: u64 = 300;
const LAMPORTS_PER_SOL: u64 = 1_000_000_000;

fn block_file() -> PathBuf {
    workspace_dir().join("data/sol-mainnet-slot-110130000/getBlock-110130000.json.gz")
}

fn recorded_block() -> Value {
    let file = std::fs::File::open(block_file()).expect("the recorded block exists");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("the recorded block is gzipped JSON");
    let response: Value = serde_json::from_str(&text).expect("the recorded block is JSON");
    response["result"].clone()
}

fn account_keys(tx: &Value) -> Vec<String> {
    tx["transaction"]["message"]["accountKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["pubkey"].as_str().unwrap().to_owned())
        .collect()
}

/// Signature and log lines of every transaction that mentions the SPL Token program.
fn token_program_transactions(block: &Value) -> BTreeMap<String, Vec<Value>> {
    block["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|tx| account_keys(tx).iter().any(|k| k == TOKEN_PROGRAM))
        .map(|tx| {
            let signature = tx["transaction"]["signatures"][0]
                .as_str()
                .unwrap()
                .to_owned();
            let logs = tx["meta"]["logMessages"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (signature, logs)
        })
        .collect()
}

/// Signature and lamports gained of every successful transaction whose gains reach the
/// threshold at the SOL price.
fn large_transfers(block: &Value) -> BTreeMap<String, u64> {
    block["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|tx| tx["meta"]["err"].is_null())
        .filter_map(|tx| {
            let pre = tx["meta"]["preBalances"].as_array().unwrap();
            let post = tx["meta"]["postBalances"].as_array().unwrap();
            let gained: u64 = pre
                .iter()
                .zip(post)
                .map(|(a, b)| b.as_u64().unwrap().saturating_sub(a.as_u64().unwrap()))
                .sum();
            let large = u128::from(gained) * u128::from(SOL_PRICE_USD)
                >= u128::from(THRESHOLD_USD) * u128::from(LAMPORTS_PER_SOL);
            let signature = tx["transaction"]["signatures"][0]
                .as_str()
                .unwrap()
                .to_owned();
            large.then_some((signature, gained))
        })
        .collect()
}

/// Splits an alert key `<task>:<subject>:<type>:<bucket>` into subject and type.
fn subject_and_type(key: &str) -> (String, String) {
    let parts: Vec<&str> = key.split(':').collect();
    assert_eq!(parts.len(), 4, "alert key {key} has four parts");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_sol_block_produces_exact_alerts() {
    let env = TestEnv::new("block_sol_replay").await;
    let block = recorded_block();
    let token_transactions = token_program_transactions(&block);
    let transfers = large_transfers(&block);
    assert!(
        !token_transactions.is_empty() && !transfers.is_empty(),
        "the recording exercises both rules"
    );
    let block_time = block["blockTime"].as_u64().unwrap();

    let rules = json!({
        "monitor_new_blocks": true,
        "block_interval_threshold": 1,
        "monitor_large_transactions": true,
        "transaction_amount_threshold": THRESHOLD_USD,
        "chain_specific": {"sol": {"monitor_program_logs": true, "program_ids": [TOKEN_PROGRAM]}}
    });
    let task_id = insert_block_task(&env, "sol", &rules).await;
    let file = block_file();
    let (_node, node_address) = start_devkit_server(
        &env,
        "chain-replay sol",
        &[
            "--file",
            file.to_str().expect("utf-8 path"),
            "--slots",
            "3",
            "--slot-interval",
            "3",
        ],
    )
    .await;
    let ws_url = format!("ws://{node_address}");
    let rpc_url = format!("http://{node_address}");
    let price = SOL_PRICE_USD.to_string();
    let pipeline = start_pipeline(
        &env,
        &[
            ("SOLANA_WS_URL", &ws_url),
            ("SOLANA_RPC_URL", &rpc_url),
            ("NATIVE_PRICE_USD_SOL", &price),
        ],
    )
    .await;

    let expected: BTreeSet<(String, String)> = token_transactions
        .keys()
        .map(|s| (s.clone(), "contract_event".to_owned()))
        .chain(
            transfers
                .keys()
                .map(|s| (s.clone(), "large_transaction".to_owned())),
        )
        .chain([SLOT + 1, SLOT + 2].map(|slot| (slot.to_string(), "block_event".to_owned())))
        .collect();
    let complete = wait_until(ALERT_TIMEOUT, Duration::from_millis(250), || async {
        let rows = alert_rows(&env, task_id).await;
        rows.len() >= expected.len() && rows.iter().all(|r| r.notify_status == "pushed")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = alert_rows(&env, task_id).await;
    assert!(
        complete,
        "{} of {} alerts arrived; ingest log: {}",
        rows.len(),
        expected.len(),
        pipeline.ingest.log_path().display()
    );

    let actual: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| subject_and_type(&r.alert_key))
        .collect();
    assert_eq!(
        actual.len(),
        rows.len(),
        "one alert per transaction or slot"
    );
    assert_eq!(actual, expected, "alerts differ from the recording's");
    for row in &rows {
        check_row(row, &token_transactions, &transfers, block_time);
    }
    let last_slot = wait_for_heartbeat(&pipeline.stub_file, task_id, SLOT + 2).await;
    assert_eq!(
        last_slot,
        Some(SLOT + 2),
        "task_heartbeat carries the last slot"
    );
}

fn check_row(
    row: &AlertRow,
    token_transactions: &BTreeMap<String, Vec<Value>>,
    transfers: &BTreeMap<String, u64>,
    block_time: u64,
) {
    let key = &row.alert_key;
    let (subject, alert_type) = subject_and_type(key);
    let extra = &row.data["extra"];
    assert_eq!(row.state, "confirmed", "state of {key}");
    assert_eq!(row.notify_status, "pushed", "notify_status of {key}");
    match alert_type.as_str() {
        "contract_event" => {
            assert_eq!(row.target_value, TOKEN_PROGRAM, "program of {key}");
            assert_eq!(extra["slot"], json!(SLOT), "slot of {key}");
            assert_eq!(
                extra["logs"],
                json!(token_transactions[&subject]),
                "log lines of {key}"
            );
        }
        "large_transaction" => {
            let lamports = transfers[&subject];
            let sol = lamports as f64 / LAMPORTS_PER_SOL as f64;
            assert_eq!(extra["value_native"], json!(sol), "SOL of {key}");
            assert_eq!(
                row.data["observed"],
                json!(sol * SOL_PRICE_USD as f64),
                "USD value of {key}"
            );
            assert_eq!(
                extra["price_source"], "setting NATIVE_PRICE_USD_SOL",
                "price source of {key}"
            );
            let bucket = block_time / COOLDOWN_SEC;
            assert!(
                key.ends_with(&format!(":{bucket}")),
                "{key} is bucketed by the block time"
            );
        }
        "block_event" => {
            let interval = row.data["observed"].as_f64().unwrap();
            assert!(interval > 1.0, "interval of {key}: {interval}");
        }
        other => panic!("unexpected alert type {other} in {key}"),
    }
}
