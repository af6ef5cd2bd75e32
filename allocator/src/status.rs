//! The `status` command: the tasks' epochs, batches and config as stored in the database.
//!
//! Reads only MySQL, so it works while NATS is down. Writes plain text (English) to the given
//! writer, one block per task.

use std::io::Write;

use monitor_core::rules;
use sqlx::MySqlPool;

use crate::allocate;
use crate::snapshot::TaskKind;
use crate::store::{self, StoreError, TaskRow};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("task {0} not found")]
    TaskNotFound(u64),
    #[error("failed to write the status: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes the status of one task, or of every active task when `task_id` is `None`.
pub async fn write_status(
    pool: &MySqlPool,
    task_id: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), StatusError> {
    let task_ids = match task_id {
        Some(id) => vec![id],
        None => store::active_task_ids(pool).await?,
    };
    if task_ids.is_empty() {
        writeln!(out, "no active tasks")?;
    }
    for id in task_ids {
        let task = store::task(pool, id)
            .await?
            .ok_or(StatusError::TaskNotFound(id))?;
        write_task(pool, &task, out).await?;
    }
    Ok(())
}

async fn write_task(
    pool: &MySqlPool,
    task: &TaskRow,
    out: &mut dyn Write,
) -> Result<(), StatusError> {
    let state = if task.is_active() {
        "active"
    } else {
        "stopped"
    };
    writeln!(
        out,
        "task {} {:?}: {} on {}, {state}, epoch {}",
        task.id, task.name, task.task_type, task.chain_type, task.current_epoch
    )?;
    let kind = match TaskKind::of(task) {
        Ok(kind) => kind,
        Err(invalid) => {
            writeln!(out, "  error: {invalid}")?;
            return Ok(());
        }
    };

    write_config(pool, task, kind, out).await?;
    if !kind.task_type.has_targets() {
        writeln!(out, "  no batches (block task)")?;
        return Ok(());
    }

    let targets = store::active_targets(pool, task.id).await?;
    let pending = allocate::needs_allocation(pool, task.id, task.current_epoch).await?;
    let note = if pending { ", not yet allocated" } else { "" };
    writeln!(out, "  active targets: {}{note}", targets.len())?;
    for batch in store::epoch_batches(pool, task.id, task.current_epoch).await? {
        writeln!(
            out,
            "  batch {} (no. {}): {} items, {}",
            batch.id, batch.batch_no, batch.item_count, batch.status
        )?;
    }
    Ok(())
}

async fn write_config(
    pool: &MySqlPool,
    task: &TaskRow,
    kind: TaskKind,
    out: &mut dyn Write,
) -> Result<(), StatusError> {
    let configs = store::task_configs(pool, task.id).await?;
    let Some((config, others)) = configs.split_first() else {
        writeln!(out, "  config: none (the task runs no rules)")?;
        return Ok(());
    };
    writeln!(
        out,
        "  config {} version {} {:?}",
        config.config_id, config.version, config.name
    )?;
    if !others.is_empty() {
        let ignored: Vec<String> = others.iter().map(|c| c.config_id.to_string()).collect();
        writeln!(
            out,
            "  ignored configs (only the first is used): {}",
            ignored.join(", ")
        )?;
    }
    if let Err(error) = rules::parse_config(config, kind.task_type) {
        writeln!(out, "  config error: {error}")?;
    }
    Ok(())
}
