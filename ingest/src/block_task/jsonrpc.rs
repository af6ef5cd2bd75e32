//! A JSON-RPC 2.0 client over one WebSocket, as EVM nodes (`eth_subscribe`) and Solana's
//! PubSub endpoint speak it.
//!
//! [`RpcSocket::connect`] opens the socket and spawns one task that owns it: the task writes
//! requests, routes each response to the request with the same id, passes subscription
//! notifications on in arrival order, and pings the server every 30 s. The owner (one block
//! task runner) calls [`RpcSocket::request`] and [`RpcSocket::next`].
//!
//! Backpressure: notifications wait in a bounded channel, and when it is full the socket task
//! stops reading, so the node's socket pushes back. While a request waits for its response,
//! notifications that arrive are moved to a local backlog, so a full channel never holds up a
//! response. When the socket ends, pending requests fail with [`RpcError::Closed`] and
//! `next` returns the reason after the notifications received before it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use url::Url;

/// Time allowed for TCP, TLS and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the response to one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A socket that received nothing, not even a pong, for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Notifications buffered between the socket task and the runner.
const NOTIFICATION_CAPACITY: usize = 1024;
/// Largest message accepted: a full Ethereum block with its transactions is a few MB.
const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Characters of a node's text that an error message shows at most.
pub(crate) const MAX_SHOWN_CHARS: usize = 200;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("failed to connect: {0}")]
    Connect(String),
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("{method} timed out after {after:?}")]
    TimedOut { method: String, after: Duration },
    #[error("{method} failed with code {code}: {message}")]
    Server {
        method: String,
        code: i64,
        message: String,
    },
    #[error("{method} returned an unexpected result: {problem}")]
    Unexpected { method: String, problem: String },
}

/// A subscription notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The notification method: `eth_subscription`, `slotNotification`, `logsNotification`.
    pub method: String,
    /// Subscription id as text (EVM nodes send hex strings, Solana sends numbers).
    pub subscription: String,
    pub result: Value,
}

/// A message from the socket task to the owner.
#[derive(Debug)]
enum Incoming {
    Notification(Notification),
    Closed(String),
}

/// Requests waiting for their response, by id: the method (for errors) and the reply channel.
pub type Pending = HashMap<u64, (String, oneshot::Sender<Result<Value, RpcError>>)>;

struct Outgoing {
    id: u64,
    text: String,
    reply: oneshot::Sender<Result<Value, RpcError>>,
    method: String,
}

/// One JSON-RPC WebSocket connection and its socket task.
pub struct RpcSocket {
    outgoing: mpsc::UnboundedSender<Outgoing>,
    incoming: mpsc::Receiver<Incoming>,
    backlog: VecDeque<Incoming>,
    next_id: u64,
    task: JoinHandle<()>,
    closed: Option<String>,
}

impl RpcSocket {
    /// Connects and starts the socket task.
    pub async fn connect(url: &Url) -> Result<RpcSocket, RpcError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (socket, _response) = timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true),
        )
        .await
        .map_err(|_| RpcError::Connect(format!("timed out after {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| RpcError::Connect(e.to_string()))?;

        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::channel(NOTIFICATION_CAPACITY);
        let task = tokio::spawn(socket_task(socket, outgoing_rx, incoming_tx));
        Ok(RpcSocket {
            outgoing,
            incoming,
            backlog: VecDeque::new(),
            next_id: 1,
            task,
            closed: None,
        })
    }

    /// Sends a request and waits for its result. Notifications that arrive meanwhile are kept
    /// for [`RpcSocket::next`].
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Value, RpcError> {
        if let Some(reason) = &self.closed {
            return Err(RpcError::Closed(reason.clone()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let text =
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        let (reply, mut response) = oneshot::channel();
        let outgoing = Outgoing {
            id,
            text,
            reply,
            method: method.to_owned(),
        };
        if self.outgoing.send(outgoing).is_err() {
            return Err(self.closed_error());
        }

        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            tokio::select! {
                result = &mut response => {
                    return result.unwrap_or_else(|_| Err(self.closed_error()));
                }
                incoming = self.incoming.recv() => match incoming {
                    Some(incoming) => self.backlog.push_back(incoming),
                    None => return Err(self.closed_error()),
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Err(RpcError::TimedOut { method: method.to_owned(), after: REQUEST_TIMEOUT });
                }
            }
        }
    }

    /// Subscribes with `method` (`eth_subscribe`, `slotSubscribe`, ...) and returns the
    /// subscription id as text.
    pub async fn subscribe(&mut self, method: &str, params: Value) -> Result<String, RpcError> {
        let result = self.request(method, params).await?;
        subscription_id(&result).ok_or_else(|| RpcError::Unexpected {
            method: method.to_owned(),
            problem: format!("subscription id {result} is neither a string nor a number"),
        })
    }

    /// Waits for the next notification; `Err(Closed)` once the socket ended and every
    /// notification received before was returned. Cancel-safe.
    pub async fn next(&mut self) -> Result<Notification, RpcError> {
        let incoming = match self.backlog.pop_front() {
            Some(incoming) => Some(incoming),
            None => self.incoming.recv().await,
        };
        match incoming {
            Some(Incoming::Notification(notification)) => Ok(notification),
            Some(Incoming::Closed(reason)) => {
                self.closed = Some(reason.clone());
                Err(RpcError::Closed(reason))
            }
            None => Err(self.closed_error()),
        }
    }

    fn closed_error(&self) -> RpcError {
        RpcError::Closed(
            self.closed
                .clone()
                .unwrap_or_else(|| "the socket task ended".to_owned()),
        )
    }
}

impl Drop for RpcSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the subscription id out of a subscribe result or a notification's `params`.
pub fn subscription_id(value: &Value) -> Option<String> {
    match value {
        Value::String(id) => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Owns the socket until it ends or the owner drops the [`RpcSocket`].
async fn socket_task(
    mut socket: Socket,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    incoming: mpsc::Sender<Incoming>,
) {
    let mut pending = Pending::new();
    let mut ping = interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_received = Instant::now();

    let reason = loop {
        tokio::select! {
            request = outgoing.recv() => {
                let Some(request) = request else {
                    let _ = socket.close(None).await;
                    return;
                };
                if let Err(error) = socket.send(Message::text(request.text)).await {
                    let _ = request.reply.send(Err(RpcError::Closed(format!("send failed: {error}"))));
                    break format!("send failed: {error}");
                }
                pending.insert(request.id, (request.method, request.reply));
            }
            message = socket.next() => {
                last_received = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(notification) = route(&text, &mut pending) {
                            if incoming.send(Incoming::Notification(notification)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        if let Ok(text) = std::str::from_utf8(&bytes) {
                            if let Some(notification) = route(text, &mut pending) {
                                if incoming.send(Incoming::Notification(notification)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break match frame {
                            Some(frame) => format!("closed by the server ({} {})", frame.code, frame.reason),
                            None => "closed by the server".to_owned(),
                        };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break format!("read failed: {error}"),
                    None => break "connection ended".to_owned(),
                }
            }
            _ = ping.tick() => {
                if last_received.elapsed() >= IDLE_TIMEOUT {
                    break format!("nothing received for {IDLE_TIMEOUT:?}");
                }
                if let Err(error) = socket.send(Message::Ping(Bytes::new())).await {
                    break format!("ping failed: {error}");
                }
            }
        }
    };

    for (_, (_, reply)) in pending.drain() {
        let _ = reply.send(Err(RpcError::Closed(reason.clone())));
    }
    let _ = incoming.send(Incoming::Closed(reason)).await;
}

/// Hands a response to its request and returns a notification. Messages that are neither
/// are dropped: a node may send responses to requests that already timed out.
pub fn route(text: &str, pending: &mut Pending) -> Option<Notification> {
    let message: Value = serde_json::from_str(text).ok()?;
    if let Some(id) = message.get("id").and_then(Value::as_u64) {
        let (method, reply) = pending.remove(&id)?;
        let _ = reply.send(response_result(&method, message));
        return None;
    }
    parse_notification(message)
}

fn response_result(method: &str, mut message: Value) -> Result<Value, RpcError> {
    if let Some(error) = message.get("error").filter(|e| !e.is_null()) {
        return Err(RpcError::Server {
            method: method.to_owned(),
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: shown_text(
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message"),
            ),
        });
    }
    Ok(message
        .get_mut("result")
        .map(Value::take)
        .unwrap_or(Value::Null))
}

/// Renders a text that a node sent for an error message: control characters as escapes, so
/// that the message stays on one line, and at most [`MAX_SHOWN_CHARS`] characters.
pub(crate) fn shown_text(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            }
        })
        .take(MAX_SHOWN_CHARS)
        .collect()
}

/// Renders a JSON value that a node sent for an error message, like [`shown_text`]. JSON text
/// escapes the control characters below U+0020 but not DEL and U+0080 to U+009F.
pub(crate) fn shown_value(value: &Value) -> String {
    shown_text(&value.to_string())
}

fn parse_notification(mut message: Value) -> Option<Notification> {
    let method = message.get("method")?.as_str()?.to_owned();
    let params = message.get_mut("params")?;
    let subscription = subscription_id(params.get("subscription")?)?;
    let result = params.get_mut("result").map(Value::take)?;
    Some(Notification {
        method,
        subscription,
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evm_notification_parses() {
        let message = json!({
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": "0x9ce59a13059e417087c02d3236a0b1cc", "result": {"number": "0x1"}}
        });

        let notification = parse_notification(message).unwrap();

        assert_eq!(notification.method, "eth_subscription");
        assert_eq!(
            notification.subscription,
            "0x9ce59a13059e417087c02d3236a0b1cc"
        );
        assert_eq!(notification.result["number"], "0x1");
    }

    #[test]
    fn solana_notification_has_numeric_subscription() {
        let message = json!({
            "jsonrpc": "2.0",
            "method": "slotNotification",
            "params": {"result": {"parent": 75, "root": 44, "slot": 76}, "subscription": 0}
        });

        let notification = parse_notification(message).unwrap();

        assert_eq!(notification.subscription, "0");
        assert_eq!(notification.result["slot"], 76);
    }

    #[test]
    fn response_reaches_its_request() {
        let (reply, mut response) = oneshot::channel();
        let mut pending = Pending::from([(7, ("eth_chainId".to_owned(), reply))]);

        let routed = route(r#"{"jsonrpc":"2.0","id":7,"result":"0x1"}"#, &mut pending);

        assert_eq!(routed, None);
        assert_eq!(response.try_recv().unwrap().unwrap(), json!("0x1"));
        assert!(pending.is_empty());
    }

    #[test]
    fn error_response_names_method_and_code() {
        let error = response_result(
            "eth_subscribe",
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"method not found"}}),
        )
        .unwrap_err();

        assert_eq!(
            error.to_string(),
            "eth_subscribe failed with code -32601: method not found"
        );
    }

    #[test]
    fn error_message_is_one_short_line() {
        let message = format!("line one\nline two\u{0}{}", "x".repeat(1_000));

        let error = response_result(
            "slotSubscribe",
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":message}}),
        )
        .unwrap_err()
        .to_string();

        assert!(
            error.starts_with("slotSubscribe failed with code -32602: line one\\nline two\\u{0}xx"),
            "{error}"
        );
        assert_eq!(
            error.chars().count(),
            "slotSubscribe failed with code -32602: ".len() + MAX_SHOWN_CHARS
        );
    }
}
