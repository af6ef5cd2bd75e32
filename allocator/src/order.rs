//! Assignment of a task's targets to batches: the md5 order and the two strategies.
//!
//! Consumes the active targets of one task (id and address) and, for the `sticky` strategy,
//! the placements of the current epoch. Produces an [`Assignment`]: batches numbered from 1,
//! each listing its targets with their `batch_order`. Everything here is pure, so the order is
//! pinned by unit tests against keys computed outside Rust.
//!
//! The key of a target is the first 8 hex digits of `md5("<task_id>:<target_value>:<salt>")`
//! read as a `u32`, with the salt [`HASH_SALT`]. The Java backend may compute the same order,
//! so this must stay byte-for-byte what the original Python allocator did. Targets are sorted
//! by key (ties by target id) and cut into batches of the batch size, and `batch_order` is the
//! position inside the batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use md5::{Digest, Md5};

/// Salt of the target key; changing it reshuffles every task.
pub const HASH_SALT: &str = "kakarot_v2_2025";

/// Returns the ordering key of a target: the first 8 hex digits of the md5 of
/// `<task_id>:<target_value>:kakarot_v2_2025`, as an unsigned integer.
pub fn target_key(task_id: u64, target_value: &str) -> u32 {
    let digest = Md5::digest(format!("{task_id}:{target_value}:{HASH_SALT}").as_bytes());
    // The first 8 hex digits are the first 4 bytes, big-endian.
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Rule that derives a new epoch from the targets and the current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Every allocation recomputes the md5 order from scratch.
    Seed,
    /// Targets that stay keep their batch and position, and new targets fill holes of a few batches.
    #[default]
    Sticky,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "seed" => Ok(Strategy::Seed),
            "sticky" => Ok(Strategy::Sticky),
            other => Err(format!("expected sticky or seed, got {other:?}")),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Seed => "seed",
            Strategy::Sticky => "sticky",
        })
    }
}

/// An active target: its id and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: u64,
    pub value: String,
}

/// Position of a target in an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub target_id: u64,
    pub batch_no: u32,
    pub batch_order: u32,
}

/// One batch of an assignment, its targets sorted by `batch_order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    pub batch_no: u32,
    pub items: Vec<Placement>,
}

/// The batches of one epoch, sorted by batch number; empty batches are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    pub batches: Vec<PlannedBatch>,
}

impl Assignment {
    pub fn target_count(&self) -> usize {
        self.batches.iter().map(|b| b.items.len()).sum()
    }

    /// Returns every placement, in batch order.
    pub fn placements(&self) -> impl Iterator<Item = &Placement> {
        self.batches.iter().flat_map(|b| b.items.iter())
    }

    fn from_placements(mut placements: Vec<Placement>) -> Self {
        placements.sort_by_key(|p| (p.batch_no, p.batch_order));
        let mut batches: Vec<PlannedBatch> = Vec::new();
        for placement in placements {
            match batches.last_mut() {
                Some(batch) if batch.batch_no == placement.batch_no => batch.items.push(placement),
                _ => batches.push(PlannedBatch {
                    batch_no: placement.batch_no,
                    items: vec![placement],
                }),
            }
        }
        Assignment { batches }
    }
}

/// Sorts targets by (key, target id), the order both strategies start from.
pub fn md5_order(task_id: u64, targets: &[Target]) -> Vec<&Target> {
    let mut keyed: Vec<(u32, &Target)> = targets
        .iter()
        .map(|t| (target_key(task_id, &t.value), t))
        .collect();
    keyed.sort_by_key(|(key, target)| (*key, target.id));
    keyed.into_iter().map(|(_, target)| target).collect()
}

/// Computes the original allocator's assignment: the md5 order cut into batches of `batch_size`.
pub fn seed_assignment(task_id: u64, targets: &[Target], batch_size: NonZeroU32) -> Assignment {
    let size = batch_size.get() as usize;
    let placements = md5_order(task_id, targets)
        .into_iter()
        .enumerate()
        .map(|(index, target)| Placement {
            target_id: target.id,
            batch_no: (index / size) as u32 + 1,
            batch_order: (index % size) as u32,
        })
        .collect();
    Assignment::from_placements(placements)
}

/// Computes the next epoch's assignment with the given strategy.
pub fn assign(
    strategy: Strategy,
    task_id: u64,
    targets: &[Target],
    current: &[Placement],
    batch_size: NonZeroU32,
) -> Assignment {
    match strategy {
        Strategy::Seed => seed_assignment(task_id, targets, batch_size),
        Strategy::Sticky => sticky_assignment(task_id, targets, current, batch_size),
    }
}

/// The sticky assignment: targets of the current epoch keep their batch number and position,
/// and removed ones leave a hole. New targets, in md5 order, go to the free positions chosen
/// by [`new_positions`], which touches at most `ceil(k / batch_size) + 1` batches for `k` new
/// targets.
///
/// Falls back to [`seed_assignment`] when there is no usable current epoch (none, a
/// position outside the batch size, two targets on one position). It also falls back when the
/// result would be less than half full while the seed order needs fewer batches, so that
/// removals do not leave a task spread over many nearly empty batches.
pub fn sticky_assignment(
    task_id: u64,
    targets: &[Target],
    current: &[Placement],
    batch_size: NonZeroU32,
) -> Assignment {
    let Some(kept) = kept_placements(targets, current, batch_size) else {
        return seed_assignment(task_id, targets, batch_size);
    };

    let new_targets: Vec<&Target> = md5_order(task_id, targets)
        .into_iter()
        .filter(|t| !kept.contains_key(&t.id))
        .collect();
    let mut placements: Vec<Placement> = kept.values().copied().collect();
    let positions = new_positions(&placements, new_targets.len(), batch_size);
    for (target, (batch_no, batch_order)) in new_targets.into_iter().zip(positions) {
        placements.push(Placement {
            target_id: target.id,
            batch_no,
            batch_order,
        });
    }

    let sticky = Assignment::from_placements(placements);
    if is_sparse(&sticky, batch_size) {
        return seed_assignment(task_id, targets, batch_size);
    }
    sticky
}

/// Chooses `count` free positions, as (batch number, position), for new targets.
///
/// Holes of existing batch numbers come first, from the batches with the most free positions
/// (the lowest number on ties). They are used only while the change stays within
/// `ceil(count / batch_size) + 1` batches, and the rest opens new batches above the highest
/// batch number in use. Filling every hole instead could touch one batch per new target.
/// Chosen batches are filled in ascending batch number and position, then the new batches.
fn new_positions(
    placements: &[Placement],
    count: usize,
    batch_size: NonZeroU32,
) -> Vec<(u32, u32)> {
    let size = batch_size.get();
    let mut occupied: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for p in placements {
        occupied
            .entry(p.batch_no)
            .or_default()
            .insert(p.batch_order);
    }
    let highest = occupied.keys().next_back().copied().unwrap_or(0);
    let used = |batch_no: u32| {
        occupied
            .get(&batch_no)
            .map_or(0, |orders| orders.len() as u32)
    };

    // Batch numbers with free positions, most free first; a number whose targets were all
    // removed counts as a batch with `size` free positions.
    let mut candidates: Vec<(u32, u32)> = (1..=highest)
        .map(|batch_no| (size - used(batch_no), batch_no))
        .filter(|(free, _)| *free > 0)
        .collect();
    candidates.sort_by_key(|(free, batch_no)| (std::cmp::Reverse(*free), *batch_no));

    let size_usize = size as usize;
    let budget = count.div_ceil(size_usize) + 1;
    let mut chosen = Vec::new();
    let mut remaining = count;
    for (free, batch_no) in candidates {
        if remaining == 0 {
            break;
        }
        let after = remaining.saturating_sub(free as usize);
        // Candidates come with fewer free positions from here on, so none fits the budget
        // once this one does not.
        if chosen.len() + 1 + after.div_ceil(size_usize) > budget {
            break;
        }
        chosen.push(batch_no);
        remaining = after;
    }
    chosen.sort_unstable();

    let holes = chosen.into_iter().flat_map(|batch_no| {
        let taken = occupied.get(&batch_no);
        (0..size)
            .filter(move |order| !taken.is_some_and(|orders| orders.contains(order)))
            .map(move |order| (batch_no, order))
    });
    let fresh = (highest + 1..).flat_map(|batch_no| (0..size).map(move |order| (batch_no, order)));
    holes.chain(fresh).take(count).collect()
}

/// Placements of the current epoch for targets that are still active, or `None` when the
/// current epoch cannot be built upon.
fn kept_placements(
    targets: &[Target],
    current: &[Placement],
    batch_size: NonZeroU32,
) -> Option<HashMap<u64, Placement>> {
    if current.is_empty() {
        return None;
    }
    let active: BTreeSet<u64> = targets.iter().map(|t| t.id).collect();
    let mut kept = HashMap::new();
    let mut positions = BTreeSet::new();
    for placement in current {
        let valid = placement.batch_no >= 1 && placement.batch_order < batch_size.get();
        if !valid || !positions.insert((placement.batch_no, placement.batch_order)) {
            return None;
        }
        if active.contains(&placement.target_id) {
            kept.insert(placement.target_id, *placement);
        }
    }
    Some(kept)
}

/// Returns whether an assignment uses more batches than the seed order and is under half full.
fn is_sparse(assignment: &Assignment, batch_size: NonZeroU32) -> bool {
    let targets = assignment.target_count() as u64;
    let size = u64::from(batch_size.get());
    let batches = assignment.batches.len() as u64;
    let seed_batches = targets.div_ceil(size);
    batches > seed_batches && targets * 2 < batches * size
}

#[cfg(test)]
mod tests;
