//! One client connection of the chain replay: an HTTP request or a WebSocket session.
//!
//! The request head is peeked without being consumed: an `Upgrade: websocket` request becomes
//! a JSON-RPC WebSocket session, anything else is served as one HTTP JSON-RPC request
//! ([`super::http`]). A session answers requests at once and keeps the client's
//! subscriptions; its replay starts with the first `newHeads` or `slotSubscribe`
//! subscription and sends, per step, the block's head and matching logs (eth) or the slot and
//! the logs of transactions mentioning each subscribed key (sol).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::eth::LogFilter;
use super::http::{head_end, is_websocket_upgrade, MAX_HEAD_BYTES};
use super::{http, response, ChainReplay, Recording, RpcFailure};

/// Maximum time a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time between two peeks while the request head is incomplete.
const PEEK_INTERVAL: Duration = Duration::from_millis(5);

type Socket = WebSocketStream<TcpStream>;
type WsResult<T> = Result<T, tokio_tungstenite::tungstenite::Error>;

/// Serves one accepted TCP stream. Errors are logged here: a broken client never stops the
/// server.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    server: Arc<ChainReplay>,
    shutdown: CancellationToken,
) {
    let websocket = match timeout(HEAD_TIMEOUT, peek_head(&stream)).await {
        Ok(Some(head)) => is_websocket_upgrade(&head),
        Ok(None) => return,
        Err(_) => {
            tracing::warn!(%peer, "chain-replay request head not received in time");
            return;
        }
    };
    if !websocket {
        return http::serve(stream, server).await;
    }

    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let socket = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(socket) => socket,
        Err(error) => {
            tracing::warn!(%peer, error = %error, "chain-replay WebSocket handshake failed");
            return;
        }
    };
    tracing::info!(%peer, "chain-replay session opened");
    let mut session = Session {
        socket,
        server,
        subscriptions: Vec::new(),
        next_subscription: 1,
        next_step: None,
        steps_sent: 0,
    };
    match session.run(&shutdown).await {
        Ok(reason) => {
            tracing::info!(%peer, steps_sent = session.steps_sent, reason, "chain-replay session closed")
        }
        Err(error) => {
            tracing::info!(%peer, steps_sent = session.steps_sent, error = %error, "chain-replay session failed")
        }
    }
}

/// Returns the request head once it is complete (or 16 KiB long), without consuming it;
/// `None` when the client left first.
async fn peek_head(stream: &TcpStream) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; MAX_HEAD_BYTES];
    loop {
        let read = stream.peek(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        if head_end(&buffer[..read]).is_some() || read == buffer.len() {
            buffer.truncate(read);
            return Some(buffer);
        }
        sleep(PEEK_INTERVAL).await;
    }
}

/// A client subscription.
#[derive(Debug, Clone)]
enum Subscription {
    Heads { id: Value },
    Logs { id: Value, filter: LogFilter },
    Slots { id: Value },
    ProgramLogs { id: Value, mentions: String },
}

struct Session {
    socket: Socket,
    server: Arc<ChainReplay>,
    subscriptions: Vec<Subscription>,
    next_subscription: u64,
    /// The next replay step and when it is due; `None` before the replay starts and after
    /// the last step.
    next_step: Option<(usize, Instant)>,
    steps_sent: usize,
}

impl Session {
    async fn run(&mut self, shutdown: &CancellationToken) -> WsResult<&'static str> {
        loop {
            let due = self.next_step;
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                    let _ = self.socket.close(Some(frame)).await;
                    return Ok("server shutting down");
                }
                incoming = self.socket.next() => {
                    let Some(message) = incoming else { return Ok("client disconnected") };
                    match message? {
                        Message::Text(text) => self.on_request(text.as_str()).await?,
                        Message::Close(_) => return Ok("client closed the connection"),
                        _ => {}
                    }
                }
                _ = sleep_until(due.map_or_else(Instant::now, |(_, at)| at)), if due.is_some() => {
                    if let Some((index, _)) = due {
                        self.send_step(index).await?;
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, text: &str) -> WsResult<()> {
        let request: Value = match serde_json::from_str(text) {
            Ok(request) => request,
            Err(error) => {
                let failure = RpcFailure {
                    code: -32700,
                    message: format!("invalid JSON: {error}"),
                };
                return self.send(response(&Value::Null, Err(failure))).await;
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        let params = request
            .get("params")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        let result = self.dispatch(method, &params);
        self.send(response(&id, result)).await
    }

    fn dispatch(&mut self, method: &str, params: &Value) -> Result<Value, RpcFailure> {
        match (method, &self.server.recording) {
            ("eth_subscribe", Recording::Eth { .. }) => self.eth_subscribe(params),
            ("eth_unsubscribe", Recording::Eth { .. }) => Ok(self.unsubscribe(params)),
            ("slotSubscribe", Recording::Sol { .. }) => {
                let id = self.new_id(false);
                self.subscriptions
                    .push(Subscription::Slots { id: id.clone() });
                self.start_replay();
                Ok(id)
            }
            ("logsSubscribe", Recording::Sol { .. }) => self.logs_subscribe(params),
            ("slotUnsubscribe" | "logsUnsubscribe", Recording::Sol { .. }) => {
                Ok(self.unsubscribe(params))
            }
            (method, _) => self.server.call(method, params),
        }
    }

    fn eth_subscribe(&mut self, params: &Value) -> Result<Value, RpcFailure> {
        let kind = params.get(0).and_then(Value::as_str).unwrap_or("");
        let id = self.new_id(true);
        match kind {
            "newHeads" => {
                self.subscriptions
                    .push(Subscription::Heads { id: id.clone() });
                self.start_replay();
            }
            "logs" => {
                let filter = LogFilter::parse(params.get(1).unwrap_or(&json!({})))?;
                tracing::info!(?filter, "chain-replay logs subscription");
                self.subscriptions.push(Subscription::Logs {
                    id: id.clone(),
                    filter,
                });
            }
            other => {
                return Err(RpcFailure::invalid_params(format!(
                    "subscription {other:?} is not replayed: only newHeads and logs were recorded"
                )))
            }
        }
        Ok(id)
    }

    fn logs_subscribe(&mut self, params: &Value) -> Result<Value, RpcFailure> {
        let mentions = params
            .get(0)
            .and_then(|filter| filter.get("mentions"))
            .and_then(Value::as_array)
            .and_then(|keys| match keys.as_slice() {
                [key] => key.as_str().map(str::to_owned),
                _ => None,
            })
            .ok_or_else(|| {
                RpcFailure::invalid_params("logsSubscribe needs {\"mentions\": [one key]}")
            })?;
        let id = self.new_id(false);
        self.subscriptions.push(Subscription::ProgramLogs {
            id: id.clone(),
            mentions,
        });
        Ok(id)
    }

    fn unsubscribe(&mut self, params: &Value) -> Value {
        let Some(target) = params.get(0) else {
            return json!(false);
        };
        let before = self.subscriptions.len();
        self.subscriptions.retain(|s| subscription_id(s) != target);
        json!(self.subscriptions.len() < before)
    }

    /// Subscription ids are hex strings on EVM nodes and numbers on Solana nodes.
    fn new_id(&mut self, hex: bool) -> Value {
        let number = self.next_subscription;
        self.next_subscription += 1;
        if hex {
            json!(format!("0x{number:x}"))
        } else {
            json!(number)
        }
    }

    fn start_replay(&mut self) {
        if self.next_step.is_none() && self.steps_sent == 0 {
            self.next_step = Some((0, Instant::now()));
        }
    }

    async fn send_step(&mut self, index: usize) -> WsResult<()> {
        let notifications = self.step_notifications(index);
        for notification in notifications {
            self.send(notification).await?;
        }
        self.steps_sent += 1;
        let next = index + 1;
        self.next_step = (next < self.server.steps())
            .then(|| (next, Instant::now() + self.server.wait_before(next)));
        if self.next_step.is_none() {
            tracing::info!(
                steps = self.steps_sent,
                "chain-replay replay finished, session stays open"
            );
        }
        Ok(())
    }

    fn step_notifications(&self, index: usize) -> Vec<Value> {
        let mut out = Vec::new();
        match &self.server.recording {
            Recording::Eth { recording, .. } if index >= recording.blocks.len() => {
                // The removal step: the last block's logs again, marked removed.
                let last = recording.blocks.len() - 1;
                for subscription in &self.subscriptions {
                    if let Subscription::Logs { id, filter } = subscription {
                        out.extend(recording.logs_matching(last, filter).into_iter().map(
                            |mut log| {
                                log["removed"] = json!(true);
                                eth_notification(id, log)
                            },
                        ));
                    }
                }
            }
            Recording::Eth { recording, .. } => {
                for subscription in &self.subscriptions {
                    match subscription {
                        Subscription::Heads { id } => {
                            out.push(eth_notification(id, recording.head(index)));
                        }
                        Subscription::Logs { id, filter } => out.extend(
                            recording
                                .logs_matching(index, filter)
                                .into_iter()
                                .map(|log| eth_notification(id, log)),
                        ),
                        _ => {}
                    }
                }
            }
            Recording::Sol { recording, .. } => {
                let slot = recording.slot + index as u64;
                let parent = if index == 0 {
                    recording.parent_slot
                } else {
                    slot - 1
                };
                for subscription in &self.subscriptions {
                    match subscription {
                        Subscription::Slots { id } => out.push(json!({
                            "jsonrpc": "2.0",
                            "method": "slotNotification",
                            "params": {
                                "result": {"parent": parent, "root": slot.saturating_sub(32), "slot": slot},
                                "subscription": id
                            }
                        })),
                        Subscription::ProgramLogs { id, mentions } if index == 0 => {
                            out.extend(recording.mentioning(mentions).map(|tx| {
                                json!({
                                    "jsonrpc": "2.0",
                                    "method": "logsNotification",
                                    "params": {
                                        "result": {
                                            "context": {"slot": slot},
                                            "value": {"signature": tx.signature, "err": tx.err, "logs": tx.logs}
                                        },
                                        "subscription": id
                                    }
                                })
                            }))
                        }
                        _ => {}
                    }
                }
            }
        }
        out
    }

    async fn send(&mut self, message: Value) -> WsResult<()> {
        self.socket.send(Message::text(message.to_string())).await
    }
}

fn subscription_id(subscription: &Subscription) -> &Value {
    match subscription {
        Subscription::Heads { id }
        | Subscription::Logs { id, .. }
        | Subscription::Slots { id }
        | Subscription::ProgramLogs { id, .. } => id,
    }
}

fn eth_notification(id: &Value, result: Value) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "eth_subscription",
        "params": {"subscription": id, "result": result}
    })
}
