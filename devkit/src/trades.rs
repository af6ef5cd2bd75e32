//! Recorded exchange trades, read from the CSV layout of `data/binance-ethusdt-trades-2023-02-02`.
//!
//! Consumes a CSV file with the header `,timestamp,id,type,side,price,amount,cost,date`
//! (timestamp in milliseconds, cost in USD). Produces [`Trade`]s in file order. A row that
//! cannot be read stops the load with an error naming the file, the row and the field, because
//! a replay with holes would make every expected alert count wrong.

use std::path::{Path, PathBuf};

use monitor_core::messages::Side;

#[derive(Debug, thiserror::Error)]
pub enum TradesError {
    #[error("failed to read trades file {path}: {source}")]
    Read { path: PathBuf, source: csv::Error },
    #[error("invalid trade in {path} at line {line}: {field} {reason}, got {value:?}")]
    Invalid {
        path: PathBuf,
        line: u64,
        field: &'static str,
        reason: &'static str,
        value: String,
    },
    #[error("trades file {path} has no trades")]
    Empty { path: PathBuf },
}

/// One recorded trade. Amounts keep their decimal text as well, so raw on-chain amounts can be
/// derived without floating-point rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    /// Trade time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Exchange trade id, unique within the file.
    pub id: u64,
    pub side: Side,
    /// Price in USD per token.
    pub price: f64,
    /// Traded amount in token units.
    pub amount: f64,
    /// `amount` as written in the file.
    pub amount_text: String,
    /// Value in USD.
    pub cost: f64,
    /// `cost` as written in the file.
    pub cost_text: String,
}

#[derive(Debug, serde::Deserialize)]
struct Row {
    timestamp: String,
    id: String,
    side: String,
    price: String,
    amount: String,
    cost: String,
}

/// Reads every trade of a CSV file in file order.
pub fn load_csv(path: &Path) -> Result<Vec<Trade>, TradesError> {
    let read_error = |source| TradesError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(read_error)?;
    let headers = reader.headers().map_err(read_error)?.clone();

    let mut trades = Vec::new();
    for record in reader.records() {
        let record = record.map_err(read_error)?;
        let line = record.position().map_or(0, |p| p.line());
        let row: Row = record.deserialize(Some(&headers)).map_err(read_error)?;
        let trade = parse_row(row).map_err(|(field, reason, value)| TradesError::Invalid {
            path: path.to_owned(),
            line,
            field,
            reason,
            value,
        })?;
        trades.push(trade);
    }

    if trades.is_empty() {
        return Err(TradesError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(trades)
}

type FieldError = (&'static str, &'static str, String);

fn parse_row(row: Row) -> Result<Trade, FieldError> {
    let timestamp_ms = row
        .timestamp
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|t| *t > 0)
        .ok_or((
            "timestamp",
            "must be milliseconds since the Unix epoch",
            row.timestamp.clone(),
        ))?;
    let id = row
        .id
        .trim()
        .parse::<u64>()
        .map_err(|_| ("id", "must be a whole number", row.id.clone()))?;
    let side = match row.side.trim() {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        _ => return Err(("side", "must be buy or sell", row.side)),
    };
    let price = positive_number("price", &row.price)?;
    let amount = positive_number("amount", &row.amount)?;
    let cost = positive_number("cost", &row.cost)?;

    Ok(Trade {
        timestamp_ms,
        id,
        side,
        price,
        amount,
        amount_text: row.amount.trim().to_owned(),
        cost,
        cost_text: row.cost.trim().to_owned(),
    })
}

fn positive_number(field: &'static str, text: &str) -> Result<f64, FieldError> {
    let valid = text
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0);
    // Raw amounts are derived from the text, so it must be a plain decimal too.
    match valid {
        Some(value) if to_raw_units(text, 0).is_some() => Ok(value),
        _ => Err((field, "must be a positive decimal number", text.to_owned())),
    }
}

/// Converts a plain decimal (`26.062`) into integer base units with `decimals` digits after the
/// point (`26062000000000000000` for 18), exactly. Digits beyond `decimals` are truncated.
/// Returns `None` for text that is not a plain non-negative decimal or does not fit in `u128`.
pub fn to_raw_units(text: &str, decimals: u32) -> Option<u128> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }

    let scale = 10u128.checked_pow(decimals)?;
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction_digits: String = fraction.chars().take(decimals as usize).collect();
    let padded = format!("{fraction_digits:0<width$}", width = decimals as usize);
    let fraction: u128 = if padded.is_empty() {
        0
    } else {
        padded.parse().ok()?
    };
    whole.checked_mul(scale)?.checked_add(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_units_are_exact_for_eighteen_decimals() {
        assert_eq!(to_raw_units("26.062", 18), Some(26_062_000_000_000_000_000));
        assert_eq!(to_raw_units("0.006", 18), Some(6_000_000_000_000_000));
    }

    #[test]
    fn raw_units_truncate_extra_digits() {
        assert_eq!(to_raw_units("253.35208", 2), Some(25_335));
        assert_eq!(to_raw_units("7", 0), Some(7));
        assert_eq!(to_raw_units(".5", 1), Some(5));
    }

    #[test]
    fn raw_units_reject_non_decimals() {
        assert_eq!(to_raw_units("1e5", 6), None);
        assert_eq!(to_raw_units("-3", 6), None);
        assert_eq!(to_raw_units("", 6), None);
        assert_eq!(to_raw_units(".", 6), None);
    }

    #[test]
    fn load_reads_rows_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trades.csv");
        std::fs::write(
            &path,
            ",timestamp,id,type,side,price,amount,cost,date\n\
             0,1675329600138,1206419187,,buy,1666.8,26.062,43440.1416,2023-02-02 09:20:00.138000+00:00\n\
             1,1675329600214,1206419188,,sell,1666.79,0.152,253.35208,2023-02-02 09:20:00.214000+00:00\n",
        )
        .unwrap();

        let trades = load_csv(&path).unwrap();

        assert_eq!(trades.len(), 2);
        assert_eq!(trades[0].timestamp_ms, 1_675_329_600_138);
        assert_eq!(trades[0].side, Side::Buy);
        assert_eq!(trades[0].amount_text, "26.062");
        assert_eq!(trades[1].id, 1_206_419_188);
        assert_eq!(trades[1].side, Side::Sell);
        assert_eq!(trades[1].cost, 253.35208);
    }

    #[test]
    fn load_names_bad_row_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trades.csv");
        std::fs::write(
            &path,
            ",timestamp,id,type,side,price,amount,cost,date\n\
             0,1675329600138,1206419187,,hold,1666.8,26.062,43440.1416,x\n",
        )
        .unwrap();

        let error = load_csv(&path).unwrap_err().to_string();

        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("side must be buy or sell"), "{error}");
        assert!(error.contains("\"hold\""), "{error}");
    }
}
