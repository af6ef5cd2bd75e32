use monitor_core::messages::{BatchRef, BatchStatus, Chain, Holders, Price, TaskType, WindowStats};
use monitor_core::rules::{BlockRules, NewBlocksRule, SideFilter};

use super::*;

const TASK_ID: u64 = 7;
const BATCH_ID: u64 = 70;
const TOKEN: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
/// A source time on a whole 300-second boundary, so cooldown buckets start at `T0`.
const T0: i64 = 1_700_000_100_000;
const WINDOW: u32 = 60;

fn no_rules() -> TokenRules {
    TokenRules {
        price_change: None,
        volume: None,
        holder_change: None,
        large_trade: None,
        cumulative_buy: None,
        top_holders: None,
        cooldown_sec: 300,
    }
}

fn task(rules: TokenRules, trigger_logic: TriggerLogic) -> TaskSpec {
    task_with(Rules::Token(rules), trigger_logic)
}

fn task_with(rules: Rules, trigger_logic: TriggerLogic) -> TaskSpec {
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id: TASK_ID,
        name: "watch weth".into(),
        task_type: TaskType::Smart,
        chain: Chain::Eth,
        epoch: 3,
        config: Some(ConfigSpec {
            config_id: 11,
            version: 4,
            name: "weth rules".into(),
            trigger_logic,
            rules,
        }),
        batches: vec![BatchRef {
            batch_id: BATCH_ID,
            batch_no: 1,
            item_count: 1,
            status: BatchStatus::Running,
        }],
        config_error: None,
        published_ms: T0,
    }
}

fn frame(events: Vec<Event>) -> EventFrame {
    EventFrame {
        v: MESSAGE_VERSION,
        task_id: TASK_ID,
        batch_id: Some(BATCH_ID),
        epoch: 3,
        chain: Chain::Eth,
        producer: "ingest-1".into(),
        seq: 1,
        events,
    }
}

fn window() -> WindowStats {
    WindowStats {
        window_sec: WINDOW,
        start_time_ms: Some(T0 - 45_000),
        ..WindowStats::default()
    }
}

fn snapshot(window: WindowStats) -> TokenSnapshot {
    TokenSnapshot {
        price: Some(100.0),
        market_cap: Some(5e9),
        windows: vec![window],
        ..TokenSnapshot::default()
    }
}

fn event(time_ms: i64, kind: EventKind, snapshot: TokenSnapshot) -> Event {
    Event {
        source_time_ms: time_ms,
        ingest_time_ms: time_ms + 20,
        target: Some(TargetRef {
            target_id: 3,
            address: TOKEN.into(),
        }),
        kind,
        snapshot: Some(snapshot),
    }
}

fn trade(side: Side, volume_usd: f64) -> EventKind {
    EventKind::Trade(Trade {
        side,
        volume_usd,
        price_usd: Some(100.0),
        tx_hash: Some("0xfeed".into()),
        owner: Some("0xowner".into()),
    })
}

fn price() -> EventKind {
    EventKind::Price(Price {
        open: 100.0,
        high: 100.0,
        low: 100.0,
        close: 100.0,
        volume_usd: None,
    })
}

fn holders() -> EventKind {
    EventKind::Holders(Holders {
        holders: None,
        top_share_pct: None,
        top_n: None,
    })
}

fn alert_types(alerts: &[Alert]) -> Vec<AlertType> {
    alerts.iter().map(|a| a.alert_type).collect()
}

/// Snapshot after a price event: the window started at 100 and the price is now `price`.
fn price_snapshot(price: f64) -> TokenSnapshot {
    let mut snapshot = snapshot(WindowStats {
        start_price: Some(100.0),
        ..window()
    });
    snapshot.price = Some(price);
    snapshot
}

#[test]
fn price_rise_at_and_around_threshold() {
    let rules = TokenRules {
        price_change: Some(PriceChangeRule {
            window_sec: WINDOW,
            rise_pct: Some(5.0),
            fall_pct: None,
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    for (now, fires) in [(104.999, false), (105.0, true), (105.001, true)] {
        let alerts = evaluate(&task, &frame(vec![event(T0, price(), price_snapshot(now))]));
        assert_eq!(alerts.len(), usize::from(fires), "price {now}");
        if fires {
            let finding = &alerts[0].findings[0];
            assert_eq!(finding.rule, AlertType::PriceChange);
            assert!(
                (finding.observed - (now - 100.0)).abs() < 1e-9,
                "observed {}",
                finding.observed
            );
            assert_eq!(finding.threshold, 5.0);
            assert_eq!(finding.window_sec, Some(WINDOW));
        }
    }
}

#[test]
fn price_fall_at_and_around_threshold() {
    let rules = TokenRules {
        price_change: Some(PriceChangeRule {
            window_sec: WINDOW,
            rise_pct: Some(5.0),
            fall_pct: Some(10.0),
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    for (now, fires) in [
        (90.001, false),
        (90.0, true),
        (89.999, true),
        (104.0, false),
    ] {
        let alerts = evaluate(&task, &frame(vec![event(T0, price(), price_snapshot(now))]));
        assert_eq!(alerts.len(), usize::from(fires), "price {now}");
        if fires {
            assert!(alerts[0].findings[0].observed < 0.0);
            assert_eq!(alerts[0].findings[0].threshold, -10.0);
            assert!(alerts[0].findings[0].reason.starts_with("price fell"));
        }
    }
}

#[test]
fn price_fall_ignored_without_fall_pct() {
    let rules = TokenRules {
        price_change: Some(PriceChangeRule {
            window_sec: WINDOW,
            rise_pct: Some(5.0),
            fall_pct: None,
        }),
        ..no_rules()
    };
    let alerts = evaluate(
        &task(rules, TriggerLogic::Or),
        &frame(vec![event(T0, price(), price_snapshot(50.0))]),
    );
    assert!(alerts.is_empty());
}

#[test]
fn volume_at_and_around_threshold() {
    let rules = TokenRules {
        volume: Some(VolumeRule {
            window_sec: WINDOW,
            min_volume_usd: 1000.0,
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    for (volume_usd, fires) in [(999.99, false), (1000.0, true), (1000.01, true)] {
        let snapshot = snapshot(WindowStats {
            volume_usd,
            ..window()
        });
        let alerts = evaluate(
            &task,
            &frame(vec![event(T0, trade(Side::Sell, 10.0), snapshot)]),
        );
        assert_eq!(
            alert_types(&alerts),
            if fires {
                vec![AlertType::VolumeChange]
            } else {
                vec![]
            },
            "volume {volume_usd}"
        );
    }
}

#[test]
fn decimal_sum_equal_to_minimum_reaches_it() {
    let rules = TokenRules {
        volume: Some(VolumeRule {
            window_sec: WINDOW,
            min_volume_usd: 0.3,
        }),
        ..no_rules()
    };
    let snapshot = snapshot(WindowStats {
        // 0.7 - 0.4 is 0.29999999999999993 in binary floating point, just below 0.3.
        volume_usd: 0.7 - 0.4,
        ..window()
    });
    let alerts = evaluate(
        &task(rules, TriggerLogic::Or),
        &frame(vec![event(T0, trade(Side::Buy, 0.1), snapshot)]),
    );
    assert_eq!(alerts.len(), 1);
}

#[test]
fn holder_change_at_and_around_threshold() {
    let rules = TokenRules {
        holder_change: Some(HolderChangeRule {
            window_sec: WINDOW,
            min_change_pct: 5.0,
            min_holders: 100,
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    let cases = [
        (1049, false),
        (1050, true),
        (1051, true),
        (951, false),
        (950, true),
        (949, true),
    ];
    for (count, fires) in cases {
        let mut snapshot = snapshot(WindowStats {
            start_holders: Some(1000),
            ..window()
        });
        snapshot.holders = Some(count);
        let alerts = evaluate(&task, &frame(vec![event(T0, holders(), snapshot)]));
        assert_eq!(alerts.len(), usize::from(fires), "holders {count}");
        if fires {
            let expected = (count as f64 - 1000.0) / 10.0;
            assert!((alerts[0].findings[0].observed - expected).abs() < 1e-9);
        }
    }
}

#[test]
fn holder_change_skips_tokens_below_min_holders() {
    let rules = TokenRules {
        holder_change: Some(HolderChangeRule {
            window_sec: WINDOW,
            min_change_pct: 5.0,
            min_holders: 100,
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    for (count, fires) in [(99, false), (100, true)] {
        let mut snapshot = snapshot(WindowStats {
            start_holders: Some(50),
            ..window()
        });
        snapshot.holders = Some(count);
        let alerts = evaluate(&task, &frame(vec![event(T0, holders(), snapshot)]));
        assert_eq!(alerts.len(), usize::from(fires), "holders {count}");
    }
}

#[test]
fn large_trade_at_and_around_threshold() {
    let rules = TokenRules {
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: 10_000.0,
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    for (volume_usd, fires) in [(9_999.99, false), (10_000.0, true), (10_000.01, true)] {
        let alerts = evaluate(
            &task,
            &frame(vec![event(
                T0,
                trade(Side::Buy, volume_usd),
                snapshot(window()),
            )]),
        );
        assert_eq!(alerts.len(), usize::from(fires), "volume {volume_usd}");
        if fires {
            assert_eq!(alerts[0].findings[0].observed, volume_usd);
            assert_eq!(alerts[0].first_event_time_ms, Some(T0));
        }
    }
}

#[test]
fn large_trade_respects_side() {
    let cases = [
        (SideFilter::Buy, Side::Buy, true),
        (SideFilter::Buy, Side::Sell, false),
        (SideFilter::Sell, Side::Sell, true),
        (SideFilter::Sell, Side::Buy, false),
        (SideFilter::Any, Side::Buy, true),
        (SideFilter::Any, Side::Sell, true),
    ];
    for (filter, side, fires) in cases {
        let rules = TokenRules {
            large_trade: Some(LargeTradeRule {
                side: filter,
                min_usd: 10_000.0,
            }),
            ..no_rules()
        };
        let alerts = evaluate(
            &task(rules, TriggerLogic::Or),
            &frame(vec![event(T0, trade(side, 50_000.0), snapshot(window()))]),
        );
        assert_eq!(alerts.len(), usize::from(fires), "{filter:?} {side:?}");
    }
}

#[test]
fn cumulative_buy_at_and_around_threshold() {
    let rules = TokenRules {
        cumulative_buy: Some(CumulativeBuyRule {
            window_sec: WINDOW,
            min_usd: 50_000.0,
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    for (buy_usd, fires) in [(49_999.99, false), (50_000.0, true), (50_000.01, true)] {
        let snapshot = snapshot(WindowStats {
            buy_usd,
            // Sells never count towards cumulative buys.
            sell_usd: 1e9,
            volume_usd: buy_usd + 1e9,
            ..window()
        });
        let alerts = evaluate(
            &task,
            &frame(vec![event(T0, trade(Side::Buy, 1.0), snapshot)]),
        );
        assert_eq!(
            alert_types(&alerts),
            if fires {
                vec![AlertType::CumulativeBuy]
            } else {
                vec![]
            },
            "buys {buy_usd}"
        );
    }
}

#[test]
fn top_holders_at_and_around_threshold() {
    let rules = TokenRules {
        top_holders: Some(TopHoldersRule {
            top_n: 10,
            threshold_pct: 50.0,
        }),
        ..no_rules()
    };
    let task = task(rules, TriggerLogic::Or);
    for (share_pct, fires) in [(49.99, false), (50.0, true), (50.01, true)] {
        let mut snapshot = snapshot(window());
        snapshot.top_share_pct = Some(share_pct);
        let alerts = evaluate(&task, &frame(vec![event(T0, holders(), snapshot)]));
        assert_eq!(alerts.len(), usize::from(fires), "share {share_pct}");
        if fires {
            let facts = AlertFacts::of(&alerts[0]);
            assert_eq!(facts.top_n, Some(10));
        }
    }
}

#[test]
fn missing_window_judges_nothing() {
    let rules = TokenRules {
        volume: Some(VolumeRule {
            window_sec: 300,
            min_volume_usd: 1.0,
        }),
        ..no_rules()
    };
    // The snapshot has a 60 s window only.
    let snapshot = snapshot(WindowStats {
        volume_usd: 1e9,
        ..window()
    });
    let alerts = evaluate(
        &task(rules, TriggerLogic::Or),
        &frame(vec![event(T0, trade(Side::Buy, 1.0), snapshot)]),
    );
    assert!(alerts.is_empty());
}

/// Rules that all hold on [`busy_snapshot`] with a 50 000 USD buy.
fn all_rules() -> TokenRules {
    TokenRules {
        price_change: Some(PriceChangeRule {
            window_sec: WINDOW,
            rise_pct: Some(5.0),
            fall_pct: None,
        }),
        volume: Some(VolumeRule {
            window_sec: WINDOW,
            min_volume_usd: 100_000.0,
        }),
        holder_change: None,
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Buy,
            min_usd: 10_000.0,
        }),
        cumulative_buy: Some(CumulativeBuyRule {
            window_sec: WINDOW,
            min_usd: 50_000.0,
        }),
        top_holders: None,
        cooldown_sec: 300,
    }
}

fn busy_snapshot() -> TokenSnapshot {
    let mut snapshot = snapshot(WindowStats {
        start_price: Some(100.0),
        volume_usd: 200_000.0,
        buy_usd: 150_000.0,
        sell_usd: 50_000.0,
        trades: 12,
        ..window()
    });
    snapshot.price = Some(110.0);
    snapshot
}

#[test]
fn or_alerts_per_rule_of_event_kind() {
    let task = task(all_rules(), TriggerLogic::Or);

    let on_trade = evaluate(
        &task,
        &frame(vec![event(T0, trade(Side::Buy, 50_000.0), busy_snapshot())]),
    );
    assert_eq!(
        alert_types(&on_trade),
        vec![
            AlertType::LargeTrade,
            AlertType::VolumeChange,
            AlertType::CumulativeBuy
        ]
    );
    assert!(on_trade.iter().all(|a| a.findings.len() == 1));

    let on_price = evaluate(&task, &frame(vec![event(T0, price(), busy_snapshot())]));
    assert_eq!(alert_types(&on_price), vec![AlertType::PriceChange]);
}

#[test]
fn and_raises_one_composite_alert() {
    let task = task(all_rules(), TriggerLogic::And);
    let alerts = evaluate(
        &task,
        &frame(vec![event(T0, trade(Side::Buy, 50_000.0), busy_snapshot())]),
    );

    assert_eq!(alert_types(&alerts), vec![AlertType::Composite]);
    let rules: Vec<AlertType> = alerts[0].findings.iter().map(|f| f.rule).collect();
    assert_eq!(
        rules,
        vec![
            AlertType::PriceChange,
            AlertType::VolumeChange,
            AlertType::LargeTrade,
            AlertType::CumulativeBuy
        ]
    );
    assert_eq!(
        alerts[0].id,
        format!("{TASK_ID}:{TOKEN}:composite:{}", T0 / 1000 / 300)
    );
    assert_eq!(alerts[0].first_event_time_ms, Some(T0 - 45_000));
}

#[test]
fn and_raises_nothing_when_one_rule_fails() {
    let task = task(all_rules(), TriggerLogic::And);

    let small_trade = evaluate(
        &task,
        &frame(vec![event(T0, trade(Side::Buy, 9_000.0), busy_snapshot())]),
    );
    assert!(
        small_trade.is_empty(),
        "the trade is below large_trade's minimum"
    );

    let sell = evaluate(
        &task,
        &frame(vec![event(
            T0,
            trade(Side::Sell, 50_000.0),
            busy_snapshot(),
        )]),
    );
    assert!(sell.is_empty(), "large_trade accepts buys only");

    let on_price = evaluate(&task, &frame(vec![event(T0, price(), busy_snapshot())]));
    assert!(on_price.is_empty(), "large_trade holds only on a trade");

    let mut flat = busy_snapshot();
    flat.price = Some(101.0);
    let flat_price = evaluate(
        &task,
        &frame(vec![event(T0, trade(Side::Buy, 50_000.0), flat)]),
    );
    assert!(flat_price.is_empty(), "price rose 1% only");
}

#[test]
fn and_judges_price_events_without_large_trade() {
    let rules = TokenRules {
        large_trade: None,
        ..all_rules()
    };
    let alerts = evaluate(
        &task(rules, TriggerLogic::And),
        &frame(vec![event(T0, price(), busy_snapshot())]),
    );
    assert_eq!(alert_types(&alerts), vec![AlertType::Composite]);
    assert_eq!(alerts[0].findings.len(), 3);
}

fn large_trade_task(cooldown_sec: u32) -> TaskSpec {
    let rules = TokenRules {
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: 10_000.0,
        }),
        cooldown_sec,
        ..no_rules()
    };
    task(rules, TriggerLogic::Or)
}

fn big_trade_at(time_ms: i64) -> Event {
    event(time_ms, trade(Side::Buy, 20_000.0), snapshot(window()))
}

#[test]
fn one_alert_per_cooldown_bucket_within_a_frame() {
    let task = large_trade_task(300);
    let frame = frame(vec![
        big_trade_at(T0),
        big_trade_at(T0 + 1_000),
        big_trade_at(T0 + 299_999),
        big_trade_at(T0 + 300_000),
    ]);
    let alerts = evaluate(&task, &frame);

    let bucket = T0 / 1000 / 300;
    let ids: Vec<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            format!("{TASK_ID}:{TOKEN}:large_trade:{bucket}"),
            format!("{TASK_ID}:{TOKEN}:large_trade:{}", bucket + 1),
        ]
    );
    assert_eq!(
        alerts[0].event_time_ms, T0,
        "the first event of a bucket raises its alert"
    );
    assert_eq!(alerts[1].event_time_ms, T0 + 300_000);
}

#[test]
fn cooldown_length_sets_the_bucket() {
    for (cooldown_sec, offset_ms, same_bucket) in [
        (60, 59_999, true),
        (60, 60_000, false),
        (1, 999, true),
        (1, 1_000, false),
    ] {
        let task = large_trade_task(cooldown_sec);
        let alerts = evaluate(
            &task,
            &frame(vec![big_trade_at(T0), big_trade_at(T0 + offset_ms)]),
        );
        let expected = if same_bucket { 1 } else { 2 };
        assert_eq!(
            alerts.len(),
            expected,
            "cooldown {cooldown_sec}s, second trade after {offset_ms} ms"
        );
    }
}

#[test]
fn ids_stable_across_re_evaluation() {
    let task = task(all_rules(), TriggerLogic::Or);
    let events = vec![
        event(T0, trade(Side::Buy, 50_000.0), busy_snapshot()),
        event(T0 + 5_000, price(), busy_snapshot()),
    ];
    let whole = evaluate(&task, &frame(events.clone()));
    let again = evaluate(&task, &frame(events.clone()));
    assert_eq!(whole, again);

    // The same events split over two frames (as after a coalescing change in ingest) raise
    // the same ids, which the alerts stream then stores once.
    let mut split: Vec<String> = evaluate(&task, &frame(events[..1].to_vec()))
        .into_iter()
        .chain(evaluate(&task, &frame(events[1..].to_vec())))
        .map(|a| a.id)
        .collect();
    let mut ids: Vec<String> = whole.into_iter().map(|a| a.id).collect();
    split.sort();
    ids.sort();
    assert_eq!(split, ids);
}

#[test]
fn alert_id_format() {
    assert_eq!(
        alert_id(5, "0xabc", AlertType::VolumeChange, 1_700_000_123_456, 300),
        "5:0xabc:volume_change:5666667"
    );
    assert_eq!(
        alert_id(5, "0xabc", AlertType::LargeTrade, 999, 0),
        "5:0xabc:large_trade:0"
    );
}

#[test]
fn alert_carries_config_batch_target_and_market() {
    let task = task(all_rules(), TriggerLogic::Or);
    let target = TargetSpec {
        target_id: 3,
        address: TOKEN.into(),
        pair_address: None,
        token_name: Some("Wrapped Ether".into()),
        token_symbol: Some("WETH".into()),
        market_cap: Some(1.0),
        source: None,
        batch_order: 0,
    };
    let alerts = evaluate_with_targets(
        &task,
        &frame(vec![event(T0, trade(Side::Buy, 50_000.0), busy_snapshot())]),
        |r| (r.target_id == 3).then_some(&target),
    );
    let alert = &alerts[0];

    assert_eq!(alert.alert_type, AlertType::LargeTrade);
    assert_eq!(alert.v, MESSAGE_VERSION);
    assert_eq!(
        (alert.task_id, alert.config_id, alert.config_version),
        (TASK_ID, 11, 4)
    );
    assert_eq!(alert.batch_id, Some(BATCH_ID));
    assert_eq!(alert.target_id, Some(3));
    assert_eq!(alert.target_value, TOKEN);
    assert_eq!(alert.chain, Chain::Eth);
    assert_eq!(alert.state, AlertState::Confirmed);
    assert_eq!(alert.token_name.as_deref(), Some("Wrapped Ether"));
    assert_eq!(alert.token_symbol.as_deref(), Some("WETH"));
    assert_eq!(alert.event_time_ms, T0);
    assert_eq!(alert.price, Some(110.0));
    assert_eq!(
        alert.market_cap,
        Some(5e9),
        "the snapshot's market cap wins over the table's"
    );
    assert_eq!(alert.findings[0].reason, "buy of $50000.00 (>= $10000)");

    let trade = AlertFacts::of(alert).trade.expect("trade facts");
    assert_eq!(trade.side, Side::Buy);
    assert_eq!(trade.tx_hash.as_deref(), Some("0xfeed"));

    let volume = alerts
        .iter()
        .find(|a| a.alert_type == AlertType::VolumeChange)
        .expect("volume alert");
    assert_eq!(
        volume.first_event_time_ms,
        Some(T0 - 45_000),
        "window start"
    );
}

#[test]
fn every_alert_carries_price_change_and_volume() {
    let task = task(all_rules(), TriggerLogic::Or);
    let mut snapshot = busy_snapshot();
    snapshot.windows.push(WindowStats {
        window_sec: 600,
        start_price: Some(88.0),
        volume_usd: 900_000.0,
        ..window()
    });
    let alerts = evaluate(
        &task,
        &frame(vec![event(T0, trade(Side::Buy, 50_000.0), snapshot)]),
    );
    assert_eq!(alerts.len(), 3);

    for alert in &alerts {
        let market = AlertFacts::of(alert).market.expect("market facts");
        let (window_sec, change_pct, volume_usd) = match alert.alert_type {
            // A large trade has no window: the longest window of the snapshot is used.
            AlertType::LargeTrade => (600, (110.0 - 88.0) / 88.0 * 100.0, 900_000.0),
            _ => (WINDOW, 10.0, 200_000.0),
        };
        assert_eq!(market.window_sec, window_sec, "{}", alert.alert_type);
        let observed_change = market.price_change_pct.expect("price change");
        assert!(
            (observed_change - change_pct).abs() < 1e-9,
            "{}: {observed_change}",
            alert.alert_type
        );
        assert_eq!(market.volume_usd, volume_usd, "{}", alert.alert_type);
    }
}

#[test]
fn market_facts_without_start_price_have_no_change() {
    let snapshot = snapshot(WindowStats {
        volume_usd: 5.0,
        ..window()
    });
    let market = market_facts(&snapshot, Some(WINDOW)).expect("the window exists");
    assert_eq!(market.price_change_pct, None);
    assert_eq!(market.volume_usd, 5.0);
    assert_eq!(market_facts(&TokenSnapshot::default(), None), None);
}

#[test]
fn unknown_target_has_no_names() {
    let alerts = evaluate(&large_trade_task(300), &frame(vec![big_trade_at(T0)]));
    assert_eq!(alerts[0].token_symbol, None);
    assert_eq!(alerts[0].token_name, None);
}

#[test]
fn block_task_ignores_trade_events() {
    let rules = Rules::Block(BlockRules {
        new_blocks: Some(NewBlocksRule {
            interval_threshold_sec: 1.0,
        }),
        cooldown_sec: 300,
        ..BlockRules::default()
    });
    let alerts = evaluate(
        &task_with(rules, TriggerLogic::Or),
        &frame(vec![big_trade_at(T0)]),
    );
    assert!(alerts.is_empty());
}

#[test]
fn task_without_config_raises_nothing() {
    let mut task = large_trade_task(300);
    task.config = None;
    assert!(evaluate(&task, &frame(vec![big_trade_at(T0)])).is_empty());
}

#[test]
fn event_without_snapshot_is_skipped() {
    let mut bare = big_trade_at(T0);
    bare.snapshot = None;
    let alerts = evaluate(
        &large_trade_task(300),
        &frame(vec![bare, big_trade_at(T0 + 300_000)]),
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].event_time_ms, T0 + 300_000);
}
