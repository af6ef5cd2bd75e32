//! Fuzzing of [`monitor_ingest::birdeye::parse_frame`], which reads every frame of the Birdeye
//! WebSocket.
//!
//! Inputs are frames of every type built from the protocol's keys (`PRICE_DATA`, `TXS_DATA` in
//! both shapes, `ERROR`, `WELCOME`) with hostile values, truncations, deep nesting and random
//! text. Parsing must never panic, and what it accepts must hold the parser's promises: finite,
//! non-negative volumes and prices, `h >= l`, and times after 1970 and before 2200. The size
//! of a frame is bounded before parsing by the WebSocket reader (`MAX_FRAME_BYTES`), which the
//! hostile-input tests check with a real socket.

use monitor_ingest::birdeye::{parse_frame, FeedMessage};
use monitor_tests::fuzz;
use proptest::prelude::*;

const TYPES: &[&str] = &["PRICE_DATA", "TXS_DATA", "ERROR", "WELCOME", "UNKNOWN", ""];

const KEYS: &[&str] = &[
    "o",
    "h",
    "l",
    "c",
    "v",
    "eventType",
    "type",
    "unixTime",
    "symbol",
    "address",
    "blockUnixTime",
    "blockUnixTimeMs",
    "owner",
    "source",
    "txHash",
    "side",
    "tokenAddress",
    "alias",
    "isTradeOnBe",
    "platform",
    "volumeUSD",
    "from",
    "to",
    "price",
    "nearestPrice",
    "amount",
    "uiAmount",
    "decimals",
    "tokenPrice",
    "pairAddress",
    "message",
];

const WATCHED: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";

const WORDS: &[&str] = &[
    WATCHED,
    "0xC02AAA39B223FE8D0A0E5C4F27EAD9083C756CC2",
    "0xdac17f958d2ee523a2206206994597c13d831ec7",
    "So11111111111111111111111111111111111111112",
    "buy",
    "sell",
    "BUY",
    "swap",
    "ohlcv",
    "1m",
    "WETH",
];

/// Latest time the parser accepts: the year 2200, in milliseconds.
const MAX_TIME_MS: i64 = 7_258_118_400_000;

/// Valid frames of each type, which the mutations cut and splice.
const SAMPLES: &[&str] = &[
    r#"{"type":"PRICE_DATA","data":{"o":1650.1,"h":1651,"l":1649.5,"c":1650.7,"eventType":"ohlcv","type":"1m","unixTime":1675296000,"v":12.5,"symbol":"WETH","address":"0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"}}"#,
    r#"{"type":"TXS_DATA","data":{"blockUnixTime":1675296001,"blockUnixTimeMs":1675296001234,"owner":"0x1","source":"binance","txHash":"0xabc","side":"buy","tokenAddress":"0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2","alias":null,"isTradeOnBe":false,"platform":"x","volumeUSD":1650.2,"from":{"symbol":"USDT","address":"0xdac17f958d2ee523a2206206994597c13d831ec7","price":1},"to":{"symbol":"WETH","address":"0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2","price":1650.2},"tokenPrice":1650.2}}"#,
    r#"{"type":"TXS_DATA","data":{"blockUnixTime":1675296001,"address":"0xpair","volumeUSD":99.5,"from":{"address":"0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2","price":1650},"to":{"address":"0xdac17f958d2ee523a2206206994597c13d831ec7","price":1}}}"#,
    r#"{"type":"ERROR","data":{"message":"invalid api key"}}"#,
    r#"{"type":"WELCOME"}"#,
];

fn frames() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => fuzz::texts(fuzz::typed_frame("type", TYPES, KEYS, WORDS)),
        1 => proptest::sample::select(SAMPLES).prop_flat_map(|s| fuzz::mutate(s.to_owned())),
    ]
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let is_watched = |address: &str| address.eq_ignore_ascii_case(WATCHED);
    match parse_frame(text, is_watched) {
        Ok(FeedMessage::Price(price)) => {
            for value in [price.open, price.high, price.low, price.close] {
                prop_assert!(
                    value.is_finite() && value > 0.0 && value <= 1e15,
                    "price {value} in {text}"
                );
            }
            prop_assert!(price.high >= price.low);
            prop_assert!(price.volume_token.is_none_or(|v| v.is_finite() && v >= 0.0));
            prop_assert!(
                price.time_ms > 0 && price.time_ms <= MAX_TIME_MS,
                "time {}",
                price.time_ms
            );
        }
        Ok(FeedMessage::Trades(trades)) => {
            prop_assert!(!trades.is_empty() && trades.len() <= 2);
            for trade in trades {
                prop_assert!(
                    trade.volume_usd.is_finite() && (0.0..=1e15).contains(&trade.volume_usd)
                );
                prop_assert!(trade.price_usd.is_none_or(|p| p.is_finite() && p >= 0.0));
                prop_assert!(
                    trade.time_ms > 0 && trade.time_ms <= MAX_TIME_MS,
                    "time {}",
                    trade.time_ms
                );
            }
        }
        Ok(_) => {}
        Err(error) => {
            let line = error.to_string();
            prop_assert!(line.starts_with("malformed "), "{line}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn parse_frame_never_panics(text in frames()) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn parse_frame_never_panics_long(text in frames()) {
        check(&text)?;
    }
}
