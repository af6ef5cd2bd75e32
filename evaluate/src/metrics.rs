//! Metrics of the evaluate stage, named `monitor_evaluate_*`, and its `/metrics` and
//! `/healthz` endpoint (see [`monitor_core::metrics`]).
//!
//! Consumes what the consumer loop reports ([`frame_judged`], [`frame_settled`],
//! [`alert_acks_awaited`]) and the task cache, which is read at each scrape for the config
//! version of every cached task. `/healthz` is 200 while the NATS connection is up.

use std::sync::LazyLock;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use monitor_core::messages::{Alert, EventFrame};
use monitor_core::metrics::{
    self, Collector, Counter, DescriptorEncoder, EncodeMetric, Family, Gauge, Health, Histogram,
    Labels, ServeError,
};
use monitor_core::Subjects;
use tokio_util::sync::CancellationToken;

use crate::cache::SharedCache;
use crate::settings::Settings;

/// The counters and histograms of the stage, registered once per process.
struct EvaluateMetrics {
    frames_judged: Counter,
    events_judged: Counter,
    alerts_raised: Family<Labels, Counter>,
    frames_settled: Family<Labels, Counter>,
    alert_ack_latency: Histogram,
}

static METRICS: LazyLock<EvaluateMetrics> = LazyLock::new(|| {
    let m = EvaluateMetrics {
        frames_judged: Counter::default(),
        events_judged: Counter::default(),
        alerts_raised: Family::default(),
        frames_settled: Family::default(),
        alert_ack_latency: metrics::latency_histogram(),
    };
    metrics::register(
        "evaluate_frames_judged",
        "Event frames judged against their task's rules (a redelivered frame counts again)",
        m.frames_judged.clone(),
    );
    metrics::register(
        "evaluate_events_judged",
        "Events in the judged frames",
        m.events_judged.clone(),
    );
    metrics::register(
        "evaluate_alerts_raised",
        "Alerts raised by judged frames, by alert_type (a redelivered frame counts again; the alerts stream stores each id once)",
        m.alerts_raised.clone(),
    );
    metrics::register(
        "evaluate_frames_settled",
        "Event frames settled, by result: ack (alerts stored), nak (redelivered later) or term (moved to the dead stream)",
        m.frames_settled.clone(),
    );
    metrics::register_seconds(
        "evaluate_alert_ack_latency",
        "Time from publishing a frame's alerts to the alerts stream acknowledging all of them",
        m.alert_ack_latency.clone(),
    );
    m
});

/// Records a judged frame and the alerts it raised.
pub fn frame_judged(frame: &EventFrame, alerts: &[Alert]) {
    let m = &*METRICS;
    m.frames_judged.inc();
    m.events_judged.inc_by(frame.events.len() as u64);
    for alert in alerts {
        let labels = vec![("alert_type", alert.alert_type.as_str().to_owned())];
        m.alerts_raised.get_or_create(&labels).inc();
    }
}

/// Records how a frame was settled.
pub fn frame_settled(kind: &AckKind) {
    let result = match kind {
        AckKind::Ack => "ack",
        AckKind::Nak(_) => "nak",
        AckKind::Term => "term",
        AckKind::Progress | AckKind::Next => return,
    };
    let labels = vec![("result", result.to_owned())];
    METRICS.frames_settled.get_or_create(&labels).inc();
}

/// Records the time the alerts of one frame took to be acknowledged.
pub fn alert_acks_awaited(elapsed: Duration) {
    METRICS.alert_ack_latency.observe(elapsed.as_secs_f64());
}

/// Registers the stage's metrics and starts the endpoint on `METRICS_ADDR`, if set.
pub async fn serve(settings: &Settings, shutdown: CancellationToken) -> Result<Health, ServeError> {
    LazyLock::force(&METRICS);
    for result in ["ack", "nak", "term"] {
        // Listed at 0 before the first frame settles.
        let labels = vec![("result", result.to_owned())];
        METRICS.frames_settled.get_or_create(&labels).inc_by(0);
    }
    metrics::register_consumer_lag();
    metrics::serve(settings.runtime.metrics_addr, &[metrics::NATS], shutdown).await
}

/// Publishes the config version of every cached task at each scrape, and follows the lag of
/// the evaluate consumer until `shutdown`.
pub async fn watch(
    client: async_nats::Client,
    subjects: Subjects,
    cache: SharedCache,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    metrics::register_collector(CacheCollector { cache });
    let js = async_nats::jetstream::new(client);
    let stream = subjects.events_stream();
    let consumer = Subjects::EVALUATE_CONSUMER.to_owned();
    metrics::watch_consumer_lag(js, stream, consumer, shutdown).await;
    Ok(())
}

/// Reads the task cache at each scrape.
struct CacheCollector {
    cache: SharedCache,
}

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (versions, tasks) = self
            .cache
            .read(|cache| (cache.config_versions(), cache.task_count()));

        let cached = Gauge::<i64>::default();
        cached.set(tasks as i64);
        let metric = encoder.encode_descriptor(
            "evaluate_tasks_cached",
            "Task specs in the local copy of the tasks bucket",
            None,
            cached.metric_type(),
        )?;
        cached.encode(metric)?;

        let family = Family::<Labels, Gauge>::default();
        for (task_id, version) in versions {
            let labels = vec![("task_id", task_id.to_string())];
            family
                .get_or_create(&labels)
                .set(i64::try_from(version).unwrap_or(i64::MAX));
        }
        let metric = encoder.encode_descriptor(
            "evaluate_task_config_version",
            "Version of the config whose rules judge the task's frames, by task_id",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}
