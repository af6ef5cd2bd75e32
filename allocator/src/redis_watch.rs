//! Subscription to the Redis channel on which the Java side announces config changes.
//!
//! Consumes messages `{"configId": N, "version": M}` from the channel (default
//! `monitor:config:changed`); produces [`ConfigChange`]s on a channel to the control loop.
//! Redis only speeds changes up: the database poll finds every change anyway. So when Redis is
//! down the watcher reconnects with exponential backoff and jitter (0.5 s up to 30 s) and logs
//! one line per state change, never one per failed attempt.

use std::time::Duration;

use futures::StreamExt;
use monitor_core::settings::RedisSettings;
use rand::Rng;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum number of payload characters quoted in a log line.
const LOGGED_PAYLOAD_CHARS: usize = 200;

/// A config change announced by the Java side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigChange {
    pub config_id: u64,
    pub version: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid config change notice {payload:?}: {reason}")]
pub struct InvalidNotice {
    pub payload: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notice {
    #[serde(alias = "config_id")]
    config_id: u64,
    #[serde(default)]
    version: Option<u64>,
}

/// Parses a notice `{"configId": N, "version": M}`; `version` is optional.
pub fn parse_notice(payload: &str) -> Result<ConfigChange, InvalidNotice> {
    let notice: Notice = serde_json::from_str(payload).map_err(|e| InvalidNotice {
        payload: payload.chars().take(LOGGED_PAYLOAD_CHARS).collect(),
        reason: e.to_string(),
    })?;
    Ok(ConfigChange {
        config_id: notice.config_id,
        version: notice.version,
    })
}

/// Runs until `shutdown`: subscribes, forwards notices, reconnects after a failure.
pub async fn watch(
    settings: RedisSettings,
    channel: String,
    changes: mpsc::Sender<ConfigChange>,
    shutdown: CancellationToken,
) {
    // Whether the last attempt failed: a failure is logged only when this turns true.
    let mut down = false;
    let mut backoff = BACKOFF_START;
    while !shutdown.is_cancelled() {
        match subscribe(&settings, &channel).await {
            Ok(pubsub) => {
                tracing::info!(
                    channel,
                    host = settings.host,
                    port = settings.port,
                    "subscribed to config changes"
                );
                backoff = BACKOFF_START;
                let closed = forward(pubsub, &changes, &shutdown).await;
                if closed == Forwarding::Stopped {
                    return;
                }
                tracing::warn!(
                    channel,
                    "redis subscription lost, config changes are found by polling until it is back"
                );
                down = true;
            }
            Err(error) => {
                if !down {
                    tracing::warn!(channel, host = settings.host, port = settings.port, error = %error, "redis unavailable, config changes are found by polling until it is back");
                    down = true;
                } else {
                    tracing::debug!(error = %error, "redis still unavailable");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jittered(backoff)) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

async fn subscribe(
    settings: &RedisSettings,
    channel: &str,
) -> Result<redis::aio::PubSub, SubscribeError> {
    // The URL carries the password, so it is never logged; the redis crate's errors name
    // the failing part ("Redis URL did not parse") without quoting the URL.
    let client = redis::Client::open(settings.url())?;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| SubscribeError::Timeout(CONNECT_TIMEOUT))?
        .map_err(SubscribeError::from)
}

#[derive(Debug, PartialEq, Eq)]
enum Forwarding {
    /// The connection closed; reconnect.
    Lost,
    /// Shutdown, or the control loop is gone.
    Stopped,
}

async fn forward(
    mut pubsub: redis::aio::PubSub,
    changes: &mpsc::Sender<ConfigChange>,
    shutdown: &CancellationToken,
) -> Forwarding {
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Forwarding::Stopped,
            message = messages.next() => message,
        };
        let Some(message) = message else {
            return Forwarding::Lost;
        };
        let payload: String = match message.get_payload() {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(error = %error, "ignoring a config change notice that is not text");
                continue;
            }
        };
        match parse_notice(&payload) {
            Ok(change) => {
                tracing::debug!(
                    config_id = change.config_id,
                    version = change.version,
                    "config change notice"
                );
                if changes.send(change).await.is_err() {
                    return Forwarding::Stopped;
                }
            }
            Err(error) => tracing::warn!(error = %error, "ignoring a config change notice"),
        }
    }
}

/// Scales a backoff by a random factor in [0.5, 1.0), so that allocators restarted together do
/// not reconnect in step.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::rng().random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_with_config_id_and_version_parses() {
        assert_eq!(
            parse_notice(r#"{"configId": 7, "version": 3}"#).unwrap(),
            ConfigChange {
                config_id: 7,
                version: Some(3)
            }
        );
    }

    #[test]
    fn notice_without_version_parses() {
        assert_eq!(parse_notice(r#"{"configId": 7}"#).unwrap().version, None);
    }

    #[test]
    fn notice_without_config_id_is_rejected_with_payload() {
        let error = parse_notice(r#"{"version": 3}"#).unwrap_err();
        assert_eq!(error.payload, r#"{"version": 3}"#);
        assert!(error.to_string().contains("configId"), "{error}");
    }

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(5), "{d:?}");
            assert!(d < Duration::from_secs(10), "{d:?}");
        }
    }
}
