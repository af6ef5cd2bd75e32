//! The supervisor: decides which batches run on this instance and owns their runners.
//!
//! Consumes the tasks bucket, the status notices of its runners and the status changes that
//! other instances publish for theirs. The bucket is read through
//! a watch of `task.*` and `batch.*` keys that delivers the current values first and then the
//! updates, and that is re-opened whenever it fails or ends. It produces one [`BatchRunner`] task per batch to run ([`plan::desired_runners`]),
//! sends a runner the new window lengths when its task's config changes, and stops runners
//! that are no longer wanted. When a task moves to a new epoch, the old epoch's runners stop
//! only once every batch of the new epoch has been `running` for [`plan::SUBSCRIBE_SETTLE`]
//! ([`plan::stop_now`]), here or on the instance with its lease ([`PeerRunners`]), so the
//! targets are watched without a gap.
//!
//! A batch starts on this instance only while [`Ownership::should_run`] is true, that is
//! while this instance holds its lease. The supervisor reports the batches it wants and those
//! whose runners are alive to the ownership after every decision, and decides again whenever
//! the ownership changes.
//! A runner whose lease is lost is stopped at once, with the reason in its `stopped` status
//! change. A runner whose batch is handed to another instance stops reporting itself alive,
//! so its lease is released, but keeps running until the new owner has run the batch for
//! [`plan::SUBSCRIBE_SETTLE`].
//!
//! At shutdown, while other instances run, the supervisor first leaves the members
//! ([`Ownership::leave`]), so that every batch is handed over that way, and stops the
//! runners left after [`LEAVE_LIMIT`].
//!
//! Block tasks go to [`BlockTasks`] on every decision, which runs one chain runner per block
//! task whose `task.<id>` lease this instance holds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use monitor_core::codec;
use monitor_core::messages::{BatchSpec, BatchStatus, StatusMessage, TaskSpec};
use monitor_core::{Locale, Subjects};
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{interval, sleep, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::block_task::BlockTasks;
use crate::ownership::{LeaseKey, LeaseKind, Ownership};
use crate::peer_runners::PeerRunners;
use crate::plan::{self, Skip};
use crate::runner::{
    BatchRunner, RunnerConfig, RunnerContext, RunnerNotice, StopSignal, DRAIN_TIMEOUT,
};

/// Time to wait before restarting a runner that ended on its own.
const RESTART_DELAY: Duration = Duration::from_secs(5);
/// Maximum wait between two attempts to open the watch.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);
/// Maximum time a stopping instance waits for the other instances to take over its batches,
/// so that it still exits within the 10 s its shutdown promises.
const LEAVE_LIMIT: Duration = Duration::from_secs(7);
/// Sequence counters of batches that stopped are kept this long, well beyond the events
/// stream's duplicate window (2 minutes), so a batch restarted soon never reuses a msg id.
const SEQ_RETENTION: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("failed to open the watch: {0}")]
    Open(#[from] kv::WatchError),
    #[error("failed to list the keys: {0}")]
    Keys(String),
}

/// A runner this supervisor started.
struct RunnerSlot {
    task_id: u64,
    epoch: u32,
    /// Time since which the runner reports `running`, `None` while it reports another status.
    running_since: Option<Instant>,
    config_tx: watch::Sender<RunnerConfig>,
    stop: StopSignal,
    /// Since when the runner is no longer wanted but kept for an epoch switch.
    retiring_since: Option<Instant>,
    /// Since when the batch's lease is being handed to another instance, while the runner
    /// keeps running until that instance runs the batch.
    handing_over_since: Option<Instant>,
}

/// A key of the tasks bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Task(u64),
    Batch(u64),
}

fn parse_key(key: &str) -> Option<Key> {
    if let Some(id) = key.strip_prefix("task.") {
        return id.parse().ok().map(Key::Task);
    }
    key.strip_prefix("batch.")?.parse().ok().map(Key::Batch)
}

/// Decides which batches run and owns their runners.
pub struct Supervisor {
    context: Arc<RunnerContext>,
    kv: kv::Store,
    shutdown: CancellationToken,
    /// Parent of every runner's stop signal. Separate from `shutdown`, so that runners keep
    /// running while their batches are handed over at shutdown.
    runners_stop: CancellationToken,
    ownership: Ownership,
    ownership_changes: watch::Receiver<u64>,
    tasks: HashMap<u64, TaskSpec>,
    batches: HashMap<u64, Arc<BatchSpec>>,
    runners: HashMap<u64, RunnerSlot>,
    /// Runners asked to stop whose task has not ended yet; a batch is not started again
    /// before its previous runner ended.
    stopping: HashSet<u64>,
    joins: JoinSet<()>,
    join_ids: HashMap<Id, u64>,
    next_seqs: HashMap<u64, (Arc<AtomicU64>, Instant)>,
    restart_not_before: HashMap<u64, Instant>,
    notices_tx: mpsc::UnboundedSender<RunnerNotice>,
    notices_rx: mpsc::UnboundedReceiver<RunnerNotice>,
    /// Runners of block tasks, when this instance serves them.
    block_tasks: Option<BlockTasks>,
    /// Batches that other instances report `running`.
    peers: PeerRunners,
}

impl Supervisor {
    pub fn new(
        context: Arc<RunnerContext>,
        kv: kv::Store,
        ownership: Ownership,
        shutdown: CancellationToken,
    ) -> Self {
        let (notices_tx, notices_rx) = mpsc::unbounded_channel();
        let ownership_changes = ownership.subscribe();
        Supervisor {
            context,
            kv,
            shutdown,
            runners_stop: CancellationToken::new(),
            ownership,
            ownership_changes,
            tasks: HashMap::new(),
            batches: HashMap::new(),
            runners: HashMap::new(),
            stopping: HashSet::new(),
            joins: JoinSet::new(),
            join_ids: HashMap::new(),
            next_seqs: HashMap::new(),
            restart_not_before: HashMap::new(),
            notices_tx,
            notices_rx,
            block_tasks: None,
            peers: PeerRunners::default(),
        }
    }

    /// Runs the block tasks too, with the chain adapters of `block_tasks`.
    pub fn with_block_tasks(mut self, block_tasks: BlockTasks) -> Self {
        self.block_tasks = Some(block_tasks);
        self
    }

    /// Runs until the shutdown token is cancelled, then waits for every runner to drain.
    pub async fn run(mut self) {
        let mut peer_changes = self.subscribe_peer_changes().await;
        let Some(mut entries) = self.open_watch().await else {
            return self.stop_all().await;
        };
        let mut tick = interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut leave_deadline: Option<Instant> = None;

        loop {
            if let Some(deadline) = leave_deadline {
                if self.runners.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled(), if leave_deadline.is_none() => {
                    // With other members, hand the batches over before stopping.
                    if self.runners.is_empty() || !self.ownership.leave() {
                        break;
                    }
                    leave_deadline = Some(Instant::now() + LEAVE_LIMIT);
                }
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => self.on_entry(entry),
                    Some(Err(error)) => {
                        warn!(error = %error, "tasks bucket watch failed, re-opening it");
                        match self.open_watch().await {
                            Some(reopened) => entries = reopened,
                            None => break,
                        }
                    }
                    None => {
                        warn!("tasks bucket watch ended, re-opening it");
                        match self.open_watch().await {
                            Some(reopened) => entries = reopened,
                            None => break,
                        }
                    }
                },
                Some(notice) = self.notices_rx.recv() => self.on_notice(notice),
                Some(message) = peer_changes.next() => self.on_peer_status(&message),
                Ok(()) = self.ownership_changes.changed() => self.reconcile(),
                Some(joined) = self.joins.join_next_with_id(), if !self.joins.is_empty() => {
                    self.on_runner_exit(joined);
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.stop_all().await;
    }

    /// Subscribes to the status subjects of every batch. The client subscribes again by
    /// itself after a reconnect. Without the subscription no batch of another instance counts
    /// as running, so an old epoch's batch keeps running until the overlap limit.
    async fn subscribe_peer_changes(&self) -> BoxStream<'static, async_nats::Message> {
        let subject = self.context.subjects.all_batch_status();
        match self.context.js.client().subscribe(subject.clone()).await {
            Ok(subscriber) => subscriber.boxed(),
            Err(error) => {
                warn!(subject = %subject, error = %error, "failed to subscribe to the batch status of other instances, old epochs overlap up to the limit");
                futures::stream::pending().boxed()
            }
        }
    }

    /// Opens the watch, retrying with backoff; `None` once shutdown was requested.
    async fn open_watch(&mut self) -> Option<kv::Watch> {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.sync_and_watch().await {
                Ok(entries) => {
                    self.reconcile();
                    return Some(entries);
                }
                Err(error) => {
                    warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "failed to watch the tasks bucket, retrying");
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = sleep(delay) => {}
            }
            delay = (delay * 2).min(WATCH_RETRY_MAX);
        }
    }

    /// Opens the watch and removes tasks and batches whose keys are gone, since a re-opened
    /// watch delivers only the keys that still exist.
    async fn sync_and_watch(&mut self) -> Result<kv::Watch, WatchError> {
        let entries = self
            .kv
            .watch_many_with_history(["task.*", "batch.*"])
            .await?;
        let keys: HashSet<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| WatchError::Keys(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| WatchError::Keys(e.to_string()))?;
        self.tasks
            .retain(|id, _| keys.contains(&Subjects::task_key(*id)));
        self.batches
            .retain(|id, _| keys.contains(&Subjects::batch_key(*id)));
        info!(bucket = %self.kv.name, keys = keys.len(), "watching the tasks bucket");
        Ok(entries)
    }

    fn on_entry(&mut self, entry: kv::Entry) {
        let caught_up = entry.delta == 0;
        match (parse_key(&entry.key), entry.operation) {
            (None, _) => debug!(key = %entry.key, "key of the tasks bucket not used by ingest"),
            (Some(Key::Task(task_id)), Operation::Put) => self.put_task(task_id, &entry),
            (Some(Key::Batch(batch_id)), Operation::Put) => self.put_batch(batch_id, &entry),
            (Some(Key::Task(task_id)), Operation::Delete | Operation::Purge) => {
                if self.tasks.remove(&task_id).is_some() {
                    info!(task_id, "task removed from the tasks bucket");
                }
            }
            (Some(Key::Batch(batch_id)), Operation::Delete | Operation::Purge) => {
                self.batches.remove(&batch_id);
                debug!(batch_id, "batch removed from the tasks bucket");
            }
        }
        // While the watch delivers the existing keys, decide once at the end.
        if caught_up {
            self.reconcile();
        }
    }

    fn put_task(&mut self, task_id: u64, entry: &kv::Entry) {
        let task = match codec::decode::<TaskSpec>(&entry.value) {
            Ok(task) if task.task_id == task_id => task,
            Ok(task) => {
                warn!(key = %entry.key, found_task_id = task.task_id, "task spec stored under another task's key, ignored");
                return;
            }
            Err(error) => {
                warn!(key = %entry.key, revision = entry.revision, error = %error, "task spec cannot be decoded, the previous value stays in force");
                return;
            }
        };
        self.log_task_change(self.tasks.get(&task_id), &task);
        self.tasks.insert(task_id, task);
    }

    fn log_task_change(&self, previous: Option<&TaskSpec>, task: &TaskSpec) {
        let skip = plan::token_rules(task).err();
        let previous_skip = previous.map(|p| plan::token_rules(p).err());
        match &skip {
            Some(Skip::NotTokenTask) => {}
            Some(reason) if previous_skip.as_ref() != Some(&skip) => {
                warn!(task_id = task.task_id, reason = %reason, "task runs no batch");
            }
            _ => {}
        }
        let config_error = task.config_error.as_ref();
        if config_error.is_some() && config_error != previous.and_then(|p| p.config_error.as_ref())
        {
            let message = config_error
                .map(|e| e.message(Locale::En))
                .unwrap_or_default();
            warn!(task_id = task.task_id, error = %message, "task config is invalid, the last valid rules stay in force");
        }
        if skip.is_none()
            && previous.is_none_or(|p| p.epoch != task.epoch || p.config != task.config)
        {
            info!(
                task_id = task.task_id,
                epoch = task.epoch,
                batches = task.batches.len(),
                "task updated"
            );
        }
    }

    fn put_batch(&mut self, batch_id: u64, entry: &kv::Entry) {
        match codec::decode::<BatchSpec>(&entry.value) {
            Ok(batch) if batch.batch_id == batch_id => {
                self.batches.insert(batch_id, Arc::new(batch));
            }
            Ok(batch) => {
                warn!(key = %entry.key, found_batch_id = batch.batch_id, "batch spec stored under another batch's key, ignored");
            }
            Err(error) => {
                warn!(key = %entry.key, revision = entry.revision, error = %error, "batch spec cannot be decoded, the previous value stays in force");
            }
        }
    }

    fn on_notice(&mut self, notice: RunnerNotice) {
        let Some(slot) = self.runners.get_mut(&notice.batch_id) else {
            return;
        };
        // A new batch that has just started running cannot let an old epoch's runner stop
        // yet, so no reconcile runs here. The tick after SUBSCRIBE_SETTLE finds it settled.
        if notice.status == BatchStatus::Running {
            slot.running_since.get_or_insert_with(Instant::now);
        } else {
            slot.running_since = None;
        }
    }

    fn on_peer_status(&mut self, message: &async_nats::Message) {
        match codec::decode::<StatusMessage>(&message.payload) {
            Ok(StatusMessage::Change(change)) => {
                self.peers
                    .record(&change, self.ownership.consumer_id(), Instant::now());
            }
            Ok(StatusMessage::Heartbeat(_)) => {}
            Err(error) => {
                warn!(subject = %message.subject, error = %error, "status message cannot be decoded, ignored");
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.restart_not_before.retain(|_, at| *at > now);
        let runners = &self.runners;
        self.next_seqs.retain(|batch_id, (_, last_used)| {
            runners.contains_key(batch_id) || now.duration_since(*last_used) < SEQ_RETENTION
        });
        let batches = &self.batches;
        self.peers
            .retain(|batch_id| batches.contains_key(&batch_id));
        self.reconcile();
    }

    /// Starts wanted runners whose lease this instance holds, updates their configs, stops
    /// unwanted ones and those whose lease is gone, and reports both sets to the ownership.
    fn reconcile(&mut self) {
        let desired = plan::desired_runners(&self.tasks, &self.batches);
        let now = Instant::now();

        for (batch_id, config) in &desired {
            let leased = self.ownership.should_run(LeaseKey::batch(*batch_id));
            if let Some(slot) = self.runners.get_mut(batch_id) {
                slot.retiring_since = None;
                slot.config_tx.send_if_modified(|current| {
                    let changed = current != config;
                    if changed {
                        *current = config.clone();
                    }
                    changed
                });
            } else if leased
                && !self.stopping.contains(batch_id)
                && !self.restart_not_before.contains_key(batch_id)
            {
                self.start_runner(*batch_id, config.clone());
            }
        }

        let mut unleased = Vec::new();
        for (batch_id, slot) in &mut self.runners {
            if self.ownership.should_run(LeaseKey::batch(*batch_id)) {
                // The lease came back before the handover ended.
                slot.handing_over_since = None;
            } else {
                unleased.push(*batch_id);
            }
        }
        for batch_id in unleased {
            self.on_lease_gone(batch_id, desired.contains_key(&batch_id), now);
        }

        let unwanted: Vec<u64> = self
            .runners
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for batch_id in unwanted {
            self.retire(batch_id, now);
        }

        // A runner handing its batch over no longer counts, so that its lease is released.
        let active = self
            .runners
            .iter()
            .filter(|(_, slot)| slot.handing_over_since.is_none())
            .map(|(id, _)| id)
            .chain(&self.stopping)
            .copied();
        self.ownership
            .update(LeaseKind::Batch, desired.keys().copied(), active);

        if let Some(block_tasks) = &mut self.block_tasks {
            let ownership = &self.ownership;
            let leased = |task_id| ownership.should_run(LeaseKey::task(task_id));
            let block = block_tasks.reconcile(&self.tasks, leased);
            self.ownership
                .update(LeaseKind::Task, block.wanted, block.active);
        }
    }

    /// Handles a runner whose batch this instance should no longer run. When the batch is
    /// handed to another instance, the runner keeps running until that instance has reported
    /// the batch `running` for [`plan::SUBSCRIBE_SETTLE`], so the handover leaves no gap, and
    /// then stops without reporting `stopped`, since the batch runs on. A handed-over batch
    /// that is no longer desired is left to [`Self::retire`]. A lost lease stops the runner at
    /// once.
    fn on_lease_gone(&mut self, batch_id: u64, desired: bool, now: Instant) {
        let key = LeaseKey::batch(batch_id);
        let Some(slot) = self.runners.get_mut(&batch_id) else {
            return;
        };
        let since = match slot.handing_over_since {
            Some(_) if !desired => return,
            Some(since) => since,
            None if desired && self.ownership.handing_over(key) => {
                slot.handing_over_since = Some(now);
                info!(
                    task_id = slot.task_id,
                    batch_id,
                    owner = ?self.ownership.owner_of(key),
                    "batch handed over, it keeps running here until the new owner runs it"
                );
                now
            }
            None => {
                let reason = self.lease_stop_reason(batch_id);
                return self.stop_runner(batch_id, reason);
            }
        };
        let taken_over =
            running_elsewhere(&self.ownership, &self.peers, batch_id, Some(since), now);
        if taken_over || now.duration_since(since) >= plan::OVERLAP_LIMIT {
            let reason = self.lease_stop_reason(batch_id);
            if let Some(slot) = self.runners.get(&batch_id) {
                slot.stop.hand_over();
            }
            self.stop_runner(batch_id, reason);
        }
    }

    fn lease_stop_reason(&self, batch_id: u64) -> String {
        let key = LeaseKey::batch(batch_id);
        match self.ownership.owner_of(key) {
            Some(owner) if owner != self.ownership.consumer_id() => {
                format!("handed over to ingest instance {owner}")
            }
            _ => format!("lease {key} lost or not renewed in time"),
        }
    }

    /// Returns why a runner that is no longer wanted stops.
    fn retire_reason(&self, task_id: u64, epoch: u32) -> String {
        match self.tasks.get(&task_id) {
            None => format!("task {task_id} was removed"),
            Some(task) if task.epoch > epoch => {
                format!("task {task_id} moved to epoch {}", task.epoch)
            }
            Some(task) if plan::token_rules(task).is_err() => {
                format!("task {task_id} has no valid token rules")
            }
            Some(_) => "the batch is paused, stopped or no longer listed".to_owned(),
        }
    }

    fn retire(&mut self, batch_id: u64, now: Instant) {
        let Some(slot) = self.runners.get_mut(&batch_id) else {
            return;
        };
        let first_time = slot.retiring_since.is_none();
        let since = *slot.retiring_since.get_or_insert(now);
        let (task_id, epoch) = (slot.task_id, slot.epoch);

        let runners = &self.runners;
        let ownership = &self.ownership;
        let peers = &self.peers;
        let is_running = |id: u64| {
            let running_here = runners.get(&id).is_some_and(|slot| {
                let running_for = slot.running_since.map(|since| now.duration_since(since));
                slot.retiring_since.is_none() && plan::running_settled(running_for)
            });
            running_here || running_elsewhere(ownership, peers, id, None, now)
        };
        if plan::stop_now(
            task_id,
            epoch,
            now.duration_since(since),
            &self.tasks,
            &self.batches,
            is_running,
        ) {
            let reason = self.retire_reason(task_id, epoch);
            self.stop_runner(batch_id, reason);
        } else if first_time {
            info!(
                task_id,
                batch_id,
                epoch,
                "batch of an old epoch keeps running until the new epoch's batches run"
            );
        }
    }

    fn start_runner(&mut self, batch_id: u64, config: RunnerConfig) {
        let now = Instant::now();
        let next_seq = Arc::clone(
            &self
                .next_seqs
                .entry(batch_id)
                .or_insert_with(|| (Arc::new(AtomicU64::new(1)), now))
                .0,
        );
        info!(
            task_id = config.task_id,
            batch_id,
            epoch = config.epoch,
            targets = config.batch.targets.len(),
            "starting batch runner"
        );
        let (task_id, epoch) = (config.task_id, config.epoch);
        let earlier_batches = plan::earlier_batches(&config, &self.batches);
        let (config_tx, config_rx) = watch::channel(config);
        let stop = StopSignal::child_of(&self.runners_stop);
        let runner = BatchRunner::new(
            Arc::clone(&self.context),
            config_rx,
            stop.clone(),
            next_seq,
            self.notices_tx.clone(),
            &earlier_batches,
        );
        let handle = self.joins.spawn(runner.run());
        self.join_ids.insert(handle.id(), batch_id);
        self.runners.insert(
            batch_id,
            RunnerSlot {
                task_id,
                epoch,
                running_since: None,
                config_tx,
                stop,
                retiring_since: None,
                handing_over_since: None,
            },
        );
    }

    fn stop_runner(&mut self, batch_id: u64, reason: String) {
        let Some(slot) = self.runners.remove(&batch_id) else {
            return;
        };
        info!(
            task_id = slot.task_id,
            batch_id,
            epoch = slot.epoch,
            reason = %reason,
            "stopping batch runner"
        );
        slot.stop.stop(reason);
        self.stopping.insert(batch_id);
        if let Some((_, last_used)) = self.next_seqs.get_mut(&batch_id) {
            *last_used = Instant::now();
        }
    }

    fn on_runner_exit(&mut self, joined: Result<(Id, ()), JoinError>) {
        let (id, panic) = match joined {
            Ok((id, ())) => (id, None),
            Err(error) => (error.id(), Some(error)),
        };
        let Some(batch_id) = self.join_ids.remove(&id) else {
            return;
        };
        if let Some((_, last_used)) = self.next_seqs.get_mut(&batch_id) {
            *last_used = Instant::now();
        }
        if self.stopping.remove(&batch_id) && panic.is_none() {
            debug!(batch_id, "batch runner ended");
        } else {
            let reason = panic.map_or_else(|| "it returned".to_owned(), |e| e.to_string());
            error!(batch_id, reason = %reason, restart_in_ms = RESTART_DELAY.as_millis() as u64, "batch runner ended without being stopped, restarting it");
            self.runners.remove(&batch_id);
            self.stopping.remove(&batch_id);
            self.restart_not_before
                .insert(batch_id, Instant::now() + RESTART_DELAY);
        }
        self.reconcile();
    }

    /// Waits for every runner to drain after shutdown; aborts those that take too long.
    async fn stop_all(mut self) {
        let block_tasks = self.block_tasks.take();
        // Runners stopped this way report that ingest is shutting down.
        self.runners_stop.cancel();
        let limit = DRAIN_TIMEOUT + Duration::from_secs(5);
        let joins = &mut self.joins;
        let drained = timeout(limit, async {
            while let Some(joined) = joins.join_next().await {
                if let Err(error) = joined {
                    error!(error = %error, "batch runner failed while stopping");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                runners = self.joins.len(),
                "batch runners did not stop in time, aborting them"
            );
            self.joins.abort_all();
        }
        if let Some(block_tasks) = block_tasks {
            block_tasks.stop_all().await;
        }
    }
}

/// Returns whether the lease of `batch_id` is held elsewhere and the member that rendezvous
/// hashing gives it has reported the batch `running` for [`plan::SUBSCRIBE_SETTLE`], in a
/// report received after `reported_after` when that is given.
fn running_elsewhere(
    ownership: &Ownership,
    peers: &PeerRunners,
    batch_id: u64,
    reported_after: Option<Instant>,
    now: Instant,
) -> bool {
    let key = LeaseKey::batch(batch_id);
    let owner = ownership.owner_of(key);
    ownership.held_elsewhere(key)
        && peers.running_settled(batch_id, owner.as_deref(), reported_after, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_to_task_or_batch() {
        assert_eq!(parse_key("task.12"), Some(Key::Task(12)));
        assert_eq!(parse_key("batch.7"), Some(Key::Batch(7)));
        assert_eq!(parse_key("batch.x"), None);
        assert_eq!(parse_key("member.host-1"), None);
    }
}
