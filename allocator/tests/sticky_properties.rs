//! Property tests of the sticky strategy over random sequences of added and removed targets.
//!
//! Each case starts from a random set of targets and applies random steps: only additions,
//! only removals, or both. After every step the assignment must list every active target
//! exactly once in batches of at most the batch size, and:
//! - the first allocation equals the seed order;
//! - adding `k` targets changes at most `ceil(k / batch_size) + 1` batches;
//! - removing targets moves no remaining target, unless the result would be under half full
//!   while the seed order needs fewer batches, in which case it is exactly the seed order;
//! - no sticky result is left under half full with more batches than the seed order needs.

// A panic is the test failure.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use monitor_allocator::order::{seed_assignment, sticky_assignment, Assignment, Placement, Target};
use proptest::prelude::*;

const TASK_ID: u64 = 42;

#[derive(Debug, Clone)]
enum Step {
    /// Adds this many new targets.
    Add(usize),
    /// Removes the active targets whose position in the id-sorted list is chosen by the mask
    /// (index modulo the mask length).
    Remove(Vec<bool>),
    /// Both at once.
    Replace(usize, Vec<bool>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1usize..250).prop_map(Step::Add),
        prop::collection::vec(prop::bool::weighted(0.3), 1..40).prop_map(Step::Remove),
        (
            1usize..120,
            prop::collection::vec(prop::bool::weighted(0.2), 1..40)
        )
            .prop_map(|(k, mask)| Step::Replace(k, mask)),
    ]
}

fn batch_size() -> impl Strategy<Value = NonZeroU32> {
    prop_oneof![Just(1u32), Just(2), Just(5), Just(10), Just(99), Just(100)]
        .prop_map(|n| NonZeroU32::new(n).unwrap())
}

fn target(id: u64) -> Target {
    Target {
        id,
        value: format!("0x{:040x}", id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    }
}

/// Target ids by batch number, each batch as a set of (position, target id).
fn batch_contents(assignment: &Assignment) -> BTreeMap<u32, BTreeSet<(u32, u64)>> {
    assignment
        .batches
        .iter()
        .map(|b| {
            let items = b
                .items
                .iter()
                .map(|p| (p.batch_order, p.target_id))
                .collect();
            (b.batch_no, items)
        })
        .collect()
}

fn changed_batches(before: &Assignment, after: &Assignment) -> usize {
    let before = batch_contents(before);
    let after = batch_contents(after);
    let numbers: BTreeSet<u32> = before.keys().chain(after.keys()).copied().collect();
    numbers
        .into_iter()
        .filter(|no| before.get(no) != after.get(no))
        .count()
}

fn positions(assignment: &Assignment) -> BTreeMap<u64, (u32, u32)> {
    assignment
        .placements()
        .map(|p| (p.target_id, (p.batch_no, p.batch_order)))
        .collect()
}

fn is_sparse(assignment: &Assignment, batch_size: NonZeroU32) -> bool {
    let targets = assignment.target_count() as u64;
    let size = u64::from(batch_size.get());
    let batches = assignment.batches.len() as u64;
    batches > targets.div_ceil(size) && targets * 2 < batches * size
}

/// Checks that every active target is listed once, in a batch within the size, on a position of its own.
fn check_complete(
    assignment: &Assignment,
    active: &[Target],
    batch_size: NonZeroU32,
) -> Result<(), TestCaseError> {
    let mut seen = BTreeSet::new();
    for batch in &assignment.batches {
        prop_assert!(!batch.items.is_empty(), "batch {} is empty", batch.batch_no);
        prop_assert!(
            batch.items.len() <= batch_size.get() as usize,
            "batch {} holds {} targets, more than {}",
            batch.batch_no,
            batch.items.len(),
            batch_size
        );
        let mut orders = BTreeSet::new();
        for item in &batch.items {
            prop_assert_eq!(item.batch_no, batch.batch_no);
            prop_assert!(item.batch_order < batch_size.get());
            prop_assert!(orders.insert(item.batch_order), "position taken twice");
            prop_assert!(
                seen.insert(item.target_id),
                "target {} is in two batches",
                item.target_id
            );
        }
    }
    let expected: BTreeSet<u64> = active.iter().map(|t| t.id).collect();
    prop_assert_eq!(
        seen,
        expected,
        "the assignment lists exactly the active targets"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sticky_bounds_hold_over_random_steps(
        initial in 0usize..400,
        steps in prop::collection::vec(step(), 1..12),
        batch_size in batch_size(),
    ) {
        let mut next_id = 1u64;
        let mut active: Vec<Target> = (0..initial).map(|_| { next_id += 1; target(next_id) }).collect();

        let mut current = sticky_assignment(TASK_ID, &active, &[], batch_size);
        prop_assert_eq!(&current, &seed_assignment(TASK_ID, &active, batch_size), "first allocation is the seed order");
        check_complete(&current, &active, batch_size)?;

        for step in steps {
            let (added, mask) = match step {
                Step::Add(k) => (k, Vec::new()),
                Step::Remove(mask) => (0, mask),
                Step::Replace(k, mask) => (k, mask),
            };
            let removed: BTreeSet<u64> = if mask.is_empty() {
                BTreeSet::new()
            } else {
                active.iter().enumerate().filter(|(i, _)| mask[i % mask.len()]).map(|(_, t)| t.id).collect()
            };
            active.retain(|t| !removed.contains(&t.id));
            for _ in 0..added {
                next_id += 1;
                active.push(target(next_id));
            }

            let placements: Vec<Placement> = current.placements().copied().collect();
            let next = sticky_assignment(TASK_ID, &active, &placements, batch_size);
            check_complete(&next, &active, batch_size)?;
            let seed = seed_assignment(TASK_ID, &active, batch_size);
            prop_assert!(next == seed || !is_sparse(&next, batch_size), "a sticky result is under half full: {:?}", next);

            if removed.is_empty() && added > 0 && !placements.is_empty() {
                let limit = added.div_ceil(batch_size.get() as usize) + 1;
                let changed = changed_batches(&current, &next);
                prop_assert!(changed <= limit, "adding {} targets changed {} batches, more than {}", added, changed, limit);
            }
            if added == 0 && !removed.is_empty() {
                let before = positions(&current);
                let moved = positions(&next).into_iter().any(|(id, place)| before[&id] != place);
                if moved {
                    prop_assert_eq!(&next, &seed, "targets moved without a compaction to the seed order");
                    // What staying in place would have left: the old positions of the remaining targets.
                    let stayed = placements
                        .iter()
                        .filter(|p| !removed.contains(&p.target_id))
                        .map(|p| p.batch_no)
                        .collect::<BTreeSet<u32>>()
                        .len() as u64;
                    let targets = active.len() as u64;
                    let size = u64::from(batch_size.get());
                    prop_assert!(stayed > targets.div_ceil(size) && targets * 2 < stayed * size,
                        "compaction happened although staying in place was at least half full");
                }
            }
            current = next;
        }
    }
}
