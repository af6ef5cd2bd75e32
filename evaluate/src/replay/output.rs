//! Output of `evaluate replay`: one line per alert and a summary per alert type, as text
//! for people or as JSON lines (`--json`) for scripts.
//!
//! Text: `<event time> <alert type> <target> <observed> vs <threshold> [<window>] <title>`,
//! then `summary: ...` and one line per alert type with its count and first and last event
//! time. JSON: `{"type":"alert",...}` per alert (with the whole alert under `alert`),
//! `{"type":"summary",...}` per alert type and one `{"type":"totals",...}` at the end.

use chrono::{DateTime, SecondsFormat};
use monitor_core::messages::{Alert, AlertType, Finding};
use monitor_core::titles::{alert_title, shorten_address};
use monitor_core::Locale;
use serde_json::{json, Value};

use super::collect::RuleSummary;

/// Totals of one replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub frames: u64,
    pub events: u64,
    pub alerts: u64,
    /// Frames that could not be decoded and were skipped.
    pub undecodable_frames: u64,
    /// Alerts stored on the alerts stream with `--publish` (repeated ids not counted).
    pub published: u64,
}

/// Formats a source time in milliseconds as RFC 3339 UTC with milliseconds.
pub fn time_text(time_ms: i64) -> String {
    DateTime::from_timestamp_millis(time_ms)
        .map(|time| time.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{time_ms}ms"))
}

/// Formats the text line of an alert.
pub fn alert_line(alert: &Alert, locale: Locale) -> String {
    let findings: Vec<String> = alert.findings.iter().map(finding_text).collect();
    format!(
        "{} {} {} {} {}",
        time_text(alert.event_time_ms),
        alert.alert_type,
        shorten_address(&alert.target_value),
        findings.join(", "),
        alert_title(alert, locale)
    )
}

fn finding_text(finding: &Finding) -> String {
    let window = finding
        .window_sec
        .map(|w| format!(" in {w}s"))
        .unwrap_or_default();
    let prefix = if finding.rule == AlertType::Composite {
        String::new()
    } else {
        format!("{} ", finding.rule)
    };
    format!(
        "{prefix}{} vs {}{window}",
        number(finding.observed),
        number(finding.threshold)
    )
}

/// Writes a number with at most four decimals and no trailing zeros.
fn number(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Formats the summary lines: totals first, then one per alert type.
pub fn summary_lines(totals: &Totals, rules: &[(AlertType, RuleSummary)]) -> Vec<String> {
    let mut lines = vec![format!(
        "summary: {} frames, {} events, {} alerts, {} undecodable frames skipped, {} published",
        totals.frames, totals.events, totals.alerts, totals.undecodable_frames, totals.published
    )];
    for (alert_type, rule) in rules {
        lines.push(format!(
            "  {:<16} {:>6}  first {}  last {}",
            alert_type.as_str(),
            rule.count,
            time_text(rule.first_ms),
            time_text(rule.last_ms)
        ));
    }
    lines
}

/// Builds the JSON line of an alert.
pub fn alert_json(alert: &Alert, locale: Locale) -> Value {
    json!({
        "type": "alert",
        "time": time_text(alert.event_time_ms),
        "id": alert.id,
        "alert_type": alert.alert_type.as_str(),
        "target": alert.target_value,
        "title": alert_title(alert, locale),
        "alert": alert,
    })
}

/// Builds the JSON lines of the summary: one per alert type, then the totals.
pub fn summary_json(totals: &Totals, rules: &[(AlertType, RuleSummary)]) -> Vec<Value> {
    let mut lines: Vec<Value> = rules
        .iter()
        .map(|(alert_type, rule)| {
            json!({
                "type": "summary",
                "alert_type": alert_type.as_str(),
                "count": rule.count,
                "first": time_text(rule.first_ms),
                "last": time_text(rule.last_ms),
                "first_ms": rule.first_ms,
                "last_ms": rule.last_ms,
            })
        })
        .collect();
    lines.push(json!({
        "type": "totals",
        "frames": totals.frames,
        "events": totals.events,
        "alerts": totals.alerts,
        "undecodable_frames": totals.undecodable_frames,
        "published": totals.published,
    }));
    lines
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{AlertState, Chain, MESSAGE_VERSION};

    use super::*;

    fn alert() -> Alert {
        Alert {
            v: MESSAGE_VERSION,
            id: "7:0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2:volume_change:5".into(),
            task_id: 7,
            config_id: 1,
            config_version: 1,
            batch_id: Some(70),
            target_id: Some(3),
            chain: Chain::Eth,
            alert_type: AlertType::VolumeChange,
            state: AlertState::Confirmed,
            target_value: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
            token_name: None,
            token_symbol: Some("WETH".into()),
            findings: vec![Finding {
                rule: AlertType::VolumeChange,
                observed: 1_234_567.891,
                threshold: 1_000_000.0,
                window_sec: Some(60),
                reason: String::new(),
            }],
            event_time_ms: 1_675_296_000_123,
            first_event_time_ms: None,
            price: None,
            market_cap: None,
            extra_json: None,
        }
    }

    #[test]
    fn alert_line_shows_time_type_values_and_title() {
        assert_eq!(
            alert_line(&alert(), Locale::En),
            "2023-02-02T00:00:00.123Z volume_change 0xc02a…6cc2 \
             volume_change 1234567.891 vs 1000000 in 60s WETH volume $1,234,568 in 1 min"
        );
    }

    #[test]
    fn summary_lists_each_type_with_its_span() {
        let totals = Totals {
            frames: 3,
            events: 9,
            alerts: 2,
            ..Totals::default()
        };
        let rules = [(
            AlertType::LargeTrade,
            RuleSummary {
                count: 2,
                first_ms: 0,
                last_ms: 60_000,
            },
        )];
        let lines = summary_lines(&totals, &rules);
        assert_eq!(
            lines,
            vec![
                "summary: 3 frames, 9 events, 2 alerts, 0 undecodable frames skipped, 0 published",
                "  large_trade           2  first 1970-01-01T00:00:00.000Z  last 1970-01-01T00:01:00.000Z",
            ]
        );
        let json = summary_json(&totals, &rules);
        assert_eq!(json[0]["count"], 2);
        assert_eq!(json[1]["type"], "totals");
        assert_eq!(json[1]["alerts"], 2);
    }

    #[test]
    fn alert_json_carries_the_whole_alert() {
        let line = alert_json(&alert(), Locale::ZhCn);
        assert_eq!(line["type"], "alert");
        assert_eq!(line["alert_type"], "volume_change");
        assert_eq!(line["alert"]["findings"][0]["threshold"], 1_000_000.0);
        assert_eq!(line["title"], "WETH 1分钟内成交额 $1,234,568");
    }

    #[test]
    fn numbers_drop_trailing_zeros() {
        assert_eq!(number(5.0), "5");
        assert_eq!(number(-0.00001), "0");
        assert_eq!(number(0.125), "0.125");
    }
}
