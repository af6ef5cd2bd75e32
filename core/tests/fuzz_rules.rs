//! Fuzzing of [`monitor_core::rules::parse_config`], which reads `events_config` as the Java
//! side stored it.
//!
//! Inputs are JSON texts built from the keys and words of token and block configs, with
//! hostile values, truncations, deep nesting and random text, parsed for both task kinds and
//! with random config columns. Parsing must return rules or a [`ConfigError`] and never panic;
//! an error renders in both locales, and rules that parse are within the documented limits.

#[path = "../../tests/src/fuzz.rs"]
#[allow(dead_code)]
mod fuzz;

use monitor_core::messages::TaskType;
use monitor_core::rules::{parse_config, ConfigRow, Rules, MAX_WINDOW_SEC};
use monitor_core::Locale;
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "price_change",
    "priceChange",
    "window_sec",
    "windowSec",
    "rise_pct",
    "risePct",
    "fall_pct",
    "volume",
    "min_volume_usd",
    "holder_change",
    "min_change_pct",
    "min_holders",
    "large_trade",
    "largeTrade",
    "side",
    "cumulative_buy",
    "top_holders",
    "top_n",
    "cooldown_sec",
    "enabled",
    "monitor_new_blocks",
    "block_interval_threshold",
    "monitor_large_transactions",
    "transaction_amount_threshold",
    "monitor_contract_events",
    "contract_addresses",
    "event_signatures",
    "chain_specific",
    "sol",
    "eth",
    "monitor_program_logs",
    "program_ids",
    "monitor_pending_txs",
    "confirmations",
];

const WORDS: &[&str] = &[
    "buy",
    "sell",
    "any",
    "BUY",
    "Transfer(address,address,uint256)",
    "Swap(",
    "()",
    "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
    "0xZZ",
    "11111111111111111111111111111111",
    "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",
    "OR",
    "AND",
    "",
];

fn row(
    events_config: String,
    columns: (Option<f64>, Option<f64>, Option<i64>, Option<f64>),
    logic: Option<&str>,
) -> ConfigRow {
    ConfigRow {
        config_id: 7,
        version: 3,
        name: "fuzz".into(),
        min_transaction_usd: columns.0,
        cumulative_min_amount_usd: columns.1,
        time_interval: columns.2,
        top_holders_threshold: columns.3,
        events_config: Some(events_config),
        trigger_logic: logic.map(str::to_owned),
    }
}

fn column_values() -> impl Strategy<Value = (Option<f64>, Option<f64>, Option<i64>, Option<f64>)> {
    let usd = prop_oneof![
        Just(None),
        Just(Some(50_000.0)),
        Just(Some(-1.0)),
        Just(Some(f64::NAN)),
        Just(Some(1e300)),
        any::<f64>().prop_map(Some)
    ];
    let seconds = prop_oneof![
        Just(None),
        Just(Some(60)),
        Just(Some(0)),
        Just(Some(i64::MAX)),
        any::<i64>().prop_map(Some)
    ];
    (usd.clone(), usd.clone(), seconds, usd)
}

fn logic() -> impl Strategy<Value = Option<&'static str>> {
    proptest::sample::select(
        &[
            None,
            Some("OR"),
            Some("and"),
            Some(""),
            Some("XOR"),
            Some("OR; DROP TABLE x"),
        ][..],
    )
}

fn check(
    text: String,
    columns: (Option<f64>, Option<f64>, Option<i64>, Option<f64>),
    logic: Option<&str>,
) -> Result<(), TestCaseError> {
    let config = row(text, columns, logic);
    for task_type in [TaskType::Smart, TaskType::Block] {
        match parse_config(&config, task_type) {
            Ok(parsed) => {
                let cooldown = parsed.rules.cooldown_sec();
                prop_assert!(
                    (1..=MAX_WINDOW_SEC).contains(&cooldown),
                    "cooldown {cooldown}"
                );
                if let Rules::Token(token) = &parsed.rules {
                    for window in token.window_lengths() {
                        prop_assert!((1..=MAX_WINDOW_SEC).contains(&window), "window {window}");
                    }
                }
            }
            Err(error) => {
                let english = error.message(Locale::En);
                prop_assert!(!english.contains('\n'), "{english}");
                prop_assert!(!english.contains('\r'), "{english}");
                prop_assert!(!error.message(Locale::ZhCn).is_empty());
                prop_assert!(
                    error.value.chars().count() <= 80,
                    "value not shortened: {}",
                    error.value
                );
            }
        }
    }
    Ok(())
}

fn configs() -> impl Strategy<Value = String> {
    fuzz::texts(fuzz::tree(KEYS, WORDS))
}

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn parse_config_never_panics(text in configs(), columns in column_values(), logic in logic()) {
        check(text, columns, logic)?;
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn parse_config_never_panics_long(text in configs(), columns in column_values(), logic in logic()) {
        check(text, columns, logic)?;
    }
}
