//! `devkit seed`: one demo task whose rules fire on the recorded WETH trades.
//!
//! Consumes an already migrated database. Inserts, in one transaction, a config in
//! `monitor_config_v2`, a `smart` task in `monitor_task_v2`, their link in
//! `monitor_task_config_v2` and the task's single target in `monitor_task_target_v2`. Every run
//! inserts new rows, so a second run creates a second task with its own config; nothing is
//! updated or deleted.
//!
//! The rules are sized for `data/binance-ethusdt-trades-2023-02-02` replayed by
//! `devkit feed-replay` (trades on one channel, one-minute candles on the other). With a
//! cooldown of 60 s, each rule raises at most one alert per minute of source time.
//! `devkit/tools/simulate_seed_rules.py` simulates the window semantics over the 1,000 trades
//! and expects 13 alerts:
//! - `large_trade` 4: 17 trades reach 100,000 USD, in all 4 minutes;
//! - `cumulative_buy` 3 and `volume_change` 3, in minutes 09:21 to 09:23. Minute 09:20 peaks
//!   at 914,681 USD of buys and 1,552,792 USD of volume in 60 s;
//! - `price_change` 3: from the minute's open, 09:20 rises 0.027 %, 09:22 falls 0.064 % and
//!   09:23 rises 0.035 %, while 09:21 moves 0.014 % at most.

use clap::Args;
use serde_json::json;
use sqlx::{MySql, Transaction};

use monitor_core::messages::{Chain, TaskType};
use monitor_core::rules::{
    is_evm_address, is_solana_address, parse_config, ConfigError, ConfigRow,
};
use monitor_core::settings::DbSettings;

use crate::feed_replay::{WETH_ADDRESS, WETH_USDT_POOL};

/// Config column `min_transaction_usd`: one trade of at least this many USD is a `large_trade`.
pub const MIN_TRANSACTION_USD: f64 = 100_000.0;
/// Config column `cumulative_min_amount_usd`: buys summing to this within `time_interval`.
pub const CUMULATIVE_MIN_AMOUNT_USD: f64 = 1_000_000.0;
/// Config column `time_interval`, in seconds.
pub const TIME_INTERVAL_SEC: i64 = 60;
/// `volume.min_volume_usd` over `volume.window_sec`.
pub const MIN_VOLUME_USD: f64 = 2_000_000.0;
/// Window of `volume` and `price_change`, in seconds.
pub const WINDOW_SEC: u32 = 60;
/// `price_change.rise_pct` and `fall_pct`; the recorded price stays within 1666.21 to 1667.32,
/// so only a small threshold can fire.
pub const PRICE_CHANGE_PCT: f64 = 0.02;
/// `cooldown_sec` of the config.
pub const COOLDOWN_SEC: u32 = 60;
/// Market cap stored with the WETH target: about 3.3 million WETH at 1,667 USD, an estimate for
/// February 2023.
pub const WETH_MARKET_CAP: f64 = 5_500_000_000.0;

/// Settings of `devkit seed`.
#[derive(Debug, Clone, Args)]
pub struct SeedSettings {
    #[command(flatten)]
    pub db: DbSettings,

    /// Name of the created task.
    #[arg(long, default_value = "WETH replay demo")]
    pub task_name: String,

    /// Chain of the task: sol, eth or bsc.
    #[arg(long, default_value = "eth")]
    pub chain: Chain,

    /// Token contract address of the task's single target.
    #[arg(long, default_value = WETH_ADDRESS)]
    pub token: String,

    /// Token name stored with the target.
    #[arg(long, default_value = "Wrapped Ether")]
    pub token_name: String,

    /// Token symbol stored with the target.
    #[arg(long, default_value = "WETH")]
    pub token_symbol: String,

    /// Market cap in USD stored with the target.
    #[arg(long, default_value_t = WETH_MARKET_CAP)]
    pub market_cap: f64,

    /// Pair address stored with the target.
    #[arg(long, default_value = WETH_USDT_POOL)]
    pub pair: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("invalid token {token:?} for chain {chain}: {expected}")]
    InvalidToken {
        token: String,
        chain: Chain,
        expected: &'static str,
    },
    #[error("the seed config is invalid: {0}")]
    InvalidConfig(#[from] ConfigError),
    #[error(transparent)]
    Connect(#[from] monitor_core::db::DbError),
    #[error("failed to {step}: {source}")]
    Sql {
        step: &'static str,
        source: sqlx::Error,
    },
}

/// Ids of the inserted rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    pub config_id: u64,
    pub task_id: u64,
    pub target_id: u64,
}

/// Builds the config row that the seed inserts, with the rules sized for the recorded trades.
pub fn demo_config(name: &str) -> ConfigRow {
    let events_config = json!({
        "large_trade": {"side": "any"},
        "cumulative_buy": {},
        "volume": {"window_sec": WINDOW_SEC, "min_volume_usd": MIN_VOLUME_USD},
        "price_change": {"window_sec": WINDOW_SEC, "rise_pct": PRICE_CHANGE_PCT, "fall_pct": PRICE_CHANGE_PCT},
        "cooldown_sec": COOLDOWN_SEC,
    });
    ConfigRow {
        config_id: 0,
        version: 1,
        name: name.to_owned(),
        min_transaction_usd: Some(MIN_TRANSACTION_USD),
        cumulative_min_amount_usd: Some(CUMULATIVE_MIN_AMOUNT_USD),
        time_interval: Some(TIME_INTERVAL_SEC),
        top_holders_threshold: None,
        events_config: Some(events_config.to_string()),
        trigger_logic: Some("OR".into()),
    }
}

/// Inserts the demo config, task and target; returns their ids.
pub async fn seed(settings: &SeedSettings) -> Result<Seeded, SeedError> {
    let token = normalize_token(&settings.token, settings.chain)?;
    let config = demo_config(&format!("{} rules", settings.task_name));
    // The allocator would reject an invalid config; fail here instead, before writing.
    parse_config(&config, TaskType::Smart)?;

    let pool = monitor_core::db::connect(&settings.db).await?;
    let mut tx = pool.begin().await.map_err(sql("begin a transaction"))?;
    let config_id = insert_config(&mut tx, &config, settings.chain).await?;
    let task_id = insert_task(&mut tx, &settings.task_name, settings.chain).await?;
    link_task_config(&mut tx, task_id, config_id).await?;
    let target_id = insert_target(&mut tx, task_id, &token, settings).await?;
    tx.commit().await.map_err(sql("commit the seed"))?;
    pool.close().await;

    tracing::info!(task_id, config_id, target_id, token, chain = %settings.chain, "seed inserted a task");
    Ok(Seeded {
        config_id,
        task_id,
        target_id,
    })
}

fn sql(step: &'static str) -> impl FnOnce(sqlx::Error) -> SeedError {
    move |source| SeedError::Sql { step, source }
}

/// EVM addresses are stored in lower case, the form the allocator and ingest compare.
fn normalize_token(token: &str, chain: Chain) -> Result<String, SeedError> {
    let token = token.trim();
    let (valid, expected) = match chain {
        Chain::Eth | Chain::Bsc => (
            is_evm_address(token),
            "expected 0x followed by 40 hex digits",
        ),
        Chain::Sol => (is_solana_address(token), "expected a base58 Solana address"),
    };
    if !valid {
        return Err(SeedError::InvalidToken {
            token: token.to_owned(),
            chain,
            expected,
        });
    }
    Ok(match chain {
        Chain::Eth | Chain::Bsc => token.to_ascii_lowercase(),
        Chain::Sol => token.to_owned(),
    })
}

async fn insert_config(
    tx: &mut Transaction<'_, MySql>,
    config: &ConfigRow,
    chain: Chain,
) -> Result<u64, SeedError> {
    let result = sqlx::query(
        "INSERT INTO monitor_config_v2 (config_name, config_category, chain_type, source, market_type, \
         min_transaction_usd, cumulative_min_amount_usd, time_interval, top_holders_threshold, \
         events_config, trigger_logic, notify_methods, version, status, del_flag) \
         VALUES (?, 'smart', ?, 'birdeye', 'dex', ?, ?, ?, ?, ?, ?, 'websocket', ?, 1, 0)",
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

async fn insert_task(
    tx: &mut Transaction<'_, MySql>,
    name: &str,
    chain: Chain,
) -> Result<u64, SeedError> {
    let result = sqlx::query(
        "INSERT INTO monitor_task_v2 (task_name, task_type, chain_type, status, del_flag) \
         VALUES (?, 'smart', ?, 1, 0)",
    )
    .bind(name)
    .bind(chain.to_string())
    .execute(&mut **tx)
    .await
    .map_err(sql("insert into monitor_task_v2"))?;
    Ok(result.last_insert_id())
}

async fn link_task_config(
    tx: &mut Transaction<'_, MySql>,
    task_id: u64,
    config_id: u64,
) -> Result<(), SeedError> {
    sqlx::query(
        "INSERT INTO monitor_task_config_v2 (task_id, config_id, config_order) VALUES (?, ?, 0)",
    )
    .bind(task_id)
    .bind(config_id)
    .execute(&mut **tx)
    .await
    .map_err(sql("insert into monitor_task_config_v2"))?;
    Ok(())
}

async fn insert_target(
    tx: &mut Transaction<'_, MySql>,
    task_id: u64,
    token: &str,
    settings: &SeedSettings,
) -> Result<u64, SeedError> {
    // batch_id and batch_order stay NULL: the allocator assigns them.
    let result = sqlx::query(
        "INSERT INTO monitor_task_target_v2 (task_id, target_type, target_value, token_name, \
         token_symbol, market_cap, pair_address, source, priority, status) \
         VALUES (?, 'token', ?, ?, ?, ?, ?, 'birdeye', 0, 1)",
    )
    .bind(task_id)
    .bind(token)
    .bind(&settings.token_name)
    .bind(&settings.token_symbol)
    .bind(settings.market_cap)
    .bind(&settings.pair)
    .execute(&mut **tx)
    .await
    .map_err(sql("insert into monitor_task_target_v2"))?;
    Ok(result.last_insert_id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_core::rules::{SideFilter, TriggerLogic};

    #[test]
    fn demo_config_parses_into_four_rules() {
        let parsed = parse_config(&demo_config("demo"), TaskType::Smart).unwrap();
        let rules = parsed.rules.as_token().unwrap();

        assert_eq!(parsed.trigger_logic, TriggerLogic::Or);
        assert!(parsed.unknown_keys.is_empty(), "{:?}", parsed.unknown_keys);
        assert_eq!(rules.count(), 4);
        assert_eq!(rules.cooldown_sec, COOLDOWN_SEC);

        let large_trade = rules.large_trade.as_ref().unwrap();
        assert_eq!(large_trade.side, SideFilter::Any);
        assert_eq!(large_trade.min_usd, MIN_TRANSACTION_USD);

        let cumulative = rules.cumulative_buy.as_ref().unwrap();
        assert_eq!(cumulative.window_sec, TIME_INTERVAL_SEC as u32);
        assert_eq!(cumulative.min_usd, CUMULATIVE_MIN_AMOUNT_USD);

        let volume = rules.volume.as_ref().unwrap();
        assert_eq!(
            (volume.window_sec, volume.min_volume_usd),
            (WINDOW_SEC, MIN_VOLUME_USD)
        );

        let price = rules.price_change.as_ref().unwrap();
        assert_eq!(price.window_sec, WINDOW_SEC);
        assert_eq!(price.rise_pct, Some(PRICE_CHANGE_PCT));
        assert_eq!(price.fall_pct, Some(PRICE_CHANGE_PCT));
    }

    #[test]
    fn evm_tokens_are_stored_in_lower_case() {
        let token =
            normalize_token("0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2", Chain::Eth).unwrap();
        assert_eq!(token, WETH_ADDRESS);
    }

    #[test]
    fn token_of_another_chain_is_rejected() {
        let error = normalize_token(WETH_ADDRESS, Chain::Sol)
            .unwrap_err()
            .to_string();
        assert!(error.contains("chain sol"), "{error}");
    }
}
