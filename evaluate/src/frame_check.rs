//! Checks of a decoded event frame before it is judged.
//!
//! Consumes an [`EventFrame`] and rejects one whose values no ingest instance can produce:
//! a USD amount, price, market cap or share that is NaN, infinite or negative, or a source
//! time before 1970 or after 2200 (ingest's own bounds on feed times). Such a frame
//! comes from a faulty or hostile producer, and judging it would raise alerts such as "buy of
//! $inf", so the consumer dead-letters it with the [`InvalidFrame`] line as the reason.

use monitor_core::messages::{EventFrame, EventKind, TokenSnapshot};

/// The first number of a frame that cannot be judged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid event frame {msg_id}: event {index} has {field} = {value}, expected {expected}")]
pub struct InvalidFrame {
    pub msg_id: String,
    pub index: usize,
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Latest source time accepted: the year 2200, in milliseconds, as ingest bounds feed times.
pub const MAX_SOURCE_TIME_MS: i64 = 7_258_118_400_000;

/// Returns the first invalid number of the frame, if any.
pub fn check_frame(frame: &EventFrame) -> Result<(), InvalidFrame> {
    for (index, event) in frame.events.iter().enumerate() {
        let invalid = |field: &'static str, value: String, expected| InvalidFrame {
            msg_id: frame.msg_id(),
            index,
            field,
            value,
            expected,
        };
        if !(1..=MAX_SOURCE_TIME_MS).contains(&event.source_time_ms) {
            let value = event.source_time_ms.to_string();
            return Err(invalid(
                "source_time_ms",
                value,
                "a time between 1970 and 2200",
            ));
        }
        for (field, value) in numbers(&event.kind, event.snapshot.as_ref()) {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(field, value.to_string(), "a finite number >= 0"));
            }
        }
    }
    Ok(())
}

/// The amounts, prices and shares of an event, named as in the message types.
fn numbers(kind: &EventKind, snapshot: Option<&TokenSnapshot>) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    match kind {
        EventKind::Trade(trade) => {
            out.push(("trade.volume_usd", trade.volume_usd));
            out.extend(trade.price_usd.map(|p| ("trade.price_usd", p)));
        }
        EventKind::Price(price) => {
            out.extend([
                ("price.open", price.open),
                ("price.high", price.high),
                ("price.low", price.low),
                ("price.close", price.close),
            ]);
            out.extend(price.volume_usd.map(|v| ("price.volume_usd", v)));
        }
        EventKind::Holders(holders) => {
            out.extend(holders.top_share_pct.map(|p| ("holders.top_share_pct", p)));
        }
        EventKind::Transaction(transaction) => {
            out.push(("transaction.value_native", transaction.value_native));
            out.extend(transaction.value_usd.map(|v| ("transaction.value_usd", v)));
            out.extend(
                transaction
                    .native_price_usd
                    .map(|p| ("transaction.native_price_usd", p)),
            );
        }
        _ => {}
    }
    if let Some(snapshot) = snapshot {
        out.extend(snapshot.price.map(|p| ("snapshot.price", p)));
        out.extend(snapshot.market_cap.map(|m| ("snapshot.market_cap", m)));
        out.extend(snapshot.liquidity.map(|l| ("snapshot.liquidity", l)));
        out.extend(
            snapshot
                .top_share_pct
                .map(|p| ("snapshot.top_share_pct", p)),
        );
        for window in &snapshot.windows {
            out.extend([
                ("window.volume_usd", window.volume_usd),
                ("window.buy_usd", window.buy_usd),
                ("window.sell_usd", window.sell_usd),
            ]);
            out.extend(window.start_price.map(|p| ("window.start_price", p)));
            out.extend(window.high.map(|p| ("window.high", p)));
            out.extend(window.low.map(|p| ("window.low", p)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_core::messages::{Chain, Event, Side, Trade, MESSAGE_VERSION};

    fn frame(volume_usd: f64) -> EventFrame {
        EventFrame {
            v: MESSAGE_VERSION,
            task_id: 1,
            batch_id: Some(2),
            epoch: 1,
            chain: Chain::Eth,
            producer: "p".into(),
            seq: 3,
            events: vec![Event {
                source_time_ms: 1_700_000_000_000,
                ingest_time_ms: 1_700_000_000_000,
                target: None,
                kind: EventKind::Trade(Trade {
                    side: Side::Buy,
                    volume_usd,
                    price_usd: None,
                    tx_hash: None,
                    owner: None,
                }),
                snapshot: None,
            }],
        }
    }

    #[test]
    fn finite_amounts_pass() {
        assert_eq!(check_frame(&frame(10.0)), Ok(()));
    }

    #[test]
    fn infinite_nan_and_negative_amounts_are_named() {
        for value in [f64::INFINITY, f64::NAN, -1.0] {
            let error = check_frame(&frame(value)).unwrap_err();
            assert_eq!(error.field, "trade.volume_usd");
            assert_eq!(error.index, 0);
        }
        assert_eq!(
            check_frame(&frame(f64::INFINITY)).unwrap_err().to_string(),
            "invalid event frame p:2:3: event 0 has trade.volume_usd = inf, expected a finite number >= 0"
        );
    }

    #[test]
    fn source_time_outside_1970_to_2200_is_named() {
        for time in [0, -1, MAX_SOURCE_TIME_MS + 1, i64::MAX] {
            let mut frame = frame(1.0);
            frame.events[0].source_time_ms = time;
            assert_eq!(check_frame(&frame).unwrap_err().field, "source_time_ms");
        }
    }
}
