//! Property: a replay raises the same alerts as the live run, whatever the frame boundaries.
//!
//! Random event streams of one token (trades, price candles, holder counts) go through a
//! brute-force window model that follows the documented window semantics, which gives every
//! event its snapshot. The stream is then cut into frames twice, at random boundaries. The
//! live run judges each frame of the first cut on its own (as the consumer does) and keeps
//! the first alert of each id (as the alerts stream does). The replay judges the second cut
//! with [`Collector`]. Both must produce the same alerts, with the same ids, in the same
//! order.

use std::collections::HashSet;

use monitor_core::messages::{
    Alert, BatchRef, BatchStatus, Chain, ConfigSpec, Event, EventFrame, EventKind, Holders, Price,
    Side, TargetRef, TaskSpec, TaskType, TokenSnapshot, Trade, WindowStats, MESSAGE_VERSION,
};
use monitor_core::rules::{
    CumulativeBuyRule, HolderChangeRule, LargeTradeRule, PriceChangeRule, Rules, SideFilter,
    TokenRules, TopHoldersRule, TriggerLogic, VolumeRule,
};
use monitor_evaluate::evaluate;
use monitor_evaluate::replay::collect::Collector;
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000;
const TOKEN: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";

/// What one generated event observed.
#[derive(Debug, Clone)]
enum Observed {
    Trade { side: Side, usd: f64 },
    Price { close: f64 },
    Holders { holders: u64, top_share_pct: f64 },
}

fn observed() -> impl Strategy<Value = Observed> {
    prop_oneof![
        3 => (any::<bool>(), 100.0..50_000.0f64).prop_map(|(buy, usd)| Observed::Trade {
            side: if buy { Side::Buy } else { Side::Sell },
            usd,
        }),
        2 => (50.0..150.0f64).prop_map(|close| Observed::Price { close }),
        1 => (100u64..200, 10.0..90.0f64).prop_map(|(holders, top_share_pct)| {
            Observed::Holders { holders, top_share_pct }
        }),
    ]
}

fn window_sec() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![30u32, 60, 90, 300])
}

fn rules() -> impl Strategy<Value = TokenRules> {
    let price = (window_sec(), prop::option::of(1.0..30.0f64), 1.0..30.0f64).prop_map(
        |(window_sec, rise_pct, fall_pct)| PriceChangeRule {
            window_sec,
            rise_pct,
            fall_pct: Some(fall_pct),
        },
    );
    let volume = (window_sec(), 10_000.0..300_000.0f64).prop_map(|(window_sec, min)| VolumeRule {
        window_sec,
        min_volume_usd: min,
    });
    let holder = (window_sec(), 1.0..40.0f64, 0u64..180).prop_map(
        |(window_sec, min_change_pct, min_holders)| HolderChangeRule {
            window_sec,
            min_change_pct,
            min_holders,
        },
    );
    let side = prop::sample::select(vec![SideFilter::Buy, SideFilter::Sell, SideFilter::Any]);
    let large =
        (side, 1_000.0..45_000.0f64).prop_map(|(side, min_usd)| LargeTradeRule { side, min_usd });
    let cumulative = (window_sec(), 10_000.0..200_000.0f64).prop_map(|(window_sec, min_usd)| {
        CumulativeBuyRule {
            window_sec,
            min_usd,
        }
    });
    let top = (1u32..20, 20.0..80.0f64).prop_map(|(top_n, threshold_pct)| TopHoldersRule {
        top_n,
        threshold_pct,
    });
    let cooldown = prop::sample::select(vec![1u32, 10, 60, 300]);
    (
        prop::option::of(price),
        prop::option::of(volume),
        prop::option::of(holder),
        prop::option::of(large),
        prop::option::of(cumulative),
        prop::option::of(top),
        cooldown,
    )
        .prop_map(
            |(
                price_change,
                volume,
                holder_change,
                large_trade,
                cumulative_buy,
                top_holders,
                cooldown_sec,
            )| {
                TokenRules {
                    price_change,
                    volume,
                    holder_change,
                    large_trade,
                    cumulative_buy,
                    top_holders,
                    cooldown_sec,
                }
            },
        )
        .prop_filter("at least one rule", |rules| rules.count() > 0)
}

fn task(rules: TokenRules, trigger_logic: TriggerLogic) -> TaskSpec {
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id: 9,
        name: "property".into(),
        task_type: TaskType::Smart,
        chain: Chain::Eth,
        epoch: 1,
        config: Some(ConfigSpec {
            config_id: 1,
            version: 1,
            name: "random".into(),
            trigger_logic,
            rules: Rules::Token(rules),
        }),
        batches: vec![BatchRef {
            batch_id: 90,
            batch_no: 1,
            item_count: 1,
            status: BatchStatus::Running,
        }],
        config_error: None,
        published_ms: 0,
    }
}

/// Whether `time_ms` falls in the window of `window_sec` seconds ending at `end_ms`: buckets
/// of `ceil(W / 64)` seconds, `ceil(W / b)` of them up to the bucket of `end_ms`.
fn in_window(window_sec: u32, time_ms: i64, end_ms: i64) -> bool {
    let bucket_sec = i64::from(window_sec.div_ceil(64).max(1));
    let buckets = (i64::from(window_sec) + bucket_sec - 1) / bucket_sec;
    let index = |t: i64| t.div_euclid(1000 * bucket_sec);
    let last = index(end_ms);
    (last - buckets + 1..=last).contains(&index(time_ms))
}

/// Builds the events with the snapshot each one carries, by scanning all earlier events.
fn events(stream: &[(i64, Observed)], window_lengths: &[u32]) -> Vec<Event> {
    (0..stream.len())
        .map(|i| {
            let (time_ms, observed) = &stream[i];
            let seen = &stream[..=i];
            let snapshot = TokenSnapshot {
                price: seen.iter().rev().find_map(|(_, o)| match o {
                    Observed::Price { close } => Some(*close),
                    _ => None,
                }),
                holders: seen.iter().rev().find_map(|(_, o)| match o {
                    Observed::Holders { holders, .. } => Some(*holders),
                    _ => None,
                }),
                top_share_pct: seen.iter().rev().find_map(|(_, o)| match o {
                    Observed::Holders { top_share_pct, .. } => Some(*top_share_pct),
                    _ => None,
                }),
                windows: window_lengths
                    .iter()
                    .map(|&w| window_stats(seen, w, *time_ms))
                    .collect(),
                ..TokenSnapshot::default()
            };
            Event {
                source_time_ms: *time_ms,
                ingest_time_ms: *time_ms,
                target: Some(TargetRef {
                    target_id: 1,
                    address: TOKEN.into(),
                }),
                kind: kind(observed),
                snapshot: Some(snapshot),
            }
        })
        .collect()
}

fn window_stats(seen: &[(i64, Observed)], window_sec: u32, end_ms: i64) -> WindowStats {
    let covered: Vec<&(i64, Observed)> = seen
        .iter()
        .filter(|(time_ms, _)| in_window(window_sec, *time_ms, end_ms))
        .collect();
    let mut stats = WindowStats {
        window_sec,
        start_time_ms: covered.iter().map(|(t, _)| *t).min(),
        ..WindowStats::default()
    };
    for (_, observed) in &covered {
        match observed {
            Observed::Trade { side, usd } => {
                stats.volume_usd += usd;
                stats.trades += 1;
                match side {
                    Side::Buy => stats.buy_usd += usd,
                    Side::Sell => stats.sell_usd += usd,
                }
            }
            Observed::Price { close } => {
                stats.start_price = stats.start_price.or(Some(*close));
                stats.high = Some(stats.high.map_or(*close, |h| h.max(*close)));
                stats.low = Some(stats.low.map_or(*close, |l| l.min(*close)));
            }
            Observed::Holders { holders, .. } => {
                stats.start_holders = stats.start_holders.or(Some(*holders));
            }
        }
    }
    stats
}

fn kind(observed: &Observed) -> EventKind {
    match observed {
        Observed::Trade { side, usd } => EventKind::Trade(Trade {
            side: *side,
            volume_usd: *usd,
            price_usd: None,
            tx_hash: None,
            owner: None,
        }),
        Observed::Price { close } => EventKind::Price(Price {
            open: *close,
            high: *close,
            low: *close,
            close: *close,
            volume_usd: None,
        }),
        Observed::Holders {
            holders,
            top_share_pct,
        } => EventKind::Holders(Holders {
            holders: Some(*holders),
            top_share_pct: Some(*top_share_pct),
            top_n: None,
        }),
    }
}

/// Cuts the events into frames after every index whose flag is set.
fn frames(events: &[Event], cuts: &[bool]) -> Vec<EventFrame> {
    let mut frames = Vec::new();
    let mut current = Vec::new();
    for (i, event) in events.iter().enumerate() {
        current.push(event.clone());
        if cuts.get(i).copied().unwrap_or(false) || i + 1 == events.len() {
            frames.push(EventFrame {
                v: MESSAGE_VERSION,
                task_id: 9,
                batch_id: Some(90),
                epoch: 1,
                chain: Chain::Eth,
                producer: "ingest-1".into(),
                seq: frames.len() as u64,
                events: std::mem::take(&mut current),
            });
        }
    }
    frames
}

/// The live run: each frame judged alone, the first alert of each id stored.
fn live_alerts(task: &TaskSpec, frames: &[EventFrame]) -> Vec<Alert> {
    let mut stored_ids = HashSet::new();
    let mut stored = Vec::new();
    for frame in frames {
        for alert in evaluate(task, frame) {
            if stored_ids.insert(alert.id.clone()) {
                stored.push(alert);
            }
        }
    }
    stored
}

fn replayed_alerts(task: &TaskSpec, frames: &[EventFrame]) -> Vec<Alert> {
    let mut collector = Collector::default();
    frames
        .iter()
        .flat_map(|frame| collector.judge(task, frame, |_| None))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replay_alerts_equal_live_alerts(
        stream in prop::collection::vec((0i64..20_000, observed()), 1..120),
        rules in rules(),
        and_logic in any::<bool>(),
        live_cuts in prop::collection::vec(any::<bool>(), 120),
        replay_cuts in prop::collection::vec(prop::bool::weighted(0.1), 120),
    ) {
        let mut time_ms = T0;
        let timed: Vec<(i64, Observed)> = stream
            .into_iter()
            .map(|(gap_ms, observed)| {
                time_ms += gap_ms;
                (time_ms, observed)
            })
            .collect();
        let events = events(&timed, &rules.window_lengths());
        let logic = if and_logic { TriggerLogic::And } else { TriggerLogic::Or };
        let task = task(rules, logic);

        let live = live_alerts(&task, &frames(&events, &live_cuts));
        let replayed = replayed_alerts(&task, &frames(&events, &replay_cuts));

        let live_ids: HashSet<&str> = live.iter().map(|a| a.id.as_str()).collect();
        let replayed_ids: HashSet<&str> = replayed.iter().map(|a| a.id.as_str()).collect();
        prop_assert_eq!(&live_ids, &replayed_ids);
        prop_assert_eq!(live, replayed);
    }
}
