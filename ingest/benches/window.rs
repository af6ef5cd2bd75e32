//! Ingest's work per trade, without I/O: parsing the feed frame, updating the windows, and
//! building the event with its snapshot.
//!
//! - `window/observe` and `window/observe_and_stats`: one target's windows of 60 s and 300 s
//!   (the lengths of the `devkit loadgen` config) taking a trade every 10 ms of source time,
//!   with and without reading the figures of every window afterwards, as each event does.
//! - `targets/on_trade`: a batch of 99 targets turning parsed trades into events.
//! - `birdeye/parse_trade`: parsing a `TXS_DATA` frame in the simple layout.
//!
//! `cargo bench -p monitor-ingest --bench window`

#![allow(clippy::expect_used)] // The fixed benchmark frame always parses.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use monitor_core::messages::{Side, TargetSpec};
use monitor_ingest::birdeye::{parse_frame, FeedMessage, TradeData};
use monitor_ingest::target::Targets;
use monitor_ingest::window::{Observation, TargetWindows};

const WINDOW_LENGTHS: [u32; 2] = [60, 300];
const T0: i64 = 1_700_000_000_000;
const BATCH_SIZE: usize = 99;

/// A trade frame as `devkit loadgen` and feed-replay send it.
const TXS_FRAME: &str = r#"{"type":"TXS_DATA","data":{"blockUnixTime":1700000000,"blockUnixTimeMs":1700000000123,"owner":"0x00000000000000000000000000000a11ce00000007","source":"uniswap_v3","txHash":"0x10ad03000000000000000000000000000000000000000007000000000bebc200","side":"buy","tokenAddress":"0x10ad000000000000000000000000000000000007","alias":null,"isTradeOnBe":false,"platform":"uniswap","volumeUSD":1234.56,"from":{"symbol":"USDT","decimals":6,"address":"0xdac17f958d2ee523a2206206994597c13d831ec7","amount":1234560000,"uiAmount":1234.56,"price":1.0,"nearestPrice":1.0,"changeAmount":-1234560000,"uiChangeAmount":-1234.56,"typeSwap":"from"},"to":{"symbol":"LG7","decimals":18,"address":"0x10ad000000000000000000000000000000000007","amount":1003707317073170700000,"uiAmount":1003.7073170731707,"price":1.23,"nearestPrice":1.23,"changeAmount":1003707317073170700000,"uiChangeAmount":1003.7073170731707,"typeSwap":"to"},"tokenPrice":1.23}}"#;

fn trade(i: usize) -> Observation {
    Observation::Trade {
        side: if i.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        },
        volume_usd: 1_000.0 + i as f64,
    }
}

fn window(c: &mut Criterion) {
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(1));
    group.bench_function("observe", |b| {
        let mut windows = TargetWindows::new(&WINDOW_LENGTHS);
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            windows.observe(T0 + i as i64 * 10, black_box(trade(i)))
        })
    });
    group.bench_function("observe_and_stats", |b| {
        let mut windows = TargetWindows::new(&WINDOW_LENGTHS);
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            windows.observe(T0 + i as i64 * 10, black_box(trade(i)));
            windows.stats()
        })
    });
    group.finish();
}

fn address(index: usize) -> String {
    format!("0x10ad{index:036x}")
}

fn targets(c: &mut Criterion) {
    let specs: Vec<TargetSpec> = (0..BATCH_SIZE)
        .map(|i| TargetSpec {
            target_id: i as u64 + 1,
            address: address(i),
            pair_address: None,
            token_name: Some(format!("Loadgen token {i}")),
            token_symbol: Some(format!("LG{i}")),
            market_cap: Some(1_000_000.0),
            source: Some("birdeye".to_owned()),
            batch_order: i as u32,
        })
        .collect();
    let trades: Vec<TradeData> = (0..BATCH_SIZE)
        .map(|i| TradeData {
            address: address(i),
            side: Side::Buy,
            volume_usd: 1_234.5,
            price_usd: Some(1.23),
            time_ms: T0,
            tx_hash: Some(format!("0x{i:064x}")),
            owner: Some(format!("0x{i:040x}")),
        })
        .collect();

    let mut group = c.benchmark_group("targets");
    group.throughput(Throughput::Elements(1));
    group.bench_function("on_trade", |b| {
        let mut targets = Targets::new(&specs, &WINDOW_LENGTHS);
        let mut i = 0usize;
        let mut trade = trades[0].clone();
        b.iter(|| {
            i += 1;
            trade.clone_from(&trades[i % BATCH_SIZE]);
            trade.time_ms = T0 + i as i64;
            targets.on_trade(black_box(&trade), T0 + i as i64)
        })
    });
    group.finish();
}

fn birdeye(c: &mut Criterion) {
    let parsed = parse_frame(TXS_FRAME, |_| true).expect("the frame parses");
    assert!(matches!(parsed, FeedMessage::Trades(ref trades) if trades.len() == 1));

    let mut group = c.benchmark_group("birdeye");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_trade", |b| {
        b.iter(|| parse_frame(black_box(TXS_FRAME), |_| true))
    });
    group.finish();
}

criterion_group!(benches, window, targets, birdeye);
criterion_main!(benches);
