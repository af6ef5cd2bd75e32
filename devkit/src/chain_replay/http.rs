//! The HTTP side of the chain replay: one JSON-RPC POST per connection.
//!
//! This is a deliberately small HTTP/1.1 server for a development tool: it reads one request
//! (headers up to 16 KiB, a body of `Content-Length` bytes up to 1 MiB), responds with
//! `Connection: close` and closes. Clients such as reqwest open a new connection for the next
//! request.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{response, ChainReplay, RpcFailure};

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Position of the end of the request head (after `\r\n\r\n`), if the bytes contain it.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// Returns whether a request head requests a WebSocket upgrade.
pub fn is_websocket_upgrade(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    text.lines()
        .any(|line| line.starts_with("upgrade:") && line.contains("websocket"))
}

/// Reads one JSON-RPC request, sends the response and closes the connection.
pub async fn serve(mut stream: TcpStream, server: Arc<ChainReplay>) {
    let (status, body) = match timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(request)) => ("200 OK", answer(&server, &request)),
        Ok(Err(problem)) => ("400 Bad Request", problem),
        Err(_) => (
            "408 Request Timeout",
            "request not received in time".to_owned(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(error) = stream.write_all(reply.as_bytes()).await {
        tracing::debug!(error = %error, "chain-replay failed to send an HTTP response");
    }
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_len = loop {
        if let Some(end) = head_end(&buffer) {
            break end;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err("request head longer than 16 KiB".into());
        }
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("connection closed before the request head ended".into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_len]).to_ascii_lowercase();
    if !head.starts_with("post ") {
        return Err("only POST requests with a JSON-RPC body are served".into());
    }
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .ok_or("Content-Length is missing")?;
    if length > MAX_BODY_BYTES {
        return Err(format!("body of {length} bytes is longer than 1 MiB"));
    }
    while buffer.len() < head_len + length {
        let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("connection closed before the body ended".into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Ok(buffer[head_len..head_len + length].to_vec())
}

/// Returns the response body to a JSON-RPC request or batch.
fn answer(server: &ChainReplay, body: &[u8]) -> String {
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            let failure = RpcFailure {
                code: -32700,
                message: format!("invalid JSON: {error}"),
            };
            return response(&Value::Null, Err(failure)).to_string();
        }
    };
    match request {
        Value::Array(batch) => {
            let answers: Vec<Value> = batch.iter().map(|r| answer_one(server, r)).collect();
            Value::Array(answers).to_string()
        }
        single => answer_one(server, &single).to_string(),
    }
}

fn answer_one(server: &ChainReplay, request: &Value) -> Value {
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = request.get("method").and_then(Value::as_str) else {
        return response(&id, Err(RpcFailure::invalid_request("method missing")));
    };
    let params = request
        .get("params")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    tracing::debug!(method, "chain-replay HTTP request");
    response(&id, server.call(method, &params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_header_is_found_in_any_case() {
        let head =
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n";

        assert!(is_websocket_upgrade(head));
        assert!(!is_websocket_upgrade(
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        ));
    }

    #[test]
    fn head_end_points_after_blank_line() {
        assert_eq!(head_end(b"POST / HTTP/1.1\r\n\r\n{}"), Some(19));
        assert_eq!(head_end(b"POST / HTTP/1.1\r\n"), None);
    }
}
