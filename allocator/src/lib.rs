//! The allocator: the control plane of the monitor pipeline.
//!
//! It is the only stage that reads the task tables. It assigns each token task's targets to
//! batches of at most `BATCH_SIZE` (new epochs, written in one transaction), and publishes a
//! validated snapshot of every active task into the tasks bucket: `task.<task_id>`
//! ([`monitor_core::messages::TaskSpec`]) and `batch.<batch_id>`
//! ([`monitor_core::messages::BatchSpec`]). Changes are found by polling the database and, faster,
//! through config change notices on Redis.
//!
//! Modules: [`order`] (the md5 order and the strategies, pure), [`store`] (MySQL),
//! [`allocate`] (the epoch transaction), [`snapshot`] (building the specs), [`publish`] (the
//! bucket), [`control`] (the run loop), [`redis_watch`], [`debounce`], [`status`], [`cli`].

pub mod allocate;
pub mod cli;
pub mod control;
pub mod debounce;
pub mod metrics;
pub mod order;
pub mod publish;
pub mod redis_watch;
pub mod settings;
pub mod snapshot;
pub mod status;
pub mod store;

use anyhow::Context;
use monitor_core::shutdown::{start_up, Tasks};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::allocate::AllocationPlan;
use crate::control::{ControlOptions, ControlPlane};
use crate::publish::Publisher;
pub use crate::settings::AllocatorSettings;

/// Capacity of the queue of config change notices between Redis and the control loop.
const CHANGE_QUEUE: usize = 256;

impl From<&AllocatorSettings> for ControlOptions {
    fn from(settings: &AllocatorSettings) -> Self {
        ControlOptions {
            plan: AllocationPlan {
                strategy: settings.allocation_strategy,
                batch_size: settings.batch_size,
                max_targets: settings.max_targets_per_task,
            },
            epoch_grace_period: settings.epoch_grace_period,
        }
    }
}

/// Connects to NATS, creates the streams and buckets if needed, and returns a publisher on
/// the tasks bucket.
pub async fn connect_publisher(settings: &AllocatorSettings) -> anyhow::Result<Publisher> {
    let client = settings.nats.connect("allocator").await.with_context(|| {
        format!(
            "failed to connect to NATS at {}",
            settings.nats.redacted_url()
        )
    })?;
    let jetstream = async_nats::jetstream::new(client);
    let topology = monitor_core::topology::ensure(&jetstream, &settings.nats).await?;
    Ok(Publisher::new(
        topology.tasks,
        jetstream,
        topology.subjects,
        settings.runtime.consumer_id(),
        settings.runtime.locale,
    ))
}

/// Runs the control plane until `shutdown` is cancelled.
pub async fn run(settings: AllocatorSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    monitor_core::telemetry::log_settings("allocator", &settings);
    let health = metrics::serve(&settings, shutdown.clone()).await?;
    let pool = monitor_core::db::connect(&settings.db).await?;
    health.attach_mysql(&pool);
    let Some(publisher) = start_up(&shutdown, "allocator", connect_publisher(&settings)).await
    else {
        return Ok(());
    };
    let publisher = publisher?;
    health.attach_nats(&publisher.nats_client());
    let mut plane = ControlPlane::new(pool, publisher, ControlOptions::from(&settings));
    let entries = plane.load_published().await?;
    tracing::info!(entries, "tasks bucket loaded");

    let (changes_tx, changes_rx) = mpsc::channel(CHANGE_QUEUE);
    let mut tasks = Tasks::new(shutdown.clone());
    let redis = settings.redis.clone();
    let channel = settings.config_channel.clone();
    let watch_shutdown = shutdown.clone();
    tasks.spawn("redis-watch", async move {
        redis_watch::watch(redis, channel, changes_tx, watch_shutdown).await;
        Ok(())
    });
    let interval = settings.config_poll_interval;
    tasks.spawn("control-loop", async move {
        control::run_loop(plane, changes_rx, interval, shutdown).await;
        Ok(())
    });
    tasks.join().await
}
