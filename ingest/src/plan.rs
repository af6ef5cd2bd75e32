//! Which batches should run, computed from the contents of the tasks bucket. Pure.
//!
//! Consumes the current [`TaskSpec`]s and [`BatchSpec`]s and produces the [`RunnerConfig`] of
//! every batch to run, and the decision whether a runner that is no longer wanted stops now
//! or keeps running while the next epoch of its task starts.
//!
//! A batch runs when all of these are true:
//! - its task is a token task with valid token rules;
//! - the task lists it in its current epoch;
//! - its `batch.<id>` spec is present and belongs to that task and epoch;
//! - neither the task's list nor the spec marks it paused or stopped.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use monitor_core::messages::{BatchSpec, TaskSpec};
use monitor_core::rules::{Rules, TokenRules};

use crate::birdeye::address_key;
use crate::runner::{HolderNeeds, RunnerConfig};

/// Maximum time a runner of an old epoch, or of a batch handed to another instance, keeps
/// running while its replacements fail to reach `running`. Matches the grace period after
/// which the allocator deletes old epochs.
pub const OVERLAP_LIMIT: Duration = Duration::from_secs(600);

/// Time a new epoch's runner must have reported `running` before an old epoch's runner may
/// stop. A runner reports `running` once its subscriptions are written to the socket, and
/// the feed applies them a little later. A live feed sends a trade due in between to the old
/// connection only, so an old runner that stopped at once could miss it.
pub const SUBSCRIBE_SETTLE: Duration = Duration::from_secs(2);

/// Reason a task runs no batch on this stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Block tasks are served by the chain adapters, not by the Birdeye runners.
    NotTokenTask,
    /// The task has no valid config at all.
    NoConfig,
    /// The config holds block rules although the task is a token task.
    NotTokenRules,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::NotTokenTask => "the task is not a token task",
            Skip::NoConfig => "the task has no valid config",
            Skip::NotTokenRules => "the task's config has no token rules",
        })
    }
}

/// Returns the token rules of a task whose batches this stage can run.
pub fn token_rules(task: &TaskSpec) -> Result<&TokenRules, Skip> {
    if !task.task_type.has_targets() {
        return Err(Skip::NotTokenTask);
    }
    match task.config.as_ref().map(|c| &c.rules) {
        None => Err(Skip::NoConfig),
        Some(Rules::Token(rules)) => Ok(rules),
        Some(Rules::Block(_)) => Err(Skip::NotTokenRules),
    }
}

/// Batches of the task's current epoch that should run, in the task's order.
pub fn runnable_batches<'a>(
    task: &'a TaskSpec,
    batches: &'a HashMap<u64, Arc<BatchSpec>>,
) -> impl Iterator<Item = (u64, Option<&'a Arc<BatchSpec>>)> + 'a {
    task.batches
        .iter()
        .filter(|r| r.status.is_runnable())
        .filter_map(move |r| match batches.get(&r.batch_id) {
            None => Some((r.batch_id, None)),
            Some(spec) if !spec.status.is_runnable() => None,
            Some(spec) => Some((r.batch_id, Some(spec))),
        })
}

/// The runner config of every batch that should run, by batch id.
pub fn desired_runners(
    tasks: &HashMap<u64, TaskSpec>,
    batches: &HashMap<u64, Arc<BatchSpec>>,
) -> BTreeMap<u64, RunnerConfig> {
    let mut desired = BTreeMap::new();
    for task in tasks.values() {
        let Ok(rules) = token_rules(task) else {
            continue;
        };
        let window_lengths = rules.window_lengths();
        let holders = rules.needs_holders().then(|| HolderNeeds {
            top_n: rules.top_holders.as_ref().map(|r| r.top_n),
        });
        for (batch_id, spec) in runnable_batches(task, batches) {
            let Some(spec) = spec else {
                continue;
            };
            if spec.task_id != task.task_id || spec.epoch != task.epoch {
                continue;
            }
            desired.insert(
                batch_id,
                RunnerConfig {
                    task_id: task.task_id,
                    chain: task.chain,
                    epoch: task.epoch,
                    window_lengths: window_lengths.clone(),
                    holders,
                    batch: Arc::clone(spec),
                },
            );
        }
    }
    desired
}

/// Returns the batches of earlier epochs of the runner's task that contain any of its targets,
/// by id. Their stored events are the history of the runner's windows, besides its own batch's.
///
/// NOTE: the cost is the targets of the task's older batches for each starting runner, so an
/// epoch switch of a task of 1,000 batches compares about 10^8 addresses in all (an estimate,
/// not measured). Outside an epoch switch no older batch remains to compare.
pub fn earlier_batches(config: &RunnerConfig, batches: &HashMap<u64, Arc<BatchSpec>>) -> Vec<u64> {
    let ours: HashSet<Cow<'_, str>> = config
        .batch
        .targets
        .iter()
        .map(|t| address_key(&t.address))
        .collect();
    let mut earlier: Vec<u64> = batches
        .values()
        .filter(|b| b.task_id == config.task_id && b.epoch < config.epoch)
        .filter(|b| {
            b.targets
                .iter()
                .any(|t| ours.contains(&address_key(&t.address)))
        })
        .map(|b| b.batch_id)
        .collect();
    earlier.sort_unstable();
    earlier
}

/// Decides whether a runner that is no longer wanted stops now.
///
/// It keeps running only while its task has moved to a newer epoch whose batches are not all
/// `running` yet (and for at most [`OVERLAP_LIMIT`]), so that the task is never unwatched
/// during an epoch switch. A batch whose spec has not arrived yet counts as not running.
pub fn stop_now(
    task_id: u64,
    epoch: u32,
    retiring_for: Duration,
    tasks: &HashMap<u64, TaskSpec>,
    batches: &HashMap<u64, Arc<BatchSpec>>,
    is_running: impl Fn(u64) -> bool,
) -> bool {
    let Some(task) = tasks.get(&task_id) else {
        return true;
    };
    if task.epoch <= epoch || token_rules(task).is_err() || retiring_for >= OVERLAP_LIMIT {
        return true;
    }
    runnable_batches(task, batches).all(|(batch_id, _)| is_running(batch_id))
}

/// Returns whether a runner counts as running for an epoch switch. `running_for` is how long
/// it has reported `running`, `None` while it reports another status.
pub fn running_settled(running_for: Option<Duration>) -> bool {
    running_for.is_some_and(|running_for| running_for >= SUBSCRIBE_SETTLE)
}

#[cfg(test)]
mod tests {
    use monitor_core::messages::{
        BatchRef, BatchStatus, Chain, ConfigSpec, TargetSpec, TaskType, MESSAGE_VERSION,
    };
    use monitor_core::rules::{BlockRules, TriggerLogic, VolumeRule};

    use super::*;

    fn token_rules_with_window(window_sec: u32) -> Rules {
        Rules::Token(TokenRules {
            price_change: None,
            volume: Some(VolumeRule {
                window_sec,
                min_volume_usd: 1000.0,
            }),
            holder_change: None,
            large_trade: None,
            cumulative_buy: None,
            top_holders: None,
            cooldown_sec: 300,
        })
    }

    fn task(task_id: u64, epoch: u32, batch_ids: &[u64]) -> TaskSpec {
        TaskSpec {
            v: MESSAGE_VERSION,
            task_id,
            name: format!("task {task_id}"),
            task_type: TaskType::Batch,
            chain: Chain::Eth,
            epoch,
            config: Some(ConfigSpec {
                config_id: 1,
                version: 1,
                name: "config".into(),
                trigger_logic: TriggerLogic::Or,
                rules: token_rules_with_window(300),
            }),
            batches: batch_ids
                .iter()
                .enumerate()
                .map(|(i, id)| BatchRef {
                    batch_id: *id,
                    batch_no: i as u32 + 1,
                    item_count: 1,
                    status: BatchStatus::Pending,
                })
                .collect(),
            config_error: None,
            published_ms: 0,
        }
    }

    fn batch(batch_id: u64, task_id: u64, epoch: u32) -> Arc<BatchSpec> {
        Arc::new(BatchSpec {
            v: MESSAGE_VERSION,
            batch_id,
            task_id,
            epoch,
            batch_no: 1,
            status: BatchStatus::Pending,
            targets: vec![TargetSpec {
                target_id: batch_id * 10,
                address: format!("0x{batch_id:040x}"),
                pair_address: None,
                token_name: None,
                token_symbol: None,
                market_cap: None,
                source: None,
                batch_order: 1,
            }],
        })
    }

    fn state(
        tasks: Vec<TaskSpec>,
        batches: Vec<Arc<BatchSpec>>,
    ) -> (HashMap<u64, TaskSpec>, HashMap<u64, Arc<BatchSpec>>) {
        (
            tasks.into_iter().map(|t| (t.task_id, t)).collect(),
            batches.into_iter().map(|b| (b.batch_id, b)).collect(),
        )
    }

    #[test]
    fn listed_batch_with_spec_runs() {
        let (tasks, batches) = state(
            vec![task(1, 2, &[11, 12])],
            vec![batch(11, 1, 2), batch(12, 1, 2)],
        );
        let desired = desired_runners(&tasks, &batches);
        assert_eq!(desired.keys().copied().collect::<Vec<_>>(), vec![11, 12]);
        let config = &desired[&11];
        assert_eq!(config.task_id, 1);
        assert_eq!(config.epoch, 2);
        assert_eq!(config.chain, Chain::Eth);
        assert_eq!(config.window_lengths, vec![300]);
        assert_eq!(config.batch.batch_id, 11);
    }

    #[test]
    fn batch_without_spec_does_not_run() {
        let (tasks, batches) = state(vec![task(1, 2, &[11, 12])], vec![batch(11, 1, 2)]);
        assert_eq!(desired_runners(&tasks, &batches).len(), 1);
    }

    #[test]
    fn spec_of_other_epoch_does_not_run() {
        let (tasks, batches) = state(vec![task(1, 2, &[11])], vec![batch(11, 1, 1)]);
        assert!(desired_runners(&tasks, &batches).is_empty());
    }

    #[test]
    fn paused_batch_does_not_run() {
        let mut listed_paused = task(1, 1, &[11, 12]);
        listed_paused.batches[0].status = BatchStatus::Paused;
        let mut spec_stopped = (*batch(12, 1, 1)).clone();
        spec_stopped.status = BatchStatus::Stopped;
        let (tasks, batches) = state(
            vec![listed_paused],
            vec![batch(11, 1, 1), Arc::new(spec_stopped)],
        );
        assert!(desired_runners(&tasks, &batches).is_empty());
    }

    #[test]
    fn task_without_token_rules_runs_nothing() {
        let mut no_config = task(1, 1, &[11]);
        no_config.config = None;
        let mut block_task = task(2, 1, &[21]);
        block_task.task_type = TaskType::Block;
        let mut block_rules = task(3, 1, &[31]);
        if let Some(config) = &mut block_rules.config {
            config.rules = Rules::Block(BlockRules::default());
        }
        assert_eq!(token_rules(&no_config), Err(Skip::NoConfig));
        assert_eq!(token_rules(&block_task), Err(Skip::NotTokenTask));
        assert_eq!(token_rules(&block_rules), Err(Skip::NotTokenRules));

        let (tasks, batches) = state(
            vec![no_config, block_task, block_rules],
            vec![batch(11, 1, 1), batch(21, 2, 1), batch(31, 3, 1)],
        );
        assert!(desired_runners(&tasks, &batches).is_empty());
    }

    #[test]
    fn old_epoch_waits_for_new_batches_running() {
        let (tasks, batches) = state(
            vec![task(1, 2, &[21, 22])],
            vec![batch(21, 1, 2), batch(22, 1, 2)],
        );
        let start = Duration::ZERO;
        assert!(!stop_now(1, 1, start, &tasks, &batches, |_| false));
        assert!(!stop_now(1, 1, start, &tasks, &batches, |id| id == 21));
        assert!(stop_now(1, 1, start, &tasks, &batches, |_| true));
    }

    #[test]
    fn old_epoch_waits_for_missing_spec() {
        let (tasks, batches) = state(vec![task(1, 2, &[21, 22])], vec![batch(21, 1, 2)]);
        assert!(!stop_now(1, 1, Duration::ZERO, &tasks, &batches, |id| id == 21));
    }

    #[test]
    fn old_epoch_stops_after_overlap_limit() {
        let (tasks, batches) = state(vec![task(1, 2, &[21])], vec![batch(21, 1, 2)]);
        assert!(stop_now(1, 1, OVERLAP_LIMIT, &tasks, &batches, |_| false));
    }

    #[test]
    fn removed_task_or_same_epoch_stops_at_once() {
        let (tasks, batches) = state(vec![task(1, 2, &[21])], vec![batch(21, 1, 2)]);
        assert!(
            stop_now(9, 1, Duration::ZERO, &tasks, &batches, |_| false),
            "task gone"
        );
        assert!(
            stop_now(1, 2, Duration::ZERO, &tasks, &batches, |_| false),
            "same epoch"
        );
    }

    #[test]
    fn running_counts_once_settled() {
        assert!(!running_settled(None), "not running");
        assert!(!running_settled(Some(Duration::ZERO)), "just subscribed");
        let settling = SUBSCRIBE_SETTLE - Duration::from_millis(1);
        assert!(!running_settled(Some(settling)), "still settling");
        assert!(running_settled(Some(SUBSCRIBE_SETTLE)), "settled");
    }

    #[test]
    fn old_epoch_waits_for_new_runner_to_settle() {
        let (tasks, batches) = state(vec![task(1, 2, &[21])], vec![batch(21, 1, 2)]);
        let stops_after = |running_for: Duration| {
            stop_now(1, 1, Duration::ZERO, &tasks, &batches, |_| {
                running_settled(Some(running_for))
            })
        };
        assert!(!stops_after(Duration::from_millis(10)));
        assert!(stops_after(SUBSCRIBE_SETTLE));
    }

    /// Returns a batch of `epoch` holding the given addresses.
    fn batch_of(batch_id: u64, task_id: u64, epoch: u32, addresses: &[&str]) -> Arc<BatchSpec> {
        let mut spec = (*batch(batch_id, task_id, epoch)).clone();
        spec.targets = addresses
            .iter()
            .zip(1..)
            .map(|(address, order)| TargetSpec {
                address: (*address).into(),
                batch_order: order,
                ..spec.targets[0].clone()
            })
            .collect();
        Arc::new(spec)
    }

    #[test]
    fn earlier_batches_share_a_target() {
        let (a, b, c) = ("0xaa", "0xbb", "0xcc");
        let (tasks, batches) = state(
            vec![task(1, 3, &[31])],
            vec![
                batch_of(11, 1, 1, &[a]),
                batch_of(21, 1, 2, &["0xAA", c]),
                batch_of(22, 1, 2, &[c]),
                batch_of(23, 1, 2, &[b]),
                batch_of(24, 2, 2, &[a]),
                batch_of(31, 1, 3, &[a, b]),
                batch_of(32, 1, 3, &[c]),
            ],
        );
        let config = &desired_runners(&tasks, &batches)[&31];
        assert_eq!(
            earlier_batches(config, &batches),
            vec![11, 21, 23],
            "not 22 (other targets), 24 (other task), 31 (itself) or 32 (same epoch)"
        );
    }
}
