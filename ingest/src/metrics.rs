//! Metrics of the ingest stage, named `monitor_ingest_*`, and its `/metrics` and `/healthz`
//! endpoint (see [`monitor_core::metrics`]).
//!
//! Consumes what the feed connections, the batch runners and the frame publisher report, and
//! the ownership state, which is read at each scrape for the leases held and the live members.
//! `/healthz` is 200 while the NATS connection is up.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use monitor_core::metrics::{
    self, Collector, Counter, DescriptorEncoder, EncodeMetric, Family, Gauge, Health, Histogram,
    Labels, ServeError,
};
use tokio_util::sync::CancellationToken;

use crate::birdeye::Channel;
use crate::ownership::Ownership;
use crate::settings::IngestSettings;

/// The counters, gauges and histograms of the stage, registered once per process.
struct IngestMetrics {
    feed_frames: Family<Labels, Counter>,
    feed_connections: Family<Labels, Gauge>,
    feed_reconnects: Family<Labels, Counter>,
    feed_gaps: Family<Labels, Counter>,
    frames_published: Counter,
    events_published: Counter,
    publish_latency: Histogram,
}

static METRICS: LazyLock<IngestMetrics> = LazyLock::new(|| {
    let m = IngestMetrics {
        feed_frames: Family::default(),
        feed_connections: Family::default(),
        feed_reconnects: Family::default(),
        feed_gaps: Family::default(),
        frames_published: Counter::default(),
        events_published: Counter::default(),
        publish_latency: metrics::latency_histogram(),
    };
    metrics::register(
        "ingest_feed_frames",
        "WebSocket text frames received from the feeds, by channel (prices or trades)",
        m.feed_frames.clone(),
    );
    metrics::register(
        "ingest_feed_connections",
        "Feed WebSocket connections open and subscribed, by channel",
        m.feed_connections.clone(),
    );
    metrics::register(
        "ingest_feed_reconnects",
        "Reconnects scheduled after a feed connection failed, ended or sent ERROR, by channel",
        m.feed_reconnects.clone(),
    );
    metrics::register(
        "ingest_feed_gaps",
        "Open feed connections that ended before shutdown, by channel: events sent while it was down are missing, because the feed does not replay them",
        m.feed_gaps.clone(),
    );
    metrics::register(
        "ingest_frames_published",
        "Event frames acknowledged by the events stream",
        m.frames_published.clone(),
    );
    metrics::register(
        "ingest_events_published",
        "Events in the event frames acknowledged by the events stream",
        m.events_published.clone(),
    );
    metrics::register_seconds(
        "ingest_publish_latency",
        "Time from sending a publish (event frame or status) to JetStream acknowledging it",
        m.publish_latency.clone(),
    );
    m
});

fn channel_labels(channel: Channel) -> Labels {
    vec![("channel", channel.as_str().to_owned())]
}

/// Records a text frame received from a feed. The counter of each channel is looked up in
/// its family once and then kept, because the look-up built a label vector and took the
/// family's lock for every frame. It is created on the channel's first frame, as before.
pub fn feed_frame(channel: Channel) {
    static PRICES: OnceLock<Counter> = OnceLock::new();
    static TRADES: OnceLock<Counter> = OnceLock::new();
    let counter = match channel {
        Channel::Prices => &PRICES,
        Channel::Trades => &TRADES,
    };
    counter
        .get_or_init(|| {
            METRICS
                .feed_frames
                .get_or_create(&channel_labels(channel))
                .clone()
        })
        .inc();
}

/// Records a reconnect scheduled on a feed channel.
pub fn feed_reconnect(channel: Channel) {
    METRICS
        .feed_reconnects
        .get_or_create(&channel_labels(channel))
        .inc();
}

/// Records an open feed connection that ended while the stage was running.
pub fn feed_gap(channel: Channel) {
    METRICS
        .feed_gaps
        .get_or_create(&channel_labels(channel))
        .inc();
}

/// Records an event frame acknowledged by the events stream.
pub fn frame_published(events: usize) {
    METRICS.frames_published.inc();
    METRICS.events_published.inc_by(events as u64);
}

/// Records the time JetStream took to acknowledge a publish.
pub fn publish_acked(elapsed: Duration) {
    METRICS.publish_latency.observe(elapsed.as_secs_f64());
}

/// An open feed connection, counted in `monitor_ingest_feed_connections` until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    channel: Channel,
}

impl OpenConnection {
    pub fn new(channel: Channel) -> Self {
        METRICS
            .feed_connections
            .get_or_create(&channel_labels(channel))
            .inc();
        OpenConnection { channel }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS
            .feed_connections
            .get_or_create(&channel_labels(self.channel))
            .dec();
    }
}

/// Registers the stage's metrics and starts the endpoint on `METRICS_ADDR`, if set.
pub async fn serve(
    settings: &IngestSettings,
    shutdown: CancellationToken,
) -> Result<Health, ServeError> {
    LazyLock::force(&METRICS);
    for channel in [Channel::Prices, Channel::Trades] {
        // Listed at 0 before the first connection opens, fails or ends.
        let labels = channel_labels(channel);
        METRICS.feed_connections.get_or_create(&labels).set(0);
        METRICS.feed_reconnects.get_or_create(&labels).inc_by(0);
        METRICS.feed_gaps.get_or_create(&labels).inc_by(0);
    }
    metrics::serve(settings.runtime.metrics_addr, &[metrics::NATS], shutdown).await
}

/// Publishes the leases this instance holds and the live ingest members at each scrape.
pub fn watch_ownership(ownership: Ownership) {
    metrics::register_collector(OwnershipCollector { ownership });
}

struct OwnershipCollector {
    ownership: Ownership,
}

impl std::fmt::Debug for OwnershipCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnershipCollector")
    }
}

impl Collector for OwnershipCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let held = Gauge::<i64>::default();
        held.set(self.ownership.held_count() as i64);
        let metric = encoder.encode_descriptor(
            "ingest_leases_held",
            "Leases of batches and block tasks that this instance holds",
            None,
            held.metric_type(),
        )?;
        held.encode(metric)?;

        let members = Gauge::<i64>::default();
        members.set(self.ownership.members().len() as i64);
        let metric = encoder.encode_descriptor(
            "ingest_members",
            "Live ingest instances at the last listing of the leases bucket, this one included",
            None,
            members.metric_type(),
        )?;
        members.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_counted(channel: Channel) -> u64 {
        METRICS
            .feed_frames
            .get_or_create(&channel_labels(channel))
            .get()
    }

    #[test]
    fn feed_frame_counts_in_family() {
        // Other tests of this process may count frames too, so only a lower bound holds.
        let before = frames_counted(Channel::Trades);
        feed_frame(Channel::Trades);
        feed_frame(Channel::Trades);
        assert!(frames_counted(Channel::Trades) >= before + 2);
    }
}
