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
//!
//! Inserts and the background marking of pushed rows run concurrently and both change the
//! `(notify_status, event_time)` index, so InnoDB now and then picks one of them as a deadlock
//! victim and rolls it back. Every write here is one idempotent autocommit statement, so
//! [`retry_lock_conflicts`] runs it again. Only a conflict that outlasts the retries reaches
//! the caller.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};
use monitor_core::messages::{Alert, AlertState};
use serde_json::Value;
use sqlx::mysql::{MySql, MySqlDatabaseError, MySqlPool, MySqlQueryResult};
use sqlx::query_builder::Separated;
use sqlx::{QueryBuilder, Row};

/// MariaDB error numbers of a statement rolled back by a lock conflict: deadlock victim, and
/// lock wait timeout.
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// MariaDB and MySQL error number of an `INSERT` that would duplicate a unique key.
const ER_DUP_ENTRY: u16 = 1062;
/// Runs of a statement after its first one lost a lock conflict.
const LOCK_RETRIES: u32 = 5;
/// Pause before the first run again; it doubles with each further one (2 ms to 32 ms).
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(2);

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
    #[error("failed to insert {count} alerts (the first is {first_key}): {source}")]
    InsertBatch {
        count: usize,
        first_key: String,
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
    #[error("failed to mark {count} alert row(s) from id {first_id} as pushed: {source}")]
    MarkPushed {
        first_id: u64,
        count: usize,
        source: sqlx::Error,
    },
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
            AlertLogError::Insert { source, .. } | AlertLogError::InsertBatch { source, .. } => {
                is_data_error(source)
            }
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

/// Returns the MariaDB (or MySQL) error number of a failed statement.
fn error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// True when an `INSERT` failed because a row with the same unique key exists.
fn is_duplicate_key(error: &sqlx::Error) -> bool {
    error_number(error) == Some(ER_DUP_ENTRY)
}

/// True when MariaDB rolled the statement back because of a lock conflict with another
/// statement, so that running it again can succeed.
pub fn is_lock_conflict(error: &sqlx::Error) -> bool {
    matches!(
        error_number(error),
        Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT)
    )
}

/// Runs an idempotent autocommit statement, and again after each lock conflict up to
/// [`LOCK_RETRIES`] times, with a longer pause each time. Returns the last outcome.
pub async fn retry_lock_conflicts<T, F, Fut>(statement: &str, mut run: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut retries = 0;
    loop {
        match run().await {
            Err(error) if retries < LOCK_RETRIES && is_lock_conflict(&error) => {
                let delay = LOCK_RETRY_DELAY * 2u32.pow(retries);
                retries += 1;
                tracing::debug!(
                    statement,
                    retry = retries,
                    delay_ms = delay.as_millis() as u64,
                    error = %error,
                    "lock conflict, running the statement again"
                );
                crate::metrics::lock_conflict_retried();
                tokio::time::sleep(delay).await;
            }
            outcome => return outcome,
        }
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

fn parse_notify_status(text: &str) -> NotifyStatus {
    if text == "pushed" {
        NotifyStatus::Pushed
    } else {
        NotifyStatus::Pending
    }
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

/// Columns of a new row, followed by the `VALUES` list of [`bind_row`].
const INSERT_COLUMNS: &str = "INSERT INTO monitor_alert_log_v2 \
    (alert_key, task_id, config_id, config_version, batch_id, target_id, chain_type, \
     alert_type, target_value, token_name, token_symbol, title, alert_data, state, \
     notify_status, event_time) ";

/// An alert to store, with the title and `alertData` pushed to the Java side.
#[derive(Debug, Clone, Copy)]
pub struct NewAlertRow<'a> {
    pub alert: &'a Alert,
    pub title: &'a str,
    pub alert_data: &'a Value,
}

/// Binds the values of one new row, in the order of [`INSERT_COLUMNS`], as `pending`.
fn bind_row<'q>(
    mut values: Separated<'_, 'q, MySql, &'static str>,
    row: &NewAlertRow<'q>,
    event_time: NaiveDateTime,
) {
    let alert = row.alert;
    values
        .push_bind(alert.id.as_str())
        .push_bind(alert.task_id)
        .push_bind(alert.config_id)
        .push_bind(alert.config_version)
        .push_bind(alert.batch_id)
        .push_bind(alert.target_id)
        .push_bind(alert.chain.to_string())
        .push_bind(alert.alert_type.as_str())
        .push_bind(alert.target_value.as_str())
        .push_bind(
            alert
                .token_name
                .as_deref()
                .map(|s| truncate(s, TOKEN_NAME_MAX_CHARS)),
        )
        .push_bind(
            alert
                .token_symbol
                .as_deref()
                .map(|s| truncate(s, TOKEN_SYMBOL_MAX_CHARS)),
        )
        .push_bind(truncate(row.title, TITLE_MAX_CHARS))
        .push_bind(row.alert_data.to_string())
        .push_bind(alert.state.as_str())
        .push("'pending'")
        .push_bind(event_time);
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
    ///
    /// Most alerts are new, and a plain `INSERT` stores one in a single round trip, with the
    /// row's status and state known from what it wrote. Only a redelivered alert, which hits
    /// the unique `alert_key`, costs a second statement and a read of the existing row.
    pub async fn insert(&self, row: &NewAlertRow<'_>) -> Result<LoggedAlert, AlertLogError> {
        let event_time = event_time(row.alert)?;
        let insert_error = |source| AlertLogError::Insert {
            alert_key: row.alert.id.clone(),
            source,
        };

        let inserted =
            retry_lock_conflicts("insert alert", || self.insert_row(row, event_time, "")).await;
        match inserted {
            Ok(inserted) => {
                return Ok(LoggedAlert {
                    id: inserted.last_insert_id(),
                    notify_status: NotifyStatus::Pending,
                    state: row.alert.state,
                })
            }
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => return Err(insert_error(error)),
        }

        // `id = LAST_INSERT_ID(id)` makes the duplicate key report the existing row's id, which
        // is then read by id: the key's collation may equate keys that differ in bytes.
        let found = retry_lock_conflicts("find alert", || {
            self.insert_row(
                row,
                event_time,
                " ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
            )
        })
        .await
        .map_err(insert_error)?;
        let id = found.last_insert_id();

        let (status, state): (String, String) =
            sqlx::query_as("SELECT notify_status, state FROM monitor_alert_log_v2 WHERE id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await
                .map_err(insert_error)?;
        Ok(LoggedAlert {
            id,
            notify_status: parse_notify_status(&status),
            state: parse_state(&state),
        })
    }

    /// Runs the `INSERT` of one row as `pending`, followed by `suffix`.
    async fn insert_row(
        &self,
        row: &NewAlertRow<'_>,
        event_time: NaiveDateTime,
        suffix: &str,
    ) -> Result<MySqlQueryResult, sqlx::Error> {
        let mut query = QueryBuilder::<MySql>::new(INSERT_COLUMNS);
        query.push_values([row], |values, row| bind_row(values, row, event_time));
        query.push(suffix);
        query.build().execute(&self.pool).await
    }

    /// Inserts several alerts with distinct keys as [`AlertLog::insert`] does, in one statement
    /// and so in one commit; returns their rows in the order of `rows`.
    ///
    /// The rows are read back by `alert_key`. The column's collation may equate two keys that
    /// differ in bytes, so a row not found by its exact key falls back to [`AlertLog::insert`],
    /// which reads it by id.
    pub async fn insert_batch(
        &self,
        rows: &[NewAlertRow<'_>],
    ) -> Result<Vec<LoggedAlert>, AlertLogError> {
        if let [row] = rows {
            return Ok(vec![self.insert(row).await?]);
        }
        let event_times = rows
            .iter()
            .map(|row| event_time(row.alert))
            .collect::<Result<Vec<_>, _>>()?;
        let insert_error = |source| AlertLogError::InsertBatch {
            count: rows.len(),
            first_key: rows.first().map(|r| r.alert.id.clone()).unwrap_or_default(),
            source,
        };

        // `id = id` leaves an existing row as it was.
        retry_lock_conflicts("insert alerts", || async {
            let mut insert = QueryBuilder::<MySql>::new(INSERT_COLUMNS);
            insert.push_values(rows.iter().zip(&event_times), |values, (row, time)| {
                bind_row(values, row, *time)
            });
            insert.push(" ON DUPLICATE KEY UPDATE id = id");
            insert.build().execute(&self.pool).await
        })
        .await
        .map_err(insert_error)?;

        let mut select = QueryBuilder::<MySql>::new(
            "SELECT id, alert_key, notify_status, state FROM monitor_alert_log_v2 WHERE alert_key IN ",
        );
        select.push_tuples(rows, |mut key, row| {
            key.push_bind(row.alert.id.as_str());
        });
        let found: HashMap<String, LoggedAlert> = select
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(insert_error)?
            .iter()
            .map(|found| {
                let status: String = found.try_get("notify_status")?;
                let state: String = found.try_get("state")?;
                let logged = LoggedAlert {
                    id: found.try_get::<i64, _>("id")? as u64,
                    notify_status: parse_notify_status(&status),
                    state: parse_state(&state),
                };
                Ok((found.try_get::<String, _>("alert_key")?, logged))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(insert_error)?;

        let mut logged = Vec::with_capacity(rows.len());
        for row in rows {
            match found.get(&row.alert.id) {
                Some(row) => logged.push(*row),
                None => logged.push(self.insert(row).await?),
            }
        }
        Ok(logged)
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
        retry_lock_conflicts("update alert state", || {
            let mut query = sqlx::query(statement)
                .bind(state.as_str())
                .bind(state.as_str());
            if let Some(received) = received {
                query = query.bind(received.as_str());
            }
            query.bind(id).execute(&self.pool)
        })
        .await
        .map_err(|source| AlertLogError::UpdateState {
            id,
            state: state.as_str(),
            source,
        })?;
        Ok(())
    }

    /// Marks rows as pushed to the Java side, in one statement.
    pub async fn mark_pushed(&self, ids: &[u64]) -> Result<(), AlertLogError> {
        if ids.is_empty() {
            return Ok(());
        }
        retry_lock_conflicts("mark alerts pushed", || async {
            let mut query = QueryBuilder::<MySql>::new(
                "UPDATE monitor_alert_log_v2 SET notify_status = 'pushed' \
                 WHERE notify_status = 'pending' AND id IN ",
            );
            query.push_tuples(ids, |mut id, value| {
                id.push_bind(*value);
            });
            query.build().execute(&self.pool).await
        })
        .await
        .map_err(|source| AlertLogError::MarkPushed {
            first_id: ids[0],
            count: ids.len(),
            source,
        })?;
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
