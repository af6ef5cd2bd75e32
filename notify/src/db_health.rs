//! Whether MySQL answers, shared by every part of the stage that queries it.
//!
//! A MySQL outage is logged once when the first query fails and once when a query succeeds
//! again, whichever part of the stage notices it, so an outage costs two log lines and not one
//! per alert or heartbeat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monitor_core::settings::DbSettings;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Pause between two connection attempts at start while MySQL is unavailable.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// The availability of MySQL as the last query saw it; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DbHealth {
    failing: Arc<AtomicBool>,
}

impl DbHealth {
    /// Records a failed query; logs a warning only when MySQL was available until now.
    pub fn failed(&self, error: &dyn std::error::Error) {
        if self.failing.swap(true, Ordering::SeqCst) {
            debug!(error = %error, "mysql still unavailable");
        } else {
            warn!(error = %error, "mysql unavailable, alerts stay in the stream until it returns");
        }
    }

    /// Records a successful query; logs once when it ends an outage.
    pub fn available(&self) {
        if self.failing.swap(false, Ordering::SeqCst) {
            info!("mysql available again");
        }
    }

    /// Whether the last query failed.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }
}

/// Opens the pool, retrying while MySQL is unavailable, so that a stage started during an
/// outage waits for MySQL instead of exiting. Returns `None` when `shutdown` comes first.
pub async fn connect(
    settings: &DbSettings,
    health: &DbHealth,
    shutdown: &CancellationToken,
) -> Option<MySqlPool> {
    loop {
        match monitor_core::db::connect(settings).await {
            Ok(pool) => {
                health.available();
                return Some(pool);
            }
            Err(error) => health.failed(&error),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(CONNECT_RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_last_query() {
        let health = DbHealth::default();
        let error = std::io::Error::other("connection refused");
        assert!(!health.is_failing());

        health.failed(&error);
        health.failed(&error);
        assert!(health.is_failing());

        health.clone().available();
        assert!(!health.is_failing(), "clones share the state");
    }
}
