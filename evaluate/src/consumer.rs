//! The consumer loop: pulls event frames, judges them and publishes their alerts.
//!
//! Consumes the events stream through the durable pull consumer `evaluate`, which every
//! evaluate instance shares, so each frame goes to one instance at a time. Produces alerts on
//! `<prefix>.alerts.<task_id>` with `Nats-Msg-Id` = alert id, and frames that cannot be
//! judged on `<prefix>.dead.evaluate`.
//!
//! Guarantees: a frame is acked only after the alerts stream has acknowledged every alert it
//! raised. A frame whose alert publish failed is nakked and judged again later. That is safe
//! because alert ids are deterministic and the alerts stream drops a repeated id. Some frames
//! cannot be judged: one that cannot be decoded, one whose task was removed from the tasks
//! bucket, and one whose task stays unknown for `UNKNOWN_TASK_TIMEOUT` after its first
//! delivery. Each is copied to the dead stream with the reason in a header, then terminated
//! and counted, and the loop goes on with the next frame.
//! Publishes are pipelined: frames are judged as they arrive, and their alert
//! acknowledgements are awaited concurrently, up to `EVALUATE_BATCH` frames at a time.
//!
//! The durable consumer delivers every frame the stream holds when it is first created
//! (`DeliverPolicy::All`): a stage started after ingest has published still judges those
//! frames, and the events stream's `max_age` bounds how far back that goes. The policy of an
//! existing durable consumer never changes, so a restart resumes where the consumer left off.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::pull::{self, Stream as FrameStream};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::{self, Message};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use monitor_core::codec::{self, CodecError};
use monitor_core::messages::{Alert, EventFrame};
use monitor_core::Subjects;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::{Resolution, SharedCache, UnknownTask};
use crate::engine::evaluate_with_targets;
use crate::settings::Settings;

/// Header of a dead-lettered frame: why it could not be judged, on one line.
pub const DEAD_REASON_HEADER: &str = "Monitor-Dead-Reason";
/// Header of a dead-lettered frame: the subject it was published on.
pub const DEAD_SOURCE_SUBJECT_HEADER: &str = "Monitor-Source-Subject";
/// Header of a dead-lettered frame: its sequence number in the events stream.
pub const DEAD_SOURCE_SEQUENCE_HEADER: &str = "Monitor-Source-Sequence";

/// Time the server waits for an ack before it redelivers a frame.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Frames delivered to all evaluate instances and not yet acked, at most.
const MAX_ACK_PENDING: i64 = 10_000;
/// Expiry of each pull request.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat of each pull request. Two missed heartbeats end the stream with an error
/// and it is opened again, so a pull request that the server lost stalls evaluate for about
/// two seconds. Notify's pull streams saw such losses under full load.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// Backoff between attempts to re-open the consumer after a failure.
const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(10);
/// Time given to frames in flight to settle at shutdown; the server redelivers what is left.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum length in bytes of the reason kept in the dead-letter header.
const MAX_REASON_LEN: usize = 1024;

/// Error that kept a frame from being judged or its alerts from being published. The variant decides what happens
/// to the frame (see [`FrameError::disposition`]).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Decode(#[from] CodecError),
    #[error(transparent)]
    Invalid(#[from] crate::frame_check::InvalidFrame),
    #[error("{reason}, retrying")]
    TaskNotReady { reason: UnknownTask },
    #[error("{reason}, {timeout:?} after the frame's first delivery")]
    UnknownTask {
        reason: UnknownTask,
        timeout: Duration,
    },
    #[error("task {task_id} was removed from the tasks bucket")]
    RemovedTask { task_id: u64 },
    #[error("failed to encode alert {alert_id}: {source}")]
    EncodeAlert {
        alert_id: String,
        source: CodecError,
    },
    #[error("failed to publish alert {alert_id}: {source}")]
    PublishAlert {
        alert_id: String,
        source: PublishError,
    },
    #[error("failed to publish the frame to the dead stream: {source}")]
    DeadLetter { source: PublishError },
}

/// Action taken on a frame after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Nak with a delay; judging it again may succeed.
    Retry,
    /// Copy to the dead stream and terminate; judging it again would fail the same way.
    DeadLetter,
}

impl FrameError {
    pub fn disposition(&self) -> Disposition {
        match self {
            FrameError::TaskNotReady { .. }
            | FrameError::PublishAlert { .. }
            | FrameError::DeadLetter { .. } => Disposition::Retry,
            FrameError::Decode(_)
            | FrameError::Invalid(_)
            | FrameError::UnknownTask { .. }
            | FrameError::RemovedTask { .. }
            | FrameError::EncodeAlert { .. } => Disposition::DeadLetter,
        }
    }
}

/// Frame counts of one consumer, logged at shutdown.
#[derive(Debug, Default)]
pub struct Counters {
    pub frames_acked: AtomicU64,
    pub alerts_published: AtomicU64,
    pub frames_retried: AtomicU64,
    pub frames_dead_lettered: AtomicU64,
    pub frames_of_removed_tasks: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A frame in flight: resolves once the frame is acked, nakked or terminated.
type Settling = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Pulls frames from the events stream and settles each one.
pub struct FrameConsumer {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    cache: SharedCache,
    pull_batch: usize,
    unknown_task_timeout: Duration,
    retry_delay: Duration,
    counters: Arc<Counters>,
}

/// Reason pulling stopped.
enum PullEnd {
    Shutdown,
    Failed(String),
}

impl FrameConsumer {
    pub fn new(client: async_nats::Client, settings: &Settings, cache: SharedCache) -> Self {
        FrameConsumer {
            js: jetstream::new(client.clone()),
            client,
            subjects: settings.nats.subjects(),
            cache,
            pull_batch: settings.pull_batch,
            unknown_task_timeout: settings.unknown_task_timeout,
            retry_delay: settings.retry_delay(),
            counters: Arc::default(),
        }
    }

    /// Pulls and settles frames until shutdown, once the task cache is ready.
    pub async fn run(self, mut cache_ready: watch::Receiver<bool>, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = cache_ready.wait_for(|ready| *ready) => {}
        }

        let mut in_flight = FuturesUnordered::new();
        let mut delay = REOPEN_MIN;
        while !shutdown.is_cancelled() {
            let end = match self.open_frames().await {
                Ok(frames) => {
                    info!(stream = %self.subjects.events_stream(), consumer = Subjects::EVALUATE_CONSUMER, batch = self.pull_batch, "pulling event frames");
                    delay = REOPEN_MIN;
                    self.pull(frames, &mut in_flight, &shutdown).await
                }
                Err(error) => PullEnd::Failed(error),
            };
            if let PullEnd::Failed(error) = end {
                warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "event consumer failed, re-opening");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = settle_during(&mut in_flight, delay) => {}
                }
                delay = (delay * 2).min(REOPEN_MAX);
            }
        }
        self.drain(in_flight).await;
    }

    /// Creates the durable consumer (or opens it) and starts a pull stream on it.
    async fn open_frames(&self) -> Result<FrameStream, String> {
        let stream_name = self.subjects.events_stream();
        let stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|e| format!("failed to open stream {stream_name}: {e}"))?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(Subjects::EVALUATE_CONSUMER, self.consumer_config())
            .await
            .map_err(|e| {
                format!(
                    "failed to create consumer {}: {e}",
                    Subjects::EVALUATE_CONSUMER
                )
            })?;
        consumer
            .stream()
            .max_messages_per_batch(self.pull_batch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| {
                format!(
                    "failed to pull from consumer {}: {e}",
                    Subjects::EVALUATE_CONSUMER
                )
            })
    }

    fn consumer_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(Subjects::EVALUATE_CONSUMER.to_owned()),
            description: Some("evaluate: judges event frames against task rules".to_owned()),
            // Frames stored before the first evaluate started are judged too.
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            filter_subject: self.subjects.all_events(),
            ..Default::default()
        }
    }

    /// Reads frames and starts settling each one, keeping at most one pull batch in flight.
    async fn pull(
        &self,
        mut frames: FrameStream,
        in_flight: &mut FuturesUnordered<Settling>,
        shutdown: &CancellationToken,
    ) -> PullEnd {
        loop {
            let has_room = in_flight.len() < self.pull_batch;
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return PullEnd::Shutdown,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                next = frames.next(), if has_room => next,
            };
            match next {
                Some(Ok(message)) => {
                    let settling = self.start(message).await;
                    in_flight.push(settling);
                }
                Some(Err(error)) => return PullEnd::Failed(error.to_string()),
                None => return PullEnd::Failed("pull stream ended".to_owned()),
            }
        }
    }

    /// Judges one frame and returns the future that settles it.
    async fn start(&self, message: Message) -> Settling {
        let frame = match codec::decode::<EventFrame>(&message.payload) {
            Ok(frame) => frame,
            Err(error) => return self.fail(message, FrameError::Decode(error)).await,
        };
        if let Err(error) = crate::frame_check::check_frame(&frame) {
            return self.fail(message, FrameError::Invalid(error)).await;
        }

        let resolution = self.cache.read(|cache| cache.resolve(&frame));
        let (task, targets, batch_pending) = match resolution {
            Resolution::Known {
                task,
                targets,
                batch_pending,
            } => (task, targets, batch_pending),
            Resolution::Removed => {
                Counters::add(&self.counters.frames_of_removed_tasks, 1);
                let task_id = frame.task_id;
                return self
                    .fail(message, FrameError::RemovedTask { task_id })
                    .await;
            }
            Resolution::Unknown(reason) => {
                let error = if self.waited_past_timeout(&message) {
                    let timeout = self.unknown_task_timeout;
                    FrameError::UnknownTask { reason, timeout }
                } else {
                    FrameError::TaskNotReady { reason }
                };
                return self.fail(message, error).await;
            }
        };
        if batch_pending && !self.waited_past_timeout(&message) {
            // Token names come from the batch spec and an alert is published once, so wait
            // for the spec. Past the timeout the frame is judged without them.
            debug!(task_id = frame.task_id, batch_id = ?frame.batch_id, "batch spec not cached yet, retrying frame");
            Counters::add(&self.counters.frames_retried, 1);
            return Box::pin(settle(message, AckKind::Nak(Some(self.retry_delay))));
        }

        let alerts = evaluate_with_targets(&task, &frame, |target| targets.find(target));
        crate::metrics::frame_judged(&frame, &alerts);
        debug!(
            task_id = frame.task_id,
            batch_id = ?frame.batch_id,
            producer = %frame.producer,
            seq = frame.seq,
            events = frame.events.len(),
            alerts = alerts.len(),
            "frame judged"
        );
        self.publish_alerts(message, alerts).await
    }

    /// Publishes the alerts of a frame; the returned future acks the frame once every alert
    /// is stored, and nakks it if any publish failed.
    async fn publish_alerts(&self, message: Message, alerts: Vec<Alert>) -> Settling {
        let mut acks: Vec<(String, PublishAckFuture)> = Vec::with_capacity(alerts.len());
        for alert in &alerts {
            let payload = match codec::encode(alert) {
                Ok(payload) => payload,
                Err(source) => {
                    let alert_id = alert.id.clone();
                    return self
                        .fail(message, FrameError::EncodeAlert { alert_id, source })
                        .await;
                }
            };
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(alert.msg_id());
            match self
                .js
                .send_publish(self.subjects.alerts(alert.task_id), publish)
                .await
            {
                Ok(ack) => acks.push((alert.id.clone(), ack)),
                Err(source) => {
                    let alert_id = alert.id.clone();
                    return self
                        .fail(message, FrameError::PublishAlert { alert_id, source })
                        .await;
                }
            }
        }

        let counters = self.counters.clone();
        let retry_delay = self.retry_delay;
        Box::pin(async move {
            match await_alert_acks(acks).await {
                Ok(published) => {
                    Counters::add(&counters.alerts_published, published);
                    Counters::add(&counters.frames_acked, 1);
                    settle(message, AckKind::Ack).await;
                }
                Err(error) => {
                    warn!(subject = %message.subject, error = %error, "alert publish failed, frame will be redelivered");
                    Counters::add(&counters.frames_retried, 1);
                    settle(message, AckKind::Nak(Some(retry_delay))).await;
                }
            }
        })
    }

    /// Handles a frame that could not be judged, as its error's disposition says.
    async fn fail(&self, message: Message, error: FrameError) -> Settling {
        match error.disposition() {
            Disposition::Retry => {
                debug!(subject = %message.subject, error = %error, "frame not judged, retrying");
                Counters::add(&self.counters.frames_retried, 1);
                Box::pin(settle(message, AckKind::Nak(Some(self.retry_delay))))
            }
            Disposition::DeadLetter => self.dead_letter(message, error).await,
        }
    }

    /// Copies a frame to the dead stream with the reason, then terminates it. If the copy is
    /// not stored, the frame is nakked instead, so nothing is lost.
    async fn dead_letter(&self, message: Message, error: FrameError) -> Settling {
        let reason = one_line(&error.to_string());
        let sequence = message
            .info()
            .map(|info| info.stream_sequence)
            .unwrap_or_default();
        warn!(subject = %message.subject, sequence, reason = %reason, "moving frame to the dead stream");

        let mut headers = HeaderMap::new();
        headers.insert(DEAD_REASON_HEADER, reason.as_str());
        headers.insert(DEAD_SOURCE_SUBJECT_HEADER, message.subject.as_str());
        headers.insert(DEAD_SOURCE_SEQUENCE_HEADER, sequence.to_string());
        // A frame whose termination got lost is dead-lettered again; the id stores it once.
        headers.insert(
            NATS_MESSAGE_ID,
            format!("evaluate:{}:{sequence}", self.subjects.events_stream()),
        );
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers);
        let sent = self
            .js
            .send_publish(self.subjects.dead("evaluate"), publish)
            .await;

        let counters = self.counters.clone();
        let retry_delay = self.retry_delay;
        Box::pin(async move {
            let stored = match sent {
                Ok(ack) => ack.await,
                Err(source) => Err(source),
            };
            match stored {
                Ok(_) => {
                    Counters::add(&counters.frames_dead_lettered, 1);
                    settle(message, AckKind::Term).await;
                }
                Err(source) => {
                    let error = FrameError::DeadLetter { source };
                    warn!(subject = %message.subject, error = %error, "frame will be redelivered");
                    Counters::add(&counters.frames_retried, 1);
                    settle(message, AckKind::Nak(Some(retry_delay))).await;
                }
            }
        })
    }

    /// Tells whether the unknown-task timeout has passed since the frame's first delivery.
    fn waited_past_timeout(&self, message: &Message) -> bool {
        let Ok(info) = message.info() else {
            // Not a JetStream delivery (no ack subject to parse): waiting cannot help it.
            return true;
        };
        redeliveries_cover(info.delivered, self.retry_delay, self.unknown_task_timeout)
    }

    /// Waits for the frames in flight to settle, at most [`DRAIN_TIMEOUT`], and logs counts.
    async fn drain(&self, mut in_flight: FuturesUnordered<Settling>) {
        let pending = in_flight.len();
        if pending > 0 {
            info!(
                frames = pending,
                "settling frames in flight before shutdown"
            );
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while in_flight.next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                warn!(
                    frames = in_flight.len(),
                    "frames still in flight at shutdown will be redelivered"
                );
            }
        }
        if let Err(error) = self.client.flush().await {
            warn!(error = %error, "failed to flush acks at shutdown, their frames will be redelivered");
        }
        let c = &self.counters;
        info!(
            frames_acked = c.frames_acked.load(Ordering::Relaxed),
            alerts_published = c.alerts_published.load(Ordering::Relaxed),
            frames_retried = c.frames_retried.load(Ordering::Relaxed),
            frames_dead_lettered = c.frames_dead_lettered.load(Ordering::Relaxed),
            frames_of_removed_tasks = c.frames_of_removed_tasks.load(Ordering::Relaxed),
            "event consumer stopped"
        );
    }
}

/// Tells whether a frame delivered `delivered` times has waited `timeout` since its first
/// delivery. Every earlier delivery ended in a nak with `retry_delay` (or in an ack wait,
/// which is longer), and the server redelivers no sooner than that delay, so at least
/// `(delivered - 1) * retry_delay` has passed. The server keeps the count, so it stays
/// right across evaluate instances and restarts, and a frame stored long before evaluate
/// started still gets the whole timeout. The time the stream stored the frame would not: a backlog
/// judged after a restart would be dead-lettered at once.
fn redeliveries_cover(delivered: i64, retry_delay: Duration, timeout: Duration) -> bool {
    let earlier_deliveries = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
    retry_delay.saturating_mul(earlier_deliveries) >= timeout
}

/// Awaits every alert acknowledgement of a frame concurrently; returns how many were stored.
async fn await_alert_acks(acks: Vec<(String, PublishAckFuture)>) -> Result<u64, FrameError> {
    let started = std::time::Instant::now();
    let results = futures::future::join_all(acks.into_iter().map(|(alert_id, ack)| async move {
        ack.await
            .map_err(|source| FrameError::PublishAlert { alert_id, source })
    }))
    .await;
    if !results.is_empty() {
        crate::metrics::alert_acks_awaited(started.elapsed());
    }
    let mut published = 0;
    for result in results {
        result?;
        published += 1;
    }
    Ok(published)
}

/// Sends the frame's ack, nak or term. A lost ack only delays the frame: the server
/// redelivers it after the ack wait, and its alerts are dropped as repeated ids.
async fn settle(message: Message, kind: AckKind) {
    crate::metrics::frame_settled(&kind);
    if let Err(error) = message.ack_with(kind).await {
        warn!(subject = %message.subject, error = %error, "failed to settle frame, it will be redelivered");
    }
}

/// Settles frames in flight for up to `duration`, so a re-open backoff does not stall them.
async fn settle_during(in_flight: &mut FuturesUnordered<Settling>, duration: Duration) {
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

/// Replaces line breaks so the text fits a header, and shortens it to [`MAX_REASON_LEN`].
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if flat.len() <= MAX_REASON_LEN {
        return flat;
    }
    let mut end = MAX_REASON_LEN;
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &flat[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_follow_error_kind() {
        let reason = UnknownTask::Missing { task_id: 3 };
        let decode = codec::decode::<EventFrame>(b"\xc1").unwrap_err();
        assert_eq!(
            FrameError::Decode(decode).disposition(),
            Disposition::DeadLetter
        );
        assert_eq!(
            FrameError::TaskNotReady {
                reason: reason.clone()
            }
            .disposition(),
            Disposition::Retry
        );
        let timeout = Duration::from_secs(60);
        assert_eq!(
            FrameError::UnknownTask { reason, timeout }.disposition(),
            Disposition::DeadLetter
        );
    }

    #[test]
    fn unknown_task_reason_names_task_and_wait() {
        let error = FrameError::UnknownTask {
            reason: UnknownTask::Missing { task_id: 3 },
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(
            error.to_string(),
            "task 3 is not in the tasks bucket, 1.5s after the frame's first delivery"
        );
    }

    #[test]
    fn removed_task_is_dead_lettered() {
        let error = FrameError::RemovedTask { task_id: 8 };
        assert_eq!(error.disposition(), Disposition::DeadLetter);
        assert_eq!(
            error.to_string(),
            "task 8 was removed from the tasks bucket"
        );
    }

    #[test]
    fn timeout_counts_redeliveries_since_the_first() {
        let delay = Duration::from_secs(5);
        let timeout = Duration::from_secs(60);
        assert!(!redeliveries_cover(1, delay, timeout));
        assert!(!redeliveries_cover(12, delay, timeout));
        assert!(redeliveries_cover(13, delay, timeout));
        assert!(redeliveries_cover(i64::MAX, delay, timeout));
        assert!(redeliveries_cover(1, delay, Duration::ZERO));
    }

    #[test]
    fn reasons_fit_one_header_line() {
        assert_eq!(one_line("a\r\nb\nc"), "a  b c");
        let long = "é".repeat(MAX_REASON_LEN);
        let short = one_line(&long);
        assert!(short.len() <= MAX_REASON_LEN + 3);
        assert!(short.ends_with("..."));
    }
}
