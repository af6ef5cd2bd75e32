//! Block tasks: whole-chain monitoring on eth, bsc (EVM adapter) and sol (Solana adapter).
//!
//! A `block` task has no targets and no batches: its config ([`BlockRules`]) decides what is
//! subscribed. [`BlockTasks`] consumes the tasks of the tasks bucket (from the supervisor) and
//! runs one runner per block task that this instance may run: [`crate::evm::EvmRunner`] for
//! eth and bsc, [`crate::solana::SolanaRunner`] for sol. Each runner has its own node
//! connection and subscriptions, so tasks on one chain share nothing: a task's config change
//! is sent to its runner alone, which resubscribes only when the subscriptions change.
//!
//! Runners publish event frames without a batch on `Subjects::chain_events(chain, task_id)`,
//! a heartbeat with the last block or slot on `Subjects::task_status(task_id)` every
//! `HEARTBEAT_INTERVAL`, and their status changes ([`output`]).

pub mod confirm;
pub mod jsonrpc;
pub mod output;
pub mod price;
pub mod publish;
pub mod settings;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use monitor_core::messages::{Chain, TaskSpec, TaskType};
use monitor_core::rules::{BlockRules, Rules};
use monitor_core::Subjects;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use self::price::NativePrices;
use self::settings::ChainSettings;
use crate::runner::DRAIN_TIMEOUT;

/// Time to wait before restarting a runner that ended on its own.
const RESTART_DELAY: Duration = Duration::from_secs(5);
const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Handles and settings shared by every block task runner of this instance.
pub struct BlockContext {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub consumer_id: String,
    pub heartbeat_interval: Duration,
    pub max_buffered_events: usize,
    pub chains: ChainSettings,
    pub prices: Arc<NativePrices>,
}

/// The block task that a runner runs, with its validated rules.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockTaskConfig {
    pub task_id: u64,
    pub chain: Chain,
    pub epoch: u32,
    pub config_id: u64,
    pub config_version: u64,
    pub rules: BlockRules,
}

/// Returns the config of every block task with valid block rules, by task id.
pub fn desired_block_tasks(tasks: &HashMap<u64, TaskSpec>) -> BTreeMap<u64, BlockTaskConfig> {
    tasks
        .values()
        .filter(|task| task.task_type == TaskType::Block)
        .filter_map(|task| {
            let config = task.config.as_ref()?;
            let Rules::Block(rules) = &config.rules else {
                return None;
            };
            Some((
                task.task_id,
                BlockTaskConfig {
                    task_id: task.task_id,
                    chain: task.chain,
                    epoch: task.epoch,
                    config_id: config.config_id,
                    config_version: config.version,
                    rules: rules.clone(),
                },
            ))
        })
        .collect()
}

/// A request to stop a runner, with the reason its `stopped` status carries.
#[derive(Debug, Clone, Default)]
pub struct StopRequest {
    token: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl StopRequest {
    fn child_of(parent: &CancellationToken) -> Self {
        StopRequest {
            token: parent.child_token(),
            reason: Arc::default(),
        }
    }

    pub fn stop(&self, reason: impl Into<String>) {
        let mut slot = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert_with(|| reason.into());
        self.token.cancel();
    }

    /// Waits until a stop is requested (or the parent token is cancelled). Cancel-safe.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Returns the reason given to [`StopRequest::stop`]; shutdown when only the parent
    /// token was cancelled.
    pub fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "ingest is shutting down".to_owned())
    }
}

/// The handles a runner receives from the manager.
pub struct RunnerHandles {
    pub context: Arc<BlockContext>,
    pub config_rx: watch::Receiver<BlockTaskConfig>,
    pub stop: StopRequest,
    pub next_seq: Arc<AtomicU64>,
}

/// Block task ids for the ownership: the tasks wanted on this stage, and those whose runners
/// are still alive here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub wanted: Vec<u64>,
    pub active: Vec<u64>,
}

struct Slot {
    config_tx: watch::Sender<BlockTaskConfig>,
    stop: StopRequest,
    handle: JoinHandle<()>,
}

/// The runners of the block tasks that run on this instance.
pub struct BlockTasks {
    context: Arc<BlockContext>,
    shutdown: CancellationToken,
    runners: HashMap<u64, Slot>,
    stopping: Vec<(u64, JoinHandle<()>)>,
    /// Frame sequence counters by task, kept for the life of the process so that a restarted
    /// runner never reuses a msg id.
    next_seqs: HashMap<u64, Arc<AtomicU64>>,
    restart_not_before: HashMap<u64, Instant>,
}

impl BlockTasks {
    pub fn new(context: Arc<BlockContext>, shutdown: CancellationToken) -> Self {
        BlockTasks {
            context,
            shutdown,
            runners: HashMap::new(),
            stopping: Vec::new(),
            next_seqs: HashMap::new(),
            restart_not_before: HashMap::new(),
        }
    }

    /// Starts the runners of wanted block tasks that `may_run` allows, sends changed configs
    /// to running ones, and stops the rest. Returns the wanted and the still active task ids.
    pub fn reconcile(
        &mut self,
        tasks: &HashMap<u64, TaskSpec>,
        may_run: impl Fn(u64) -> bool,
    ) -> Reconciled {
        self.reap_finished();
        let desired = desired_block_tasks(tasks);

        for (task_id, config) in &desired {
            let allowed = may_run(*task_id);
            match self.runners.get(task_id) {
                Some(_) if !allowed => {
                    self.stop_runner(
                        *task_id,
                        "the task's lease is held by another ingest instance or was lost",
                    );
                }
                Some(slot) => {
                    slot.config_tx.send_if_modified(|current| {
                        let changed = current != config;
                        if changed {
                            *current = config.clone();
                        }
                        changed
                    });
                }
                None if allowed && !self.restart_not_before.contains_key(task_id) => {
                    self.start_runner(config.clone());
                }
                None => {}
            }
        }

        let unwanted: Vec<u64> = self
            .runners
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect();
        for task_id in unwanted {
            let reason = match tasks.get(&task_id) {
                None => format!("task {task_id} was removed"),
                Some(_) => format!("task {task_id} has no valid block rules"),
            };
            self.stop_runner(task_id, reason);
        }

        let active: HashSet<u64> = self
            .runners
            .keys()
            .copied()
            .chain(self.stopping.iter().map(|(id, _)| *id))
            .collect();
        Reconciled {
            wanted: desired.keys().copied().collect(),
            active: active.into_iter().collect(),
        }
    }

    /// Stops every runner and waits for them to drain; aborts those that take too long.
    pub async fn stop_all(mut self) {
        for slot in self.runners.values() {
            slot.stop.stop("ingest is shutting down");
        }
        let handles: Vec<JoinHandle<()>> = self
            .runners
            .drain()
            .map(|(_, slot)| slot.handle)
            .chain(self.stopping.drain(..).map(|(_, handle)| handle))
            .collect();
        let limit = DRAIN_TIMEOUT + Duration::from_secs(5);
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let joined = timeout(limit, futures::future::join_all(handles)).await;
        match joined {
            Ok(results) => {
                for error in results.into_iter().filter_map(Result::err) {
                    error!(error = %error, "block task runner failed while stopping");
                }
            }
            Err(_) => {
                warn!(
                    runners = aborts.len(),
                    "block task runners did not stop in time, aborting them"
                );
                aborts.iter().for_each(|abort| abort.abort());
            }
        }
    }

    fn start_runner(&mut self, config: BlockTaskConfig) {
        let task_id = config.task_id;
        info!(task_id, chain = %config.chain, epoch = config.epoch, "starting block task runner");
        let next_seq = Arc::clone(
            self.next_seqs
                .entry(task_id)
                .or_insert_with(|| Arc::new(AtomicU64::new(1))),
        );
        let chain = config.chain;
        let (config_tx, config_rx) = watch::channel(config);
        let stop = StopRequest::child_of(&self.shutdown);
        let handles = RunnerHandles {
            context: Arc::clone(&self.context),
            config_rx,
            stop: stop.clone(),
            next_seq,
        };
        let handle = match chain {
            Chain::Eth | Chain::Bsc => tokio::spawn(crate::evm::EvmRunner::new(handles).run()),
            Chain::Sol => tokio::spawn(crate::solana::SolanaRunner::new(handles).run()),
        };
        self.runners.insert(
            task_id,
            Slot {
                config_tx,
                stop,
                handle,
            },
        );
    }

    fn stop_runner(&mut self, task_id: u64, reason: impl Into<String>) {
        let Some(slot) = self.runners.remove(&task_id) else {
            return;
        };
        let reason = reason.into();
        info!(task_id, reason = %reason, "stopping block task runner");
        slot.stop.stop(reason);
        self.stopping.push((task_id, slot.handle));
    }

    /// Forgets runners that ended; one that ended without being stopped is restarted after
    /// [`RESTART_DELAY`].
    fn reap_finished(&mut self) {
        let now = Instant::now();
        self.restart_not_before.retain(|_, at| *at > now);
        self.stopping.retain(|(_, handle)| !handle.is_finished());

        let ended: Vec<u64> = self
            .runners
            .iter()
            .filter(|(_, slot)| slot.handle.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for task_id in ended {
            self.runners.remove(&task_id);
            error!(
                task_id,
                restart_in_ms = RESTART_DELAY.as_millis() as u64,
                "block task runner ended without being stopped, restarting it"
            );
            self.restart_not_before.insert(task_id, now + RESTART_DELAY);
        }
    }
}

/// Delay before reconnect attempt `failures + 1`: 0.5 s doubling up to 30 s, scaled by a
/// random factor between 0.5 and 1 so that many tasks do not reconnect in step.
pub fn reconnect_delay(failures: u32) -> Duration {
    let base = RECONNECT_INITIAL
        .saturating_mul(1u32 << failures.min(10))
        .min(RECONNECT_MAX);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{ConfigSpec, MESSAGE_VERSION};
    use monitor_core::rules::{NewBlocksRule, TokenRules, TriggerLogic};

    use super::*;

    fn task(task_id: u64, task_type: TaskType, rules: Option<Rules>) -> TaskSpec {
        TaskSpec {
            v: MESSAGE_VERSION,
            task_id,
            name: format!("task {task_id}"),
            task_type,
            chain: Chain::Eth,
            epoch: 2,
            config: rules.map(|rules| ConfigSpec {
                config_id: 30 + task_id,
                version: 1,
                name: "rules".into(),
                trigger_logic: TriggerLogic::Or,
                rules,
            }),
            batches: Vec::new(),
            config_error: None,
            published_ms: 0,
        }
    }

    fn block_rules() -> Rules {
        Rules::Block(BlockRules {
            new_blocks: Some(NewBlocksRule {
                interval_threshold_sec: 30.0,
            }),
            cooldown_sec: 300,
            ..BlockRules::default()
        })
    }

    #[test]
    fn only_block_tasks_with_block_rules_run() {
        let token_rules = Rules::Token(TokenRules {
            price_change: None,
            volume: None,
            holder_change: None,
            large_trade: None,
            cumulative_buy: None,
            top_holders: None,
            cooldown_sec: 300,
        });
        let tasks = HashMap::from([
            (1, task(1, TaskType::Block, Some(block_rules()))),
            (2, task(2, TaskType::Smart, Some(token_rules))),
            (3, task(3, TaskType::Block, None)),
        ]);

        let desired = desired_block_tasks(&tasks);

        assert_eq!(desired.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(desired[&1].config_id, 31);
        assert_eq!(desired[&1].epoch, 2);
    }

    #[test]
    fn stop_reason_is_the_first_one() {
        let parent = CancellationToken::new();
        let stop = StopRequest::child_of(&parent);

        stop.stop("task 4 was removed");
        stop.stop("ingest is shutting down");

        assert!(stop.is_stopped());
        assert_eq!(stop.reason(), "task 4 was removed");
    }

    #[test]
    fn shutdown_is_the_default_stop_reason() {
        let parent = CancellationToken::new();
        let stop = StopRequest::child_of(&parent);

        parent.cancel();

        assert!(stop.is_stopped());
        assert_eq!(stop.reason(), "ingest is shutting down");
    }

    #[test]
    fn reconnect_delay_doubles_up_to_30_seconds() {
        assert!(reconnect_delay(0) <= RECONNECT_INITIAL);
        assert!(reconnect_delay(0) >= RECONNECT_INITIAL / 2);
        assert!(reconnect_delay(20) <= RECONNECT_MAX);
        assert!(reconnect_delay(20) >= RECONNECT_MAX / 2);
    }
}
