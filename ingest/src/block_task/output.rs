//! Everything a block task sends to NATS: event frames, heartbeats and status changes.
//!
//! A [`TaskOutput`] is owned by one chain runner. It consumes the runner's events, errors and
//! progress (the last block or slot). It produces frames on
//! `Subjects::chain_events(chain, task_id)` and [`StatusMessage`]s on
//! `Subjects::task_status(task_id)`. The status messages are a heartbeat every
//! `HEARTBEAT_INTERVAL` with the last block, and a status change (`running`, `error`,
//! `stopped`) whenever the task's connection state changes. On stop, [`TaskOutput::drain`] publishes what is buffered for at most
//! [`DRAIN_TIMEOUT`] and then the `stopped` status.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use monitor_core::messages::{
    BatchStatus, Event, Heartbeat, StatusChange, StatusMessage, StatusScope, MESSAGE_VERSION,
};
use monitor_core::time::now_ms;
use tokio::time::{timeout_at, Duration, Instant};
use tracing::{debug, error, info, warn};

use super::publish::{TaskFrameHeader, TaskFramePublisher};
use super::{BlockContext, BlockTaskConfig};
use crate::publish::{EncodeError, FrameOutcome};
use crate::runner::DRAIN_TIMEOUT;
use crate::status::{StatusOutcome, StatusPublisher};

/// Extra time to publish the final `stopped` status change.
const STATUS_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of one block task since its runner started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskCounters {
    pub events: u64,
    pub errors: u64,
    pub dropped_events: u64,
    pub last_error: Option<String>,
    /// Newest source time of an event.
    pub last_event_ms: Option<i64>,
    /// Last block number (EVM) or slot (Solana) processed.
    pub last_block: Option<u64>,
}

/// The publishers and counters of one block task.
pub struct TaskOutput {
    task_id: u64,
    consumer_id: String,
    frames: TaskFramePublisher,
    status: StatusPublisher,
    pub counters: TaskCounters,
    task_status: BatchStatus,
    reads_paused: bool,
    publish_failing: bool,
    status_failing: bool,
}

impl TaskOutput {
    pub fn new(context: &BlockContext, config: &BlockTaskConfig, next_seq: Arc<AtomicU64>) -> Self {
        let frames = TaskFramePublisher::new(
            context.js.clone(),
            context.subjects.chain_events(config.chain, config.task_id),
            TaskFrameHeader {
                task_id: config.task_id,
                epoch: config.epoch,
                chain: config.chain,
                producer: context.consumer_id.clone(),
            },
            next_seq,
            context.max_buffered_events,
        );
        let status = StatusPublisher::new(
            context.js.clone(),
            context.subjects.task_status(config.task_id),
        );
        TaskOutput {
            task_id: config.task_id,
            consumer_id: context.consumer_id.clone(),
            frames,
            status,
            counters: TaskCounters::default(),
            task_status: BatchStatus::Pending,
            reads_paused: false,
            publish_failing: false,
            status_failing: false,
        }
    }

    /// Buffers an event for the next frame.
    pub fn emit(&mut self, event: Event) {
        self.counters.events += 1;
        let time = event.source_time_ms;
        self.counters.last_event_ms =
            Some(self.counters.last_event_ms.map_or(time, |t| t.max(time)));
        self.frames.push(event);
    }

    /// Counts an error and keeps it as the last error of the heartbeats.
    pub fn record_error(&mut self, message: String) {
        self.counters.errors += 1;
        self.counters.last_error = Some(message);
    }

    pub fn set_last_block(&mut self, number: u64) {
        self.counters.last_block = Some(number);
    }

    /// Starts the next frame and status publishes when nothing of their kind is in flight.
    pub fn start_publishes(&mut self) {
        if let Err(error) = self.frames.start_next() {
            self.on_encode_error(error);
        }
        if let Err(error) = self.status.start_next() {
            error!(task_id = self.task_id, error = %error, "failed to encode a status message, it is dropped");
        }
    }

    /// Waits for the next publish outcome and handles it. Cancel-safe; never completes while
    /// nothing is in flight.
    pub async fn settle(&mut self) {
        tokio::select! {
            outcome = self.frames.next_outcome() => self.on_frame_outcome(outcome),
            outcome = self.status.next_outcome() => self.on_status_outcome(outcome),
        }
    }

    /// Returns whether the runner should read its chain socket: reads pause while the event
    /// buffer is full and resume once it is half empty.
    pub fn reads_allowed(&mut self) -> bool {
        if !self.reads_paused && self.frames.is_full() {
            warn!(
                task_id = self.task_id,
                buffered = self.frames.len(),
                "event buffer full, chain reads paused until NATS acknowledges"
            );
            self.reads_paused = true;
        } else if self.reads_paused && self.frames.is_half_empty() {
            info!(
                task_id = self.task_id,
                buffered = self.frames.len(),
                "event buffer half empty, chain reads resumed"
            );
            self.reads_paused = false;
        }
        !self.reads_paused
    }

    pub fn queue_heartbeat(&mut self) {
        let heartbeat = StatusMessage::Heartbeat(Heartbeat {
            v: MESSAGE_VERSION,
            scope: StatusScope::Task {
                task_id: self.task_id,
            },
            consumer_id: self.consumer_id.clone(),
            progress: self.progress(),
            item_count: 0,
            events: self.counters.events,
            errors: self.counters.errors,
            last_error: self.counters.last_error.clone(),
            last_event_ms: self.counters.last_event_ms,
            last_block: self.counters.last_block,
            sent_ms: now_ms(),
        });
        debug!(task_id = self.task_id, last_block = ?self.counters.last_block, "heartbeat");
        self.status.push(heartbeat);
    }

    /// Publishes a status change when `status` differs from the current one.
    pub fn set_status(&mut self, status: BatchStatus, reason: Option<String>) {
        if status == self.task_status {
            return;
        }
        info!(task_id = self.task_id, from = %self.task_status, to = %status, reason = reason.as_deref().unwrap_or(""), "block task status changed");
        self.task_status = status;
        let change = StatusMessage::Change(StatusChange {
            v: MESSAGE_VERSION,
            scope: StatusScope::Task {
                task_id: self.task_id,
            },
            consumer_id: self.consumer_id.clone(),
            status,
            reason,
            item_count: 0,
            progress: self.progress(),
            errors: self.counters.errors,
            sent_ms: now_ms(),
        });
        self.status.push(change);
    }

    pub fn status(&self) -> BatchStatus {
        self.task_status
    }

    /// 100 while the task follows its chain, 0 otherwise: a block task has no targets to count.
    fn progress(&self) -> f64 {
        if self.task_status == BatchStatus::Running {
            100.0
        } else {
            0.0
        }
    }

    fn on_frame_outcome(&mut self, outcome: FrameOutcome) {
        match outcome {
            FrameOutcome::Acked {
                seq,
                events,
                duplicate,
            } => {
                if self.publish_failing {
                    info!(
                        task_id = self.task_id,
                        seq, "event frame published again after failures"
                    );
                    self.publish_failing = false;
                }
                debug!(
                    task_id = self.task_id,
                    seq, events, duplicate, "event frame acknowledged"
                );
            }
            FrameOutcome::Retrying {
                seq,
                msg_id,
                attempt,
                error,
                retry_in,
            } => {
                self.publish_failing = true;
                warn!(
                    task_id = self.task_id,
                    seq,
                    msg_id = %msg_id,
                    attempt,
                    error = %error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    buffered = self.frames.len(),
                    "event frame publish failed, retrying with the same msg id"
                );
            }
            FrameOutcome::Dropped { seq, events, error } => {
                error!(task_id = self.task_id, seq, events, error = %error, "event frame can never be published, its events are dropped");
                self.counters.dropped_events += events as u64;
                self.record_error(format!("frame {seq} with {events} events dropped: {error}"));
            }
        }
    }

    fn on_encode_error(&mut self, error: EncodeError) {
        error!(task_id = self.task_id, seq = error.seq, events = error.events, error = %error.source, "failed to encode an event frame, its events are dropped");
        self.counters.dropped_events += error.events as u64;
        self.record_error(error.to_string());
    }

    fn on_status_outcome(&mut self, outcome: StatusOutcome) {
        match outcome {
            StatusOutcome::Sent => {
                if self.status_failing {
                    info!(
                        task_id = self.task_id,
                        "status published again after failures"
                    );
                    self.status_failing = false;
                }
            }
            StatusOutcome::Retrying { error, retry_in } => {
                if !self.status_failing {
                    warn!(task_id = self.task_id, error = %error, retry_in_ms = retry_in.as_millis() as u64, "status publish failed, retrying");
                }
                self.status_failing = true;
            }
            StatusOutcome::Superseded => debug!(
                task_id = self.task_id,
                "failing heartbeat replaced by a newer one"
            ),
        }
    }

    /// Publishes what is buffered (for at most [`DRAIN_TIMEOUT`]), then reports `stopped`
    /// with `reason`.
    pub async fn drain(mut self, reason: Option<String>) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.frames.is_empty() {
            self.start_publishes();
            match timeout_at(deadline, self.frames.next_outcome()).await {
                Ok(outcome) => self.on_frame_outcome(outcome),
                Err(_) => break,
            }
        }
        let lost = self.frames.len();
        if lost > 0 {
            error!(
                task_id = self.task_id,
                events = lost,
                "block task stopped before NATS acknowledged these events, they are dropped"
            );
            self.counters.dropped_events += lost as u64;
        }

        self.set_status(BatchStatus::Stopped, reason);
        let status_deadline = Instant::now() + STATUS_DRAIN_TIMEOUT;
        while !self.status.is_idle() {
            self.start_publishes();
            match timeout_at(status_deadline, self.status.next_outcome()).await {
                Ok(outcome) => self.on_status_outcome(outcome),
                Err(_) => {
                    warn!(
                        task_id = self.task_id,
                        "stopped status not acknowledged in time"
                    );
                    break;
                }
            }
        }
        info!(
            task_id = self.task_id,
            events = self.counters.events,
            errors = self.counters.errors,
            dropped_events = self.counters.dropped_events,
            last_block = ?self.counters.last_block,
            "block task runner stopped"
        );
    }
}
