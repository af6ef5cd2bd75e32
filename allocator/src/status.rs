//! The `status` command: the tasks' epochs, batches and config as stored in the database, and
//! what the tasks bucket publishes to the data plane.
//!
//! Reads MySQL, then the task's entry in the tasks bucket: the epoch and the config version in
//! force there, and the config error reported next to them. The bucket read is optional, so
//! the command still prints the database's view while NATS is down. Writes plain text
//! (English) to the given writer, one block per task.

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream::kv;
use monitor_core::codec;
use monitor_core::messages::TaskSpec;
use monitor_core::rules;
use monitor_core::Subjects;
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

/// Maximum wait for one entry of the tasks bucket.
const BUCKET_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The tasks bucket as the command found it: open, or why it cannot be read.
pub type Bucket = Result<kv::Store, String>;

/// Writes the status of one task, or of every active task when `task_id` is `None`.
pub async fn write_status(
    pool: &MySqlPool,
    bucket: &Bucket,
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
        write_published(bucket, id, out).await?;
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

/// Writes the task's entry in the tasks bucket: what ingest and evaluate run.
async fn write_published(
    bucket: &Bucket,
    task_id: u64,
    out: &mut dyn Write,
) -> Result<(), StatusError> {
    let store = match bucket {
        Ok(store) => store,
        Err(reason) => {
            writeln!(out, "  published: unknown, {reason}")?;
            return Ok(());
        }
    };
    let key = Subjects::task_key(task_id);
    let entry = match tokio::time::timeout(BUCKET_READ_TIMEOUT, store.get(key.as_str())).await {
        Ok(Ok(entry)) => entry,
        Ok(Err(error)) => {
            writeln!(out, "  published: unknown, failed to read {key}: {error}")?;
            return Ok(());
        }
        Err(_) => {
            let seconds = BUCKET_READ_TIMEOUT.as_secs();
            writeln!(
                out,
                "  published: unknown, reading {key} timed out after {seconds} s"
            )?;
            return Ok(());
        }
    };
    let Some(bytes) = entry else {
        writeln!(
            out,
            "  published: no, the data plane runs nothing for this task"
        )?;
        return Ok(());
    };
    match codec::decode::<TaskSpec>(&bytes) {
        Ok(spec) => write_spec(&spec, out),
        Err(error) => {
            writeln!(out, "  published: unreadable entry {key}: {error}")?;
            Ok(())
        }
    }
}

fn write_spec(spec: &TaskSpec, out: &mut dyn Write) -> Result<(), StatusError> {
    let items: u32 = spec.batches.iter().map(|b| b.item_count).sum();
    let rules = match &spec.config {
        Some(config) => format!(
            "config {} version {} in force",
            config.config_id, config.version
        ),
        None => "no valid rules in force".to_owned(),
    };
    writeln!(
        out,
        "  published: epoch {}, {} batches, {items} items, {rules}",
        spec.epoch,
        spec.batches.len()
    )?;
    if let Some(error) = &spec.config_error {
        writeln!(out, "  published config error: {error}")?;
    }
    Ok(())
}
