//! The load generator's task in MySQL: a config whose rules fire on 1 % of the trades, a
//! `batch` task and its synthetic targets.
//!
//! Consumes a migrated database. Inserts, in one transaction, the config, the task, their link
//! and the targets (in multi-row statements). The config's rules:
//! - `large_trade` (any side) with `min_transaction_usd` = [`LARGE_TRADE_USD`]: the trades
//!   that [`super::schedule`] makes large, one in a hundred, reach it and no other trade does;
//! - `volume` over 300 s and `cumulative_buy` over 60 s with thresholds no load reaches, so
//!   ingest keeps two windows per target and evaluate judges three rules per trade, as a
//!   production config would;
//! - `cooldown_sec` 1, the shortest allowed, so that a target's large trades, seconds apart,
//!   raise separate alerts.

use serde_json::json;
use sqlx::{MySql, MySqlPool, QueryBuilder, Transaction};

use monitor_core::messages::{Chain, TaskType};
use monitor_core::rules::{parse_config, ConfigError, ConfigRow, MAX_USD};

use super::schedule::LARGE_TRADE_USD;

/// Targets inserted per statement.
const INSERT_CHUNK: usize = 1000;
/// Threshold of the rules that must never fire.
const UNREACHABLE_USD: f64 = MAX_USD;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the load generator's config is invalid: {0}")]
    InvalidConfig(#[from] ConfigError),
    #[error("failed to {step}: {source}")]
    Sql {
        step: &'static str,
        source: sqlx::Error,
    },
}

fn sql(step: &'static str) -> impl FnOnce(sqlx::Error) -> SetupError {
    move |source| SetupError::Sql { step, source }
}

/// Ids of the inserted task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTask {
    pub task_id: u64,
    pub config_id: u64,
}

/// Returns the address of synthetic target `index`: `0x10ad` followed by the index in 36 hex
/// digits, a valid EVM address in lower case.
pub fn target_address(index: usize) -> String {
    format!("0x10ad{index:036x}")
}

/// Builds the config row of the load generator.
pub fn load_config() -> ConfigRow {
    let events_config = json!({
        "large_trade": {"side": "any"},
        "volume": {"window_sec": 300, "min_volume_usd": UNREACHABLE_USD},
        "cumulative_buy": {},
        "cooldown_sec": 1,
    });
    ConfigRow {
        config_id: 0,
        version: 1,
        name: "loadgen rules".to_owned(),
        min_transaction_usd: Some(LARGE_TRADE_USD),
        cumulative_min_amount_usd: Some(UNREACHABLE_USD),
        time_interval: Some(60),
        top_holders_threshold: None,
        events_config: Some(events_config.to_string()),
        trigger_logic: Some("OR".to_owned()),
    }
}

/// Inserts the config, a `batch` task on `chain` and its targets.
pub async fn create_task(
    pool: &MySqlPool,
    chain: Chain,
    addresses: &[String],
) -> Result<LoadTask, SetupError> {
    let config = load_config();
    parse_config(&config, TaskType::Batch)?;

    let mut tx = pool.begin().await.map_err(sql("begin a transaction"))?;
    let config_id = insert_config(&mut tx, &config, chain).await?;
    let task_id = insert_task(&mut tx, chain).await?;
    sqlx::query(
        "INSERT INTO monitor_task_config_v2 (task_id, config_id, config_order) VALUES (?, ?, 0)",
    )
    .bind(task_id)
    .bind(config_id)
    .execute(&mut *tx)
    .await
    .map_err(sql("insert into monitor_task_config_v2"))?;
    for (chunk_no, chunk) in addresses.chunks(INSERT_CHUNK).enumerate() {
        insert_targets(&mut tx, task_id, chunk_no * INSERT_CHUNK, chunk).await?;
    }
    tx.commit().await.map_err(sql("commit the task"))?;
    Ok(LoadTask { task_id, config_id })
}

async fn insert_config(
    tx: &mut Transaction<'_, MySql>,
    config: &ConfigRow,
    chain: Chain,
) -> Result<u64, SetupError> {
    let result = sqlx::query(
        "INSERT INTO monitor_config_v2 (config_name, config_category, chain_type, source, market_type, \
         min_transaction_usd, cumulative_min_amount_usd, time_interval, top_holders_threshold, \
         events_config, trigger_logic, notify_methods, version, status, del_flag) \
         VALUES (?, 'batch', ?, 'birdeye', 'dex', ?, ?, ?, ?, ?, ?, 'websocket', ?, 1, 0)",
    )
    .bind(&config.name)
    .bind(chain.to_string())
    .bind(config.min_transaction_usd)
    .bind(config.cumulative_min_amount_usd)
    .bind(config.time_interval)
    .bind(config.top_holders_threshold)
    .bind(&config.events_config)
    .bind(&config.trigger_logic)
    .bind(config.version as i64)
    .execute(&mut **tx)
    .await
    .map_err(sql("insert into monitor_config_v2"))?;
    Ok(result.last_insert_id())
}

async fn insert_task(tx: &mut Transaction<'_, MySql>, chain: Chain) -> Result<u64, SetupError> {
    let result = sqlx::query(
        "INSERT INTO monitor_task_v2 (task_name, task_type, chain_type, status, del_flag) \
         VALUES ('loadgen', 'batch', ?, 1, 0)",
    )
    .bind(chain.to_string())
    .execute(&mut **tx)
    .await
    .map_err(sql("insert into monitor_task_v2"))?;
    Ok(result.last_insert_id())
}

async fn insert_targets(
    tx: &mut Transaction<'_, MySql>,
    task_id: u64,
    first_index: usize,
    addresses: &[String],
) -> Result<(), SetupError> {
    let mut insert = QueryBuilder::<MySql>::new(
        "INSERT INTO monitor_task_target_v2 (task_id, target_type, target_value, token_name, \
         token_symbol, market_cap, source, priority, status) ",
    );
    insert.push_values(
        addresses.iter().enumerate(),
        |mut row, (offset, address)| {
            let index = first_index + offset;
            row.push_bind(task_id)
                .push_bind("token")
                .push_bind(address)
                .push_bind(format!("Loadgen token {index}"))
                .push_bind(format!("LG{index}"))
                .push_bind(1_000_000.0 + index as f64)
                .push_bind("birdeye")
                .push_bind(0)
                .push_bind(1);
        },
    );
    insert
        .build()
        .execute(&mut **tx)
        .await
        .map_err(sql("insert into monitor_task_target_v2"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_core::rules::{is_evm_address, SideFilter};

    #[test]
    fn config_fires_large_trade_only() {
        let parsed = parse_config(&load_config(), TaskType::Batch).unwrap();
        let rules = parsed.rules.as_token().unwrap();

        assert!(parsed.unknown_keys.is_empty(), "{:?}", parsed.unknown_keys);
        let large = rules.large_trade.as_ref().unwrap();
        assert_eq!(
            (large.side, large.min_usd),
            (SideFilter::Any, LARGE_TRADE_USD)
        );
        assert_eq!(
            rules.volume.as_ref().unwrap().min_volume_usd,
            UNREACHABLE_USD
        );
        assert_eq!(
            rules.cumulative_buy.as_ref().unwrap().min_usd,
            UNREACHABLE_USD
        );
        assert_eq!(rules.window_lengths(), vec![60, 300]);
        assert_eq!(rules.cooldown_sec, 1);
    }

    #[test]
    fn target_addresses_are_distinct_evm_addresses() {
        let first = target_address(0);
        let last = target_address(99_999);
        assert!(is_evm_address(&first), "{first}");
        assert!(is_evm_address(&last), "{last}");
        assert_ne!(first, last);
        assert_eq!(last, last.to_ascii_lowercase());
    }
}
