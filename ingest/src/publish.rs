//! Publishing a batch's events to JetStream as event frames.
//!
//! Consumes [`Event`]s in the order the batch runner parsed them and produces [`EventFrame`]s
//! on `Subjects::batch_events(chain, task_id, batch_id)`, each with the header `Nats-Msg-Id` =
//! [`EventFrame::msg_id`] (`<producer>:<batch_id>:<seq>`, seq counting from 1 per batch).
//!
//! Guarantees:
//! - A frame is published as soon as there is an event and no frame of the batch is waiting
//!   for its acknowledgement. Events that arrive meanwhile are coalesced into the next frame,
//!   at most [`MAX_EVENTS_PER_FRAME`] each, so frames grow only under load.
//! - One frame of a batch is in flight at a time, which keeps frames in order. Batches publish
//!   independently, so many frames are in flight across batches at once.
//! - A failed publish is retried with the same msg id and payload (JetStream stores it once)
//!   before any later frame, with backoff from 200 ms up to 5 s.
//! - Nothing is dropped silently: the buffer is bounded by `capacity`. The runner stops
//!   reading its feeds when [`FramePublisher::is_full`] and resumes at
//!   [`FramePublisher::is_half_empty`]. Two cases drop events, and the caller counts and logs
//!   both: a frame that can never be published (encoding failure, payload over the server's
//!   limit), and events still unacknowledged when a stopping runner runs out of time.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, context::PublishError, publish::PublishAck};
use bytes::Bytes;
use monitor_core::codec::{self, CodecError};
use monitor_core::messages::{Chain, Event, EventFrame, MESSAGE_VERSION};
use tokio::time::{sleep_until, Instant};

/// Maximum events in one frame.
pub const MAX_EVENTS_PER_FRAME: usize = 256;
const RETRY_INITIAL: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// One message published until JetStream acknowledges it, retried after failures.
pub struct RetryingPublish {
    js: jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    failures: u32,
    state: PublishState,
}

enum PublishState {
    Publishing(AckFuture),
    Waiting(Instant),
}

impl RetryingPublish {
    /// Starts publishing at once.
    pub fn start(
        js: jetstream::Context,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Self {
        let future = publish(
            js.clone(),
            subject.clone(),
            headers.clone(),
            payload.clone(),
        );
        RetryingPublish {
            js,
            subject,
            headers,
            payload,
            failures: 0,
            state: PublishState::Publishing(future),
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Waits for the acknowledgement. After an error it schedules a retry and returns the
    /// error with the delay; the next call waits for that delay and publishes again.
    /// Cancel-safe: the attempt in progress is kept in `self`.
    pub async fn outcome(&mut self) -> Result<PublishAck, (PublishError, Duration)> {
        loop {
            match &mut self.state {
                PublishState::Waiting(until) => {
                    sleep_until(*until).await;
                    let future = publish(
                        self.js.clone(),
                        self.subject.clone(),
                        self.headers.clone(),
                        self.payload.clone(),
                    );
                    self.state = PublishState::Publishing(future);
                }
                PublishState::Publishing(future) => match future.await {
                    Ok(ack) => return Ok(ack),
                    Err(error) => {
                        let delay = retry_delay(self.failures);
                        self.failures = self.failures.saturating_add(1);
                        self.state = PublishState::Waiting(Instant::now() + delay);
                        return Err((error, delay));
                    }
                },
            }
        }
    }
}

fn publish(
    js: jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> AckFuture {
    Box::pin(async move {
        let started = std::time::Instant::now();
        let ack: PublishAckFuture = js.publish_with_headers(subject, headers, payload).await?;
        let acked = ack.await;
        if acked.is_ok() {
            crate::metrics::publish_acked(started.elapsed());
        }
        acked
    })
}

fn retry_delay(failures: u32) -> Duration {
    RETRY_INITIAL
        .saturating_mul(1u32 << failures.min(8))
        .min(RETRY_MAX)
}

/// Returns whether retrying a failed publish can never succeed.
pub fn is_permanent(error: &PublishError) -> bool {
    matches!(error.kind(), PublishErrorKind::MaxPayloadExceeded)
}

/// The fixed part of every frame of one batch.
#[derive(Debug, Clone)]
pub struct FrameHeader {
    pub task_id: u64,
    pub batch_id: u64,
    pub epoch: u32,
    pub chain: Chain,
    /// Consumer id of this ingest instance.
    pub producer: String,
}

/// A frame waiting for its acknowledgement.
struct InFlight {
    seq: u64,
    msg_id: String,
    events: usize,
    publish: RetryingPublish,
}

/// Outcome of the frame in flight.
#[derive(Debug)]
pub enum FrameOutcome {
    Acked {
        seq: u64,
        events: usize,
        /// JetStream had already stored this msg id (an earlier attempt reached it).
        duplicate: bool,
    },
    /// The publish failed and will be retried after `retry_in`.
    Retrying {
        seq: u64,
        msg_id: String,
        attempt: u32,
        error: PublishError,
        retry_in: Duration,
    },
    /// The publish failed in a way no retry can fix; the frame's events are dropped.
    Dropped {
        seq: u64,
        events: usize,
        error: PublishError,
    },
}

/// Error of a frame that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("failed to encode frame {seq} with {events} events, the events are dropped: {source}")]
pub struct EncodeError {
    pub seq: u64,
    pub events: usize,
    pub source: CodecError,
}

/// The event buffer and frame publisher of one batch.
pub struct FramePublisher {
    js: jetstream::Context,
    subject: String,
    header: FrameHeader,
    /// Next sequence number; shared with later runners of the same batch in this process, so
    /// a restarted runner never reuses a msg id.
    next_seq: Arc<AtomicU64>,
    /// Events waiting for the next frame, in feed order. When they fit in one frame, the frame
    /// takes the buffer whole, without moving its events, and gives it back empty once encoded.
    pending: VecDeque<Event>,
    capacity: usize,
    in_flight: Option<InFlight>,
}

impl FramePublisher {
    pub fn new(
        js: jetstream::Context,
        subject: String,
        header: FrameHeader,
        next_seq: Arc<AtomicU64>,
        capacity: usize,
    ) -> Self {
        FramePublisher {
            js,
            subject,
            header,
            next_seq,
            pending: VecDeque::new(),
            capacity: capacity.max(1),
            in_flight: None,
        }
    }

    /// Buffers an event. The caller checks [`FramePublisher::is_full`] before reading more
    /// input; the events of one feed frame may go over the capacity, so no event is refused.
    pub fn push(&mut self, event: Event) {
        self.pending.push_back(event);
    }

    /// Events buffered or in flight.
    pub fn len(&self) -> usize {
        self.pending.len() + self.in_flight.as_ref().map_or(0, |f| f.events)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Returns whether at most half of the capacity is used.
    pub fn is_half_empty(&self) -> bool {
        self.len() <= self.capacity / 2
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts publishing the next frame when none is in flight and events are waiting.
    pub fn start_next(&mut self) -> Result<(), EncodeError> {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return Ok(());
        }
        let events: Vec<Event> = if self.pending.len() <= MAX_EVENTS_PER_FRAME {
            // After `reuse` the buffer starts at its first slot, so turning it into a vector
            // moves no event.
            std::mem::take(&mut self.pending).into()
        } else {
            self.pending.drain(..MAX_EVENTS_PER_FRAME).collect()
        };
        let count = events.len();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let frame = EventFrame {
            v: MESSAGE_VERSION,
            task_id: self.header.task_id,
            batch_id: Some(self.header.batch_id),
            epoch: self.header.epoch,
            chain: self.header.chain,
            producer: self.header.producer.clone(),
            seq,
            events,
        };
        let encoded = codec::encode(&frame);
        let msg_id = frame.msg_id();
        self.reuse(frame.events);
        let payload = encoded.map_err(|source| EncodeError {
            seq,
            events: count,
            source,
        })?;

        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, msg_id.as_str());
        let publish = RetryingPublish::start(
            self.js.clone(),
            self.subject.clone(),
            headers,
            payload.into(),
        );
        self.in_flight = Some(InFlight {
            seq,
            msg_id,
            events: count,
            publish,
        });
        Ok(())
    }

    /// Keeps the allocation of a frame's event vector for the next events, unless a backlog
    /// already fills the buffer.
    fn reuse(&mut self, mut events: Vec<Event>) {
        if self.pending.is_empty() {
            events.clear();
            self.pending = events.into();
        }
    }

    /// Waits for the frame in flight to be acknowledged or to fail; never completes when no
    /// frame is in flight. Cancel-safe.
    pub async fn next_outcome(&mut self) -> FrameOutcome {
        let Some(in_flight) = &mut self.in_flight else {
            return std::future::pending().await;
        };
        match in_flight.publish.outcome().await {
            Ok(ack) => {
                let outcome = FrameOutcome::Acked {
                    seq: in_flight.seq,
                    events: in_flight.events,
                    duplicate: ack.duplicate,
                };
                self.in_flight = None;
                outcome
            }
            Err((error, _)) if is_permanent(&error) => {
                let outcome = FrameOutcome::Dropped {
                    seq: in_flight.seq,
                    events: in_flight.events,
                    error,
                };
                self.in_flight = None;
                outcome
            }
            Err((error, retry_in)) => FrameOutcome::Retrying {
                seq: in_flight.seq,
                msg_id: in_flight.msg_id.clone(),
                attempt: in_flight.publish.failures(),
                error,
                retry_in,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_to_five_seconds() {
        assert_eq!(retry_delay(0), Duration::from_millis(200));
        assert_eq!(retry_delay(1), Duration::from_millis(400));
        assert_eq!(retry_delay(4), Duration::from_millis(3200));
        assert_eq!(retry_delay(5), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
