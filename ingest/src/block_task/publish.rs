//! Publishing a block task's events to JetStream as event frames.
//!
//! Consumes [`Event`]s in the order the task's adapter produced them and produces
//! [`EventFrame`]s without a batch on `Subjects::chain_events(chain, task_id)`, each with
//! `Nats-Msg-Id` = [`EventFrame::msg_id`] (`<producer>:task<task_id>:<seq>`). It follows the
//! batch publisher's rules ([`crate::publish`]):
//! - one frame is in flight at a time, so frames stay in order;
//! - events that arrive meanwhile are coalesced into the next frame (at most
//!   [`MAX_EVENTS_PER_FRAME`]);
//! - a failed publish is retried with the same msg id;
//! - the owner stops reading its chain socket while the buffer is full.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream;
use monitor_core::codec;
use monitor_core::messages::{Chain, Event, EventFrame, MESSAGE_VERSION};

use crate::publish::{
    is_permanent, EncodeError, FrameOutcome, RetryingPublish, MAX_EVENTS_PER_FRAME,
};

/// The fixed part of every frame of one block task.
#[derive(Debug, Clone)]
pub struct TaskFrameHeader {
    pub task_id: u64,
    pub epoch: u32,
    pub chain: Chain,
    /// Consumer id of this ingest instance.
    pub producer: String,
}

struct InFlight {
    seq: u64,
    msg_id: String,
    events: usize,
    publish: RetryingPublish,
}

/// The event buffer and frame publisher of one block task.
pub struct TaskFramePublisher {
    js: jetstream::Context,
    subject: String,
    header: TaskFrameHeader,
    /// Shared with later runners of the same task in this process, so a restarted runner
    /// never reuses a msg id.
    next_seq: Arc<AtomicU64>,
    pending: VecDeque<Event>,
    capacity: usize,
    in_flight: Option<InFlight>,
}

impl TaskFramePublisher {
    pub fn new(
        js: jetstream::Context,
        subject: String,
        header: TaskFrameHeader,
        next_seq: Arc<AtomicU64>,
        capacity: usize,
    ) -> Self {
        TaskFramePublisher {
            js,
            subject,
            header,
            next_seq,
            pending: VecDeque::new(),
            capacity: capacity.max(1),
            in_flight: None,
        }
    }

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

    pub fn is_half_empty(&self) -> bool {
        self.len() <= self.capacity / 2
    }

    /// Starts publishing the next frame when none is in flight and events are waiting.
    pub fn start_next(&mut self) -> Result<(), EncodeError> {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return Ok(());
        }
        let count = self.pending.len().min(MAX_EVENTS_PER_FRAME);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let frame = EventFrame {
            v: MESSAGE_VERSION,
            task_id: self.header.task_id,
            batch_id: None,
            epoch: self.header.epoch,
            chain: self.header.chain,
            producer: self.header.producer.clone(),
            seq,
            events: self.pending.drain(..count).collect(),
        };
        let payload = codec::encode(&frame).map_err(|source| EncodeError {
            seq,
            events: count,
            source,
        })?;

        let msg_id = frame.msg_id();
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
