//! Resource use of one `ingest` process with 10,000 targets (102 batches, two feed
//! connections each) fed by `devkit feed-replay --synthetic-tokens 10000`.
//!
//! Ignored by default because it loads the machine for a minute and measures rather than
//! checks behaviour. Run it with the binaries to measure (release for meaningful figures):
//!
//! ```text
//! cargo build --release -p monitor-ingest -p monitor-devkit --bins
//! MONITOR_BIN_DIR=target/release cargo test -p monitor-ingest --test scale -- --ignored --nocapture
//! ```
//!
//! `SCALE_SPEED` sets the replay speed (default 0.1: about 9,700 events per second over the
//! 10,000 tokens of the shipped recording) and `SCALE_SECONDS` the measured time (default 30).
//! It prints the resident set size and CPU share of the ingest process, sampled from
//! `/proc/<pid>`, and the events per second counted from the heartbeats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use monitor_core::messages::{
    BatchRef, BatchSpec, BatchStatus, StatusMessage, StatusScope, TargetSpec, MESSAGE_VERSION,
};
use monitor_core::rules::{CumulativeBuyRule, LargeTradeRule, SideFilter, TokenRules, VolumeRule};
use monitor_tests::TestEnv;
use support::stage::*;
use support::*;

const TARGETS: u32 = 10_000;
const BATCH_SIZE: u32 = 99;
const TASK_ID: u64 = 1;

/// `0x5e5e…` and the token number, as `devkit feed-replay --synthetic-tokens` names them.
fn synthetic_token(index: u32) -> String {
    format!("0x{}{index:08x}", "5e".repeat(16))
}

/// Returns three rules sharing one window length (300 s), like a typical smart-money config.
fn scale_rules() -> TokenRules {
    TokenRules {
        price_change: None,
        volume: Some(VolumeRule {
            window_sec: 300,
            min_volume_usd: 1_000_000.0,
        }),
        holder_change: None,
        large_trade: Some(LargeTradeRule {
            side: SideFilter::Any,
            min_usd: 100_000.0,
        }),
        cumulative_buy: Some(CumulativeBuyRule {
            window_sec: 300,
            min_usd: 500_000.0,
        }),
        top_holders: None,
        cooldown_sec: 300,
    }
}

async fn put_targets(nats: &Nats) -> Vec<u64> {
    let batches: Vec<Vec<u32>> = (0..TARGETS)
        .collect::<Vec<_>>()
        .chunks(BATCH_SIZE as usize)
        .map(<[u32]>::to_vec)
        .collect();
    let mut ids = Vec::new();
    for (number, tokens) in batches.iter().enumerate() {
        let batch_id = 100_000 + number as u64;
        ids.push(batch_id);
        let spec = BatchSpec {
            v: MESSAGE_VERSION,
            batch_id,
            task_id: TASK_ID,
            epoch: 1,
            batch_no: number as u32 + 1,
            status: BatchStatus::Pending,
            targets: tokens
                .iter()
                .enumerate()
                .map(|(order, token)| TargetSpec {
                    target_id: u64::from(*token) + 1,
                    address: synthetic_token(*token),
                    pair_address: None,
                    token_name: None,
                    token_symbol: None,
                    market_cap: None,
                    source: None,
                    batch_order: order as u32 + 1,
                })
                .collect(),
        };
        nats.put_batch(&spec).await;
    }
    let mut spec = task(TASK_ID, 1, scale_rules(), &ids);
    spec.batches = ids
        .iter()
        .zip(&batches)
        .enumerate()
        .map(|(number, (id, tokens))| BatchRef {
            batch_id: *id,
            batch_no: number as u32 + 1,
            item_count: tokens.len() as u32,
            status: BatchStatus::Pending,
        })
        .collect();
    nats.put_task(&spec).await;
    ids
}

/// Resident set size in KiB and CPU time (user + system) in clock ticks of a process.
fn sample(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    (rss_kib, utime + stime)
}

/// Events counted by the newest heartbeat of every batch.
fn events_so_far(records: &[StoredStatus]) -> u64 {
    let mut latest: BTreeMap<u64, u64> = BTreeMap::new();
    for record in records {
        if let StatusMessage::Heartbeat(h) = &record.message {
            if let StatusScope::Batch { batch_id, .. } = h.scope {
                latest.insert(batch_id, h.events);
            }
        }
    }
    latest.values().sum()
}

fn running_batches(records: &[StoredStatus]) -> usize {
    let mut status: BTreeMap<u64, BatchStatus> = BTreeMap::new();
    for record in records {
        if let StatusMessage::Change(c) = &record.message {
            if let StatusScope::Batch { batch_id, .. } = c.scope {
                status.insert(batch_id, c.status);
            }
        }
    }
    status
        .values()
        .filter(|s| **s == BatchStatus::Running)
        .count()
}

#[tokio::test]
#[ignore = "measures resources for about a minute; run with --ignored"]
async fn ten_thousand_targets_resources() {
    let speed = std::env::var("SCALE_SPEED").unwrap_or_else(|_| "0.1".into());
    let seconds: u64 = std::env::var("SCALE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let env = TestEnv::new("ingest_scale").await;
    let nats = nats_of(&env).await;
    let synthetic = TARGETS.to_string();
    let feed = FeedReplayProcess::start(
        &env,
        &[
            "--synthetic-tokens",
            &synthetic,
            "--speed",
            &speed,
            "--loop",
        ],
    )
    .await;
    let status = collect_status(&nats).await;
    let batch_ids = put_targets(&nats).await;
    let mut ingest_process = ingest(&env, &feed, &[("HEARTBEAT_INTERVAL", "5")])
        .env("RUST_LOG", "warn")
        .spawn("ingest");
    let pid = ingest_process.pid();

    status
        .wait("every batch running", Duration::from_secs(120), |r| {
            running_batches(r) == batch_ids.len()
        })
        .await;
    // Let the windows fill and the heartbeats settle before measuring.
    tokio::time::sleep(Duration::from_secs(10)).await;

    let ticks_per_second = 100.0; // USER_HZ on Linux
    let start = tokio::time::Instant::now();
    let (_, cpu_start) = sample(pid);
    let events_start = events_so_far(&status.snapshot());
    let mut peak_rss = 0;
    let mut last_rss = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss, _) = sample(pid);
        peak_rss = peak_rss.max(rss);
        last_rss = rss;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (_, cpu_end) = sample(pid);
    let events_end = events_so_far(&status.snapshot());
    let cpu_pct = (cpu_end - cpu_start) as f64 / ticks_per_second / elapsed * 100.0;
    let events_per_second = (events_end - events_start) as f64 / elapsed;

    println!(
        "ingest with {TARGETS} targets in {} batches, replay speed {speed}: \
         {events_per_second:.0} events/s (from heartbeats), RSS {:.1} MiB (peak {:.1} MiB), \
         CPU {cpu_pct:.0} % of one core over {elapsed:.0} s",
        batch_ids.len(),
        last_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
    );
    assert!(events_per_second > 0.0, "no events counted");
    ingest_process.terminate().await;
}
