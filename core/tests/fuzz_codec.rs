//! Fuzzing of [`monitor_core::codec::decode`], which reads every message that crosses NATS.
//!
//! Inputs are random bytes and valid encodings of each message type with bytes flipped, cut
//! short or inserted. Decoding must return a value or an error and never panic. MessagePack
//! length prefixes that announce gigabytes must fail without allocating them, and input over
//! `limits::MAX_MESSAGE_BYTES` is rejected before decoding. The short runs go with every
//! `cargo test`; `scripts/fuzz` runs the `#[ignore]`d long ones with 100,000 cases.

#![allow(clippy::expect_used)] // A seed that does not encode is a broken test.

#[path = "../../tests/src/fuzz.rs"]
#[allow(dead_code)]
mod fuzz;

use std::time::{Duration, Instant};

use monitor_core::codec::{decode, encode, CodecError};
use monitor_core::limits::MAX_MESSAGE_BYTES;
use monitor_core::messages::*;
use proptest::prelude::*;

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
    vec![
        encode(&frame).expect("a frame encodes"),
        encode(&batch).expect("a batch spec encodes"),
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

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn decode_never_panics(bytes in fuzz::bytes_from(seeds())) {
        decode_all(&bytes);
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn decode_never_panics_long(bytes in fuzz::bytes_from(seeds())) {
        decode_all(&bytes);
    }
}

#[test]
fn four_gib_length_prefixes_fail_fast() {
    for bytes in seeds().into_iter().skip(2) {
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
