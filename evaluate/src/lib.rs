//! The evaluate stage: judges event frames against their task's rules and publishes alerts.
//!
//! Consumes event frames from the events stream (one durable pull consumer shared by every
//! evaluate instance) and task and batch specs from the tasks bucket. Produces alerts on the
//! alerts stream, each under its deterministic id, and copies frames that cannot be judged to
//! the dead stream. The stage keeps no state between frames besides its copy of the tasks
//! bucket, so instances can be added, restarted or removed at any time.
//!
//! - [`engine`]: the pure rule engine.
//! - [`cache`] and [`watch`]: the local copy of the tasks bucket and the KV watch feeding it.
//! - [`consumer`]: the pull loop with its ack, retry and dead-letter decisions.
//! - [`replay`]: `evaluate replay`, which judges a task's stored frames again (a backtest).

pub mod block_rules;
pub mod cache;
pub mod consumer;
pub mod engine;
pub mod frame_check;
pub mod metrics;
pub mod replay;
pub mod settings;
pub mod watch;

use async_nats::jetstream;
use monitor_core::shutdown::{start_up, Tasks};
use monitor_core::topology;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use engine::{evaluate, evaluate_with_targets};
pub use settings::Settings;

/// Runs the stage until `shutdown` is cancelled: ensures the streams and buckets, follows the
/// tasks bucket and judges frames.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    monitor_core::telemetry::log_settings("evaluate", &settings);
    let health = metrics::serve(&settings, shutdown.clone()).await?;
    let client = settings.nats.connect("evaluate").await?;
    health.attach_nats(&client);
    let js = jetstream::new(client.clone());
    let ensure = topology::ensure(&js, &settings.nats);
    let Some(topology) = start_up(&shutdown, "evaluate", ensure).await else {
        return Ok(());
    };
    let topology = topology?;
    info!(events_stream = %topology.subjects.events_stream(), tasks_bucket = %topology.subjects.tasks_bucket(), "topology ready");

    let cache = cache::SharedCache::default();
    let (ready_sender, ready) = tokio::sync::watch::channel(false);
    let mut tasks = Tasks::new(shutdown.clone());
    let subjects = topology.subjects.clone();
    let metrics_watch = metrics::watch(client.clone(), subjects, cache.clone(), shutdown.clone());
    tasks.spawn("metrics", metrics_watch);

    let bucket = topology.subjects.tasks_bucket();
    let tasks_watch = watch::watch_tasks(
        js,
        topology.tasks,
        bucket,
        cache.clone(),
        ready_sender,
        shutdown.clone(),
    );
    tasks.spawn("tasks-watch", async move {
        tasks_watch.await;
        Ok(())
    });

    let consumer = consumer::FrameConsumer::new(client, &settings, cache);
    let consumer_shutdown = shutdown.clone();
    tasks.spawn("event-consumer", async move {
        consumer.run(ready, consumer_shutdown).await;
        Ok(())
    });

    tasks.join().await?;
    info!("evaluate stopped");
    Ok(())
}
