//! The notify stage: the sink of the pipeline.
//!
//! Consumes alerts (`notify_alerts` on the alerts stream) and heartbeats and status changes
//! (`notify_status` on the status stream). Each alert is written once into
//! `monitor_alert_log_v2`, pushed to the Java backend's monitor WebSocket and marked pushed.
//! The table is the outbox, so alerts that could not be pushed are sent after the socket
//! returns or the stage restarts. Heartbeats and status changes go to the same socket.
//!
//! Modules: [`alerts`] and [`alert_log`] for alerts, [`status`] and [`status_store`] for
//! heartbeats and status, [`counters`] for the alert counts sent with them, [`java_ws`] for
//! the socket, [`java_messages`] for the JSON the Java side reads, [`db_health`] for MySQL
//! outages.

pub mod alert_log;
pub mod alerts;
pub mod counters;
pub mod db_health;
pub mod java_messages;
pub mod java_ws;
pub mod jetstream;
pub mod metrics;
pub mod settings;
pub mod status;
pub mod status_store;

use anyhow::Context;
use monitor_core::shutdown::{start_up, Tasks};
use monitor_core::{topology, Subjects};
use tokio_util::sync::CancellationToken;

pub use settings::{NotifySettings, WsSettings, WsTiming};

/// Runs the notify stage until `shutdown` is cancelled or one of its parts fails.
pub async fn run(settings: NotifySettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    monitor_core::telemetry::log_settings("notify", &settings);
    let endpoint = metrics::serve(&settings, shutdown.clone()).await?;

    let health = db_health::DbHealth::default();
    let Some(pool) = db_health::connect(&settings.db, &health, &shutdown).await else {
        return Ok(());
    };
    let client = settings
        .nats
        .connect("notify")
        .await
        .with_context(|| format!("failed to connect to NATS at {}", settings.nats.redacted_url()))?;
    endpoint.attach_nats(&client);
    endpoint.attach_mysql(&pool);
    let js = async_nats::jetstream::new(client);
    let ensure = topology::ensure(&js, &settings.nats);
    let Some(topology) = start_up(&shutdown, "notify", ensure).await else {
        return Ok(());
    };
    let subjects = topology?.subjects;

    let alert_consumer = jetstream::DurableConsumer::open(
        &js,
        &subjects.alerts_stream(),
        Subjects::NOTIFY_ALERTS_CONSUMER,
        &subjects.all_alerts(),
    )
    .await?;
    let status_consumer = jetstream::DurableConsumer::open(
        &js,
        &subjects.status_stream(),
        Subjects::NOTIFY_STATUS_CONSUMER,
        &subjects.all_status(),
    )
    .await?;

    let status_store = status_store::StatusStore::open(&js, &subjects).await?;

    let (ws, socket) = java_ws::JavaWs::new(settings.ws.clone());
    let watch_metrics = metrics::watch(
        ws.watch(),
        pool.clone(),
        js.clone(),
        subjects.clone(),
        shutdown.clone(),
    );
    let locale = settings.runtime.locale;
    let log = alert_log::AlertLog::new(pool);
    let counters = counters::AlertCounters::new(log.clone(), health.clone());
    let alerts = alerts::AlertForwarder::new(
        log,
        ws.clone(),
        js.clone(),
        subjects.clone(),
        locale,
        health,
        counters.clone(),
    );
    let status = status::StatusForwarder::new(ws, js, subjects, locale, status_store, counters);

    let mut tasks = Tasks::new(shutdown.clone());
    tasks.spawn("metrics", watch_metrics);
    let token = shutdown.clone();
    tasks.spawn("java_ws", async move {
        socket.run(token).await;
        Ok(())
    });
    let token = shutdown.clone();
    tasks.spawn("alerts", async move {
        Ok(alerts.run(alert_consumer, token).await?)
    });
    let token = shutdown.clone();
    tasks.spawn("status", async move {
        Ok(status.run(status_consumer, token).await?)
    });
    tasks.join().await
}
