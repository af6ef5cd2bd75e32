//! `getBlock` over Solana's HTTP JSON-RPC, with the waits a fresh slot needs.
//!
//! A slot notification comes before the block reaches the requested commitment, so a node
//! returns "block not available" (-32004) for a while, and the request is repeated every
//! [`NOT_AVAILABLE_RETRY`] up to [`NOT_AVAILABLE_LIMIT`]. A slot without a block (error
//! -32007 when it was skipped, -32009 when long-term storage has no block, or a `null`
//! result) yields `None`. A response with neither a result nor an error is an error.

use std::time::Duration;

use serde_json::{json, Value};
use url::Url;

use crate::block_task::jsonrpc::{shown_text, shown_value};

/// Time allowed for one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Wait between requests for a block that is not available yet.
pub const NOT_AVAILABLE_RETRY: Duration = Duration::from_millis(500);
/// Total time a block may stay unavailable before the slot is reported as not fetched.
pub const NOT_AVAILABLE_LIMIT: Duration = Duration::from_secs(60);
/// Maximum size of a `getBlock` response in bytes, the same bound as for PubSub messages. The
/// recorded mainnet block of slot 110130000 (3,439 transactions, `jsonParsed`) is 6.5 MB.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Error codes of Solana nodes.
const BLOCK_NOT_AVAILABLE: i64 = -32004;
const SLOT_SKIPPED: i64 = -32007;
const LONG_TERM_STORAGE_SLOT_SKIPPED: i64 = -32009;

#[derive(Debug, thiserror::Error)]
pub enum GetBlockError {
    #[error("getBlock {slot} failed: {source}")]
    Http { slot: u64, source: reqwest::Error },
    #[error("getBlock {slot} failed with code {code}: {message}")]
    Server {
        slot: u64,
        code: i64,
        message: String,
    },
    #[error("getBlock {slot}: the block was still not available after {NOT_AVAILABLE_LIMIT:?}")]
    NotAvailable { slot: u64 },
    #[error("getBlock {slot} returned a response with neither result nor error: {response}")]
    Invalid { slot: u64, response: String },
    #[error("getBlock {slot} returned a response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { slot: u64 },
    #[error("getBlock {slot} returned invalid JSON: {source}")]
    Json {
        slot: u64,
        source: serde_json::Error,
    },
}

/// A Solana HTTP JSON-RPC endpoint.
#[derive(Clone)]
pub struct SolanaRpc {
    client: reqwest::Client,
    url: Url,
    commitment: String,
}

impl SolanaRpc {
    /// `commitment` is the subscriptions' one; `getBlock` does not accept `processed`, so that
    /// becomes `confirmed`.
    pub fn new(url: Url, commitment: &str) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let commitment = match commitment {
            "processed" => "confirmed",
            other => other,
        };
        Ok(SolanaRpc {
            client,
            url,
            commitment: commitment.to_owned(),
        })
    }

    /// Fetches the block of `slot` with full transactions; `None` when the slot has none.
    pub async fn block(&self, slot: u64) -> Result<Option<Value>, GetBlockError> {
        let started = tokio::time::Instant::now();
        loop {
            match self.request_block(slot).await? {
                Reply::Block(block) => return Ok(Some(block)),
                Reply::NoBlock => return Ok(None),
                Reply::NotYet if started.elapsed() < NOT_AVAILABLE_LIMIT => {
                    tokio::time::sleep(NOT_AVAILABLE_RETRY).await;
                }
                Reply::NotYet => return Err(GetBlockError::NotAvailable { slot }),
            }
        }
    }

    async fn request_block(&self, slot: u64) -> Result<Reply, GetBlockError> {
        let body = json!({
            "jsonrpc": "2.0",
            "id": slot,
            "method": "getBlock",
            "params": [slot, {
                "encoding": "jsonParsed",
                "transactionDetails": "full",
                "maxSupportedTransactionVersion": 0,
                "rewards": false,
                "commitment": self.commitment,
            }],
        });
        let http = |source| GetBlockError::Http { slot, source };
        let response = self
            .client
            .post(self.url.clone())
            .json(&body)
            .send()
            .await
            .map_err(http)?
            .error_for_status()
            .map_err(http)?;
        let body = read_body(slot, response).await?;
        let response: Value =
            serde_json::from_slice(&body).map_err(|source| GetBlockError::Json { slot, source })?;
        reply(slot, response)
    }
}

/// Reads a response body of at most [`MAX_RESPONSE_BYTES`], so that a node cannot make ingest
/// buffer an unbounded body. A larger `Content-Length` is rejected before the body is read.
async fn read_body(slot: u64, mut response: reqwest::Response) -> Result<Vec<u8>, GetBlockError> {
    let too_large = |length: u64| length > MAX_RESPONSE_BYTES as u64;
    if response.content_length().is_some_and(too_large) {
        return Err(GetBlockError::TooLarge { slot });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| GetBlockError::Http { slot, source })?
    {
        if too_large((body.len() + chunk.len()) as u64) {
            return Err(GetBlockError::TooLarge { slot });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The meaning of a `getBlock` response for its slot.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Block(Value),
    NoBlock,
    NotYet,
}

/// Reads a `getBlock` response: the block, no block (skipped or pruned slot), not yet
/// available, or the node's error.
pub fn reply(slot: u64, mut response: Value) -> Result<Reply, GetBlockError> {
    if let Some(error) = response.get("error").filter(|e| !e.is_null()) {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        return match code {
            BLOCK_NOT_AVAILABLE => Ok(Reply::NotYet),
            SLOT_SKIPPED | LONG_TERM_STORAGE_SLOT_SKIPPED => Ok(Reply::NoBlock),
            _ => Err(GetBlockError::Server {
                slot,
                code,
                message: shown_text(
                    error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("no message"),
                ),
            }),
        };
    }
    match response.get_mut("result").map(Value::take) {
        Some(Value::Null) => Ok(Reply::NoBlock),
        Some(block) => Ok(Reply::Block(block)),
        None => Err(GetBlockError::Invalid {
            slot,
            response: shown_value(&response),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_decide_the_reply() {
        let error =
            |code: i64| json!({"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": "x"}});

        assert!(matches!(reply(5, error(-32004)), Ok(Reply::NotYet)));
        assert!(matches!(reply(5, error(-32007)), Ok(Reply::NoBlock)));
        assert!(matches!(reply(5, error(-32009)), Ok(Reply::NoBlock)));
        let failure = reply(5, error(-32602)).err().unwrap();
        assert_eq!(failure.to_string(), "getBlock 5 failed with code -32602: x");
    }

    #[test]
    fn result_is_the_block() {
        let block = json!({"blockTime": 7, "transactions": []});

        let parsed = reply(
            5,
            json!({"jsonrpc": "2.0", "id": 1, "result": block.clone()}),
        );

        assert!(matches!(parsed, Ok(Reply::Block(b)) if b == block));
    }

    #[test]
    fn null_result_is_no_block() {
        let parsed = reply(5, json!({"jsonrpc": "2.0", "id": 1, "result": null}));

        assert!(matches!(parsed, Ok(Reply::NoBlock)));
    }

    #[test]
    fn response_without_result_or_error_is_invalid() {
        for response in [json!({"jsonrpc": "2.0", "id": 1}), json!([]), json!("ok")] {
            let failure = reply(5, response.clone()).unwrap_err();

            assert_eq!(
                failure.to_string(),
                format!("getBlock 5 returned a response with neither result nor error: {response}")
            );
        }
    }

    #[test]
    fn server_message_is_escaped() {
        let response =
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": "a\nb"}});

        let failure = reply(5, response).unwrap_err();

        assert_eq!(
            failure.to_string(),
            "getBlock 5 failed with code -32000: a\\nb"
        );
    }
}
