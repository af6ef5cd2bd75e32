//! MessagePack encoding and decoding of event frames, per event.
//!
//! Frames hold trade events as ingest publishes them: a target reference, a transaction hash
//! and owner, and a snapshot with two windows (60 s and 300 s). A frame of one event is what an
//! idle pipeline publishes; frames grow to 256 events under load.
//!
//! `cargo bench -p monitor-core --bench codec`

#![allow(clippy::expect_used)] // The fixed benchmark data always encodes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monitor_core::codec;
use monitor_core::messages::{
    Chain, Event, EventFrame, EventKind, Side, TargetRef, TokenSnapshot, Trade, WindowStats,
    MESSAGE_VERSION,
};

const FRAME_SIZES: [usize; 2] = [1, 256];

fn window(window_sec: u32) -> WindowStats {
    WindowStats {
        window_sec,
        volume_usd: 123_456.78,
        buy_usd: 65_432.1,
        sell_usd: 58_024.68,
        trades: 321,
        ..WindowStats::default()
    }
}

fn trade_event(index: usize) -> Event {
    let time_ms = 1_700_000_000_000 + index as i64;
    Event {
        source_time_ms: time_ms,
        ingest_time_ms: time_ms + 1,
        target: Some(TargetRef {
            target_id: index as u64 + 1,
            address: format!("0x10ad{index:036x}"),
        }),
        kind: EventKind::Trade(Trade {
            side: if index.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            volume_usd: 1_234.56 + index as f64,
            price_usd: Some(1.23),
            tx_hash: Some(format!("0x{index:064x}")),
            owner: Some(format!("0x{index:040x}")),
        }),
        snapshot: Some(TokenSnapshot {
            market_cap: Some(1_000_000.0),
            windows: vec![window(60), window(300)],
            ..TokenSnapshot::default()
        }),
    }
}

fn frame(events: usize) -> EventFrame {
    EventFrame {
        v: MESSAGE_VERSION,
        task_id: 7,
        batch_id: Some(42),
        epoch: 3,
        chain: Chain::Eth,
        producer: "ingest-host-4242".to_owned(),
        seq: 1_000,
        events: (0..events).map(trade_event).collect(),
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_encode");
    for events in FRAME_SIZES {
        let frame = frame(events);
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(BenchmarkId::new("events", events), &frame, |b, frame| {
            b.iter(|| codec::encode(black_box(frame)))
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_decode");
    for events in FRAME_SIZES {
        let bytes = codec::encode(&frame(events)).expect("the benchmark frame encodes");
        group.throughput(Throughput::Elements(events as u64));
        group.bench_with_input(BenchmarkId::new("events", events), &bytes, |b, bytes| {
            b.iter(|| codec::decode::<EventFrame>(black_box(bytes)))
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
