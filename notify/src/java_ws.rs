//! Client of the Java backend's monitor WebSocket.
//!
//! One task owns the socket ([`SocketTask`]); the rest of the stage talks to it through a
//! [`JavaWs`] handle. [`JavaWs::send`] queues one JSON message and returns whether it was
//! written to a connected socket, and [`JavaWs::send_all`] does the same for several messages
//! written with one flush. While the socket is down both return `false` at once and nothing
//! is queued for later, because the callers decide what deserves a resend: the alert log is
//! the outbox for alerts, and stale heartbeats are worthless.
//!
//! The task connects to `WS_URL` (`wss://` uses rustls with the system's root certificates),
//! sends `Authorization: Bearer <WS_TOKEN>` when a token is set, logs the server's `connected`
//! greeting, and sends `{"type":"ping"}` every ping interval. A missing `pong` after the pong
//! timeout, a closed socket or a failed write ends the session, and the task reconnects with
//! exponential backoff and jitter. Each established session gets a new number in
//! [`Connection`], which callers watch to re-send what the Java side may have missed.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use monitor_core::settings::Redacted;
use rand::Rng;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header::AUTHORIZATION, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::settings::{WsSettings, WsTiming};

pub mod incoming;
use incoming::{parse_incoming, Incoming, MAX_INCOMING_BYTES};

/// Capacity of the queue between the handle and the socket task.
const OUTGOING_CAPACITY: usize = 256;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// State of the connection as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Connection {
    /// Number of the latest established session, starting at 1; 0 before the first one.
    pub session: u64,
    /// Whether that session is still open.
    pub connected: bool,
}

/// Errors that make one connection attempt fail.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid WebSocket request for {url}: {source}")]
    Request {
        url: String,
        source: tungstenite::Error,
    },
    #[error("invalid WS_TOKEN: it cannot be sent in an HTTP header")]
    Token,
    #[error("failed to connect to {url}: {source}")]
    Handshake {
        url: String,
        source: tungstenite::Error,
    },
    #[error("timed out connecting to {url} after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// Reason an established session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("shutdown requested")]
    Shutdown,
    #[error("server closed the connection")]
    Closed,
    #[error("failed to read from the socket: {0}")]
    Read(tungstenite::Error),
    #[error("failed to write to the socket: {0}")]
    Write(tungstenite::Error),
    #[error("timed out writing to the socket after {0:?}")]
    WriteTimeout(Duration),
    #[error("no pong within {0:?} of a ping")]
    PongTimeout(Duration),
}

/// Messages written together, in order, and then flushed once.
struct Outgoing {
    texts: Vec<String>,
    written: oneshot::Sender<bool>,
}

/// Handle through which the stage sends messages to the Java WebSocket; cheap to clone.
#[derive(Clone)]
pub struct JavaWs {
    outgoing: mpsc::Sender<Outgoing>,
    connection: watch::Receiver<Connection>,
    send_timeout: Duration,
}

impl JavaWs {
    /// Creates the handle and the task that owns the socket; run the task with
    /// [`SocketTask::run`].
    pub fn new(settings: WsSettings) -> (JavaWs, SocketTask) {
        let (outgoing_tx, outgoing_rx) = mpsc::channel(OUTGOING_CAPACITY);
        let (connection_tx, connection_rx) = watch::channel(Connection::default());
        let handle = JavaWs {
            outgoing: outgoing_tx,
            connection: connection_rx,
            // The socket task may hold the message for one write, and the queue ahead of it.
            send_timeout: settings.timing.send_timeout * 2,
        };
        let task = SocketTask {
            backoff: Backoff::new(settings.timing.reconnect_min, settings.timing.reconnect_max),
            settings,
            outgoing: outgoing_rx,
            connection: connection_tx,
        };
        (handle, task)
    }

    /// Sends one message; returns whether it was written to an open socket.
    pub async fn send(&self, message: &Value) -> bool {
        self.send_all(std::slice::from_ref(message)).await
    }

    /// Sends messages in order with one flush; returns whether all of them were written to an
    /// open socket. When it returns `false`, any number of them may have been written.
    pub async fn send_all(&self, messages: &[Value]) -> bool {
        if messages.is_empty() {
            return true;
        }
        if !self.connection().connected {
            return false;
        }
        let (written_tx, written_rx) = oneshot::channel();
        let outgoing = Outgoing {
            texts: messages.iter().map(Value::to_string).collect(),
            written: written_tx,
        };
        let delivered = async {
            self.outgoing.send(outgoing).await.ok()?;
            written_rx.await.ok()
        };
        matches!(
            tokio::time::timeout(self.send_timeout, delivered).await,
            Ok(Some(true))
        )
    }

    /// Returns the current connection state.
    pub fn connection(&self) -> Connection {
        *self.connection.borrow()
    }

    /// Returns a receiver notified on every connect and disconnect.
    pub fn watch(&self) -> watch::Receiver<Connection> {
        self.connection.clone()
    }
}

/// The task that owns the socket: connects, pings, writes queued messages and reconnects.
pub struct SocketTask {
    settings: WsSettings,
    outgoing: mpsc::Receiver<Outgoing>,
    connection: watch::Sender<Connection>,
    backoff: Backoff,
}

impl SocketTask {
    /// Keeps a connection open until `shutdown` is cancelled or every handle is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut session = 0;
        let mut failed_attempts = 0u32;
        while !shutdown.is_cancelled() {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => break,
                attempt = connect(&self.settings) => attempt,
            };
            match attempt {
                Ok(socket) => {
                    session += 1;
                    info!(url = %self.settings.url, session, failed_attempts, "connected to the java websocket");
                    failed_attempts = 0;
                    if let SessionEnd::Shutdown = self.serve(socket, session, &shutdown).await {
                        break;
                    }
                }
                Err(error) => {
                    failed_attempts += 1;
                    // One warning per outage; the retries of the same outage are debug lines.
                    if failed_attempts == 1 {
                        warn!(error = %error, "java websocket unavailable, retrying with backoff");
                    } else {
                        debug!(error = %error, failed_attempts, "java websocket still unavailable");
                    }
                }
            }
            let delay = self.backoff.next_delay();
            if !self.wait_disconnected(delay, &shutdown).await {
                break;
            }
        }
        self.connection.send_modify(|c| c.connected = false);
        self.outgoing.close();
        while let Some(message) = self.outgoing.recv().await {
            let _ = message.written.send(false);
        }
        info!("java websocket client stopped");
    }

    /// Runs one session; returns why it ended.
    async fn serve(
        &mut self,
        socket: Socket,
        session: u64,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let started = Instant::now();
        self.connection.send_replace(Connection {
            session,
            connected: true,
        });

        let end = Session::new(socket, self.settings.timing)
            .run(&mut self.outgoing, shutdown)
            .await;

        self.connection.send_replace(Connection {
            session,
            connected: false,
        });
        match &end {
            SessionEnd::Shutdown => {}
            end => warn!(session, reason = %end, "java websocket disconnected, reconnecting"),
        }
        // A session that stayed up for the maximum delay ends an outage. A server that accepts
        // and drops at once keeps the backoff growing.
        if started.elapsed() >= self.settings.timing.reconnect_max {
            self.backoff.reset();
        }
        end
    }

    /// Waits `delay` before the next attempt and reports `false` for every queued message.
    /// Returns `false` when the stage shuts down or every handle is gone.
    async fn wait_disconnected(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = sleep_until(deadline) => return true,
                message = self.outgoing.recv() => match message {
                    Some(message) => { let _ = message.written.send(false); }
                    None => return false,
                },
            }
        }
    }
}

/// Opens the socket, with the bearer token when one is set.
async fn connect(settings: &WsSettings) -> Result<Socket, ConnectError> {
    let request = build_request(&settings.url, &settings.token)?;
    let timeout = settings.timing.connect_timeout;
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_INCOMING_BYTES))
        .max_frame_size(Some(MAX_INCOMING_BYTES));
    // With Nagle's algorithm an alert waits until the server acknowledged the previous one,
    // and a server that delays its acknowledgements (40 to 200 ms on Linux) delays alerts.
    let disable_nagle = true;
    let connecting =
        tokio_tungstenite::connect_async_with_config(request, Some(config), disable_nagle);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(source)) => Err(ConnectError::Handshake {
            url: settings.url.clone(),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            url: settings.url.clone(),
            timeout,
        }),
    }
}

fn build_request(
    url: &str,
    token: &Redacted,
) -> Result<tungstenite::handshake::client::Request, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|source| ConnectError::Request {
            url: url.to_owned(),
            source,
        })?;
    if !token.is_empty() {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ConnectError::Token)?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    Ok(request)
}

/// One open socket with its ping schedule.
struct Session {
    socket: Socket,
    timing: WsTiming,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
}

impl Session {
    fn new(socket: Socket, timing: WsTiming) -> Self {
        Session {
            socket,
            timing,
            next_ping: Instant::now() + timing.ping_interval,
            pong_deadline: None,
        }
    }

    async fn run(
        mut self,
        outgoing: &mut mpsc::Receiver<Outgoing>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let end = loop {
            let pong_deadline = self.pong_deadline;
            let step = tokio::select! {
                _ = shutdown.cancelled() => Err(SessionEnd::Shutdown),
                message = outgoing.recv() => match message {
                    Some(message) => self.write_queued(message).await,
                    None => Err(SessionEnd::Shutdown),
                },
                frame = self.socket.next() => self.on_frame(frame),
                _ = sleep_until(self.next_ping) => self.ping().await,
                _ = sleep_until(pong_deadline.unwrap_or_else(Instant::now)), if pong_deadline.is_some() => {
                    Err(SessionEnd::PongTimeout(self.timing.pong_timeout))
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let SessionEnd::Shutdown = end {
            // A polite close; the process is stopping, so its result does not matter.
            let _ = tokio::time::timeout(self.timing.send_timeout, self.socket.close(None)).await;
        }
        end
    }

    async fn write_queued(&mut self, message: Outgoing) -> Result<(), SessionEnd> {
        let result = self.write(message.texts).await;
        let _ = message.written.send(result.is_ok());
        result
    }

    async fn ping(&mut self) -> Result<(), SessionEnd> {
        self.next_ping = Instant::now() + self.timing.ping_interval;
        self.write(vec![crate::java_messages::ping().to_string()])
            .await?;
        // An unanswered earlier ping keeps its deadline: the server must answer in time.
        self.pong_deadline
            .get_or_insert(Instant::now() + self.timing.pong_timeout);
        Ok(())
    }

    /// Writes the texts as text frames and flushes the socket once.
    async fn write(&mut self, texts: Vec<String>) -> Result<(), SessionEnd> {
        let timeout = self.timing.send_timeout;
        let socket = &mut self.socket;
        let written = async {
            for text in texts {
                socket.feed(Message::text(text)).await?;
            }
            socket.flush().await
        };
        match tokio::time::timeout(timeout, written).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(SessionEnd::Write(error)),
            Err(_) => Err(SessionEnd::WriteTimeout(timeout)),
        }
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), SessionEnd> {
        match frame {
            None | Some(Ok(Message::Close(_))) => Err(SessionEnd::Closed),
            Some(Err(error)) => Err(SessionEnd::Read(error)),
            Some(Ok(Message::Text(text))) => {
                self.on_text(text.as_str());
                Ok(())
            }
            // Protocol pings are answered by tungstenite itself; binary frames are not part of
            // the protocol.
            Some(Ok(_)) => Ok(()),
        }
    }

    fn on_text(&mut self, text: &str) {
        match parse_incoming(text) {
            Incoming::Pong => self.pong_deadline = None,
            Incoming::Connected {
                session_id,
                greeting,
            } => info!(session_id, greeting, "java websocket greeted the client"),
            Incoming::Other { message_type } => {
                debug!(message_type, "ignoring a message from the java websocket")
            }
            Incoming::NotJson { error } => {
                debug!(error = %error, len = text.len(), "ignoring a message that is not JSON")
            }
        }
    }
}

/// Exponential reconnect delays with jitter: the base doubles from `min` up to `max`, and each
/// delay is the base plus up to half of it more, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            base: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0.0..=0.5);
        let delay = self.base.mul_f64(1.0 + jitter).min(self.max);
        self.base = (self.base * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.base = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_within_bounds() {
        let min = Duration::from_millis(500);
        let max = Duration::from_secs(30);
        let mut backoff = Backoff::new(min, max);
        let mut base = min;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(delay >= base, "{delay:?} < base {base:?}");
            assert!(
                delay <= base.mul_f64(1.5).min(max),
                "{delay:?} above jitter range of {base:?}"
            );
            base = (base * 2).min(max);
        }
        // The base has reached the maximum, so every delay is capped at it.
        assert_eq!(backoff.next_delay(), max);
    }

    #[test]
    fn backoff_reset_starts_again_at_min() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(750));
    }

    #[test]
    fn request_carries_bearer_token() {
        let request = build_request("ws://127.0.0.1:9/ws", &Redacted("abc".into())).unwrap();
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer abc");
    }

    #[test]
    fn request_without_token_has_no_authorization() {
        let request = build_request("ws://127.0.0.1:9/ws", &Redacted::default()).unwrap();
        assert!(request.headers().get(AUTHORIZATION).is_none());
    }

    #[tokio::test]
    async fn send_while_disconnected_returns_false_at_once() {
        let (ws, _task) = JavaWs::new(WsSettings::local("ws://127.0.0.1:9/ws"));
        assert!(!ws.send(&serde_json::json!({"type": "x"})).await);
        assert_eq!(ws.connection(), Connection::default());
    }
}
