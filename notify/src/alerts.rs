//! Alert forwarding: from the alerts stream into `monitor_alert_log_v2`, then to the Java
//! WebSocket.
//!
//! Consumes the durable pull consumer `notify_alerts`. Alerts are handled in batches of those
//! already received (one alone when the load is low, up to [`MAX_BATCH`] under load), in this
//! order: insert the rows (or find the ones an earlier delivery inserted) in one statement,
//! push the `alert` messages, ack, and mark the rows `pushed` in one statement in the
//! background. A batch costs one MySQL commit before its push whatever its size, which is
//! what lets notify keep up with a busy stream. The table is the outbox: once the row is stored, the message is acked
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

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::Message;
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use monitor_core::codec;
use monitor_core::messages::Alert;
use monitor_core::time::now_ms;
use monitor_core::{titles, Locale, Subjects};
use serde_json::Value;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument};

use crate::alert_log::{
    is_state_change, AlertLog, AlertLogError, LoggedAlert, NewAlertRow, NotifyStatus, PendingCursor,
};
use crate::counters::AlertCounters;
use crate::db_health::DbHealth;
use crate::java_messages;
use crate::java_ws::JavaWs;
use crate::jetstream::{acknowledge, dead_letter, DurableConsumer, JetStreamError, StreamEnd};
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
/// Maximum alerts handled together, the size of one pull from the stream. Alerts that arrive
/// while a batch is being stored wait for the next one, so batches grow only under load.
const MAX_BATCH: usize = 64;
/// Maximum `pushed` marks written at once. Beyond it, a push waits for the oldest.
const MAX_MARKS_IN_FLIGHT: usize = 8;

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
    /// `pushed` marks being written, each with the rows it marks.
    marks: JoinSet<(Vec<u64>, Result<(), AlertLogError>)>,
    /// Rows pushed whose `pushed` mark is not written yet, which are still `pending` in the table.
    unmarked: HashSet<u64>,
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
            marks: JoinSet::new(),
            unmarked: HashSet::new(),
        }
    }

    /// Consumes alerts until `shutdown`; the alert in hand is finished first.
    pub async fn run(
        mut self,
        mut consumer: DurableConsumer,
        shutdown: CancellationToken,
    ) -> Result<(), JetStreamError> {
        let mut stream = consumer.messages().await?;
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
                next = stream.next() => {
                    let end = match next {
                        Some(Ok(message)) => {
                            let (batch, end) = take_ready(message, &mut stream);
                            metrics::time_alerts(batch.len(), self.handle(batch, &shutdown)).await;
                            end
                        }
                        Some(Err(error)) => Some(log_reopen(Some(&error))),
                        None => Some(log_reopen(None)),
                    };
                    if let Some(end) = end {
                        match consumer.reopen(end, &shutdown).await {
                            Some(reopened) => stream = reopened,
                            None => break,
                        }
                    }
                }
            }
        }
        self.settle_marks().await;
        info!("alert forwarder stopped");
        Ok(())
    }

    /// Handles a batch of alerts taken from the stream in one go: their rows are inserted in
    /// one commit and their `pushed` marks written in another. Alert ids repeat in a batch only
    /// when a block alert changes state quickly. The batch is cut before a repeated id, so that
    /// the second delivery reads the row the first one stored.
    #[instrument(skip_all, fields(alerts = messages.len()))]
    async fn handle(&mut self, messages: Vec<Message>, shutdown: &CancellationToken) {
        self.reap_marks();
        let mut run: Vec<Received> = Vec::with_capacity(messages.len());
        for message in messages {
            let Some(received) = self.decode(message).await else {
                continue;
            };
            if run.iter().any(|r| r.alert.id == received.alert.id) {
                self.store_and_forward(std::mem::take(&mut run), shutdown)
                    .await;
            }
            run.push(received);
        }
        if !run.is_empty() {
            self.store_and_forward(run, shutdown).await;
        }
    }

    /// Decodes an alert and renders its title and `alertData`; an undecodable message goes to
    /// the dead stream.
    async fn decode(&self, message: Message) -> Option<Received> {
        let alert = match codec::decode::<Alert>(&message.payload) {
            Ok(alert) => alert,
            Err(error) => {
                dead_letter(&self.js, &self.subjects, &message, &error.to_string()).await;
                return None;
            }
        };
        metrics::alert_received(&alert);
        let title = titles::alert_title(&alert, self.locale);
        let alert_data = java_messages::alert_data(&alert, &title);
        Some(Received {
            message,
            alert,
            title,
            alert_data,
        })
    }

    /// Stores the rows of alerts with distinct ids, then pushes and acks them. When MySQL
    /// rejects the data of a batch, each alert is stored on its own, so only the faulty one
    /// goes to the dead stream.
    async fn store_and_forward(&mut self, run: Vec<Received>, shutdown: &CancellationToken) {
        let mut queue = VecDeque::from([run]);
        while let Some(run) = queue.pop_front() {
            let rows: Vec<NewAlertRow> = run.iter().map(Received::row).collect();
            let messages: Vec<&Message> = run.iter().map(|r| &r.message).collect();
            let log = &self.log;
            match until_stored(&self.db, &messages, shutdown, || log.insert_batch(&rows)).await {
                Stored::Done(logged) => self.forward(run, logged, shutdown).await,
                Stored::Rejected(error) if run.len() > 1 => {
                    tracing::warn!(alerts = run.len(), error = %error, "MySQL rejected a batch of alerts, storing them one by one");
                    for received in run.into_iter().rev() {
                        queue.push_front(vec![received]);
                    }
                }
                Stored::Rejected(error) => {
                    let message = &run[0].message;
                    dead_letter(&self.js, &self.subjects, message, &error.to_string()).await;
                }
                Stored::Interrupted => {
                    // Not stored: the next run, or another instance, gets the alerts at once.
                    for received in &run {
                        acknowledge(&received.message, AckKind::Nak(None)).await;
                    }
                }
            }
        }
    }

    /// Pushes the stored rows of a batch and acks its messages.
    async fn forward(
        &mut self,
        run: Vec<Received>,
        logged: Vec<LoggedAlert>,
        shutdown: &CancellationToken,
    ) {
        let mut outgoing = Vec::with_capacity(run.len());
        let mut settled = Vec::with_capacity(run.len());
        // A row pushed but not yet marked was read as pending. Which rows those are is taken
        // before the marks settle, since settling removes them from `self.unmarked`.
        let unmarked: Vec<bool> = logged
            .iter()
            .map(|row| self.unmarked.contains(&row.id))
            .collect();
        let changes_unmarked =
            run.iter()
                .zip(&logged)
                .zip(&unmarked)
                .any(|((received, row), &is_unmarked)| {
                    is_unmarked && is_state_change(row.state, received.alert.state)
                });
        if changes_unmarked {
            // A mark landing after the state update would hide the update's push.
            self.settle_marks().await;
        }
        for ((received, mut logged), unmarked) in run.into_iter().zip(logged).zip(unmarked) {
            self.counters.invalidate(received.alert.task_id);
            if unmarked {
                logged.notify_status = NotifyStatus::Pushed;
            }
            match self
                .outgoing(
                    received.alert,
                    received.alert_data,
                    logged,
                    &received.message,
                    shutdown,
                )
                .await
            {
                Some(Some(message)) => outgoing.push((logged.id, message)),
                Some(None) => {}
                None => {
                    // Only shutdown interrupts a state update (its errors are never
                    // permanent): the stream delivers the alert again to the next run.
                    acknowledge(&received.message, AckKind::Nak(None)).await;
                    continue;
                }
            }
            settled.push(received.message);
        }
        if !outgoing.is_empty() {
            self.deliver(outgoing).await;
        }
        // The rows are stored: from here on the table, not the stream, guarantees the push.
        for message in &settled {
            acknowledge(message, AckKind::Ack).await;
        }
    }

    /// Returns the message that brings the Java side up to date with a stored alert: `alert`
    /// for a row it has not received, `alert_update` for a state change of one it has, and
    /// nothing for a plain redelivery. Returns `None` when shutdown interrupted a state update.
    async fn outgoing(
        &self,
        alert: Alert,
        alert_data: Value,
        logged: LoggedAlert,
        message: &Message,
        shutdown: &CancellationToken,
    ) -> Option<Option<Value>> {
        if is_state_change(logged.state, alert.state) {
            let received = (logged.notify_status == NotifyStatus::Pushed).then_some(logged.state);
            let log = &self.log;
            let updated = until_stored(&self.db, &[message], shutdown, || {
                log.update_state(logged.id, alert.state, received)
            })
            .await;
            if !matches!(updated, Stored::Done(())) {
                return None;
            }
            info!(alert_key = %alert.id, alert_row = logged.id, state = alert.state.as_str(), "alert changed state");
            // A row the Java side has not seen yet is pushed whole, with its new state.
            return Some(Some(match logged.notify_status {
                NotifyStatus::Pushed => {
                    java_messages::alert_update(logged.id, alert.state, self.locale, now_ms())
                }
                NotifyStatus::Pending => java_messages::alert(
                    logged.id,
                    alert.alert_type.as_str(),
                    with_state(alert_data, &alert),
                    now_ms(),
                ),
            }));
        }
        if logged.notify_status == NotifyStatus::Pending {
            return Some(Some(java_messages::alert(
                logged.id,
                alert.alert_type.as_str(),
                alert_data,
                now_ms(),
            )));
        }
        debug!(alert_key = %alert.id, alert_row = logged.id, "alert already pushed, acking the redelivery");
        Some(None)
    }

    /// Pushes the messages of pending rows, after the rows that wait before them.
    async fn deliver(&mut self, messages: Vec<(u64, Value)>) {
        let connection = self.ws.connection();
        if !connection.connected {
            self.outbox.dirty = true;
            debug!(
                alert_rows = messages.len(),
                "java websocket down, alerts stay pending"
            );
            return;
        }
        if self.outbox.dirty || self.outbox.flushed_session != Some(connection.session) {
            // The rows are pending in the table too, so the flush pushes them in their turn.
            self.flush(connection.session).await;
            return;
        }
        self.push(messages).await;
    }

    /// Pushes the outbox if this session has not seen it yet or a push failed.
    async fn flush_if_behind(&mut self) {
        self.reap_marks();
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
        // Rows pushed but not yet marked would be read as pending and pushed again.
        self.settle_marks().await;
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
            let messages = page
                .iter()
                .map(|row| {
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
                    (row.id, message)
                })
                .collect();
            if !self.push(messages).await {
                return;
            }
            pushed += page.len();
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

    /// Sends the messages of rows in order with one flush, and starts marking the rows as
    /// pushed in one background statement. Returns whether every message was sent. The mark is
    /// off the path of the next alert. When the write fails, no row is marked, so a later flush
    /// pushes them all again: a repeat for those that got through, never a loss.
    async fn push(&mut self, messages: Vec<(u64, Value)>) -> bool {
        let (sent, messages): (Vec<u64>, Vec<Value>) = messages.into_iter().unzip();
        if !self.ws.send_all(&messages).await {
            self.outbox.dirty = true;
            debug!(
                alert_rows = sent.len(),
                first_alert_row = sent.first(),
                "push failed, alerts stay pending"
            );
            return false;
        }
        debug!(alert_rows = sent.len(), "pushed alerts");
        if !sent.is_empty() {
            if self.marks.len() >= MAX_MARKS_IN_FLIGHT {
                if let Some(outcome) = self.marks.join_next().await {
                    self.marked(outcome);
                }
            }
            self.unmarked.extend(&sent);
            let log = self.log.clone();
            self.marks.spawn(async move {
                let marked = log.mark_pushed(&sent).await;
                (sent, marked)
            });
        }
        true
    }

    /// Takes the outcomes of the `pushed` marks that have finished.
    fn reap_marks(&mut self) {
        while let Some(outcome) = self.marks.try_join_next() {
            self.marked(outcome);
        }
    }

    /// Waits for every `pushed` mark in flight.
    async fn settle_marks(&mut self) {
        while let Some(outcome) = self.marks.join_next().await {
            self.marked(outcome);
        }
    }

    fn marked(&mut self, outcome: Result<(Vec<u64>, Result<(), AlertLogError>), JoinError>) {
        match outcome {
            Ok((ids, marked)) => {
                for id in &ids {
                    self.unmarked.remove(id);
                }
                match marked {
                    Ok(()) => {
                        self.db.available();
                        metrics::alerts_pushed(ids.len());
                    }
                    Err(error) => {
                        self.db.failed(&error);
                        self.outbox.dirty = true;
                    }
                }
            }
            Err(error) => {
                // The task's rows are unknown here: forget them all, the flush pushes them.
                tracing::warn!(error = %error, "marking alert rows as pushed failed, they are pushed again");
                self.unmarked.clear();
                self.outbox.dirty = true;
            }
        }
    }
}

/// A decoded alert with the texts it is stored and pushed with.
struct Received {
    message: Message,
    alert: Alert,
    title: String,
    alert_data: Value,
}

impl Received {
    fn row(&self) -> NewAlertRow<'_> {
        NewAlertRow {
            alert: &self.alert,
            title: &self.title,
            alert_data: &self.alert_data,
        }
    }
}

/// Returns `first` and the messages already buffered in the stream after it, up to
/// [`MAX_BATCH`] and without waiting, and why the stream must be reopened when it ended or
/// failed.
fn take_ready(first: Message, stream: &mut pull::Stream) -> (Vec<Message>, Option<StreamEnd>) {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match stream.next().now_or_never() {
            Some(Some(Ok(message))) => batch.push(message),
            Some(Some(Err(error))) => return (batch, Some(log_reopen(Some(&error)))),
            Some(None) => return (batch, Some(log_reopen(None))),
            None => break,
        }
    }
    (batch, None)
}

/// Logs why the alert stream is reopened: a pull error, or `None` when the stream ended.
fn log_reopen(error: Option<&pull::MessagesError>) -> StreamEnd {
    let consumer = Subjects::NOTIFY_ALERTS_CONSUMER;
    match error {
        Some(error) => {
            tracing::warn!(consumer, error = %error, "failed to pull alerts, reopening the stream")
        }
        None => tracing::warn!(consumer, "alert consumer stream ended, reopening it"),
    }
    StreamEnd::of(error)
}

/// The alert's `alertData` with the state of this delivery, as [`AlertLog::update_state`]
/// stores it.
fn with_state(mut alert_data: Value, alert: &Alert) -> Value {
    alert_data["state"] = Value::from(alert.state.as_str());
    alert_data
}

/// Runs the MySQL write `attempt` until it succeeds, keeping `messages` in progress while
/// MySQL is unavailable. Returns [`Stored::Interrupted`] when `shutdown` comes first.
async fn until_stored<T, F, Fut>(
    health: &DbHealth,
    messages: &[&Message],
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
        // Without this the server would deliver the messages again after the ack wait.
        for message in messages {
            acknowledge(message, AckKind::Progress).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Stored::Interrupted,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(DB_RETRY_MAX);
    }
}
