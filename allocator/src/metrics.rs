//! Metrics of the allocator, named `monitor_allocator_*`, and its `/metrics` and `/healthz`
//! endpoint (see [`monitor_core::metrics`]).
//!
//! Consumes what the control plane reports: each poll's result, each task spec it publishes
//! (with the config version and whether a new epoch was written) and each task it retires.
//! `/healthz` is 200 while both MySQL and NATS are reachable.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use monitor_core::messages::TaskSpec;
use monitor_core::metrics::{self, Counter, Family, Gauge, Health, Labels, ServeError};
use tokio_util::sync::CancellationToken;

use crate::allocate::Allocation;
use crate::settings::AllocatorSettings;

/// The counters and gauges of the allocator, registered once per process.
struct AllocatorMetrics {
    polls: Family<Labels, Counter>,
    epochs_written: Counter,
    tasks_published: Gauge,
    config_version: Family<Labels, Gauge>,
    /// Tasks whose spec this process published and has not retired since.
    published: Mutex<HashSet<u64>>,
}

static METRICS: LazyLock<AllocatorMetrics> = LazyLock::new(|| {
    let m = AllocatorMetrics {
        polls: Family::default(),
        epochs_written: Counter::default(),
        tasks_published: Gauge::default(),
        config_version: Family::default(),
        published: Mutex::default(),
    };
    metrics::register(
        "allocator_polls",
        "Polls of the task tables, by result (ok, or failed when MySQL or the tasks bucket could not be read)",
        m.polls.clone(),
    );
    metrics::register(
        "allocator_epochs_written",
        "New epochs of batches written for token tasks",
        m.epochs_written.clone(),
    );
    metrics::register(
        "allocator_tasks_published",
        "Active tasks whose spec this allocator published to the tasks bucket",
        m.tasks_published.clone(),
    );
    metrics::register(
        "allocator_task_config_version",
        "Version of the config in the published spec of each task, by task_id (absent when the task has no config)",
        m.config_version.clone(),
    );
    m
});

/// Records the result of one poll.
pub fn poll_finished(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    let labels = vec![("result", result.to_owned())];
    METRICS.polls.get_or_create(&labels).inc();
}

/// Records a published task spec and the allocation made for it.
pub fn task_published(task: &TaskSpec, allocation: Option<&Allocation>) {
    let m = &*METRICS;
    if matches!(allocation, Some(Allocation::Written { .. })) {
        m.epochs_written.inc();
    }
    let labels = vec![("task_id", task.task_id.to_string())];
    match &task.config {
        Some(config) => {
            let version = i64::try_from(config.version).unwrap_or(i64::MAX);
            m.config_version.get_or_create(&labels).set(version);
        }
        None => {
            m.config_version.remove(&labels);
        }
    }
    let mut published = m.published.lock().unwrap_or_else(PoisonError::into_inner);
    published.insert(task.task_id);
    m.tasks_published.set(published.len() as i64);
}

/// Records a task whose spec was removed from the tasks bucket.
pub fn task_retired(task_id: u64) {
    let m = &*METRICS;
    m.config_version
        .remove(&vec![("task_id", task_id.to_string())]);
    let mut published = m.published.lock().unwrap_or_else(PoisonError::into_inner);
    published.remove(&task_id);
    m.tasks_published.set(published.len() as i64);
}

/// Registers the allocator's metrics and starts the endpoint on `METRICS_ADDR`, if set.
pub async fn serve(
    settings: &AllocatorSettings,
    shutdown: CancellationToken,
) -> Result<Health, ServeError> {
    LazyLock::force(&METRICS);
    for result in ["ok", "failed"] {
        // Listed at 0 before the first poll ends.
        METRICS
            .polls
            .get_or_create(&vec![("result", result.to_owned())])
            .inc_by(0);
    }
    let dependencies = [metrics::MYSQL, metrics::NATS];
    metrics::serve(settings.runtime.metrics_addr, &dependencies, shutdown).await
}
