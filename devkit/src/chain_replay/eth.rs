//! The recorded Ethereum blocks, served as an EVM node's JSON-RPC.
//!
//! Consumes ethereum-etl's export of a few blocks (`blocks.json`, `transactions.json`,
//! `logs.json`, one JSON object per line) and serves what the EVM adapter requests: `newHeads`
//! and `logs` notifications (built per block by [`EthRecording::head`] and
//! [`EthRecording::logs_matching`]), `eth_getBlockByHash` / `eth_getBlockByNumber` with or
//! without transaction objects, `eth_getLogs`, `eth_getTransactionByHash`, `eth_blockNumber`
//! and `eth_chainId`. Field names become the node's camelCase and integers become hex
//! quantities; every value comes from the files.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::json::{as_u128, parse_exact, parse_quantity, quantity, quantity_of};
use super::{ChainReplayError, RpcFailure};

/// One recorded block with its transactions and logs, in node format.
#[derive(Debug, Clone)]
pub struct RecordedBlock {
    pub number: u64,
    pub hash: String,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
    header: Value,
    transactions: Vec<Value>,
    logs: Vec<Value>,
}

/// The blocks of one recording, oldest first.
#[derive(Debug, Clone)]
pub struct EthRecording {
    pub blocks: Vec<RecordedBlock>,
}

/// A `logs` subscription or `eth_getLogs` filter: addresses (any when empty) and topics by
/// position (`None` matches any topic).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogFilter {
    pub addresses: Vec<String>,
    pub topics: Vec<Option<Vec<String>>>,
}

impl LogFilter {
    /// Reads a filter object (`address`: string or list, `topics`: list of null, string or
    /// list).
    pub fn parse(value: &Value) -> Result<LogFilter, RpcFailure> {
        let mut filter = LogFilter::default();
        match value.get("address") {
            None | Some(Value::Null) => {}
            Some(Value::String(address)) => filter.addresses.push(address.to_ascii_lowercase()),
            Some(Value::Array(list)) => {
                for address in list {
                    let address = address.as_str().ok_or_else(|| {
                        RpcFailure::invalid_params("address entries must be strings")
                    })?;
                    filter.addresses.push(address.to_ascii_lowercase());
                }
            }
            Some(_) => {
                return Err(RpcFailure::invalid_params(
                    "address must be a string or a list",
                ))
            }
        }
        if let Some(Value::Array(topics)) = value.get("topics") {
            for position in topics {
                filter.topics.push(match position {
                    Value::Null => None,
                    Value::String(topic) => Some(vec![topic.to_ascii_lowercase()]),
                    Value::Array(any) => Some(
                        any.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_ascii_lowercase)
                            .collect(),
                    ),
                    _ => {
                        return Err(RpcFailure::invalid_params(
                            "topics entries must be null, a string or a list",
                        ))
                    }
                });
            }
        }
        Ok(filter)
    }

    pub fn matches(&self, log: &Value) -> bool {
        let address = log["address"].as_str().unwrap_or("").to_ascii_lowercase();
        if !self.addresses.is_empty() && !self.addresses.contains(&address) {
            return false;
        }
        let topics = log["topics"].as_array().cloned().unwrap_or_default();
        self.topics
            .iter()
            .enumerate()
            .all(|(i, wanted)| match wanted {
                None => true,
                Some(any) => topics
                    .get(i)
                    .and_then(Value::as_str)
                    .is_some_and(|t| any.contains(&t.to_ascii_lowercase())),
            })
    }
}

impl EthRecording {
    /// Loads `blocks.json`, `transactions.json` and `logs.json` from `dir`.
    pub fn load(dir: &Path) -> Result<EthRecording, ChainReplayError> {
        let blocks = read_lines(&dir.join("blocks.json"))?;
        let transactions = read_lines(&dir.join("transactions.json"))?;
        let logs = read_lines(&dir.join("logs.json"))?;

        let mut by_hash: HashMap<String, RecordedBlock> = HashMap::new();
        for block in &blocks {
            let recorded = recorded_block(block).ok_or_else(|| ChainReplayError::Record {
                path: dir.join("blocks.json"),
                problem: format!(
                    "block without number, hash or timestamp: {}",
                    preview(block)
                ),
            })?;
            by_hash.insert(recorded.hash.clone(), recorded);
        }
        for tx in &transactions {
            let block_hash = tx["block_hash"].as_str().unwrap_or_default();
            if let Some(block) = by_hash.get_mut(block_hash) {
                block.transactions.push(transaction_json(tx));
            }
        }
        for log in &logs {
            let block_hash = log["block_hash"].as_str().unwrap_or_default();
            if let Some(block) = by_hash.get_mut(block_hash) {
                block.logs.push(log_json(log));
            }
        }

        let mut blocks: Vec<RecordedBlock> = by_hash.into_values().collect();
        blocks.sort_by_key(|b| b.number);
        for block in &mut blocks {
            block
                .transactions
                .sort_by_key(|t| parse_quantity(&t["transactionIndex"]));
            block.logs.sort_by_key(|l| parse_quantity(&l["logIndex"]));
        }
        if blocks.is_empty() {
            return Err(ChainReplayError::Record {
                path: dir.join("blocks.json"),
                problem: "no blocks".into(),
            });
        }
        Ok(EthRecording { blocks })
    }

    /// The `newHeads` notification result of block `index`.
    pub fn head(&self, index: usize) -> Value {
        self.blocks[index].header.clone()
    }

    /// The logs of block `index` that `filter` matches, in log index order.
    pub fn logs_matching(&self, index: usize, filter: &LogFilter) -> Vec<Value> {
        self.blocks[index]
            .logs
            .iter()
            .filter(|log| filter.matches(log))
            .cloned()
            .collect()
    }

    /// Returns the result of a JSON-RPC method that is not a subscription.
    pub fn call(&self, method: &str, params: &Value) -> Result<Value, RpcFailure> {
        match method {
            "eth_chainId" => Ok(json!("0x1")),
            "net_version" => Ok(json!("1")),
            "eth_blockNumber" => Ok(quantity(u128::from(self.latest().number))),
            "eth_getBlockByHash" => {
                let hash = param_str(params, 0)?.to_ascii_lowercase();
                let full = params.get(1).and_then(Value::as_bool).unwrap_or(false);
                Ok(self
                    .blocks
                    .iter()
                    .find(|b| b.hash == hash)
                    .map_or(Value::Null, |b| block_json(b, full)))
            }
            "eth_getBlockByNumber" => {
                let number = self.block_number_param(params.get(0).unwrap_or(&Value::Null))?;
                let full = params.get(1).and_then(Value::as_bool).unwrap_or(false);
                Ok(self
                    .blocks
                    .iter()
                    .find(|b| b.number == number)
                    .map_or(Value::Null, |b| block_json(b, full)))
            }
            "eth_getTransactionByHash" => {
                let hash = param_str(params, 0)?.to_ascii_lowercase();
                Ok(self
                    .blocks
                    .iter()
                    .flat_map(|b| &b.transactions)
                    .find(|t| t["hash"].as_str() == Some(hash.as_str()))
                    .cloned()
                    .unwrap_or(Value::Null))
            }
            "eth_getLogs" => self.get_logs(params.get(0).unwrap_or(&Value::Null)),
            other => Err(RpcFailure::method_not_found(other)),
        }
    }

    fn latest(&self) -> &RecordedBlock {
        // `load` rejects an empty recording.
        &self.blocks[self.blocks.len() - 1]
    }

    fn block_number_param(&self, value: &Value) -> Result<u64, RpcFailure> {
        match value.as_str() {
            Some("latest" | "safe" | "finalized" | "pending") => Ok(self.latest().number),
            Some("earliest") => Ok(self.blocks[0].number),
            _ => parse_quantity(value)
                .ok_or_else(|| RpcFailure::invalid_params(format!("invalid block number {value}"))),
        }
    }

    fn get_logs(&self, params: &Value) -> Result<Value, RpcFailure> {
        let filter = LogFilter::parse(params)?;
        let blocks: Vec<&RecordedBlock> = match params.get("blockHash").and_then(Value::as_str) {
            Some(hash) => {
                let hash = hash.to_ascii_lowercase();
                self.blocks.iter().filter(|b| b.hash == hash).collect()
            }
            None => {
                let from = match params.get("fromBlock") {
                    None => self.latest().number,
                    Some(value) => self.block_number_param(value)?,
                };
                let to = match params.get("toBlock") {
                    None => self.latest().number,
                    Some(value) => self.block_number_param(value)?,
                };
                self.blocks
                    .iter()
                    .filter(|b| (from..=to).contains(&b.number))
                    .collect()
            }
        };
        let logs: Vec<Value> = blocks
            .iter()
            .flat_map(|b| b.logs.iter().filter(|log| filter.matches(log)).cloned())
            .collect();
        Ok(Value::Array(logs))
    }
}

fn read_lines(path: &Path) -> Result<Vec<Value>, ChainReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ChainReplayError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            parse_exact(line).map_err(|e| ChainReplayError::Record {
                path: path.to_owned(),
                problem: format!("line {}: {e}", number + 1),
            })
        })
        .collect()
}

fn recorded_block(block: &Value) -> Option<RecordedBlock> {
    let number = as_u128(block.get("number")?)? as u64;
    let hash = block.get("hash")?.as_str()?.to_ascii_lowercase();
    let timestamp = as_u128(block.get("timestamp")?)? as u64;
    Some(RecordedBlock {
        number,
        hash,
        timestamp,
        header: header_json(block),
        transactions: Vec::new(),
        logs: Vec::new(),
    })
}

/// The header fields of a block in node format.
fn header_json(block: &Value) -> Value {
    let mut header = Map::new();
    let text_fields = [
        ("hash", "hash"),
        ("parentHash", "parent_hash"),
        ("nonce", "nonce"),
        ("sha3Uncles", "sha3_uncles"),
        ("logsBloom", "logs_bloom"),
        ("transactionsRoot", "transactions_root"),
        ("stateRoot", "state_root"),
        ("receiptsRoot", "receipts_root"),
        ("miner", "miner"),
        ("extraData", "extra_data"),
        ("withdrawalsRoot", "withdrawals_root"),
    ];
    for (name, field) in text_fields {
        if let Some(value) = block.get(field).filter(|v| !v.is_null()) {
            header.insert(name.into(), value.clone());
        }
    }
    let quantity_fields = [
        ("number", "number"),
        ("difficulty", "difficulty"),
        ("totalDifficulty", "total_difficulty"),
        ("size", "size"),
        ("gasLimit", "gas_limit"),
        ("gasUsed", "gas_used"),
        ("timestamp", "timestamp"),
        ("baseFeePerGas", "base_fee_per_gas"),
    ];
    for (name, field) in quantity_fields {
        let value = quantity_of(block.get(field));
        if !value.is_null() {
            header.insert(name.into(), value);
        }
    }
    header.insert("uncles".into(), json!([]));
    Value::Object(header)
}

fn block_json(block: &RecordedBlock, full: bool) -> Value {
    let mut json = block.header.clone();
    let transactions: Vec<Value> = if full {
        block.transactions.clone()
    } else {
        block
            .transactions
            .iter()
            .map(|t| t["hash"].clone())
            .collect()
    };
    json["transactions"] = Value::Array(transactions);
    json
}

fn transaction_json(tx: &Value) -> Value {
    json!({
        "hash": tx["hash"],
        "nonce": quantity_of(tx.get("nonce")),
        "blockHash": tx["block_hash"],
        "blockNumber": quantity_of(tx.get("block_number")),
        "transactionIndex": quantity_of(tx.get("transaction_index")),
        "from": tx["from_address"],
        "to": tx["to_address"],
        "value": quantity_of(tx.get("value")),
        "gas": quantity_of(tx.get("gas")),
        "gasPrice": quantity_of(tx.get("gas_price")),
        "maxFeePerGas": quantity_of(tx.get("max_fee_per_gas")),
        "maxPriorityFeePerGas": quantity_of(tx.get("max_priority_fee_per_gas")),
        "input": tx["input"],
        "type": quantity_of(tx.get("transaction_type")),
        "chainId": "0x1",
    })
}

fn log_json(log: &Value) -> Value {
    json!({
        "address": log["address"],
        "topics": log["topics"],
        "data": log["data"],
        "blockNumber": quantity_of(log.get("block_number")),
        "blockHash": log["block_hash"],
        "transactionHash": log["transaction_hash"],
        "transactionIndex": quantity_of(log.get("transaction_index")),
        "logIndex": quantity_of(log.get("log_index")),
        "removed": false,
    })
}

fn param_str(params: &Value, index: usize) -> Result<&str, RpcFailure> {
    params
        .get(index)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcFailure::invalid_params(format!("parameter {index} must be a string")))
}

fn preview(value: &Value) -> String {
    let text = value.to_string();
    text.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSFER: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";

    fn log(address: &str, topic0: &str) -> Value {
        json!({"address": address, "topics": [topic0, "0x01"]})
    }

    #[test]
    fn filter_matches_address_and_topic_positions() {
        let filter = LogFilter::parse(&json!({
            "address": ["0xDAC17F958D2EE523A2206206994597C13D831EC7"],
            "topics": [[TRANSFER], null]
        }))
        .unwrap();

        assert!(filter.matches(&log("0xdac17f958d2ee523a2206206994597c13d831ec7", TRANSFER)));
        assert!(!filter.matches(&log("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", TRANSFER)));
        assert!(!filter.matches(&log("0xdac17f958d2ee523a2206206994597c13d831ec7", "0x8c5b")));
    }

    #[test]
    fn empty_filter_matches_everything() {
        let filter = LogFilter::parse(&json!({})).unwrap();

        assert!(filter.matches(&log("0x01", "0x02")));
    }

    #[test]
    fn bad_address_is_invalid_params() {
        let error = LogFilter::parse(&json!({"address": 5})).unwrap_err();

        assert_eq!(error.code, -32602);
    }
}
