//! Native SOL moved by the transactions of a block, read from `getBlock`'s balances. Pure.
//!
//! A transaction's transfer is the SOL its accounts gained: the sum of every increase of
//! `postBalances` over `preBalances`. The fee payer's loss includes the fee, which no account
//! receives, so the sum of increases is the amount that changed hands. The sender is the
//! account that lost the most and the receiver the one that gained the most. Failed
//! transactions only pay their fee and move nothing.

use serde_json::Value;

use crate::block_task::jsonrpc::shown_value;

/// Lamports per SOL.
pub const LAMPORTS_PER_SOL: f64 = 1e9;
/// Latest block time accepted: the year 2200, in seconds, as evaluate bounds source times.
pub const MAX_BLOCK_TIME: i64 = 7_258_118_400;

/// The SOL one transaction moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub signature: String,
    pub from: String,
    pub to: String,
    pub lamports: u64,
}

impl Transfer {
    pub fn sol(&self) -> f64 {
        self.lamports as f64 / LAMPORTS_PER_SOL
    }
}

/// A `getBlock` result that this adapter cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid getBlock result: {0}")]
pub struct BlockError(pub String);

/// Returns the block time (seconds, `None` when the node has none) and the transfers of every
/// successful transaction that moved SOL, in block order. A block time that is neither `null`
/// nor a whole number of seconds between 1970 and 2200 is an error.
pub fn block_transfers(block: &Value) -> Result<(Option<i64>, Vec<Transfer>), BlockError> {
    let transactions = block
        .get("transactions")
        .and_then(Value::as_array)
        .ok_or_else(|| BlockError("no transactions array".into()))?;
    let mut transfers = Vec::new();
    for (index, tx) in transactions.iter().enumerate() {
        if let Some(transfer) =
            transaction_transfer(tx).map_err(|e| BlockError(format!("transaction {index}: {e}")))?
        {
            transfers.push(transfer);
        }
    }
    Ok((block_time(&block["blockTime"])?, transfers))
}

fn block_time(value: &Value) -> Result<Option<i64>, BlockError> {
    if value.is_null() {
        return Ok(None);
    }
    match value.as_i64() {
        Some(time) if (1..=MAX_BLOCK_TIME).contains(&time) => Ok(Some(time)),
        _ => Err(BlockError(format!(
            "blockTime must be a time in seconds between 1970 and 2200, got {}",
            shown_value(value)
        ))),
    }
}

fn transaction_transfer(tx: &Value) -> Result<Option<Transfer>, String> {
    let meta = &tx["meta"];
    if !meta["err"].is_null() {
        return Ok(None);
    }
    let signature = tx["transaction"]["signatures"][0]
        .as_str()
        .ok_or("no signature")?
        .to_owned();
    let keys = account_keys(&tx["transaction"]["message"]["accountKeys"])?;
    let pre = lamports(&meta["preBalances"], "preBalances")?;
    let post = lamports(&meta["postBalances"], "postBalances")?;
    if pre.len() != post.len() || pre.len() > keys.len() + loaded_count(meta) {
        return Err(format!(
            "{} pre balances, {} post balances and {} account keys do not line up",
            pre.len(),
            post.len(),
            keys.len()
        ));
    }

    let mut gained = 0u64;
    let mut largest_gain: Option<(usize, u64)> = None;
    let mut largest_loss: Option<(usize, u64)> = None;
    for (index, (before, after)) in pre.iter().zip(&post).enumerate() {
        if after > before {
            let gain = after - before;
            gained = gained.saturating_add(gain);
            if largest_gain.is_none_or(|(_, g)| gain > g) {
                largest_gain = Some((index, gain));
            }
        } else if before > after {
            let loss = before - after;
            if largest_loss.is_none_or(|(_, l)| loss > l) {
                largest_loss = Some((index, loss));
            }
        }
    }
    let (Some((to, _)), Some((from, _))) = (largest_gain, largest_loss) else {
        return Ok(None);
    };
    let key = |index: usize| {
        keys.get(index)
            .cloned()
            .unwrap_or_else(|| format!("loaded account {index}"))
    };
    Ok(Some(Transfer {
        signature,
        from: key(from),
        to: key(to),
        lamports: gained,
    }))
}

/// Account keys of a `jsonParsed` (`{"pubkey": ..}`) or `json` (plain string) message.
fn account_keys(value: &Value) -> Result<Vec<String>, String> {
    value
        .as_array()
        .ok_or("no accountKeys")?
        .iter()
        .map(|key| {
            key.get("pubkey")
                .and_then(Value::as_str)
                .or_else(|| key.as_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    format!(
                        "account key {} is neither a string nor has a pubkey",
                        shown_value(key)
                    )
                })
        })
        .collect()
}

/// Number of accounts a versioned transaction loads from lookup tables; their balances
/// follow the message's own keys.
fn loaded_count(meta: &Value) -> usize {
    let count = |field: &str| {
        meta["loadedAddresses"][field]
            .as_array()
            .map_or(0, Vec::len)
    };
    count("writable") + count("readonly")
}

fn lamports(value: &Value, field: &str) -> Result<Vec<u64>, String> {
    value
        .as_array()
        .ok_or_else(|| format!("no {field}"))?
        .iter()
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| format!("{field} entry {} is not a lamport count", shown_value(v)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tx(signature: &str, err: Value, pre: &[u64], post: &[u64]) -> Value {
        json!({
            "meta": {"err": err, "preBalances": pre, "postBalances": post},
            "transaction": {
                "signatures": [signature],
                "message": {"accountKeys": [{"pubkey": "Payer"}, {"pubkey": "Receiver"}, "Program"]}
            }
        })
    }

    #[test]
    fn transfer_is_the_sum_of_gains() {
        let block = json!({
            "blockTime": 1_638_693_800,
            "transactions": [tx("sig1", Value::Null, &[10_000_005_000, 1, 1], &[5_000_000_000, 5_000_000_001, 1])]
        });

        let (time, transfers) = block_transfers(&block).unwrap();

        assert_eq!(time, Some(1_638_693_800));
        assert_eq!(
            transfers,
            vec![Transfer {
                signature: "sig1".into(),
                from: "Payer".into(),
                to: "Receiver".into(),
                lamports: 5_000_000_000
            }]
        );
        assert_eq!(transfers[0].sol(), 5.0);
    }

    #[test]
    fn fee_only_and_failed_transactions_move_nothing() {
        let block = json!({"transactions": [
            tx("fee", Value::Null, &[10_000, 1, 1], &[5_000, 1, 1]),
            tx("failed", json!({"InstructionError": [0, "Custom"]}), &[10_000, 1, 1], &[5_000, 9_999, 1]),
        ]});

        let (_, transfers) = block_transfers(&block).unwrap();

        assert!(transfers.is_empty());
    }

    #[test]
    fn block_time_out_of_range_is_error() {
        for time in [
            json!(-1),
            json!(0),
            json!(MAX_BLOCK_TIME + 1),
            json!(i64::MAX),
            json!("1638693800"),
            json!(1.5),
        ] {
            let block = json!({"blockTime": time, "transactions": []});

            let error = block_transfers(&block).unwrap_err();

            assert_eq!(
                error.to_string(),
                format!("invalid getBlock result: blockTime must be a time in seconds between 1970 and 2200, got {time}")
            );
        }
    }

    #[test]
    fn missing_block_time_is_none() {
        let (time, _) = block_transfers(&json!({"blockTime": null, "transactions": []})).unwrap();

        assert_eq!(time, None);
    }

    #[test]
    fn misaligned_balances_are_an_error() {
        let block = json!({"transactions": [tx("bad", Value::Null, &[1, 2], &[1])]});

        let error = block_transfers(&block).unwrap_err();

        assert!(error.to_string().contains("transaction 0"), "{error}");
    }
}
