//! Status forwarding: heartbeats and status changes from the status stream to the Java
//! WebSocket.
//!
//! Consumes the durable pull consumer `notify_status`. A heartbeat becomes `batch_heartbeat`
//! (or `task_heartbeat` for a block task) and is sent only while the socket is connected and
//! the heartbeat is fresh, because a late heartbeat does not show that the batch is alive now.
//! A status change becomes `batch_status` (or `task_status`) and is kept as the latest status
//! of its batch or task, in memory and in the [`StatusStore`] bucket, before it is acked. At
//! the start of every WebSocket session the latest statuses are sent once, oldest first,
//! before anything else, so the Java side never keeps a status it missed during an outage.
//! The stored statuses are read at start, so this holds after a restart of notify too.
//! Heartbeats are acked once handled, sent or not; a change that could not be stored is
//! nak'ed and delivered again.
//!
//! Every message sent carries the alert counters of its batch or task ([`AlertCounters`]).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::{BatchStatus, Heartbeat, StatusChange, StatusMessage, StatusScope};
use monitor_core::{Locale, Subjects};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::counters::AlertCounters;
use crate::java_messages;
use crate::java_ws::JavaWs;
use crate::jetstream::{acknowledge, dead_letter, DurableConsumer, JetStreamError, StreamEnd};
use crate::status_store::{StatusStore, StatusStoreError};

/// Age after which a heartbeat is stale: two heartbeat intervals of 30 s.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(60);
/// A stopped or completed batch is forgotten after this long without news; running ones are
/// kept however old their last change is.
const FINISHED_STATUS_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Delay before a change that could not be stored is delivered again.
const STORE_RETRY_DELAY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StatusForwarderError {
    #[error(transparent)]
    Consumer(#[from] JetStreamError),
    #[error("failed to read the stored statuses at start: {0}")]
    Restore(#[from] StatusStoreError),
}

/// Forwards heartbeats and status changes to the Java WebSocket.
pub struct StatusForwarder {
    ws: JavaWs,
    js: jetstream::Context,
    subjects: Subjects,
    locale: Locale,
    store: StatusStore,
    counters: AlertCounters,
    heartbeat_max_age: Duration,
    latest: LatestStatus,
    resent_session: Option<u64>,
}

impl StatusForwarder {
    pub fn new(
        ws: JavaWs,
        js: jetstream::Context,
        subjects: Subjects,
        locale: Locale,
        store: StatusStore,
        counters: AlertCounters,
    ) -> Self {
        StatusForwarder {
            ws,
            js,
            subjects,
            locale,
            store,
            counters,
            heartbeat_max_age: HEARTBEAT_MAX_AGE,
            latest: LatestStatus::default(),
            resent_session: None,
        }
    }

    /// Reads the stored statuses, then consumes status messages until `shutdown`.
    pub async fn run(
        mut self,
        mut consumer: DurableConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), StatusForwarderError> {
        self.restore().await?;
        let name = consumer.name();
        let mut stream = consumer.messages().await?;
        let mut connection = self.ws.watch();

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = connection.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.resend_if_new_session().await;
                }
                next = stream.next() => {
                    let end = match next {
                        Some(Ok(message)) => {
                            self.handle(message).await;
                            continue;
                        }
                        Some(Err(error)) => {
                            warn!(consumer = name, error = %error, "failed to pull status messages, reopening the stream");
                            StreamEnd::of(Some(&error))
                        }
                        None => {
                            warn!(consumer = name, "status consumer stream ended, reopening it");
                            StreamEnd::Failed
                        }
                    };
                    match consumer.reopen(end, &shutdown).await {
                        Some(reopened) => stream = reopened,
                        None => break,
                    }
                }
            }
        }
        info!("status forwarder stopped");
        Ok(())
    }

    /// Loads the latest statuses that an earlier run stored.
    async fn restore(&mut self) -> Result<(), StatusStoreError> {
        let stored = self.store.load().await?;
        let count = stored.len();
        for change in stored {
            self.latest.record(&change);
        }
        info!(
            statuses = count,
            "restored the latest statuses of batches and tasks"
        );
        Ok(())
    }

    #[instrument(skip_all, fields(subject = %message.subject))]
    async fn handle(&mut self, message: Message) {
        match codec::decode::<StatusMessage>(&message.payload) {
            Ok(StatusMessage::Heartbeat(heartbeat)) => self.forward_heartbeat(&heartbeat).await,
            Ok(StatusMessage::Change(change)) => {
                if !self.forward_change(change).await {
                    // Not stored: the stream delivers the change again.
                    acknowledge(&message, AckKind::Nak(Some(STORE_RETRY_DELAY))).await;
                    return;
                }
            }
            Err(error) => {
                dead_letter(&self.js, &self.subjects, &message, &error.to_string()).await;
                return;
            }
        }
        acknowledge(&message, AckKind::Ack).await;
    }

    async fn forward_heartbeat(&mut self, heartbeat: &Heartbeat) {
        let age_ms = monitor_core::time::now_ms() - heartbeat.sent_ms;
        if age_ms > self.heartbeat_max_age.as_millis() as i64 {
            debug!(scope = ?heartbeat.scope, age_ms, "dropping a stale heartbeat");
            return;
        }
        if !self.ws.connection().connected {
            debug!(scope = ?heartbeat.scope, "java websocket down, dropping a heartbeat");
            return;
        }
        self.resend_if_new_session().await;
        let counts = self.counters.of_scope(heartbeat.scope).await;
        if !self
            .ws
            .send(&java_messages::heartbeat(heartbeat, counts))
            .await
        {
            debug!(scope = ?heartbeat.scope, "failed to send a heartbeat, dropping it");
        }
    }

    /// Keeps, stores and sends a status change; returns false when it could not be stored.
    async fn forward_change(&mut self, change: StatusChange) -> bool {
        if !self.latest.record(&change) {
            debug!(scope = ?change.scope, sent_ms = change.sent_ms, "ignoring a status older than the one already known");
            return true;
        }
        if let Err(error) = self.store.save(&change).await {
            warn!(scope = ?change.scope, error = %error, "failed to store a status change, it will be delivered again");
            return false;
        }
        if !self.ws.connection().connected {
            debug!(scope = ?change.scope, status = %change.status, "java websocket down, status is sent after the reconnect");
            return true;
        }
        if self.resend_if_new_session().await {
            // The resend included this change.
            return true;
        }
        if self.send_change(&change).await {
            info!(scope = ?change.scope, status = %change.status, "forwarded a status change");
        }
        true
    }

    async fn send_change(&self, change: &StatusChange) -> bool {
        let counts = self.counters.of_scope(change.scope).await;
        self.ws
            .send(&java_messages::status_change(change, self.locale, counts))
            .await
    }

    /// Sends the latest status of every batch and task once per session; returns whether it
    /// did so now.
    async fn resend_if_new_session(&mut self) -> bool {
        let connection = self.ws.connection();
        if !connection.connected || self.resent_session == Some(connection.session) {
            return false;
        }
        self.resent_session = Some(connection.session);
        self.forget_finished().await;

        let mut sent = 0usize;
        for change in self.latest.oldest_first() {
            if !self.send_change(&change).await {
                // The session ended; the next one sends everything again.
                break;
            }
            sent += 1;
        }
        if sent > 0 {
            info!(
                session = connection.session,
                sent, "sent the latest statuses after connecting"
            );
        }
        true
    }

    /// Drops the finished batches and tasks that had no news for a day, here and in the
    /// store. A failed delete leaves the entry stored, so a later start sends it once more.
    async fn forget_finished(&mut self) {
        for scope in self.latest.forget_finished(monitor_core::time::now_ms()) {
            if let Err(error) = self.store.forget(scope).await {
                warn!(scope = ?scope, error = %error, "failed to delete a finished status from the store");
            }
        }
    }
}

/// Key of a batch or a task in [`LatestStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ScopeKey {
    Batch(u64),
    Task(u64),
}

impl From<StatusScope> for ScopeKey {
    fn from(scope: StatusScope) -> Self {
        match scope {
            StatusScope::Batch { batch_id, .. } => ScopeKey::Batch(batch_id),
            StatusScope::Task { task_id } => ScopeKey::Task(task_id),
        }
    }
}

/// The newest status change of every batch and task.
#[derive(Debug, Default)]
struct LatestStatus {
    changes: HashMap<ScopeKey, StatusChange>,
}

impl LatestStatus {
    /// Keeps `change` unless a newer one is known; returns whether it was kept.
    fn record(&mut self, change: &StatusChange) -> bool {
        let key = ScopeKey::from(change.scope);
        match self.changes.get(&key) {
            Some(known) if known.sent_ms > change.sent_ms => false,
            _ => {
                self.changes.insert(key, change.clone());
                true
            }
        }
    }

    fn oldest_first(&self) -> Vec<StatusChange> {
        let mut changes: Vec<_> = self.changes.values().cloned().collect();
        changes.sort_by_key(|c| c.sent_ms);
        changes
    }

    /// Drops stopped and completed entries that have had no news for a day, so the map does
    /// not grow with every batch the pipeline ever ran; returns their scopes.
    fn forget_finished(&mut self, now_ms: i64) -> Vec<StatusScope> {
        let retention_ms = FINISHED_STATUS_RETENTION.as_millis() as i64;
        let mut forgotten = Vec::new();
        self.changes.retain(|_, change| {
            let finished = matches!(change.status, BatchStatus::Stopped | BatchStatus::Completed);
            let forget = finished && now_ms - change.sent_ms > retention_ms;
            if forget {
                forgotten.push(change.scope);
            }
            !forget
        });
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_core::messages::MESSAGE_VERSION;

    fn change(batch_id: u64, status: BatchStatus, sent_ms: i64) -> StatusChange {
        StatusChange {
            v: MESSAGE_VERSION,
            scope: StatusScope::Batch {
                task_id: 1,
                batch_id,
            },
            consumer_id: "c-1".into(),
            status,
            reason: None,
            item_count: 10,
            progress: 0.0,
            errors: 0,
            sent_ms,
        }
    }

    #[test]
    fn latest_status_ignores_older_change() {
        let mut latest = LatestStatus::default();
        assert!(latest.record(&change(7, BatchStatus::Running, 2_000)));
        assert!(!latest.record(&change(7, BatchStatus::Pending, 1_000)));
        assert_eq!(latest.oldest_first()[0].status, BatchStatus::Running);
    }

    #[test]
    fn latest_status_lists_batches_oldest_first() {
        let mut latest = LatestStatus::default();
        latest.record(&change(2, BatchStatus::Running, 3_000));
        latest.record(&change(1, BatchStatus::Paused, 1_000));
        let order: Vec<_> = latest.oldest_first().iter().map(|c| c.sent_ms).collect();
        assert_eq!(order, vec![1_000, 3_000]);
    }

    #[test]
    fn finished_batches_are_forgotten_after_a_day_but_running_ones_kept() {
        let day_ms = 24 * 3600 * 1000;
        let mut latest = LatestStatus::default();
        latest.record(&change(1, BatchStatus::Stopped, 0));
        latest.record(&change(2, BatchStatus::Running, 0));
        latest.record(&change(3, BatchStatus::Completed, day_ms));

        let forgotten = latest.forget_finished(day_ms + 1);

        assert_eq!(
            forgotten,
            vec![StatusScope::Batch {
                task_id: 1,
                batch_id: 1
            }]
        );
        let kept: Vec<_> = latest.oldest_first().iter().map(|c| c.scope).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains(&StatusScope::Batch {
            task_id: 1,
            batch_id: 2
        }));
        assert!(kept.contains(&StatusScope::Batch {
            task_id: 1,
            batch_id: 3
        }));
    }
}
