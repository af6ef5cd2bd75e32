//! Building the published view of one task: its `TaskSpec` and the `BatchSpec` of each batch.
//!
//! Consumes a task row, its linked configs, the batches and items of its current epoch, and
//! the `TaskSpec` published before (for the last valid rules). Produces a [`Snapshot`] plus the
//! [`Notice`]s worth logging. Only the first config (by `config_order`) is used. An invalid
//! config never replaces valid rules, because the spec keeps the previous `config` and carries
//! the error in `config_error`. A block task has no batches.

use std::collections::BTreeMap;

use monitor_core::messages::{
    BatchRef, BatchSpec, BatchStatus, Chain, ConfigSpec, TargetSpec, TaskSpec, TaskType,
    MESSAGE_VERSION,
};
use monitor_core::rules::{self, ConfigError, ConfigRow};
use sqlx::MySqlPool;

use crate::store::{self, BatchRow, ItemRow, StoreError, TaskRow};

/// The task row's type and chain, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskKind {
    pub task_type: TaskType,
    pub chain: Chain,
}

/// A task row whose type or chain this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task {task_id}: {column} {value:?} is not supported ({reason})")]
pub struct InvalidTask {
    pub task_id: u64,
    pub column: &'static str,
    pub value: String,
    pub reason: String,
}

impl TaskKind {
    pub fn of(task: &TaskRow) -> Result<Self, InvalidTask> {
        let invalid = |column, value: &str, reason| InvalidTask {
            task_id: task.id,
            column,
            value: value.to_owned(),
            reason,
        };
        let task_type = task
            .task_type
            .parse()
            .map_err(|reason| invalid("task_type", &task.task_type, reason))?;
        let chain = task
            .chain_type
            .parse()
            .map_err(|reason| invalid("chain_type", &task.chain_type, reason))?;
        Ok(TaskKind { task_type, chain })
    }
}

/// Everything read from the database to build one task's snapshot.
#[derive(Debug, Clone)]
pub struct TaskState {
    pub task: TaskRow,
    pub kind: TaskKind,
    /// Enabled configs linked to the task, in `config_order`.
    pub configs: Vec<ConfigRow>,
    pub batches: Vec<BatchRow>,
    pub items: Vec<ItemRow>,
}

/// Reads a task's configs, batches and items. `task.current_epoch` selects the epoch.
pub async fn load(
    pool: &MySqlPool,
    task: TaskRow,
    kind: TaskKind,
) -> Result<TaskState, StoreError> {
    let configs = store::task_configs(pool, task.id).await?;
    let (batches, items) = if kind.task_type.has_targets() && task.current_epoch > 0 {
        (
            store::epoch_batches(pool, task.id, task.current_epoch).await?,
            store::epoch_items(pool, task.id, task.current_epoch).await?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(TaskState {
        task,
        kind,
        configs,
        batches,
        items,
    })
}

/// The published view of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub task: TaskSpec,
    pub batches: Vec<BatchSpec>,
}

/// Something the caller should log once.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The task links more than one config; only `used` is in force.
    ExtraConfigs {
        task_id: u64,
        used: u64,
        ignored: Vec<u64>,
    },
    /// The task has no enabled config, so it runs no rules.
    NoConfig { task_id: u64 },
    /// The config in force has keys that no rule reads.
    UnknownKeys {
        config_id: u64,
        version: u64,
        keys: Vec<String>,
    },
    /// The config's `events_config` is invalid. `kept_previous` is true when older valid
    /// rules stay in force.
    InvalidConfig {
        task_id: u64,
        error: ConfigError,
        kept_previous: bool,
    },
    /// A batch row has a status this build does not know; it is published as `pending`.
    UnknownBatchStatus { batch_id: u64, status: String },
    /// A target's address is not an address of the task's chain (`0x` and 40 hex digits on
    /// eth and bsc, 32 to 44 base58 characters on sol). It is left out of its batch spec, so
    /// no feed subscription ever carries it.
    InvalidTarget {
        task_id: u64,
        target_id: u64,
        chain: Chain,
        address: String,
    },
    /// A target repeats the address of a target with a lower id in the same task (EVM
    /// addresses compared without case). Only the first is watched, so one trade is not
    /// judged twice.
    DuplicateTarget {
        task_id: u64,
        target_id: u64,
        first_target_id: u64,
        address: String,
    },
}

/// Builds the snapshot of a task. `previous` is the `TaskSpec` published before, whose
/// config stays in force when the current one is invalid.
pub fn build(
    state: &TaskState,
    previous: Option<&TaskSpec>,
    now_ms: i64,
) -> (Snapshot, Vec<Notice>) {
    let mut notices = Vec::new();
    let (config, config_error) = resolve_config(state, previous, &mut notices);

    let mut refs = Vec::with_capacity(state.batches.len());
    let mut specs = Vec::with_capacity(state.batches.len());
    let mut targets_by_batch =
        group_targets(&state.items, state.task.id, state.kind.chain, &mut notices);
    for row in &state.batches {
        let status = batch_status(row, &mut notices);
        refs.push(BatchRef {
            batch_id: row.id,
            batch_no: row.batch_no,
            item_count: row.item_count,
            status,
        });
        specs.push(BatchSpec {
            v: MESSAGE_VERSION,
            batch_id: row.id,
            task_id: state.task.id,
            epoch: row.epoch,
            batch_no: row.batch_no,
            status,
            targets: targets_by_batch.remove(&row.id).unwrap_or_default(),
        });
    }

    let task = TaskSpec {
        v: MESSAGE_VERSION,
        task_id: state.task.id,
        name: state.task.name.clone(),
        task_type: state.kind.task_type,
        chain: state.kind.chain,
        epoch: state.task.current_epoch,
        config,
        batches: refs,
        config_error,
        published_ms: now_ms,
    };
    (
        Snapshot {
            task,
            batches: specs,
        },
        notices,
    )
}

fn resolve_config(
    state: &TaskState,
    previous: Option<&TaskSpec>,
    notices: &mut Vec<Notice>,
) -> (Option<ConfigSpec>, Option<ConfigError>) {
    let task_id = state.task.id;
    let Some((row, others)) = state.configs.split_first() else {
        notices.push(Notice::NoConfig { task_id });
        return (None, None);
    };
    if !others.is_empty() {
        notices.push(Notice::ExtraConfigs {
            task_id,
            used: row.config_id,
            ignored: others.iter().map(|c| c.config_id).collect(),
        });
    }

    match rules::parse_config(row, state.kind.task_type) {
        Ok(parsed) => {
            if !parsed.unknown_keys.is_empty() {
                notices.push(Notice::UnknownKeys {
                    config_id: row.config_id,
                    version: row.version,
                    keys: parsed.unknown_keys.clone(),
                });
            }
            let spec = ConfigSpec {
                config_id: row.config_id,
                version: row.version,
                name: row.name.clone(),
                trigger_logic: parsed.trigger_logic,
                rules: parsed.rules,
            };
            (Some(spec), None)
        }
        Err(error) => {
            let previous_config = previous.and_then(|p| p.config.clone());
            notices.push(Notice::InvalidConfig {
                task_id,
                error: error.clone(),
                kept_previous: previous_config.is_some(),
            });
            (previous_config, Some(error))
        }
    }
}

fn batch_status(row: &BatchRow, notices: &mut Vec<Notice>) -> BatchStatus {
    row.status.parse().unwrap_or_else(|_| {
        notices.push(Notice::UnknownBatchStatus {
            batch_id: row.id,
            status: row.status.clone(),
        });
        BatchStatus::Pending
    })
}

/// Groups the items by batch, leaving out targets whose address is invalid on `chain` and
/// targets that repeat an address.
fn group_targets(
    items: &[ItemRow],
    task_id: u64,
    chain: Chain,
    notices: &mut Vec<Notice>,
) -> BTreeMap<u64, Vec<TargetSpec>> {
    let mut first_by_address: BTreeMap<String, u64> = BTreeMap::new();
    for item in items {
        let target = &item.target;
        if is_valid_address(chain, &target.value) {
            let first = first_by_address
                .entry(address_key(&target.value))
                .or_insert(target.id);
            *first = (*first).min(target.id);
        }
    }

    let mut grouped: BTreeMap<u64, Vec<TargetSpec>> = BTreeMap::new();
    for item in items {
        let target = &item.target;
        if !is_valid_address(chain, &target.value) {
            notices.push(Notice::InvalidTarget {
                task_id,
                target_id: target.id,
                chain,
                address: target.value.clone(),
            });
            continue;
        }
        let first_target_id = first_by_address[&address_key(&target.value)];
        if first_target_id != target.id {
            notices.push(Notice::DuplicateTarget {
                task_id,
                target_id: target.id,
                first_target_id,
                address: target.value.clone(),
            });
            continue;
        }
        grouped.entry(item.batch_id).or_default().push(TargetSpec {
            target_id: target.id,
            address: target.value.clone(),
            pair_address: target.pair_address.clone(),
            token_name: target.token_name.clone(),
            token_symbol: target.token_symbol.clone(),
            market_cap: target.market_cap,
            source: target.source.clone(),
            batch_order: item.item_order,
        });
    }
    grouped
}

fn is_valid_address(chain: Chain, address: &str) -> bool {
    match chain {
        Chain::Eth | Chain::Bsc => rules::is_evm_address(address),
        Chain::Sol => rules::is_solana_address(address),
    }
}

/// EVM addresses are case-insensitive (EIP-55 case is only a checksum); Solana's are not.
fn address_key(address: &str) -> String {
    if address.starts_with("0x") {
        address.to_ascii_lowercase()
    } else {
        address.to_owned()
    }
}

/// Returns whether two task specs have the same content, ignoring `published_ms`.
pub fn same_task_content(a: &TaskSpec, b: &TaskSpec) -> bool {
    let b = TaskSpec {
        published_ms: a.published_ms,
        ..b.clone()
    };
    *a == b
}

#[cfg(test)]
mod tests;
