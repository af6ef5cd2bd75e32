//! Keeps the [`SharedCache`] equal to the tasks bucket through a KV watch.
//!
//! The watch starts with the last value of every key and then follows every change. Once the
//! initial values are applied, the cache is marked ready, and the consumer loop starts
//! pulling frames only then, so that a restart does not delay every frame. A watch that ends or
//! fails (for example when the server restarts) is re-opened after a backoff, and the re-opened
//! watch's initial values replace the cache's content, so keys removed in between disappear.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cache::{Key, SharedCache};

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Reason a watch stopped.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("failed to open the watch of bucket {bucket}: {source}")]
    Open {
        bucket: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("watch of bucket {bucket} failed: {source}")]
    Follow {
        bucket: String,
        source: kv::WatcherError,
    },
    #[error("watch of bucket {bucket} ended")]
    Ended { bucket: String },
}

/// Follows the tasks bucket until shutdown, re-opening the watch whenever it stops.
pub async fn watch_tasks(
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
    cache: SharedCache,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let watcher = Watcher {
        js,
        store,
        bucket,
        cache,
        ready,
    };
    let mut delay = RETRY_MIN;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = watcher.follow() => result,
        };
        let error = match result {
            Ok(()) => return,
            Err(error) => error,
        };
        warn!(bucket = %watcher.bucket, error = %error, retry_in_ms = delay.as_millis() as u64, "tasks watch stopped, re-opening");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

struct Watcher {
    js: jetstream::Context,
    store: kv::Store,
    bucket: String,
    cache: SharedCache,
    ready: watch::Sender<bool>,
}

impl Watcher {
    /// Opens a watch, loads the initial values and then applies changes until the watch stops.
    async fn follow(&self) -> Result<(), WatchError> {
        let mut entries = self
            .store
            .watch_with_history(">")
            .await
            .map_err(|e| self.open_error(Box::new(e)))?;
        // The watch delivers the last value of every key and then waits. An empty bucket
        // delivers nothing, so the count of stored values tells whether to wait at all.
        let stored_values = self.stored_values().await?;
        let mut loading = Some(HashSet::new());
        if stored_values == 0 {
            self.finish_loading(&mut loading);
        }

        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|source| WatchError::Follow {
                bucket: self.bucket.clone(),
                source,
            })?;
            self.apply(&entry, loading.as_mut());
            if entry.delta == 0 {
                self.finish_loading(&mut loading);
            }
        }
        Err(WatchError::Ended {
            bucket: self.bucket.clone(),
        })
    }

    async fn stored_values(&self) -> Result<u64, WatchError> {
        let stream_name = format!("KV_{}", self.bucket);
        let mut stream = self
            .js
            .get_stream(&stream_name)
            .await
            .map_err(|e| self.open_error(Box::new(e)))?;
        let info = stream
            .info()
            .await
            .map_err(|e| self.open_error(Box::new(e)))?;
        Ok(info.state.messages)
    }

    fn open_error(&self, source: Box<dyn std::error::Error + Send + Sync>) -> WatchError {
        WatchError::Open {
            bucket: self.bucket.clone(),
            source,
        }
    }

    fn apply(&self, entry: &kv::Entry, loading: Option<&mut HashSet<Key>>) {
        let Some(key) = Key::parse(&entry.key) else {
            debug!(key = %entry.key, "ignoring key of the tasks bucket");
            return;
        };
        match entry.operation {
            kv::Operation::Put => {
                if let Some(present) = loading {
                    present.insert(key);
                }
                let result = self.cache.write(|cache| cache.put(key, &entry.value));
                match result {
                    Ok(()) => {
                        debug!(key = %entry.key, revision = entry.revision, "task cache updated")
                    }
                    // An operator must act: the allocator writes specs this build cannot read.
                    Err(error) => {
                        error!(key = %entry.key, revision = entry.revision, error = %error, "unreadable value in the tasks bucket")
                    }
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                self.cache.write(|cache| cache.delete(key));
                debug!(key = %entry.key, revision = entry.revision, "task cache entry removed");
            }
        }
    }

    /// Drops keys missing from the initial values and marks the cache ready, once per watch.
    fn finish_loading(&self, loading: &mut Option<HashSet<Key>>) {
        let Some(present) = loading.take() else {
            return;
        };
        let (tasks, batches) = self.cache.write(|cache| {
            cache.retain(&present);
            (cache.task_count(), cache.batch_count())
        });
        info!(bucket = %self.bucket, tasks, batches, "task cache loaded");
        self.ready.send_replace(true);
    }
}
