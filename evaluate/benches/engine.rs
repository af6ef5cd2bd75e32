//! The rule engine: decoding a frame and judging it, and each rule on its own.
//!
//! - `decode_and_judge_loadgen`: what evaluate does per frame without I/O. The frame holds trade
//!   events as ingest publishes them, judged against the config of `devkit loadgen`
//!   (`large_trade` at 100,000 USD, which 1 % of the trades reach, plus `volume` and
//!   `cumulative_buy` with thresholds no trade reaches).
//! - `rule/<rule>/<case>`: one rule alone on a frame of 64 events of the kind the rule judges,
//!   `quiet` when no event reaches the threshold and `fires` when every event raises an alert
//!   (the cost of building alerts included). `and_composite` judges three rules with AND.
//!
//! `cargo bench -p monitor-evaluate --bench engine`

#![allow(clippy::expect_used)] // The fixed benchmark data always encodes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monitor_core::codec;
use monitor_core::messages::{
    Chain, ConfigSpec, Event, EventFrame, EventKind, Holders, Price, Side, TargetRef, TaskSpec,
    TaskType, TokenSnapshot, Trade, WindowStats, MESSAGE_VERSION,
};
use monitor_core::rules::{
    CumulativeBuyRule, HolderChangeRule, LargeTradeRule, PriceChangeRule, Rules, SideFilter,
    TokenRules, TopHoldersRule, TriggerLogic, VolumeRule,
};
use monitor_evaluate::engine::evaluate;

/// The allocator of the evaluate binary, so that the figures are the stage's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LARGE_TRADE_USD: f64 = 100_000.0;
const UNREACHABLE_USD: f64 = 1e15;
const RULE_FRAME_EVENTS: usize = 64;

fn no_rules() -> TokenRules {
    TokenRules {
        price_change: None,
        volume: None,
        holder_change: None,
        large_trade: None,
        cumulative_buy: None,
        top_holders: None,
        cooldown_sec: 1,
    }
}

fn task(rules: TokenRules, trigger_logic: TriggerLogic) -> TaskSpec {
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id: 7,
        name: "bench".to_owned(),
        task_type: TaskType::Batch,
        chain: Chain::Eth,
        epoch: 1,
        config: Some(ConfigSpec {
            config_id: 3,
            version: 1,
            name: "bench rules".to_owned(),
            trigger_logic,
            rules: Rules::Token(rules),
        }),
        batches: Vec::new(),
        config_error: None,
        published_ms: 0,
    }
}

/// The rules of `devkit loadgen`: only `large_trade` can fire.
fn loadgen_rules() -> TokenRules {
    TokenRules {
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: LARGE_TRADE_USD,
        }),
        volume: Some(VolumeRule {
            window_sec: 300,
            min_volume_usd: UNREACHABLE_USD,
        }),
        cumulative_buy: Some(CumulativeBuyRule {
            window_sec: 60,
            min_usd: UNREACHABLE_USD,
        }),
        ..no_rules()
    }
}

/// Window figures; `level` scales the sums, prices and holder counts a rule compares.
fn window(window_sec: u32, level: f64) -> WindowStats {
    WindowStats {
        window_sec,
        start_time_ms: Some(1_700_000_000_000),
        start_price: Some(1.0),
        high: Some(1.0 + level),
        low: Some(1.0),
        volume_usd: 10_000.0 * level,
        buy_usd: 6_000.0 * level,
        sell_usd: 4_000.0 * level,
        trades: 100,
        start_holders: Some(1_000),
    }
}

/// An event of target `index` carrying `kind` and a snapshot at `level`.
fn event(index: usize, kind: EventKind, level: f64) -> Event {
    let time_ms = 1_700_000_000_000 + index as i64;
    Event {
        source_time_ms: time_ms,
        ingest_time_ms: time_ms + 1,
        target: Some(TargetRef {
            target_id: index as u64 + 1,
            address: format!("0x10ad{index:036x}"),
        }),
        kind,
        snapshot: Some(TokenSnapshot {
            price: Some(1.0 + level / 10.0),
            market_cap: Some(1_000_000.0),
            holders: Some(1_000 + (level * 100.0) as u64),
            top_share_pct: Some(8.0 * level),
            windows: vec![window(60, level), window(300, level)],
            ..TokenSnapshot::default()
        }),
    }
}

fn trade(index: usize, volume_usd: f64) -> EventKind {
    EventKind::Trade(Trade {
        side: if index.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        },
        volume_usd,
        price_usd: Some(1.0),
        tx_hash: Some(format!("0x{index:064x}")),
        owner: Some(format!("0x{index:040x}")),
    })
}

fn price() -> EventKind {
    EventKind::Price(Price {
        open: 1.0,
        high: 1.2,
        low: 0.9,
        close: 1.1,
        volume_usd: None,
    })
}

fn holders() -> EventKind {
    EventKind::Holders(Holders {
        holders: Some(1_100),
        top_share_pct: Some(40.0),
        top_n: Some(10),
    })
}

fn frame(events: Vec<Event>) -> EventFrame {
    EventFrame {
        v: MESSAGE_VERSION,
        task_id: 7,
        batch_id: Some(42),
        epoch: 1,
        chain: Chain::Eth,
        producer: "ingest-host-4242".to_owned(),
        seq: 1,
        events,
    }
}

/// Trades of the load generator: one in a hundred is large.
fn loadgen_frame(events: usize) -> EventFrame {
    frame(
        (0..events)
            .map(|i| {
                let volume = if i % 100 == 50 { 150_000.0 } else { 1_234.5 };
                event(i, trade(i, volume), 1.0)
            })
            .collect(),
    )
}

fn decode_and_judge(c: &mut Criterion) {
    let task = task(loadgen_rules(), TriggerLogic::Or);
    let mut group = c.benchmark_group("decode_and_judge_loadgen");
    for events in [1, 256] {
        let bytes = codec::encode(&loadgen_frame(events)).expect("the frame encodes");
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(BenchmarkId::new("events", events), &bytes, |b, bytes| {
            b.iter(|| {
                let frame: EventFrame = codec::decode(black_box(bytes)).expect("the frame decodes");
                evaluate(&task, &frame)
            })
        });
    }
    group.finish();
}

/// One rule's benchmark: its rules, and the kind of event it judges.
struct RuleCase {
    name: &'static str,
    rules: TokenRules,
    trigger_logic: TriggerLogic,
    kind: fn(usize, bool) -> EventKind,
}

fn rule_cases() -> Vec<RuleCase> {
    let trade_kind: fn(usize, bool) -> EventKind = |i, fires| {
        trade(
            i,
            if fires {
                2.0 * LARGE_TRADE_USD
            } else {
                1_000.0
            },
        )
    };
    vec![
        RuleCase {
            name: "large_trade",
            rules: TokenRules {
                large_trade: Some(LargeTradeRule {
                    side: SideFilter::Any,
                    min_usd: LARGE_TRADE_USD,
                }),
                ..no_rules()
            },
            trigger_logic: TriggerLogic::Or,
            kind: trade_kind,
        },
        RuleCase {
            name: "volume",
            rules: TokenRules {
                volume: Some(VolumeRule {
                    window_sec: 300,
                    min_volume_usd: 50_000.0,
                }),
                ..no_rules()
            },
            trigger_logic: TriggerLogic::Or,
            kind: trade_kind,
        },
        RuleCase {
            name: "cumulative_buy",
            rules: TokenRules {
                cumulative_buy: Some(CumulativeBuyRule {
                    window_sec: 60,
                    min_usd: 30_000.0,
                }),
                ..no_rules()
            },
            trigger_logic: TriggerLogic::Or,
            kind: trade_kind,
        },
        RuleCase {
            name: "price_change",
            rules: TokenRules {
                price_change: Some(PriceChangeRule {
                    window_sec: 60,
                    rise_pct: Some(25.0),
                    fall_pct: Some(25.0),
                }),
                ..no_rules()
            },
            trigger_logic: TriggerLogic::Or,
            kind: |_, _| price(),
        },
        RuleCase {
            name: "holder_change",
            rules: TokenRules {
                holder_change: Some(HolderChangeRule {
                    window_sec: 300,
                    min_change_pct: 25.0,
                    min_holders: 0,
                }),
                ..no_rules()
            },
            trigger_logic: TriggerLogic::Or,
            kind: |_, _| holders(),
        },
        RuleCase {
            name: "top_holders",
            rules: TokenRules {
                top_holders: Some(TopHoldersRule {
                    top_n: 10,
                    threshold_pct: 75.0,
                }),
                ..no_rules()
            },
            trigger_logic: TriggerLogic::Or,
            kind: |_, _| holders(),
        },
        RuleCase {
            name: "and_composite",
            rules: TokenRules {
                large_trade: Some(LargeTradeRule {
                    side: SideFilter::Any,
                    min_usd: LARGE_TRADE_USD,
                }),
                volume: Some(VolumeRule {
                    window_sec: 300,
                    min_volume_usd: 50_000.0,
                }),
                cumulative_buy: Some(CumulativeBuyRule {
                    window_sec: 60,
                    min_usd: 30_000.0,
                }),
                ..no_rules()
            },
            trigger_logic: TriggerLogic::And,
            kind: trade_kind,
        },
    ]
}

/// Snapshot level of the two cases: at 1 every figure stays under the thresholds of
/// [`rule_cases`], at 10 every figure reaches them.
fn level(fires: bool) -> f64 {
    if fires {
        10.0
    } else {
        1.0
    }
}

fn rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("rule");
    group.throughput(Throughput::Elements(RULE_FRAME_EVENTS as u64));
    for case in rule_cases() {
        let task = task(case.rules.clone(), case.trigger_logic);
        for (label, fires) in [("quiet", false), ("fires", true)] {
            let frame = frame(
                (0..RULE_FRAME_EVENTS)
                    .map(|i| event(i, (case.kind)(i, fires), level(fires)))
                    .collect(),
            );
            let expected = if fires { RULE_FRAME_EVENTS } else { 0 };
            assert_eq!(
                evaluate(&task, &frame).len(),
                expected,
                "rule {} case {label} raises the wrong number of alerts",
                case.name
            );
            group.bench_with_input(BenchmarkId::new(case.name, label), &frame, |b, frame| {
                b.iter(|| evaluate(&task, black_box(frame)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decode_and_judge, rules);
criterion_main!(benches);
