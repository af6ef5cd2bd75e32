//! The alerts that the recorded trades must produce, computed by brute force.
//!
//! This is an independent model of the pipeline's documented semantics, written without the
//! ingest or evaluate code: it re-reads the trades CSV, rebuilds the 1-minute candles that
//! `devkit feed-replay` sends after every trade, and for each event recomputes every window by
//! scanning all earlier events. End-to-end tests compare what reached MySQL and the WebSocket
//! with its output.
//!
//! Semantics modelled:
//! - A window of `W` seconds has buckets of `b = ceil(W / 64)` seconds; the window ending at
//!   `t` covers the bucket indices `floor(t/1000/b) - ceil(W/b) + 1 ..= floor(t/1000/b)`.
//! - Trades feed volume and buy sums; candles feed prices. A candle's source time is the start
//!   of its minute; `start_price` is the open of the earliest candle in the window.
//! - Trade rules are judged after each trade, `price_change` after each candle. The first event
//!   of each cooldown bucket (`source_time / 1000 / cooldown_sec`) on which a rule holds gives
//!   that rule's alert for the bucket.

use std::collections::BTreeMap;
use std::path::Path;

use monitor_core::messages::{AlertType, Side};
use monitor_core::rules::TokenRules;

/// One row of `data/binance-ethusdt-trades-2023-02-02/trades.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedTrade {
    pub time_ms: i64,
    pub side: Side,
    pub price: f64,
    pub amount: f64,
    /// USD (USDT) value of the trade.
    pub cost: f64,
}

/// Reads the recorded trades, in file order.
pub fn load_trades(path: &Path) -> anyhow::Result<Vec<RecordedTrade>> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| anyhow::anyhow!("column {name} missing in {}", path.display()))
    };
    let (time, side, price, amount, cost) = (
        column("timestamp")?,
        column("side")?,
        column("price")?,
        column("amount")?,
        column("cost")?,
    );

    let mut trades = Vec::new();
    for (number, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("line {} has too few fields", number + 2))
        };
        trades.push(RecordedTrade {
            time_ms: field(time)?.parse()?,
            side: match field(side)? {
                "buy" => Side::Buy,
                "sell" => Side::Sell,
                other => anyhow::bail!("line {}: unknown side {other}", number + 2),
            },
            price: field(price)?.parse()?,
            amount: field(amount)?.parse()?,
            cost: field(cost)?.parse()?,
        });
    }
    Ok(trades)
}

/// An alert the recorded data must produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedAlert {
    pub alert_type: AlertType,
    /// Cooldown bucket, the last part of the alert id.
    pub bucket: i64,
    pub observed: f64,
    pub threshold: f64,
    pub event_time_ms: i64,
}

impl ExpectedAlert {
    /// The alert id the pipeline gives this alert.
    pub fn id(&self, task_id: u64, target: &str) -> String {
        format!("{task_id}:{target}:{}:{}", self.alert_type, self.bucket)
    }
}

/// Window geometry: bucket width in seconds and number of buckets covered.
fn geometry(window_sec: u32) -> (i64, i64) {
    let bucket = i64::from(window_sec.div_ceil(64).max(1));
    (bucket, (i64::from(window_sec) + bucket - 1) / bucket)
}

/// Whether `time_ms` lies in the window of `window_sec` ending at `end_ms`.
fn in_window(window_sec: u32, time_ms: i64, end_ms: i64) -> bool {
    let (bucket, count) = geometry(window_sec);
    let index = |t: i64| t.div_euclid(1000 * bucket);
    let last = index(end_ms);
    (last - count + 1..=last).contains(&index(time_ms))
}

/// The pipeline's threshold test: `observed >= threshold`, forgiving float rounding.
fn reaches(observed: f64, threshold: f64) -> bool {
    observed >= threshold - threshold.abs().max(1.0) * 1e-9
}

/// A 1-minute candle as feed-replay sends it after a trade.
struct Candle {
    time_ms: i64,
    open: f64,
    close: f64,
}

fn candles(trades: &[RecordedTrade]) -> Vec<Candle> {
    let mut out: Vec<Candle> = Vec::with_capacity(trades.len());
    for trade in trades {
        let minute_ms = trade.time_ms.div_euclid(60_000) * 60_000;
        let open = match out.last() {
            Some(previous) if previous.time_ms == minute_ms => previous.open,
            _ => trade.price,
        };
        out.push(Candle {
            time_ms: minute_ms,
            open,
            close: trade.price,
        });
    }
    out
}

/// Computes every alert the trades must produce under `rules` (trigger logic OR).
pub fn expected_alerts(trades: &[RecordedTrade], rules: &TokenRules) -> Vec<ExpectedAlert> {
    let cooldown_ms = i64::from(rules.cooldown_sec) * 1000;
    let mut first: BTreeMap<(String, i64), ExpectedAlert> = BTreeMap::new();
    let mut candidate = |alert_type: AlertType, time_ms: i64, observed: f64, threshold: f64| {
        let bucket = time_ms.div_euclid(cooldown_ms);
        first
            .entry((alert_type.to_string(), bucket))
            .or_insert(ExpectedAlert {
                alert_type,
                bucket,
                observed,
                threshold,
                event_time_ms: time_ms,
            });
    };

    for (i, trade) in trades.iter().enumerate() {
        let seen = &trades[..=i];
        if let Some(rule) = &rules.large_trade {
            if rule.side.accepts(trade.side) && reaches(trade.cost, rule.min_usd) {
                candidate(AlertType::LargeTrade, trade.time_ms, trade.cost, rule.min_usd);
            }
        }
        if let Some(rule) = &rules.volume {
            let volume: f64 = seen
                .iter()
                .filter(|t| in_window(rule.window_sec, t.time_ms, trade.time_ms))
                .map(|t| t.cost)
                .sum();
            if reaches(volume, rule.min_volume_usd) {
                candidate(AlertType::VolumeChange, trade.time_ms, volume, rule.min_volume_usd);
            }
        }
        if let Some(rule) = &rules.cumulative_buy {
            let bought: f64 = seen
                .iter()
                .filter(|t| t.side == Side::Buy && in_window(rule.window_sec, t.time_ms, trade.time_ms))
                .map(|t| t.cost)
                .sum();
            if reaches(bought, rule.min_usd) {
                candidate(AlertType::CumulativeBuy, trade.time_ms, bought, rule.min_usd);
            }
        }
    }

    if let Some(rule) = &rules.price_change {
        let candles = candles(trades);
        for (i, candle) in candles.iter().enumerate() {
            let start = candles[..=i]
                .iter()
                .filter(|c| in_window(rule.window_sec, c.time_ms, candle.time_ms))
                .min_by_key(|c| c.time_ms)
                .map(|c| c.open);
            let Some(start) = start.filter(|p| *p > 0.0) else { continue };
            let change = (candle.close - start) / start * 100.0;
            if let Some(rise) = rule.rise_pct.filter(|rise| reaches(change, *rise)) {
                candidate(AlertType::PriceChange, candle.time_ms, change, rise);
            } else if let Some(fall) = rule.fall_pct.filter(|fall| reaches(-change, *fall)) {
                candidate(AlertType::PriceChange, candle.time_ms, change, -fall);
            }
        }
    }

    first.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_geometry_matches_sixty_one_second_buckets() {
        assert_eq!(geometry(60), (1, 60));
        assert_eq!(geometry(3600), (57, 64));
        assert!(in_window(60, 1_000, 60_999));
        assert!(!in_window(60, 999, 60_999));
    }

    #[test]
    fn candle_open_is_first_trade_of_minute() {
        let trade = |time_ms, price| RecordedTrade {
            time_ms,
            side: Side::Buy,
            price,
            amount: 1.0,
            cost: price,
        };
        let c = candles(&[trade(60_100, 10.0), trade(60_200, 11.0), trade(120_000, 12.0)]);
        assert_eq!((c[1].time_ms, c[1].open, c[1].close), (60_000, 10.0, 11.0));
        assert_eq!((c[2].time_ms, c[2].open), (120_000, 12.0));
    }
}
