//! Publishing snapshots to the tasks bucket, and task status changes to the status stream.
//!
//! Consumes [`Snapshot`]s. Produces `batch.<batch_id>` and `task.<task_id>` entries in the
//! tasks bucket and deletes entries that no longer describe a running task. Publishes a task
//! `StatusChange` when a config error appears or clears. An entry is written only when its
//! content differs from what is already in the bucket (compared without `published_ms`). The
//! batch entries of a snapshot are written before its task entry, so a reader that finds a
//! task spec also finds its batches.
//!
//! The publisher caches what it last wrote or read. An entry it has not seen is read from the
//! bucket before it is compared, so a restarted allocator does not rewrite unchanged entries
//! and still knows a task's last valid config.
//!
//! A task entry is written with compare-and-set on the revision the publisher last saw. When
//! another writer (a second allocator) changed the entry in between, the entry is read again,
//! and a spec with a newer epoch or a newer version of the same config is kept: an allocator
//! that read the database before the other one never puts older rules back.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use monitor_core::codec::{self, CodecError};
use monitor_core::messages::{
    BatchSpec, BatchStatus, StatusChange, StatusMessage, StatusScope, TaskSpec, MESSAGE_VERSION,
};
use monitor_core::rules::ConfigError;
use monitor_core::{Locale, Subjects};

use crate::snapshot::{same_task_content, Snapshot};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("failed to write {key} to bucket {bucket}: {source}")]
    Put {
        bucket: String,
        key: String,
        source: BoxError,
    },
    #[error("failed to delete {key} from bucket {bucket}: {source}")]
    Delete {
        bucket: String,
        key: String,
        source: BoxError,
    },
    #[error("failed to read {key} from bucket {bucket}: {source}")]
    Read {
        bucket: String,
        key: String,
        source: BoxError,
    },
    #[error("failed to list the keys of bucket {bucket}: {source}")]
    Keys { bucket: String, source: BoxError },
    #[error("failed to publish the status of task {task_id} on {subject}: {source}")]
    Status {
        task_id: u64,
        subject: String,
        source: BoxError,
    },
    #[error("failed to write {key} to bucket {bucket}: the entry changed {attempts} times while it was written")]
    Contended {
        bucket: String,
        key: String,
        attempts: u32,
    },
    #[error(transparent)]
    Encode(#[from] CodecError),
}

/// Attempts of one compare-and-set write of a task entry before it is left to the next sync.
const TASK_WRITE_ATTEMPTS: u32 = 3;

/// A key of the tasks bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpecKey {
    Task(u64),
    Batch(u64),
}

impl SpecKey {
    pub fn parse(key: &str) -> Option<Self> {
        if let Some(id) = key.strip_prefix("task.") {
            return id.parse().ok().map(SpecKey::Task);
        }
        key.strip_prefix("batch.")
            .and_then(|id| id.parse().ok())
            .map(SpecKey::Batch)
    }

    pub fn as_key(self) -> String {
        match self {
            SpecKey::Task(id) => Subjects::task_key(id),
            SpecKey::Batch(id) => Subjects::batch_key(id),
        }
    }
}

/// Counts of the entries written by one [`Publisher::publish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishReport {
    pub task_written: bool,
    pub batches_written: usize,
    /// Another writer had put a newer epoch or config version of the task, which was kept.
    pub superseded: bool,
}

/// A task spec as stored in the bucket, with the entry's revision.
#[derive(Debug, Clone)]
struct StoredTask {
    spec: TaskSpec,
    revision: u64,
}

/// Returns whether `stored` must not be replaced by `candidate`: it has a newer epoch, or a
/// newer version of the same config (valid or not).
pub fn supersedes(stored: &TaskSpec, candidate: &TaskSpec) -> bool {
    if stored.epoch > candidate.epoch {
        return true;
    }
    match (applied_config(stored), applied_config(candidate)) {
        (Some((stored_id, stored_version)), Some((id, version))) => {
            stored_id == id && stored_version > version
        }
        _ => false,
    }
}

/// The config a spec was built from and its highest version seen: the version of the rules
/// in force, or of the invalid config reported next to them when that is newer.
pub fn applied_config(spec: &TaskSpec) -> Option<(u64, u64)> {
    let in_force = spec.config.as_ref().map(|c| (c.config_id, c.version));
    let rejected = spec.config_error.as_ref().map(|e| (e.config_id, e.version));
    match (in_force, rejected) {
        (Some((id, version)), Some((error_id, error_version))) if id == error_id => {
            Some((id, version.max(error_version)))
        }
        (_, Some(rejected)) => Some(rejected),
        (in_force, None) => in_force,
    }
}

/// Writer of the tasks bucket with a cache of its content.
pub struct Publisher {
    bucket: kv::Store,
    bucket_name: String,
    jetstream: jetstream::Context,
    subjects: Subjects,
    consumer_id: String,
    locale: Locale,
    tasks: HashMap<u64, StoredTask>,
    /// Revision of task keys whose last operation was a delete, for the next compare-and-set.
    deleted_tasks: HashMap<u64, u64>,
    batches: HashMap<u64, BatchSpec>,
    /// Config error last reported on the status stream, per task (`None`: no error).
    reported: HashMap<u64, Option<ConfigError>>,
}

impl Publisher {
    pub fn new(
        bucket: kv::Store,
        jetstream: jetstream::Context,
        subjects: Subjects,
        consumer_id: String,
        locale: Locale,
    ) -> Self {
        Publisher {
            bucket_name: subjects.tasks_bucket(),
            bucket,
            jetstream,
            subjects,
            consumer_id,
            locale,
            tasks: HashMap::new(),
            deleted_tasks: HashMap::new(),
            batches: HashMap::new(),
            reported: HashMap::new(),
        }
    }

    /// Returns the NATS connection the publisher writes through.
    pub fn nats_client(&self) -> async_nats::Client {
        self.jetstream.client()
    }

    /// Returns the ids of the tasks whose spec is in the cache, which mirrors the bucket.
    pub fn published_task_ids(&self) -> BTreeSet<u64> {
        self.tasks.keys().copied().collect()
    }

    /// Reads every entry of the bucket into the cache. Entries that cannot be decoded are
    /// skipped with a warning; they are overwritten or deleted like any stale entry.
    pub async fn load_all(&mut self) -> Result<usize, PublishError> {
        let keys = self.list_keys().await?;
        for key in &keys {
            match key {
                SpecKey::Task(task_id) => {
                    self.read_task(*task_id).await?;
                }
                SpecKey::Batch(batch_id) => {
                    if let Some(spec) = self.read::<BatchSpec>(*key).await? {
                        self.batches.insert(*batch_id, spec);
                    }
                }
            }
        }
        Ok(keys.len())
    }

    /// Returns the task's spec in the bucket, from the cache or read once.
    pub async fn previous_task(&mut self, task_id: u64) -> Result<Option<TaskSpec>, PublishError> {
        if let Some(stored) = self.tasks.get(&task_id) {
            return Ok(Some(stored.spec.clone()));
        }
        self.read_task(task_id).await
    }

    /// Returns the config id and the highest version that the cached spec of the task was built
    /// from (see [`applied_config`]).
    pub fn applied_config(&self, task_id: u64) -> Option<(u64, u64)> {
        self.tasks
            .get(&task_id)
            .and_then(|stored| applied_config(&stored.spec))
    }

    /// Reads a task entry into the cache, remembering its revision (also of a delete marker).
    async fn read_task(&mut self, task_id: u64) -> Result<Option<TaskSpec>, PublishError> {
        let key = SpecKey::Task(task_id);
        let Some(entry) = self.read_entry(key).await? else {
            self.tasks.remove(&task_id);
            self.deleted_tasks.remove(&task_id);
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            self.tasks.remove(&task_id);
            self.deleted_tasks.insert(task_id, entry.revision);
            return Ok(None);
        }
        match decode_entry::<TaskSpec>(&entry) {
            Some(spec) => {
                self.deleted_tasks.remove(&task_id);
                self.tasks.insert(
                    task_id,
                    StoredTask {
                        spec: spec.clone(),
                        revision: entry.revision,
                    },
                );
                Ok(Some(spec))
            }
            None => {
                // An undecodable entry is replaced like a deleted one, at its revision.
                self.tasks.remove(&task_id);
                self.deleted_tasks.insert(task_id, entry.revision);
                Ok(None)
            }
        }
    }

    /// Writes the entries of a snapshot that differ from the bucket: batches first, then the task.
    pub async fn publish(&mut self, snapshot: &Snapshot) -> Result<PublishReport, PublishError> {
        let mut report = PublishReport::default();
        for batch in &snapshot.batches {
            if self.cached_batch(batch.batch_id).await?.as_ref() != Some(batch) {
                self.put(SpecKey::Batch(batch.batch_id), codec::encode(batch)?)
                    .await?;
                self.batches.insert(batch.batch_id, batch.clone());
                report.batches_written += 1;
            }
        }

        let task = &snapshot.task;
        let unchanged = self
            .previous_task(task.task_id)
            .await?
            .is_some_and(|previous| same_task_content(&previous, task));
        if !unchanged {
            match self.write_task(task).await? {
                TaskWrite::Written => report.task_written = true,
                TaskWrite::Superseded => report.superseded = true,
            }
        }
        Ok(report)
    }

    /// Writes a task entry with compare-and-set on the last revision seen. After a conflict
    /// the entry is read again: a spec that [`supersedes`] this one stays, otherwise the write
    /// is retried on the new revision.
    async fn write_task(&mut self, task: &TaskSpec) -> Result<TaskWrite, PublishError> {
        let key = SpecKey::Task(task.task_id);
        let payload = Bytes::from(codec::encode(task)?);
        for _ in 0..TASK_WRITE_ATTEMPTS {
            let revision = match self.tasks.get(&task.task_id) {
                Some(stored) => stored.revision,
                None => self.deleted_tasks.get(&task.task_id).copied().unwrap_or(0),
            };
            match self
                .bucket
                .update(key.as_key(), payload.clone(), revision)
                .await
            {
                Ok(written) => {
                    tracing::debug!(key = key.as_key(), revision = written, "entry written");
                    self.deleted_tasks.remove(&task.task_id);
                    self.tasks.insert(
                        task.task_id,
                        StoredTask {
                            spec: task.clone(),
                            revision: written,
                        },
                    );
                    return Ok(TaskWrite::Written);
                }
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if let Some(stored) = self.read_task(task.task_id).await? {
                        if supersedes(&stored, task) {
                            return Ok(TaskWrite::Superseded);
                        }
                    }
                }
                Err(error) => {
                    return Err(PublishError::Put {
                        bucket: self.bucket_name.clone(),
                        key: key.as_key(),
                        source: Box::new(error),
                    })
                }
            }
        }
        Err(PublishError::Contended {
            bucket: self.bucket_name.clone(),
            key: key.as_key(),
            attempts: TASK_WRITE_ATTEMPTS,
        })
    }

    async fn cached_batch(&mut self, batch_id: u64) -> Result<Option<BatchSpec>, PublishError> {
        if let Some(spec) = self.batches.get(&batch_id) {
            return Ok(Some(spec.clone()));
        }
        let spec = self.read::<BatchSpec>(SpecKey::Batch(batch_id)).await?;
        if let Some(spec) = &spec {
            self.batches.insert(batch_id, spec.clone());
        }
        Ok(spec)
    }

    /// Deletes the spec of a task that no longer runs, and the specs of all its batches.
    /// Returns the number of entries deleted.
    pub async fn retire_task(&mut self, task_id: u64) -> Result<usize, PublishError> {
        let batch_ids: Vec<u64> = self
            .batches
            .values()
            .filter(|b| b.task_id == task_id)
            .map(|b| b.batch_id)
            .collect();
        let mut deleted = self.delete_batches(&batch_ids).await?;
        if self.tasks.remove(&task_id).is_some() {
            self.delete(SpecKey::Task(task_id)).await?;
            // The delete marker's revision is unknown: the next write reads it first.
            deleted += 1;
        }
        self.reported.remove(&task_id);
        Ok(deleted)
    }

    /// Deletes batch specs (rows of expired epochs, or of tasks that stopped).
    pub async fn delete_batches(&mut self, batch_ids: &[u64]) -> Result<usize, PublishError> {
        for batch_id in batch_ids {
            self.delete(SpecKey::Batch(*batch_id)).await?;
            self.batches.remove(batch_id);
        }
        Ok(batch_ids.len())
    }

    /// Lists the keys in the bucket and drops cached entries that are no longer there, so
    /// that an entry deleted by someone else is written again on the next sync.
    pub async fn refresh_keys(&mut self) -> Result<Vec<SpecKey>, PublishError> {
        let keys = self.list_keys().await?;
        let present: BTreeSet<SpecKey> = keys.iter().copied().collect();
        self.tasks
            .retain(|id, _| present.contains(&SpecKey::Task(*id)));
        self.batches
            .retain(|id, _| present.contains(&SpecKey::Batch(*id)));
        Ok(keys)
    }

    /// Deletes one entry by key, whatever the cache holds.
    pub async fn delete_key(&mut self, key: SpecKey) -> Result<(), PublishError> {
        self.delete(key).await?;
        match key {
            SpecKey::Task(id) => {
                self.tasks.remove(&id);
                self.deleted_tasks.remove(&id);
                self.reported.remove(&id);
            }
            SpecKey::Batch(id) => {
                self.batches.remove(&id);
            }
        }
        Ok(())
    }

    /// Publishes a task status change when the task's config error appeared, changed or
    /// cleared since the last report. Returns whether a message was sent. Before the first
    /// report the error of the spec previously in the bucket counts as reported.
    pub async fn report_config_status(
        &mut self,
        spec: &TaskSpec,
        previous: Option<&TaskSpec>,
    ) -> Result<bool, PublishError> {
        let reported = self
            .reported
            .entry(spec.task_id)
            .or_insert_with(|| previous.and_then(|p| p.config_error.clone()))
            .clone();
        if reported == spec.config_error {
            return Ok(false);
        }

        let change = config_status(spec, reported.as_ref(), &self.consumer_id, self.locale);
        let subject = self.subjects.task_status(spec.task_id);
        let payload = codec::encode(&StatusMessage::Change(change))?;
        let status_failed = |source: BoxError| PublishError::Status {
            task_id: spec.task_id,
            subject: subject.clone(),
            source,
        };
        self.jetstream
            .publish(subject.clone(), Bytes::from(payload))
            .await
            .map_err(|e| status_failed(Box::new(e)))?
            .await
            .map_err(|e| status_failed(Box::new(e)))?;
        self.reported
            .insert(spec.task_id, spec.config_error.clone());
        Ok(true)
    }

    async fn list_keys(&self) -> Result<Vec<SpecKey>, PublishError> {
        let keys_failed = |source: BoxError| PublishError::Keys {
            bucket: self.bucket_name.clone(),
            source,
        };
        let keys: Vec<String> = self
            .bucket
            .keys()
            .await
            .map_err(|e| keys_failed(Box::new(e)))?
            .try_collect()
            .await
            .map_err(|e| keys_failed(Box::new(e)))?;
        let mut parsed: Vec<SpecKey> = keys.iter().filter_map(|k| SpecKey::parse(k)).collect();
        parsed.sort();
        Ok(parsed)
    }

    async fn read<T>(&self, key: SpecKey) -> Result<Option<T>, PublishError>
    where
        T: serde::de::DeserializeOwned + codec::Message,
    {
        Ok(self
            .read_entry(key)
            .await?
            .filter(|entry| entry.operation == kv::Operation::Put)
            .and_then(|entry| decode_entry(&entry)))
    }

    /// Reads the last entry of a key, a delete marker included.
    async fn read_entry(&self, key: SpecKey) -> Result<Option<kv::Entry>, PublishError> {
        let key = key.as_key();
        self.bucket
            .entry(key.clone())
            .await
            .map_err(|e| PublishError::Read {
                bucket: self.bucket_name.clone(),
                key,
                source: Box::new(e),
            })
    }

    async fn put(&self, key: SpecKey, payload: Vec<u8>) -> Result<(), PublishError> {
        let key = key.as_key();
        self.bucket
            .put(key.as_str(), Bytes::from(payload))
            .await
            .map_err(|e| PublishError::Put {
                bucket: self.bucket_name.clone(),
                key: key.clone(),
                source: Box::new(e),
            })?;
        tracing::debug!(key, "entry written");
        Ok(())
    }

    async fn delete(&self, key: SpecKey) -> Result<(), PublishError> {
        let key = key.as_key();
        self.bucket
            .delete(key.as_str())
            .await
            .map_err(|e| PublishError::Delete {
                bucket: self.bucket_name.clone(),
                key: key.clone(),
                source: Box::new(e),
            })?;
        tracing::debug!(key, "entry deleted");
        Ok(())
    }
}

/// Outcome of writing a task entry.
enum TaskWrite {
    Written,
    /// Another writer's newer spec is in the bucket and stays.
    Superseded,
}

/// Decodes an entry's value; an undecodable one is logged and treated as absent, so that it
/// is overwritten or deleted like any stale entry.
fn decode_entry<T>(entry: &kv::Entry) -> Option<T>
where
    T: serde::de::DeserializeOwned + codec::Message,
{
    match codec::decode::<T>(&entry.value) {
        Ok(spec) => Some(spec),
        Err(error) => {
            tracing::warn!(key = entry.key, revision = entry.revision, error = %error, "ignoring an undecodable entry of the tasks bucket, it will be replaced");
            None
        }
    }
}

/// Builds the status change for a config error that appeared or changed
/// (`spec.config_error` set) or cleared (`cleared` is the error reported before). A task that
/// still runs on earlier rules stays `running`, and one without any valid rules is `error`.
pub fn config_status(
    spec: &TaskSpec,
    cleared: Option<&ConfigError>,
    consumer_id: &str,
    locale: Locale,
) -> StatusChange {
    let (status, reason) = match (&spec.config_error, cleared) {
        (Some(error), _) => {
            let status = if spec.config.is_some() {
                BatchStatus::Running
            } else {
                BatchStatus::Error
            };
            (status, error.message(locale))
        }
        (None, cleared) => (
            BatchStatus::Running,
            config_valid_message(spec, cleared, locale),
        ),
    };
    StatusChange {
        v: MESSAGE_VERSION,
        scope: StatusScope::Task {
            task_id: spec.task_id,
        },
        consumer_id: consumer_id.to_owned(),
        status,
        reason: Some(reason),
        item_count: spec.batches.iter().map(|b| b.item_count).sum(),
        progress: 0.0,
        errors: 0,
        sent_ms: monitor_core::time::now_ms(),
    }
}

fn config_valid_message(spec: &TaskSpec, cleared: Option<&ConfigError>, locale: Locale) -> String {
    let (config_id, version) = match (&spec.config, cleared) {
        (Some(config), _) => (config.config_id, config.version),
        (None, Some(error)) => (error.config_id, error.version),
        (None, None) => (0, 0),
    };
    match locale {
        Locale::ZhCn => format!("配置 {config_id} (版本 {version}) 已通过校验并生效"),
        Locale::En => format!("config {config_id} version {version} is valid and in force"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use monitor_core::messages::{Chain, ConfigSpec, TaskType};
    use monitor_core::rules::{Constraint, Rules, TokenRules, TriggerLogic};

    fn spec(config: bool, error: bool) -> TaskSpec {
        let rules = Rules::Token(TokenRules {
            price_change: None,
            volume: None,
            holder_change: None,
            large_trade: None,
            cumulative_buy: None,
            top_holders: None,
            cooldown_sec: 300,
        });
        TaskSpec {
            v: MESSAGE_VERSION,
            task_id: 4,
            name: "majors".into(),
            task_type: TaskType::Smart,
            chain: Chain::Eth,
            epoch: 1,
            config: config.then(|| ConfigSpec {
                config_id: 7,
                version: 2,
                name: "c".into(),
                trigger_logic: TriggerLogic::Or,
                rules,
            }),
            batches: vec![],
            config_error: error.then(|| config_error(3)),
            published_ms: 0,
        }
    }

    fn config_error(version: u64) -> ConfigError {
        ConfigError {
            config_id: 7,
            version,
            field: "volume.min_volume_usd".into(),
            value: "-1".into(),
            constraint: Constraint::GreaterThan(0.0),
        }
    }

    #[test]
    fn config_error_with_old_rules_keeps_running() {
        let change = config_status(&spec(true, true), None, "alloc-1", Locale::En);
        assert_eq!(change.status, BatchStatus::Running);
        assert_eq!(change.scope, StatusScope::Task { task_id: 4 });
        assert_eq!(
            change.reason.as_deref(),
            Some(config_error(3).to_string().as_str())
        );
    }

    #[test]
    fn config_error_without_rules_is_error() {
        let change = config_status(&spec(false, true), None, "alloc-1", Locale::ZhCn);
        assert_eq!(change.status, BatchStatus::Error);
        assert!(change.reason.unwrap().starts_with("配置 7 (版本 3) 无效"));
    }

    #[test]
    fn cleared_config_error_names_the_config_in_force() {
        let cleared = config_error(3);
        let zh = config_status(&spec(true, false), Some(&cleared), "alloc-1", Locale::ZhCn);
        let en = config_status(&spec(true, false), Some(&cleared), "alloc-1", Locale::En);
        assert_eq!(zh.status, BatchStatus::Running);
        assert_eq!(
            zh.reason.as_deref(),
            Some("配置 7 (版本 2) 已通过校验并生效")
        );
        assert_eq!(
            en.reason.as_deref(),
            Some("config 7 version 2 is valid and in force")
        );
    }

    #[test]
    fn spec_key_round_trips() {
        assert_eq!(SpecKey::parse("task.12"), Some(SpecKey::Task(12)));
        assert_eq!(SpecKey::parse("batch.7"), Some(SpecKey::Batch(7)));
        assert_eq!(SpecKey::Batch(7).as_key(), "batch.7");
        assert_eq!(SpecKey::parse("lease.3"), None);
        assert_eq!(SpecKey::parse("task.x"), None);
    }
}
