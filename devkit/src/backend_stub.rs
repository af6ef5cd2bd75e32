//! `devkit backend-stub`: the Java backend's WebSocket endpoint, for development and tests.
//!
//! Accepts WebSocket clients on any path (the Java endpoint is `/websocket/monitor`; other
//! paths are served too and logged). On connect it sends
//! `{"type":"connected","sessionId":…,"message":"WebSocket连接成功","timestamp":<ms>}`; it replies to
//! every `{"type":"ping"}` with `{"type":"pong","timestamp":<ms>}`. Every text message received
//! on any connection is written to the output as one compact JSON line, in arrival order, and
//! the output is flushed after each line, so a test can read what arrived while the stub runs.
//! A text message that is not JSON is written as a JSON string so every line stays JSON.
//!
//! Every message is also checked against the protocol's shapes ([`contract`]). A message that
//! does not match is logged as a warning and, with `--violations FILE`, written to that file
//! as one JSON line `{"type":…,"errors":[…],"message":…}`; with `--strict` the stub then closes
//! the connection with close code 1008 (policy violation). A test reads the file to fail on
//! any mismatch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use monitor_core::settings::Redacted;
use monitor_core::time::now_ms;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub mod contract;

/// Path of the Java backend's monitor endpoint.
pub const MONITOR_PATH: &str = "/websocket/monitor";
/// Greeting text of the Java backend, kept verbatim because clients may compare it.
pub const CONNECTED_MESSAGE: &str = "WebSocket连接成功";

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time that open connections get to close after shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Lines buffered between connections and the writer before connections wait.
const RECORD_BUFFER: usize = 1024;

/// Settings of `devkit backend-stub`.
#[derive(Debug, Clone, Args)]
pub struct BackendStubSettings {
    /// Address to listen on; port 0 picks a free port. The bound address is printed as the
    /// first line on stdout: `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// File that receives every message as one JSON line (appended, flushed per line);
    /// stdout when unset.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Token that clients must send as `Authorization: Bearer TOKEN`; clients without it get
    /// HTTP 401. Any client is accepted when unset.
    #[arg(long, hide_default_value = true)]
    pub token: Option<Redacted>,

    /// Send no `pong` in reply to `ping` messages, to exercise a client's missing-pong reconnect.
    #[arg(long)]
    pub no_pong: bool,

    /// File that receives every message that does not match the protocol, as one JSON line
    /// with the errors (appended, flushed per line). Violations are logged either way.
    #[arg(long, value_name = "FILE")]
    pub violations: Option<PathBuf>,

    /// Close the connection (code 1008) after a message that does not match the protocol.
    #[arg(long)]
    pub strict: bool,
}

/// Behaviour of a running stub.
#[derive(Debug, Clone, Default)]
pub struct BackendStub {
    /// Required bearer token, if any.
    pub token: Option<Redacted>,
    /// Whether `ping` messages get a `pong`.
    pub answer_pings: bool,
    /// File that receives the messages that do not match the protocol.
    pub violations: Option<PathBuf>,
    /// Whether a message that does not match the protocol closes its connection.
    pub strict: bool,
}

impl BackendStub {
    pub fn from_settings(settings: &BackendStubSettings) -> Self {
        BackendStub {
            token: settings.token.clone().filter(|t| !t.is_empty()),
            answer_pings: !settings.no_pong,
            violations: settings.violations.clone(),
            strict: settings.strict,
        }
    }

    // tungstenite's handshake callback fixes this error type.
    #[allow(clippy::result_large_err)]
    fn authorize(&self, request: &Request) -> Result<(), ErrorResponse> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let sent = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent == Some(token.expose()) {
            return Ok(());
        }
        let mut error = ErrorResponse::new(Some("missing or wrong bearer token".to_owned()));
        *error.status_mut() = StatusCode::UNAUTHORIZED;
        Err(error)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendStubError {
    #[error("failed to write a received message to the output: {0}")]
    Write(#[source] std::io::Error),
    #[error("failed to open the violations file {path}: {source}")]
    OpenViolations {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write to the violations file: {0}")]
    WriteViolation(#[source] std::io::Error),
}

/// Where a connection hands its output lines.
#[derive(Clone)]
struct Records {
    received: mpsc::Sender<String>,
    violations: Option<mpsc::Sender<String>>,
}

/// Serves clients on `listener` and writes what they send to `out`, until `shutdown` is
/// cancelled. Returns after every connection closed and every received message was written.
pub async fn run_backend_stub<W>(
    listener: TcpListener,
    stub: BackendStub,
    out: W,
    shutdown: CancellationToken,
) -> Result<(), BackendStubError>
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let violations_writer = match &stub.violations {
        Some(path) => Some(open_violations(path).await?),
        None => None,
    };
    let (received, pending) = mpsc::channel(RECORD_BUFFER);
    let writer = tokio::spawn(write_records(pending, out));
    let (violations, violations_task) = match violations_writer {
        Some(file) => {
            let (sender, pending) = mpsc::channel(RECORD_BUFFER);
            (
                Some(sender),
                Some(tokio::spawn(write_records(pending, file))),
            )
        }
        None => (None, None),
    };
    let records = Records {
        received,
        violations,
    };
    tracing::info!(address = ?listener.local_addr().ok(), bearer_required = stub.token.is_some(), strict = stub.strict, "backend-stub serving");

    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, stub.clone(), records.clone(), shutdown.clone()));
                }
                Err(error) => {
                    tracing::warn!(error = %error, "backend-stub failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    // A connection blocked on a client that stopped reading cannot see the shutdown, so it is
    // aborted after a grace period. Messages it had already read are written.
    let drain = async { while connections.join_next().await.is_some() {} };
    if timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            grace_sec = SHUTDOWN_GRACE.as_secs(),
            "backend-stub aborted connections still open after the shutdown grace period"
        );
        connections.shutdown().await;
    }
    // The writers end once every sender is dropped and the buffered lines are written.
    drop(records);
    let written = match writer.await {
        Ok(result) => result,
        Err(join_error) => Err(BackendStubError::Write(std::io::Error::other(join_error))),
    };
    if let Some(task) = violations_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(BackendStubError::Write(error))) => {
                return Err(BackendStubError::WriteViolation(error))
            }
            Ok(Err(other)) => return Err(other),
            Err(join_error) => {
                return Err(BackendStubError::WriteViolation(std::io::Error::other(
                    join_error,
                )))
            }
        }
    }
    written
}

async fn open_violations(path: &std::path::Path) -> Result<tokio::fs::File, BackendStubError> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|source| BackendStubError::OpenViolations {
            path: path.to_owned(),
            source,
        })
}

async fn write_records<W>(
    mut pending: mpsc::Receiver<String>,
    mut out: W,
) -> Result<(), BackendStubError>
where
    W: AsyncWrite + Unpin,
{
    while let Some(mut line) = pending.recv().await {
        line.push('\n');
        out.write_all(line.as_bytes())
            .await
            .map_err(BackendStubError::Write)?;
        out.flush().await.map_err(BackendStubError::Write)?;
    }
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    stub: BackendStub,
    records: Records,
    shutdown: CancellationToken,
) {
    let mut path = String::new();
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        stub.authorize(request).map(|()| response)
    };
    let mut socket = match timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async(stream, callback),
    )
    .await
    {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::warn!(%peer, path, error = %error, "backend-stub handshake rejected");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "backend-stub handshake timed out");
            return;
        }
    };
    if path == MONITOR_PATH {
        tracing::info!(%peer, path, "backend-stub connection opened");
    } else {
        tracing::warn!(%peer, path, expected = MONITOR_PATH, "backend-stub connection opened on an unexpected path");
    }

    let session_id = session_id();
    let greeting = json!({
        "type": "connected",
        "sessionId": session_id,
        "message": CONNECTED_MESSAGE,
        "timestamp": now_ms(),
    });
    let mut received = 0u64;
    let mut violations = 0u64;
    let result: Result<(), tokio_tungstenite::tungstenite::Error> = async {
        socket.send(Message::text(greeting.to_string())).await?;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => {
                    socket.close(None).await?;
                    return Ok(());
                }
                message = socket.next() => message,
            };
            let Some(message) = message else {
                return Ok(());
            };
            let Message::Text(text) = message? else {
                continue;
            };
            received += 1;
            let (line, is_ping) = record_line(text.as_str());
            if records.received.send(line).await.is_err() {
                // The writer failed; run_backend_stub reports its error.
                return Ok(());
            }
            if let Some(violation) = check_message(text.as_str()) {
                violations += 1;
                tracing::warn!(%peer, session_id, message_type = %violation["type"], errors = %violation["errors"], "backend-stub received a message that does not match the protocol");
                if let Some(sender) = &records.violations {
                    if sender.send(violation.to_string()).await.is_err() {
                        return Ok(());
                    }
                }
                if stub.strict {
                    let close = CloseFrame {
                        code: CloseCode::Policy,
                        reason: "message does not match the protocol".into(),
                    };
                    socket.close(Some(close)).await?;
                    return Ok(());
                }
            }
            if is_ping && stub.answer_pings {
                let pong = json!({"type": "pong", "timestamp": now_ms()});
                socket.send(Message::text(pong.to_string())).await?;
            }
        }
    }
    .await;

    match result {
        Ok(()) => {
            tracing::info!(%peer, session_id, received, violations, "backend-stub connection closed")
        }
        Err(error) => {
            tracing::info!(%peer, session_id, received, violations, error = %error, "backend-stub connection failed")
        }
    }
}

/// Checks a received text message against the protocol; returns the violation line
/// `{"type":…,"errors":[…],"message":…}` when it does not match.
fn check_message(text: &str) -> Option<Value> {
    let (message, errors) = match serde_json::from_str::<Value>(text) {
        Ok(message) => {
            let errors = contract::check(&message);
            (message, errors)
        }
        Err(error) => (
            Value::String(text.to_owned()),
            vec![format!("not JSON: {error}")],
        ),
    };
    if errors.is_empty() {
        return None;
    }
    Some(json!({
        "type": message.get("type").cloned().unwrap_or(Value::Null),
        "errors": errors,
        "message": message,
    }))
}

/// Returns the output line for a received text message, and whether it is a `ping`.
fn record_line(text: &str) -> (String, bool) {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => {
            let is_ping = value.get("type").and_then(Value::as_str) == Some("ping");
            (compact_json(text), is_ping)
        }
        Err(error) => {
            tracing::warn!(error = %error, length = text.len(), "backend-stub received a message that is not JSON");
            (Value::String(text.to_owned()).to_string(), false)
        }
    }
}

/// Removes the whitespace between the tokens of valid JSON text, keeping keys in their order
/// and strings byte for byte.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// A random id in the layout of a version 4 UUID.
fn session_id() -> String {
    let bits: u128 = rand::random();
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-4{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_line_is_compact_json() {
        let (line, is_ping) = record_line(
            "{ \"type\" : \"alert\",\n \"data\": {\"alertId\": 7, \"title\": \"a \\\" b\"} }",
        );
        assert_eq!(
            line,
            r#"{"type":"alert","data":{"alertId":7,"title":"a \" b"}}"#
        );
        assert!(!is_ping);
    }

    #[test]
    fn record_line_detects_ping() {
        assert_eq!(
            record_line(r#"{"type":"ping"}"#),
            (r#"{"type":"ping"}"#.to_owned(), true)
        );
    }

    #[test]
    fn record_line_keeps_non_json_as_a_string() {
        assert_eq!(
            record_line("hello \"x\""),
            (r#""hello \"x\"""#.to_owned(), false)
        );
    }

    #[test]
    fn check_message_returns_errors_and_the_message() {
        let violation = check_message(r#"{"type":"alert_update","data":{"alertId":"7"}}"#)
            .expect("alertId as a string is a violation");
        assert_eq!(violation["type"], "alert_update");
        assert_eq!(violation["message"]["data"]["alertId"], "7");
        let errors = violation["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e.as_str().unwrap().starts_with("data.alertId:")),
            "{errors:?}"
        );

        assert_eq!(check_message(r#"{"type":"ping"}"#), None);
        let not_json = check_message("hello").unwrap();
        assert_eq!(not_json["type"], Value::Null);
        assert_eq!(not_json["message"], "hello");
    }

    #[test]
    fn session_id_looks_like_a_uuid() {
        let id = session_id();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
        assert_ne!(id, session_id());
    }
}
