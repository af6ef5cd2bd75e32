//! Settings of the ingest stage, read from the environment or the command line.

use std::time::Duration;

use clap::Args;
use monitor_core::settings::{parse_seconds, NatsSettings, Redacted, RuntimeSettings};
use url::Url;

use crate::block_task::settings::ChainSettings;

/// Default `BIRDEYE_WS_URL`.
pub const DEFAULT_BIRDEYE_WS_URL: &str = "wss://public-api.birdeye.so/socket";
/// Default `BIRDEYE_API_URL`.
pub const DEFAULT_BIRDEYE_API_URL: &str = "https://public-api.birdeye.so";

/// Everything `ingest run` needs.
#[derive(Debug, Clone, Args)]
pub struct IngestSettings {
    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub feed: FeedSettings,

    #[command(flatten)]
    pub chains: ChainSettings,

    /// Seconds between two heartbeats of a batch.
    #[arg(long = "heartbeat-interval", env = "HEARTBEAT_INTERVAL", default_value = "30", value_parser = parse_interval)]
    pub heartbeat_interval: Duration,

    /// Events a batch may hold while NATS has not acknowledged them; when full, the batch
    /// stops reading its feed sockets until NATS catches up.
    #[arg(long = "max-buffered-events", env = "MAX_BUFFERED_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_buffered_events: u32,

    #[command(flatten)]
    pub runtime: RuntimeSettings,
}

/// The Birdeye WebSocket feed.
#[derive(Debug, Clone, Args)]
pub struct FeedSettings {
    /// Base URL of the Birdeye WebSocket; the chain is appended as a path segment.
    #[arg(long = "birdeye-ws-url", env = "BIRDEYE_WS_URL", default_value = DEFAULT_BIRDEYE_WS_URL, value_parser = parse_ws_url)]
    pub ws_url: Url,

    /// Birdeye API key, sent as the `x-api-key` query parameter. Token tasks need it; an
    /// instance that serves only block tasks may leave it empty.
    #[arg(
        long = "birdeye-api-key",
        env = "BIRDEYE_API_KEY",
        value_name = "BIRDEYE_API_KEY",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub api_key: Redacted,

    /// Base URL of the Birdeye REST API, polled for holder counts and top holders.
    #[arg(long = "birdeye-api-url", env = "BIRDEYE_API_URL", default_value = DEFAULT_BIRDEYE_API_URL, value_parser = parse_http_url)]
    pub api_url: Url,

    /// Maximum requests per second to the Birdeye REST API, shared by every batch of this
    /// instance.
    #[arg(long = "birdeye-rps", env = "BIRDEYE_RPS", default_value_t = 10.0, value_parser = parse_rps)]
    pub rps: f64,

    /// Seconds without any frame or pong after which a feed connection counts as stalled
    /// and is replaced; the client pings every third of it.
    #[arg(long = "feed-stall-timeout", env = "FEED_STALL_TIMEOUT", default_value = "90", value_parser = parse_interval)]
    pub stall_timeout: Duration,

    /// Largest WebSocket frame or message, in bytes, accepted from the feed; a larger one ends
    /// the connection, which reconnects. Birdeye frames are a few kilobytes.
    #[arg(long = "max-frame-bytes", env = "MAX_FRAME_BYTES", default_value_t = monitor_core::limits::DEFAULT_MAX_FRAME_BYTES, value_parser = parse_max_frame_bytes)]
    pub max_frame_bytes: usize,
}

impl IngestSettings {
    /// Settings for a test or a local run: a NATS URL and prefix, a feed URL and key, defaults
    /// for everything else.
    pub fn local(nats_url: &str, prefix: &str, ws_url: Url, api_key: &str) -> Self {
        IngestSettings {
            nats: NatsSettings::local(nats_url, prefix),
            feed: FeedSettings {
                ws_url,
                api_key: Redacted(api_key.to_owned()),
                api_url: default_api_url(),
                rps: 10.0,
                stall_timeout: Duration::from_secs(90),
                max_frame_bytes: monitor_core::limits::DEFAULT_MAX_FRAME_BYTES,
            },
            chains: ChainSettings::default(),
            heartbeat_interval: Duration::from_secs(30),
            max_buffered_events: 10_000,
            runtime: RuntimeSettings::default(),
        }
    }
}

/// Accepts 1 KiB to 64 MiB: a smaller limit would reject ordinary frames, and tungstenite
/// buffers a whole message before it is checked against a larger one.
fn parse_max_frame_bytes(s: &str) -> Result<usize, String> {
    let bytes: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of bytes, got {s:?}"))?;
    if !(1024..=64 << 20).contains(&bytes) {
        return Err(format!("expected 1024 to 67108864 bytes, got {bytes}"));
    }
    Ok(bytes)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let interval = parse_seconds(s)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("expected at least 0.1 seconds, got {s:?}"));
    }
    Ok(interval)
}

#[allow(clippy::expect_used)]
fn default_api_url() -> Url {
    Url::parse(DEFAULT_BIRDEYE_API_URL).expect("the default API URL is valid")
}

fn parse_rps(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps > 0.0 => Ok(rps),
        _ => Err(format!("expected requests per second > 0, got {s:?}")),
    }
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("expected an http:// or https:// URL, got {s:?}"));
    }
    Ok(url)
}

fn parse_ws_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(format!("expected a ws:// or wss:// URL, got {s:?}"));
    }
    if url.query().is_some() {
        return Err(format!(
            "expected a URL without a query (the API key is added as x-api-key), got {s:?}"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_url_must_be_websocket() {
        assert!(parse_ws_url("wss://public-api.birdeye.so/socket").is_ok());
        assert!(parse_ws_url("ws://127.0.0.1:9000").is_ok());
        let error = parse_ws_url("https://public-api.birdeye.so/socket").unwrap_err();
        assert!(error.contains("ws:// or wss://"), "{error}");
        assert!(parse_ws_url("wss://x/socket?x-api-key=1").is_err());
    }

    #[test]
    fn interval_below_100ms_is_rejected() {
        assert_eq!(parse_interval("30"), Ok(Duration::from_secs(30)));
        assert!(parse_interval("0").is_err());
    }
}
