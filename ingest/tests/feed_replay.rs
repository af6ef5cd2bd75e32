//! The ingest stage run in-process against the real NATS server and `devkit feed-replay`, the
//! project's Birdeye replay server, serving the recorded ETH/USDT trades.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;

use monitor_core::messages::{BatchStatus, EventKind, Side};
use monitor_ingest::settings::IngestSettings;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Starts `devkit feed-replay` on a free port and returns it with its URL.
async fn start_feed_replay(extra_args: &[&str]) -> (Child, Url) {
    let devkit = monitor_tests::bin("devkit");
    let csv =
        monitor_tests::workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv");
    let mut child = Command::new(devkit)
        .args([
            "feed-replay",
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "0",
            "--api-key",
            API_KEY,
            "--csv",
        ])
        .arg(csv)
        .args(extra_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(WAIT_LIMIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let address = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    (
        child,
        Url::parse(&format!("ws://{address}/socket")).unwrap(),
    )
}

#[tokio::test]
async fn replayed_complex_trades_sum_in_windows() {
    let nats = Nats::new(&unique_prefix("replay")).await;
    let (_replay, url) = start_feed_replay(&["--txs-shape", "complex"]).await;
    let recorded = recorded_trades(usize::MAX);
    assert_eq!(recorded.len(), 1000);

    let mut events = StreamReader::new(&nats.js, &nats.subjects().events_stream()).await;
    nats.put_batch(&batch(
        801,
        8,
        1,
        &[(81, WETH, Some(2.0e11)), (82, PEPE, None)],
    ))
    .await;
    nats.put_task(&task(8, 1, token_rules(), &[801])).await;
    let mut settings = IngestSettings::local(
        &nats.settings.url,
        &nats.settings.subject_prefix,
        url,
        API_KEY,
    );
    settings.runtime.consumer_id_prefix = Some(nats.settings.subject_prefix.clone());
    let shutdown = CancellationToken::new();
    let ingest = tokio::spawn(monitor_ingest::run(settings, shutdown.clone()));

    // One trade and one candle per recorded row.
    let mut frames = Vec::new();
    read_frames_until(&mut events, &mut frames, "2000 events", |f| {
        f.iter().map(|p| p.frame.events.len()).sum::<usize>() >= 2000
    })
    .await;
    let all: Vec<_> = frames.iter().flat_map(|p| p.frame.events.clone()).collect();
    assert_eq!(all.len(), 2000);
    let seqs: Vec<u64> = frames.iter().map(|p| p.frame.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());

    // Trades: the side follows from the from/to legs of the complex shape.
    let trades: Vec<_> = all
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Trade(t) => Some((e, t)),
            _ => None,
        })
        .collect();
    assert_eq!(trades.len(), 1000);
    for ((event, trade), row) in trades.iter().zip(&recorded) {
        assert_eq!(event.source_time_ms, row.time_ms);
        assert_eq!(trade.side, if row.is_buy { Side::Buy } else { Side::Sell });
        assert_eq!(trade.volume_usd, row.cost);
    }

    // The recording spans about three minutes, so the 300 s window of the last trade holds
    // every trade.
    let (last, _) = trades[999];
    let window = last.snapshot.as_ref().unwrap().window(300).unwrap();
    let total: f64 = recorded.iter().map(|r| r.cost).sum();
    let bought: f64 = recorded.iter().filter(|r| r.is_buy).map(|r| r.cost).sum();
    assert_eq!(window.trades, 1000);
    assert!(
        (window.volume_usd - total).abs() < 1e-6 * total,
        "{} != {total}",
        window.volume_usd
    );
    assert!(
        (window.buy_usd - bought).abs() < 1e-6 * total,
        "{} != {bought}",
        window.buy_usd
    );

    // Candles: the last one closes at the last recorded price.
    let last_price = all
        .iter()
        .rev()
        .find(|e| matches!(e.kind, EventKind::Price(_)))
        .unwrap();
    assert_eq!(
        last_price.snapshot.as_ref().unwrap().price,
        Some(recorded[999].price)
    );
    assert_eq!(
        last_price.snapshot.as_ref().unwrap().market_cap,
        Some(2.0e11)
    );

    shutdown.cancel();
    ingest.await.unwrap().unwrap();
    let mut status = StreamReader::new(&nats.js, &nats.subjects().status_stream()).await;
    let mut records = Vec::new();
    read_status_until(&mut status, &mut records, "the stopped status", |r| {
        r.iter().any(|r| matches!(&r.message, monitor_core::messages::StatusMessage::Change(c) if c.status == BatchStatus::Stopped))
    })
    .await;
    nats.cleanup().await;
}
