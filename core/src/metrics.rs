//! Metrics and health of a stage, served over HTTP on `METRICS_ADDR`.
//!
//! Consumes the metrics that each stage registers in the process-wide registry ([`register`],
//! [`register_seconds`], [`register_collector`]; every name gets the prefix `monitor_`) and
//! the checks that a stage attaches to its [`Health`]. Produces two endpoints ([`serve`]):
//! - `GET /metrics`: the registry in the OpenMetrics text format, which Prometheus scrapes.
//! - `GET /healthz`: `200 ok` when every dependency the stage declared is reachable, otherwise
//!   `503` with one line per failing dependency (`nats: disconnected`).
//!
//! Guarantees: a dependency that is declared but has no check attached yet counts as failing,
//! so `/healthz` is never 200 before the stage has connected to everything it needs. Checks
//! run when `/healthz` is requested, each within [`CHECK_TIMEOUT`].
//!
//! [`watch_consumer_lag`] keeps `monitor_consumer_pending` and `monitor_consumer_ack_pending`
//! current for a durable consumer, for the stages that read one.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::{Metric, Registry};
use tokio_util::sync::CancellationToken;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Unit;

/// Prefix of every metric name, followed by `_`.
pub const PREFIX: &str = "monitor";
/// Name of the NATS dependency in `/healthz`.
pub const NATS: &str = "nats";
/// Name of the MySQL dependency in `/healthz`.
pub const MYSQL: &str = "mysql";
/// Time limit of one dependency check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval between two reads of a consumer's pending counts.
pub const CONSUMER_LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Label set of a metric family: label names with their values.
pub type Labels = Vec<(&'static str, String)>;

/// Content type of the OpenMetrics text format.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix(PREFIX)));

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    // Registration is a plain insert, so a registry whose lock was poisoned is still whole.
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut registry)
}

/// Registers a metric as `monitor_<name>` (counters get `_total` appended when encoded).
/// Register each metric once per process: stages keep theirs in a `LazyLock`.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    with_registry(|registry| registry.register(name, help, metric));
}

/// Registers a metric measured in seconds as `monitor_<name>_seconds`.
pub fn register_seconds(name: &str, help: &str, metric: impl Metric) {
    with_registry(|registry| registry.register_with_unit(name, help, Unit::Seconds, metric));
}

/// Registers a collector, which produces its metrics when the registry is encoded.
pub fn register_collector(collector: impl Collector) {
    with_registry(|registry| registry.register_collector(Box::new(collector)));
}

/// Encodes every registered metric in the OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    let result = with_registry(|registry| text::encode(&mut out, registry));
    if let Err(error) = result {
        tracing::warn!(error = %error, "failed to encode the metrics");
    }
    out
}

/// A histogram of latencies in seconds, with buckets from 1 ms doubling up to about 33 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// A family of [`latency_histogram`]s.
pub type LatencyFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Creates an empty [`LatencyFamily`].
pub fn latency_family() -> LatencyFamily {
    Family::new_with_constructor(latency_histogram)
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The dependencies of a stage and the checks that tell whether each one is reachable. Cheap to
/// clone; clones share the checks.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<&'static str, Option<Check>>>>,
}

impl Health {
    /// Declares the dependencies the stage needs; each fails until a check is attached.
    pub fn new(dependencies: &[&'static str]) -> Self {
        let checks = dependencies.iter().map(|name| (*name, None)).collect();
        Health {
            checks: Arc::new(Mutex::new(checks)),
        }
    }

    /// Attaches (or replaces) the check of a dependency.
    pub fn attach<F, Fut>(&self, dependency: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        self.lock().insert(dependency, Some(check));
    }

    /// Attaches the NATS check: the client's connection is established.
    pub fn attach_nats(&self, client: &async_nats::Client) {
        let client = client.clone();
        self.attach(NATS, move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(other.to_string()),
                }
            }
        });
    }

    /// Attaches the MySQL check: `SELECT 1` on the pool succeeds.
    pub fn attach_mysql(&self, pool: &sqlx::MySqlPool) {
        let pool = pool.clone();
        self.attach(MYSQL, move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            }
        });
    }

    /// Runs every check and returns one line per failing dependency (empty when all pass).
    pub async fn failures(&self) -> Vec<String> {
        let checks: Vec<(&'static str, Option<Check>)> = self
            .lock()
            .iter()
            .map(|(name, check)| (*name, check.clone()))
            .collect();
        let mut failures = Vec::new();
        for (name, check) in checks {
            let Some(check) = check else {
                failures.push(format!("{name}: not connected yet"));
                continue;
            };
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => failures.push(format!("{name}: {}", one_line(&reason))),
                Err(_) => failures.push(format!("{name}: no answer within {CHECK_TIMEOUT:?}")),
            }
        }
        failures
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Option<Check>>> {
        self.checks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Error of [`serve`].
#[derive(Debug, thiserror::Error)]
#[error("failed to listen on METRICS_ADDR {address}: {reason}")]
pub struct ServeError {
    pub address: SocketAddr,
    /// The bind error, shown in the message and so not chained as a source as well.
    pub reason: std::io::Error,
}

/// Serves `/metrics` and `/healthz` on `address` until `shutdown`, and returns the stage's
/// [`Health`] with `dependencies` declared. Without an address nothing is served, and the
/// returned `Health` only collects checks. The listener is bound before this returns, so a
/// port in use stops the stage at start.
pub async fn serve(
    address: Option<SocketAddr>,
    dependencies: &[&'static str],
    shutdown: CancellationToken,
) -> Result<Health, ServeError> {
    let health = Health::new(dependencies);
    let Some(address) = address else {
        return Ok(health);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|reason| ServeError { address, reason })?;
    let local = listener.local_addr().unwrap_or(address);
    tracing::info!(address = %local, "serving /metrics and /healthz");

    let router = Router::new()
        .route("/metrics", get(metrics_response))
        .route("/healthz", get(health_response))
        .with_state(health.clone());
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::warn!(error = %error, "metrics endpoint stopped");
        }
    });
    Ok(health)
}

async fn metrics_response() -> Response {
    ([("content-type", METRICS_CONTENT_TYPE)], encode()).into_response()
}

async fn health_response(axum::extract::State(health): axum::extract::State<Health>) -> Response {
    let failures = health.failures().await;
    if failures.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let body = failures.join("\n") + "\n";
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Replaces line breaks, so that a failure stays on one line of the `/healthz` body.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Gauges of the durable consumers' backlogs.
struct ConsumerGauges {
    pending: Family<Labels, Gauge>,
    ack_pending: Family<Labels, Gauge>,
}

static CONSUMER_GAUGES: LazyLock<ConsumerGauges> = LazyLock::new(|| {
    let gauges = ConsumerGauges {
        pending: Family::default(),
        ack_pending: Family::default(),
    };
    register(
        "consumer_pending",
        "Messages of the stream not yet delivered to the durable consumer (its lag)",
        gauges.pending.clone(),
    );
    register(
        "consumer_ack_pending",
        "Messages delivered to the durable consumer and not yet acknowledged",
        gauges.ack_pending.clone(),
    );
    gauges
});

/// Registers the consumer lag gauges, so that they are listed before the first reading.
pub fn register_consumer_lag() {
    LazyLock::force(&CONSUMER_GAUGES);
}

/// Reads the pending counts of `consumer` on `stream` every [`CONSUMER_LAG_INTERVAL`] until
/// `shutdown`. A consumer that does not exist yet is read again on the next tick.
pub async fn watch_consumer_lag(
    js: async_nats::jetstream::Context,
    stream: String,
    consumer: String,
    shutdown: CancellationToken,
) {
    let labels: Labels = vec![("stream", stream.clone()), ("consumer", consumer.clone())];
    let mut ticker = tokio::time::interval(CONSUMER_LAG_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match read_consumer_lag(&js, &stream, &consumer).await {
            Ok((pending, ack_pending)) => {
                let gauges = &*CONSUMER_GAUGES;
                gauges.pending.get_or_create(&labels).set(saturate(pending));
                gauges
                    .ack_pending
                    .get_or_create(&labels)
                    .set(saturate(ack_pending as u64));
                failing = false;
            }
            Err(error) if !failing => {
                tracing::debug!(stream, consumer, error = %error, "failed to read the consumer's pending counts, retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn read_consumer_lag(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Result<(u64, usize), String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let info = stream
        .consumer_info(consumer)
        .await
        .map_err(|e| e.to_string())?;
    Ok((info.num_pending, info.num_ack_pending))
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_fails_until_every_dependency_has_a_check() {
        let health = Health::new(&[NATS, MYSQL]);
        assert_eq!(
            health.failures().await,
            vec!["mysql: not connected yet", "nats: not connected yet"]
        );

        health.attach(MYSQL, || async { Ok(()) });
        health.attach(NATS, || async { Err("disconnected".to_owned()) });
        assert_eq!(health.failures().await, vec!["nats: disconnected"]);

        health.attach(NATS, || async { Ok(()) });
        assert!(health.failures().await.is_empty());
    }

    #[tokio::test]
    async fn health_reports_a_check_that_hangs() {
        tokio::time::pause();
        let health = Health::new(&[NATS]);
        health.attach(NATS, std::future::pending);
        let failures = health.failures().await;
        assert_eq!(failures, vec!["nats: no answer within 2s"]);
    }

    #[test]
    fn registered_metrics_carry_the_prefix() {
        let counter = Counter::<u64>::default();
        register("metrics_selftest_events", "Test counter", counter.clone());
        counter.inc_by(3);
        let histogram = latency_histogram();
        register_seconds(
            "metrics_selftest_latency",
            "Test histogram",
            histogram.clone(),
        );
        histogram.observe(0.004);

        let text = encode();
        assert!(
            text.contains("monitor_metrics_selftest_events_total 3"),
            "{text}"
        );
        assert!(
            text.contains("monitor_metrics_selftest_latency_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
