//! Local copy of the tasks bucket: task specs under `task.<id>`, batch specs under
//! `batch.<id>`.
//!
//! [`crate::watch`] keeps it current from a KV watch. The consumer loop reads it for every
//! frame through [`TaskCache::resolve`], which returns the task's rules and the targets
//! (token name, symbol, market cap) of the frame's batch. The cache remembers tasks whose key
//! was deleted, so that their remaining frames go to the dead stream at once instead of
//! waiting for a task that will not come back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use monitor_core::codec::{self, CodecError};
use monitor_core::messages::{BatchSpec, EventFrame, TargetRef, TargetSpec, TaskSpec};

/// The cache shared by the watch task and the consumer loop.
#[derive(Clone, Default)]
pub struct SharedCache(Arc<RwLock<TaskCache>>);

impl SharedCache {
    pub fn read<T>(&self, f: impl FnOnce(&TaskCache) -> T) -> T {
        // A writer that panicked left a consistent map (each update is one insert or remove),
        // so a poisoned lock is still safe to use.
        let cache = self.0.read().unwrap_or_else(PoisonError::into_inner);
        f(&cache)
    }

    pub fn write<T>(&self, f: impl FnOnce(&mut TaskCache) -> T) -> T {
        let mut cache = self.0.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut cache)
    }
}

/// A key of the tasks bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Task(u64),
    Batch(u64),
}

impl Key {
    /// Parses `task.<id>` or `batch.<id>`; other keys are not for evaluate.
    pub fn parse(key: &str) -> Option<Key> {
        let (kind, id) = key.split_once('.')?;
        let id = id.parse().ok()?;
        match kind {
            "task" => Some(Key::Task(id)),
            "batch" => Some(Key::Batch(id)),
            _ => None,
        }
    }
}

/// Task and batch specs by id.
#[derive(Debug, Default)]
pub struct TaskCache {
    tasks: HashMap<u64, Arc<TaskSpec>>,
    batches: HashMap<u64, Arc<BatchSpec>>,
    /// Tasks whose key was deleted from the bucket: the task was stopped or removed.
    removed_tasks: HashSet<u64>,
    /// Tasks whose stored spec could not be decoded, with the decoding error.
    unreadable_tasks: HashMap<u64, String>,
}

/// Result of looking up a frame's task in the cache.
#[derive(Debug)]
pub enum Resolution {
    /// The task is known; its frame can be judged.
    Known {
        task: Arc<TaskSpec>,
        targets: Targets,
        /// The frame's batch belongs to the task's current epoch but its spec is not in the
        /// cache yet, so token names are missing until it arrives.
        batch_pending: bool,
    },
    /// The task's key was deleted; its frames cannot be judged.
    Removed,
    /// The task is not in the cache.
    Unknown(UnknownTask),
}

/// Reason a frame's task is not in the cache.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnknownTask {
    #[error("task {task_id} is not in the tasks bucket")]
    Missing { task_id: u64 },
    #[error("task {task_id} has an unreadable spec in the tasks bucket: {error}")]
    Unreadable { task_id: u64, error: String },
}

/// Batch specs in which to look up a frame's targets, the frame's own batch first.
#[derive(Debug, Default)]
pub struct Targets {
    batches: Vec<Arc<BatchSpec>>,
}

impl Targets {
    /// Finds the spec of an event's target by target id.
    pub fn find(&self, target: &TargetRef) -> Option<&TargetSpec> {
        self.batches
            .iter()
            .flat_map(|batch| batch.targets.iter())
            .find(|spec| spec.target_id == target.target_id)
    }
}

impl TaskCache {
    /// Stores a value put under `key`. A value that cannot be decoded removes the previous
    /// one, because judging with rules older than the stored ones could raise wrong alerts.
    pub fn put(&mut self, key: Key, value: &[u8]) -> Result<(), CodecError> {
        match key {
            Key::Task(task_id) => {
                self.removed_tasks.remove(&task_id);
                match codec::decode::<TaskSpec>(value) {
                    Ok(spec) => {
                        self.unreadable_tasks.remove(&task_id);
                        self.tasks.insert(task_id, Arc::new(spec));
                        Ok(())
                    }
                    Err(error) => {
                        self.tasks.remove(&task_id);
                        self.unreadable_tasks.insert(task_id, error.to_string());
                        Err(error)
                    }
                }
            }
            Key::Batch(batch_id) => match codec::decode::<BatchSpec>(value) {
                Ok(spec) => {
                    self.batches.insert(batch_id, Arc::new(spec));
                    Ok(())
                }
                Err(error) => {
                    self.batches.remove(&batch_id);
                    Err(error)
                }
            },
        }
    }

    /// Forgets a deleted or purged key.
    pub fn delete(&mut self, key: Key) {
        match key {
            Key::Task(task_id) => {
                self.tasks.remove(&task_id);
                self.unreadable_tasks.remove(&task_id);
                self.removed_tasks.insert(task_id);
            }
            Key::Batch(batch_id) => {
                self.batches.remove(&batch_id);
            }
        }
    }

    /// Drops every key not in `present`: after the watch is re-opened, keys that vanished
    /// from the bucket while it was closed send no delete.
    pub fn retain(&mut self, present: &HashSet<Key>) {
        self.tasks.retain(|id, _| present.contains(&Key::Task(*id)));
        self.unreadable_tasks
            .retain(|id, _| present.contains(&Key::Task(*id)));
        self.batches
            .retain(|id, _| present.contains(&Key::Batch(*id)));
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    /// Returns the config version of every cached task that has a config, by task id.
    pub fn config_versions(&self) -> Vec<(u64, u64)> {
        self.tasks
            .iter()
            .filter_map(|(id, spec)| spec.config.as_ref().map(|config| (*id, config.version)))
            .collect()
    }

    /// Returns the task of a frame and the batch specs that name its targets.
    pub fn resolve(&self, frame: &EventFrame) -> Resolution {
        let task_id = frame.task_id;
        let Some(task) = self.tasks.get(&task_id) else {
            if let Some(error) = self.unreadable_tasks.get(&task_id) {
                return Resolution::Unknown(UnknownTask::Unreadable {
                    task_id,
                    error: error.clone(),
                });
            }
            if self.removed_tasks.contains(&task_id) {
                return Resolution::Removed;
            }
            return Resolution::Unknown(UnknownTask::Missing { task_id });
        };

        let Some(batch_id) = frame.batch_id else {
            return Resolution::Known {
                task: task.clone(),
                targets: Targets::default(),
                batch_pending: false,
            };
        };
        let is_current_batch = task.batches.iter().any(|b| b.batch_id == batch_id);
        let own_batch = self.batches.get(&batch_id).filter(|b| b.task_id == task_id);
        let mut batches: Vec<Arc<BatchSpec>> = own_batch.into_iter().cloned().collect();
        if !is_current_batch {
            // A frame of an older epoch: its targets now sit in the current epoch's batches.
            batches.extend(
                task.batches
                    .iter()
                    .filter_map(|b| self.batches.get(&b.batch_id))
                    .cloned(),
            );
        }
        Resolution::Known {
            task: task.clone(),
            targets: Targets { batches },
            batch_pending: is_current_batch && own_batch.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{BatchRef, BatchStatus, Chain, TaskType, MESSAGE_VERSION};

    use super::*;

    fn task(task_id: u64, batch_ids: &[u64]) -> Vec<u8> {
        let spec = TaskSpec {
            v: MESSAGE_VERSION,
            task_id,
            name: format!("task {task_id}"),
            task_type: TaskType::Batch,
            chain: Chain::Sol,
            epoch: 2,
            config: None,
            batches: batch_ids
                .iter()
                .map(|&batch_id| BatchRef {
                    batch_id,
                    batch_no: 1,
                    item_count: 1,
                    status: BatchStatus::Running,
                })
                .collect(),
            config_error: None,
            published_ms: 0,
        };
        codec::encode(&spec).unwrap()
    }

    fn batch(batch_id: u64, task_id: u64, target_ids: &[u64]) -> Vec<u8> {
        let spec = BatchSpec {
            v: MESSAGE_VERSION,
            batch_id,
            task_id,
            epoch: 2,
            batch_no: 1,
            status: BatchStatus::Running,
            targets: target_ids
                .iter()
                .map(|&target_id| TargetSpec {
                    target_id,
                    address: format!("token{target_id}"),
                    pair_address: None,
                    token_name: Some(format!("Token {target_id}")),
                    token_symbol: Some(format!("T{target_id}")),
                    market_cap: None,
                    source: None,
                    batch_order: 0,
                })
                .collect(),
        };
        codec::encode(&spec).unwrap()
    }

    fn frame(task_id: u64, batch_id: u64) -> EventFrame {
        EventFrame {
            v: MESSAGE_VERSION,
            task_id,
            batch_id: Some(batch_id),
            epoch: 2,
            chain: Chain::Sol,
            producer: "ingest-1".into(),
            seq: 1,
            events: vec![],
        }
    }

    fn target(target_id: u64) -> TargetRef {
        TargetRef {
            target_id,
            address: format!("token{target_id}"),
        }
    }

    fn symbol_of(resolution: &Resolution, target_id: u64) -> Option<String> {
        match resolution {
            Resolution::Known { targets, .. } => {
                targets.find(&target(target_id))?.token_symbol.clone()
            }
            other => panic!("expected a known task, got {other:?}"),
        }
    }

    #[test]
    fn key_parsing() {
        assert_eq!(Key::parse("task.12"), Some(Key::Task(12)));
        assert_eq!(Key::parse("batch.7"), Some(Key::Batch(7)));
        assert_eq!(Key::parse("task.x"), None);
        assert_eq!(Key::parse("member.7"), None);
        assert_eq!(Key::parse("task"), None);
    }

    #[test]
    fn frame_of_known_batch_finds_its_targets() {
        let mut cache = TaskCache::default();
        cache.put(Key::Task(1), &task(1, &[10])).unwrap();
        cache
            .put(Key::Batch(10), &batch(10, 1, &[100, 101]))
            .unwrap();

        let resolution = cache.resolve(&frame(1, 10));
        assert!(matches!(
            resolution,
            Resolution::Known {
                batch_pending: false,
                ..
            }
        ));
        assert_eq!(symbol_of(&resolution, 101).as_deref(), Some("T101"));
        assert_eq!(symbol_of(&resolution, 999), None);
    }

    #[test]
    fn missing_current_batch_is_pending() {
        let mut cache = TaskCache::default();
        cache.put(Key::Task(1), &task(1, &[10])).unwrap();
        assert!(matches!(
            cache.resolve(&frame(1, 10)),
            Resolution::Known {
                batch_pending: true,
                ..
            }
        ));
    }

    #[test]
    fn old_epoch_frame_finds_targets_in_current_batches() {
        let mut cache = TaskCache::default();
        cache.put(Key::Task(1), &task(1, &[20, 21])).unwrap();
        cache.put(Key::Batch(20), &batch(20, 1, &[100])).unwrap();
        cache.put(Key::Batch(21), &batch(21, 1, &[101])).unwrap();

        // Batch 10 belonged to the previous epoch and is gone from the bucket.
        let resolution = cache.resolve(&frame(1, 10));
        assert!(matches!(
            resolution,
            Resolution::Known {
                batch_pending: false,
                ..
            }
        ));
        assert_eq!(symbol_of(&resolution, 101).as_deref(), Some("T101"));
    }

    #[test]
    fn deleted_task_is_removed_until_put_again() {
        let mut cache = TaskCache::default();
        cache.put(Key::Task(1), &task(1, &[10])).unwrap();
        cache.delete(Key::Task(1));
        assert!(matches!(cache.resolve(&frame(1, 10)), Resolution::Removed));

        cache.put(Key::Task(1), &task(1, &[10])).unwrap();
        assert!(matches!(
            cache.resolve(&frame(1, 10)),
            Resolution::Known { .. }
        ));
    }

    #[test]
    fn unknown_task_is_missing() {
        let cache = TaskCache::default();
        match cache.resolve(&frame(5, 10)) {
            Resolution::Unknown(reason) => {
                assert_eq!(reason, UnknownTask::Missing { task_id: 5 });
                assert_eq!(reason.to_string(), "task 5 is not in the tasks bucket");
            }
            other => panic!("expected an unknown task, got {other:?}"),
        }
    }

    #[test]
    fn unreadable_spec_replaces_the_old_one() {
        let mut cache = TaskCache::default();
        cache.put(Key::Task(1), &task(1, &[10])).unwrap();
        assert!(cache.put(Key::Task(1), b"\xc1 not msgpack").is_err());

        match cache.resolve(&frame(1, 10)) {
            Resolution::Unknown(UnknownTask::Unreadable { task_id, error }) => {
                assert_eq!(task_id, 1);
                assert!(error.contains("failed to decode task spec"), "{error}");
            }
            other => panic!("expected an unreadable task, got {other:?}"),
        }
    }

    #[test]
    fn retain_drops_vanished_keys() {
        let mut cache = TaskCache::default();
        cache.put(Key::Task(1), &task(1, &[10])).unwrap();
        cache.put(Key::Task(2), &task(2, &[20])).unwrap();
        cache.put(Key::Batch(10), &batch(10, 1, &[100])).unwrap();

        cache.retain(&HashSet::from([Key::Task(2)]));
        assert_eq!(cache.task_count(), 1);
        assert_eq!(cache.batch_count(), 0);
        assert!(matches!(
            cache.resolve(&frame(1, 10)),
            Resolution::Unknown(_)
        ));
    }
}
