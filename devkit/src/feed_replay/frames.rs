//! Birdeye data frames built from recorded trades.
//!
//! Consumes one [`ReplayTrade`] at a time. Produces the text of a `TXS_DATA` frame (simple or
//! complex shape) and keeps the current one-minute candle for `PRICE_DATA` frames. Everything a
//! frame carries besides the recorded values (owner, transaction hash) is derived from the trade
//! id and the loop number, so two replays of the same file send the same frames.

use md5::{Digest, Md5};
use serde::Serialize;

use monitor_core::messages::Side;

use crate::trades::{to_raw_units, Trade};

/// Tether USD on Ethereum, the other side of every replayed trade.
pub const USDT_ADDRESS: &str = "0xdac17f958d2ee523a2206206994597c13d831ec7";
const USDT_SYMBOL: &str = "USDT";
const USDT_DECIMALS: u32 = 6;

/// DEX names put on every trade. The recorded trades come from Binance; the replay presents
/// them as swaps of the replayed token against USDT.
const SOURCE: &str = "uniswap_v3";
const PLATFORM: &str = "uniswap";

/// Layout of `TXS_DATA` frames, one of the two that Birdeye sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TxsShape {
    /// Token subscription layout: `tokenAddress`, `side` and `tokenPrice` are present.
    #[default]
    Simple,
    /// Pair and multi-address layout: no `tokenAddress` and no `side`; the pair is in `address`.
    Complex,
}

/// The token the recorded trades are attributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub address: String,
    pub symbol: String,
    pub decimals: u32,
    /// Pool address sent in the complex trade layout.
    pub pair_address: String,
}

/// A trade with its amounts in base units, computed once at load time.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayTrade {
    pub trade: Trade,
    /// `amount` in the token's base units.
    pub token_raw: u128,
    /// `cost` in USDT base units.
    pub usd_raw: u128,
}

impl ReplayTrade {
    /// Returns `None` when an amount does not fit in base units (over 2^127 after scaling).
    pub fn new(trade: Trade, token_decimals: u32) -> Option<ReplayTrade> {
        let token_raw = to_raw_units(&trade.amount_text, token_decimals)?;
        let usd_raw = to_raw_units(&trade.cost_text, USDT_DECIMALS)?;
        // Change amounts are signed, so the raw amounts must also fit in i128.
        i128::try_from(token_raw.max(usd_raw)).ok()?;
        Some(ReplayTrade {
            trade,
            token_raw,
            usd_raw,
        })
    }
}

#[derive(Serialize)]
struct Frame<T> {
    #[serde(rename = "type")]
    kind: &'static str,
    data: T,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TxsData<'a> {
    block_unix_time: i64,
    /// Not in Birdeye's documentation: the recorded trades have millisecond times.
    block_unix_time_ms: i64,
    owner: String,
    source: &'static str,
    tx_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_address: Option<&'a str>,
    /// The pair, in the complex layout only.
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    alias: Option<String>,
    is_trade_on_be: bool,
    platform: &'static str,
    #[serde(rename = "volumeUSD")]
    volume_usd: f64,
    from: Leg<'a>,
    to: Leg<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_price: Option<f64>,
}

/// One side of a swap. `amount` is in base units and may exceed `u64` for 18-decimal tokens.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Leg<'a> {
    symbol: &'a str,
    decimals: u32,
    address: &'a str,
    amount: u128,
    ui_amount: f64,
    price: f64,
    nearest_price: f64,
    change_amount: i128,
    ui_change_amount: f64,
    type_swap: &'static str,
}

struct Asset<'a> {
    symbol: &'a str,
    decimals: u32,
    address: &'a str,
    raw: u128,
    ui: f64,
    price: f64,
}

impl<'a> Asset<'a> {
    /// Builds the leg that the trader gave away, with a negative balance change.
    fn given(self) -> Leg<'a> {
        self.leg("from", -1)
    }

    /// Builds the leg that the trader received.
    fn received(self) -> Leg<'a> {
        self.leg("to", 1)
    }

    fn leg(self, type_swap: &'static str, sign: i128) -> Leg<'a> {
        // ReplayTrade::new checked that the raw amount fits in i128.
        let raw = i128::try_from(self.raw).unwrap_or(i128::MAX);
        Leg {
            symbol: self.symbol,
            decimals: self.decimals,
            address: self.address,
            amount: self.raw,
            ui_amount: self.ui,
            price: self.price,
            nearest_price: self.price,
            change_amount: sign * raw,
            ui_change_amount: sign as f64 * self.ui,
            type_swap,
        }
    }
}

/// Builds the text of a `TXS_DATA` frame for a trade replayed at `time_ms` in loop `cycle`.
pub fn txs_frame(
    item: &ReplayTrade,
    time_ms: i64,
    cycle: u64,
    token: &TokenInfo,
    shape: TxsShape,
) -> String {
    let trade = &item.trade;
    let token_asset = Asset {
        symbol: &token.symbol,
        decimals: token.decimals,
        address: &token.address,
        raw: item.token_raw,
        ui: trade.amount,
        price: trade.price,
    };
    let usd_asset = Asset {
        symbol: USDT_SYMBOL,
        decimals: USDT_DECIMALS,
        address: USDT_ADDRESS,
        raw: item.usd_raw,
        ui: trade.cost,
        price: 1.0,
    };
    // A buy takes the token out of the pool: the trader gives USDT and receives the token.
    let (from, to, side) = match trade.side {
        Side::Buy => (usd_asset.given(), token_asset.received(), "buy"),
        Side::Sell => (token_asset.given(), usd_asset.received(), "sell"),
    };
    let simple = shape == TxsShape::Simple;

    let data = TxsData {
        block_unix_time: time_ms.div_euclid(1000),
        block_unix_time_ms: time_ms,
        owner: format!("0x{}", derived_hex("owner", trade.id, cycle, 40)),
        source: SOURCE,
        tx_hash: format!("0x{}", derived_hex("tx", trade.id, cycle, 64)),
        side: simple.then_some(side),
        token_address: simple.then_some(token.address.as_str()),
        address: (!simple).then_some(token.pair_address.as_str()),
        alias: None,
        is_trade_on_be: false,
        platform: PLATFORM,
        volume_usd: trade.cost,
        from,
        to,
        token_price: simple.then_some(trade.price),
    };
    to_text("TXS_DATA", data)
}

/// Hex digits derived from a label, a trade id and a loop number with MD5. Not a real hash of
/// anything on chain, only stable and unique enough to tell trades apart.
fn derived_hex(label: &str, id: u64, cycle: u64, digits: usize) -> String {
    let mut out = String::with_capacity(digits + 32);
    let mut block = 0u32;
    while out.len() < digits {
        let digest = Md5::digest(format!("{label}:{id}:{cycle}:{block}").as_bytes());
        out.push_str(&hex::encode(digest));
        block += 1;
    }
    out.truncate(digits);
    out
}

/// The one-minute candle of the trades replayed so far in the current minute.
#[derive(Debug, Clone, PartialEq)]
pub struct Candle {
    /// Minute start in seconds since the Unix epoch.
    pub unix_time: i64,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    /// Summed amount in token units.
    pub volume: f64,
}

impl Candle {
    fn starting_with(time_ms: i64, trade: &Trade) -> Candle {
        Candle {
            unix_time: time_ms.div_euclid(60_000) * 60,
            open: trade.price,
            high: trade.price,
            low: trade.price,
            close: trade.price,
            volume: trade.amount,
        }
    }

    /// Adds a trade replayed at `time_ms`; a trade of a later minute starts a new candle.
    pub fn advance(current: Option<Candle>, time_ms: i64, trade: &Trade) -> Candle {
        match current {
            Some(mut candle) if candle.unix_time == time_ms.div_euclid(60_000) * 60 => {
                candle.high = candle.high.max(trade.price);
                candle.low = candle.low.min(trade.price);
                candle.close = trade.price;
                candle.volume += trade.amount;
                candle
            }
            _ => Candle::starting_with(time_ms, trade),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PriceData<'a> {
    o: f64,
    h: f64,
    l: f64,
    c: f64,
    event_type: &'static str,
    #[serde(rename = "type")]
    chart_type: &'static str,
    unix_time: i64,
    v: f64,
    symbol: &'a str,
    address: &'a str,
}

/// Builds the text of a `PRICE_DATA` frame for a candle.
pub fn price_frame(candle: &Candle, token: &TokenInfo) -> String {
    let data = PriceData {
        o: candle.open,
        h: candle.high,
        l: candle.low,
        c: candle.close,
        event_type: "ohlcv",
        chart_type: "1m",
        unix_time: candle.unix_time,
        v: candle.volume,
        symbol: &token.symbol,
        address: &token.address,
    };
    to_text("PRICE_DATA", data)
}

/// Builds the text of an `ERROR` frame.
pub fn error_frame(message: &str) -> String {
    #[derive(Serialize)]
    struct ErrorData<'a> {
        message: &'a str,
    }
    to_text("ERROR", ErrorData { message })
}

/// Returns the text of the `WELCOME` frame sent on connect.
pub fn welcome_frame() -> String {
    r#"{"type":"WELCOME"}"#.to_owned()
}

fn to_text<T: Serialize>(kind: &'static str, data: T) -> String {
    // These types hold only strings and numbers, which always serialize, and non-finite floats
    // become null rather than an error.
    serde_json::to_string(&Frame { kind, data }).unwrap_or_else(|e| {
        tracing::error!(frame = kind, error = %e, "failed to serialize a frame");
        String::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn token() -> TokenInfo {
        TokenInfo {
            address: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
            symbol: "WETH".into(),
            decimals: 18,
            pair_address: "0x11b815efb8f581194ae79006d24e0d814b7697f6".into(),
        }
    }

    fn trade(side: Side, price: f64, amount: &str) -> ReplayTrade {
        let amount_value: f64 = amount.parse().unwrap();
        let cost = price * amount_value;
        let trade = Trade {
            timestamp_ms: 1_675_329_600_138,
            id: 1_206_419_187,
            side,
            price,
            amount: amount_value,
            amount_text: amount.into(),
            cost,
            cost_text: format!("{cost}"),
        };
        ReplayTrade::new(trade, 18).unwrap()
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn simple_buy_receives_the_token() {
        let item = trade(Side::Buy, 1666.8, "26.062");
        let frame = parse(&txs_frame(
            &item,
            item.trade.timestamp_ms,
            0,
            &token(),
            TxsShape::Simple,
        ));
        let data = &frame["data"];

        assert_eq!(frame["type"], "TXS_DATA");
        assert_eq!(data["side"], "buy");
        assert_eq!(data["tokenAddress"], token().address);
        assert_eq!(data["blockUnixTime"], 1_675_329_600);
        assert_eq!(data["blockUnixTimeMs"], 1_675_329_600_138i64);
        assert_eq!(data["to"]["address"], token().address);
        assert_eq!(data["to"]["price"], 1666.8);
        assert_eq!(data["to"]["uiAmount"], 26.062);
        assert_eq!(data["from"]["address"], USDT_ADDRESS);
        assert!(data["from"]["uiChangeAmount"].as_f64().unwrap() < 0.0);
        assert_eq!(data["tokenPrice"], 1666.8);
        assert_eq!(data["volumeUSD"], item.trade.cost);
    }

    #[test]
    fn raw_amount_beyond_u64_is_written_exactly() {
        let item = trade(Side::Buy, 1666.8, "26.062");
        let text = txs_frame(
            &item,
            item.trade.timestamp_ms,
            0,
            &token(),
            TxsShape::Simple,
        );
        assert!(text.contains(r#""amount":26062000000000000000"#), "{text}");
        assert!(
            text.contains(r#""changeAmount":26062000000000000000"#),
            "{text}"
        );
    }

    #[test]
    fn complex_sell_gives_token() {
        let item = trade(Side::Sell, 1666.79, "0.152");
        let frame = parse(&txs_frame(
            &item,
            item.trade.timestamp_ms,
            0,
            &token(),
            TxsShape::Complex,
        ));
        let data = &frame["data"];

        assert!(data.get("side").is_none());
        assert!(data.get("tokenAddress").is_none());
        assert_eq!(data["address"], token().pair_address);
        assert_eq!(data["from"]["address"], token().address);
        assert_eq!(data["from"]["price"], 1666.79);
        assert_eq!(data["to"]["address"], USDT_ADDRESS);
    }

    #[test]
    fn tx_hash_is_stable_and_differs_per_loop() {
        let item = trade(Side::Buy, 1666.8, "1");
        let first = parse(&txs_frame(&item, 0, 0, &token(), TxsShape::Simple));
        let again = parse(&txs_frame(&item, 0, 0, &token(), TxsShape::Simple));
        let next_loop = parse(&txs_frame(&item, 0, 1, &token(), TxsShape::Simple));

        let hash = first["data"]["txHash"].as_str().unwrap();
        assert_eq!(hash.len(), 66);
        assert!(hash[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(first["data"]["txHash"], again["data"]["txHash"]);
        assert_ne!(first["data"]["txHash"], next_loop["data"]["txHash"]);
        assert_eq!(first["data"]["owner"].as_str().unwrap().len(), 42);
    }

    #[test]
    fn candle_accumulates_within_a_minute_and_restarts_after() {
        let a = trade(Side::Buy, 10.0, "1").trade;
        let b = trade(Side::Sell, 12.0, "2").trade;
        let c = trade(Side::Buy, 9.0, "0.5").trade;

        let candle = Candle::advance(None, 60_500, &a);
        let candle = Candle::advance(Some(candle), 61_000, &b);
        let candle = Candle::advance(Some(candle), 119_999, &c);
        assert_eq!(
            candle,
            Candle {
                unix_time: 60,
                open: 10.0,
                high: 12.0,
                low: 9.0,
                close: 9.0,
                volume: 3.5
            }
        );

        let next = Candle::advance(Some(candle), 120_000, &a);
        assert_eq!(next.unix_time, 120);
        assert_eq!(next.open, 10.0);
        assert_eq!(next.volume, 1.0);
    }

    #[test]
    fn price_frame_has_birdeye_fields() {
        let candle = Candle {
            unix_time: 1_675_329_600,
            open: 1.0,
            high: 2.0,
            low: 0.5,
            close: 1.5,
            volume: 3.0,
        };
        let frame = parse(&price_frame(&candle, &token()));
        assert_eq!(frame["type"], "PRICE_DATA");
        assert_eq!(frame["data"]["eventType"], "ohlcv");
        assert_eq!(frame["data"]["type"], "1m");
        assert_eq!(frame["data"]["unixTime"], 1_675_329_600);
        assert_eq!(frame["data"]["address"], token().address);
        assert_eq!(frame["data"]["symbol"], "WETH");
    }
}
