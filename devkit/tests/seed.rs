//! `devkit seed` against MariaDB, each test on its own database from `monitor_tests::TestEnv`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

use sqlx::Row;

use monitor_core::messages::{Chain, TaskType};
use monitor_core::rules::{parse_config, ConfigRow};
use monitor_core::settings::DbSettings;
use monitor_devkit::feed_replay::{WETH_ADDRESS, WETH_USDT_POOL};
use monitor_devkit::seed::{seed, SeedSettings, WETH_MARKET_CAP};
use monitor_tests::TestEnv;

fn seed_settings(db: DbSettings, task_name: &str) -> SeedSettings {
    SeedSettings {
        db,
        task_name: task_name.to_owned(),
        chain: Chain::Eth,
        token: WETH_ADDRESS.to_uppercase().replace("0X", "0x"),
        token_name: "Wrapped Ether".into(),
        token_symbol: "WETH".into(),
        market_cap: WETH_MARKET_CAP,
        pair: WETH_USDT_POOL.into(),
    }
}

#[tokio::test]
async fn seed_creates_linked_task_config_and_target() {
    let env = TestEnv::new("devkit_seed_rows").await;
    let (db, pool) = (env.db_settings(), env.pool());

    let seeded = seed(&seed_settings(db.clone(), "demo task")).await.unwrap();

    let task = sqlx::query("SELECT task_name, task_type, chain_type, status, del_flag FROM monitor_task_v2 WHERE id = ?")
        .bind(seeded.task_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(task.get::<String, _>("task_name"), "demo task");
    assert_eq!(task.get::<String, _>("task_type"), "smart");
    assert_eq!(task.get::<String, _>("chain_type"), "eth");
    assert_eq!(task.get::<i8, _>("status"), 1);
    assert_eq!(task.get::<i8, _>("del_flag"), 0);

    let link = sqlx::query("SELECT config_id FROM monitor_task_config_v2 WHERE task_id = ?")
        .bind(seeded.task_id)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(link.len(), 1);
    assert_eq!(link[0].get::<i64, _>("config_id") as u64, seeded.config_id);

    let targets = sqlx::query(
        "SELECT id, target_type, target_value, token_name, token_symbol, CAST(market_cap AS DOUBLE) AS market_cap, \
         pair_address, status, batch_id FROM monitor_task_target_v2 WHERE task_id = ?",
    )
    .bind(seeded.task_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(targets.len(), 1);
    let target = &targets[0];
    assert_eq!(target.get::<i64, _>("id") as u64, seeded.target_id);
    assert_eq!(target.get::<String, _>("target_type"), "token");
    assert_eq!(target.get::<String, _>("target_value"), WETH_ADDRESS);
    assert_eq!(target.get::<String, _>("token_name"), "Wrapped Ether");
    assert_eq!(target.get::<String, _>("token_symbol"), "WETH");
    assert_eq!(target.get::<f64, _>("market_cap"), WETH_MARKET_CAP);
    assert_eq!(target.get::<String, _>("pair_address"), WETH_USDT_POOL);
    assert_eq!(target.get::<i8, _>("status"), 1);
    assert_eq!(target.get::<Option<i32>, _>("batch_id"), None);
}

#[tokio::test]
async fn seeded_config_reads_back_as_four_rules() {
    let env = TestEnv::new("devkit_seed_config").await;
    let (db, pool) = (env.db_settings(), env.pool());

    let seeded = seed(&seed_settings(db.clone(), "demo")).await.unwrap();

    let row = sqlx::query(
        "SELECT id, version, config_name, CAST(min_transaction_usd AS DOUBLE) AS min_transaction_usd, \
         CAST(cumulative_min_amount_usd AS DOUBLE) AS cumulative_min_amount_usd, time_interval, \
         events_config, trigger_logic, status, del_flag FROM monitor_config_v2 WHERE id = ?",
    )
    .bind(seeded.config_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(row.get::<i8, _>("status"), 1);
    assert_eq!(row.get::<i8, _>("del_flag"), 0);
    let config = ConfigRow {
        config_id: row.get::<i64, _>("id") as u64,
        version: row.get::<i64, _>("version") as u64,
        name: row.get("config_name"),
        min_transaction_usd: row.get("min_transaction_usd"),
        cumulative_min_amount_usd: row.get("cumulative_min_amount_usd"),
        time_interval: row.get::<Option<i32>, _>("time_interval").map(i64::from),
        top_holders_threshold: None,
        events_config: row.get("events_config"),
        trigger_logic: row.get("trigger_logic"),
    };

    let parsed = parse_config(&config, TaskType::Smart).unwrap();
    let rules = parsed.rules.as_token().unwrap();
    assert_eq!(rules.count(), 4);
    assert_eq!(rules.large_trade.as_ref().unwrap().min_usd, 100_000.0);
    assert_eq!(rules.cumulative_buy.as_ref().unwrap().min_usd, 1_000_000.0);
    assert_eq!(rules.cumulative_buy.as_ref().unwrap().window_sec, 60);
    assert_eq!(rules.volume.as_ref().unwrap().window_sec, 60);
    assert_eq!(rules.price_change.as_ref().unwrap().window_sec, 60);
    assert_eq!(rules.cooldown_sec, 60);
}

#[tokio::test]
async fn second_seed_creates_second_task() {
    let env = TestEnv::new("devkit_seed_twice").await;
    let (db, pool) = (env.db_settings(), env.pool());

    let first = seed(&seed_settings(db.clone(), "demo")).await.unwrap();
    let second = seed(&seed_settings(db.clone(), "demo")).await.unwrap();

    assert_ne!(first.task_id, second.task_id);
    assert_ne!(first.config_id, second.config_id);
    let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM monitor_task_v2")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(tasks, 2);
}

#[tokio::test]
async fn binary_prints_task_id() {
    let env = TestEnv::new("devkit_seed_binary").await;
    let (db, pool) = (env.db_settings(), env.pool());

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_devkit"))
        .args([
            "seed",
            "--db-host",
            &db.host,
            "--db-port",
            &db.port.to_string(),
        ])
        .args([
            "--db-user",
            &db.user,
            "--db-name",
            &db.name,
            "--task-name",
            "from the binary",
        ])
        .env("DB_PASSWORD", db.password.expose())
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "devkit seed failed: {output:?}");

    let stdout = String::from_utf8(output.stdout).unwrap();
    let first_line = stdout.lines().next().unwrap_or_default();
    let task_id: i64 = first_line
        .strip_prefix("task_id=")
        .unwrap_or_else(|| panic!("first line: {first_line}"))
        .parse()
        .unwrap();
    let name: String = sqlx::query_scalar("SELECT task_name FROM monitor_task_v2 WHERE id = ?")
        .bind(task_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(name, "from the binary");
}
