//! The recorded Solana block, served as a Solana node's PubSub and JSON-RPC.
//!
//! Consumes a gzipped `getBlock` response (`jsonParsed` encoding, full transactions) and
//! serves what the Solana adapter requests. Over WebSocket: `slotNotification` for the
//! recorded slot and for the slots after it that `--slots` adds (they have no block), and
//! `logsNotification` for each transaction whose account keys include a subscribed
//! `mentions` key, which is the rule Solana nodes apply. Over HTTP: `getBlock` (the recorded
//! response for the recorded slot, error -32007 "skipped" for the others), `getBlockTime`,
//! `getSlot` and `getHealth`.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use serde_json::{json, Value};

use super::{ChainReplayError, RpcFailure};

/// Error code of Solana nodes for a slot without a block.
pub const SLOT_SKIPPED: i64 = -32007;

/// One transaction's log lines and the keys it mentions.
#[derive(Debug, Clone)]
pub struct TransactionLogs {
    pub signature: String,
    pub err: Value,
    pub logs: Vec<String>,
    pub account_keys: Vec<String>,
}

/// The recorded block.
#[derive(Debug, Clone)]
pub struct SolRecording {
    pub slot: u64,
    pub parent_slot: u64,
    pub block_time: Option<i64>,
    /// The `result` of the recorded `getBlock` response.
    block: Value,
    pub transactions: Vec<TransactionLogs>,
}

impl SolRecording {
    /// Loads a gzipped `getBlock` response; the slot is read from the file name
    /// (`getBlock-<slot>.json.gz`) unless given.
    pub fn load(path: &Path, slot: Option<u64>) -> Result<SolRecording, ChainReplayError> {
        let file = std::fs::File::open(path).map_err(|source| ChainReplayError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut text = String::new();
        GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|source| ChainReplayError::Read {
                path: path.to_owned(),
                source,
            })?;
        let record_error = |problem: String| ChainReplayError::Record {
            path: path.to_owned(),
            problem,
        };
        let response: Value =
            serde_json::from_str(&text).map_err(|e| record_error(e.to_string()))?;
        let block = response
            .get("result")
            .cloned()
            .ok_or_else(|| record_error("no result field".into()))?;
        let slot = match slot {
            Some(slot) => slot,
            None => slot_from_file_name(path).ok_or_else(|| {
                record_error("the slot is not in the file name, pass --slot".into())
            })?,
        };
        let parent_slot = block["parentSlot"]
            .as_u64()
            .ok_or_else(|| record_error("no parentSlot".into()))?;
        let transactions = block["transactions"]
            .as_array()
            .ok_or_else(|| record_error("no transactions".into()))?
            .iter()
            .map(transaction_logs)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                record_error("a transaction without signature or account keys".into())
            })?;
        Ok(SolRecording {
            slot,
            parent_slot,
            block_time: block["blockTime"].as_i64(),
            block,
            transactions,
        })
    }

    /// Returns the transactions that mention `key`, in block order.
    pub fn mentioning<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = &'a TransactionLogs> + 'a {
        self.transactions
            .iter()
            .filter(move |tx| tx.account_keys.iter().any(|k| k == key))
    }

    /// Returns the result of a JSON-RPC method requested over HTTP.
    pub fn call(&self, method: &str, params: &Value) -> Result<Value, RpcFailure> {
        match method {
            "getBlock" => {
                let slot = slot_param(params)?;
                if slot == self.slot {
                    Ok(self.block.clone())
                } else {
                    Err(skipped(slot))
                }
            }
            "getBlockTime" => {
                let slot = slot_param(params)?;
                if slot == self.slot {
                    Ok(self.block_time.map_or(Value::Null, Value::from))
                } else {
                    Err(skipped(slot))
                }
            }
            "getSlot" => Ok(json!(self.slot)),
            "getHealth" => Ok(json!("ok")),
            "getVersion" => Ok(json!({"solana-core": "devkit-chain-replay"})),
            other => Err(RpcFailure::method_not_found(other)),
        }
    }
}

fn transaction_logs(tx: &Value) -> Option<TransactionLogs> {
    let signature = tx["transaction"]["signatures"][0].as_str()?.to_owned();
    let account_keys = tx["transaction"]["message"]["accountKeys"]
        .as_array()?
        .iter()
        .map(|key| {
            key["pubkey"]
                .as_str()
                .or_else(|| key.as_str())
                .map(str::to_owned)
        })
        .collect::<Option<Vec<_>>>()?;
    let logs = tx["meta"]["logMessages"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some(TransactionLogs {
        signature,
        err: tx["meta"]["err"].clone(),
        logs,
        account_keys,
    })
}

fn slot_from_file_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits: String = name
        .trim_start_matches("getBlock-")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn slot_param(params: &Value) -> Result<u64, RpcFailure> {
    params
        .get(0)
        .and_then(Value::as_u64)
        .ok_or_else(|| RpcFailure::invalid_params("parameter 0 must be a slot number"))
}

fn skipped(slot: u64) -> RpcFailure {
    RpcFailure {
        code: SLOT_SKIPPED,
        message: format!(
            "Slot {slot} was skipped, or missing due to ledger jump to recent snapshot"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_comes_from_file_name() {
        assert_eq!(
            slot_from_file_name(Path::new("data/x/getBlock-110130000.json.gz")),
            Some(110_130_000)
        );
        assert_eq!(slot_from_file_name(Path::new("block.json.gz")), None);
    }

    #[test]
    fn transaction_keys_come_from_parsed_accounts() {
        let tx = json!({
            "meta": {"err": null, "logMessages": ["Program A invoke [1]"]},
            "transaction": {
                "signatures": ["sig1"],
                "message": {"accountKeys": [{"pubkey": "A", "signer": true}, {"pubkey": "B"}]}
            }
        });

        let logs = transaction_logs(&tx).unwrap();

        assert_eq!(logs.signature, "sig1");
        assert_eq!(logs.account_keys, vec!["A".to_owned(), "B".to_owned()]);
        assert_eq!(logs.logs, vec!["Program A invoke [1]".to_owned()]);
    }
}
