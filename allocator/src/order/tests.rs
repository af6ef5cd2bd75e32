use super::*;

const TASK_ID: u64 = 42;

/// Keys of real token addresses for task 42, computed independently of this crate with
/// Python 3's hashlib:
///
/// ```text
/// python3 -c 'import hashlib, sys
/// for a in sys.argv[1:]:
///     k = int(hashlib.md5(f"42:{a}:kakarot_v2_2025".encode()).hexdigest()[:8], 16)
///     print(f"(\"{a}\", 0x{k:08x}),")' ADDRESS...
/// ```
///
/// The Solana mints are wSOL, USDC, USDT, BONK, mSOL, RAY, SRM, ORCA, KIN, MNDE and STEP; all
/// but BONK appear in the recorded mainnet block at slot 110130000. The Ethereum tokens are
/// WETH, USDT, USDC, DAI, WBTC, UNI, LINK, PEPE, AAVE, MKR and SHIB.
const PYTHON_KEYS: [(&str, u32); 22] = [
    ("So11111111111111111111111111111111111111112", 0xe654db6c),
    ("EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v", 0x53cac220),
    ("Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB", 0x5ed5503b),
    ("DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263", 0x5f9b2309),
    ("mSoLzYCxHdYgdzU16g5QSh3i5K3z3KZK7ytfqcJm7So", 0xe15843aa),
    ("4k3Dyjzvzp8eMZWUXbBCjEvwSkkk59S5iCNLY3QrkX6R", 0x483d0124),
    ("SRMuApVNdxXokk5GT7XD5cUUgXMBCoAz2LHeuAoKWRt", 0xe2efbf99),
    ("orcaEKTdK7LKz57vaAYr9QeNsVEPfiu6QeMU1kektZE", 0x4af45dca),
    ("kinXdEcpDQeHPEuQnqmUgtYykqKGVFq6CeVX5iAHJq6", 0xd6cefe27),
    ("MNDEFzGvMt87ueuHvVU9VcTqsAP5b3fTGPsHuuPA5ey", 0x193415bc),
    ("StepAscQoEioFxxWGnh2sLBDFp9d8rvKz2Yp39iDpyT", 0xdef2854b),
    ("0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", 0x8e6b28b6),
    ("0xdac17f958d2ee523a2206206994597c13d831ec7", 0x4f8fa423),
    ("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", 0x5aa51120),
    ("0x6b175474e89094c44da98b954eedeac495271d0f", 0x41590732),
    ("0x2260fac5e5542a773aa44fbcfedf7c193bc2c599", 0x08d112cc),
    ("0x1f9840a85d5af5bf1d1762f925bdaddc4201f984", 0xfe48ee4c),
    ("0x514910771af9ca656af840dff83e8264ecf986ca", 0x6937edf2),
    ("0x6982508145454ce325ddbe47a25d4ec3d2311933", 0x17c87de5),
    ("0x7fc66500c84a76ad7e9c93437bfc5ac33e2ddae9", 0xde0e7e1b),
    ("0x9f8f72aa9304c8b593d555f12ef6589cc3a579a2", 0x2c3ce398),
    ("0x95ad61b0a150d79219dcf64e1e6cc01f0b64c4ce", 0xa63bbc2c),
];

/// Target ids (1-based positions in `PYTHON_KEYS`) sorted by (key, id), from the same
/// Python session: `sorted(range(1, 23), key=lambda i: (key(addrs[i - 1]), i))`.
const PYTHON_ORDER: [u64; 22] = [
    16, 19, 10, 21, 15, 6, 8, 13, 2, 14, 3, 4, 18, 12, 22, 9, 20, 11, 5, 7, 1, 17,
];

fn size(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn real_targets() -> Vec<Target> {
    PYTHON_KEYS
        .iter()
        .enumerate()
        .map(|(i, (address, _))| Target {
            id: i as u64 + 1,
            value: (*address).to_string(),
        })
        .collect()
}

/// `n` targets with made-up addresses and ids 1..=n.
fn numbered_targets(n: u64) -> Vec<Target> {
    (1..=n)
        .map(|id| Target {
            id,
            value: format!("0x{id:040x}"),
        })
        .collect()
}

fn placements_of(assignment: &Assignment) -> HashMap<u64, (u32, u32)> {
    assignment
        .placements()
        .map(|p| (p.target_id, (p.batch_no, p.batch_order)))
        .collect()
}

#[test]
fn target_key_matches_python_hashlib() {
    for (address, expected) in PYTHON_KEYS {
        assert_eq!(
            target_key(TASK_ID, address),
            expected,
            "key of {address} for task {TASK_ID}"
        );
    }
}

#[test]
fn target_key_depends_on_task_id() {
    let weth = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
    assert_ne!(target_key(42, weth), target_key(43, weth));
}

#[test]
fn md5_order_matches_python_sort() {
    let targets = real_targets();
    let ids: Vec<u64> = md5_order(TASK_ID, &targets).iter().map(|t| t.id).collect();
    assert_eq!(ids, PYTHON_ORDER);
}

#[test]
fn md5_order_breaks_key_ties_by_target_id() {
    let address = "So11111111111111111111111111111111111111112".to_string();
    let targets = vec![
        Target {
            id: 9,
            value: address.clone(),
        },
        Target {
            id: 3,
            value: address.clone(),
        },
        Target {
            id: 5,
            value: address,
        },
    ];
    let ids: Vec<u64> = md5_order(TASK_ID, &targets).iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![3, 5, 9]);
}

#[test]
fn seed_assignment_follows_python_order_in_small_batches() {
    let assignment = seed_assignment(TASK_ID, &real_targets(), size(10));
    let sizes: Vec<usize> = assignment.batches.iter().map(|b| b.items.len()).collect();
    assert_eq!(sizes, vec![10, 10, 2]);
    for (index, placement) in assignment.placements().enumerate() {
        assert_eq!(placement.target_id, PYTHON_ORDER[index]);
        assert_eq!(placement.batch_no, index as u32 / 10 + 1);
        assert_eq!(placement.batch_order, index as u32 % 10);
    }
}

/// Checks batch count, sizes and that each batch's orders run 0..len without gaps.
fn assert_batches(targets: u64, expected_sizes: &[usize]) {
    let assignment = seed_assignment(7, &numbered_targets(targets), size(99));
    let sizes: Vec<usize> = assignment.batches.iter().map(|b| b.items.len()).collect();
    assert_eq!(sizes, expected_sizes, "batch sizes for {targets} targets");
    for (index, batch) in assignment.batches.iter().enumerate() {
        assert_eq!(batch.batch_no, index as u32 + 1, "batch numbers start at 1");
        let orders: Vec<u32> = batch.items.iter().map(|p| p.batch_order).collect();
        let expected: Vec<u32> = (0..batch.items.len() as u32).collect();
        assert_eq!(orders, expected, "batch_order of batch {}", batch.batch_no);
    }
    assert_eq!(assignment.target_count() as u64, targets);
}

#[test]
fn seed_assignment_98_targets_fill_one_batch() {
    assert_batches(98, &[98]);
}

#[test]
fn seed_assignment_99_targets_fill_exactly_one_batch() {
    assert_batches(99, &[99]);
}

#[test]
fn seed_assignment_100_targets_open_a_second_batch() {
    assert_batches(100, &[99, 1]);
}

#[test]
fn seed_assignment_198_targets_fill_two_batches() {
    assert_batches(198, &[99, 99]);
}

#[test]
fn seed_assignment_of_no_targets_is_empty() {
    assert!(seed_assignment(7, &[], size(99)).batches.is_empty());
}

#[test]
fn seed_100th_target_opens_batch_two() {
    let targets = numbered_targets(100);
    let assignment = seed_assignment(7, &targets, size(99));
    let order = md5_order(7, &targets);
    let second = &assignment.batches[1].items[0];
    assert_eq!(second.target_id, order[99].id);
    assert_eq!((second.batch_no, second.batch_order), (2, 0));
}

#[test]
fn sticky_without_current_epoch_equals_seed() {
    let targets = numbered_targets(150);
    assert_eq!(
        sticky_assignment(7, &targets, &[], size(99)),
        seed_assignment(7, &targets, size(99))
    );
}

#[test]
fn sticky_added_target_changes_one_batch() {
    let mut targets = numbered_targets(150);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();

    targets.push(Target {
        id: 151,
        value: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
    });
    let next = sticky_assignment(7, &targets, &current, size(99));

    assert_eq!(next.batches[0], first.batches[0], "batch 1 is untouched");
    let before = placements_of(&first);
    let after = placements_of(&next);
    for (id, placement) in &before {
        assert_eq!(after.get(id), Some(placement), "target {id} kept its place");
    }
    // Batch 2 had positions 0..51 taken; the new target takes the first free one.
    assert_eq!(after.get(&151), Some(&(2, 51)));
}

#[test]
fn sticky_fills_holes_within_change_bound() {
    let mut targets = numbered_targets(198);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();

    // Remove the targets at batch 2 position 4 and batch 1 position 10.
    let in_batch_2 = first.batches[1].items[4];
    let in_batch_1 = first.batches[0].items[10];
    targets.retain(|t| t.id != in_batch_2.target_id && t.id != in_batch_1.target_id);
    let added: Vec<Target> = (1000..1003)
        .map(|id| Target {
            id,
            value: format!("added-{id}"),
        })
        .collect();
    targets.extend(added.iter().cloned());
    let next = sticky_assignment(7, &targets, &current, size(99));

    // Three new targets may change ceil(3 / 99) + 1 = 2 batches: the hole of batch 1 (the
    // lowest of two batches with one hole each) and a new batch 3. Batch 2 keeps its hole.
    let after = placements_of(&next);
    let added_in_md5_order: Vec<u64> = md5_order(7, &added).iter().map(|t| t.id).collect();
    assert_eq!(after[&added_in_md5_order[0]], (1, 10));
    assert_eq!(after[&added_in_md5_order[1]], (3, 0));
    assert_eq!(after[&added_in_md5_order[2]], (3, 1));
    assert_eq!(next.batches.len(), 3);
    assert_eq!(next.batches[1].items.len(), 98, "batch 2 keeps its hole");
}

#[test]
fn sticky_prefers_the_batch_with_most_holes() {
    let mut targets = numbered_targets(198);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();

    // One hole in batch 1, three in batch 2.
    let removed: Vec<u64> = [
        first.batches[0].items[0],
        first.batches[1].items[1],
        first.batches[1].items[2],
        first.batches[1].items[3],
    ]
    .iter()
    .map(|p| p.target_id)
    .collect();
    targets.retain(|t| !removed.contains(&t.id));
    targets.push(Target {
        id: 1000,
        value: "added-1000".into(),
    });
    let next = sticky_assignment(7, &targets, &current, size(99));

    assert_eq!(placements_of(&next)[&1000], (2, 1));
}

#[test]
fn sticky_removed_target_leaves_hole() {
    let mut targets = numbered_targets(10);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();
    let removed = first.batches[0].items[3].target_id;
    targets.retain(|t| t.id != removed);

    let next = sticky_assignment(7, &targets, &current, size(99));

    let orders: Vec<u32> = next.batches[0]
        .items
        .iter()
        .map(|p| p.batch_order)
        .collect();
    assert_eq!(orders, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn sticky_compacts_under_half_full() {
    let targets = numbered_targets(297);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();

    // Keep every third target: 99 targets spread over three batches, a third full.
    let kept: Vec<Target> = md5_order(7, &targets)
        .into_iter()
        .step_by(3)
        .cloned()
        .collect();
    let next = sticky_assignment(7, &kept, &current, size(99));

    assert_eq!(next, seed_assignment(7, &kept, size(99)));
    assert_eq!(next.batches.len(), 1);
}

#[test]
fn sticky_keeps_places_when_half_full() {
    let targets = numbered_targets(198);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();

    // Keep two targets of every three: 132 targets over two batches, two thirds full.
    let kept: Vec<Target> = md5_order(7, &targets)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, t)| t.clone())
        .collect();
    let next = sticky_assignment(7, &kept, &current, size(99));

    let before = placements_of(&first);
    for (id, placement) in placements_of(&next) {
        assert_eq!(before[&id], placement, "target {id} kept its place");
    }
    assert_eq!(next.batches.len(), 2);
}

#[test]
fn sticky_recomputes_after_batch_size_shrank() {
    let targets = numbered_targets(50);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();

    let next = sticky_assignment(7, &targets, &current, size(20));

    assert_eq!(next, seed_assignment(7, &targets, size(20)));
}

#[test]
fn assign_dispatches_on_strategy() {
    let mut targets = numbered_targets(20);
    let first = seed_assignment(7, &targets, size(99));
    let current: Vec<Placement> = first.placements().copied().collect();
    targets.retain(|t| t.id != first.batches[0].items[0].target_id);

    let seed = assign(Strategy::Seed, 7, &targets, &current, size(99));
    let sticky = assign(Strategy::Sticky, 7, &targets, &current, size(99));

    assert_eq!(seed.batches[0].items[0].batch_order, 0);
    assert_eq!(sticky.batches[0].items[0].batch_order, 1);
}

#[test]
fn strategy_parses_both_names() {
    assert_eq!("seed".parse::<Strategy>(), Ok(Strategy::Seed));
    assert_eq!(" Sticky ".parse::<Strategy>(), Ok(Strategy::Sticky));
    assert!("random".parse::<Strategy>().is_err());
}
