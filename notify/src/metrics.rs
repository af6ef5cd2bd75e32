//! Metrics of the notify stage, named `monitor_notify_*`, and its `/metrics` and `/healthz`
//! endpoint (see [`monitor_core::metrics`]).
//!
//! Consumes what the alert forwarder reports ([`alert_received`], [`alerts_pushed`],
//! [`time_alerts`]), the Java WebSocket's connection state, the outbox (rows of
//! `monitor_alert_log_v2` still `pending`, counted every [`OUTBOX_INTERVAL`]) and the lag of the
//! two durable consumers. `/healthz` is 200 while both NATS and MySQL are reachable.

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use monitor_core::messages::Alert;
use monitor_core::metrics::{self, Counter, Family, Gauge, Health, Histogram, Labels, ServeError};
use monitor_core::Subjects;
use sqlx::MySqlPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::java_ws::Connection;
use crate::settings::NotifySettings;

/// Interval between two counts of the pending rows.
pub const OUTBOX_INTERVAL: Duration = Duration::from_secs(5);

/// The counters, gauges and histograms of the stage, registered once per process.
struct NotifyMetrics {
    alerts_received: Family<Labels, Counter>,
    alerts_pushed: Counter,
    alert_latency: Histogram,
    websocket_connected: Gauge,
    websocket_sessions: Counter,
    outbox_pending: Gauge,
    lock_conflicts_retried: Counter,
}

static METRICS: LazyLock<NotifyMetrics> = LazyLock::new(|| {
    let m = NotifyMetrics {
        alerts_received: Family::default(),
        alerts_pushed: Counter::default(),
        alert_latency: metrics::latency_histogram(),
        websocket_connected: Gauge::default(),
        websocket_sessions: Counter::default(),
        outbox_pending: Gauge::default(),
        lock_conflicts_retried: Counter::default(),
    };
    metrics::register(
        "notify_alerts_received",
        "Alerts delivered by the alerts stream, by alert_type (a redelivery counts again)",
        m.alerts_received.clone(),
    );
    metrics::register(
        "notify_alerts_pushed",
        "Alert rows pushed to the Java WebSocket and marked pushed",
        m.alerts_pushed.clone(),
    );
    metrics::register_seconds(
        "notify_alert_ack_latency",
        "Time from receiving an alert to acknowledging it on the stream (insert, push, mark)",
        m.alert_latency.clone(),
    );
    metrics::register(
        "notify_websocket_connected",
        "1 while the Java WebSocket session is open, else 0",
        m.websocket_connected.clone(),
    );
    metrics::register(
        "notify_websocket_sessions",
        "Java WebSocket sessions established",
        m.websocket_sessions.clone(),
    );
    metrics::register(
        "notify_outbox_pending",
        "Rows of monitor_alert_log_v2 not yet pushed (notify_status = 'pending')",
        m.outbox_pending.clone(),
    );
    metrics::register(
        "notify_lock_conflicts_retried",
        "Alert log statements run again after MySQL rolled them back for a deadlock or lock wait timeout",
        m.lock_conflicts_retried.clone(),
    );
    m
});

/// Records an alert delivered by the stream.
pub fn alert_received(alert: &Alert) {
    let labels = vec![("alert_type", alert.alert_type.as_str().to_owned())];
    METRICS.alerts_received.get_or_create(&labels).inc();
}

/// Records alert rows pushed and marked pushed.
pub fn alerts_pushed(count: usize) {
    METRICS.alerts_pushed.inc_by(count as u64);
}

/// Records a statement run again after a lock conflict.
pub fn lock_conflict_retried() {
    METRICS.lock_conflicts_retried.inc();
}

/// Runs the handling of a batch of `count` alerts and records, for each, how long the batch
/// took.
pub async fn time_alerts(count: usize, handling: impl Future<Output = ()>) {
    let started = Instant::now();
    handling.await;
    let seconds = started.elapsed().as_secs_f64();
    for _ in 0..count {
        METRICS.alert_latency.observe(seconds);
    }
}

/// Registers the stage's metrics and starts the endpoint on `METRICS_ADDR`, if set.
pub async fn serve(
    settings: &NotifySettings,
    shutdown: CancellationToken,
) -> Result<Health, ServeError> {
    LazyLock::force(&METRICS);
    metrics::register_consumer_lag();
    let dependencies = [metrics::NATS, metrics::MYSQL];
    metrics::serve(settings.runtime.metrics_addr, &dependencies, shutdown).await
}

/// Follows the WebSocket state, the outbox and the lag of the two consumers until `shutdown`.
pub async fn watch(
    connection: watch::Receiver<Connection>,
    pool: MySqlPool,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let alerts_lag = metrics::watch_consumer_lag(
        js.clone(),
        subjects.alerts_stream(),
        Subjects::NOTIFY_ALERTS_CONSUMER.to_owned(),
        shutdown.clone(),
    );
    let status_lag = metrics::watch_consumer_lag(
        js,
        subjects.status_stream(),
        Subjects::NOTIFY_STATUS_CONSUMER.to_owned(),
        shutdown.clone(),
    );
    tokio::join!(
        alerts_lag,
        status_lag,
        watch_connection(connection, shutdown.clone()),
        watch_outbox(pool, shutdown),
    );
    Ok(())
}

async fn watch_connection(
    mut connection: watch::Receiver<Connection>,
    shutdown: CancellationToken,
) {
    let mut session = 0;
    loop {
        let state = *connection.borrow_and_update();
        METRICS.websocket_connected.set(i64::from(state.connected));
        if state.session > session {
            METRICS.websocket_sessions.inc_by(state.session - session);
            session = state.session;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = connection.changed() => if changed.is_err() { return },
        }
    }
}

async fn watch_outbox(pool: MySqlPool, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(OUTBOX_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let counted = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM monitor_alert_log_v2 WHERE notify_status = 'pending'",
        )
        .fetch_one(&pool);
        match tokio::time::timeout(metrics::CHECK_TIMEOUT, counted).await {
            Ok(Ok(pending)) => {
                METRICS.outbox_pending.set(pending);
            }
            // The alert forwarder logs MySQL outages; the gauge keeps its last value meanwhile.
            Ok(Err(error)) => tracing::debug!(error = %error, "failed to count pending alert rows"),
            Err(_) => tracing::debug!("counting pending alert rows timed out"),
        }
    }
}
