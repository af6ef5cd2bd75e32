//! One Birdeye WebSocket connection of a batch, with reconnects.
//!
//! A [`FeedConnection`] connects to its URL with the `echo-protocol` sub-protocol, sends its
//! subscription messages, and then yields the text frames it receives. When the connection
//! fails or the owner calls [`FeedConnection::reconnect`], it waits with exponential backoff
//! and jitter (0.5 s doubling up to 30 s) and connects and subscribes again. Tungstenite
//! replies to the server's pings while the socket is read. The client also pings every third
//! of the stall timeout (`FEED_STALL_TIMEOUT`) and reconnects when nothing at all, not even a
//! pong, arrived for the whole stall timeout. The time between losing an open connection and
//! the next successful subscription is reported as a [`Gap`] with the `Subscribed` event. The
//! connection is a plain state machine polled by the batch's task: it spawns nothing.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant, Sleep};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::birdeye::{self, Channel};
use crate::metrics::{self, OpenConnection};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<Socket, FeedError>> + Send>>;

/// Time allowed for TCP, TLS and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send one message (subscriptions, pings, close).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial read buffer of a connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Stall timeout of [`FeedConnection::new`].
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Shortest ping interval, whatever the stall timeout.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that stayed open this long resets the backoff when it ends.
const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("failed to build the WebSocket request: {0}")]
    Request(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("failed to connect: {0}")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("timed out after {0:?} while connecting")]
    ConnectTimedOut(Duration),
    #[error("failed to send a subscription: {0}")]
    Subscribe(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("timed out after {0:?} while sending a subscription")]
    SubscribeTimedOut(Duration),
}

/// Time during which a connection that had been open was down, in wall-clock milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Gap {
    pub fn duration_ms(&self) -> i64 {
        self.end_ms - self.start_ms
    }
}

/// Event of a connection.
#[derive(Debug)]
pub enum FeedEvent {
    /// Connected and every subscription was sent; [`FeedConnection::take_gap`] returns the
    /// gap that this ended, if an open connection was lost before.
    Subscribed,
    /// A text frame (binary frames are passed on when they are UTF-8).
    Frame(Utf8Bytes),
    /// Connecting or subscribing failed; the next attempt is after `retry_in`.
    ConnectFailed {
        error: FeedError,
        retry_in: Duration,
    },
    /// An open connection ended; the next attempt is after `retry_in`.
    Closed { reason: String, retry_in: Duration },
}

enum State {
    Waiting { until: Instant },
    Connecting(ConnectFuture),
    Open(Box<Socket>),
}

/// One channel's connection, owned and polled by a batch runner.
pub struct FeedConnection {
    channel: Channel,
    /// Contains the API key: never logged.
    url: Url,
    subscriptions: Vec<String>,
    state: State,
    /// No frame and no pong for this long replaces the connection.
    stall_timeout: Duration,
    ping_interval: Duration,
    /// Wall-clock time at which the last open connection was lost, until the next one opens.
    down_since_ms: Option<i64>,
    last_gap: Option<Gap>,
    /// Present while the connection is open: it counts in `monitor_ingest_feed_connections`.
    open: Option<OpenConnection>,
    failures: u32,
    opened_at: Instant,
    last_frame_at: Instant,
    /// Time of the next ping. The timer is kept between calls to [`FeedConnection::next`],
    /// because a timer created per call was added to and removed from tokio's timer wheel for
    /// every frame.
    ping_timer: Pin<Box<Sleep>>,
    /// Largest WebSocket frame or message accepted; a larger one ends the connection.
    max_frame_bytes: usize,
}

impl FeedConnection {
    /// Creates a connection that connects on the first call to [`FeedConnection::next`].
    pub fn new(channel: Channel, url: Url, subscriptions: Vec<String>) -> Self {
        Self::with_stall_timeout(channel, url, subscriptions, DEFAULT_STALL_TIMEOUT)
    }

    /// Like [`FeedConnection::new`], replacing a connection silent for `stall_timeout`.
    pub fn with_stall_timeout(
        channel: Channel,
        url: Url,
        subscriptions: Vec<String>,
        stall_timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        let ping_interval = (stall_timeout / 3).max(MIN_PING_INTERVAL);
        FeedConnection {
            channel,
            url,
            subscriptions,
            state: State::Waiting { until: now },
            stall_timeout,
            ping_interval,
            down_since_ms: None,
            last_gap: None,
            open: None,
            failures: 0,
            opened_at: now,
            last_frame_at: now,
            ping_timer: Box::pin(sleep_until(now + ping_interval)),
            max_frame_bytes: monitor_core::limits::DEFAULT_MAX_FRAME_BYTES,
        }
    }

    /// Sets the largest frame or message accepted (`MAX_FRAME_BYTES`). A larger one fails the
    /// read with a `Space limit exceeded` error before it is buffered whole, and the
    /// connection is replaced like any broken one.
    pub fn with_max_frame_bytes(mut self, max_frame_bytes: usize) -> Self {
        self.max_frame_bytes = max_frame_bytes;
        self
    }

    pub fn channel(&self) -> Channel {
        self.channel
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Waits for the next event. Cancel-safe: dropping the future loses no frame, because the
    /// connection state is kept in `self` between calls.
    pub async fn next(&mut self) -> FeedEvent {
        loop {
            match &mut self.state {
                State::Waiting { until } => {
                    sleep_until(*until).await;
                    let future = connect(
                        self.url.clone(),
                        self.subscriptions.clone(),
                        self.max_frame_bytes,
                    );
                    self.state = State::Connecting(Box::pin(future));
                }
                State::Connecting(future) => match future.await {
                    Ok(socket) => return self.on_open(socket),
                    Err(error) => {
                        let retry_in = self.schedule_retry();
                        return FeedEvent::ConnectFailed { error, retry_in };
                    }
                },
                State::Open(socket) => {
                    let received = tokio::select! {
                        message = socket.next() => message,
                        () = self.ping_timer.as_mut() => {
                            if let Some(event) = self.keep_alive().await {
                                return event;
                            }
                            continue;
                        }
                    };
                    if let Some(event) = self.on_message(received) {
                        return event;
                    }
                }
            }
        }
    }

    /// Drops the connection (if open) and connects again after the backoff. Used when the
    /// server sent `ERROR`.
    pub fn reconnect(&mut self) -> Duration {
        self.schedule_retry()
    }

    /// Replaces the subscriptions; an open connection is replaced at once to apply them.
    pub fn set_subscriptions(&mut self, subscriptions: Vec<String>) {
        if subscriptions == self.subscriptions {
            return;
        }
        self.subscriptions = subscriptions;
        self.failures = 0;
        if self.is_open() && self.down_since_ms.is_none() {
            self.down_since_ms = Some(monitor_core::time::now_ms());
        }
        if self.open.take().is_some() {
            metrics::feed_gap(self.channel);
        }
        self.state = State::Waiting {
            until: Instant::now(),
        };
    }

    /// Marks the connection healthy: the next failure starts the backoff from its minimum.
    pub fn data_received(&mut self) {
        self.failures = 0;
    }

    /// Sends a close frame when open, waiting at most a few seconds.
    pub async fn close(&mut self) {
        if let State::Open(socket) = &mut self.state {
            let _ = timeout(SEND_TIMEOUT, (**socket).close(None)).await;
        }
        self.state = State::Waiting {
            until: Instant::now() + BACKOFF_MAX,
        };
        self.open = None;
    }

    fn on_open(&mut self, socket: Socket) -> FeedEvent {
        let now = Instant::now();
        self.opened_at = now;
        self.last_frame_at = now;
        self.ping_timer.as_mut().reset(now + self.ping_interval);
        self.state = State::Open(Box::new(socket));
        self.open = Some(OpenConnection::new(self.channel));
        if let Some(start_ms) = self.down_since_ms.take() {
            self.last_gap = Some(Gap {
                start_ms,
                end_ms: monitor_core::time::now_ms(),
            });
        }
        FeedEvent::Subscribed
    }

    /// Returns the gap that the last `Subscribed` ended, once.
    pub fn take_gap(&mut self) -> Option<Gap> {
        self.last_gap.take()
    }

    fn on_message(
        &mut self,
        received: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<FeedEvent> {
        self.last_frame_at = Instant::now();
        match received {
            Some(Ok(Message::Text(text))) => Some(FeedEvent::Frame(text)),
            Some(Ok(Message::Binary(bytes))) => Some(self.binary_frame(bytes)),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Close(frame))) => {
                let reason = match frame {
                    Some(frame) => {
                        format!("closed by the server ({} {})", frame.code, frame.reason)
                    }
                    None => "closed by the server".to_owned(),
                };
                Some(self.closed(reason))
            }
            Some(Err(error)) => Some(self.closed(format!("read failed: {error}"))),
            None => Some(self.closed("connection ended".to_owned())),
        }
    }

    fn binary_frame(&mut self, bytes: Bytes) -> FeedEvent {
        match Utf8Bytes::try_from(bytes) {
            Ok(text) => FeedEvent::Frame(text),
            // Passed on as text so that the parser reports it like any malformed frame.
            Err(_) => FeedEvent::Frame(Utf8Bytes::from_static("<binary frame that is not UTF-8>")),
        }
    }

    /// Pings the server, or gives up on a connection that has been silent too long.
    async fn keep_alive(&mut self) -> Option<FeedEvent> {
        let now = Instant::now();
        if now.duration_since(self.last_frame_at) >= self.stall_timeout {
            let stalled = self.stall_timeout;
            return Some(self.closed(format!("stalled: no frame and no pong for {stalled:?}")));
        }
        self.ping_timer.as_mut().reset(now + self.ping_interval);
        let State::Open(socket) = &mut self.state else {
            return None;
        };
        match timeout(SEND_TIMEOUT, socket.send(Message::Ping(Bytes::new()))).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(self.closed(format!("ping failed: {error}"))),
            Err(_) => Some(self.closed(format!("ping not sent within {SEND_TIMEOUT:?}"))),
        }
    }

    fn closed(&mut self, reason: String) -> FeedEvent {
        if Instant::now().duration_since(self.opened_at) >= STABLE_AFTER {
            self.failures = 0;
        }
        let retry_in = self.schedule_retry();
        FeedEvent::Closed { reason, retry_in }
    }

    fn schedule_retry(&mut self) -> Duration {
        if self.is_open() && self.down_since_ms.is_none() {
            self.down_since_ms = Some(monitor_core::time::now_ms());
        }
        if self.open.take().is_some() {
            metrics::feed_gap(self.channel);
        }
        metrics::feed_reconnect(self.channel);
        let delay = backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.state = State::Waiting {
            until: Instant::now() + delay,
        };
        delay
    }
}

/// Delay before attempt `failures + 1`: 0.5 s doubling up to 30 s, scaled by a random factor
/// between 0.5 and 1 so that many batches do not reconnect in step.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_INITIAL
        .saturating_mul(1u32 << failures.min(10))
        .min(BACKOFF_MAX);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

async fn connect(
    url: Url,
    subscriptions: Vec<String>,
    max_frame_bytes: usize,
) -> Result<Socket, FeedError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(FeedError::Request)?;
    let headers = request.headers_mut();
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(birdeye::SUB_PROTOCOL),
    );
    headers.insert(ORIGIN, HeaderValue::from_static(birdeye::ORIGIN));
    // A batch keeps two connections, so the 128 KiB default read buffer would cost about
    // 25 MiB for 100 batches; Birdeye frames are a few kilobytes and the buffer grows when a
    // larger one arrives.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes));

    let (mut socket, _response) = timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| FeedError::ConnectTimedOut(CONNECT_TIMEOUT))?
    .map_err(FeedError::Connect)?;

    for subscription in subscriptions {
        timeout(SEND_TIMEOUT, socket.send(Message::text(subscription)))
            .await
            .map_err(|_| FeedError::SubscribeTimedOut(SEND_TIMEOUT))?
            .map_err(FeedError::Subscribe)?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_30_seconds() {
        for failures in 0..20 {
            let delay = backoff(failures);
            let base = BACKOFF_INITIAL
                .saturating_mul(1 << failures.min(10))
                .min(BACKOFF_MAX);
            assert!(delay >= base / 2, "{failures}: {delay:?}");
            assert!(delay <= base, "{failures}: {delay:?}");
        }
        assert!(backoff(30) <= BACKOFF_MAX);
    }
}
