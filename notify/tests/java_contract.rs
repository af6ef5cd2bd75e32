//! The Java WebSocket protocol as `docs/protocols/java-websocket.md` shows it by example:
//! every client message example passes backend-stub's contract check, and the messages that
//! notify builds from the same inputs equal the examples field by field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

use std::collections::BTreeMap;

use monitor_core::messages::{
    Alert, AlertState, AlertType, BatchStatus, Chain, Finding, Heartbeat, StatusChange,
    StatusScope, MESSAGE_VERSION,
};
use monitor_core::{titles, Locale};
use monitor_devkit::backend_stub::contract::{self, CLIENT_MESSAGE_TYPES};
use monitor_notify::alert_log::AlertCounts;
use monitor_notify::java_messages;
use monitor_tests::workspace_dir;
use serde_json::Value;

/// Time of every example: 2024-12-04 12:00:00 UTC.
const EXAMPLE_MS: i64 = 1_733_313_600_000;
const EXAMPLE_COUNTS: AlertCounts = AlertCounts {
    total: 3,
    last_alert_ms: Some(1_733_313_590_000),
};

/// Reads the JSON example under each `### \`type\`` heading of the protocol document.
fn doc_examples() -> BTreeMap<String, Value> {
    let path = workspace_dir().join("docs/protocols/java-websocket.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    let mut examples = BTreeMap::new();
    let mut heading: Option<String> = None;
    let mut block: Option<String> = None;
    for line in text.lines() {
        if let Some(json) = block.as_mut() {
            if line.starts_with("```") {
                let name = heading
                    .take()
                    .expect("an example follows a message heading");
                let value = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("example of {name} is not JSON: {e}"));
                examples.insert(name, value);
                block = None;
            } else {
                json.push_str(line);
            }
        } else if let Some(name) = line.strip_prefix("### `").and_then(|l| l.strip_suffix('`')) {
            heading = Some(name.to_owned());
        } else if line.starts_with("```json") && heading.is_some() {
            block = Some(String::new());
        }
    }
    examples
}

/// Asserts that `actual` equals `expected` at every path, naming the first path that differs.
fn assert_same_fields(kind: &str, path: &str, actual: &Value, expected: &Value) {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            for (key, value) in expected {
                let field = format!("{path}.{key}");
                let got = actual
                    .get(key)
                    .unwrap_or_else(|| panic!("{kind}: notify sends no {field}"));
                assert_same_fields(kind, &field, got, value);
            }
            for key in actual.keys() {
                assert!(
                    expected.contains_key(key),
                    "{kind}: notify sends {path}.{key}, which the example does not show"
                );
            }
        }
        _ => assert_eq!(actual, expected, "{kind}: {path} differs from the example"),
    }
}

fn example(kind: &str) -> Value {
    doc_examples()
        .remove(kind)
        .unwrap_or_else(|| panic!("the protocol document has no example of {kind}"))
}

#[test]
fn every_client_message_type_has_a_valid_example() {
    let examples = doc_examples();
    for kind in CLIENT_MESSAGE_TYPES {
        let example = examples
            .get(*kind)
            .unwrap_or_else(|| panic!("the protocol document has no example of {kind}"));
        assert_eq!(example["type"], *kind, "type of the {kind} example");
        let errors = contract::check(example);
        assert!(
            errors.is_empty(),
            "the {kind} example breaks the contract: {errors:?}"
        );
    }
}

#[test]
fn ping_matches_example() {
    assert_same_fields("ping", "", &java_messages::ping(), &example("ping"));
}

#[test]
fn batch_status_matches_example() {
    let change = StatusChange {
        v: MESSAGE_VERSION,
        scope: StatusScope::Batch {
            task_id: 4,
            batch_id: 12345,
        },
        consumer_id: "server-01-12345".into(),
        status: BatchStatus::Running,
        reason: None,
        item_count: 99,
        progress: 30.0,
        errors: 0,
        sent_ms: EXAMPLE_MS,
    };
    let message = java_messages::status_change(&change, Locale::ZhCn, Some(EXAMPLE_COUNTS));
    assert_same_fields("batch_status", "", &message, &example("batch_status"));
}

fn heartbeat(scope: StatusScope) -> Heartbeat {
    Heartbeat {
        v: MESSAGE_VERSION,
        scope,
        consumer_id: "server-01-12345".into(),
        progress: 50.0,
        item_count: 99,
        events: 1_000,
        errors: 0,
        last_error: None,
        last_event_ms: Some(EXAMPLE_MS - 500),
        last_block: Some(17_173_050),
        sent_ms: EXAMPLE_MS,
    }
}

#[test]
fn batch_heartbeat_matches_example() {
    let beat = heartbeat(StatusScope::Batch {
        task_id: 4,
        batch_id: 12345,
    });
    let message = java_messages::heartbeat(&beat, Some(EXAMPLE_COUNTS));
    assert_same_fields("batch_heartbeat", "", &message, &example("batch_heartbeat"));
}

#[test]
fn task_heartbeat_matches_example() {
    let beat = heartbeat(StatusScope::Task { task_id: 9 });
    let message = java_messages::heartbeat(&beat, Some(EXAMPLE_COUNTS));
    assert_same_fields("task_heartbeat", "", &message, &example("task_heartbeat"));
}

#[test]
fn task_status_matches_example_in_chinese() {
    let change = StatusChange {
        v: MESSAGE_VERSION,
        scope: StatusScope::Task { task_id: 4 },
        consumer_id: "allocator".into(),
        status: BatchStatus::Running,
        reason: None,
        item_count: 0,
        progress: 0.0,
        errors: 0,
        sent_ms: EXAMPLE_MS,
    };
    let message = java_messages::status_change(&change, Locale::ZhCn, Some(EXAMPLE_COUNTS));
    assert_same_fields("task_status", "", &message, &example("task_status"));
}

/// Builds the large WETH buy of the example, as evaluate raises it.
fn large_trade_alert() -> Alert {
    Alert {
        v: MESSAGE_VERSION,
        id: "4:0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2:large_trade:5777712".into(),
        task_id: 4,
        config_id: 2,
        config_version: 3,
        batch_id: Some(12345),
        target_id: Some(77),
        chain: Chain::Eth,
        alert_type: AlertType::LargeTrade,
        state: AlertState::Confirmed,
        target_value: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
        token_name: Some("Wrapped Ether".into()),
        token_symbol: Some("WETH".into()),
        findings: vec![Finding {
            rule: AlertType::LargeTrade,
            observed: 606_092.705_24,
            threshold: 100_000.0,
            window_sec: None,
            reason: "buy of $606092.71 (>= $100000)".into(),
        }],
        event_time_ms: EXAMPLE_MS - 1_000,
        first_event_time_ms: None,
        price: Some(1666.39),
        market_cap: Some(5_500_000_000.0),
        extra_json: Some(
            r#"{"trade":{"side":"buy","volume_usd":606092.70524},"market":{"window_sec":300,"price_change_pct":0.12,"volume_usd":1250000.0}}"#
                .into(),
        ),
    }
}

#[test]
fn alert_matches_example_with_chinese_title() {
    let alert = large_trade_alert();
    let title = titles::alert_title(&alert, Locale::ZhCn);
    let data = java_messages::alert_data(&alert, &title);
    let message = java_messages::alert(123, alert.alert_type.as_str(), data, EXAMPLE_MS);
    assert_same_fields("alert", "", &message, &example("alert"));
}

#[test]
fn alert_update_matches_example() {
    let message = java_messages::alert_update(124, AlertState::Retracted, Locale::ZhCn, EXAMPLE_MS);
    assert_same_fields("alert_update", "", &message, &example("alert_update"));
}
