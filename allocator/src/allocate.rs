//! Writing a new epoch of one task in one transaction.
//!
//! Consumes the task's active targets and its current epoch. When the targets differ from the
//! current epoch's items, it writes a new epoch: `monitor_batch_v2` rows (status `pending`),
//! `monitor_batch_item_v2` rows, the targets' `batch_id` / `batch_order`, and
//! `monitor_task_v2.current_epoch`. The live epoch is never edited. The task row is locked
//! (`SELECT … FOR UPDATE`) and everything is read again under the lock, so two allocators, or
//! the allocator and the Java side, never write two epochs from one base. An unchanged target
//! set writes nothing.

use std::collections::BTreeSet;
use std::num::NonZeroU32;

use sqlx::MySqlPool;

use crate::order::{self, Assignment, Placement, Strategy, Target};
use crate::store::{self, StoreError};

/// Result of one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// The current epoch already lists exactly the active targets.
    Unchanged { epoch: u32 },
    /// A new epoch was written and made current.
    Written {
        epoch: u32,
        previous_epoch: u32,
        batches: usize,
        targets: usize,
    },
}

impl Allocation {
    pub fn epoch(&self) -> u32 {
        match self {
            Allocation::Unchanged { epoch } | Allocation::Written { epoch, .. } => *epoch,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("task {0} not found")]
    TaskNotFound(u64),
    #[error("task {task_id} is a {task_type} task, which has no targets to allocate")]
    NoTargets { task_id: u64, task_type: String },
    #[error("task {task_id} has {count} active targets, more than MAX_TARGETS_PER_TASK ({max}); it is not allocated until targets are removed or the limit is raised")]
    TooManyTargets {
        task_id: u64,
        count: usize,
        max: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Strategy, batch size and target limit of allocations.
#[derive(Debug, Clone, Copy)]
pub struct AllocationPlan {
    pub strategy: Strategy,
    pub batch_size: NonZeroU32,
    /// A task with more active targets is rejected with [`AllocateError::TooManyTargets`].
    pub max_targets: usize,
}

/// Returns whether the active targets differ from the current epoch's items or the task has no
/// epoch. Reads without locks, so the transaction is skipped when nothing changed.
pub async fn needs_allocation(
    pool: &MySqlPool,
    task_id: u64,
    current_epoch: u32,
) -> Result<bool, StoreError> {
    if current_epoch == 0 {
        return Ok(true);
    }
    let targets = store::active_targets(pool, task_id).await?;
    let placements = store::epoch_placements(pool, task_id, current_epoch).await?;
    Ok(!same_targets(&targets, &placements))
}

fn same_targets(targets: &[Target], placements: &[Placement]) -> bool {
    let active: BTreeSet<u64> = targets.iter().map(|t| t.id).collect();
    let listed: BTreeSet<u64> = placements.iter().map(|p| p.target_id).collect();
    active == listed && placements.len() == listed.len()
}

/// Allocates the task's active targets, writing a new epoch unless nothing changed.
#[tracing::instrument(skip_all, fields(task_id = task_id))]
pub async fn allocate_task(
    pool: &MySqlPool,
    task_id: u64,
    plan: AllocationPlan,
) -> Result<Allocation, AllocateError> {
    let begin_failed = |source| StoreError {
        action: format!("begin the allocation of task {task_id}"),
        source,
    };
    let mut tx = pool.begin().await.map_err(begin_failed)?;

    let task = store::lock_task(&mut *tx, task_id)
        .await?
        .ok_or(AllocateError::TaskNotFound(task_id))?;
    let has_targets = task
        .task_type
        .parse::<monitor_core::messages::TaskType>()
        .is_ok_and(|t| t.has_targets());
    if !has_targets {
        return Err(AllocateError::NoTargets {
            task_id,
            task_type: task.task_type,
        });
    }

    let targets = store::active_targets(&mut *tx, task_id).await?;
    if targets.len() > plan.max_targets {
        return Err(AllocateError::TooManyTargets {
            task_id,
            count: targets.len(),
            max: plan.max_targets,
        });
    }
    let current = store::epoch_placements(&mut *tx, task_id, task.current_epoch).await?;
    if task.current_epoch > 0 && same_targets(&targets, &current) {
        // Nothing to write; dropping the transaction releases the lock.
        return Ok(Allocation::Unchanged {
            epoch: task.current_epoch,
        });
    }

    let assignment = order::assign(plan.strategy, task_id, &targets, &current, plan.batch_size);
    // Rows of a higher epoch may exist without being current (written by another writer that
    // failed to switch): the new epoch goes above all of them, so the unique key never clashes.
    let highest = store::highest_epoch(&mut *tx, task_id).await?;
    let epoch = task.current_epoch.max(highest) + 1;
    write_epoch(&mut tx, task_id, epoch, &assignment).await?;

    tx.commit().await.map_err(|source| StoreError {
        action: format!("commit epoch {epoch} of task {task_id}"),
        source,
    })?;
    let allocation = Allocation::Written {
        epoch,
        previous_epoch: task.current_epoch,
        batches: assignment.batches.len(),
        targets: assignment.target_count(),
    };
    tracing::info!(task_id, epoch, previous_epoch = task.current_epoch, batches = assignment.batches.len(), targets = assignment.target_count(), strategy = %plan.strategy, "epoch written");
    Ok(allocation)
}

async fn write_epoch(
    tx: &mut sqlx::Transaction<'_, sqlx::MySql>,
    task_id: u64,
    epoch: u32,
    assignment: &Assignment,
) -> Result<(), StoreError> {
    for batch in &assignment.batches {
        let item_count = u32::try_from(batch.items.len()).unwrap_or(u32::MAX);
        let batch_id =
            store::insert_batch(&mut **tx, task_id, epoch, batch.batch_no, item_count).await?;
        store::insert_items(tx, batch_id, &batch.items).await?;
    }
    store::update_target_positions(tx, task_id, epoch).await?;
    store::set_current_epoch(&mut **tx, task_id, epoch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: u64) -> Target {
        Target {
            id,
            value: format!("address-{id}"),
        }
    }

    fn placed(target_id: u64, batch_order: u32) -> Placement {
        Placement {
            target_id,
            batch_no: 1,
            batch_order,
        }
    }

    #[test]
    fn same_targets_ignores_order() {
        assert!(same_targets(
            &[target(1), target(2)],
            &[placed(2, 0), placed(1, 1)]
        ));
    }

    #[test]
    fn added_or_removed_target_differs() {
        assert!(!same_targets(&[target(1), target(2)], &[placed(1, 0)]));
        assert!(!same_targets(&[target(1)], &[placed(1, 0), placed(2, 1)]));
    }

    #[test]
    fn target_listed_twice_differs() {
        assert!(!same_targets(&[target(1)], &[placed(1, 0), placed(1, 1)]));
    }
}
