//! The allocator's order: md5 keys of every target, sorted and cut into batches.
//!
//! - `order/seed_assignment/100000`: the `seed` strategy on 100,000 targets (every allocation
//!   recomputes the whole order);
//! - `order/sticky_one_added/100000`: the `sticky` strategy after one target was added to an
//!   allocated task of 100,000 targets.
//!
//! `cargo bench -p monitor-allocator --bench order`

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monitor_allocator::order::{seed_assignment, sticky_assignment, Placement, Target};

const TARGETS: usize = 100_000;
const TASK_ID: u64 = 42;

fn targets(count: usize) -> Vec<Target> {
    (0..count)
        .map(|i| Target {
            id: i as u64 + 1,
            value: format!("0x10ad{i:036x}"),
        })
        .collect()
}

fn order(c: &mut Criterion) {
    let batch_size = NonZeroU32::MIN.saturating_add(98);
    let all = targets(TARGETS + 1);
    let existing = &all[..TARGETS];

    let mut group = c.benchmark_group("order");
    group.sample_size(10);
    group.throughput(Throughput::Elements(TARGETS as u64));
    group.bench_with_input(
        BenchmarkId::new("seed_assignment", TARGETS),
        existing,
        |b, targets| b.iter(|| seed_assignment(TASK_ID, black_box(targets), batch_size)),
    );

    let current: Vec<Placement> = seed_assignment(TASK_ID, existing, batch_size)
        .placements()
        .copied()
        .collect();
    group.bench_with_input(
        BenchmarkId::new("sticky_one_added", TARGETS),
        &all,
        |b, targets| {
            b.iter(|| sticky_assignment(TASK_ID, black_box(targets), &current, batch_size))
        },
    );
    group.finish();
}

criterion_group!(benches, order);
criterion_main!(benches);
