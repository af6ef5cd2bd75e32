//! `devkit loadgen raw`: the rate at which JetStream alone stores and delivers event frames.
//!
//! Consumes a NATS server and the events stream definition of [`monitor_core::topology`],
//! under a subject prefix of its own. Publishes encoded [`EventFrame`]s like ingest's (trade
//! events with a two-window snapshot, `--events-per-frame` events on average) to one subject
//! per batch, with a `Nats-Msg-Id`, each publisher keeping one frame in flight as an ingest
//! batch does. Consumes them with a durable pull consumer configured as evaluate's (explicit
//! ack, same pull size) that acks each frame on arrival. Client settings are the stages' own
//! ([`NatsSettings::connect`]).
//!
//! Produces one [`ResultLine`]: frames and events acknowledged by the consumer per second over
//! the measured interval, the publish rate, the stored size of a frame, and the CPU time and
//! memory of this process and of the processes given with `--pid`. Nothing else runs, so this
//! is the ceiling for the pipeline's rate with frames of this size on this machine.
//!
//! With `--rate` the publishers pace themselves to that many frames per second in all, and
//! each frame carries its send time on the run clock in a header. The consumer then reports
//! the latency of one JetStream hop (publish to delivery) and the publishers the latency of the
//! store acknowledgement: the floor under each hop of the pipeline at that rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use monitor_core::codec;
use monitor_core::messages::{
    Chain, Event, EventFrame, EventKind, Side, TargetRef, TokenSnapshot, Trade, WindowStats,
    MESSAGE_VERSION,
};
use monitor_core::settings::NatsSettings;
use monitor_core::topology;
use monitor_core::Subjects;

use super::pipeline::{extra_processes, sample_all, usage};
use super::report::{per_second, Latencies, ResultLine};
use super::schedule::{Phase, TradeTag};
use super::setup::target_address;
use super::{cleanup_nats, sleep_or_stop, LoadgenError, Rate, RawSettings, RunClock, BATCH_SIZE};

/// Task id written into the frames; no task exists, nothing judges them.
const RAW_TASK_ID: u64 = 1;
/// Name of the durable consumer.
const RAW_CONSUMER: &str = "loadgen_raw";
/// Frames pulled per request and acks outstanding, as evaluate's defaults.
const PULL_BATCH: usize = 256;
const MAX_ACK_PENDING: i64 = 10_000;
const PULL_EXPIRES: Duration = Duration::from_secs(30);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// Time that publishers and the consumer get to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Header with a paced frame's send time, nanoseconds on the run clock.
const SENT_HEADER: &str = "Loadgen-Sent-Ns";

/// The two frame payloads whose mix gives the requested mean number of events per frame.
struct Payloads {
    /// Payload with `floor(mean)` events, then with one more.
    small: (Bytes, u64),
    large: (Bytes, u64),
    mean: f64,
}

impl Payloads {
    fn new(mean: f64) -> Result<Payloads, LoadgenError> {
        let small_events = mean.floor().max(1.0) as usize;
        Ok(Payloads {
            small: (encode_frame(small_events)?, small_events as u64),
            large: (encode_frame(small_events + 1)?, small_events as u64 + 1),
            mean,
        })
    }

    /// The payload of frame `n`: frame sizes alternate so that any run of frames has the mean.
    fn frame(&self, n: u64) -> &(Bytes, u64) {
        let fraction = self.mean - self.small.1 as f64;
        let before = (n as f64 * fraction).floor();
        let after = ((n + 1) as f64 * fraction).floor();
        if after > before {
            &self.large
        } else {
            &self.small
        }
    }

    /// Events per payload length, to count the events of a delivered frame without decoding it.
    fn events_by_len(&self) -> HashMap<usize, u64> {
        HashMap::from([
            (self.small.0.len(), self.small.1),
            (self.large.0.len(), self.large.1),
        ])
    }
}

/// Builds a frame of `events` trade events as ingest publishes them, and encodes it.
fn encode_frame(events: usize) -> Result<Bytes, LoadgenError> {
    let frame = EventFrame {
        v: MESSAGE_VERSION,
        task_id: RAW_TASK_ID,
        batch_id: Some(1),
        epoch: 1,
        chain: Chain::Eth,
        producer: "loadgen_raw-1".to_owned(),
        seq: 1,
        events: (0..events).map(sample_event).collect(),
    };
    codec::encode(&frame)
        .map(Bytes::from)
        .map_err(|error| LoadgenError::Settings(format!("failed to encode a raw frame: {error}")))
}

fn sample_event(index: usize) -> Event {
    let time_ms = 1_700_000_000_000 + index as i64;
    let window = |window_sec| WindowStats {
        window_sec,
        start_time_ms: None,
        start_price: None,
        high: None,
        low: None,
        volume_usd: 123_456.78,
        buy_usd: 65_432.1,
        sell_usd: 58_024.68,
        trades: 321,
        start_holders: None,
    };
    let tag = TradeTag {
        phase: Phase::Measure,
        seq: index as u64,
        sent_ns: 1,
    };
    Event {
        source_time_ms: time_ms,
        ingest_time_ms: time_ms + 1,
        target: Some(TargetRef {
            target_id: index as u64 + 1,
            address: target_address(index),
        }),
        kind: EventKind::Trade(Trade {
            side: Side::Buy,
            volume_usd: 1_234.56,
            price_usd: Some(1.23),
            tx_hash: Some(tag.to_tx_hash()),
            owner: Some(format!("0x{:040x}", index)),
        }),
        snapshot: Some(TokenSnapshot {
            price: None,
            market_cap: Some(1_000_000.0),
            windows: vec![window(60), window(300)],
            ..TokenSnapshot::default()
        }),
    }
}

/// Counts shared by the publishers, the consumer and the run.
struct RawCounters {
    clock: RunClock,
    phase: AtomicU8,
    /// When the measured phase began, nanoseconds on the run clock.
    measure_started_ns: AtomicU64,
    published_frames: AtomicU64,
    published_events: AtomicU64,
    consumed_frames: AtomicU64,
    consumed_events: AtomicU64,
    publish_errors: AtomicU64,
    /// Latencies from send to delivery at the consumer, of paced frames sent while measuring.
    hop_latency: Mutex<Latencies>,
    /// Latencies from send to the store acknowledgement, of paced frames sent while measuring.
    ack_latency: Mutex<Latencies>,
}

impl RawCounters {
    fn new() -> Self {
        RawCounters {
            clock: RunClock::start(),
            phase: AtomicU8::new(Phase::Idle as u8),
            measure_started_ns: AtomicU64::new(u64::MAX),
            published_frames: AtomicU64::new(0),
            published_events: AtomicU64::new(0),
            consumed_frames: AtomicU64::new(0),
            consumed_events: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            hop_latency: Mutex::new(Latencies::default()),
            ack_latency: Mutex::new(Latencies::default()),
        }
    }

    fn record(latencies: &Mutex<Latencies>, sent_ns: u64, now_ns: u64) {
        if let Ok(mut latencies) = latencies.lock() {
            latencies.record(now_ns.saturating_sub(sent_ns) / 1000);
        }
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn snapshot(&self) -> [u64; 4] {
        [
            self.published_frames.load(Ordering::Relaxed),
            self.published_events.load(Ordering::Relaxed),
            self.consumed_frames.load(Ordering::Relaxed),
            self.consumed_events.load(Ordering::Relaxed),
        ]
    }
}

/// Publishes and consumes frames and returns the result line.
pub async fn run(
    settings: RawSettings,
    shutdown: CancellationToken,
) -> Result<ResultLine, LoadgenError> {
    let run_id = settings.run.run_id();
    let nats = NatsSettings {
        subject_prefix: run_id.clone(),
        ..settings.nats.clone()
    };
    let subjects = nats.subjects();
    let client = nats
        .connect(&format!("loadgen {run_id}"))
        .await
        .map_err(|source| LoadgenError::Connect {
            url: nats.url.clone(),
            source,
        })?;
    let js = jetstream::new(client);
    topology::ensure(&js, &nats).await?;

    let result = measure(&settings, &js, &subjects, &run_id, &shutdown).await;
    if !settings.run.keep {
        cleanup_nats(&js, &subjects).await;
    }
    result
}

async fn measure(
    settings: &RawSettings,
    js: &jetstream::Context,
    subjects: &Subjects,
    run_id: &str,
    shutdown: &CancellationToken,
) -> Result<ResultLine, LoadgenError> {
    let payloads = Arc::new(Payloads::new(settings.events_per_frame)?);
    let batches = settings.run.target_count().div_ceil(BATCH_SIZE).max(1);
    let in_flight = settings.in_flight.map_or(batches, |n| n as usize);
    let counters = Arc::new(RawCounters::new());
    // Each publisher keeps its share of the rate, starting at its own offset so that the
    // publishers do not send in step.
    let period = settings
        .rate
        .per_second()
        .map(|rate| Duration::from_secs_f64(in_flight as f64 / rate));
    let stop = CancellationToken::new();
    tracing::info!(
        run_id,
        batches,
        in_flight,
        events_per_frame = settings.events_per_frame,
        rate = %settings.rate,
        "loadgen raw run starting"
    );

    let consumer = start_consumer(js, subjects, &payloads, &counters, &stop).await?;
    counters.phase.store(Phase::Warmup as u8, Ordering::Relaxed);
    let mut publishers = JoinSet::new();
    for publisher in 0..in_flight {
        let subject =
            subjects.batch_events(Chain::Eth, RAW_TASK_ID, (publisher % batches) as u64 + 1);
        let pace = period.map(|period| Pace {
            period,
            offset: period.mul_f64(publisher as f64 / in_flight as f64),
        });
        publishers.spawn(publish_loop(
            js.clone(),
            subject,
            format!("{run_id}:{publisher}"),
            pace,
            Arc::clone(&payloads),
            Arc::clone(&counters),
            stop.clone(),
        ));
    }

    let outcome = measure_window(settings, &counters, shutdown).await;
    stop.cancel();
    let stopped = async {
        while publishers.join_next().await.is_some() {}
        let _ = consumer.await;
    };
    if tokio::time::timeout(STOP_TIMEOUT, stopped).await.is_err() {
        tracing::warn!("raw publishers or consumer did not stop in time");
    }
    let (seconds, deltas, usage) = outcome?;

    let stored = stored_frame_bytes(js, subjects).await;
    let [published_frames, published_events, consumed_frames, consumed_events] = deltas;
    let mut line = ResultLine::new("raw");
    line.push("targets", settings.run.targets);
    line.push("subjects", batches);
    line.push("in_flight", in_flight);
    line.push("rate", settings.rate);
    line.push_f64("events_per_frame", settings.events_per_frame, 2);
    if let Some(stored) = stored {
        line.push("frame_bytes", stored);
    }
    line.push("payload_bytes", payloads.small.0.len());
    line.push_f64("duration_s", seconds, 2);
    line.push("frames", consumed_frames);
    line.push("events", consumed_events);
    line.push_f64("events_per_s", per_second(consumed_events, seconds), 0);
    line.push_f64("frames_per_s", per_second(consumed_frames, seconds), 0);
    line.push_f64(
        "published_events_per_s",
        per_second(published_events, seconds),
        0,
    );
    line.push_f64(
        "published_frames_per_s",
        per_second(published_frames, seconds),
        0,
    );
    line.push(
        "publish_errors",
        counters.publish_errors.load(Ordering::Relaxed),
    );
    if settings.rate != Rate::Max {
        for (prefix, latencies) in [
            ("hop", &counters.hop_latency),
            ("ack", &counters.ack_latency),
        ] {
            let mut latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
            line.push(&format!("{prefix}_latencies"), latencies.len());
            line.push_ms(&format!("{prefix}_p50_ms"), latencies.percentile(0.50));
            line.push_ms(&format!("{prefix}_p99_ms"), latencies.percentile(0.99));
            line.push_ms(&format!("{prefix}_p999_ms"), latencies.percentile(0.999));
        }
    }
    line.push_usage(&usage);
    line.push("run_id", run_id);
    Ok(line)
}

/// Warms up, then measures; returns the measured seconds, the counter deltas and the usage of
/// the processes.
async fn measure_window(
    settings: &RawSettings,
    counters: &RawCounters,
    shutdown: &CancellationToken,
) -> Result<(f64, [u64; 4], Vec<super::procstat::ProcUsage>), LoadgenError> {
    sleep_or_stop(settings.run.warmup, shutdown).await?;

    let mut processes = vec![("loadgen".to_owned(), "self".to_owned())];
    processes.extend(extra_processes(&settings.run.pids));
    let before = sample_all(&processes);
    let start = tokio::time::Instant::now();
    let counts_before = counters.snapshot();
    counters
        .measure_started_ns
        .store(counters.clock.elapsed_ns(), Ordering::Relaxed);
    counters
        .phase
        .store(Phase::Measure as u8, Ordering::Relaxed);

    sleep_or_stop(settings.run.duration, shutdown).await?;

    let counts_after = counters.snapshot();
    let seconds = start.elapsed().as_secs_f64();
    counters
        .phase
        .store(Phase::Stopped as u8, Ordering::Relaxed);
    let after = sample_all(&processes);
    let deltas = std::array::from_fn(|i| counts_after[i] - counts_before[i]);
    Ok((seconds, deltas, usage(&processes, &before, &after)))
}

/// Schedule of one paced publisher: a frame every `period`, the first after `offset`.
struct Pace {
    period: Duration,
    offset: Duration,
}

/// Publishes frames one at a time, each after the previous one was acknowledged. With a pace,
/// each frame also waits for its tick, and a late frame delays the later ticks (no burst).
async fn publish_loop(
    js: jetstream::Context,
    subject: String,
    id_prefix: String,
    pace: Option<Pace>,
    payloads: Arc<Payloads>,
    counters: Arc<RawCounters>,
    stop: CancellationToken,
) {
    let mut ticks = pace.map(|pace| {
        let start = tokio::time::Instant::now() + pace.offset;
        let mut ticks = tokio::time::interval_at(start, pace.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut n = 0u64;
    while !stop.is_cancelled() && counters.phase().is_sending() {
        if let Some(ticks) = &mut ticks {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
        }
        let (payload, events) = payloads.frame(n);
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, format!("{id_prefix}:{n}").as_str());
        let sent_ns = counters.clock.elapsed_ns();
        let measured = counters.phase() == Phase::Measure;
        if ticks.is_some() {
            headers.insert(SENT_HEADER, sent_ns.to_string().as_str());
        }
        let published = async {
            js.publish_with_headers(subject.clone(), headers, payload.clone())
                .await?
                .await
        };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = published => result,
        };
        match result {
            Ok(_) => {
                if ticks.is_some() && measured {
                    RawCounters::record(
                        &counters.ack_latency,
                        sent_ns,
                        counters.clock.elapsed_ns(),
                    );
                }
                counters.published_frames.fetch_add(1, Ordering::Relaxed);
                counters
                    .published_events
                    .fetch_add(*events, Ordering::Relaxed);
                n += 1;
            }
            Err(error) => {
                counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject, error = %error, "raw publish failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn start_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    payloads: &Payloads,
    counters: &Arc<RawCounters>,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, LoadgenError> {
    let stream_name = subjects.events_stream();
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| LoadgenError::nats("open the events stream", e))?;
    let config = pull::Config {
        durable_name: Some(RAW_CONSUMER.to_owned()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subject: subjects.all_events(),
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(RAW_CONSUMER, config)
        .await
        .map_err(|e| LoadgenError::nats("create the raw consumer", e))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| LoadgenError::nats("pull from the raw consumer", e))?;

    let events_by_len = payloads.events_by_len();
    let counters = Arc::clone(counters);
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let now_ns = counters.clock.elapsed_ns();
                    if let Some(sent_ns) = sent_during_measure(&message, &counters) {
                        RawCounters::record(&counters.hop_latency, sent_ns, now_ns);
                    }
                    let events = events_by_len
                        .get(&message.payload.len())
                        .copied()
                        .unwrap_or(0);
                    if let Err(error) = message.ack().await {
                        tracing::warn!(error = %error, "raw ack failed");
                        continue;
                    }
                    counters.consumed_frames.fetch_add(1, Ordering::Relaxed);
                    counters
                        .consumed_events
                        .fetch_add(events, Ordering::Relaxed);
                }
                Some(Err(error)) => tracing::warn!(error = %error, "raw pull failed"),
                None => return,
            }
        }
    }))
}

/// Returns the send time of a paced frame sent during the measured phase, read from its
/// header, or `None` for any other frame.
fn sent_during_measure(message: &jetstream::Message, counters: &RawCounters) -> Option<u64> {
    if counters.phase() != Phase::Measure {
        return None;
    }
    let sent_ns: u64 = message
        .headers
        .as_ref()?
        .get(SENT_HEADER)?
        .as_str()
        .parse()
        .ok()?;
    // Skips frames sent in the warm-up but delivered after the measured phase began.
    (sent_ns >= counters.measure_started_ns.load(Ordering::Relaxed)).then_some(sent_ns)
}

/// Mean stored size of a frame in the events stream, as JetStream accounts it.
async fn stored_frame_bytes(js: &jetstream::Context, subjects: &Subjects) -> Option<u64> {
    let mut stream = js.get_stream(subjects.events_stream()).await.ok()?;
    let info = stream.info().await.ok()?;
    (info.state.messages > 0).then(|| info.state.bytes / info.state.messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_mix_has_the_requested_mean() {
        let payloads = Payloads::new(2.25).unwrap();
        let events: u64 = (0..400).map(|n| payloads.frame(n).1).sum();
        assert_eq!(events, 900);
        assert_eq!(payloads.small.1, 2);
        assert_eq!(payloads.large.1, 3);
    }

    #[test]
    fn whole_mean_uses_one_size() {
        let payloads = Payloads::new(1.0).unwrap();
        assert!((0..50).all(|n| payloads.frame(n).1 == 1));
    }

    #[test]
    fn frame_decodes_with_its_events() {
        let bytes = encode_frame(3).unwrap();
        let frame: EventFrame = codec::decode(&bytes).unwrap();
        assert_eq!(frame.events.len(), 3);
        assert!(frame
            .events
            .iter()
            .all(|e| e.snapshot.as_ref().unwrap().windows.len() == 2));
    }

    #[test]
    fn payload_sizes_differ_per_event_count() {
        let payloads = Payloads::new(1.5).unwrap();
        assert_eq!(payloads.events_by_len().len(), 2);
    }
}
