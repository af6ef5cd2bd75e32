//! The control plane: keeps the tasks bucket in step with the task tables.
//!
//! Consumes the task tables (polled every `CONFIG_POLL_INTERVAL`) and config change notices
//! from Redis. Produces new epochs for tasks whose active targets changed, a snapshot of every
//! active task in the tasks bucket, deletions for tasks that stopped, and the removal of
//! replaced epochs after the grace period.
//!
//! Change detection uses the database's clock: each poll reads `NOW(3)` before anything else
//! and the next poll looks at rows with `update_time >=` that watermark (less
//! [`WATERMARK_OVERLAP`], for transactions that committed after the poll read past them). A
//! change is therefore found by the first poll after it commits. A changed config whose
//! version the task's published spec already carries is skipped, so the overlap does not
//! reload it on every poll. Reprocessing a task is harmless otherwise: allocation and
//! publishing both compare before they write. A full pass over every active task runs at
//! start and every [`FULL_SYNC_INTERVAL`], for changes that leave no timestamp (a deleted
//! config link, an entry deleted from the bucket by hand) or no new version (a config edited
//! without a version bump, which the poll skips).

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::NaiveDateTime;
use sqlx::MySqlPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::allocate::{self, AllocateError, Allocation, AllocationPlan};
use crate::debounce::{Debouncer, DEBOUNCE_WINDOW};
use crate::publish::{PublishError, PublishReport, Publisher, SpecKey};
use crate::redis_watch::ConfigChange;
use crate::snapshot::{self, InvalidTask, Notice, TaskKind};
use crate::store::{self, StoreError, TaskRow};

/// How far back each poll looks before the previous poll's watermark: covers transactions
/// that wrote `update_time` up to this long before they committed.
pub const WATERMARK_OVERLAP: Duration = Duration::from_secs(5);
/// Interval of the full pass over every active task and every key of the bucket.
pub const FULL_SYNC_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Allocate(#[from] AllocateError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Result of syncing one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The task runs: its snapshot is in the bucket.
    Published {
        epoch: u32,
        allocation: Option<Allocation>,
        report: PublishReport,
    },
    /// The task stopped or was deleted; this many entries were removed from the bucket.
    Retired { deleted: usize },
    /// The task row cannot be described (unknown type or chain); nothing is published for it.
    Invalid,
}

/// Totals of one poll, for the debug log and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub full: bool,
    pub synced: usize,
    pub failed: usize,
    pub retired: usize,
    pub expired_batches: usize,
}

/// Allocation and retention settings of the control plane.
#[derive(Debug, Clone, Copy)]
pub struct ControlOptions {
    pub plan: AllocationPlan,
    pub epoch_grace_period: Duration,
}

/// State of the control plane between polls.
pub struct ControlPlane {
    pool: MySqlPool,
    publisher: Publisher,
    options: ControlOptions,
    watermark: Option<NaiveDateTime>,
    last_full_sync: Option<Instant>,
    /// Tasks to sync again on the next poll because their last sync failed.
    retry: BTreeSet<u64>,
    /// Tasks whose last sync failed; a failure is logged once until the task syncs again.
    failing: HashSet<u64>,
    /// Notices already logged, so that each is logged once.
    logged: HashSet<String>,
}

impl ControlPlane {
    pub fn new(pool: MySqlPool, publisher: Publisher, options: ControlOptions) -> Self {
        ControlPlane {
            pool,
            publisher,
            options,
            watermark: None,
            last_full_sync: None,
            retry: BTreeSet::new(),
            failing: HashSet::new(),
            logged: HashSet::new(),
        }
    }

    /// Reads the bucket's current entries, so that unchanged ones are not rewritten and tasks
    /// that stopped while no allocator ran are found.
    pub async fn load_published(&mut self) -> Result<usize, ControlError> {
        Ok(self.publisher.load_all().await?)
    }

    /// Runs one poll: finds changed tasks, syncs them, retires stopped tasks and deletes
    /// expired epochs. An error means the database or the bucket could not be read at all.
    /// Failures of single tasks are logged and retried by the next poll.
    pub async fn poll(&mut self) -> Result<PollReport, ControlError> {
        let now = store::database_now(&self.pool).await?;
        let active: BTreeSet<u64> = store::active_task_ids(&self.pool)
            .await?
            .into_iter()
            .collect();
        let full = self
            .last_full_sync
            .is_none_or(|at| at.elapsed() >= FULL_SYNC_INTERVAL);
        let mut report = PollReport {
            full,
            ..PollReport::default()
        };

        let stopped: Vec<u64> = self
            .publisher
            .published_task_ids()
            .difference(&active)
            .copied()
            .collect();
        for task_id in stopped {
            self.sync_logged(task_id, &mut report).await;
        }

        let due = if full {
            self.retry.clear();
            active.clone()
        } else {
            self.due_tasks(&active).await?
        };
        for task_id in due {
            self.sync_logged(task_id, &mut report).await;
        }

        report.expired_batches = self.delete_expired_epochs().await?;
        if full {
            report.retired += self.reconcile_bucket(&active).await?;
            self.last_full_sync = Some(Instant::now());
        }
        self.watermark = Some(now);
        Ok(report)
    }

    /// Active tasks that changed since the watermark, have never been published, or failed.
    async fn due_tasks(&mut self, active: &BTreeSet<u64>) -> Result<BTreeSet<u64>, ControlError> {
        let mut due: BTreeSet<u64> = match self.watermark {
            Some(watermark) => {
                let overlap = chrono::TimeDelta::from_std(WATERMARK_OVERLAP).unwrap_or_default();
                let since = watermark - overlap;
                let mut due: BTreeSet<u64> = store::changed_task_ids(&self.pool, since)
                    .await?
                    .into_iter()
                    .collect();
                for change in store::changed_configs(&self.pool, since).await? {
                    if !self.is_applied(&change) {
                        due.insert(change.task_id);
                    }
                }
                due
            }
            None => active.clone(),
        };
        due.extend(active.difference(&self.publisher.published_task_ids()));
        due.append(&mut self.retry);
        due.retain(|id| active.contains(id));
        Ok(due)
    }

    /// Returns whether the task's published spec was built from this version of the config.
    fn is_applied(&self, change: &store::ChangedConfig) -> bool {
        change.enabled
            && self.publisher.applied_config(change.task_id)
                == Some((change.config_id, change.version))
    }

    async fn sync_logged(&mut self, task_id: u64, report: &mut PollReport) {
        match self.sync_task(task_id).await {
            Ok(outcome) => {
                report.synced += 1;
                if matches!(outcome, TaskOutcome::Retired { deleted } if deleted > 0) {
                    report.retired += 1;
                }
                if self.failing.remove(&task_id) {
                    tracing::info!(task_id, "task synced again");
                }
            }
            Err(error) => {
                if self.failing.insert(task_id) {
                    tracing::warn!(task_id, error = %error, "failed to sync task, retrying on every poll");
                } else {
                    tracing::debug!(task_id, error = %error, "failed to sync task again");
                }
                self.retry.insert(task_id);
                report.failed += 1;
            }
        }
    }

    /// Reloads every active task of a config, after a change notice.
    pub async fn reload_config(&mut self, config_id: u64) -> Result<usize, ControlError> {
        let task_ids = store::active_tasks_of_config(&self.pool, config_id).await?;
        tracing::info!(config_id, tasks = task_ids.len(), "reloading config");
        let mut report = PollReport::default();
        for task_id in &task_ids {
            self.sync_logged(*task_id, &mut report).await;
        }
        Ok(task_ids.len())
    }

    /// Brings one task's entries in the bucket up to date, allocating a new epoch first when
    /// its active targets differ from the current epoch's items.
    #[tracing::instrument(skip_all, fields(task_id = task_id))]
    pub async fn sync_task(&mut self, task_id: u64) -> Result<TaskOutcome, ControlError> {
        let task = match store::task(&self.pool, task_id).await? {
            Some(task) if task.is_active() => task,
            _ => return self.retire(task_id).await,
        };
        let kind = match TaskKind::of(&task) {
            Ok(kind) => kind,
            Err(invalid) => return self.skip_invalid(invalid).await,
        };

        let (task, allocation) = if kind.task_type.has_targets()
            && allocate::needs_allocation(&self.pool, task_id, task.current_epoch).await?
        {
            let allocation =
                allocate::allocate_task(&self.pool, task_id, self.options.plan).await?;
            let task = TaskRow {
                current_epoch: allocation.epoch(),
                ..task
            };
            (task, Some(allocation))
        } else {
            (task, None)
        };
        self.publish_task(task, kind, allocation).await
    }

    /// Allocates a task whatever its status (the `allocate` command) and publishes it when it
    /// is active. Block tasks are only published.
    pub async fn allocate_and_publish(
        &mut self,
        task_id: u64,
    ) -> Result<TaskOutcome, ControlError> {
        let task = store::task(&self.pool, task_id)
            .await?
            .ok_or(AllocateError::TaskNotFound(task_id))?;
        let kind = match TaskKind::of(&task) {
            Ok(kind) => kind,
            Err(invalid) => return self.skip_invalid(invalid).await,
        };

        let mut allocation = None;
        let mut task = task;
        if kind.task_type.has_targets() {
            let written = allocate::allocate_task(&self.pool, task_id, self.options.plan).await?;
            task.current_epoch = written.epoch();
            allocation = Some(written);
        }
        if !task.is_active() {
            let deleted = self.publisher.retire_task(task_id).await?;
            return Ok(TaskOutcome::Retired { deleted });
        }
        self.publish_task(task, kind, allocation).await
    }

    async fn publish_task(
        &mut self,
        task: TaskRow,
        kind: TaskKind,
        allocation: Option<Allocation>,
    ) -> Result<TaskOutcome, ControlError> {
        let task_id = task.id;
        let state = snapshot::load(&self.pool, task, kind).await?;
        let previous = self.publisher.previous_task(task_id).await?;
        let (snapshot, notices) =
            snapshot::build(&state, previous.as_ref(), monitor_core::time::now_ms());
        for notice in notices {
            self.log_notice(notice);
        }

        let report = self.publisher.publish(&snapshot).await?;
        crate::metrics::task_published(&snapshot.task, allocation.as_ref());
        if report.superseded {
            // Another allocator read the database later and wrote first. The next poll reads
            // the task again, which normally finds its spec unchanged.
            tracing::info!(
                task_id,
                epoch = snapshot.task.epoch,
                "a newer spec of the task was written by another allocator, it stays"
            );
            self.retry.insert(task_id);
            return Ok(TaskOutcome::Published {
                epoch: snapshot.task.epoch,
                allocation,
                report,
            });
        }
        if report.task_written {
            tracing::info!(
                task_id,
                epoch = snapshot.task.epoch,
                batches = snapshot.batches.len(),
                batches_written = report.batches_written,
                "task spec published"
            );
        }
        if let Err(error) = self
            .publisher
            .report_config_status(&snapshot.task, previous.as_ref())
            .await
        {
            tracing::warn!(task_id, error = %error, "failed to publish the task's config status, retrying on the next poll");
            self.retry.insert(task_id);
        }
        Ok(TaskOutcome::Published {
            epoch: snapshot.task.epoch,
            allocation,
            report,
        })
    }

    async fn retire(&mut self, task_id: u64) -> Result<TaskOutcome, ControlError> {
        let deleted = self.publisher.retire_task(task_id).await?;
        crate::metrics::task_retired(task_id);
        if deleted > 0 {
            tracing::info!(task_id, deleted, "task stopped, its specs were deleted");
        }
        Ok(TaskOutcome::Retired { deleted })
    }

    async fn skip_invalid(&mut self, invalid: InvalidTask) -> Result<TaskOutcome, ControlError> {
        let task_id = invalid.task_id;
        if self.logged.insert(format!(
            "task:{task_id}:{}:{}",
            invalid.column, invalid.value
        )) {
            tracing::error!(task_id, error = %invalid, "task cannot be run, fix its row");
        }
        self.publisher.retire_task(task_id).await?;
        crate::metrics::task_retired(task_id);
        Ok(TaskOutcome::Invalid)
    }

    /// Deletes the rows of epochs replaced more than the grace period ago, then their specs.
    async fn delete_expired_epochs(&mut self) -> Result<usize, ControlError> {
        let grace = self.options.epoch_grace_period.as_secs();
        let expired = store::expired_batch_ids(&self.pool, grace).await?;
        if expired.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await.map_err(|source| StoreError {
            action: "begin deleting expired epochs".into(),
            source,
        })?;
        store::delete_batches(&mut tx, &expired).await?;
        tx.commit().await.map_err(|source| StoreError {
            action: format!("commit the deletion of {} expired batches", expired.len()),
            source,
        })?;
        self.publisher.delete_batches(&expired).await?;
        tracing::info!(
            batches = expired.len(),
            "rows and specs of replaced epochs deleted"
        );
        Ok(expired.len())
    }

    /// Deletes entries of the bucket that describe no running task: task specs of inactive
    /// tasks and batch specs whose row is gone or whose task stopped.
    async fn reconcile_bucket(&mut self, active: &BTreeSet<u64>) -> Result<usize, ControlError> {
        let keys = self.publisher.refresh_keys().await?;
        let batch_ids: Vec<u64> = keys
            .iter()
            .filter_map(|k| match k {
                SpecKey::Batch(id) => Some(*id),
                SpecKey::Task(_) => None,
            })
            .collect();
        let live: BTreeSet<u64> = store::live_batch_ids(&self.pool, &batch_ids)
            .await?
            .into_iter()
            .collect();

        let mut deleted = 0;
        for key in keys {
            let stale = match key {
                SpecKey::Task(id) => !active.contains(&id),
                SpecKey::Batch(id) => !live.contains(&id),
            };
            if stale {
                self.publisher.delete_key(key).await?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "stale entries removed from the tasks bucket");
        }
        Ok(deleted)
    }

    fn log_notice(&mut self, notice: Notice) {
        match &notice {
            Notice::InvalidTarget {
                task_id,
                target_id,
                chain,
                address,
            } => {
                if self
                    .logged
                    .insert(format!("invalid-target:{target_id}:{address}"))
                {
                    tracing::warn!(task_id, target_id, chain = %chain, address = ?short(address), "target address is not valid on the task's chain, it is not watched");
                }
            }
            Notice::DuplicateTarget {
                task_id,
                target_id,
                first_target_id,
                address,
            } => {
                if self
                    .logged
                    .insert(format!("duplicate-target:{target_id}:{address}"))
                {
                    tracing::warn!(task_id, target_id, first_target_id, address = ?short(address), "target repeats the address of another target of the task, only the first is watched");
                }
            }
            Notice::ExtraConfigs {
                task_id,
                used,
                ignored,
            } => {
                if self
                    .logged
                    .insert(format!("extra:{task_id}:{used}:{ignored:?}"))
                {
                    tracing::warn!(task_id, config_id = used, ignored = ?ignored, "task links more than one config, only the first is used");
                }
            }
            Notice::NoConfig { task_id } => {
                if self.logged.insert(format!("no-config:{task_id}")) {
                    tracing::warn!(task_id, "task has no enabled config, it runs no rules");
                }
            }
            Notice::UnknownKeys {
                config_id,
                version,
                keys,
            } => {
                if self
                    .logged
                    .insert(format!("unknown-keys:{config_id}:{version}"))
                {
                    tracing::warn!(config_id, version, keys = ?keys, "config has keys that no rule reads, they are ignored");
                }
            }
            Notice::InvalidConfig {
                task_id,
                error,
                kept_previous,
            } => {
                if self.logged.insert(format!(
                    "invalid:{task_id}:{}:{}",
                    error.config_id, error.version
                )) {
                    if *kept_previous {
                        tracing::warn!(task_id, config_id = error.config_id, version = error.version, error = %error, "config is invalid, the task keeps its last valid rules");
                    } else {
                        tracing::error!(task_id, config_id = error.config_id, version = error.version, error = %error, "config is invalid and the task has no valid rules, it runs none");
                    }
                }
            }
            Notice::UnknownBatchStatus { batch_id, status } => {
                if self
                    .logged
                    .insert(format!("batch-status:{batch_id}:{status}"))
                {
                    tracing::warn!(
                        batch_id,
                        status,
                        "unknown batch status, published as pending"
                    );
                }
            }
        }
    }
}

/// Runs polls and config reloads until `shutdown`.
pub async fn run_loop(
    mut plane: ControlPlane,
    mut changes: mpsc::Receiver<ConfigChange>,
    poll_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut debouncer = Debouncer::new(DEBOUNCE_WINDOW);
    let mut database_up = true;
    let mut changes_open = true;
    loop {
        let next_due = debouncer.next_due();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => poll_logged(&mut plane, &mut database_up).await,
            change = changes.recv(), if changes_open => match change {
                Some(change) => on_change(&mut plane, &mut debouncer, change).await,
                None => changes_open = false,
            },
            _ = sleep_until(next_due), if next_due.is_some() => {
                for config_id in debouncer.take_due(Instant::now()) {
                    reload_logged(&mut plane, config_id).await;
                }
            }
        }
    }
    tracing::info!("control loop stopped");
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn poll_logged(plane: &mut ControlPlane, database_up: &mut bool) {
    let polled = plane.poll().await;
    crate::metrics::poll_finished(polled.is_ok());
    match polled {
        Ok(report) => {
            if !*database_up {
                tracing::info!("database reachable again, polling resumed");
                *database_up = true;
            }
            tracing::debug!(
                full = report.full,
                synced = report.synced,
                failed = report.failed,
                retired = report.retired,
                expired_batches = report.expired_batches,
                "poll finished"
            );
        }
        Err(error) if *database_up => {
            tracing::warn!(error = %error, "poll failed, retrying every poll interval");
            *database_up = false;
        }
        Err(error) => tracing::debug!(error = %error, "poll failed again"),
    }
}

async fn on_change(plane: &mut ControlPlane, debouncer: &mut Debouncer, change: ConfigChange) {
    if debouncer.on_change(change.config_id, Instant::now()) {
        reload_logged(plane, change.config_id).await;
    } else {
        tracing::debug!(
            config_id = change.config_id,
            version = change.version,
            "config change merged into the next reload"
        );
    }
}

async fn reload_logged(plane: &mut ControlPlane, config_id: u64) {
    // A failed reload is not retried here: the next poll finds the change by its update_time.
    if let Err(error) = plane.reload_config(config_id).await {
        tracing::warn!(config_id, error = %error, "failed to reload config, the next poll retries");
    }
}

/// A target address as logged: at most 80 characters (the column holds 128).
fn short(address: &str) -> String {
    address.chars().take(80).collect()
}
