//! Throughput of the evaluate hot path: decoding event frames and judging them.
//!
//! Input: the 1,000 recorded Binance ETH/USDT trades of `data/`, each followed by the
//! one-minute candle that `devkit feed-replay` sends after it, so 2,000 events. Every event
//! carries the snapshot ingest would build (windows of 60 s and 300 s, by brute force at set
//! up). The rules are the demo config's (`large_trade`, `cumulative_buy`, `volume`,
//! `price_change`) with trigger logic OR. The events are cut into frames of 1, 64 and 256
//! events and MessagePack-encoded once; each iteration decodes and judges every frame.
//!
//! Time is the CPU time of the benchmark thread (`CLOCK_THREAD_CPUTIME_ID`), not wall time,
//! so the reported throughput is events per second per core even when other processes share
//! the machine.
//!
//! Run: `cargo bench -p monitor-evaluate --bench judge`.
//!
//! NOTE: on the 2-core development machine this measured 2.9 million events per second per
//! core for frames of 256 events and 1.05 million for frames of one event (2026-12-05). Before
//! event frames had a direct reader, rmp-serde decoding took about 90 % of the time and the
//! figure was 0.9 to 1.4 million for frames of 256.

#![allow(clippy::expect_used)] // Set-up failures (missing data file) end the benchmark.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monitor_core::codec;
use monitor_core::messages::{
    BatchRef, BatchStatus, Chain, ConfigSpec, Event, EventFrame, EventKind, Price, TargetRef,
    TaskSpec, TaskType, TokenSnapshot, Trade, WindowStats, MESSAGE_VERSION,
};
use monitor_core::rules::{
    CumulativeBuyRule, LargeTradeRule, PriceChangeRule, Rules, SideFilter, TokenRules,
    TriggerLogic, VolumeRule,
};
use monitor_evaluate::evaluate;
use monitor_tests::recorded::{load_trades, RecordedTrade};
use monitor_tests::workspace_dir;
use nix::time::{clock_gettime, ClockId};

/// The allocator of the `evaluate` binary, so that decoding allocates as it does there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// CPU time of the calling thread, as a criterion measurement.
struct ThreadCpuTime;

/// Formats nanoseconds like wall time does; CPU time has the same unit.
static NANOSECONDS: WallTime = WallTime;

fn thread_cpu_time() -> Duration {
    let time = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("the thread CPU clock");
    Duration::new(time.tv_sec() as u64, time.tv_nsec() as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        NANOSECONDS.formatter()
    }
}

const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
const WINDOWS: [u32; 2] = [60, 300];

fn demo_task() -> TaskSpec {
    let rules = TokenRules {
        price_change: Some(PriceChangeRule {
            window_sec: 300,
            rise_pct: Some(0.02),
            fall_pct: Some(0.02),
        }),
        volume: Some(VolumeRule {
            window_sec: 60,
            min_volume_usd: 2_000_000.0,
        }),
        holder_change: None,
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: 100_000.0,
        }),
        cumulative_buy: Some(CumulativeBuyRule {
            window_sec: 60,
            min_usd: 1_000_000.0,
        }),
        top_holders: None,
        cooldown_sec: 60,
    };
    TaskSpec {
        v: MESSAGE_VERSION,
        task_id: 1,
        name: "bench".into(),
        task_type: TaskType::Smart,
        chain: Chain::Eth,
        epoch: 1,
        config: Some(ConfigSpec {
            config_id: 1,
            version: 1,
            name: "demo".into(),
            trigger_logic: TriggerLogic::Or,
            rules: Rules::Token(rules),
        }),
        batches: vec![BatchRef {
            batch_id: 10,
            batch_no: 1,
            item_count: 1,
            status: BatchStatus::Running,
        }],
        config_error: None,
        published_ms: 0,
    }
}

/// An observation of the recorded stream: a trade, or the candle sent after it.
enum Observation<'t> {
    Trade(&'t RecordedTrade),
    Candle { time_ms: i64, open: f64, close: f64 },
}

impl Observation<'_> {
    fn time_ms(&self) -> i64 {
        match self {
            Observation::Trade(trade) => trade.time_ms,
            Observation::Candle { time_ms, .. } => *time_ms,
        }
    }
}

fn in_window(window_sec: u32, time_ms: i64, end_ms: i64) -> bool {
    let bucket_sec = i64::from(window_sec.div_ceil(64).max(1));
    let buckets = (i64::from(window_sec) + bucket_sec - 1) / bucket_sec;
    let index = |t: i64| t.div_euclid(1000 * bucket_sec);
    let last = index(end_ms);
    (last - buckets + 1..=last).contains(&index(time_ms))
}

fn observations(trades: &[RecordedTrade]) -> Vec<Observation<'_>> {
    let mut out = Vec::with_capacity(trades.len() * 2);
    let mut candle: Option<(i64, f64)> = None;
    for trade in trades {
        let minute_ms = trade.time_ms.div_euclid(60_000) * 60_000;
        let open = match candle {
            Some((time_ms, open)) if time_ms == minute_ms => open,
            _ => trade.price,
        };
        candle = Some((minute_ms, open));
        out.push(Observation::Trade(trade));
        out.push(Observation::Candle {
            time_ms: minute_ms,
            open,
            close: trade.price,
        });
    }
    out
}

fn window(seen: &[Observation<'_>], window_sec: u32, end_ms: i64) -> WindowStats {
    let mut stats = WindowStats {
        window_sec,
        ..WindowStats::default()
    };
    for observation in seen
        .iter()
        .filter(|o| in_window(window_sec, o.time_ms(), end_ms))
    {
        let time_ms = observation.time_ms();
        stats.start_time_ms = Some(stats.start_time_ms.map_or(time_ms, |t| t.min(time_ms)));
        match observation {
            Observation::Trade(trade) => {
                stats.volume_usd += trade.cost;
                stats.trades += 1;
                match trade.side {
                    monitor_core::messages::Side::Buy => stats.buy_usd += trade.cost,
                    monitor_core::messages::Side::Sell => stats.sell_usd += trade.cost,
                }
            }
            Observation::Candle { open, close, .. } => {
                stats.start_price = stats.start_price.or(Some(*open));
                stats.high = Some(stats.high.map_or(*close, |h| h.max(*close)));
                stats.low = Some(stats.low.map_or(*close, |l| l.min(*close)));
            }
        }
    }
    stats
}

/// Builds the 2,000 events with their snapshots.
fn recorded_events() -> Vec<Event> {
    let path = workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv");
    let trades = load_trades(&path).expect("the recorded trades load");
    let observations = observations(&trades);
    let mut price = None;
    (0..observations.len())
        .map(|i| {
            let observation = &observations[i];
            let end_ms = observation.time_ms();
            let kind = match observation {
                Observation::Trade(trade) => EventKind::Trade(Trade {
                    side: trade.side,
                    volume_usd: trade.cost,
                    price_usd: Some(trade.price),
                    tx_hash: Some(format!("0x{:064x}", i)),
                    owner: Some("0x28c6c06298d514db089934071355e5743bf21d60".into()),
                }),
                Observation::Candle { open, close, .. } => {
                    price = Some(*close);
                    EventKind::Price(Price {
                        open: *open,
                        high: open.max(*close),
                        low: open.min(*close),
                        close: *close,
                        volume_usd: None,
                    })
                }
            };
            Event {
                source_time_ms: end_ms,
                ingest_time_ms: end_ms + 3,
                target: Some(TargetRef {
                    target_id: 100,
                    address: WETH.into(),
                }),
                kind,
                snapshot: Some(TokenSnapshot {
                    price,
                    market_cap: Some(2.0e11),
                    liquidity: Some(5.0e8),
                    holders: None,
                    top_share_pct: None,
                    windows: WINDOWS
                        .iter()
                        .map(|&w| window(&observations[..=i], w, end_ms))
                        .collect(),
                }),
            }
        })
        .collect()
}

fn encoded_frames(events: &[Event], frame_len: usize) -> Vec<Vec<u8>> {
    events
        .chunks(frame_len)
        .enumerate()
        .map(|(seq, chunk)| {
            let frame = EventFrame {
                v: MESSAGE_VERSION,
                task_id: 1,
                batch_id: Some(10),
                epoch: 1,
                chain: Chain::Eth,
                producer: "ingest-bench-1".into(),
                seq: seq as u64,
                events: chunk.to_vec(),
            };
            codec::encode(&frame).expect("a frame encodes")
        })
        .collect()
}

fn decode_and_judge(c: &mut Criterion<ThreadCpuTime>) {
    let task = demo_task();
    let events = recorded_events();
    let mut group = c.benchmark_group("decode_and_judge");
    group.throughput(Throughput::Elements(events.len() as u64));
    for frame_len in [1usize, 64, 256] {
        let frames = encoded_frames(&events, frame_len);
        group.bench_with_input(
            BenchmarkId::new("events_per_frame", frame_len),
            &frames,
            |b, frames| {
                b.iter(|| {
                    let mut alerts = 0;
                    for payload in frames {
                        let frame: EventFrame =
                            codec::decode(black_box(payload)).expect("a frame decodes");
                        alerts += evaluate(&task, &frame).len();
                    }
                    black_box(alerts)
                })
            },
        );
    }
    group.finish();
}

/// The two halves of the hot path apart, on frames of 64 events, to see which one dominates.
fn decode_or_judge(c: &mut Criterion<ThreadCpuTime>) {
    let task = demo_task();
    let events = recorded_events();
    let frames = encoded_frames(&events, 64);
    let decoded: Vec<EventFrame> = frames
        .iter()
        .map(|payload| codec::decode(payload).expect("a frame decodes"))
        .collect();
    let mut group = c.benchmark_group("frames_of_64");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for payload in &frames {
                let frame: EventFrame = codec::decode(black_box(payload)).expect("a frame decodes");
                black_box(frame);
            }
        })
    });
    group.bench_function("judge", |b| {
        b.iter(|| {
            let mut alerts = 0;
            for frame in &decoded {
                alerts += evaluate(&task, black_box(frame)).len();
            }
            black_box(alerts)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = decode_and_judge, decode_or_judge
}
criterion_main!(benches);
