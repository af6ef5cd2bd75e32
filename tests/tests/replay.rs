//! `evaluate replay` end to end: record the real trades through the live pipeline, then judge
//! the stored frames again with the live rules, stricter rules and looser rules.
//!
//! The live run is the main job's: `devkit seed` creates the WETH task, `devkit feed-replay`
//! serves the 1,000 recorded Binance ETH/USDT trades over the Birdeye protocol, and
//! `allocator`, `ingest` and `evaluate` run as processes. Its alerts are read from the alerts
//! stream. Then the `evaluate replay` binary runs three times on the stored frames. The
//! expected alerts of each config come from the independent brute-force model
//! (`monitor_tests::recorded`), never from the evaluate code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::{Alert, EventFrame, EventKind, TaskType};
use monitor_core::rules::{parse_config, ConfigRow, TokenRules};
use monitor_tests::recorded::{expected_alerts, load_trades, RecordedTrade};
use monitor_tests::{free_port, wait_until, workspace_dir, Process, TestEnv};
use serde_json::{json, Value};
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

/// Reads the seeded config row of the task back from MySQL.
async fn config_row(env: &TestEnv, task_id: u64) -> ConfigRow {
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
    ConfigRow {
        config_id: row.get::<i64, _>("id") as u64,
        version: row.get::<i64, _>("version") as u64,
        name: row.get("config_name"),
        min_transaction_usd: row.get("min_transaction_usd"),
        cumulative_min_amount_usd: row.get("cumulative_min_amount_usd"),
        time_interval: row.get::<Option<i32>, _>("time_interval").map(i64::from),
        top_holders_threshold: row.get("top_holders_threshold"),
        events_config: row.get("events_config"),
        trigger_logic: row.get("trigger_logic"),
    }
}

fn token_rules(row: &ConfigRow) -> TokenRules {
    let parsed = parse_config(row, TaskType::Smart).expect("the config is valid");
    parsed.rules.as_token().expect("token rules").clone()
}

/// Builds a rules file for `evaluate replay --config`: the live rules with every threshold
/// multiplied by `factor`, on the same windows (the stored snapshots hold only those).
fn scaled_rules_file(live: &TokenRules, row: &ConfigRow, factor: f64) -> Value {
    let volume = live.volume.as_ref().expect("the seeded config has volume");
    let price = live
        .price_change
        .as_ref()
        .expect("the seeded config has price_change");
    let scale = |value: Option<f64>| value.map(|v| v * factor);
    json!({
        "events_config": {
            "large_trade": {"side": "any"},
            "cumulative_buy": {},
            "volume": {"window_sec": volume.window_sec, "min_volume_usd": volume.min_volume_usd * factor},
            "price_change": {
                "window_sec": price.window_sec,
                "rise_pct": scale(price.rise_pct),
                "fall_pct": scale(price.fall_pct),
            },
            "cooldown_sec": live.cooldown_sec,
        },
        "min_transaction_usd": scale(row.min_transaction_usd),
        "cumulative_min_amount_usd": scale(row.cumulative_min_amount_usd),
        "time_interval": row.time_interval,
        "trigger_logic": "OR",
    })
}

/// Parses the rules of a file with the core parser, exactly as a config row is parsed.
fn rules_of_file(file: &Value) -> TokenRules {
    let number = |key: &str| file[key].as_f64();
    token_rules(&ConfigRow {
        min_transaction_usd: number("min_transaction_usd"),
        cumulative_min_amount_usd: number("cumulative_min_amount_usd"),
        time_interval: file["time_interval"].as_i64(),
        events_config: Some(file["events_config"].to_string()),
        trigger_logic: Some("OR".into()),
        ..ConfigRow::default()
    })
}

fn expected_ids(trades: &[RecordedTrade], rules: &TokenRules, task_id: u64) -> BTreeSet<String> {
    expected_alerts(trades, rules)
        .iter()
        .map(|alert| alert.id(task_id, WETH))
        .collect()
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
        process
            .wait_for_log("listening on", Duration::from_secs(30))
            .await,
        "{name} did not start:\n{}",
        process.log()
    );
    (process, address)
}

/// Runs the live pipeline on the recorded trades; returns the processes, which stop when
/// dropped.
async fn start_live_pipeline(env: &TestEnv, task_id: u64) -> Vec<Process> {
    let csv = trades_csv();
    let (feed, feed_address) = start_devkit_server(
        env,
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
    let allocate = env
        .stage("allocator")
        .args(["allocate", "--task-id", &task_id.to_string()])
        .output("allocate", Duration::from_secs(60))
        .await;
    assert!(
        allocate.status.success(),
        "allocator allocate failed: {allocate:?}"
    );

    let allocator = env.stage("allocator").arg("run").spawn("allocator");
    let evaluate = env.stage("evaluate").arg("run").spawn("evaluate");
    let ingest = env
        .stage("ingest")
        .arg("run")
        .env("BIRDEYE_WS_URL", format!("ws://{feed_address}"))
        .env("BIRDEYE_API_KEY", "test-key")
        .spawn("ingest");
    vec![feed, allocator, evaluate, ingest]
}

/// Reads every message of a stream, in order.
async fn stream_payloads(js: &jetstream::Context, stream_name: &str) -> Vec<bytes::Bytes> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .unwrap_or_else(|e| panic!("stream {stream_name} exists: {e}"));
    let state = stream.info().await.expect("stream info").state.clone();
    let mut payloads = Vec::new();
    if state.messages == 0 {
        return payloads;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("an ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(message) = messages.next().await {
        let message = message.expect("a message");
        let info = message.info().expect("message info");
        payloads.push(message.payload.clone());
        if info.stream_sequence >= state.last_sequence {
            break;
        }
    }
    payloads
}

/// Counts the trade and price events of the stored frames.
async fn stored_event_counts(js: &jetstream::Context, env: &TestEnv) -> (usize, usize) {
    let mut trades = 0;
    let mut prices = 0;
    for payload in stream_payloads(js, &env.subjects().events_stream()).await {
        let frame: EventFrame = codec::decode(&payload).expect("ingest publishes readable frames");
        for event in frame.events {
            match event.kind {
                EventKind::Trade(_) => trades += 1,
                EventKind::Price(_) => prices += 1,
                _ => {}
            }
        }
    }
    (trades, prices)
}

async fn live_alert_ids(js: &jetstream::Context, env: &TestEnv) -> BTreeSet<String> {
    stream_payloads(js, &env.subjects().alerts_stream())
        .await
        .iter()
        .map(|payload| {
            codec::decode::<Alert>(payload)
                .expect("a readable alert")
                .id
        })
        .collect()
}

/// Runs `evaluate replay --json` with `extra` arguments and returns the ids of the alerts it
/// printed and its totals.
async fn replay(
    env: &TestEnv,
    task_id: u64,
    config: Option<&Path>,
    extra: &[&str],
    name: &str,
) -> (BTreeSet<String>, Value) {
    let mut command = env
        .stage("evaluate")
        .args([
            "replay",
            "--task",
            &task_id.to_string(),
            "--since",
            "1h",
            "--json",
        ])
        .args(extra);
    if let Some(path) = config {
        command = command.arg("--config").arg(path);
    }
    let output = command.output(name, Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );

    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} printed {line:?}: {e}"))
        })
        .collect();
    let ids: BTreeSet<String> = lines
        .iter()
        .filter(|line| line["type"] == "alert")
        .map(|line| line["id"].as_str().expect("an alert id").to_owned())
        .collect();
    let totals = lines
        .iter()
        .find(|line| line["type"] == "totals")
        .cloned()
        .unwrap_or_else(|| panic!("{name} printed no totals:\n{stdout}"));
    (ids, totals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_matches_live_run_and_follows_thresholds() {
    let env = TestEnv::new("replay").await;
    let task_id = seed(&env).await;
    let row = config_row(&env, task_id).await;
    let live_rules = token_rules(&row);
    let trades = load_trades(&trades_csv()).expect("the recorded trades load");
    let live_expected = expected_ids(&trades, &live_rules, task_id);

    let pipeline = start_live_pipeline(&env, task_id).await;
    let js = env.jetstream().await;
    // The live run is complete once every trade and every candle is stored and the live
    // alerts are those of the model (bounded wait).
    let complete = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let counts = stored_event_counts(&js, &env).await;
            counts == (trades.len(), trades.len())
                && live_alert_ids(&js, &env).await == live_expected
        },
    )
    .await;
    let live = live_alert_ids(&js, &env).await;
    assert!(
        complete,
        "the live run did not complete: events {:?} of {} trades, {} of {} alerts",
        stored_event_counts(&js, &env).await,
        trades.len(),
        live.len(),
        live_expected.len()
    );
    drop(pipeline);

    // Same rules as live: the same id set.
    let (same, totals) = replay(&env, task_id, None, &[], "replay-live-rules").await;
    assert_eq!(same, live, "replay with the live rules");
    assert_eq!(totals["alerts"].as_u64(), Some(live.len() as u64));
    assert_eq!(totals["events"].as_u64(), Some(2 * trades.len() as u64));
    assert_eq!(totals["undecodable_frames"].as_u64(), Some(0));
    assert_eq!(
        totals["published"].as_u64(),
        Some(0),
        "nothing is published without --publish"
    );

    // Stricter thresholds: the model's alerts, no more than live and all of them live too.
    let stricter = scaled_rules_file(&live_rules, &row, 2.0);
    let stricter_path = env.work_dir().join("stricter.json");
    std::fs::write(&stricter_path, stricter.to_string()).expect("the rules file is written");
    let (strict, _) = replay(&env, task_id, Some(&stricter_path), &[], "replay-stricter").await;
    assert_eq!(
        strict,
        expected_ids(&trades, &rules_of_file(&stricter), task_id)
    );
    assert!(
        strict.len() <= live.len(),
        "{} stricter alerts, {} live",
        strict.len(),
        live.len()
    );
    assert!(
        strict.is_subset(&live),
        "stricter alerts not raised live: {:?}",
        strict.difference(&live)
    );

    // Looser thresholds: the model's alerts, at least as many as live, a superset of them.
    let looser = scaled_rules_file(&live_rules, &row, 0.5);
    let looser_path = env.work_dir().join("looser.json");
    std::fs::write(&looser_path, looser.to_string()).expect("the rules file is written");
    let (loose, _) = replay(&env, task_id, Some(&looser_path), &[], "replay-looser").await;
    assert_eq!(
        loose,
        expected_ids(&trades, &rules_of_file(&looser), task_id)
    );
    assert!(
        loose.len() >= live.len(),
        "{} looser alerts, {} live",
        loose.len(),
        live.len()
    );
    assert!(
        loose.is_superset(&live),
        "live alerts missing: {:?}",
        live.difference(&loose)
    );
    assert!(
        strict.len() < loose.len(),
        "the thresholds should matter on the recorded trades: {} stricter, {} looser",
        strict.len(),
        loose.len()
    );

    // With --publish the looser alerts go to the alerts stream; the ids stored live are
    // dropped as repeats, so only the new ones are stored.
    let (published_ids, totals) = replay(
        &env,
        task_id,
        Some(&looser_path),
        &["--publish"],
        "replay-publish",
    )
    .await;
    assert_eq!(published_ids, loose);
    let new_ids = loose.difference(&live).count() as u64;
    assert_eq!(totals["published"].as_u64(), Some(new_ids));
    assert_eq!(
        live_alert_ids(&js, &env).await,
        loose,
        "the alerts stream after --publish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rejects_invalid_rules_file_with_the_field() {
    let env = TestEnv::new("replay_invalid").await;
    env.topology().await;
    let path = env.work_dir().join("bad.json");
    std::fs::create_dir_all(env.work_dir()).expect("the work directory is created");
    std::fs::write(
        &path,
        r#"{"events_config": {"large_trade": true}, "min_transaction_usd": -5}"#,
    )
    .expect("the rules file is written");

    let output = env
        .stage("evaluate")
        .args([
            "replay", "--task", "1", "--since", "1h", "--chain", "eth", "--config",
        ])
        .arg(&path)
        .output("replay-invalid", Duration::from_secs(60))
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "an invalid rules file must fail the replay"
    );
    assert!(
        stderr.contains("min_transaction_usd must be > 0, got -5"),
        "the error names field and value: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing is printed on stdout: {:?}",
        output.stdout
    );
}
