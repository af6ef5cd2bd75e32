//! The alert log `monitor_alert_log_v2`, which is also the outbox of alerts for the Java side.
//!
//! An alert is written once per `alert_key` (the alert id): inserting it again returns the
//! first row's id and leaves the row as it was, so a redelivered alert can never create a
//! second row. Rows start as `notify_status = 'pending'` and become `pushed` once the `alert`
//! message was written to the Java WebSocket. Pending rows are read back in `event_time` order
//! to be pushed after an outage. A later delivery of the same alert id with a new state
//! (see [`is_state_change`]) updates `state` and sets the row `pending` again until the change
//! reached the Java side. When the Java side had already received the row, the state it
//! received is kept in `alert_data.previousState`, so that the outbox sends an `alert_update`
//! and not the whole alert again.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime};
use monitor_core::messages::{Alert, AlertState};
use serde_json::Value;
use sqlx::mysql::MySqlPool;
use sqlx::Row;

/// Lengths of the text columns that alerts fill with names taken from the feeds.
const TITLE_MAX_CHARS: usize = 512;
const TOKEN_NAME_MAX_CHARS: usize = 128;
const TOKEN_SYMBOL_MAX_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AlertLogError {
    #[error("failed to insert alert {alert_key}: {source}")]
    Insert {
        alert_key: String,
        source: sqlx::Error,
    },
    #[error("invalid event time {event_time_ms} ms of alert {alert_key}")]
    EventTime {
        alert_key: String,
        event_time_ms: i64,
    },
    #[error("failed to update the state of alert row {id} to {state}: {source}")]
    UpdateState {
        id: u64,
        state: &'static str,
        source: sqlx::Error,
    },
    #[error("failed to mark alert row {id} as pushed: {source}")]
    MarkPushed { id: u64, source: sqlx::Error },
    #[error("failed to read pending alerts: {source}")]
    ReadPending { source: sqlx::Error },
    #[error("failed to count the alerts of task {task_id}: {source}")]
    Count { task_id: u64, source: sqlx::Error },
}

impl AlertLogError {
    /// Returns true when retrying cannot help because MySQL rejects the row itself (a data or
    /// constraint error), as opposed to being unreachable, overloaded or missing the table.
    pub fn is_permanent(&self) -> bool {
        match self {
            AlertLogError::EventTime { .. } => true,
            AlertLogError::Insert { source, .. } => is_data_error(source),
            AlertLogError::UpdateState { .. }
            | AlertLogError::MarkPushed { .. }
            | AlertLogError::ReadPending { .. }
            | AlertLogError::Count { .. } => false,
        }
    }
}

/// SQLSTATE class 22 (data exception: too long, out of range, invalid JSON) and 23 (integrity
/// constraint) mean the row is wrong, not the server.
fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

/// Push status of a row: whether its `alert` message reached the Java WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyStatus {
    Pending,
    Pushed,
}

/// The row of an alert after [`AlertLog::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedAlert {
    pub id: u64,
    pub notify_status: NotifyStatus,
    /// State stored in the row, which is the state of the first delivery until a change.
    pub state: AlertState,
}

/// Whether an alert delivered again with `incoming` changes the row's `stored` state. A
/// provisional alert may be confirmed or retracted and a confirmed one retracted (a reorg);
/// a retraction is final, and nothing returns to provisional.
pub fn is_state_change(stored: AlertState, incoming: AlertState) -> bool {
    matches!(
        (stored, incoming),
        (AlertState::Provisional, AlertState::Confirmed)
            | (AlertState::Provisional, AlertState::Retracted)
            | (AlertState::Confirmed, AlertState::Retracted)
    )
}

fn parse_state(text: &str) -> AlertState {
    match text {
        "provisional" => AlertState::Provisional,
        "retracted" => AlertState::Retracted,
        _ => AlertState::Confirmed,
    }
}

/// A row still waiting to be pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAlert {
    pub id: u64,
    pub alert_type: String,
    pub alert_data: Value,
    pub event_time: NaiveDateTime,
}

impl PendingAlert {
    /// Returns the row's new state when the Java side received the row before in another
    /// state (see [`AlertLog::update_state`]), so that an `alert_update` brings it up to date.
    pub fn changed_state(&self) -> Option<AlertState> {
        self.alert_data.get("previousState")?.as_str()?;
        serde_json::from_value(self.alert_data.get("state")?.clone()).ok()
    }
}

/// Position after the last row of a page of pending alerts, in `(event_time, id)` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingCursor {
    event_time: NaiveDateTime,
    id: u64,
}

impl PendingCursor {
    /// Returns the position before every row, which is 1970 because [`AlertLog::insert`]
    /// rejects earlier event times.
    pub fn start() -> Self {
        PendingCursor {
            event_time: DateTime::UNIX_EPOCH.naive_utc(),
            id: 0,
        }
    }

    pub fn after(row: &PendingAlert) -> Self {
        PendingCursor {
            event_time: row.event_time,
            id: row.id,
        }
    }
}

/// Number of alert rows of one batch or task and the event time of the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlertCounts {
    pub total: u64,
    /// Largest `event_time`, in milliseconds since the Unix epoch; `None` without rows.
    pub last_alert_ms: Option<i64>,
}

impl AlertCounts {
    /// Adds the rows counted in `other`.
    pub fn add(&mut self, other: AlertCounts) {
        self.total += other.total;
        self.last_alert_ms = self.last_alert_ms.max(other.last_alert_ms);
    }
}

/// Alert counts of a task, in total and per batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskAlertCounts {
    pub task: AlertCounts,
    /// Rows without a batch (those of block tasks) count only in `task`.
    pub batches: HashMap<u64, AlertCounts>,
}

/// Access to `monitor_alert_log_v2`.
#[derive(Clone)]
pub struct AlertLog {
    pool: MySqlPool,
}

impl AlertLog {
    pub fn new(pool: MySqlPool) -> Self {
        AlertLog { pool }
    }

    /// Inserts the alert as `pending`, or finds the row a previous delivery inserted; returns
    /// the row id and its push status.
    pub async fn insert(
        &self,
        alert: &Alert,
        title: &str,
        alert_data: &Value,
    ) -> Result<LoggedAlert, AlertLogError> {
        let event_time = event_time(alert)?;
        let insert_error = |source| AlertLogError::Insert {
            alert_key: alert.id.clone(),
            source,
        };

        // `id = LAST_INSERT_ID(id)` makes a duplicate key report the existing row's id.
        let inserted = sqlx::query(
            "INSERT INTO monitor_alert_log_v2 \
               (alert_key, task_id, config_id, config_version, batch_id, target_id, chain_type, \
                alert_type, target_value, token_name, token_symbol, title, alert_data, state, \
                notify_status, event_time) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) \
             ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
        )
        .bind(&alert.id)
        .bind(alert.task_id)
        .bind(alert.config_id)
        .bind(alert.config_version)
        .bind(alert.batch_id)
        .bind(alert.target_id)
        .bind(alert.chain.to_string())
        .bind(alert.alert_type.as_str())
        .bind(&alert.target_value)
        .bind(
            alert
                .token_name
                .as_deref()
                .map(|s| truncate(s, TOKEN_NAME_MAX_CHARS)),
        )
        .bind(
            alert
                .token_symbol
                .as_deref()
                .map(|s| truncate(s, TOKEN_SYMBOL_MAX_CHARS)),
        )
        .bind(truncate(title, TITLE_MAX_CHARS))
        .bind(alert_data.to_string())
        .bind(alert.state.as_str())
        .bind(event_time)
        .execute(&self.pool)
        .await
        .map_err(insert_error)?;
        let id = inserted.last_insert_id();

        let (status, state): (String, String) =
            sqlx::query_as("SELECT notify_status, state FROM monitor_alert_log_v2 WHERE id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .map_err(insert_error)?;
        let notify_status = if status == "pushed" {
            NotifyStatus::Pushed
        } else {
            NotifyStatus::Pending
        };
        Ok(LoggedAlert {
            id,
            notify_status,
            state: parse_state(&state),
        })
    }

    /// Stores a new state in the row and in its `alert_data`, and sets the row `pending` so
    /// that the outbox pushes the change if the live push fails. `received` is the state in
    /// which the Java side received the row, `None` when it has not received it; it is kept in
    /// `alert_data.previousState` (an earlier value stays when `None`).
    pub async fn update_state(
        &self,
        id: u64,
        state: AlertState,
        received: Option<AlertState>,
    ) -> Result<(), AlertLogError> {
        let statement = if received.is_some() {
            "UPDATE monitor_alert_log_v2 \
             SET state = ?, \
                 alert_data = JSON_SET(COALESCE(alert_data, '{}'), '$.state', ?, '$.previousState', ?), \
                 notify_status = 'pending' \
             WHERE id = ?"
        } else {
            "UPDATE monitor_alert_log_v2 \
             SET state = ?, alert_data = JSON_SET(COALESCE(alert_data, '{}'), '$.state', ?), \
                 notify_status = 'pending' \
             WHERE id = ?"
        };
        let mut query = sqlx::query(statement)
            .bind(state.as_str())
            .bind(state.as_str());
        if let Some(received) = received {
            query = query.bind(received.as_str());
        }
        query
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|source| AlertLogError::UpdateState {
                id,
                state: state.as_str(),
                source,
            })?;
        Ok(())
    }

    /// Marks a row as pushed to the Java side.
    pub async fn mark_pushed(&self, id: u64) -> Result<(), AlertLogError> {
        sqlx::query(
            "UPDATE monitor_alert_log_v2 SET notify_status = 'pushed' \
             WHERE id = ? AND notify_status = 'pending'",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|source| AlertLogError::MarkPushed { id, source })?;
        Ok(())
    }

    /// Reads up to `limit` pending rows after `cursor`, oldest `event_time` first.
    pub async fn pending_after(
        &self,
        cursor: PendingCursor,
        limit: u32,
    ) -> Result<Vec<PendingAlert>, AlertLogError> {
        let rows = sqlx::query(
            "SELECT id, alert_type, alert_data, event_time FROM monitor_alert_log_v2 \
             WHERE notify_status = 'pending' \
               AND (event_time > ? OR (event_time = ? AND id > ?)) \
             ORDER BY event_time, id \
             LIMIT ?",
        )
        .bind(cursor.event_time)
        .bind(cursor.event_time)
        .bind(cursor.id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| AlertLogError::ReadPending { source })?;

        rows.iter().map(pending_alert).collect()
    }

    /// Counts the rows of a task per batch, with the newest `event_time` of each. The query
    /// reads the task's range of the `(task_id, event_time)` index.
    pub async fn counts_of_task(&self, task_id: u64) -> Result<TaskAlertCounts, AlertLogError> {
        let count_error = |source| AlertLogError::Count { task_id, source };
        let rows: Vec<(Option<i64>, i64, Option<NaiveDateTime>)> = sqlx::query_as(
            "SELECT batch_id, COUNT(*), MAX(event_time) FROM monitor_alert_log_v2 \
             WHERE task_id = ? GROUP BY batch_id",
        )
        .bind(task_id)
        .fetch_all(&self.pool)
        .await
        .map_err(count_error)?;

        let mut counts = TaskAlertCounts::default();
        for (batch_id, total, last) in rows {
            let group = AlertCounts {
                total: total.max(0) as u64,
                last_alert_ms: last.map(|t| t.and_utc().timestamp_millis()),
            };
            counts.task.add(group);
            if let Some(batch_id) = batch_id {
                counts
                    .batches
                    .entry(batch_id as u64)
                    .or_default()
                    .add(group);
            }
        }
        Ok(counts)
    }
}

fn pending_alert(row: &sqlx::mysql::MySqlRow) -> Result<PendingAlert, AlertLogError> {
    let read_error = |source| AlertLogError::ReadPending { source };
    let id: i64 = row.try_get("id").map_err(read_error)?;
    // MariaDB's JSON is LONGTEXT with a binary collation, which sqlx reads as bytes.
    let raw_data: Option<Vec<u8>> = row.try_get("alert_data").map_err(read_error)?;
    let id = id as u64;
    Ok(PendingAlert {
        id,
        alert_type: row.try_get("alert_type").map_err(read_error)?,
        alert_data: parse_alert_data(id, raw_data),
        event_time: row.try_get("event_time").map_err(read_error)?,
    })
}

/// This stage writes `alert_data` as JSON; text that does not parse (written by another
/// writer) is pushed as a string rather than held back.
fn parse_alert_data(id: u64, raw: Option<Vec<u8>>) -> Value {
    let Some(raw) = raw else {
        return Value::Null;
    };
    serde_json::from_slice(&raw).unwrap_or_else(|error| {
        tracing::warn!(alert_row = id, error = %error, "alert_data is not valid JSON, pushing it as text");
        Value::String(String::from_utf8_lossy(&raw).into_owned())
    })
}

fn event_time(alert: &Alert) -> Result<NaiveDateTime, AlertLogError> {
    DateTime::from_timestamp_millis(alert.event_time_ms)
        .filter(|t| t.timestamp() >= 0)
        .map(|t| t.naive_utc())
        .ok_or_else(|| AlertLogError::EventTime {
            alert_key: alert.id.clone(),
            event_time_ms: alert.event_time_ms,
        })
}

fn truncate(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_only_forward() {
        use AlertState::*;
        assert!(is_state_change(Provisional, Confirmed));
        assert!(is_state_change(Provisional, Retracted));
        assert!(is_state_change(Confirmed, Retracted));
        assert!(!is_state_change(Confirmed, Provisional));
        assert!(!is_state_change(Retracted, Confirmed));
        assert!(!is_state_change(Confirmed, Confirmed));
    }

    #[test]
    fn changed_state_needs_a_previous_state() {
        let row = |data: Value| PendingAlert {
            id: 1,
            alert_type: "large_transaction".into(),
            alert_data: data,
            event_time: DateTime::UNIX_EPOCH.naive_utc(),
        };
        let changed =
            row(serde_json::json!({"state": "retracted", "previousState": "provisional"}));
        assert_eq!(changed.changed_state(), Some(AlertState::Retracted));
        let never_received = row(serde_json::json!({"state": "retracted"}));
        assert_eq!(never_received.changed_state(), None);
    }

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("价格上涨", 2), "价格");
        assert_eq!(truncate("abc", 5), "abc");
    }

    #[test]
    fn event_time_is_utc_with_milliseconds() {
        let time = DateTime::from_timestamp_millis(1_700_000_000_123)
            .unwrap()
            .naive_utc();
        assert_eq!(time.to_string(), "2023-11-14 22:13:20.123");
    }

    #[test]
    fn alert_data_that_is_not_json_is_kept_as_text() {
        assert_eq!(parse_alert_data(1, Some("{\"a\":1}".into()))["a"], 1);
        assert_eq!(
            parse_alert_data(1, Some("oops".into())),
            Value::String("oops".into())
        );
        assert_eq!(parse_alert_data(1, None), Value::Null);
    }
}
