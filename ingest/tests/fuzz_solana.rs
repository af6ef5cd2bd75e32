//! Fuzzing of the Solana adapter's parsers of node input. They are: the messages of the PubSub
//! socket ([`monitor_ingest::block_task::jsonrpc::route`], which routes the responses to
//! subscribe requests and the notifications), `slotNotification` and `logsNotification` results
//! ([`monitor_ingest::solana::runner`]), `getBlock` responses
//! ([`monitor_ingest::solana::rpc::reply`]) and the SOL transfers of a block
//! ([`monitor_ingest::solana::transfers::block_transfers`]).
//!
//! Inputs are built from the protocol's keys with hostile values, truncations, deep nesting and
//! random text, and from the recorded mainnet block of slot 110130000
//! (`data/sol-mainnet-slot-110130000`): its transactions become logs notifications and small
//! blocks, some of whose nodes are replaced by hostile values or removed. Parsing must never
//! panic. What a parser accepts must match the input, and what the protocol's contract rejects
//! must be an error of one line and at most [`MAX_ERROR_CHARS`] characters. The size of the
//! input is bounded before parsing: a PubSub message by the WebSocket reader
//! (`MAX_MESSAGE_BYTES` of `block_task::jsonrpc`) and a `getBlock` response by
//! [`monitor_ingest::solana::rpc::MAX_RESPONSE_BYTES`], which the hostile-input tests check
//! with a real socket.

// Loading the recorded block panics on failure: a panic is the test failure.
#![allow(clippy::expect_used)]

use std::collections::HashMap;
use std::io::Read;
use std::sync::LazyLock;

use monitor_ingest::block_task::jsonrpc::{route, subscription_id, Pending, RpcError};
use monitor_ingest::solana::rpc::{reply, GetBlockError, Reply};
use monitor_ingest::solana::runner::{parse_logs_notification, parse_slot_notification};
use monitor_ingest::solana::transfers::{block_transfers, Transfer};
use monitor_tests::fuzz::{self, Node};
use monitor_tests::workspace_dir;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const KEYS: &[&str] = &[
    "jsonrpc",
    "id",
    "method",
    "params",
    "subscription",
    "result",
    "error",
    "code",
    "message",
    "slot",
    "parent",
    "root",
    "context",
    "value",
    "signature",
    "err",
    "logs",
    "blockTime",
    "blockhash",
    "blockHeight",
    "parentSlot",
    "transactions",
    "meta",
    "transaction",
    "signatures",
    "accountKeys",
    "pubkey",
    "preBalances",
    "postBalances",
    "loadedAddresses",
    "writable",
    "readonly",
    "logMessages",
    "InstructionError",
];

const WORDS: &[&str] = &[
    "2.0",
    "slotNotification",
    "logsNotification",
    "slotSubscribe",
    "logsSubscribe",
    "3dmDSn23jc3jwKPwDXbRQjUrmnZ7sY2hhyCgQYKo4nAcM5HwtEMeDU7ZQ7Y1SkX1ZUcDzxJZgTC3Qd8GDh71Hcbp",
    PROGRAM_ID,
    "11111111111111111111111111111111",
    "Program log: Instruction: Transfer",
    "Block not available for slot 110130000",
    "confirmed",
];

const METHODS: &[&str] = &[
    "slotNotification",
    "logsNotification",
    "eth_subscription",
    "",
];

/// The program id that the logs notifications are parsed for.
const PROGRAM_ID: &str = "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA";
/// The slot of the recorded block, and of every `getBlock` request here.
const SLOT: u64 = 110_130_000;
/// Latest block time the adapter accepts: the year 2200, in seconds.
const MAX_BLOCK_TIME: i64 = 7_258_118_400;
/// Maximum length of a parser's error message, in characters.
const MAX_ERROR_CHARS: usize = 500;

/// Error codes of Solana nodes for `getBlock`.
const BLOCK_NOT_AVAILABLE: i64 = -32004;
const SLOT_SKIPPED: i64 = -32007;
const LONG_TERM_STORAGE_SLOT_SKIPPED: i64 = -32009;

/// The transactions of the recorded block, read once per test binary.
static RECORDED_TRANSACTIONS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let path = workspace_dir().join("data/sol-mainnet-slot-110130000/getBlock-110130000.json.gz");
    let file = std::fs::File::open(&path).expect("the recorded Solana block exists");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("the recorded Solana block is gzipped text");
    let mut response: Value =
        serde_json::from_str(&text).expect("the recorded Solana block is JSON");
    match response["result"]["transactions"].take() {
        Value::Array(transactions) => transactions,
        other => panic!("the recorded block has no transactions array: {other}"),
    }
});

/// Positions of the recorded transactions that moved SOL: 19 of the 3,439, because most are
/// votes that only pay their fee.
static TRANSACTIONS_THAT_MOVED_SOL: LazyLock<Vec<usize>> = LazyLock::new(|| {
    (0..RECORDED_TRANSACTIONS.len())
        .filter(|&index| moved_sol(&RECORDED_TRANSACTIONS[index]))
        .collect()
});

/// Recorded transactions, half of them ones that moved SOL.
fn recorded_transaction() -> impl Strategy<Value = Value> {
    prop_oneof![
        0..RECORDED_TRANSACTIONS.len(),
        proptest::sample::select(TRANSACTIONS_THAT_MOVED_SOL.as_slice()),
    ]
    .prop_map(|index| RECORDED_TRANSACTIONS[index].clone())
}

// ---- Building and editing inputs ----

fn text(value: &str) -> Node {
    Node::Text(value.to_owned())
}

fn token(value: impl ToString) -> Node {
    Node::Token(value.to_string())
}

fn object(fields: Vec<(&str, Node)>) -> Node {
    Node::Object(
        fields
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    )
}

/// Converts a JSON value into a tree, to edit and render with hostile tokens.
fn node_of(value: &Value) -> Node {
    match value {
        Value::String(value) => Node::Text(value.clone()),
        Value::Array(items) => Node::Array(items.iter().map(node_of).collect()),
        Value::Object(fields) => Node::Object(
            fields
                .iter()
                .map(|(key, value)| (key.clone(), node_of(value)))
                .collect(),
        ),
        other => Node::Token(other.to_string()),
    }
}

/// A change to one node of a tree, which is found by its pre-order position modulo the
/// node count.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, Node),
    /// Removes a field of the object at the position. A node that is not an object is kept.
    RemoveField(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        3 => (any::<usize>(), fuzz::tree(KEYS, WORDS))
            .prop_map(|(at, node)| Edit::Replace(at, node)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(at, field)| Edit::RemoveField(at, field)),
    ];
    proptest::collection::vec(edit, 0..4)
}

fn count_nodes(node: &Node) -> usize {
    1 + match node {
        Node::Array(items) => items.iter().map(count_nodes).sum(),
        Node::Object(fields) => fields.iter().map(|(_, value)| count_nodes(value)).sum(),
        Node::Token(_) | Node::Text(_) => 0,
    }
}

/// Returns the node at pre-order position `position`, counting down as it descends.
fn node_at<'a>(node: &'a mut Node, position: &mut usize) -> Option<&'a mut Node> {
    if *position == 0 {
        return Some(node);
    }
    *position -= 1;
    let children: Vec<&'a mut Node> = match node {
        Node::Array(items) => items.iter_mut().collect(),
        Node::Object(fields) => fields.iter_mut().map(|(_, value)| value).collect(),
        Node::Token(_) | Node::Text(_) => Vec::new(),
    };
    for child in children {
        let size = count_nodes(child);
        if *position < size {
            return node_at(child, position);
        }
        *position -= size;
    }
    None
}

fn apply(mut root: Node, edits: Vec<Edit>) -> Node {
    for edit in edits {
        let count = count_nodes(&root);
        match edit {
            Edit::Replace(at, replacement) => {
                if let Some(node) = node_at(&mut root, &mut (at % count)) {
                    *node = replacement;
                }
            }
            Edit::RemoveField(at, field) => {
                if let Some(Node::Object(fields)) = node_at(&mut root, &mut (at % count)) {
                    if !fields.is_empty() {
                        fields.remove(field % fields.len());
                    }
                }
            }
        }
    }
    root
}

/// Parses a text as JSON. A text that is not JSON still reaches the parsers, as a JSON string.
fn value_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

// ---- PubSub messages ----

/// Subscription ids: the small numbers Solana sends, any `u64`, strings and hostile values.
fn subscription() -> BoxedStrategy<Node> {
    prop_oneof![
        3 => (0u64..4).prop_map(token),
        1 => any::<u64>().prop_map(token),
        1 => "[0-9a-fx]{0,20}".prop_map(Node::Text),
        1 => fuzz::tree(KEYS, WORDS),
    ]
    .boxed()
}

/// Slots: mostly `u64`, sometimes hostile values.
fn slot() -> BoxedStrategy<Node> {
    prop_oneof![
        3 => any::<u64>().prop_map(token),
        1 => fuzz::tree(KEYS, WORDS),
    ]
    .boxed()
}

fn slot_result() -> BoxedStrategy<Node> {
    (slot(), any::<u64>(), any::<u64>())
        .prop_map(|(slot, parent, root)| {
            object(vec![
                ("parent", token(parent)),
                ("root", token(root)),
                ("slot", slot),
            ])
        })
        .boxed()
}

/// Builds the `logsNotification` result of a recorded transaction for `slot`.
fn logs_result_of(transaction: &Value, slot: Node) -> Node {
    object(vec![
        ("context", object(vec![("slot", slot)])),
        (
            "value",
            object(vec![
                (
                    "signature",
                    node_of(&transaction["transaction"]["signatures"][0]),
                ),
                ("err", node_of(&transaction["meta"]["err"])),
                ("logs", node_of(&transaction["meta"]["logMessages"])),
            ]),
        ),
    ])
}

fn logs_result() -> BoxedStrategy<Node> {
    (recorded_transaction(), slot(), edits())
        .prop_map(|(transaction, slot, edits)| apply(logs_result_of(&transaction, slot), edits))
        .boxed()
}

fn notification() -> BoxedStrategy<Node> {
    let result = prop_oneof![
        2 => slot_result(),
        2 => logs_result(),
        1 => fuzz::tree(KEYS, WORDS),
    ];
    (proptest::sample::select(METHODS), subscription(), result)
        .prop_map(|(method, subscription, result)| {
            object(vec![
                ("jsonrpc", text("2.0")),
                ("method", text(method)),
                (
                    "params",
                    object(vec![("result", result), ("subscription", subscription)]),
                ),
            ])
        })
        .boxed()
}

/// Responses to the subscribe requests 1 and 2: a subscription id or an error.
fn subscribe_response() -> BoxedStrategy<Node> {
    let id = prop_oneof![
        4 => (1u64..=3).prop_map(token),
        1 => fuzz::tree(KEYS, WORDS),
    ];
    let code = prop_oneof![
        2 => Just(token(-32602)),
        1 => any::<i64>().prop_map(token),
        1 => fuzz::tree(KEYS, WORDS),
    ];
    let error = (code, ".{0,60}")
        .prop_map(|(code, message)| object(vec![("code", code), ("message", Node::Text(message))]));
    let body = prop_oneof![
        3 => subscription().prop_map(|id| ("result", id)),
        1 => error.prop_map(|error| ("error", error)),
    ];
    (id, body)
        .prop_map(|(id, (key, body))| {
            object(vec![("jsonrpc", text("2.0")), (key, body), ("id", id)])
        })
        .boxed()
}

fn messages() -> impl Strategy<Value = String> {
    let message = prop_oneof![
        3 => notification(),
        2 => subscribe_response(),
        1 => fuzz::tree(KEYS, WORDS),
    ];
    fuzz::texts(message.boxed())
}

fn one_line_and_short(error: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !error.chars().any(char::is_control),
        "error with a control character: {error:?}"
    );
    prop_assert!(
        error.chars().count() <= MAX_ERROR_CHARS,
        "error of {} characters: {error}",
        error.chars().count()
    );
    Ok(())
}

/// Returns the method, subscription id and result of a message that has the JSON-RPC 2.0 shape
/// of a notification.
fn expected_notification(message: &Value) -> Option<(String, String, Value)> {
    let method = message.get("method")?.as_str()?;
    let params = message.get("params")?;
    let subscription = match params.get("subscription")? {
        Value::String(id) => id.clone(),
        Value::Number(id) => id.to_string(),
        _ => return None,
    };
    let result = params.get("result")?;
    Some((method.to_owned(), subscription, result.clone()))
}

fn check_message(text: &str) -> Result<(), TestCaseError> {
    let (slots_reply, mut slots_received) = oneshot::channel();
    let (logs_reply, mut logs_received) = oneshot::channel();
    let mut pending: Pending = HashMap::from([
        (1, ("slotSubscribe".to_owned(), slots_reply)),
        (2, ("logsSubscribe".to_owned(), logs_reply)),
    ]);

    let routed = route(text, &mut pending);

    let message: Option<Value> = serde_json::from_str(text).ok();
    let id = message
        .as_ref()
        .and_then(|m| m.get("id"))
        .and_then(Value::as_u64);
    match (&message, id) {
        (Some(message), Some(id)) => {
            prop_assert!(routed.is_none(), "a response routed as a notification");
            let received = match id {
                1 => Some(slots_received.try_recv()),
                2 => Some(logs_received.try_recv()),
                _ => None,
            };
            prop_assert_eq!(pending.len(), if received.is_some() { 1 } else { 2 });
            if let Some(received) = received {
                let received = received
                    .map_err(|e| TestCaseError::fail(format!("no response received: {e}")))?;
                check_subscribe_response(message, received)?;
            }
        }
        (Some(message), None) => {
            let expected = expected_notification(message);
            let routed = routed.map(|n| (n.method, n.subscription, n.result));
            prop_assert_eq!(&routed, &expected);
            if let Some((_, _, result)) = routed {
                check_slot_result(&result)?;
                check_logs_result(&result)?;
            }
        }
        (None, _) => prop_assert!(routed.is_none(), "text that is not JSON was routed"),
    }
    Ok(())
}

/// Checks what a subscribe request received against the response message.
fn check_subscribe_response(
    message: &Value,
    received: Result<Value, RpcError>,
) -> Result<(), TestCaseError> {
    let error = message.get("error").filter(|e| !e.is_null());
    match (received, error) {
        (Ok(result), None) => {
            prop_assert_eq!(&result, message.get("result").unwrap_or(&Value::Null));
            let id = subscription_id(&result);
            match &result {
                Value::String(expected) => prop_assert_eq!(id.as_ref(), Some(expected)),
                Value::Number(expected) => prop_assert_eq!(id, Some(expected.to_string())),
                _ => prop_assert_eq!(id, None),
            }
        }
        (Err(failure), Some(error)) => {
            let RpcError::Server { code, .. } = &failure else {
                return Err(TestCaseError::fail(format!("{failure} for error {error}")));
            };
            let expected = error.get("code").and_then(Value::as_i64).unwrap_or(0);
            prop_assert_eq!(*code, expected);
            one_line_and_short(&failure.to_string())?;
        }
        (received, error) => {
            return Err(TestCaseError::fail(format!(
                "{received:?} received for a response with error {error:?}"
            )))
        }
    }
    Ok(())
}

fn check_slot_result(result: &Value) -> Result<(), TestCaseError> {
    match parse_slot_notification(result) {
        Ok(slot) => prop_assert_eq!(Some(slot), result.get("slot").and_then(Value::as_u64)),
        Err(reason) => {
            prop_assert_eq!(
                result.get("slot").and_then(Value::as_u64),
                None,
                "{}",
                reason
            );
            one_line_and_short(&reason)?;
        }
    }
    Ok(())
}

/// Returns the log lines of a `logsNotification` value, which must be an array of strings or
/// `null`.
fn expected_logs(value: &Value) -> Option<Vec<String>> {
    match value.get("logs") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(lines)) => lines
            .iter()
            .map(|line| line.as_str().map(str::to_owned))
            .collect(),
        Some(_) => None,
    }
}

fn check_logs_result(result: &Value) -> Result<(), TestCaseError> {
    let slot = result
        .get("context")
        .and_then(|c| c.get("slot"))
        .and_then(Value::as_u64);
    let value = result.get("value").unwrap_or(&Value::Null);
    let signature = value.get("signature").and_then(Value::as_str);
    let logs = expected_logs(value);
    match parse_logs_notification(PROGRAM_ID, result) {
        Ok(log) => {
            prop_assert_eq!(Some(log.slot), slot);
            prop_assert_eq!(Some(log.signature.as_str()), signature);
            prop_assert_eq!(&log.program_id, PROGRAM_ID);
            prop_assert_eq!(Some(&log.logs), logs.as_ref(), "logs of {}", value);
            let failed = value.get("err").is_some_and(|err| !err.is_null());
            prop_assert_eq!(log.failed, failed);
        }
        Err(reason) => {
            prop_assert!(
                slot.is_none() || signature.is_none() || logs.is_none(),
                "a valid logs notification rejected: {reason}: {result}"
            );
            one_line_and_short(&reason)?;
        }
    }
    Ok(())
}

// ---- getBlock responses and blocks ----

/// Blocks of up to 5 recorded transactions, with a block time that is mostly valid.
fn block() -> BoxedStrategy<Node> {
    let block_time = prop_oneof![
        3 => (1_600_000_000i64..1_800_000_000).prop_map(token),
        1 => Just(token("null")),
        1 => fuzz::tree(KEYS, WORDS),
    ];
    (
        proptest::collection::vec(recorded_transaction(), 0..5),
        block_time,
    )
        .prop_map(|(transactions, block_time)| {
            object(vec![
                ("blockHeight", token(100_473_234)),
                ("blockTime", block_time),
                (
                    "blockhash",
                    text("4r2DXHyLPkCXVMjvHwdqWeyNyN7ixQbKPSVWY9w3JvpD"),
                ),
                ("parentSlot", token(SLOT - 1)),
                (
                    "transactions",
                    Node::Array(transactions.iter().map(node_of).collect()),
                ),
            ])
        })
        .boxed()
}

/// `getBlock` responses: a block with edits, an error of one of Solana's codes or another,
/// `null`, or a hostile tree.
fn response() -> BoxedStrategy<Node> {
    let code = prop_oneof![
        Just(BLOCK_NOT_AVAILABLE),
        Just(SLOT_SKIPPED),
        Just(LONG_TERM_STORAGE_SLOT_SKIPPED),
        Just(-32602i64),
        any::<i64>(),
    ];
    let error = (code, ".{0,60}").prop_map(|(code, message)| {
        object(vec![
            ("code", token(code)),
            ("message", Node::Text(message)),
        ])
    });
    let body = prop_oneof![
        4 => (block(), edits()).prop_map(|(block, edits)| ("result", apply(block, edits))),
        1 => Just(("result", token("null"))),
        1 => error.prop_map(|error| ("error", error)),
        1 => fuzz::tree(KEYS, WORDS).prop_map(|tree| ("error", tree)),
    ];
    (body, edits())
        .prop_map(|((key, body), edits)| {
            let response = object(vec![
                ("jsonrpc", text("2.0")),
                (key, body),
                ("id", token(SLOT)),
            ]);
            apply(response, edits)
        })
        .boxed()
}

fn responses() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => response().prop_map(|node| fuzz::render(&node)),
        1 => fuzz::texts(response()),
        1 => fuzz::texts(fuzz::tree(KEYS, WORDS)),
    ]
}

fn check_response(text: &str) -> Result<(), TestCaseError> {
    let response = value_of(text);
    let error = response.get("error").filter(|e| !e.is_null());
    let code = error.map(|e| e.get("code").and_then(Value::as_i64).unwrap_or(0));
    let result = response.get("result");
    match reply(SLOT, response.clone()) {
        Ok(Reply::Block(block)) => {
            prop_assert!(error.is_none());
            prop_assert_eq!(Some(&block), result);
            prop_assert!(!block.is_null());
            check_block(&block)?;
        }
        Ok(Reply::NoBlock) => prop_assert!(
            matches!(code, Some(SLOT_SKIPPED | LONG_TERM_STORAGE_SLOT_SKIPPED))
                || (error.is_none() && result == Some(&Value::Null)),
            "no block read from {}",
            response
        ),
        Ok(Reply::NotYet) => prop_assert_eq!(code, Some(BLOCK_NOT_AVAILABLE)),
        Err(failure) => {
            match &failure {
                GetBlockError::Server { code: got, .. } => prop_assert_eq!(Some(*got), code),
                other => prop_assert!(
                    error.is_none() && result.is_none(),
                    "{other} for {response}"
                ),
            }
            let line = failure.to_string();
            prop_assert!(line.starts_with(&format!("getBlock {SLOT} ")), "{line}");
            one_line_and_short(&line)?;
        }
    }
    Ok(())
}

/// Returns the keys of a `jsonParsed` (`{"pubkey": ..}`) or `json` (string) message, or `None`.
fn expected_keys(message: &Value) -> Option<Vec<String>> {
    message
        .get("accountKeys")?
        .as_array()?
        .iter()
        .map(|key| match key {
            Value::String(key) => Some(key.clone()),
            Value::Object(fields) => fields.get("pubkey")?.as_str().map(str::to_owned),
            _ => None,
        })
        .collect()
}

fn balances(meta: &Value, field: &str) -> Option<Vec<u64>> {
    meta.get(field)?
        .as_array()?
        .iter()
        .map(Value::as_u64)
        .collect()
}

/// Balance changes of a successful transaction: (account key, lamports gained or lost), or
/// `None` when the transaction breaks the `getBlock` contract.
fn balance_changes(tx: &Value) -> Option<(String, Vec<(String, i128)>)> {
    let signature = tx.get("transaction")?.get("signatures")?.get(0)?.as_str()?;
    let keys = expected_keys(tx["transaction"].get("message")?)?;
    let meta = tx.get("meta").unwrap_or(&Value::Null);
    let pre = balances(meta, "preBalances")?;
    let post = balances(meta, "postBalances")?;
    let loaded: usize = ["writable", "readonly"]
        .iter()
        .map(|field| {
            meta.get("loadedAddresses")
                .and_then(|loaded| loaded.get(field))
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        })
        .sum();
    if pre.len() != post.len() || pre.len() > keys.len() + loaded {
        return None;
    }
    let changes = pre
        .iter()
        .zip(&post)
        .enumerate()
        .map(|(index, (&before, &after))| {
            let key = keys
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("loaded account {index}"));
            (key, i128::from(after) - i128::from(before))
        })
        .collect();
    Some((signature.to_owned(), changes))
}

fn check_transfer(changes: &[(String, i128)], transfer: &Transfer) -> Result<(), TestCaseError> {
    let gained: i128 = changes.iter().map(|(_, change)| change.max(&0)).sum();
    let largest_gain = changes.iter().map(|(_, change)| *change).max().unwrap_or(0);
    let largest_loss = changes.iter().map(|(_, change)| *change).min().unwrap_or(0);
    prop_assert_eq!(
        i128::from(transfer.lamports),
        gained.min(i128::from(u64::MAX))
    );
    prop_assert!(
        changes
            .iter()
            .any(|(key, change)| *key == transfer.to && *change == largest_gain),
        "receiver {} did not gain the most",
        transfer.to
    );
    prop_assert!(
        changes
            .iter()
            .any(|(key, change)| *key == transfer.from && *change == largest_loss),
        "sender {} did not lose the most",
        transfer.from
    );
    Ok(())
}

fn check_block(block: &Value) -> Result<(), TestCaseError> {
    let read = block_transfers(block);
    let Some(transactions) = block.get("transactions").and_then(Value::as_array) else {
        prop_assert!(read.is_err(), "a block without transactions was read");
        return Ok(());
    };
    let successful = transactions
        .iter()
        .enumerate()
        .filter(|(_, tx)| tx["meta"]["err"].is_null());
    let mut expected = Vec::new();
    let mut first_malformed = None;
    for (index, tx) in successful {
        match balance_changes(tx) {
            Some((signature, changes)) => {
                let moved =
                    changes.iter().any(|(_, c)| *c > 0) && changes.iter().any(|(_, c)| *c < 0);
                if moved {
                    expected.push((signature, changes));
                }
            }
            None => {
                first_malformed = Some(index);
                break;
            }
        }
    }
    let block_time = match block.get("blockTime") {
        None | Some(Value::Null) => Some(None),
        Some(time) => time
            .as_i64()
            .filter(|t| (1..=MAX_BLOCK_TIME).contains(t))
            .map(Some),
    };

    match (read, first_malformed) {
        (Ok((time, transfers)), None) => {
            prop_assert_eq!(
                Some(time),
                block_time,
                "blockTime {:?}",
                block.get("blockTime")
            );
            prop_assert_eq!(transfers.len(), expected.len());
            for (transfer, (signature, changes)) in transfers.iter().zip(&expected) {
                prop_assert_eq!(&transfer.signature, signature);
                check_transfer(changes, transfer)?;
            }
        }
        (Ok(_), Some(index)) => {
            return Err(TestCaseError::fail(format!(
                "transaction {index} breaks the contract but the block was read: {}",
                transactions[index]
            )))
        }
        (Err(error), malformed) => {
            let line = error.to_string();
            match malformed {
                Some(index) => prop_assert!(
                    line.starts_with(&format!("invalid getBlock result: transaction {index}: ")),
                    "{line}"
                ),
                None => prop_assert!(
                    block_time.is_none() && line.starts_with("invalid getBlock result: "),
                    "a valid block rejected: {line}"
                ),
            }
            one_line_and_short(&line)?;
        }
    }
    Ok(())
}

// ---- Valid frames ----

/// Generates a subscription id, a slot and a recorded transaction, from which
/// [`check_valid_frames`] builds a subscribe response, a logs notification and a slot
/// notification.
fn valid_frames() -> impl Strategy<Value = (u64, u64, Value)> {
    (any::<u64>(), any::<u64>(), recorded_transaction())
}

fn check_valid_frames(subscription: u64, slot: u64, tx: &Value) -> Result<(), TestCaseError> {
    let (reply, mut received) = oneshot::channel();
    let mut pending: Pending = HashMap::from([(1, ("logsSubscribe".to_owned(), reply))]);
    let response = json!({"jsonrpc": "2.0", "result": subscription, "id": 1}).to_string();
    prop_assert!(route(&response, &mut pending).is_none());
    let result = received
        .try_recv()
        .map_err(|e| TestCaseError::fail(format!("no response received: {e}")))?
        .map_err(|e| TestCaseError::fail(format!("error received: {e}")))?;
    let id = subscription_id(&result);
    prop_assert_eq!(id.clone(), Some(subscription.to_string()));

    let signature = tx["transaction"]["signatures"][0].clone();
    let logs = tx["meta"]["logMessages"].clone();
    let notification = json!({
        "jsonrpc": "2.0",
        "method": "logsNotification",
        "params": {
            "result": {
                "context": {"slot": slot},
                "value": {"signature": signature, "err": tx["meta"]["err"], "logs": logs},
            },
            "subscription": subscription,
        },
    });
    let routed = route(&notification.to_string(), &mut pending)
        .ok_or_else(|| TestCaseError::fail("the logs notification was not routed"))?;
    prop_assert_eq!(Some(&routed.subscription), id.as_ref());
    let log = parse_logs_notification(PROGRAM_ID, &routed.result)
        .map_err(|e| TestCaseError::fail(format!("valid logs notification rejected: {e}")))?;
    prop_assert_eq!(log.slot, slot);
    prop_assert_eq!(Some(log.signature.as_str()), signature.as_str());
    prop_assert_eq!(json!(log.logs), logs);
    prop_assert_eq!(log.failed, !tx["meta"]["err"].is_null());

    let notification = json!({
        "jsonrpc": "2.0",
        "method": "slotNotification",
        "params": {
            "result": {"parent": slot.saturating_sub(1), "root": slot / 2, "slot": slot},
            "subscription": subscription,
        },
    });
    let routed = route(&notification.to_string(), &mut pending)
        .ok_or_else(|| TestCaseError::fail("the slot notification was not routed"))?;
    prop_assert_eq!(parse_slot_notification(&routed.result), Ok(slot));
    Ok(())
}

/// A block of the recorded transactions, as `getBlock` returns it, must yield one transfer per
/// successful transaction that moved SOL.
fn check_valid_block(transactions: Vec<Value>) -> Result<(), TestCaseError> {
    let response = json!({
        "jsonrpc": "2.0",
        "result": {
            "blockTime": 1_638_693_800,
            "parentSlot": SLOT - 1,
            "transactions": transactions,
        },
        "id": SLOT,
    });
    let Ok(Reply::Block(block)) = reply(SLOT, response) else {
        return Err(TestCaseError::fail(
            "the block was not read from the response",
        ));
    };
    let (time, transfers) = block_transfers(&block)
        .map_err(|e| TestCaseError::fail(format!("valid block rejected: {e}")))?;
    prop_assert_eq!(time, Some(1_638_693_800));
    let moved: Vec<&Value> = block["transactions"]
        .as_array()
        .map(|transactions| transactions.iter().filter(|tx| moved_sol(tx)).collect())
        .unwrap_or_default();
    prop_assert_eq!(transfers.len(), moved.len());
    for (transfer, tx) in transfers.iter().zip(moved) {
        let (signature, changes) =
            balance_changes(tx).ok_or_else(|| TestCaseError::fail("a recorded tx is malformed"))?;
        prop_assert_eq!(&transfer.signature, &signature);
        check_transfer(&changes, transfer)?;
    }
    Ok(())
}

/// Returns whether a transaction succeeded and one of its accounts gained what another lost.
fn moved_sol(tx: &Value) -> bool {
    let pre = balances(&tx["meta"], "preBalances").unwrap_or_default();
    let post = balances(&tx["meta"], "postBalances").unwrap_or_default();
    tx["meta"]["err"].is_null()
        && pre.iter().zip(&post).any(|(before, after)| after > before)
        && pre.iter().zip(&post).any(|(before, after)| after < before)
}

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn pubsub_messages_never_panic(text in messages()) {
        check_message(&text)?;
    }

    #[test]
    fn get_block_responses_never_panic(text in responses()) {
        check_response(&text)?;
    }

    #[test]
    fn valid_pubsub_frames_round_trip((subscription, slot, tx) in valid_frames()) {
        check_valid_frames(subscription, slot, &tx)?;
    }

    #[test]
    fn valid_blocks_yield_their_transfers(
        transactions in proptest::collection::vec(recorded_transaction(), 0..8)
    ) {
        check_valid_block(transactions)?;
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn pubsub_messages_never_panic_long(text in messages()) {
        check_message(&text)?;
    }

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn get_block_responses_never_panic_long(text in responses()) {
        check_response(&text)?;
    }

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn valid_pubsub_frames_round_trip_long((subscription, slot, tx) in valid_frames()) {
        check_valid_frames(subscription, slot, &tx)?;
    }

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn valid_blocks_yield_their_transfers_long(
        transactions in proptest::collection::vec(recorded_transaction(), 0..8)
    ) {
        check_valid_block(transactions)?;
    }
}
