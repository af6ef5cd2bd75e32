//! Holder counts and the top holders' share from the REST endpoints of the real
//! `devkit feed-replay`, polled by the real `ingest` binary, in `Holders` events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use monitor_core::messages::{EventKind, Holders};
use monitor_core::rules::{HolderChangeRule, TokenRules, TopHoldersRule};
use monitor_tests::TestEnv;
use support::stage::*;
use support::*;

const TASK_ID: u64 = 95;
const BATCH_ID: u64 = 9501;

fn holder_rules() -> TokenRules {
    TokenRules {
        price_change: None,
        volume: None,
        holder_change: Some(HolderChangeRule {
            window_sec: 60,
            min_change_pct: 1.0,
            min_holders: 100,
        }),
        large_trade: None,
        cumulative_buy: None,
        top_holders: Some(TopHoldersRule {
            top_n: 10,
            threshold_pct: 20.0,
        }),
        cooldown_sec: 300,
    }
}

fn holder_events(frames: &[StoredFrame]) -> Vec<(Holders, monitor_core::messages::Event)> {
    frames
        .iter()
        .flat_map(|f| &f.frame.events)
        .filter_map(|e| match &e.kind {
            EventKind::Holders(h) => Some((h.clone(), e.clone())),
            _ => None,
        })
        .collect()
}

/// Returns the share of the supply that feed-replay gives its top ten holders, where
/// holder `k` has 10 % / (k + 1).
fn expected_top_ten_pct() -> f64 {
    (0..10).map(|k| 10.0 / (k as f64 + 1.0)).sum()
}

#[tokio::test]
async fn holder_polls_become_holders_events() {
    let env = TestEnv::new("ingest_holder_polls").await;
    let nats = nats_of(&env).await;
    let feed = FeedReplayProcess::start(&env, &["--speed", "10", "--loop"]).await;
    let frames = collect_frames(&nats).await;
    nats.put_batch(&batch(
        BATCH_ID,
        TASK_ID,
        1,
        &[(95_001, WETH, None), (95_002, PEPE, None)],
    ))
    .await;
    nats.put_task(&task(TASK_ID, 1, holder_rules(), &[BATCH_ID]))
        .await;
    let mut ingest_process = ingest(&env, &feed, &[("BIRDEYE_RPS", "20")]).spawn("ingest");

    let collected = frames
        .wait("three holder polls of WETH", WAIT_LIMIT, |f| {
            holder_events(f)
                .iter()
                .filter(|(_, e)| e.target.as_ref().unwrap().address == WETH)
                .count()
                >= 3
        })
        .await;
    let events = holder_events(&collected);
    let weth: Vec<_> = events
        .iter()
        .filter(|(_, e)| e.target.as_ref().unwrap().address == WETH)
        .collect();
    for (holders, event) in &weth {
        let count = holders.holders.unwrap();
        assert!(count >= 10_000, "holder count {count}");
        assert_eq!(holders.top_n, Some(10));
        let share = holders.top_share_pct.unwrap();
        assert!(
            (share - expected_top_ten_pct()).abs() < 1e-6,
            "top share {share}"
        );
        let snapshot = event.snapshot.as_ref().unwrap();
        assert_eq!(snapshot.holders, Some(count));
        assert_eq!(snapshot.top_share_pct, Some(share));
        let window = snapshot.window(60).unwrap();
        let start = window.start_holders.unwrap();
        assert!(
            start <= count,
            "start {start} > now {count}: holders only grow in the replay"
        );
    }
    let counts: Vec<u64> = weth.iter().map(|(h, _)| h.holders.unwrap()).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]) && counts.first() < counts.last(),
        "holder counts grow with the replayed trades: {counts:?}"
    );
    let last = &weth.last().unwrap().1;
    assert_eq!(
        last.snapshot
            .as_ref()
            .unwrap()
            .window(60)
            .unwrap()
            .start_holders,
        Some(counts[0]),
        "the window starts at the first poll"
    );
    // PEPE is not replayed: its polls fail with 404 and the poller goes on with WETH.
    assert!(
        events
            .iter()
            .all(|(_, e)| e.target.as_ref().unwrap().address == WETH),
        "no holders event for a token the API does not know"
    );
    assert!(ingest_process.log().contains("holder poll failed"));
    ingest_process.terminate().await;
}

#[tokio::test]
async fn rate_limited_polls_back_off_and_resume() {
    let env = TestEnv::new("ingest_holder_429").await;
    let nats = nats_of(&env).await;
    let feed =
        FeedReplayProcess::start(&env, &["--speed", "10", "--loop", "--rest-rps", "1"]).await;
    let frames = collect_frames(&nats).await;
    nats.put_batch(&batch(BATCH_ID, TASK_ID, 1, &[(95_001, WETH, None)]))
        .await;
    nats.put_task(&task(TASK_ID, 1, holder_rules(), &[BATCH_ID]))
        .await;
    // Two requests per poll at 50 per second: with a limit of one per second the server
    // rejects most of them with 429.
    let mut ingest_process = ingest(&env, &feed, &[("BIRDEYE_RPS", "50")]).spawn("ingest");

    assert!(
        ingest_process
            .wait_for_log("holder API rate limited, backing off", WAIT_LIMIT)
            .await
    );
    frames
        .wait("two holder polls despite the limit", WAIT_LIMIT, |f| {
            holder_events(f).len() >= 2
        })
        .await;
    ingest_process.terminate().await;
}
