//! Settings of the notify stage: MySQL, NATS, the Java WebSocket and the runtime options.
//!
//! Every value comes from its environment variable (optionally from `.env`) or from the flag of
//! the same name. `WS_TOKEN` is a secret: `Debug` prints it as `***` and `--help` hides it.

use std::time::Duration;

use clap::Args;
use monitor_core::settings::{DbSettings, NatsSettings, Redacted, RuntimeSettings};

/// Everything `notify run` needs.
#[derive(Debug, Clone, Args)]
pub struct NotifySettings {
    #[command(flatten)]
    pub db: DbSettings,

    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub ws: WsSettings,

    #[command(flatten)]
    pub runtime: RuntimeSettings,
}

/// Connection to the Java backend's monitor WebSocket.
#[derive(Debug, Clone, Args)]
pub struct WsSettings {
    /// URL of the Java backend's monitor WebSocket (ws:// or wss://).
    #[arg(
        id = "ws_url",
        long = "ws-url",
        value_name = "URL",
        env = "WS_URL",
        default_value = "ws://localhost:8080/websocket/monitor",
        value_parser = parse_ws_url
    )]
    pub url: String,

    /// Token sent as `Authorization: Bearer <token>` (empty sends no header).
    #[arg(
        id = "ws_token",
        long = "ws-token",
        value_name = "TOKEN",
        env = "WS_TOKEN",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true,
        value_parser = parse_token
    )]
    pub token: Redacted,

    /// Ping, timeout and reconnect timings; fixed by the protocol, shortened only by tests.
    #[arg(skip)]
    pub timing: WsTiming,
}

impl WsSettings {
    /// Settings for a local peer without a token and with the protocol's timings.
    pub fn local(url: &str) -> Self {
        WsSettings {
            url: url.to_owned(),
            token: Redacted::default(),
            timing: WsTiming::default(),
        }
    }
}

/// Timings of the WebSocket client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsTiming {
    /// Interval between two `{"type":"ping"}` messages.
    pub ping_interval: Duration,
    /// Time the server has to answer a ping with `pong` before the client reconnects.
    pub pong_timeout: Duration,
    /// First reconnect delay; it doubles after each failed attempt.
    pub reconnect_min: Duration,
    /// Maximum reconnect delay.
    pub reconnect_max: Duration,
    /// Time limit of the TCP, TLS and WebSocket handshakes together.
    pub connect_timeout: Duration,
    /// Time limit of writing one message to the socket.
    pub send_timeout: Duration,
}

impl Default for WsTiming {
    fn default() -> Self {
        WsTiming {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
        }
    }
}

fn parse_ws_url(s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| format!("invalid WebSocket URL {s:?}: {e}"))?;
    match url.scheme() {
        "ws" | "wss" => Ok(s.to_owned()),
        other => Err(format!(
            "invalid WebSocket URL {s:?}: expected scheme ws or wss, got {other}"
        )),
    }
}

/// Accepts tokens that fit in an HTTP header value; the message never repeats the token.
fn parse_token(s: &str) -> Result<Redacted, String> {
    if s.chars().all(|c| c.is_ascii_graphic()) {
        Ok(Redacted(s.to_owned()))
    } else {
        Err("invalid token: use printable ASCII without spaces".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_accepts_ws_and_wss() {
        assert!(parse_ws_url("ws://localhost:8080/websocket/monitor").is_ok());
        assert!(parse_ws_url("wss://example.com/websocket/monitor").is_ok());
    }

    #[test]
    fn ws_url_rejects_http_scheme() {
        let error = parse_ws_url("http://localhost:8080").unwrap_err();
        assert!(error.contains("expected scheme ws or wss"), "{error}");
    }

    #[test]
    fn token_with_newline_is_rejected_without_echoing_it() {
        let error = parse_token("secret\nvalue").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn token_is_redacted_in_debug_output() {
        let settings = WsSettings {
            token: parse_token("s3cr3t").unwrap(),
            ..WsSettings::local("ws://127.0.0.1:1/ws")
        };
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }
}
