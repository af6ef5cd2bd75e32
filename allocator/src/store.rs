//! MySQL reads and writes of the allocator, every statement parameterized.
//!
//! Consumes the Java side's tables (`monitor_task_v2`, `monitor_task_config_v2`,
//! `monitor_config_v2`, `monitor_task_target_v2`) and the batch tables. Writes only the
//! columns the allocator owns: the rows of new epochs in `monitor_batch_v2` and
//! `monitor_batch_item_v2`, the targets' `batch_id` / `batch_order`, and
//! `monitor_task_v2.current_epoch`. Functions take any executor, so the same read runs on the
//! pool or inside the allocation transaction.

use chrono::NaiveDateTime;
use monitor_core::rules::ConfigRow;
use sqlx::{Executor, MySql, QueryBuilder};

use crate::order::{Placement, Target};

/// Rows per multi-row INSERT; keeps a statement far below `max_allowed_packet`.
const INSERT_CHUNK: usize = 500;

/// A failed database statement, named for what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action}: {source}")]
pub struct StoreError {
    pub action: String,
    #[source]
    pub source: sqlx::Error,
}

fn failed(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let action = action.into();
    move |source| StoreError { action, source }
}

/// Converts a BIGINT key to the unsigned id the messages use; keys are never negative.
fn id(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Converts an unsigned id to a BIGINT parameter.
fn key(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A row of `monitor_task_v2`, with the text columns not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: u64,
    pub name: String,
    pub task_type: String,
    pub chain_type: String,
    pub status: i8,
    pub del_flag: i8,
    pub current_epoch: u32,
}

impl TaskRow {
    pub fn is_active(&self) -> bool {
        self.status == 1 && self.del_flag == 0
    }
}

/// A target with the columns that its batch spec carries.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRow {
    pub id: u64,
    pub value: String,
    pub pair_address: Option<String>,
    pub token_name: Option<String>,
    pub token_symbol: Option<String>,
    pub market_cap: Option<f64>,
    pub source: Option<String>,
}

/// A row of `monitor_batch_v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    pub id: u64,
    pub batch_no: u32,
    pub epoch: u32,
    pub status: String,
    pub item_count: u32,
}

/// An item of an epoch joined with its target.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRow {
    pub batch_id: u64,
    pub item_order: u32,
    pub target: TargetRow,
}

type TaskTuple = (i64, String, String, String, i8, i8, i32);

fn task_from(row: TaskTuple) -> TaskRow {
    let (task_id, name, task_type, chain_type, status, del_flag, epoch) = row;
    TaskRow {
        id: id(task_id),
        name,
        task_type,
        chain_type,
        status,
        del_flag,
        current_epoch: u32::try_from(epoch).unwrap_or(0),
    }
}

/// Returns the database's clock, the watermark of change detection.
pub async fn database_now<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
) -> Result<NaiveDateTime, StoreError> {
    sqlx::query_scalar("SELECT NOW(3)")
        .fetch_one(executor)
        .await
        .map_err(failed("read the database clock"))
}

/// Ids of the tasks that run: `status = 1 AND del_flag = 0`.
pub async fn active_task_ids<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
) -> Result<Vec<u64>, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM monitor_task_v2 WHERE status = 1 AND del_flag = 0 ORDER BY id",
    )
    .fetch_all(executor)
    .await
    .map_err(failed("list active tasks"))?;
    Ok(ids.into_iter().map(id).collect())
}

/// Ids of tasks whose row, targets, batches or config links changed at or after `since`
/// (database time). Active or not: the caller decides what a change means. Config changes
/// are listed by [`changed_configs`].
pub async fn changed_task_ids<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    since: NaiveDateTime,
) -> Result<Vec<u64>, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM monitor_task_v2 WHERE update_time >= ? \
         UNION SELECT task_id FROM monitor_task_target_v2 WHERE update_time >= ? \
         UNION SELECT task_id FROM monitor_batch_v2 WHERE update_time >= ? \
         UNION SELECT task_id FROM monitor_task_config_v2 WHERE create_time >= ?",
    )
    .bind(since)
    .bind(since)
    .bind(since)
    .bind(since)
    .fetch_all(executor)
    .await
    .map_err(failed(format!("list tasks changed since {since}")))?;
    Ok(ids.into_iter().map(id).collect())
}

/// A config that changed, once for each task linked to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedConfig {
    pub task_id: u64,
    pub config_id: u64,
    pub version: u64,
    /// `status = 1 AND del_flag = 0`.
    pub enabled: bool,
}

/// Configs whose row changed at or after `since` (database time), with each linked task.
pub async fn changed_configs<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    since: NaiveDateTime,
) -> Result<Vec<ChangedConfig>, StoreError> {
    let rows: Vec<(i64, i64, i64, bool)> = sqlx::query_as(
        "SELECT tc.task_id, c.id, c.version, (c.status = 1 AND c.del_flag = 0) \
         FROM monitor_task_config_v2 tc JOIN monitor_config_v2 c ON c.id = tc.config_id \
         WHERE c.update_time >= ? ORDER BY tc.task_id, c.id",
    )
    .bind(since)
    .fetch_all(executor)
    .await
    .map_err(failed(format!("list configs changed since {since}")))?;
    Ok(rows
        .into_iter()
        .map(|(task_id, config_id, version, enabled)| ChangedConfig {
            task_id: id(task_id),
            config_id: id(config_id),
            version: id(version),
            enabled,
        })
        .collect())
}

/// Ids of the active tasks that use a config.
pub async fn active_tasks_of_config<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    config_id: u64,
) -> Result<Vec<u64>, StoreError> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT t.id FROM monitor_task_v2 t \
         JOIN monitor_task_config_v2 tc ON tc.task_id = t.id \
         WHERE tc.config_id = ? AND t.status = 1 AND t.del_flag = 0 ORDER BY t.id",
    )
    .bind(key(config_id))
    .fetch_all(executor)
    .await
    .map_err(failed(format!("list tasks of config {config_id}")))?;
    Ok(ids.into_iter().map(id).collect())
}

/// Reads one task row.
pub async fn task<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
) -> Result<Option<TaskRow>, StoreError> {
    let row: Option<TaskTuple> = sqlx::query_as(
        "SELECT id, task_name, task_type, chain_type, status, del_flag, current_epoch \
         FROM monitor_task_v2 WHERE id = ?",
    )
    .bind(key(task_id))
    .fetch_optional(executor)
    .await
    .map_err(failed(format!("read task {task_id}")))?;
    Ok(row.map(task_from))
}

/// Reads one task row and locks it until the transaction ends, so that two allocators never
/// write two epochs from the same base.
pub async fn lock_task<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
) -> Result<Option<TaskRow>, StoreError> {
    let row: Option<TaskTuple> = sqlx::query_as(
        "SELECT id, task_name, task_type, chain_type, status, del_flag, current_epoch \
         FROM monitor_task_v2 WHERE id = ? FOR UPDATE",
    )
    .bind(key(task_id))
    .fetch_optional(executor)
    .await
    .map_err(failed(format!("lock task {task_id}")))?;
    Ok(row.map(task_from))
}

type ConfigTuple = (
    i64,
    i64,
    String,
    Option<f64>,
    Option<f64>,
    Option<i32>,
    Option<f64>,
    Option<String>,
    Option<String>,
);

/// Reads the enabled configs linked to a task, in `config_order` (ties by config id).
pub async fn task_configs<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
) -> Result<Vec<ConfigRow>, StoreError> {
    let rows: Vec<ConfigTuple> = sqlx::query_as(
        "SELECT c.id, c.version, c.config_name, \
                CAST(c.min_transaction_usd AS DOUBLE), CAST(c.cumulative_min_amount_usd AS DOUBLE), \
                c.time_interval, CAST(c.top_holders_threshold AS DOUBLE), c.events_config, c.trigger_logic \
         FROM monitor_task_config_v2 tc JOIN monitor_config_v2 c ON c.id = tc.config_id \
         WHERE tc.task_id = ? AND c.status = 1 AND c.del_flag = 0 \
         ORDER BY tc.config_order, c.id",
    )
    .bind(key(task_id))
    .fetch_all(executor)
    .await
    .map_err(failed(format!("read the configs of task {task_id}")))?;
    Ok(rows.into_iter().map(config_from).collect())
}

fn config_from(row: ConfigTuple) -> ConfigRow {
    let (config_id, version, name, min_trade, cumulative, interval, top_holders, events, logic) =
        row;
    ConfigRow {
        config_id: id(config_id),
        version: id(version),
        name,
        min_transaction_usd: min_trade,
        cumulative_min_amount_usd: cumulative,
        time_interval: interval.map(i64::from),
        top_holders_threshold: top_holders,
        events_config: events,
        trigger_logic: logic,
    }
}

/// Reads the task's active targets (`status = 1`), by id.
pub async fn active_targets<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
) -> Result<Vec<Target>, StoreError> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, target_value FROM monitor_task_target_v2 WHERE task_id = ? AND status = 1 ORDER BY id",
    )
    .bind(key(task_id))
    .fetch_all(executor)
    .await
    .map_err(failed(format!("read the targets of task {task_id}")))?;
    Ok(rows
        .into_iter()
        .map(|(target_id, value)| Target {
            id: id(target_id),
            value,
        })
        .collect())
}

/// Reads the position of each target of an epoch from `monitor_batch_item_v2`.
pub async fn epoch_placements<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
    epoch: u32,
) -> Result<Vec<Placement>, StoreError> {
    let rows: Vec<(i64, i32, i32)> = sqlx::query_as(
        "SELECT i.target_id, b.batch_no, i.item_order \
         FROM monitor_batch_v2 b JOIN monitor_batch_item_v2 i ON i.batch_id = b.id \
         WHERE b.task_id = ? AND b.epoch = ? ORDER BY b.batch_no, i.item_order",
    )
    .bind(key(task_id))
    .bind(epoch)
    .fetch_all(executor)
    .await
    .map_err(failed(format!(
        "read the items of task {task_id} epoch {epoch}"
    )))?;
    Ok(rows
        .into_iter()
        .map(|(target_id, batch_no, order)| Placement {
            target_id: id(target_id),
            batch_no: u32::try_from(batch_no).unwrap_or(0),
            batch_order: u32::try_from(order).unwrap_or(u32::MAX),
        })
        .collect())
}

/// Returns the highest epoch with batch rows for the task (0 when none).
pub async fn highest_epoch<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
) -> Result<u32, StoreError> {
    let epoch: Option<i32> =
        sqlx::query_scalar("SELECT MAX(epoch) FROM monitor_batch_v2 WHERE task_id = ?")
            .bind(key(task_id))
            .fetch_one(executor)
            .await
            .map_err(failed(format!("read the highest epoch of task {task_id}")))?;
    Ok(epoch.and_then(|e| u32::try_from(e).ok()).unwrap_or(0))
}

/// Inserts the row of a new batch with status `pending` and returns its global id.
pub async fn insert_batch<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
    epoch: u32,
    batch_no: u32,
    item_count: u32,
) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "INSERT INTO monitor_batch_v2 (task_id, batch_no, epoch, status, item_count) \
         VALUES (?, ?, ?, 'pending', ?)",
    )
    .bind(key(task_id))
    .bind(batch_no)
    .bind(epoch)
    .bind(item_count)
    .execute(executor)
    .await
    .map_err(failed(format!(
        "insert batch {batch_no} of task {task_id} epoch {epoch}"
    )))?;
    Ok(result.last_insert_id())
}

/// Inserts the items of one batch.
pub async fn insert_items(
    connection: &mut sqlx::MySqlConnection,
    batch_id: u64,
    items: &[Placement],
) -> Result<(), StoreError> {
    for chunk in items.chunks(INSERT_CHUNK) {
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT INTO monitor_batch_item_v2 (batch_id, target_id, item_order) ",
        );
        insert.push_values(chunk, |mut row, item| {
            row.push_bind(key(batch_id))
                .push_bind(key(item.target_id))
                .push_bind(item.batch_order);
        });
        insert
            .build()
            .execute(&mut *connection)
            .await
            .map_err(failed(format!("insert the items of batch {batch_id}")))?;
    }
    Ok(())
}

/// Copies an epoch's positions into the targets' `batch_id` (the batch number) and
/// `batch_order`, and clears them on the task's targets that the epoch does not list.
pub async fn update_target_positions(
    connection: &mut sqlx::MySqlConnection,
    task_id: u64,
    epoch: u32,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE monitor_task_target_v2 t \
         JOIN monitor_batch_item_v2 i ON i.target_id = t.id \
         JOIN monitor_batch_v2 b ON b.id = i.batch_id \
         SET t.batch_id = b.batch_no, t.batch_order = i.item_order \
         WHERE b.task_id = ? AND b.epoch = ? AND t.task_id = ?",
    )
    .bind(key(task_id))
    .bind(epoch)
    .bind(key(task_id))
    .execute(&mut *connection)
    .await
    .map_err(failed(format!(
        "update the target positions of task {task_id} epoch {epoch}"
    )))?;

    sqlx::query(
        "UPDATE monitor_task_target_v2 t SET t.batch_id = NULL, t.batch_order = NULL \
         WHERE t.task_id = ? AND (t.batch_id IS NOT NULL OR t.batch_order IS NOT NULL) \
         AND NOT EXISTS (SELECT 1 FROM monitor_batch_item_v2 i \
                         JOIN monitor_batch_v2 b ON b.id = i.batch_id \
                         WHERE i.target_id = t.id AND b.task_id = ? AND b.epoch = ?)",
    )
    .bind(key(task_id))
    .bind(key(task_id))
    .bind(epoch)
    .execute(&mut *connection)
    .await
    .map_err(failed(format!(
        "clear the positions of unlisted targets of task {task_id}"
    )))?;
    Ok(())
}

/// Sets `monitor_task_v2.current_epoch`.
pub async fn set_current_epoch<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
    epoch: u32,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE monitor_task_v2 SET current_epoch = ? WHERE id = ?")
        .bind(epoch)
        .bind(key(task_id))
        .execute(executor)
        .await
        .map_err(failed(format!(
            "set the current epoch of task {task_id} to {epoch}"
        )))?;
    Ok(())
}

/// Reads the batch rows of one epoch, by batch number.
pub async fn epoch_batches<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
    epoch: u32,
) -> Result<Vec<BatchRow>, StoreError> {
    let rows: Vec<(i64, i32, i32, String, i32)> = sqlx::query_as(
        "SELECT id, batch_no, epoch, status, item_count FROM monitor_batch_v2 \
         WHERE task_id = ? AND epoch = ? ORDER BY batch_no",
    )
    .bind(key(task_id))
    .bind(epoch)
    .fetch_all(executor)
    .await
    .map_err(failed(format!(
        "read the batches of task {task_id} epoch {epoch}"
    )))?;
    Ok(rows
        .into_iter()
        .map(|(batch_id, batch_no, epoch, status, item_count)| BatchRow {
            id: id(batch_id),
            batch_no: u32::try_from(batch_no).unwrap_or(0),
            epoch: u32::try_from(epoch).unwrap_or(0),
            status,
            item_count: u32::try_from(item_count).unwrap_or(0),
        })
        .collect())
}

type ItemTuple = (
    i64,
    i32,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
);

/// Reads the items of one epoch with their targets, by batch number and item order.
pub async fn epoch_items<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    task_id: u64,
    epoch: u32,
) -> Result<Vec<ItemRow>, StoreError> {
    let rows: Vec<ItemTuple> = sqlx::query_as(
        "SELECT i.batch_id, i.item_order, t.id, t.target_value, t.pair_address, t.token_name, \
                t.token_symbol, CAST(t.market_cap AS DOUBLE), t.source \
         FROM monitor_batch_v2 b \
         JOIN monitor_batch_item_v2 i ON i.batch_id = b.id \
         JOIN monitor_task_target_v2 t ON t.id = i.target_id \
         WHERE b.task_id = ? AND b.epoch = ? ORDER BY b.batch_no, i.item_order",
    )
    .bind(key(task_id))
    .bind(epoch)
    .fetch_all(executor)
    .await
    .map_err(failed(format!(
        "read the targets of task {task_id} epoch {epoch}"
    )))?;
    Ok(rows.into_iter().map(item_from).collect())
}

fn item_from(row: ItemTuple) -> ItemRow {
    let (batch_id, order, target_id, value, pair, name, symbol, market_cap, source) = row;
    ItemRow {
        batch_id: id(batch_id),
        item_order: u32::try_from(order).unwrap_or(0),
        target: TargetRow {
            id: id(target_id),
            value,
            pair_address: pair,
            token_name: name,
            token_symbol: symbol,
            market_cap,
            source,
        },
    }
}

/// Ids of batches of replaced epochs whose successor is older than `grace_seconds`: a newer
/// epoch of the task has a batch created before then, or the task row (whose update bumped
/// with the epoch switch) was last updated before then.
pub async fn expired_batch_ids<'c, E: Executor<'c, Database = MySql>>(
    executor: E,
    grace_seconds: u64,
) -> Result<Vec<u64>, StoreError> {
    let grace = i64::try_from(grace_seconds).unwrap_or(i64::MAX);
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT b.id FROM monitor_batch_v2 b JOIN monitor_task_v2 t ON t.id = b.task_id \
         WHERE b.epoch < t.current_epoch AND ( \
             t.update_time < NOW(3) - INTERVAL ? SECOND \
             OR EXISTS (SELECT 1 FROM monitor_batch_v2 n WHERE n.task_id = b.task_id \
                        AND n.epoch > b.epoch AND n.create_time < NOW(3) - INTERVAL ? SECOND)) \
         ORDER BY b.id",
    )
    .bind(grace)
    .bind(grace)
    .fetch_all(executor)
    .await
    .map_err(failed("list batches of expired epochs"))?;
    Ok(ids.into_iter().map(id).collect())
}

/// Deletes batches and their items.
pub async fn delete_batches(
    connection: &mut sqlx::MySqlConnection,
    batch_ids: &[u64],
) -> Result<(), StoreError> {
    for chunk in batch_ids.chunks(INSERT_CHUNK) {
        for table in ["monitor_batch_item_v2", "monitor_batch_v2"] {
            let column = if table == "monitor_batch_v2" {
                "id"
            } else {
                "batch_id"
            };
            let mut delete =
                QueryBuilder::<MySql>::new(format!("DELETE FROM {table} WHERE {column} IN ("));
            let mut ids = delete.separated(", ");
            for batch_id in chunk {
                ids.push_bind(key(*batch_id));
            }
            delete.push(")");
            delete
                .build()
                .execute(&mut *connection)
                .await
                .map_err(failed(format!(
                    "delete {} rows of expired batches from {table}",
                    chunk.len()
                )))?;
        }
    }
    Ok(())
}

/// Returns the given batch ids that still exist and belong to an active task.
pub async fn live_batch_ids<'c, E: Executor<'c, Database = MySql> + Copy>(
    executor: E,
    batch_ids: &[u64],
) -> Result<Vec<u64>, StoreError> {
    let mut live = Vec::new();
    for chunk in batch_ids.chunks(INSERT_CHUNK) {
        let mut select = QueryBuilder::<MySql>::new(
            "SELECT b.id FROM monitor_batch_v2 b JOIN monitor_task_v2 t ON t.id = b.task_id \
             WHERE t.status = 1 AND t.del_flag = 0 AND b.id IN (",
        );
        let mut ids = select.separated(", ");
        for batch_id in chunk {
            ids.push_bind(key(*batch_id));
        }
        select.push(")");
        let rows: Vec<i64> = select
            .build_query_scalar()
            .fetch_all(executor)
            .await
            .map_err(failed("check which published batches still exist"))?;
        live.extend(rows.into_iter().map(id));
    }
    Ok(live)
}
