//! Fuzzing of the EVM adapter's parsers of JSON-RPC answers and `eth_subscribe`
//! notifications: block headers, blocks, transactions and logs ([`monitor_ingest::evm::types`])
//! and ERC-20 log decoding ([`monitor_ingest::evm::abi`]).
//!
//! Inputs are objects built from the node protocol's keys, with hex quantities past 2^64 and
//! 2^128, hostile values, truncations, deep nesting and random text. Parsing must return a
//! value or an error and never panic.

use monitor_ingest::evm::abi::{decode_erc20, hex_to_decimal, TRANSFER_TOPIC};
use monitor_ingest::evm::types::{parse_block, parse_header, parse_log, parse_transaction};
use monitor_tests::fuzz;
use proptest::prelude::*;
use serde_json::Value;

const KEYS: &[&str] = &[
    "number",
    "hash",
    "parentHash",
    "timestamp",
    "transactions",
    "from",
    "to",
    "value",
    "input",
    "blockNumber",
    "blockHash",
    "transactionHash",
    "transactionIndex",
    "logIndex",
    "address",
    "topics",
    "data",
    "removed",
    "blockTimestamp",
    "gasPrice",
    "result",
    "params",
    "subscription",
    "jsonrpc",
    "id",
    "method",
    "error",
    "code",
    "message",
];

const WORDS: &[&str] = &[
    "0x0",
    "0x",
    "0x1",
    "0x10",
    "0xffffffffffffffff",
    "0x10000000000000000",
    "0xffffffffffffffffffffffffffffffff",
    "0x100000000000000000000000000000000",
    "0xZZ",
    "-0x1",
    "0x00000000000000000000000000000000000000000000000000000000000000ff",
    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
    "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
    "eth_subscription",
    "2.0",
];

fn values() -> impl Strategy<Value = Value> {
    // Texts that are not JSON still reach the parsers, as a JSON string.
    fuzz::texts(fuzz::tree(KEYS, WORDS))
        .prop_map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn check(value: &Value) {
    let _ = parse_header(value);
    let _ = parse_block(value);
    let _ = parse_transaction(value);
    let _ = parse_log(value);
    if let Some(result) = value.get("params").and_then(|p| p.get("result")) {
        let _ = parse_header(result);
        let _ = parse_log(result);
    }
}

fn erc20_inputs() -> impl Strategy<Value = (Vec<String>, String)> {
    let topic = prop_oneof![
        Just(TRANSFER_TOPIC.to_owned()),
        proptest::sample::select(WORDS).prop_map(str::to_owned),
        "0x[0-9a-fA-F]{0,70}",
    ];
    (
        proptest::collection::vec(topic, 0..5),
        "(0x)?[0-9a-fA-Fg]{0,200}",
    )
}

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn evm_parsers_never_panic(value in values()) {
        check(&value);
    }

    #[test]
    fn erc20_decoding_never_panics((topics, data) in erc20_inputs()) {
        let _ = decode_erc20(&topics, &data);
        let _ = hex_to_decimal(data.trim_start_matches("0x"));
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn evm_parsers_never_panic_long(value in values()) {
        check(&value);
    }

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn erc20_decoding_never_panics_long((topics, data) in erc20_inputs()) {
        let _ = decode_erc20(&topics, &data);
        let _ = hex_to_decimal(data.trim_start_matches("0x"));
    }
}
