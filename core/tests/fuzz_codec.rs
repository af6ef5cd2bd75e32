//! Fuzzing of [`monitor_core::codec::decode`], which reads every message that crosses NATS.
//!
//! Inputs are random bytes and valid encodings of each message type with bytes flipped, cut
//! short or inserted. Decoding must return a value or an error and never panic. MessagePack
//! length prefixes that announce gigabytes must fail without allocating them, and input over
//! `limits::MAX_MESSAGE_BYTES` is rejected before decoding. The short runs go with every
//! `cargo test`; `scripts/fuzz` runs the `#[ignore]`d long ones with 100,000 cases.
//!
//! Event frames have a direct reader that runs before serde. Whenever it returns a frame,
//! serde must decode the same bytes to the same frame: checked on random frames of every
//! shape the reader handles, and on damaged encodings.

#![allow(clippy::expect_used)] // A seed that does not encode is a broken test.

#[path = "../../tests/src/fuzz.rs"]
#[allow(dead_code)]
mod fuzz;

use std::time::{Duration, Instant};

use monitor_core::codec::{decode, encode, CodecError, Message};
use monitor_core::limits::MAX_MESSAGE_BYTES;
use monitor_core::messages::*;
use proptest::prelude::*;
use proptest::{collection, option};

fn trade_event(n: i64) -> Event {
    Event {
        source_time_ms: 1_675_296_000_000 + n,
        ingest_time_ms: 1_675_296_000_010 + n,
        target: Some(TargetRef {
            target_id: 3,
            address: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
        }),
        kind: EventKind::Trade(Trade {
            side: Side::Sell,
            volume_usd: 1650.25,
            price_usd: Some(1650.0),
            tx_hash: Some("0xabc".into()),
            owner: None,
        }),
        snapshot: Some(TokenSnapshot::default()),
    }
}

fn price_event() -> Event {
    Event {
        kind: EventKind::Price(Price {
            open: 1650.0,
            high: 1700.5,
            low: 1600.25,
            close: 1690.0,
            volume_usd: Some(2.5e6),
        }),
        snapshot: Some(TokenSnapshot {
            price: Some(1690.0),
            windows: vec![WindowStats {
                window_sec: 60,
                start_time_ms: Some(1_675_295_940_000),
                start_price: Some(1650.0),
                high: Some(1700.5),
                low: Some(1600.25),
                volume_usd: 2.5e6,
                buy_usd: 1.5e6,
                sell_usd: 1e6,
                trades: 4_000,
                start_holders: Some(12),
            }],
            ..TokenSnapshot::default()
        }),
        ..trade_event(1)
    }
}

fn holders_event() -> Event {
    Event {
        kind: EventKind::Holders(Holders {
            holders: Some(70_000),
            top_share_pct: Some(41.5),
            top_n: None,
        }),
        ..trade_event(2)
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let frame = EventFrame {
        v: MESSAGE_VERSION,
        task_id: 1,
        batch_id: Some(7),
        epoch: 2,
        chain: Chain::Eth,
        producer: "host-1".into(),
        seq: 9,
        events: (0..3).map(trade_event).collect(),
    };
    let batch = BatchSpec {
        v: MESSAGE_VERSION,
        batch_id: 7,
        task_id: 1,
        epoch: 2,
        batch_no: 1,
        status: BatchStatus::Running,
        targets: vec![TargetSpec {
            target_id: 3,
            address: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
            pair_address: None,
            token_name: Some("Wrapped Ether".into()),
            token_symbol: Some("WETH".into()),
            market_cap: Some(1e9),
            source: None,
            batch_order: 0,
        }],
    };
    let candles = EventFrame {
        events: vec![price_event(), holders_event()],
        ..frame.clone()
    };
    vec![
        encode(&frame).expect("a frame encodes"),
        encode(&batch).expect("a batch spec encodes"),
        encode(&candles).expect("a frame encodes"),
        // Length prefixes announcing 4 GiB: array 32, map 32, str 32, bin 32.
        vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'v'],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'x'],
        vec![0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],
    ]
}

/// Decodes `bytes` as every message type; a panic fails the property.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<EventFrame>(bytes);
    let _ = decode::<TaskSpec>(bytes);
    let _ = decode::<BatchSpec>(bytes);
    let _ = decode::<Alert>(bytes);
    let _ = decode::<StatusMessage>(bytes);
}

/// When the direct reader returns a frame, serde reads the same one from the same bytes.
/// Frames are compared as encodings, so that NaN equals NaN.
fn direct_reader_agrees_with_serde(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(direct) = EventFrame::read_direct(bytes) {
        let serde: EventFrame = rmp_serde::from_slice(bytes).map_err(|error| {
            TestCaseError::fail(format!(
                "serde rejects what the direct reader read: {error}"
            ))
        })?;
        prop_assert_eq!(
            encode(&direct).expect("encodes"),
            encode(&serde).expect("encodes")
        );
    }
    Ok(())
}

fn text() -> impl Strategy<Value = String> {
    ".{0,48}"
}

fn window() -> impl Strategy<Value = WindowStats> {
    (
        (
            any::<u32>(),
            option::of(any::<i64>()),
            option::of(any::<f64>()),
        ),
        (
            option::of(any::<f64>()),
            option::of(any::<f64>()),
            any::<f64>(),
        ),
        (
            any::<f64>(),
            any::<f64>(),
            any::<u32>(),
            option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                (window_sec, start_time_ms, start_price),
                (high, low, volume_usd),
                (buy_usd, sell_usd, trades, start_holders),
            )| {
                WindowStats {
                    window_sec,
                    start_time_ms,
                    start_price,
                    high,
                    low,
                    volume_usd,
                    buy_usd,
                    sell_usd,
                    trades,
                    start_holders,
                }
            },
        )
}

fn snapshot() -> impl Strategy<Value = TokenSnapshot> {
    (
        (
            option::of(any::<f64>()),
            option::of(any::<f64>()),
            option::of(any::<f64>()),
        ),
        (option::of(any::<u64>()), option::of(any::<f64>())),
        collection::vec(window(), 0..4),
    )
        .prop_map(
            |((price, market_cap, liquidity), (holders, top_share_pct), windows)| TokenSnapshot {
                price,
                market_cap,
                liquidity,
                holders,
                top_share_pct,
                windows,
            },
        )
}

fn kind() -> impl Strategy<Value = EventKind> {
    let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
    prop_oneof![
        (
            side,
            any::<f64>(),
            option::of(any::<f64>()),
            option::of(text()),
            option::of(text())
        )
            .prop_map(
                |(side, volume_usd, price_usd, tx_hash, owner)| EventKind::Trade(Trade {
                    side,
                    volume_usd,
                    price_usd,
                    tx_hash,
                    owner,
                })
            ),
        (any::<[f64; 4]>(), option::of(any::<f64>())).prop_map(
            |([open, high, low, close], volume_usd)| {
                EventKind::Price(Price {
                    open,
                    high,
                    low,
                    close,
                    volume_usd,
                })
            }
        ),
        (
            option::of(any::<u64>()),
            option::of(any::<f64>()),
            option::of(any::<u32>())
        )
            .prop_map(
                |(holders, top_share_pct, top_n)| EventKind::Holders(Holders {
                    holders,
                    top_share_pct,
                    top_n,
                })
            ),
        (any::<u64>(), text(), option::of(any::<f64>())).prop_map(
            |(number, hash, interval_sec)| {
                EventKind::Block(Block {
                    number,
                    hash,
                    interval_sec,
                    status: ChainStatus::Confirmed,
                })
            }
        ),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        any::<i64>(),
        any::<i64>(),
        option::of(
            (any::<u64>(), text())
                .prop_map(|(target_id, address)| TargetRef { target_id, address }),
        ),
        kind(),
        option::of(snapshot()),
    )
        .prop_map(
            |(source_time_ms, ingest_time_ms, target, kind, snapshot)| Event {
                source_time_ms,
                ingest_time_ms,
                target,
                kind,
                snapshot,
            },
        )
}

fn frame() -> impl Strategy<Value = EventFrame> {
    (
        (
            any::<u16>(),
            any::<u64>(),
            option::of(any::<u64>()),
            any::<u32>(),
        ),
        (
            prop_oneof![Just(Chain::Sol), Just(Chain::Eth), Just(Chain::Bsc)],
            text(),
            any::<u64>(),
        ),
        collection::vec(event(), 0..6),
    )
        .prop_map(
            |((v, task_id, batch_id, epoch), (chain, producer, seq), events)| EventFrame {
                v,
                task_id,
                batch_id,
                epoch,
                chain,
                producer,
                seq,
                events,
            },
        )
}

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn decode_never_panics(bytes in fuzz::bytes_from(seeds())) {
        decode_all(&bytes);
    }

    #[test]
    fn direct_reader_reads_encoded_frames(frame in frame()) {
        let bytes = encode(&frame).expect("a frame encodes");
        let direct = EventFrame::read_direct(&bytes);
        prop_assert!(direct.is_some(), "the direct reader left an encoded frame to serde");
        direct_reader_agrees_with_serde(&bytes)?;
    }

    #[test]
    fn direct_reader_on_damaged_frames(bytes in fuzz::bytes_from(seeds())) {
        direct_reader_agrees_with_serde(&bytes)?;
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn decode_never_panics_long(bytes in fuzz::bytes_from(seeds())) {
        decode_all(&bytes);
    }

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn direct_reader_on_damaged_frames_long(bytes in fuzz::bytes_from(seeds())) {
        direct_reader_agrees_with_serde(&bytes)?;
    }
}

#[test]
fn four_gib_length_prefixes_fail_fast() {
    for bytes in seeds().into_iter().skip(3) {
        let started = Instant::now();
        let error = decode::<EventFrame>(&bytes).expect_err("a 4 GiB prefix on 6 bytes is invalid");
        assert!(matches!(error, CodecError::Decode { .. }), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{bytes:02x?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn message_over_limit_is_rejected() {
    let mut bytes = seeds().remove(0);
    bytes.resize(MAX_MESSAGE_BYTES + 1, 0);
    let error = decode::<EventFrame>(&bytes).expect_err("oversized input is rejected");
    assert_eq!(
        error.to_string(),
        format!(
            "event frame of {} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes",
            MAX_MESSAGE_BYTES + 1
        )
    );
}
