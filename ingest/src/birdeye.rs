//! The Birdeye WebSocket protocol: connection URL, subscription messages and frame parsing.
//!
//! Consumes the text of one WebSocket frame and produces a typed [`FeedMessage`]. The frames
//! are `WELCOME`, `PRICE_DATA` (1-minute candles), `ERROR`, and `TXS_DATA` in two shapes: the
//! simple shape of a token subscription has `tokenAddress` and `side`, and in the complex shape
//! of a pair subscription the side follows from which of `from`/`to` is a watched token.
//!
//! A frame that breaks the protocol gives a [`ParseError`] naming the frame type and the
//! problem with the value involved, and parsing never panics. Volumes and prices must be
//! finite and not negative, and USD amounts and prices at most [`MAX_USD`]. This module is
//! pure: the connection lives in [`crate::feed`].

mod data;
mod json;

use std::borrow::Cow;
use std::fmt;

use monitor_core::messages::{Chain, Side};
use serde_json::Value;
use url::Url;

use json::{Fields, Json, Object};

/// Maximum addresses in one `SUBSCRIBE_PRICE` or `SUBSCRIBE_TXS` query.
pub const MAX_ADDRESSES_PER_QUERY: usize = 100;

/// WebSocket sub-protocol that the Birdeye socket requires.
pub const SUB_PROTOCOL: &str = "echo-protocol";

/// `Origin` header sent with the WebSocket handshake.
pub const ORIGIN: &str = "ws://public-api.birdeye.so";

/// One of the two connections a batch keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `SUBSCRIBE_PRICE` / `PRICE_DATA`.
    Prices,
    /// `SUBSCRIBE_TXS` / `TXS_DATA`.
    Trades,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Prices => "prices",
            Channel::Trades => "trades",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds `<base>/<chain>?x-api-key=<key>`. The result contains the key: never log it, log
/// [`redact_url`] instead.
pub fn feed_url(base: &Url, chain: Chain, api_key: &str) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(chain.birdeye_name());
    }
    url.query_pairs_mut().append_pair("x-api-key", api_key);
    url
}

/// Returns the URL without its query, for logs.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

/// Normalizes an address for look-ups: EVM addresses (`0x…`) are case-insensitive, Solana
/// addresses (base58) are not. Borrows the address unless it has upper-case letters to
/// lower, because this runs for every event.
pub fn address_key(address: &str) -> Cow<'_, str> {
    let address = address.trim();
    let is_evm = address.starts_with("0x") || address.starts_with("0X");
    if is_evm && address.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(address.to_ascii_lowercase())
    } else {
        Cow::Borrowed(address)
    }
}

/// `SUBSCRIBE_PRICE` messages for 1-minute USD candles, at most
/// [`MAX_ADDRESSES_PER_QUERY`] addresses each.
pub fn price_subscriptions(addresses: &[String]) -> Vec<String> {
    addresses
        .chunks(MAX_ADDRESSES_PER_QUERY)
        .map(|chunk| {
            let query = chunk
                .iter()
                .map(|a| format!("(address = {a} AND chartType = 1m AND currency = usd)"))
                .collect::<Vec<_>>()
                .join(" OR ");
            subscription("SUBSCRIBE_PRICE", query)
        })
        .collect()
}

/// `SUBSCRIBE_TXS` messages, at most [`MAX_ADDRESSES_PER_QUERY`] addresses each.
pub fn trade_subscriptions(addresses: &[String]) -> Vec<String> {
    addresses
        .chunks(MAX_ADDRESSES_PER_QUERY)
        .map(|chunk| {
            let query = chunk
                .iter()
                .map(|a| format!("address = {a}"))
                .collect::<Vec<_>>()
                .join(" OR ");
            subscription("SUBSCRIBE_TXS", query)
        })
        .collect()
}

fn subscription(kind: &str, query: String) -> String {
    serde_json::json!({
        "type": kind,
        "data": { "queryType": "complex", "query": query },
    })
    .to_string()
}

/// A parsed frame of the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedMessage {
    Welcome,
    Price(PriceData),
    /// One trade, or two when a complex frame swaps two watched tokens.
    Trades(Vec<TradeData>),
    /// `ERROR` sent by the server.
    Error(String),
    /// A frame type this client does not use.
    Other(String),
}

/// A `PRICE_DATA` candle.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceData {
    pub address: String,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    /// Volume in token units, not USD.
    pub volume_token: Option<f64>,
    /// Candle start (`unixTime`) in milliseconds.
    pub time_ms: i64,
}

/// A trade of a watched token from `TXS_DATA`.
#[derive(Debug, Clone, PartialEq)]
pub struct TradeData {
    pub address: String,
    pub side: Side,
    pub volume_usd: f64,
    pub price_usd: Option<f64>,
    pub time_ms: i64,
    pub tx_hash: Option<String>,
    pub owner: Option<String>,
}

/// A frame that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {frame_type} frame: {problem}")]
pub struct ParseError {
    /// The frame's `type`, or `<invalid JSON>` / `<no type>` when it has none.
    pub frame_type: String,
    pub problem: String,
}

/// The members of a frame that [`parse_frame`] reads, 16 of the 36 values of a trade frame as
/// `devkit loadgen` sends it. The others are checked for JSON syntax only.
const FRAME_FIELDS: Fields = Fields::Only(&[("type", Fields::All), ("data", DATA_FIELDS)]);

const DATA_FIELDS: Fields = Fields::Only(&[
    // TXS_DATA
    ("volumeUSD", Fields::All),
    ("blockUnixTimeMs", Fields::All),
    ("blockUnixTime", Fields::All),
    ("txHash", Fields::All),
    ("owner", Fields::All),
    ("tokenAddress", Fields::All),
    ("side", Fields::All),
    ("tokenPrice", Fields::All),
    ("from", LEG_FIELDS),
    ("to", LEG_FIELDS),
    ("pairAddress", Fields::All),
    // PRICE_DATA (and the pair's address in TXS_DATA)
    ("address", Fields::All),
    ("o", Fields::All),
    ("h", Fields::All),
    ("l", Fields::All),
    ("c", Fields::All),
    ("v", Fields::All),
    ("unixTime", Fields::All),
    // ERROR
    ("message", Fields::All),
]);

const LEG_FIELDS: Fields = Fields::Only(&[("address", Fields::All), ("price", Fields::All)]);

/// The members of a frame's `data` that the parser reads, by key: a [`json::Object`] of the
/// tree, or the slots that [`data::parse_frame`] fills.
trait Members<'j> {
    fn get(&self, key: &str) -> Option<&Json<'j>>;
}

impl<'j> Members<'j> for Object<'j> {
    fn get(&self, key: &str) -> Option<&Json<'j>> {
        Object::get(self, key)
    }
}

/// Parses one text frame. `is_watched` returns whether an address is one of the batch's
/// targets, which decides which side of a complex trade is the watched token.
pub fn parse_frame(
    text: &str,
    is_watched: impl Fn(&str) -> bool,
) -> Result<FeedMessage, ParseError> {
    if let Some(message) = data::parse_frame(text, &is_watched) {
        return Ok(message);
    }
    let value = json::from_str_fields(text, FRAME_FIELDS).map_err(invalid_json)?;
    parse_value(text, &value, &is_watched)
}

fn invalid_json(error: serde_json::Error) -> ParseError {
    ParseError {
        frame_type: "<invalid JSON>".into(),
        problem: error.to_string(),
    }
}

/// Interprets the parsed frame `value` of `text`.
fn parse_value(
    text: &str,
    value: &Json<'_>,
    is_watched: &impl Fn(&str) -> bool,
) -> Result<FeedMessage, ParseError> {
    let Some(frame_type) = value.get("type").and_then(Json::as_str) else {
        return Err(ParseError {
            frame_type: "<no type>".into(),
            problem: format!("the frame has no string field type: {}", preview(text)),
        });
    };
    let error = |problem: String| ParseError {
        frame_type: frame_type.to_owned(),
        problem,
    };
    match frame_type {
        "WELCOME" => Ok(FeedMessage::Welcome),
        "PRICE_DATA" => parse_price(data(value).map_err(error)?)
            .map(FeedMessage::Price)
            .map_err(error),
        "TXS_DATA" => parse_trades(data(value).map_err(error)?, is_watched)
            .map(FeedMessage::Trades)
            .map_err(error),
        "ERROR" => Ok(FeedMessage::Error(error_message(text, value))),
        other => Ok(FeedMessage::Other(other.to_owned())),
    }
}

fn data<'a>(frame: &'a Json<'a>) -> Result<&'a Object<'a>, String> {
    match frame.get("data") {
        Some(Json::Object(map)) => Ok(map),
        Some(other) => Err(format!("data must be an object, got {}", short(other))),
        None => Err("data is missing".into()),
    }
}

/// Returns the `message` of an `ERROR` frame, or else its whole `data`, which it reads again
/// from `text` with every member.
fn error_message(text: &str, frame: &Json<'_>) -> String {
    let data = frame.get("data");
    if let Some(message) = data.and_then(|d| d.get("message")).and_then(Json::as_str) {
        return message.to_owned();
    }
    let whole = json::from_str(text);
    let data = whole.as_ref().ok().and_then(|w| w.get("data")).or(data);
    data.map_or_else(|| "no message".into(), short)
}

fn parse_price<'j>(data: &impl Members<'j>) -> Result<PriceData, String> {
    let address = required_str(data, "address")?;
    let open = positive(data, "o")?;
    let high = positive(data, "h")?;
    let low = positive(data, "l")?;
    let close = positive(data, "c")?;
    if high < low {
        return Err(format!("h must be >= l, got h = {high} and l = {low}"));
    }
    let volume_token = optional_non_negative(data, "v")?;
    let time_ms = seconds_to_ms(data, "unixTime")?;
    Ok(PriceData {
        address: address.to_owned(),
        open,
        high,
        low,
        close,
        volume_token,
        time_ms,
    })
}

fn parse_trades<'j>(
    data: &impl Members<'j>,
    is_watched: &impl Fn(&str) -> bool,
) -> Result<Vec<TradeData>, String> {
    let volume_usd = usd(non_negative(data, "volumeUSD")?, "volumeUSD")?;
    let time_ms = trade_time_ms(data)?;
    let tx_hash = optional_str(data, "txHash")?;
    let owner = optional_str(data, "owner")?;
    let trade = |address: &str, side: Side, price_usd: Option<f64>| TradeData {
        address: address.to_owned(),
        side,
        volume_usd,
        price_usd,
        time_ms,
        tx_hash: tx_hash.map(str::to_owned),
        owner: owner.map(str::to_owned),
    };

    if let Some(token) = optional_str(data, "tokenAddress")? {
        // Simple shape: the frame names the token and the side.
        let side = parse_side(data)?;
        let price = match optional_usd(data, "tokenPrice")? {
            Some(price) => Some(price),
            None => leg_price_of(data, token)?,
        };
        return Ok(vec![trade(token, side, price)]);
    }

    // Complex shape: the watched token is whichever leg has a subscribed address; receiving
    // it (`to`) is a buy, giving it away (`from`) is a sell.
    let from = leg(data, "from")?;
    let to = leg(data, "to")?;
    let mut trades = Vec::with_capacity(2);
    if is_watched(to.address) {
        trades.push(trade(to.address, Side::Buy, to.price));
    }
    if is_watched(from.address) {
        trades.push(trade(from.address, Side::Sell, from.price));
    }
    if trades.is_empty() {
        let pair = optional_str(data, "address")?.or(optional_str(data, "pairAddress")?);
        return Err(format!(
            "neither from.address {} nor to.address {} is a subscribed token (pair {})",
            to_json(from.address),
            to_json(to.address),
            pair.map_or_else(|| "unknown".into(), to_json),
        ));
    }
    Ok(trades)
}

struct Leg<'a> {
    address: &'a str,
    price: Option<f64>,
}

fn leg<'a, 'j: 'a>(data: &'a impl Members<'j>, name: &str) -> Result<Leg<'a>, String> {
    let object = match data.get(name) {
        Some(Json::Object(object)) => object,
        Some(other) => return Err(format!("{name} must be an object, got {}", short(other))),
        None => {
            return Err(format!(
                "{name} is missing (a complex trade needs from and to)"
            ))
        }
    };
    let address = match object.get("address") {
        Some(Json::String(s)) if !s.trim().is_empty() => s,
        Some(other) => {
            return Err(format!(
                "{name}.address must be a non-empty string, got {}",
                short(other)
            ))
        }
        None => return Err(format!("{name}.address is missing")),
    };
    let price = optional_usd(object, "price").map_err(|problem| format!("{name}.{problem}"))?;
    Ok(Leg { address, price })
}

/// Price of the leg (`from` or `to`) whose address is the token, when the frame has one.
fn leg_price_of<'j>(data: &impl Members<'j>, token: &str) -> Result<Option<f64>, String> {
    let token = address_key(token);
    for name in ["to", "from"] {
        if let Some(Json::Object(object)) = data.get(name) {
            let matches = object
                .get("address")
                .and_then(Json::as_str)
                .is_some_and(|a| address_key(a) == token);
            if matches {
                return optional_usd(object, "price").map_err(|p| format!("{name}.{p}"));
            }
        }
    }
    Ok(None)
}

fn parse_side<'j>(data: &impl Members<'j>) -> Result<Side, String> {
    match data.get("side") {
        Some(Json::String(s)) if s.eq_ignore_ascii_case("buy") => Ok(Side::Buy),
        Some(Json::String(s)) if s.eq_ignore_ascii_case("sell") => Ok(Side::Sell),
        Some(other) => Err(format!(
            "side must be \"buy\" or \"sell\", got {}",
            short(other)
        )),
        None => Err("side is missing (a trade with tokenAddress needs a side)".into()),
    }
}

/// `blockUnixTimeMs` when present (milliseconds), else `blockUnixTime` (seconds).
fn trade_time_ms<'j>(data: &impl Members<'j>) -> Result<i64, String> {
    match data.get("blockUnixTimeMs") {
        None | Some(Json::Null) => seconds_to_ms(data, "blockUnixTime"),
        Some(_) => {
            let ms = number(data, "blockUnixTimeMs")?;
            if ms <= 0.0 || ms > MAX_TIME_MS {
                return Err(format!(
                    "blockUnixTimeMs must be a positive time in milliseconds, got {ms}"
                ));
            }
            Ok(ms.round() as i64)
        }
    }
}

/// Latest time accepted: the year 2200, in milliseconds. Anything later is a unit mistake.
const MAX_TIME_MS: f64 = 7_258_118_400_000.0;

fn seconds_to_ms<'j>(data: &impl Members<'j>, key: &str) -> Result<i64, String> {
    let seconds = number(data, key)?;
    if seconds <= 0.0 || seconds * 1000.0 > MAX_TIME_MS {
        return Err(format!(
            "{key} must be a positive time in seconds, got {seconds}"
        ));
    }
    Ok((seconds * 1000.0).round() as i64)
}

fn number<'j>(data: &impl Members<'j>, key: &str) -> Result<f64, String> {
    match data.get(key) {
        Some(Json::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("{key} must be a finite number, got {n}")),
        Some(other) => Err(format!("{key} must be a number, got {}", short(other))),
        None => Err(format!("{key} is missing")),
    }
}

fn non_negative<'j>(data: &impl Members<'j>, key: &str) -> Result<f64, String> {
    let value = number(data, key)?;
    if value < 0.0 {
        return Err(format!("{key} must not be negative, got {value}"));
    }
    Ok(value)
}

/// Reads a price: positive and at most [`MAX_USD`].
fn positive<'j>(data: &impl Members<'j>, key: &str) -> Result<f64, String> {
    let value = number(data, key)?;
    if value <= 0.0 {
        return Err(format!("{key} must be a positive number, got {value}"));
    }
    usd(value, key)
}

/// Largest USD amount or price accepted: 10^15, about ten times the world's yearly output.
/// Anything larger (an amount past 2^64, a unit mistake) would raise alerts on nonsense.
pub const MAX_USD: f64 = 1e15;

fn usd(value: f64, key: &str) -> Result<f64, String> {
    if value > MAX_USD {
        return Err(format!(
            "{key} must be at most {MAX_USD:e} USD, got {value:e}"
        ));
    }
    Ok(value)
}

/// Reads a USD price that may be absent or null: not negative and at most [`MAX_USD`].
fn optional_usd<'j>(data: &impl Members<'j>, key: &str) -> Result<Option<f64>, String> {
    optional_non_negative(data, key)?
        .map(|value| usd(value, key))
        .transpose()
}

/// Reads a number that may be absent or null, and is otherwise checked like [`non_negative`].
fn optional_non_negative<'j>(data: &impl Members<'j>, key: &str) -> Result<Option<f64>, String> {
    match data.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(_) => non_negative(data, key).map(Some),
    }
}

fn required_str<'a, 'j: 'a>(data: &'a impl Members<'j>, key: &str) -> Result<&'a str, String> {
    optional_str(data, key)?.ok_or_else(|| format!("{key} is missing"))
}

/// Reads a string that may be absent or null. An empty string counts as absent.
fn optional_str<'a, 'j: 'a>(
    data: &'a impl Members<'j>,
    key: &str,
) -> Result<Option<&'a str>, String> {
    match data.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{key} must be a string, got {}", short(other))),
    }
}

/// Formats a value as JSON, cut to 80 characters, for error messages.
fn short(value: &Json<'_>) -> String {
    preview(&value.to_value().to_string())
}

fn to_json(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn preview(text: &str) -> String {
    const LIMIT: usize = 80;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
