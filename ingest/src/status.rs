//! Heartbeats and status changes of a batch, published on the status stream.
//!
//! Consumes the runner's counters and status transitions and produces
//! [`StatusMessage`]s on `Subjects::batch_status(task_id, batch_id)`. Status changes are
//! published in order and retried until acknowledged. A heartbeat only matters until the next
//! one, so a queued or failing heartbeat is replaced by a newer one instead of piling up.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, context::PublishError};
use monitor_core::codec::{self, CodecError};
use monitor_core::messages::{
    BatchStatus, Heartbeat, StatusChange, StatusMessage, StatusScope, MESSAGE_VERSION,
};
use monitor_core::time::now_ms;

use crate::publish::RetryingPublish;

/// Maximum status messages waiting; the oldest is dropped (and counted) beyond it.
const MAX_QUEUED: usize = 32;

/// Counters of one batch since its runner started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchCounters {
    /// Events handed to the publisher.
    pub events: u64,
    /// Feed errors: malformed frames, `ERROR` frames, failed or lost connections, dropped
    /// frames.
    pub errors: u64,
    pub malformed_frames: u64,
    /// Feed data for an address that is not a target of the batch.
    pub unknown_targets: u64,
    /// Observations older than every window of their target.
    pub too_old: u64,
    /// Events that could not be published.
    pub dropped_events: u64,
    pub last_error: Option<String>,
    /// Newest source time of an event.
    pub last_event_ms: Option<i64>,
    /// Times a feed connection was down and came back, and their summed length.
    pub gaps: u64,
    pub gap_ms: u64,
    /// Times the feed reads paused because the event buffer was full.
    pub read_pauses: u64,
}

impl BatchCounters {
    pub fn record_error(&mut self, error: String) {
        self.errors += 1;
        self.last_error = Some(error);
    }

    pub fn record_gap(&mut self, duration_ms: i64) {
        self.gaps += 1;
        self.gap_ms += duration_ms.max(0) as u64;
    }

    pub fn record_event(&mut self, source_time_ms: i64) {
        self.events += 1;
        self.last_event_ms = Some(
            self.last_event_ms
                .map_or(source_time_ms, |t| t.max(source_time_ms)),
        );
    }
}

/// Identity of the batch in status messages.
#[derive(Debug, Clone)]
pub struct StatusSource {
    pub task_id: u64,
    pub batch_id: u64,
    pub consumer_id: String,
    pub item_count: u32,
}

impl StatusSource {
    fn scope(&self) -> StatusScope {
        StatusScope::Batch {
            task_id: self.task_id,
            batch_id: self.batch_id,
        }
    }

    pub fn heartbeat(&self, counters: &BatchCounters, progress: f64) -> StatusMessage {
        StatusMessage::Heartbeat(Heartbeat {
            v: MESSAGE_VERSION,
            scope: self.scope(),
            consumer_id: self.consumer_id.clone(),
            progress,
            item_count: self.item_count,
            events: counters.events,
            errors: counters.errors,
            last_error: counters.last_error.clone(),
            last_event_ms: counters.last_event_ms,
            last_block: None,
            sent_ms: now_ms(),
        })
    }

    pub fn change(
        &self,
        status: BatchStatus,
        reason: Option<String>,
        counters: &BatchCounters,
        progress: f64,
    ) -> StatusMessage {
        StatusMessage::Change(StatusChange {
            v: MESSAGE_VERSION,
            scope: self.scope(),
            consumer_id: self.consumer_id.clone(),
            status,
            reason,
            item_count: self.item_count,
            progress,
            errors: counters.errors,
            sent_ms: now_ms(),
        })
    }
}

/// Outcome of the status message in flight.
#[derive(Debug)]
pub enum StatusOutcome {
    Sent,
    /// Failed; retried after `retry_in`.
    Retrying {
        error: PublishError,
        retry_in: Duration,
    },
    /// A failing heartbeat given up because a newer one is waiting.
    Superseded,
}

/// Queue and publisher of one batch's status messages.
pub struct StatusPublisher {
    js: jetstream::Context,
    subject: String,
    queue: VecDeque<StatusMessage>,
    in_flight: Option<(bool, RetryingPublish)>,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
}

impl StatusPublisher {
    pub fn new(js: jetstream::Context, subject: String) -> Self {
        StatusPublisher {
            js,
            subject,
            queue: VecDeque::new(),
            in_flight: None,
            dropped: 0,
        }
    }

    /// Queues a message; a heartbeat replaces any heartbeat still queued.
    pub fn push(&mut self, message: StatusMessage) {
        if matches!(message, StatusMessage::Heartbeat(_)) {
            self.queue
                .retain(|m| !matches!(m, StatusMessage::Heartbeat(_)));
        }
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(message);
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.queue.is_empty()
    }

    /// Starts publishing the next queued message when none is in flight.
    pub fn start_next(&mut self) -> Result<(), CodecError> {
        if self.in_flight.is_some() {
            return Ok(());
        }
        let Some(message) = self.queue.pop_front() else {
            return Ok(());
        };
        let payload = codec::encode(&message)?;
        let is_heartbeat = matches!(message, StatusMessage::Heartbeat(_));
        let publish = RetryingPublish::start(
            self.js.clone(),
            self.subject.clone(),
            HeaderMap::new(),
            payload.into(),
        );
        self.in_flight = Some((is_heartbeat, publish));
        Ok(())
    }

    /// Waits for the message in flight; never completes when none is. Cancel-safe.
    pub async fn next_outcome(&mut self) -> StatusOutcome {
        let Some((is_heartbeat, publish)) = &mut self.in_flight else {
            return std::future::pending().await;
        };
        match publish.outcome().await {
            Ok(_) => {
                self.in_flight = None;
                StatusOutcome::Sent
            }
            Err(_) if *is_heartbeat && self.has_queued_heartbeat() => {
                self.in_flight = None;
                StatusOutcome::Superseded
            }
            Err((error, retry_in)) => StatusOutcome::Retrying { error, retry_in },
        }
    }

    fn has_queued_heartbeat(&self) -> bool {
        self.queue
            .iter()
            .any(|m| matches!(m, StatusMessage::Heartbeat(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_reports_counters() {
        let source = StatusSource {
            task_id: 7,
            batch_id: 70,
            consumer_id: "host-1".into(),
            item_count: 4,
        };
        let mut counters = BatchCounters::default();
        counters.record_event(2_000);
        counters.record_event(1_000);
        counters.record_error("trades feed sent ERROR: quota".into());

        let StatusMessage::Heartbeat(heartbeat) = source.heartbeat(&counters, 50.0) else {
            panic!("expected a heartbeat");
        };
        assert_eq!(
            heartbeat.scope,
            StatusScope::Batch {
                task_id: 7,
                batch_id: 70
            }
        );
        assert_eq!(heartbeat.progress, 50.0);
        assert_eq!(heartbeat.item_count, 4);
        assert_eq!(heartbeat.events, 2);
        assert_eq!(heartbeat.errors, 1);
        assert_eq!(
            heartbeat.last_error.as_deref(),
            Some("trades feed sent ERROR: quota")
        );
        assert_eq!(
            heartbeat.last_event_ms,
            Some(2_000),
            "newest source time, not the last one"
        );
    }
}
