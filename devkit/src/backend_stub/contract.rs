//! The shapes of the messages that the Java backend accepts on its monitor WebSocket, as
//! `docs/protocols/java-websocket.md` lists them, checked field by field.
//!
//! [`check`] returns one error per field that is missing or has the wrong type or value; an
//! empty list means the message matches. Fields that the protocol does not list are accepted,
//! because receivers ignore them, except a top-level `timestamp` in `batch_heartbeat`, whose
//! only timestamp is the one in seconds inside `data`. Timestamps are told apart by size:
//! milliseconds since the Unix epoch are 12 to 14 digits (from 1973), seconds 9 to 11 digits.

use serde_json::{Map, Value};

/// Values of `batch_status.data.status`.
pub const BATCH_STATUSES: &[&str] = &[
    "pending",
    "running",
    "paused",
    "stopped",
    "completed",
    "error",
];
/// Values of `alert.data.alertType`.
pub const ALERT_TYPES: &[&str] = &[
    "price_change",
    "volume_change",
    "holder_change",
    "large_trade",
    "cumulative_buy",
    "top_holders",
    "composite",
    "block_event",
    "large_transaction",
    "contract_event",
];
/// Values of `alert_update.data.state`.
pub const ALERT_UPDATE_STATES: &[&str] = &["confirmed", "retracted"];
/// Message types that a client sends.
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "ping",
    "batch_status",
    "batch_heartbeat",
    "task_status",
    "task_heartbeat",
    "alert",
    "alert_update",
];

const MILLIS_RANGE: std::ops::Range<i64> = 100_000_000_000..100_000_000_000_000;
const SECONDS_RANGE: std::ops::Range<i64> = 100_000_000..100_000_000_000;

/// Checks one message received from a client; returns the errors, empty when it matches.
pub fn check(message: &Value) -> Vec<String> {
    let mut checker = Checker::default();
    let Some(top) = message.as_object() else {
        checker.error(
            "",
            format!("expected a JSON object, got {}", describe(message)),
        );
        return checker.errors;
    };
    let Some(kind) = checker.string(top, "", "type") else {
        return checker.errors;
    };
    match kind {
        "ping" => {}
        "batch_status" => checker.batch_status(top),
        "batch_heartbeat" => checker.batch_heartbeat(top),
        "task_status" => checker.task_status(top),
        "task_heartbeat" => checker.task_heartbeat(top),
        "alert" => checker.alert(top),
        "alert_update" => checker.alert_update(top),
        other => checker.error(
            "type",
            format!(
                "unknown message type {other:?}, expected one of {}",
                CLIENT_MESSAGE_TYPES.join(", ")
            ),
        ),
    }
    checker.errors
}

/// Collects the errors of one message; each check reads one field of an object.
#[derive(Default)]
struct Checker {
    errors: Vec<String>,
}

impl Checker {
    fn batch_status(&mut self, top: &Map<String, Value>) {
        self.millis(top, "", "timestamp");
        let Some(data) = self.object(top, "", "data") else {
            return;
        };
        self.id(data, "data", "batchId");
        self.one_of(data, "data", "status", BATCH_STATUSES);
        self.millis(data, "data", "timestamp");
        let Some(details) = self.object(data, "data", "details") else {
            return;
        };
        self.integer(details, "data.details", "itemCount", 0, i64::MAX);
        self.integer(details, "data.details", "progress", 0, 100);
        self.integer(details, "data.details", "errorCount", 0, i64::MAX);
        self.alert_counts(details, "data.details");
    }

    fn batch_heartbeat(&mut self, top: &Map<String, Value>) {
        if top.contains_key("timestamp") {
            self.error(
                "timestamp",
                "batch_heartbeat has a single timestamp, in seconds inside data".into(),
            );
        }
        let Some(data) = self.object(top, "", "data") else {
            return;
        };
        self.id(data, "data", "batchId");
        self.id(data, "data", "taskId");
        self.non_empty_string(data, "data", "consumerId");
        self.integer(data, "data", "progress", 0, 100);
        self.seconds(data, "data", "timestamp");
        self.alert_counts(data, "data");
    }

    fn task_status(&mut self, top: &Map<String, Value>) {
        self.millis(top, "", "timestamp");
        let Some(data) = self.object(top, "", "data") else {
            return;
        };
        self.id(data, "data", "taskId");
        self.integer(data, "data", "status", 0, 1);
        self.non_empty_string(data, "data", "message");
        self.millis(data, "data", "timestamp");
        self.alert_counts(data, "data");
    }

    fn task_heartbeat(&mut self, top: &Map<String, Value>) {
        self.millis(top, "", "timestamp");
        let Some(data) = self.object(top, "", "data") else {
            return;
        };
        self.id(data, "data", "taskId");
        self.non_empty_string(data, "data", "consumerId");
        if let Some(value) = self.present(data, "data", "lastBlock") {
            if !value.is_null() && value.as_u64().is_none() {
                self.wrong("data.lastBlock", "a block number or null", value);
            }
        }
        self.millis(data, "data", "timestamp");
        self.alert_counts(data, "data");
    }

    fn alert(&mut self, top: &Map<String, Value>) {
        self.millis(top, "", "timestamp");
        let Some(data) = self.object(top, "", "data") else {
            return;
        };
        self.id(data, "data", "alertId");
        self.one_of(data, "data", "alertType", ALERT_TYPES);
        self.millis(data, "data", "timestamp");
        let Some(alert_data) = self.object(data, "data", "alertData") else {
            return;
        };
        let path = "data.alertData";
        for field in ["tokenName", "tokenSymbol", "rule"] {
            self.nullable(
                alert_data,
                path,
                field,
                "a string or null",
                Value::is_string,
            );
        }
        self.non_empty_string(alert_data, path, "ca");
        for field in [
            "priceChange",
            "volume",
            "marketCap",
            "threshold",
            "observed",
        ] {
            self.nullable(
                alert_data,
                path,
                field,
                "a number or null",
                Value::is_number,
            );
        }
        self.nullable(
            alert_data,
            path,
            "window",
            "whole seconds or null",
            Value::is_u64,
        );
    }

    fn alert_update(&mut self, top: &Map<String, Value>) {
        self.millis(top, "", "timestamp");
        let Some(data) = self.object(top, "", "data") else {
            return;
        };
        self.id(data, "data", "alertId");
        self.one_of(data, "data", "state", ALERT_UPDATE_STATES);
        self.non_empty_string(data, "data", "reason");
        self.millis(data, "data", "timestamp");
    }

    /// `totalAlerts` and `lastAlertTime`: optional, but together and well formed.
    fn alert_counts(&mut self, object: &Map<String, Value>, path: &str) {
        let total = object.contains_key("totalAlerts");
        let last = object.contains_key("lastAlertTime");
        if total != last {
            self.error(path, "totalAlerts and lastAlertTime come together".into());
        }
        if total {
            self.integer(object, path, "totalAlerts", 0, i64::MAX);
        }
        if let Some(value) = object.get("lastAlertTime") {
            if !value.is_null() && !value.as_i64().is_some_and(|t| MILLIS_RANGE.contains(&t)) {
                self.wrong(
                    &join(path, "lastAlertTime"),
                    "milliseconds since the Unix epoch or null",
                    value,
                );
            }
        }
    }

    // Field checks. Each records an error and returns `None` when the field does not match.

    fn present<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        path: &str,
        name: &str,
    ) -> Option<&'v Value> {
        let value = object.get(name);
        if value.is_none() {
            self.error(&join(path, name), "missing".into());
        }
        value
    }

    fn object<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        path: &str,
        name: &str,
    ) -> Option<&'v Map<String, Value>> {
        let value = self.present(object, path, name)?;
        let inner = value.as_object();
        if inner.is_none() {
            self.wrong(&join(path, name), "an object", value);
        }
        inner
    }

    fn string<'v>(
        &mut self,
        object: &'v Map<String, Value>,
        path: &str,
        name: &str,
    ) -> Option<&'v str> {
        let value = self.present(object, path, name)?;
        let text = value.as_str();
        if text.is_none() {
            self.wrong(&join(path, name), "a string", value);
        }
        text
    }

    fn non_empty_string(&mut self, object: &Map<String, Value>, path: &str, name: &str) {
        if self
            .string(object, path, name)
            .is_some_and(|s| s.trim().is_empty())
        {
            self.error(&join(path, name), "expected a non-empty string".into());
        }
    }

    fn one_of(&mut self, object: &Map<String, Value>, path: &str, name: &str, allowed: &[&str]) {
        if let Some(text) = self.string(object, path, name) {
            if !allowed.contains(&text) {
                self.error(
                    &join(path, name),
                    format!("expected one of {}, got {text:?}", allowed.join(", ")),
                );
            }
        }
    }

    fn integer(&mut self, object: &Map<String, Value>, path: &str, name: &str, min: i64, max: i64) {
        let Some(value) = self.present(object, path, name) else {
            return;
        };
        if !value.as_i64().is_some_and(|n| (min..=max).contains(&n)) {
            let expected = if max == i64::MAX {
                format!("an integer >= {min}")
            } else {
                format!("an integer from {min} to {max}")
            };
            self.wrong(&join(path, name), &expected, value);
        }
    }

    /// A database id: an integer >= 1.
    fn id(&mut self, object: &Map<String, Value>, path: &str, name: &str) {
        self.integer(object, path, name, 1, i64::MAX);
    }

    fn millis(&mut self, object: &Map<String, Value>, path: &str, name: &str) {
        self.time(
            object,
            path,
            name,
            MILLIS_RANGE,
            "milliseconds since the Unix epoch",
        );
    }

    fn seconds(&mut self, object: &Map<String, Value>, path: &str, name: &str) {
        self.time(
            object,
            path,
            name,
            SECONDS_RANGE,
            "seconds since the Unix epoch",
        );
    }

    fn time(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        name: &str,
        range: std::ops::Range<i64>,
        unit: &str,
    ) {
        let Some(value) = self.present(object, path, name) else {
            return;
        };
        if !value.as_i64().is_some_and(|t| range.contains(&t)) {
            self.wrong(&join(path, name), &format!("an integer in {unit}"), value);
        }
    }

    fn nullable(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        name: &str,
        expected: &str,
        matches: fn(&Value) -> bool,
    ) {
        if let Some(value) = self.present(object, path, name) {
            if !value.is_null() && !matches(value) {
                self.wrong(&join(path, name), expected, value);
            }
        }
    }

    fn wrong(&mut self, path: &str, expected: &str, value: &Value) {
        self.error(
            path,
            format!("expected {expected}, got {}", describe(value)),
        );
    }

    fn error(&mut self, path: &str, message: String) {
        if path.is_empty() {
            self.errors.push(message);
        } else {
            self.errors.push(format!("{path}: {message}"));
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// The value in JSON, shortened to keep error lines short.
fn describe(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert() -> Value {
        json!({
            "type": "alert",
            "data": {
                "alertId": 123,
                "alertType": "large_trade",
                "alertData": {
                    "tokenName": "Wrapped Ether", "tokenSymbol": "WETH",
                    "ca": "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
                    "priceChange": null, "volume": 606092.7, "marketCap": 5.5e9,
                    "rule": "large_trade", "threshold": 100000.0, "observed": 606092.7, "window": null
                },
                "timestamp": 1733313600000_i64
            },
            "timestamp": 1733313600000_i64
        })
    }

    #[test]
    fn valid_alert_has_no_errors() {
        assert_eq!(check(&alert()), Vec::<String>::new());
    }

    #[test]
    fn alert_id_as_string_is_reported_with_its_path() {
        let mut message = alert();
        message["data"]["alertId"] = json!("123");
        assert_eq!(
            check(&message),
            vec![r#"data.alertId: expected an integer >= 1, got "123""#]
        );
    }

    #[test]
    fn alert_data_without_ca_and_with_text_volume_gives_two_errors() {
        let mut message = alert();
        message["data"]["alertData"]
            .as_object_mut()
            .unwrap()
            .remove("ca");
        message["data"]["alertData"]["volume"] = json!("606092");
        assert_eq!(
            check(&message),
            vec![
                "data.alertData.ca: missing",
                r#"data.alertData.volume: expected a number or null, got "606092""#
            ]
        );
    }

    #[test]
    fn alert_timestamp_in_seconds_is_rejected() {
        let mut message = alert();
        message["timestamp"] = json!(1_733_313_600);
        assert_eq!(
            check(&message),
            vec!["timestamp: expected an integer in milliseconds since the Unix epoch, got 1733313600"]
        );
    }

    #[test]
    fn batch_heartbeat_needs_seconds_inside_data_only() {
        let valid = json!({"type":"batch_heartbeat","data":{"batchId":12345,"taskId":4,"consumerId":"server-01-12345","progress":50,"timestamp":1733313600}});
        assert!(check(&valid).is_empty());

        let mut in_millis = valid.clone();
        in_millis["data"]["timestamp"] = json!(1_733_313_600_000_i64);
        in_millis["timestamp"] = json!(1_733_313_600_000_i64);
        assert_eq!(
            check(&in_millis),
            vec![
                "timestamp: batch_heartbeat has a single timestamp, in seconds inside data",
                "data.timestamp: expected an integer in seconds since the Unix epoch, got 1733313600000"
            ]
        );
    }

    #[test]
    fn batch_status_outside_allowed_set_is_rejected() {
        let message = json!({"type":"batch_status","data":{"batchId":1,"status":"RUNNING","details":{"itemCount":99,"progress":30,"errorCount":0},"timestamp":1733313600000_i64},"timestamp":1733313600000_i64});
        let errors = check(&message);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("data.status: expected one of pending, running"),
            "{errors:?}"
        );
    }

    #[test]
    fn progress_above_100_and_half_counts_are_rejected() {
        let message = json!({"type":"batch_status","data":{"batchId":1,"status":"running","details":{"itemCount":99,"progress":130,"errorCount":0,"totalAlerts":3},"timestamp":1733313600000_i64},"timestamp":1733313600000_i64});
        assert_eq!(
            check(&message),
            vec![
                "data.details.progress: expected an integer from 0 to 100, got 130",
                "data.details: totalAlerts and lastAlertTime come together"
            ]
        );
    }

    #[test]
    fn task_status_needs_zero_or_one_and_a_message() {
        let message = json!({"type":"task_status","data":{"taskId":4,"status":"running","message":"","timestamp":1733313600000_i64},"timestamp":1733313600000_i64});
        assert_eq!(
            check(&message),
            vec![
                r#"data.status: expected an integer from 0 to 1, got "running""#,
                "data.message: expected a non-empty string"
            ]
        );
    }

    #[test]
    fn alert_update_state_must_be_confirmed_or_retracted() {
        let message = json!({"type":"alert_update","data":{"alertId":124,"state":"provisional","reason":"x","timestamp":1733313600000_i64},"timestamp":1733313600000_i64});
        assert_eq!(
            check(&message),
            vec![r#"data.state: expected one of confirmed, retracted, got "provisional""#]
        );
    }

    #[test]
    fn unknown_type_and_non_object_are_rejected() {
        assert_eq!(
            check(&json!({"type": "hello"})).len(),
            1,
            "an unknown type is one error"
        );
        assert_eq!(
            check(&json!("text")),
            vec![r#"expected a JSON object, got "text""#]
        );
        assert_eq!(check(&json!({"data": {}})), vec!["type: missing"]);
    }

    #[test]
    fn task_heartbeat_accepts_null_last_block() {
        let message = json!({"type":"task_heartbeat","data":{"taskId":9,"consumerId":"c-1","lastBlock":null,"timestamp":1733313600000_i64},"timestamp":1733313600000_i64});
        assert!(check(&message).is_empty());
    }
}
