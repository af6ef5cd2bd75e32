use super::*;

fn row(events_config: &str) -> ConfigRow {
    ConfigRow {
        config_id: 7,
        version: 3,
        name: "demo".into(),
        min_transaction_usd: Some(50_000.0),
        cumulative_min_amount_usd: Some(200_000.0),
        time_interval: Some(60),
        top_holders_threshold: Some(40.0),
        events_config: Some(events_config.into()),
        trigger_logic: Some("OR".into()),
    }
}

fn token(events_config: &str) -> Result<ParsedConfig, ConfigError> {
    parse_config(&row(events_config), TaskType::Smart)
}

fn token_rules(events_config: &str) -> TokenRules {
    match token(events_config).unwrap().rules {
        Rules::Token(t) => t,
        Rules::Block(_) => panic!("expected token rules"),
    }
}

#[test]
fn full_token_config_parses() {
    let rules = token_rules(
        r#"{"price_change": {"window_sec": 60, "rise_pct": 0.5, "fall_pct": 0.5},
            "volume": {"window_sec": 60, "min_volume_usd": 1000000},
            "large_trade": {"side": "buy"},
            "cumulative_buy": true,
            "top_holders": {"top_n": 20},
            "holder_change": {"window_sec": 3600, "min_change_pct": 5, "min_holders": 100},
            "cooldown_sec": 120}"#,
    );
    assert_eq!(rules.price_change.as_ref().unwrap().rise_pct, Some(0.5));
    assert_eq!(rules.volume.as_ref().unwrap().min_volume_usd, 1_000_000.0);
    assert_eq!(rules.large_trade.as_ref().unwrap().side, SideFilter::Buy);
    assert_eq!(rules.large_trade.as_ref().unwrap().min_usd, 50_000.0);
    let cumulative = rules.cumulative_buy.as_ref().unwrap();
    assert_eq!((cumulative.window_sec, cumulative.min_usd), (60, 200_000.0));
    assert_eq!(rules.top_holders.as_ref().unwrap().top_n, 20);
    assert_eq!(rules.holder_change.as_ref().unwrap().min_holders, 100);
    assert_eq!(rules.cooldown_sec, 120);
    assert_eq!(rules.window_lengths(), vec![60, 3600]);
}

#[test]
fn camel_case_keys_are_accepted() {
    let rules = token_rules(r#"{"priceChange": {"windowSec": 120, "risePct": 2}, "cooldownSec": 60}"#);
    let price = rules.price_change.unwrap();
    assert_eq!((price.window_sec, price.rise_pct, price.fall_pct), (120, Some(2.0), None));
    assert_eq!(rules.cooldown_sec, 60);
}

#[test]
fn unknown_keys_are_reported_not_rejected() {
    let parsed = token(r#"{"volume": {"min_volume_usd": 5, "colour": "red"}, "extra": 1}"#).unwrap();
    assert_eq!(parsed.unknown_keys, vec!["extra".to_string(), "volume.colour".to_string()]);
}

#[test]
fn disabled_rules_are_skipped() {
    let rules = token_rules(r#"{"volume": {"enabled": false, "min_volume_usd": 5}, "large_trade": true, "price_change": false}"#);
    assert!(rules.volume.is_none());
    assert!(rules.price_change.is_none());
    assert_eq!(rules.large_trade.unwrap().side, SideFilter::Any);
}

#[test]
fn trigger_logic_and_is_read_from_the_column() {
    let mut r = row(r#"{"large_trade": true}"#);
    r.trigger_logic = Some("and".into());
    assert_eq!(parse_config(&r, TaskType::Batch).unwrap().trigger_logic, TriggerLogic::And);
}

#[test]
fn snake_case_conversion() {
    assert_eq!(to_snake_case("minVolumeUsd"), "min_volume_usd");
    assert_eq!(to_snake_case("minVolumeUSD"), "min_volume_usd");
    assert_eq!(to_snake_case("window_sec"), "window_sec");
    assert_eq!(to_snake_case("top50Holders"), "top50_holders");
}

/// One case of the invalid-config catalogue: the input, the field and constraint expected.
struct Invalid {
    name: &'static str,
    events_config: &'static str,
    field: &'static str,
    constraint: fn(&Constraint) -> bool,
}

fn invalid_catalogue() -> Vec<Invalid> {
    vec![
        Invalid {
            name: "not json",
            events_config: r#"{"volume": {"min_volume_usd": 5"#,
            field: "events_config",
            constraint: |c| matches!(c, Constraint::NotJson(_)),
        },
        Invalid {
            name: "array instead of object",
            events_config: r#"[1, 2, 3]"#,
            field: "events_config",
            constraint: |c| matches!(c, Constraint::NotObject),
        },
        Invalid {
            name: "empty object",
            events_config: "{}",
            field: "events_config",
            constraint: |c| matches!(c, Constraint::NoRules),
        },
        Invalid {
            name: "threshold as string",
            events_config: r#"{"volume": {"min_volume_usd": "lots"}}"#,
            field: "volume.min_volume_usd",
            constraint: |c| matches!(c, Constraint::NotNumber),
        },
        Invalid {
            name: "negative threshold",
            events_config: r#"{"price_change": {"rise_pct": -5}}"#,
            field: "price_change.rise_pct",
            constraint: |c| matches!(c, Constraint::GreaterThan(b) if *b == 0.0),
        },
        Invalid {
            name: "huge number",
            events_config: r#"{"volume": {"min_volume_usd": 1e300}}"#,
            field: "volume.min_volume_usd",
            constraint: |c| matches!(c, Constraint::Range { .. }),
        },
        Invalid {
            name: "fractional window",
            events_config: r#"{"volume": {"window_sec": 1.5, "min_volume_usd": 5}}"#,
            field: "volume.window_sec",
            constraint: |c| matches!(c, Constraint::NotInteger),
        },
        Invalid {
            name: "window too long",
            events_config: r#"{"volume": {"window_sec": 99999999999, "min_volume_usd": 5}}"#,
            field: "volume.window_sec",
            constraint: |c| matches!(c, Constraint::Range { .. }),
        },
        Invalid {
            name: "unknown side",
            events_config: r#"{"large_trade": {"side": "sideways"}}"#,
            field: "large_trade.side",
            constraint: |c| matches!(c, Constraint::OneOf(_)),
        },
        Invalid {
            name: "nested garbage as rule",
            events_config: r#"{"price_change": [[[{"a": null}]]]}"#,
            field: "price_change",
            constraint: |c| matches!(c, Constraint::NotObject),
        },
        Invalid {
            name: "price change without direction",
            events_config: r#"{"price_change": {"window_sec": 60}}"#,
            field: "price_change",
            constraint: |c| matches!(c, Constraint::AnyOf(_)),
        },
        Invalid {
            name: "enabled flag not bool",
            events_config: r#"{"volume": {"enabled": "yes", "min_volume_usd": 5}}"#,
            field: "volume.enabled",
            constraint: |c| matches!(c, Constraint::NotBool),
        },
        Invalid {
            name: "fall above hundred percent",
            events_config: r#"{"price_change": {"fall_pct": 150}}"#,
            field: "price_change.fall_pct",
            constraint: |c| matches!(c, Constraint::Range { .. }),
        },
        Invalid {
            name: "cooldown zero",
            events_config: r#"{"large_trade": true, "cooldown_sec": 0}"#,
            field: "cooldown_sec",
            constraint: |c| matches!(c, Constraint::Range { .. }),
        },
    ]
}

#[test]
fn invalid_configs_name_field_value_and_constraint() {
    for case in invalid_catalogue() {
        let err = match token(case.events_config) {
            Ok(parsed) => panic!("{}: accepted as {parsed:?}", case.name),
            Err(err) => err,
        };
        assert_eq!(err.field, case.field, "{}: {err}", case.name);
        assert!((case.constraint)(&err.constraint), "{}: {err}", case.name);
        assert_eq!((err.config_id, err.version), (7, 3), "{}", case.name);

        let en = err.message(Locale::En);
        let zh = err.message(Locale::ZhCn);
        assert!(en.contains(case.field), "{}: {en}", case.name);
        assert!(zh.contains(case.field) && zh.contains("无效"), "{}: {zh}", case.name);
    }
}

#[test]
fn invalid_trigger_logic_is_rejected() {
    let mut r = row(r#"{"large_trade": true}"#);
    r.trigger_logic = Some("XOR".into());
    let err = parse_config(&r, TaskType::Smart).unwrap_err();
    assert_eq!(err.field, "trigger_logic");
    assert_eq!(err.value, "XOR");
}

#[test]
fn rule_missing_its_column_is_rejected() {
    let mut r = row(r#"{"large_trade": true}"#);
    r.min_transaction_usd = None;
    let err = parse_config(&r, TaskType::Smart).unwrap_err();
    assert_eq!(err.field, "min_transaction_usd");
    assert_eq!(err.constraint, Constraint::MissingColumn);
}

#[test]
fn too_many_keys_is_rejected() {
    let keys: Vec<String> = (0..10_000).map(|i| format!("\"rule{i}\": true")).collect();
    let text = format!("{{{}}}", keys.join(","));
    let err = token(&text).unwrap_err();
    assert_eq!(err.constraint, Constraint::TooMany(MAX_CONFIG_KEYS));
}

#[test]
fn error_value_is_shortened() {
    let long = format!(r#"{{"large_trade": {{"side": "{}"}}}}"#, "x".repeat(500));
    let err = token(&long).unwrap_err();
    assert!(err.value.chars().count() <= 80, "{}", err.value);
}

#[test]
fn block_config_of_the_seed_parses() {
    let parsed = parse_config(
        &row(r#"{
          "monitor_new_blocks": true, "block_interval_threshold": 15,
          "monitor_large_transactions": true, "transaction_amount_threshold": 100000,
          "monitor_contract_events": true,
          "contract_addresses": ["0xdAC17F958D2ee523a2206206994597C13D831ec7"],
          "event_signatures": ["Transfer(address,address,uint256)", "Approval(address, address, uint256)"],
          "chain_specific": {"sol": {"monitor_program_logs": true,
                                     "program_ids": ["TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA"]},
                             "eth": {"monitor_pending_txs": false}},
          "confirmations": 2
        }"#),
        TaskType::Block,
    )
    .unwrap();
    let Rules::Block(rules) = parsed.rules else { panic!("expected block rules") };
    assert_eq!(rules.new_blocks.unwrap().interval_threshold_sec, 15.0);
    assert_eq!(rules.large_transactions.unwrap().threshold_usd, 100_000.0);
    let events = rules.contract_events.unwrap();
    assert_eq!(events.addresses, vec!["0xdac17f958d2ee523a2206206994597c13d831ec7"]);
    assert_eq!(events.signatures[1], "Approval(address,address,uint256)");
    assert_eq!(rules.program_logs.unwrap().program_ids.len(), 1);
    assert!(!rules.pending_txs);
    assert_eq!(rules.confirmations, 2);
    assert!(parsed.unknown_keys.is_empty(), "{:?}", parsed.unknown_keys);
}

#[test]
fn block_config_with_bad_address_is_rejected() {
    let err = parse_config(
        &row(r#"{"monitor_contract_events": true, "contract_addresses": ["0x12; DROP TABLE x"]}"#),
        TaskType::Block,
    )
    .unwrap_err();
    assert_eq!(err.field, "contract_addresses[0]");
    assert_eq!(err.constraint, Constraint::NotEvmAddress);
}

#[test]
fn event_topic_of_erc20_events() {
    assert_eq!(
        event_topic("Transfer(address,address,uint256)"),
        "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    );
    assert_eq!(
        event_topic("Approval(address,address,uint256)"),
        "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
    );
}
