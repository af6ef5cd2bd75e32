//! Block headers, transactions and logs as EVM nodes send them over JSON-RPC, parsed into
//! plain structs. Quantities are `0x`-prefixed hex; hashes and addresses are kept as
//! lower-case hex text.

use serde_json::Value;

/// A value of a node's response that this adapter cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {problem}")]
pub struct ParseError {
    pub what: &'static str,
    pub problem: String,
}

fn invalid(what: &'static str, problem: impl Into<String>) -> ParseError {
    ParseError {
        what,
        problem: problem.into(),
    }
}

/// A block header (`newHeads` notification or the header fields of a block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub number: u64,
    pub hash: String,
    pub parent_hash: String,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

/// A block with its transactions, when they were requested.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockBody {
    pub header: Header,
    /// `None` when the block was fetched without transaction objects.
    pub transactions: Option<Vec<RawTransaction>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTransaction {
    pub hash: String,
    pub from: String,
    pub to: Option<String>,
    /// Value in wei.
    pub value_wei: u128,
    /// `None` while the transaction is pending.
    pub block_number: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLog {
    pub address: String,
    pub topics: Vec<String>,
    pub data: String,
    pub block_number: u64,
    pub block_hash: String,
    pub tx_hash: String,
    pub log_index: u64,
    pub removed: bool,
    /// Some nodes add the block time to logs (`blockTimestamp`).
    pub block_timestamp: Option<u64>,
}

/// Parses a header from a `newHeads` notification or a block object.
pub fn parse_header(value: &Value) -> Result<Header, ParseError> {
    Ok(Header {
        number: quantity(value, "number")?,
        hash: hex_text(value, "hash")?,
        parent_hash: hex_text(value, "parentHash")?,
        timestamp: quantity(value, "timestamp")?,
    })
}

/// Parses the result of `eth_getBlockByHash` / `eth_getBlockByNumber`; `None` when the node
/// does not know the block.
pub fn parse_block(value: &Value) -> Result<Option<BlockBody>, ParseError> {
    if value.is_null() {
        return Ok(None);
    }
    let header = parse_header(value)?;
    let transactions = match value.get("transactions") {
        Some(Value::Array(items)) if items.iter().all(Value::is_object) => Some(
            items
                .iter()
                .map(parse_transaction)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    Ok(Some(BlockBody {
        header,
        transactions,
    }))
}

/// Parses a transaction object (from a block, `eth_getTransactionByHash` or a full
/// `newPendingTransactions` notification).
pub fn parse_transaction(value: &Value) -> Result<RawTransaction, ParseError> {
    let to = match value.get("to") {
        None | Some(Value::Null) => None,
        Some(_) => Some(hex_text(value, "to")?),
    };
    let block_number = match value.get("blockNumber") {
        None | Some(Value::Null) => None,
        Some(_) => Some(quantity(value, "blockNumber")?),
    };
    Ok(RawTransaction {
        hash: hex_text(value, "hash")?,
        from: hex_text(value, "from")?,
        to,
        value_wei: quantity_u128(value, "value")?,
        block_number,
    })
}

/// Parses a log of a `logs` notification or of `eth_getLogs`.
pub fn parse_log(value: &Value) -> Result<RawLog, ParseError> {
    let topics = match value.get("topics") {
        Some(Value::Array(topics)) => topics
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| invalid("topics", format!("{t} is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(invalid(
                "topics",
                format!("expected an array, got {other:?}"),
            ))
        }
    };
    let block_timestamp = match value.get("blockTimestamp") {
        None | Some(Value::Null) => None,
        Some(_) => Some(quantity(value, "blockTimestamp")?),
    };
    Ok(RawLog {
        address: hex_text(value, "address")?,
        topics,
        data: hex_text(value, "data")?,
        block_number: quantity(value, "blockNumber")?,
        block_hash: hex_text(value, "blockHash")?,
        tx_hash: hex_text(value, "transactionHash")?,
        log_index: quantity(value, "logIndex")?,
        removed: value
            .get("removed")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        block_timestamp,
    })
}

/// Reads a hex quantity field that fits 64 bits.
pub fn quantity(value: &Value, field: &'static str) -> Result<u64, ParseError> {
    let text = field_text(value, field)?;
    let digits = strip_hex(text)
        .ok_or_else(|| invalid(field, format!("{text:?} is not 0x-prefixed hex")))?;
    u64::from_str_radix(if digits.is_empty() { "0" } else { digits }, 16)
        .map_err(|e| invalid(field, format!("{text:?}: {e}")))
}

/// Reads a hex quantity field that fits 128 bits (a value in wei).
pub fn quantity_u128(value: &Value, field: &'static str) -> Result<u128, ParseError> {
    let text = field_text(value, field)?;
    let digits = strip_hex(text)
        .ok_or_else(|| invalid(field, format!("{text:?} is not 0x-prefixed hex")))?;
    u128::from_str_radix(if digits.is_empty() { "0" } else { digits }, 16)
        .map_err(|e| invalid(field, format!("{text:?}: {e}")))
}

/// Formats a number as a hex quantity (`0x1a`).
pub fn to_quantity(number: u64) -> String {
    format!("0x{number:x}")
}

fn hex_text(value: &Value, field: &'static str) -> Result<String, ParseError> {
    let text = field_text(value, field)?;
    if strip_hex(text).is_none() {
        return Err(invalid(field, format!("{text:?} is not 0x-prefixed hex")));
    }
    Ok(text.to_ascii_lowercase())
}

fn field_text<'a>(value: &'a Value, field: &'static str) -> Result<&'a str, ParseError> {
    match value.get(field) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(invalid(field, format!("expected a string, got {other}"))),
        None => Err(invalid(field, "missing")),
    }
}

fn strip_hex(text: &str) -> Option<&str> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))?;
    digits
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some(digits)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn header_parses_hex_quantities() {
        let header = parse_header(&json!({
            "number": "0x1060a39",
            "hash": "0xAA5ab9bb22d8020d438496a7edb4eff508b1c5128b0dc01fdecf57f96aac1bb3",
            "parentHash": "0x918a700a8e7a9f3fe0b3ccb176c810ded08729331ceef8d6375af5d1eeeaa6c0",
            "timestamp": "0x6450ffef"
        }))
        .unwrap();

        assert_eq!(header.number, 17_173_049);
        assert_eq!(header.timestamp, 1_683_029_999);
        assert_eq!(
            header.hash,
            "0xaa5ab9bb22d8020d438496a7edb4eff508b1c5128b0dc01fdecf57f96aac1bb3"
        );
    }

    #[test]
    fn block_with_hashes_has_no_transactions() {
        let block = parse_block(&json!({
            "number": "0x1", "hash": "0x01", "parentHash": "0x00", "timestamp": "0x2",
            "transactions": ["0xaa", "0xbb"]
        }))
        .unwrap()
        .unwrap();

        assert_eq!(block.transactions, None);
        assert_eq!(parse_block(&Value::Null).unwrap(), None);
    }

    #[test]
    fn transaction_value_above_64_bits_parses() {
        let tx = parse_transaction(&json!({
            "hash": "0xcf08", "from": "0xa1", "to": null,
            "value": "0x1bc16d674ec800000", "blockNumber": null
        }))
        .unwrap();

        assert_eq!(tx.value_wei, 32_000_000_000_000_000_000);
        assert_eq!(tx.to, None);
        assert_eq!(tx.block_number, None);
    }

    #[test]
    fn log_parses_removed_and_topics() {
        let log = parse_log(&json!({
            "address": "0xdAC17F958D2ee523a2206206994597C13D831ec7",
            "topics": ["0xDDF252AD1BE2C89B69C2B068FC378DAA952BA7F163C4A11628F55A4DF523B3EF"],
            "data": "0x",
            "blockNumber": "0x10", "blockHash": "0xb1", "transactionHash": "0xf1",
            "logIndex": "0x3", "removed": true
        }))
        .unwrap();

        assert_eq!(log.address, "0xdac17f958d2ee523a2206206994597c13d831ec7");
        assert_eq!(
            log.topics[0],
            "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
        );
        assert_eq!(log.log_index, 3);
        assert!(log.removed);
        assert_eq!(log.block_timestamp, None);
    }

    #[test]
    fn bad_quantity_names_field_and_value() {
        let error = quantity(&json!({"number": "12"}), "number").unwrap_err();

        assert_eq!(
            error.to_string(),
            "invalid number: \"12\" is not 0x-prefixed hex"
        );
    }
}
