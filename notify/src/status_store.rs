//! The latest status change of every batch and task, kept in a KV bucket so that a restarted
//! notify can send them again.
//!
//! The status stream cannot serve this on its own: heartbeats and status changes of a batch
//! share one subject, and the stream keeps 8 messages per subject, so 8 heartbeats (4 minutes
//! at the default 30 s interval) push the last change of a running batch out of the stream.
//! The bucket `<prefix>_notify_status` keeps one entry per key, `batch.<batch_id>` or
//! `task.<task_id>`, with the MessagePack of the [`StatusChange`]. The status forwarder writes
//! an entry before it acks the change, reads every entry at start, and deletes the entries of
//! finished batches that it forgets.

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, stream::StorageType};
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::{StatusChange, StatusScope};
use monitor_core::Subjects;
use tracing::warn;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StatusStoreError {
    #[error("failed to open bucket {bucket}: {source}")]
    Open { bucket: String, source: BoxError },
    #[error("failed to read bucket {bucket}: {source}")]
    Read { bucket: String, source: BoxError },
    #[error("failed to store the status of {key} in bucket {bucket}: {source}")]
    Write {
        bucket: String,
        key: String,
        source: BoxError,
    },
}

/// Key of a batch or task in the bucket.
pub fn key(scope: StatusScope) -> String {
    match scope {
        StatusScope::Batch { batch_id, .. } => format!("batch.{batch_id}"),
        StatusScope::Task { task_id } => format!("task.{task_id}"),
    }
}

/// Handle to the bucket of latest statuses.
#[derive(Clone)]
pub struct StatusStore {
    js: jetstream::Context,
    bucket: String,
    kv: kv::Store,
}

impl StatusStore {
    /// Opens the bucket, creating it on first use.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
    ) -> Result<Self, StatusStoreError> {
        let bucket = subjects.notify_status_bucket();
        let open_error = |source: BoxError| StatusStoreError::Open {
            bucket: bucket.clone(),
            source,
        };
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                let config = kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    storage: StorageType::File,
                    ..Default::default()
                };
                match js.create_key_value(config).await {
                    Ok(kv) => kv,
                    // Another notify instance created it between the two calls.
                    Err(create_error) => js
                        .get_key_value(&bucket)
                        .await
                        .map_err(|_| open_error(Box::new(create_error)))?,
                }
            }
        };
        Ok(StatusStore {
            js: js.clone(),
            bucket,
            kv,
        })
    }

    /// Reads every stored status change. An entry that cannot be decoded is logged and
    /// skipped: it only means that one status is not sent again.
    pub async fn load(&self) -> Result<Vec<StatusChange>, StatusStoreError> {
        let read_error = |source: BoxError| StatusStoreError::Read {
            bucket: self.bucket.clone(),
            source,
        };
        // The watch delivers the last entry of every key and then waits for new ones. An empty
        // bucket delivers nothing, so the stored message count tells whether to read at all.
        if self.stored_messages().await? == 0 {
            return Ok(Vec::new());
        }
        let mut entries = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| read_error(Box::new(e)))?;

        let mut changes = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| read_error(Box::new(e)))?;
            if entry.operation == Operation::Put {
                match codec::decode::<StatusChange>(&entry.value) {
                    Ok(change) => changes.push(change),
                    Err(error) => {
                        warn!(bucket = %self.bucket, key = %entry.key, error = %error, "skipping a stored status that cannot be decoded")
                    }
                }
            }
            if entry.delta == 0 {
                break;
            }
        }
        Ok(changes)
    }

    /// Stores `change` as the latest status of its batch or task.
    pub async fn save(&self, change: &StatusChange) -> Result<(), StatusStoreError> {
        let key = key(change.scope);
        let write_error = |source: BoxError| StatusStoreError::Write {
            bucket: self.bucket.clone(),
            key: key.clone(),
            source,
        };
        let payload = codec::encode(change).map_err(|e| write_error(Box::new(e)))?;
        self.kv
            .put(&key, payload.into())
            .await
            .map_err(|e| write_error(Box::new(e)))?;
        Ok(())
    }

    /// Removes the stored status of a batch or task.
    pub async fn forget(&self, scope: StatusScope) -> Result<(), StatusStoreError> {
        let key = key(scope);
        self.kv
            .purge(&key)
            .await
            .map_err(|e| StatusStoreError::Write {
                bucket: self.bucket.clone(),
                key: key.clone(),
                source: Box::new(e),
            })
    }

    async fn stored_messages(&self) -> Result<u64, StatusStoreError> {
        let read_error = |source: BoxError| StatusStoreError::Read {
            bucket: self.bucket.clone(),
            source,
        };
        let mut stream = self
            .js
            .get_stream(format!("KV_{}", self.bucket))
            .await
            .map_err(|e| read_error(Box::new(e)))?;
        let info = stream.info().await.map_err(|e| read_error(Box::new(e)))?;
        Ok(info.state.messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_batch_or_the_task() {
        let batch = StatusScope::Batch {
            task_id: 4,
            batch_id: 12345,
        };
        assert_eq!(key(batch), "batch.12345");
        assert_eq!(key(StatusScope::Task { task_id: 9 }), "task.9");
    }

    #[test]
    fn bucket_is_under_the_prefix() {
        let subjects = Subjects::new("t_abc").unwrap();
        assert_eq!(subjects.notify_status_bucket(), "t_abc_notify_status");
    }
}
