//! The rules file of `evaluate replay --config FILE`.
//!
//! Consumes a JSON object shaped like a `monitor_config_v2` row: `events_config` (an object,
//! or its JSON text as the column stores it) plus the columns that rules read
//! (`min_transaction_usd`, `cumulative_min_amount_usd`, `time_interval`,
//! `top_holders_threshold`, `trigger_logic`) and, optionally, `config_id`, `version` and
//! `config_name`. Keys may be snake_case or camelCase, and numbers may be written as strings,
//! as a DECIMAL column is often exported. Produces the [`ParsedConfig`] that
//! [`parse_config`] validates, so the file is checked exactly like a config the allocator
//! reads, and the list of keys that no rule reads, for one warning.

use std::path::Path;

use monitor_core::messages::TaskType;
use monitor_core::rules::{parse_config, to_snake_case, ConfigError, ConfigRow, ParsedConfig};
use serde_json::Value;

/// A rules file read and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    pub row: ConfigRow,
    pub parsed: ParsedConfig,
    /// Keys of the file and of its `events_config` that no rule reads.
    pub unknown_keys: Vec<String>,
}

/// Error of a rules file, naming the file, the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("config file {path} must hold a JSON object, got {found}")]
    NotObject { path: String, found: String },
    #[error("config file {path}: {field} must be {expected}, got {value}")]
    Field {
        path: String,
        field: String,
        expected: &'static str,
        value: String,
    },
    #[error("config file {path}: {source}")]
    Invalid { path: String, source: ConfigError },
}

/// Reads and validates the rules file at `path` for a task of `task_type`.
pub fn read(path: &Path, task_type: TaskType) -> Result<ConfigFile, ConfigFileError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: display.clone(),
        source,
    })?;
    parse(&text, &display, task_type)
}

/// Validates the text of a rules file; `path` only names it in errors.
pub fn parse(text: &str, path: &str, task_type: TaskType) -> Result<ConfigFile, ConfigFileError> {
    let root: Value = serde_json::from_str(text).map_err(|source| ConfigFileError::Json {
        path: path.to_owned(),
        source,
    })?;
    let Value::Object(object) = root else {
        return Err(ConfigFileError::NotObject {
            path: path.to_owned(),
            found: shorten(&root.to_string()),
        });
    };

    let mut columns = Columns {
        path,
        entries: object
            .into_iter()
            .map(|(key, value)| (to_snake_case(&key), (key, value)))
            .collect(),
    };
    let row = ConfigRow {
        config_id: columns.integer("config_id")?.unwrap_or(0),
        version: columns.integer("version")?.unwrap_or(0),
        name: columns
            .text("config_name")?
            .unwrap_or_else(|| path.to_owned()),
        min_transaction_usd: columns.number("min_transaction_usd")?,
        cumulative_min_amount_usd: columns.number("cumulative_min_amount_usd")?,
        time_interval: columns
            .integer("time_interval")?
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
        top_holders_threshold: columns.number("top_holders_threshold")?,
        events_config: columns.events_config()?,
        trigger_logic: columns.text("trigger_logic")?,
    };
    let mut unknown_keys: Vec<String> = columns.entries.into_values().map(|(key, _)| key).collect();

    let parsed = parse_config(&row, task_type).map_err(|source| ConfigFileError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    unknown_keys.extend(
        parsed
            .unknown_keys
            .iter()
            .map(|key| format!("events_config.{key}")),
    );
    unknown_keys.sort();
    Ok(ConfigFile {
        row,
        parsed,
        unknown_keys,
    })
}

/// The top-level keys of the file, by snake_case name, with the key as written.
struct Columns<'p> {
    path: &'p str,
    entries: std::collections::BTreeMap<String, (String, Value)>,
}

impl Columns<'_> {
    fn take(&mut self, key: &str) -> Option<Value> {
        match self.entries.remove(key)? {
            (_, Value::Null) => None,
            (_, value) => Some(value),
        }
    }

    fn error(&self, field: &str, expected: &'static str, value: &Value) -> ConfigFileError {
        ConfigFileError::Field {
            path: self.path.to_owned(),
            field: field.to_owned(),
            expected,
            value: shorten(&value.to_string()),
        }
    }

    fn number(&mut self, key: &str) -> Result<Option<f64>, ConfigFileError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let number = match &value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match number {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(self.error(key, "a number", &value)),
        }
    }

    fn integer(&mut self, key: &str) -> Result<Option<u64>, ConfigFileError> {
        let Some(value) = self.take(key) else {
            return Ok(None);
        };
        let integer = match &value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        integer
            .map(Some)
            .ok_or_else(|| self.error(key, "a whole number of at least 0", &value))
    }

    fn text(&mut self, key: &str) -> Result<Option<String>, ConfigFileError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(key, "a string", &other)),
        }
    }

    /// Takes `events_config` as the column stores it: JSON text. An object is written back
    /// to text so that [`parse_config`] reads it like any column value.
    fn events_config(&mut self) -> Result<Option<String>, ConfigFileError> {
        match self.take("events_config") {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(object @ Value::Object(_)) => Ok(Some(object.to_string())),
            Some(other) => Err(self.error("events_config", "a JSON object or its text", &other)),
        }
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= 80 {
        return text.to_owned();
    }
    text.chars().take(77).collect::<String>() + "..."
}

#[cfg(test)]
mod tests {
    use monitor_core::rules::{Rules, SideFilter, TriggerLogic};

    use super::*;

    fn token(text: &str) -> Result<ConfigFile, ConfigFileError> {
        parse(text, "rules.json", TaskType::Smart)
    }

    #[test]
    fn file_with_columns_and_object_parses() {
        let file = token(
            r#"{"events_config": {"large_trade": {"side": "buy"}, "cumulative_buy": true,
                "price_change": {"window_sec": 60, "rise_pct": 0.05}},
                "min_transaction_usd": 100000, "cumulative_min_amount_usd": "250000.50",
                "time_interval": 60, "trigger_logic": "AND", "version": 3}"#,
        )
        .unwrap();
        assert_eq!(file.parsed.trigger_logic, TriggerLogic::And);
        assert_eq!(file.row.version, 3);
        assert_eq!(file.row.name, "rules.json");
        let Rules::Token(rules) = &file.parsed.rules else {
            panic!("token rules expected");
        };
        let large = rules.large_trade.as_ref().unwrap();
        assert_eq!((large.side, large.min_usd), (SideFilter::Buy, 100_000.0));
        let cumulative = rules.cumulative_buy.as_ref().unwrap();
        assert_eq!((cumulative.window_sec, cumulative.min_usd), (60, 250_000.5));
        assert!(file.unknown_keys.is_empty(), "{:?}", file.unknown_keys);
    }

    #[test]
    fn camel_case_keys_and_text_events_config_parse() {
        let file =
            token(r#"{"eventsConfig": "{\"largeTrade\": true}", "minTransactionUsd": 5000}"#)
                .unwrap();
        let rules = file.parsed.rules.as_token().unwrap();
        assert_eq!(rules.large_trade.as_ref().unwrap().min_usd, 5000.0);
    }

    #[test]
    fn unknown_keys_are_listed() {
        let file = token(
            r#"{"events_config": {"large_trade": true, "colour": 1}, "min_transaction_usd": 1,
                "comment": "stricter"}"#,
        )
        .unwrap();
        assert_eq!(file.unknown_keys, vec!["comment", "events_config.colour"]);
    }

    #[test]
    fn invalid_rule_names_field_value_and_file() {
        let error = token(r#"{"events_config": {"large_trade": true}, "min_transaction_usd": -5}"#)
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "config file rules.json: invalid config 0 version 0: min_transaction_usd must be > 0, got -5"
        );
    }

    #[test]
    fn malformed_files_are_rejected_with_the_value() {
        let cases = [
            ("[1, 2]", "config file rules.json must hold a JSON object, got [1,2]"),
            (
                r#"{"time_interval": "soon"}"#,
                "config file rules.json: time_interval must be a whole number of at least 0, got \"soon\"",
            ),
            (
                r#"{"events_config": 7}"#,
                "config file rules.json: events_config must be a JSON object or its text, got 7",
            ),
            (
                r#"{"min_transaction_usd": true}"#,
                "config file rules.json: min_transaction_usd must be a number, got true",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(token(text).unwrap_err().to_string(), message, "{text}");
        }
        assert!(token("{not json")
            .unwrap_err()
            .to_string()
            .starts_with("config file rules.json is not valid JSON: "));
    }
}
