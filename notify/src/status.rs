//! Status forwarding: heartbeats and status changes from the status stream to the Java
//! WebSocket.
//!
//! Consumes the durable pull consumer `notify_status`. A heartbeat becomes `batch_heartbeat`
//! (or `task_heartbeat` for a block task) and is sent only while the socket is connected and
//! the heartbeat is fresh, because a late heartbeat does not show that the batch is alive now.
//! A status change becomes `batch_status` (or `task_status`) and is remembered as the latest
//! status of its batch or task; at the start of every WebSocket session the latest statuses
//! are sent once, oldest first, before anything else, so the Java side never keeps a status
//! it missed during an outage. Every message is acked once handled, sent or not: the
//! remembered statuses cover what a down socket missed.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::{BatchStatus, Heartbeat, StatusChange, StatusMessage, StatusScope};
use monitor_core::{Locale, Subjects};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::java_messages;
use crate::java_ws::JavaWs;
use crate::jetstream::{acknowledge, dead_letter, messages, JetStreamError};

/// Age after which a heartbeat is stale: two heartbeat intervals of 30 s.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(60);
/// A stopped or completed batch is forgotten after this long without news; running ones are
/// kept however old their last change is.
const FINISHED_STATUS_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Forwards heartbeats and status changes to the Java WebSocket.
pub struct StatusForwarder {
    ws: JavaWs,
    js: jetstream::Context,
    subjects: Subjects,
    locale: Locale,
    heartbeat_max_age: Duration,
    latest: LatestStatus,
    resent_session: Option<u64>,
}

impl StatusForwarder {
    pub fn new(ws: JavaWs, js: jetstream::Context, subjects: Subjects, locale: Locale) -> Self {
        StatusForwarder {
            ws,
            js,
            subjects,
            locale,
            heartbeat_max_age: HEARTBEAT_MAX_AGE,
            latest: LatestStatus::default(),
            resent_session: None,
        }
    }

    /// Consumes status messages until `shutdown`.
    pub async fn run(
        mut self,
        consumer: PullConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), JetStreamError> {
        let name = Subjects::NOTIFY_STATUS_CONSUMER;
        let mut stream = messages(&consumer, name).await?;
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
                next = stream.next() => match next {
                    Some(Ok(message)) => self.handle(message).await,
                    Some(Err(error)) => warn!(consumer = name, error = %error, "failed to pull status messages, retrying"),
                    None => {
                        warn!(consumer = name, "status consumer stream ended, reopening it");
                        stream = messages(&consumer, name).await?;
                    }
                },
            }
        }
        info!("status forwarder stopped");
        Ok(())
    }

    #[instrument(skip_all, fields(subject = %message.subject))]
    async fn handle(&mut self, message: Message) {
        match codec::decode::<StatusMessage>(&message.payload) {
            Ok(StatusMessage::Heartbeat(heartbeat)) => self.forward_heartbeat(&heartbeat).await,
            Ok(StatusMessage::Change(change)) => self.forward_change(change).await,
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
        if !self.ws.send(&java_messages::heartbeat(heartbeat)).await {
            debug!(scope = ?heartbeat.scope, "failed to send a heartbeat, dropping it");
        }
    }

    async fn forward_change(&mut self, change: StatusChange) {
        if !self.latest.record(&change) {
            debug!(scope = ?change.scope, sent_ms = change.sent_ms, "ignoring a status older than the one already known");
            return;
        }
        if !self.ws.connection().connected {
            debug!(scope = ?change.scope, status = %change.status, "java websocket down, status is sent after the reconnect");
            return;
        }
        if self.resend_if_new_session().await {
            // The resend included this change.
            return;
        }
        if self
            .ws
            .send(&java_messages::status_change(&change, self.locale))
            .await
        {
            info!(scope = ?change.scope, status = %change.status, "forwarded a status change");
        }
    }

    /// Sends the latest status of every batch and task once per session; returns whether it
    /// did so now.
    async fn resend_if_new_session(&mut self) -> bool {
        let connection = self.ws.connection();
        if !connection.connected || self.resent_session == Some(connection.session) {
            return false;
        }
        self.resent_session = Some(connection.session);
        self.latest.forget_finished(monitor_core::time::now_ms());

        let mut sent = 0usize;
        for change in self.latest.oldest_first() {
            if !self
                .ws
                .send(&java_messages::status_change(change, self.locale))
                .await
            {
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
///
/// NOTE: kept in memory only, so after a restart of notify a status is sent again only once
/// its producer publishes a new change.
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

    fn oldest_first(&self) -> Vec<&StatusChange> {
        let mut changes: Vec<_> = self.changes.values().collect();
        changes.sort_by_key(|c| c.sent_ms);
        changes
    }

    /// Drops stopped and completed entries that have had no news for a day, so the map does
    /// not grow with every batch the pipeline ever ran.
    fn forget_finished(&mut self, now_ms: i64) {
        let retention_ms = FINISHED_STATUS_RETENTION.as_millis() as i64;
        self.changes.retain(|_, change| {
            let finished = matches!(change.status, BatchStatus::Stopped | BatchStatus::Completed);
            !(finished && now_ms - change.sent_ms > retention_ms)
        });
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

        latest.forget_finished(day_ms + 1);

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
