//! JSON messages sent to the Java backend's monitor WebSocket, built from the pipeline's
//! messages.
//!
//! The shapes follow the Java side's protocol: `timestamp` is in milliseconds and appears both
//! inside `data` and at the top level, except in `batch_heartbeat`, whose only `timestamp`
//! (inside `data`) is in seconds. Progress is sent as a whole percent (0 to 100).
//!
//! Status messages and heartbeats carry the alert counters of their batch or task when notify
//! could count them: `totalAlerts` (rows in `monitor_alert_log_v2`) and `lastAlertTime` (the
//! newest `event_time`, in milliseconds, or `null` without rows). They sit in `details` of
//! `batch_status` and in `data` of the other three, and are left out when MySQL could not be
//! read.

use monitor_core::messages::{
    Alert, AlertState, AlertType, BatchStatus, Finding, Heartbeat, StatusChange, StatusScope,
};
use monitor_core::titles::AlertFacts;
use monitor_core::Locale;
use serde_json::{json, Value};

use crate::alert_log::AlertCounts;

/// The keep-alive message sent every ping interval; the server answers `{"type":"pong"}`.
pub fn ping() -> Value {
    json!({ "type": "ping" })
}

/// The `alertData` object of an alert, also stored in `monitor_alert_log_v2.alert_data`.
///
/// `priceChange` (percent) and `volume` (USD) come from the finding of the matching rule, else
/// from the market figures that evaluate stored with the alert ([`AlertFacts::market`]), and
/// are `null` when the alert has neither. `rule`, `threshold`, `observed` and `window`
/// describe the first finding; `findings` lists all of them (several for a `composite` alert).
pub fn alert_data(alert: &Alert, title: &str) -> Value {
    let primary = alert.findings.first();
    let market = AlertFacts::of(alert).market;
    let price_change = observed_of(alert, &[AlertType::PriceChange])
        .or_else(|| market.as_ref().and_then(|m| m.price_change_pct));
    let volume = observed_of(
        alert,
        &[
            AlertType::VolumeChange,
            AlertType::LargeTrade,
            AlertType::CumulativeBuy,
        ],
    )
    .or_else(|| market.as_ref().map(|m| m.volume_usd));
    json!({
        "tokenName": alert.token_name,
        "tokenSymbol": alert.token_symbol,
        "ca": alert.target_value,
        "priceChange": price_change,
        "volume": volume,
        "marketCap": alert.market_cap,
        "price": alert.price,
        "rule": primary.map(|f| f.rule.as_str()),
        "threshold": primary.map(|f| f.threshold),
        "observed": primary.map(|f| f.observed),
        "window": primary.and_then(|f| f.window_sec),
        "title": title,
        "state": alert.state.as_str(),
        "eventTime": alert.event_time_ms,
        "firstEventTime": alert.first_event_time_ms,
        "taskId": alert.task_id,
        "configId": alert.config_id,
        "configVersion": alert.config_version,
        "batchId": alert.batch_id,
        "chain": alert.chain.to_string(),
        "alertKey": alert.id,
        "extra": extra(alert),
        "findings": alert.findings.iter().map(finding).collect::<Vec<_>>(),
    })
}

/// The `alert` message for the row `alert_id` of `monitor_alert_log_v2`.
pub fn alert(alert_id: u64, alert_type: &str, alert_data: Value, now_ms: i64) -> Value {
    json!({
        "type": "alert",
        "data": {
            "alertId": alert_id,
            "alertType": alert_type,
            "alertData": alert_data,
            "timestamp": now_ms,
        },
        "timestamp": now_ms,
    })
}

/// The `alert_update` message: the alert of row `alert_id` was confirmed or retracted.
pub fn alert_update(alert_id: u64, state: AlertState, locale: Locale, now_ms: i64) -> Value {
    json!({
        "type": "alert_update",
        "data": {
            "alertId": alert_id,
            "state": state.as_str(),
            "reason": state_change_reason(state, locale),
            "timestamp": now_ms,
        },
        "timestamp": now_ms,
    })
}

/// Alert states change only when blocks are confirmed or reorganized, so the reason follows
/// from the new state.
fn state_change_reason(state: AlertState, locale: Locale) -> &'static str {
    match (locale, state) {
        (Locale::ZhCn, AlertState::Confirmed) => "区块已确认",
        (Locale::ZhCn, AlertState::Retracted) => "区块重组，告警已撤回",
        (Locale::ZhCn, AlertState::Provisional) => "等待区块确认",
        (Locale::En, AlertState::Confirmed) => "blocks confirmed",
        (Locale::En, AlertState::Retracted) => "retracted after a chain reorganization",
        (Locale::En, AlertState::Provisional) => "waiting for block confirmations",
    }
}

/// `batch_heartbeat` for a batch, `task_heartbeat` for a block task.
pub fn heartbeat(heartbeat: &Heartbeat, counts: Option<AlertCounts>) -> Value {
    let mut message = heartbeat_without_counts(heartbeat);
    add_counts(&mut message["data"], counts);
    message
}

fn heartbeat_without_counts(heartbeat: &Heartbeat) -> Value {
    match heartbeat.scope {
        StatusScope::Batch { task_id, batch_id } => json!({
            "type": "batch_heartbeat",
            "data": {
                "batchId": batch_id,
                "taskId": task_id,
                "consumerId": heartbeat.consumer_id,
                "progress": whole_percent(heartbeat.progress),
                "timestamp": heartbeat.sent_ms.div_euclid(1000),
            },
        }),
        StatusScope::Task { task_id } => json!({
            "type": "task_heartbeat",
            "data": {
                "taskId": task_id,
                "consumerId": heartbeat.consumer_id,
                "lastBlock": heartbeat.last_block,
                "timestamp": heartbeat.sent_ms,
            },
            "timestamp": heartbeat.sent_ms,
        }),
    }
}

/// `batch_status` for a batch, `task_status` for a task. The time is the change's own time, so
/// a status sent again after a reconnect still carries the time it changed.
pub fn status_change(change: &StatusChange, locale: Locale, counts: Option<AlertCounts>) -> Value {
    let mut message = status_change_without_counts(change, locale);
    match change.scope {
        StatusScope::Batch { .. } => add_counts(&mut message["data"]["details"], counts),
        StatusScope::Task { .. } => add_counts(&mut message["data"], counts),
    }
    message
}

/// Adds `totalAlerts` and `lastAlertTime` to a JSON object when the counts are known.
fn add_counts(object: &mut Value, counts: Option<AlertCounts>) {
    let (Some(counts), Some(object)) = (counts, object.as_object_mut()) else {
        return;
    };
    object.insert("totalAlerts".into(), Value::from(counts.total));
    object.insert("lastAlertTime".into(), json!(counts.last_alert_ms));
}

fn status_change_without_counts(change: &StatusChange, locale: Locale) -> Value {
    match change.scope {
        StatusScope::Batch { batch_id, .. } => json!({
            "type": "batch_status",
            "data": {
                "batchId": batch_id,
                "status": change.status.as_str(),
                "details": {
                    "itemCount": change.item_count,
                    "progress": whole_percent(change.progress),
                    "errorCount": change.errors,
                },
                "timestamp": change.sent_ms,
            },
            "timestamp": change.sent_ms,
        }),
        StatusScope::Task { task_id } => json!({
            "type": "task_status",
            "data": {
                "taskId": task_id,
                "status": task_status_code(change.status),
                "message": task_status_message(change, locale),
                "timestamp": change.sent_ms,
            },
            "timestamp": change.sent_ms,
        }),
    }
}

/// The Java side's task status: 1 while the task runs or waits to run, 0 otherwise.
fn task_status_code(status: BatchStatus) -> u8 {
    match status {
        BatchStatus::Pending | BatchStatus::Running => 1,
        BatchStatus::Paused
        | BatchStatus::Stopped
        | BatchStatus::Completed
        | BatchStatus::Error => 0,
    }
}

/// The producer's reason when it gave one (the allocator writes it in the configured locale),
/// otherwise a short text for the status.
fn task_status_message(change: &StatusChange, locale: Locale) -> String {
    if let Some(reason) = change.reason.as_deref().filter(|r| !r.trim().is_empty()) {
        return reason.to_owned();
    }
    let text = match (locale, change.status) {
        (Locale::ZhCn, BatchStatus::Pending) => "任务等待启动",
        (Locale::ZhCn, BatchStatus::Running) => "任务运行中",
        (Locale::ZhCn, BatchStatus::Paused) => "任务已暂停",
        (Locale::ZhCn, BatchStatus::Stopped) => "任务已停止",
        (Locale::ZhCn, BatchStatus::Completed) => "任务已完成",
        (Locale::ZhCn, BatchStatus::Error) => "任务运行出错",
        (Locale::En, BatchStatus::Pending) => "Task waiting to start",
        (Locale::En, BatchStatus::Running) => "Task running",
        (Locale::En, BatchStatus::Paused) => "Task paused",
        (Locale::En, BatchStatus::Stopped) => "Task stopped",
        (Locale::En, BatchStatus::Completed) => "Task completed",
        (Locale::En, BatchStatus::Error) => "Task failed",
    };
    text.to_owned()
}

fn whole_percent(progress: f64) -> u8 {
    if progress.is_finite() {
        progress.round().clamp(0.0, 100.0) as u8
    } else {
        0
    }
}

fn observed_of(alert: &Alert, rules: &[AlertType]) -> Option<f64> {
    rules.iter().find_map(|rule| {
        alert
            .findings
            .iter()
            .find(|f| f.rule == *rule)
            .map(|f| f.observed)
    })
}

fn finding(finding: &Finding) -> Value {
    json!({
        "rule": finding.rule.as_str(),
        "observed": finding.observed,
        "threshold": finding.threshold,
        "window": finding.window_sec,
        "reason": finding.reason,
    })
}

/// Chain-specific facts as JSON; text that is not valid JSON is kept as a string.
fn extra(alert: &Alert) -> Value {
    match alert.extra_json.as_deref() {
        None => Value::Null,
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_core::messages::{Chain, MESSAGE_VERSION};

    fn price_alert() -> Alert {
        Alert {
            v: MESSAGE_VERSION,
            id: "4:So1111:price_change:5580000".into(),
            task_id: 4,
            config_id: 2,
            config_version: 3,
            batch_id: Some(12345),
            target_id: Some(77),
            chain: Chain::Sol,
            alert_type: AlertType::PriceChange,
            state: AlertState::Confirmed,
            target_value: "So1111".into(),
            token_name: Some("Wrapped SOL".into()),
            token_symbol: Some("SOL".into()),
            findings: vec![Finding {
                rule: AlertType::PriceChange,
                observed: 25.5,
                threshold: 5.0,
                window_sec: Some(300),
                reason: "price rose 25.5% in 300s (>= 5%)".into(),
            }],
            event_time_ms: 1_700_000_000_123,
            first_event_time_ms: Some(1_699_999_700_000),
            price: Some(150.0),
            market_cap: Some(5e10),
            extra_json: None,
        }
    }

    #[test]
    fn alert_message_has_java_shape() {
        let alert = price_alert();
        let message = super::alert(
            9,
            "price_change",
            alert_data(&alert, "SOL 价格上涨"),
            1_700_000_000_999,
        );

        assert_eq!(message["type"], "alert");
        assert_eq!(message["timestamp"], 1_700_000_000_999_i64);
        assert_eq!(message["data"]["timestamp"], 1_700_000_000_999_i64);
        assert_eq!(message["data"]["alertId"], 9);
        assert_eq!(message["data"]["alertType"], "price_change");
        let data = &message["data"]["alertData"];
        assert_eq!(data["tokenName"], "Wrapped SOL");
        assert_eq!(data["tokenSymbol"], "SOL");
        assert_eq!(data["ca"], "So1111");
        assert_eq!(data["priceChange"], 25.5);
        assert_eq!(data["volume"], Value::Null);
        assert_eq!(data["marketCap"], 5e10);
        assert_eq!(data["rule"], "price_change");
        assert_eq!(data["threshold"], 5.0);
        assert_eq!(data["observed"], 25.5);
        assert_eq!(data["window"], 300);
        assert_eq!(data["title"], "SOL 价格上涨");
        assert_eq!(data["state"], "confirmed");
        assert_eq!(data["eventTime"], 1_700_000_000_123_i64);
        assert_eq!(
            data["findings"][0]["reason"],
            "price rose 25.5% in 300s (>= 5%)"
        );
    }

    #[test]
    fn alert_update_names_row_and_state() {
        let message = alert_update(9, AlertState::Retracted, Locale::En, 1_700_000_000_999);
        let expected = json!({
            "type": "alert_update",
            "data": {
                "alertId": 9,
                "state": "retracted",
                "reason": "retracted after a chain reorganization",
                "timestamp": 1_700_000_000_999_i64,
            },
            "timestamp": 1_700_000_000_999_i64,
        });
        assert_eq!(message, expected);
    }

    #[test]
    fn volume_comes_from_volume_finding() {
        let mut alert = price_alert();
        alert.alert_type = AlertType::Composite;
        alert.findings.push(Finding {
            rule: AlertType::VolumeChange,
            observed: 1_000_000.0,
            threshold: 500_000.0,
            window_sec: Some(600),
            reason: "volume".into(),
        });

        let data = alert_data(&alert, "t");

        assert_eq!(data["volume"], 1_000_000.0);
        assert_eq!(data["priceChange"], 25.5);
        assert_eq!(data["findings"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn market_facts_fill_missing_figures() {
        let mut alert = price_alert();
        alert.alert_type = AlertType::TopHolders;
        alert.findings[0].rule = AlertType::TopHolders;
        alert.extra_json = Some(
            r#"{"top_n":10,"market":{"window_sec":300,"price_change_pct":-2.5,"volume_usd":1200.0}}"#
                .into(),
        );

        let data = alert_data(&alert, "t");

        assert_eq!(data["priceChange"], -2.5);
        assert_eq!(data["volume"], 1200.0);
    }

    #[test]
    fn finding_wins_over_market_facts() {
        let mut alert = price_alert();
        alert.extra_json =
            Some(r#"{"market":{"window_sec":300,"price_change_pct":1.0,"volume_usd":5.0}}"#.into());

        let data = alert_data(&alert, "t");

        assert_eq!(data["priceChange"], 25.5);
        assert_eq!(data["volume"], 5.0);
    }

    #[test]
    fn invalid_extra_json_is_kept_as_text() {
        let mut alert = price_alert();
        alert.extra_json = Some("not json".into());
        assert_eq!(alert_data(&alert, "t")["extra"], "not json");

        alert.extra_json = Some(r#"{"block":12}"#.into());
        assert_eq!(alert_data(&alert, "t")["extra"]["block"], 12);
    }

    fn beat(scope: StatusScope) -> Heartbeat {
        Heartbeat {
            v: MESSAGE_VERSION,
            scope,
            consumer_id: "server-01-12345".into(),
            progress: 49.6,
            item_count: 99,
            events: 10,
            errors: 0,
            last_error: None,
            last_event_ms: None,
            last_block: Some(21_000_000),
            sent_ms: 1_731_484_800_250,
        }
    }

    #[test]
    fn batch_heartbeat_matches_java_shape_with_seconds() {
        let message = heartbeat(
            &beat(StatusScope::Batch {
                task_id: 4,
                batch_id: 12345,
            }),
            None,
        );
        let expected = json!({
            "type": "batch_heartbeat",
            "data": {
                "batchId": 12345,
                "taskId": 4,
                "consumerId": "server-01-12345",
                "progress": 50,
                "timestamp": 1_731_484_800,
            }
        });
        assert_eq!(message, expected);
    }

    #[test]
    fn task_heartbeat_carries_last_block() {
        let message = heartbeat(&beat(StatusScope::Task { task_id: 4 }), None);
        let expected = json!({
            "type": "task_heartbeat",
            "data": {
                "taskId": 4,
                "consumerId": "server-01-12345",
                "lastBlock": 21_000_000,
                "timestamp": 1_731_484_800_250_i64,
            },
            "timestamp": 1_731_484_800_250_i64,
        });
        assert_eq!(message, expected);
    }

    fn change(scope: StatusScope, status: BatchStatus, reason: Option<&str>) -> StatusChange {
        StatusChange {
            v: MESSAGE_VERSION,
            scope,
            consumer_id: "server-01-12345".into(),
            status,
            reason: reason.map(str::to_owned),
            item_count: 50,
            progress: 30.0,
            errors: 2,
            sent_ms: 1_699_999_999_999,
        }
    }

    #[test]
    fn batch_status_matches_java_shape() {
        let message = status_change(
            &change(
                StatusScope::Batch {
                    task_id: 4,
                    batch_id: 1,
                },
                BatchStatus::Running,
                None,
            ),
            Locale::ZhCn,
            None,
        );
        let expected = json!({
            "type": "batch_status",
            "data": {
                "batchId": 1,
                "status": "running",
                "details": { "itemCount": 50, "progress": 30, "errorCount": 2 },
                "timestamp": 1_699_999_999_999_i64,
            },
            "timestamp": 1_699_999_999_999_i64,
        });
        assert_eq!(message, expected);
    }

    #[test]
    fn task_status_defaults_to_chinese_message() {
        let running = change(StatusScope::Task { task_id: 1 }, BatchStatus::Running, None);
        let message = status_change(&running, Locale::ZhCn, None);
        let expected = json!({
            "type": "task_status",
            "data": {
                "taskId": 1,
                "status": 1,
                "message": "任务运行中",
                "timestamp": 1_699_999_999_999_i64,
            },
            "timestamp": 1_699_999_999_999_i64,
        });
        assert_eq!(message, expected);
    }

    #[test]
    fn task_status_keeps_producer_reason_and_maps_error_to_stopped() {
        let failed = change(
            StatusScope::Task { task_id: 1 },
            BatchStatus::Error,
            Some("配置无效：price_change.rise_pct 必须大于 0"),
        );
        let message = status_change(&failed, Locale::En, None);
        assert_eq!(message["data"]["status"], 0);
        assert_eq!(
            message["data"]["message"],
            "配置无效：price_change.rise_pct 必须大于 0"
        );
    }

    #[test]
    fn task_status_in_english_locale() {
        let stopped = change(StatusScope::Task { task_id: 1 }, BatchStatus::Stopped, None);
        assert_eq!(
            status_change(&stopped, Locale::En, None)["data"]["message"],
            "Task stopped"
        );
    }

    #[test]
    fn counts_placed_per_message_type() {
        let counts = Some(AlertCounts {
            total: 7,
            last_alert_ms: Some(1_700_000_000_123),
        });
        let batch = StatusScope::Batch {
            task_id: 4,
            batch_id: 1,
        };
        let task = StatusScope::Task { task_id: 4 };

        let batch_status = status_change(
            &change(batch, BatchStatus::Running, None),
            Locale::En,
            counts,
        );
        assert_eq!(batch_status["data"]["details"]["totalAlerts"], 7);
        assert_eq!(
            batch_status["data"]["details"]["lastAlertTime"],
            1_700_000_000_123_i64
        );
        assert!(batch_status["data"].get("totalAlerts").is_none());

        let task_status = status_change(
            &change(task, BatchStatus::Running, None),
            Locale::En,
            counts,
        );
        assert_eq!(task_status["data"]["totalAlerts"], 7);
        assert_eq!(task_status["data"]["lastAlertTime"], 1_700_000_000_123_i64);

        for scope in [batch, task] {
            let message = heartbeat(&beat(scope), counts);
            assert_eq!(message["data"]["totalAlerts"], 7, "{message}");
            assert_eq!(
                message["data"]["lastAlertTime"], 1_700_000_000_123_i64,
                "{message}"
            );
        }
    }

    #[test]
    fn empty_and_unknown_counts() {
        let batch = StatusScope::Batch {
            task_id: 4,
            batch_id: 1,
        };
        let empty = heartbeat(&beat(batch), Some(AlertCounts::default()));
        assert_eq!(empty["data"]["totalAlerts"], 0);
        assert_eq!(empty["data"]["lastAlertTime"], Value::Null);
        assert!(empty["data"].get("lastAlertTime").is_some());

        let unknown = heartbeat(&beat(batch), None);
        assert!(unknown["data"].get("totalAlerts").is_none());
        assert!(unknown["data"].get("lastAlertTime").is_none());
    }

    #[test]
    fn progress_is_clamped_to_whole_percent() {
        assert_eq!(whole_percent(101.2), 100);
        assert_eq!(whole_percent(-3.0), 0);
        assert_eq!(whole_percent(f64::NAN), 0);
        assert_eq!(whole_percent(33.4), 33);
    }
}
