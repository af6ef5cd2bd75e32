//! Alert forwarding: from the alerts stream into `monitor_alert_log_v2`, then to the Java
//! WebSocket.
//!
//! Consumes the durable pull consumer `notify_alerts`. For each alert, in this order: insert
//! the row (or find the one an earlier delivery inserted), push the `alert` message, mark the
//! row `pushed`, ack. The table is the outbox: once the row is stored, the message is acked
//! even when the socket is down. Rows still `pending` are pushed, oldest `event_time` first,
//! at the start of every WebSocket session (so also after a restart) before anything newer.
//! A row is never inserted twice. A push may repeat (delivery is at least once) when a session
//! ends or MySQL fails between the push and the `pushed` mark.
//!
//! An alert id delivered again with a new state (provisional to confirmed or retracted,
//! confirmed to retracted) updates the row and pushes `alert_update`, or the whole `alert` if
//! the Java side has not seen the row yet. Only the payload's `id` and `state` matter here,
//! not the `Nats-Msg-Id`: evaluate publishes a block alert under `<id>:<state>`, because the
//! alerts stream drops a second message with the same msg id within its 10-minute duplicate
//! window, and a state change published under the bare id would be lost.
//!
//! While MySQL is unavailable, the alert in hand is kept: it is neither acked nor nak'ed, the
//! server is told that it is still in progress, and the insert is tried again with backoff
//! until MySQL returns. Alerts behind it stay in the stream. The outage is logged when it
//! starts and when it ends ([`DbHealth`]). An alert that MySQL rejects as invalid data, or one
//! that cannot be decoded, goes to the dead stream.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::Alert;
use monitor_core::time::now_ms;
use monitor_core::{titles, Locale, Subjects};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument};

use crate::alert_log::{is_state_change, AlertLog, AlertLogError, NotifyStatus, PendingCursor};
use crate::counters::AlertCounters;
use crate::db_health::DbHealth;
use crate::java_messages;
use crate::java_ws::JavaWs;
use crate::jetstream::{acknowledge, dead_letter, messages, JetStreamError};
use crate::metrics;

/// First pause before an insert is tried again while MySQL is unavailable; it doubles after
/// each failure.
const DB_RETRY_MIN: Duration = Duration::from_millis(500);
/// Maximum pause between two attempts. With the pool's 10 s acquire timeout, an attempt and
/// its pause stay far below the consumer's 60 s ack wait, and every attempt renews it.
const DB_RETRY_MAX: Duration = Duration::from_secs(5);
/// Period of the retry of an interrupted outbox flush.
const FLUSH_RETRY_PERIOD: Duration = Duration::from_secs(5);
/// Rows read per query while pushing the outbox.
const FLUSH_PAGE: u32 = 200;

/// Forwards alerts from the stream to the log and the Java WebSocket.
pub struct AlertForwarder {
    log: AlertLog,
    ws: JavaWs,
    js: jetstream::Context,
    subjects: Subjects,
    locale: Locale,
    db: DbHealth,
    counters: AlertCounters,
    outbox: OutboxState,
}

/// Whether the outbox was pushed completely in the current WebSocket session.
#[derive(Debug, Default)]
struct OutboxState {
    flushed_session: Option<u64>,
    /// Set when a push or a `pushed` mark failed, so pending rows may be left behind.
    dirty: bool,
}

/// Outcome of a MySQL write retried while MySQL is unavailable.
enum Stored<T> {
    Done(T),
    /// MySQL rejected the data itself; retrying cannot help.
    Rejected(AlertLogError),
    /// The stage is shutting down before MySQL returned.
    Interrupted,
}

impl AlertForwarder {
    pub fn new(
        log: AlertLog,
        ws: JavaWs,
        js: jetstream::Context,
        subjects: Subjects,
        locale: Locale,
        db: DbHealth,
        counters: AlertCounters,
    ) -> Self {
        AlertForwarder {
            log,
            ws,
            js,
            subjects,
            locale,
            db,
            counters,
            outbox: OutboxState::default(),
        }
    }

    /// Consumes alerts until `shutdown`; the alert in hand is finished first.
    pub async fn run(
        mut self,
        consumer: PullConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), JetStreamError> {
        let name = Subjects::NOTIFY_ALERTS_CONSUMER;
        let mut stream = messages(&consumer, name).await?;
        let mut connection = self.ws.watch();
        let mut retry = tokio::time::interval(FLUSH_RETRY_PERIOD);

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = connection.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.flush_if_behind().await;
                }
                _ = retry.tick() => self.flush_if_behind().await,
                next = stream.next() => match next {
                    Some(Ok(message)) => metrics::time_alert(self.handle(message, &shutdown)).await,
                    Some(Err(error)) => tracing::warn!(consumer = name, error = %error, "failed to pull alerts, retrying"),
                    None => {
                        tracing::warn!(consumer = name, "alert consumer stream ended, reopening it");
                        stream = messages(&consumer, name).await?;
                    }
                },
            }
        }
        info!("alert forwarder stopped");
        Ok(())
    }

    #[instrument(skip_all, fields(subject = %message.subject))]
    async fn handle(&mut self, message: Message, shutdown: &CancellationToken) {
        let alert = match codec::decode::<Alert>(&message.payload) {
            Ok(alert) => alert,
            Err(error) => {
                dead_letter(&self.js, &self.subjects, &message, &error.to_string()).await;
                return;
            }
        };
        metrics::alert_received(&alert);
        let title = titles::alert_title(&alert, self.locale);
        let alert_data = java_messages::alert_data(&alert, &title);

        let log = &self.log;
        let stored = until_stored(&self.db, &message, shutdown, || {
            log.insert(&alert, &title, &alert_data)
        })
        .await;
        let logged = match stored {
            Stored::Done(logged) => logged,
            Stored::Rejected(error) => {
                dead_letter(&self.js, &self.subjects, &message, &error.to_string()).await;
                return;
            }
            Stored::Interrupted => {
                // Not stored: the next run, or another instance, gets the alert at once.
                acknowledge(&message, AckKind::Nak(None)).await;
                return;
            }
        };
        self.counters.invalidate(alert.task_id);

        let outgoing = if is_state_change(logged.state, alert.state) {
            let received = (logged.notify_status == NotifyStatus::Pushed).then_some(logged.state);
            let updated = until_stored(&self.db, &message, shutdown, || {
                log.update_state(logged.id, alert.state, received)
            })
            .await;
            if !matches!(updated, Stored::Done(())) {
                // Only shutdown interrupts a state update (its errors are never permanent):
                // the stream delivers the alert again to the next run.
                acknowledge(&message, AckKind::Nak(None)).await;
                return;
            }
            info!(alert_key = %alert.id, alert_row = logged.id, state = alert.state.as_str(), "alert changed state");
            // A row the Java side has not seen yet is pushed whole, with its new state.
            match logged.notify_status {
                NotifyStatus::Pushed => Some(java_messages::alert_update(
                    logged.id,
                    alert.state,
                    self.locale,
                    now_ms(),
                )),
                NotifyStatus::Pending => Some(java_messages::alert(
                    logged.id,
                    alert.alert_type.as_str(),
                    with_state(alert_data, &alert),
                    now_ms(),
                )),
            }
        } else if logged.notify_status == NotifyStatus::Pending {
            Some(java_messages::alert(
                logged.id,
                alert.alert_type.as_str(),
                alert_data,
                now_ms(),
            ))
        } else {
            debug!(alert_key = %alert.id, alert_row = logged.id, "alert already pushed, acking the redelivery");
            None
        };
        if let Some(outgoing) = outgoing {
            self.deliver(logged.id, &outgoing).await;
        }
        // The row is stored: from here on the table, not the stream, guarantees the push.
        acknowledge(&message, AckKind::Ack).await;
    }

    /// Pushes the message of a pending row, after the rows that wait before it.
    async fn deliver(&mut self, id: u64, message: &Value) {
        let connection = self.ws.connection();
        if !connection.connected {
            self.outbox.dirty = true;
            debug!(alert_row = id, "java websocket down, alert stays pending");
            return;
        }
        if self.outbox.dirty || self.outbox.flushed_session != Some(connection.session) {
            // The row is pending in the table too, so the flush pushes it in its turn.
            self.flush(connection.session).await;
            return;
        }
        self.push(id, message).await;
    }

    /// Pushes the outbox if this session has not seen it yet or a push failed.
    async fn flush_if_behind(&mut self) {
        let connection = self.ws.connection();
        let behind = self.outbox.dirty || self.outbox.flushed_session != Some(connection.session);
        if connection.connected && behind {
            self.flush(connection.session).await;
        }
    }

    /// Pushes every pending row, oldest `event_time` first: as `alert_update` when the Java side
    /// received the row before in another state, else as `alert`. Stops at the first failure
    /// and leaves the outbox dirty so that a later call resumes.
    async fn flush(&mut self, session: u64) {
        self.outbox = OutboxState {
            flushed_session: Some(session),
            dirty: false,
        };
        let mut cursor = PendingCursor::start();
        let mut pushed = 0usize;
        loop {
            let page = match self.log.pending_after(cursor, FLUSH_PAGE).await {
                Ok(page) => {
                    self.db.available();
                    page
                }
                Err(error) => {
                    self.db.failed(&error);
                    self.outbox.dirty = true;
                    return;
                }
            };
            for row in &page {
                let message = match row.changed_state() {
                    Some(state) => {
                        java_messages::alert_update(row.id, state, self.locale, now_ms())
                    }
                    None => java_messages::alert(
                        row.id,
                        &row.alert_type,
                        row.alert_data.clone(),
                        now_ms(),
                    ),
                };
                if !self.push(row.id, &message).await {
                    return;
                }
                pushed += 1;
            }
            match page.last() {
                Some(last) if page.len() == FLUSH_PAGE as usize => {
                    cursor = PendingCursor::after(last)
                }
                _ => break,
            }
        }
        if pushed > 0 {
            info!(
                session,
                pushed, "pushed pending alerts to the java websocket"
            );
        }
    }

    /// Sends the message of row `id` and marks the row pushed; returns whether both succeeded.
    async fn push(&mut self, id: u64, message: &Value) -> bool {
        if !self.ws.send(message).await {
            self.outbox.dirty = true;
            debug!(alert_row = id, "push failed, alert stays pending");
            return false;
        }
        match self.log.mark_pushed(id).await {
            Ok(()) => {
                self.db.available();
                debug!(alert_row = id, message_type = %message["type"], "pushed alert");
                metrics::alert_pushed();
                true
            }
            Err(error) => {
                // The row stays pending and is pushed again later: a repeat, never a loss.
                self.db.failed(&error);
                self.outbox.dirty = true;
                false
            }
        }
    }
}

/// The alert's `alertData` with the state of this delivery, as [`AlertLog::update_state`]
/// stores it.
fn with_state(mut alert_data: Value, alert: &Alert) -> Value {
    alert_data["state"] = Value::from(alert.state.as_str());
    alert_data
}

/// Runs the MySQL write `attempt` until it succeeds, keeping `message` in progress while
/// MySQL is unavailable. Returns [`Stored::Interrupted`] when `shutdown` comes first.
async fn until_stored<T, F, Fut>(
    health: &DbHealth,
    message: &Message,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Stored<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AlertLogError>>,
{
    let mut delay = DB_RETRY_MIN;
    loop {
        match attempt().await {
            Ok(value) => {
                health.available();
                return Stored::Done(value);
            }
            Err(error) if error.is_permanent() => return Stored::Rejected(error),
            Err(error) => health.failed(&error),
        }
        // Without this the server would deliver the message again after the ack wait.
        acknowledge(message, AckKind::Progress).await;
        tokio::select! {
            _ = shutdown.cancelled() => return Stored::Interrupted,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(DB_RETRY_MAX);
    }
}
