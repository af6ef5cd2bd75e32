//! `devkit feed-replay record` captures a connection of the real feed-replay into a file,
//! `devkit feed-replay --recording` serves it again, and the real `ingest` binary sees the
//! same events from both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use monitor_core::messages::{Event, EventKind};
use monitor_tests::TestEnv;
use support::stage::*;
use support::*;

const TASK_ID: u64 = 97;
const BATCH_ID: u64 = 9701;

/// Runs ingest against `feed` until it published `count` events, and returns them split into
/// trades and candles, each in the order of its own connection, with ingest times cleared.
async fn ingest_events(
    env: &TestEnv,
    feed: &FeedReplayProcess,
    count: usize,
) -> (Vec<Event>, Vec<Event>) {
    let nats = nats_of(env).await;
    let frames = collect_frames(&nats).await;
    nats.put_batch(&batch(
        BATCH_ID,
        TASK_ID,
        1,
        &[(97_001, WETH, Some(2.0e11))],
    ))
    .await;
    nats.put_task(&task(TASK_ID, 1, token_rules(), &[BATCH_ID]))
        .await;
    let mut process = ingest(env, feed, &[]).spawn("ingest");
    let collected = frames
        .wait("the replayed events", WAIT_LIMIT, |f| {
            f.iter().map(|f| f.frame.events.len()).sum::<usize>() >= count
        })
        .await;
    process.terminate().await;

    let events: Vec<Event> = collected
        .into_iter()
        .flat_map(|f| f.frame.events)
        .map(|mut e| {
            e.ingest_time_ms = 0;
            e
        })
        .collect();
    events
        .into_iter()
        .partition(|e| matches!(e.kind, EventKind::Trade(_)))
}

/// Formats a trade with the window figures that trades alone decide. The price parts of its
/// snapshot depend on how the two connections interleave, which differs from run to run.
fn trade_view(event: &Event) -> String {
    let windows: Vec<_> = event
        .snapshot
        .iter()
        .flat_map(|s| &s.windows)
        .map(|w| (w.window_sec, w.volume_usd, w.buy_usd, w.sell_usd, w.trades))
        .collect();
    format!(
        "{} {:?} {:?} {windows:?}",
        event.source_time_ms, event.target, event.kind
    )
}

/// Formats a candle with the window figures that candles alone decide.
fn price_view(event: &Event) -> String {
    let snapshot = event.snapshot.as_ref();
    let windows: Vec<_> = snapshot
        .iter()
        .flat_map(|s| &s.windows)
        .map(|w| (w.window_sec, w.start_price, w.high, w.low, w.start_time_ms))
        .collect();
    let price = snapshot.and_then(|s| s.price);
    format!(
        "{} {:?} {:?} {price:?} {windows:?}",
        event.source_time_ms, event.target, event.kind
    )
}

#[tokio::test]
async fn recorded_connection_replays_same_events() {
    let original_env = TestEnv::new("ingest_record_original").await;
    let original = FeedReplayProcess::start(&original_env, &["--speed", "0"]).await;

    let out = original_env.work_dir().join("weth.jsonl");
    let output = original_env
        .command(monitor_tests::bin("devkit"))
        .args(["feed-replay", "record", "--url", &original.ws_url()])
        .args([
            "--chain",
            "ethereum",
            "--api-key",
            API_KEY,
            "--address",
            WETH,
        ])
        .arg("--out")
        .arg(&out)
        .args(["--duration", "5"])
        .output("record", Duration::from_secs(60))
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "record failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every frame received is recorded: WELCOME and the 1000 data frames of each channel.
    assert!(
        stdout.contains("recorded 1001 price frames and 1001 trade frames"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains(API_KEY), "the API key is not written");

    let (original_trades, original_prices) = ingest_events(&original_env, &original, 2000).await;

    let replay_env = TestEnv::new("ingest_record_replay").await;
    let recording = out.to_string_lossy().into_owned();
    let replayed =
        FeedReplayProcess::start(&replay_env, &["--speed", "0", "--recording", &recording]).await;
    let (replayed_trades, replayed_prices) = ingest_events(&replay_env, &replayed, 2000).await;

    assert_eq!(original_trades.len(), 1000);
    assert_eq!(original_prices.len(), 1000);
    assert_eq!(
        replayed_trades.iter().map(trade_view).collect::<Vec<_>>(),
        original_trades.iter().map(trade_view).collect::<Vec<_>>(),
        "the same trades and trade windows"
    );
    assert_eq!(
        replayed_prices.iter().map(price_view).collect::<Vec<_>>(),
        original_prices.iter().map(price_view).collect::<Vec<_>>(),
        "the same candles and price windows"
    );
}
