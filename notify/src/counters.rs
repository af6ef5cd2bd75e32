//! Alert counters of batches and tasks, reported to the Java side with status messages.
//!
//! Java is the single writer of `monitor_batch_v2`, so notify does not write `total_alerts`
//! and `last_alert_time` itself: it counts the rows of `monitor_alert_log_v2` per batch and
//! per task (`COUNT(*)` and `MAX(event_time)`) and sends the figures with the next status
//! message or heartbeat of that batch or task.
//!
//! One grouped query per task reads the counts of the task and all its batches, and the result
//! is cached. The alert forwarder marks a task's entry stale whenever it stores an alert of the
//! task (also while a read is under way), and a stale entry is read again on its next use, at
//! most once per
//! [`MIN_REFRESH`] so that a burst of heartbeats during a burst of alerts costs one query per
//! task and second. Entries are also read again after [`MAX_AGE`], which covers rows written
//! by another notify instance. While MySQL fails, the last figures read are reused (or none are
//! sent) and a new query is tried at most once per [`RETRY_AFTER_FAILURE`], each bounded by
//! [`QUERY_TIMEOUT`], so that heartbeats are not held up by the outage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use monitor_core::messages::StatusScope;
use tokio::time::Instant;
use tracing::debug;

use crate::alert_log::{AlertCounts, AlertLog, TaskAlertCounts};
use crate::db_health::DbHealth;

/// Minimum time between two reads of the same task.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Age after which an entry is read again even if this stage stored no alert of the task.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Pause after a failed query before the next one.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Time limit of one count query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The shared cache of alert counts; cheap to clone.
#[derive(Clone)]
pub struct AlertCounters {
    log: AlertLog,
    health: DbHealth,
    state: Arc<Mutex<CacheState>>,
}

#[derive(Default)]
struct CacheState {
    tasks: HashMap<u64, CachedTask>,
    /// Number of alerts stored per task since the stage started; a read taken while the
    /// number changed is stale at once.
    stored: HashMap<u64, u64>,
    /// No query is sent before this instant after a failure.
    retry_at: Option<Instant>,
}

struct CachedTask {
    counts: TaskAlertCounts,
    read_at: Instant,
    /// Value of `CacheState::stored` for the task when the read started.
    stored: u64,
}

impl CachedTask {
    fn is_current(&self, now: Instant, stored: u64) -> bool {
        let age = now.saturating_duration_since(self.read_at);
        let stale = stored != self.stored;
        age < MIN_REFRESH || (!stale && age < MAX_AGE)
    }
}

impl AlertCounters {
    pub fn new(log: AlertLog, health: DbHealth) -> Self {
        AlertCounters {
            log,
            health,
            state: Arc::default(),
        }
    }

    /// Marks the counts of a task stale, after an alert of the task was stored.
    pub fn invalidate(&self, task_id: u64) {
        *self.lock().stored.entry(task_id).or_default() += 1;
    }

    /// Returns the counts of a batch or a task, reading them when the cache has no current
    /// entry. Returns the last figures read when MySQL fails, and `None` when there are none.
    pub async fn of_scope(&self, scope: StatusScope) -> Option<AlertCounts> {
        let task_id = match scope {
            StatusScope::Batch { task_id, .. } | StatusScope::Task { task_id } => task_id,
        };
        let counts = self.of_task(task_id).await?;
        Some(match scope {
            StatusScope::Batch { batch_id, .. } => {
                counts.batches.get(&batch_id).copied().unwrap_or_default()
            }
            StatusScope::Task { .. } => counts.task,
        })
    }

    async fn of_task(&self, task_id: u64) -> Option<TaskAlertCounts> {
        let now = Instant::now();
        let stored = {
            let state = self.lock();
            let stored = state.stored.get(&task_id).copied().unwrap_or_default();
            let waiting = state.retry_at.is_some_and(|at| now < at);
            match state.tasks.get(&task_id) {
                Some(task) if waiting || task.is_current(now, stored) => {
                    return Some(task.counts.clone())
                }
                None if waiting => return None,
                _ => stored,
            }
        };

        let read = tokio::time::timeout(QUERY_TIMEOUT, self.log.counts_of_task(task_id)).await;
        let mut state = self.lock();
        match read {
            Ok(Ok(counts)) => {
                self.health.available();
                state.retry_at = None;
                state.tasks.insert(
                    task_id,
                    CachedTask {
                        counts: counts.clone(),
                        read_at: now,
                        stored,
                    },
                );
                Some(counts)
            }
            Ok(Err(error)) => {
                self.health.failed(&error);
                state.retry_at = Some(Instant::now() + RETRY_AFTER_FAILURE);
                state.tasks.get(&task_id).map(|task| task.counts.clone())
            }
            Err(_) => {
                debug!(task_id, timeout = ?QUERY_TIMEOUT, "counting alerts timed out");
                self.health.failed(&CountTimeout { task_id });
                state.retry_at = Some(Instant::now() + RETRY_AFTER_FAILURE);
                state.tasks.get(&task_id).map(|task| task.counts.clone())
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // The state stays consistent under a panic: every update is a single insert or flag.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("counting the alerts of task {task_id} timed out after {QUERY_TIMEOUT:?}")]
struct CountTimeout {
    task_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(read_at: Instant) -> CachedTask {
        CachedTask {
            counts: TaskAlertCounts::default(),
            read_at,
            stored: 3,
        }
    }

    #[test]
    fn entry_is_read_again_after_an_alert_was_stored() {
        let read_at = Instant::now();
        let task = cached(read_at);
        assert!(task.is_current(read_at + MIN_REFRESH / 2, 4));
        assert!(!task.is_current(read_at + MIN_REFRESH, 4));
    }

    #[test]
    fn entry_is_kept_until_max_age_without_new_alerts() {
        let read_at = Instant::now();
        let task = cached(read_at);
        assert!(task.is_current(read_at + MAX_AGE / 2, 3));
        assert!(!task.is_current(read_at + MAX_AGE, 3));
    }
}
