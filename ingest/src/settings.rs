//! Settings of the ingest stage, read from the environment or the command line.

use std::time::Duration;

use clap::Args;
use monitor_core::settings::{parse_seconds, NatsSettings, Redacted, RuntimeSettings};
use url::Url;

/// Default `BIRDEYE_WS_URL`.
pub const DEFAULT_BIRDEYE_WS_URL: &str = "wss://public-api.birdeye.so/socket";

/// Everything `ingest run` needs.
#[derive(Debug, Clone, Args)]
pub struct IngestSettings {
    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub feed: FeedSettings,

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

    /// Birdeye API key, sent as the `x-api-key` query parameter.
    #[arg(
        long = "birdeye-api-key",
        env = "BIRDEYE_API_KEY",
        value_name = "BIRDEYE_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Redacted,
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
            },
            heartbeat_interval: Duration::from_secs(30),
            max_buffered_events: 10_000,
            runtime: RuntimeSettings::default(),
        }
    }
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let interval = parse_seconds(s)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("expected at least 0.1 seconds, got {s:?}"));
    }
    Ok(interval)
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
