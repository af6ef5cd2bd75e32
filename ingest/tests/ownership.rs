//! Ownership across real `ingest` processes on the real NATS server, fed by the real
//! `devkit feed-replay`: a second instance takes about half of the batches, a killed
//! instance's batches move to the survivor, an owner that cannot renew stops its batches, and
//! a restarted NATS server keeps every lease, so no batch moves.
//!
//! Who ran a batch when is read from the events stream: every frame names its producer, and
//! every event its ingest time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::kv;

use monitor_core::messages::{BatchStatus, StatusChange, StatusMessage, StatusScope};
use monitor_ingest::ownership::{rendezvous_owner, LeaseKey, LEASE_TTL, RENEW_INTERVAL};
use monitor_tests::{NatsServer, Process, ProcessBuilder, Signal, TestEnv};
use support::stage::*;
use support::*;

const TASK_ID: u64 = 70;
const BATCHES: u64 = 12;
/// Feed for the handover tests: one timeline for every connection, so the new owner gets the
/// trades from its subscription on, as from Birdeye. A replay from the first row would send it
/// trades that the old owner already published, and it drops those as repeats of its window
/// history.
const LIVE_FEED: &[&str] = &["--speed", "1", "--loop", "--live"];

fn batch_ids() -> Vec<u64> {
    (1..=BATCHES).map(|n| 7000 + n).collect()
}

/// Puts one task whose batches each watch WETH, the token the replay serves.
async fn put_batches(nats: &Nats) {
    for batch_id in batch_ids() {
        nats.put_batch(&batch(batch_id, TASK_ID, 1, &[(batch_id * 10, WETH, None)]))
            .await;
    }
    nats.put_task(&task(TASK_ID, 1, token_rules(), &batch_ids()))
        .await;
}

fn holders_of(leases: &BTreeMap<String, String>) -> BTreeMap<u64, String> {
    leases
        .iter()
        .filter_map(|(key, holder)| {
            let key = LeaseKey::parse(key)?;
            Some((key.id, holder.clone()))
        })
        .collect()
}

fn all_held_by(leases: &BTreeMap<String, String>, member: &str) -> bool {
    let holders = holders_of(leases);
    batch_ids()
        .iter()
        .all(|id| holders.get(id).map(String::as_str) == Some(member))
}

/// Spawns an ingest process and waits until it has the lease of every batch. Returns the
/// process and its consumer id.
async fn start_holding_all(
    builder: ProcessBuilder,
    name: &str,
    env: &TestEnv,
    leases: &kv::Store,
) -> (Process, String) {
    let process = builder.spawn(name);
    let id = consumer_id(leases, env, &process).await;
    wait_for_leases(
        leases,
        &format!("{name} holding every batch"),
        WAIT_LIMIT,
        |l| all_held_by(l, &id),
    )
    .await;
    (process, id)
}

/// Waits until every batch is held by the member that rendezvous hashing picks among `a`
/// and `b`, and returns the entries of the leases bucket.
async fn wait_for_split(leases: &kv::Store, a: &str, b: &str) -> BTreeMap<String, String> {
    wait_for_leases(
        leases,
        "the batches split by rendezvous hashing",
        WAIT_LIMIT,
        |l| {
            let holders = holders_of(l);
            batch_ids().iter().all(|id| {
                let owner = rendezvous_owner(&LeaseKey::batch(*id).to_string(), [a, b]);
                holders.get(id).map(String::as_str) == owner
            })
        },
    )
    .await
}

/// Returns the last status change of `batch_id` in `records`.
fn last_change(records: &[StoredStatus], batch_id: u64) -> &StatusChange {
    let scope = StatusScope::Batch {
        task_id: TASK_ID,
        batch_id,
    };
    records
        .iter()
        .rev()
        .find_map(|r| match &r.message {
            StatusMessage::Change(c) if c.scope == scope => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("batch {batch_id} never changed status"))
}

/// Ingest times of the events of `batch_id` produced by `producer`.
fn event_times(frames: &[StoredFrame], batch_id: u64, producer: &str) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f.frame.batch_id == Some(batch_id) && f.frame.producer == producer)
        .flat_map(|f| f.frame.events.iter().map(|e| e.ingest_time_ms))
        .collect()
}

fn ms(duration: Duration) -> i64 {
    duration.as_millis() as i64
}

fn now_ms() -> i64 {
    monitor_core::time::now_ms()
}

#[tokio::test]
async fn second_instance_takes_half_without_gap() {
    let env = TestEnv::new("ingest_second_instance").await;
    let nats = nats_of(&env).await;
    let feed = FeedReplayProcess::start(&env, LIVE_FEED).await;
    let frames = collect_frames(&nats).await;
    let status = collect_status(&nats).await;
    put_batches(&nats).await;
    let leases = &nats.topology.leases;

    let (mut first, a) =
        start_holding_all(ingest(&env, &feed, &[]), "ingest-a", &env, leases).await;
    frames
        .wait("events of every batch from a", WAIT_LIMIT, |f| {
            batch_ids()
                .iter()
                .all(|id| !event_times(f, *id, &a).is_empty())
        })
        .await;

    let mut second = ingest(&env, &feed, &[]).spawn("ingest-b");
    let b = consumer_id(leases, &env, &second).await;
    let expected: BTreeSet<u64> = batch_ids()
        .into_iter()
        .filter(|id| {
            rendezvous_owner(&LeaseKey::batch(*id).to_string(), [a.as_str(), b.as_str()])
                == Some(b.as_str())
        })
        .collect();
    println!(
        "{} of {BATCHES} batches move to the new instance",
        expected.len()
    );
    let settled = wait_for_split(leases, &a, &b).await;
    assert!(settled.contains_key(&format!("member.{a}")));
    assert!(settled.contains_key(&format!("member.{b}")));
    let collected = frames
        .wait("events of the moved batches from b", WAIT_LIMIT, |f| {
            expected
                .iter()
                .all(|id| !event_times(f, *id, &b).is_empty())
        })
        .await;
    // Let a few more frames arrive, so that a batch run by both would show it.
    tokio::time::sleep(RENEW_INTERVAL).await;
    let collected = {
        let later = frames.snapshot();
        assert!(later.len() >= collected.len());
        later
    };

    for id in batch_ids() {
        let from_a = event_times(&collected, id, &a);
        let from_b = event_times(&collected, id, &b);
        if !expected.contains(&id) {
            assert!(
                from_b.is_empty(),
                "batch {id} stays on a but b produced events"
            );
            continue;
        }
        let a_last = *from_a.iter().max().unwrap();
        let b_first = *from_b.iter().min().unwrap();
        println!(
            "batch {id}: a's last event {a_last}, b's first {b_first}, gap {} ms",
            b_first - a_last
        );
        // a hands the batch over only once b has run it for a while.
        assert!(
            a_last >= b_first,
            "batch {id} was unwatched for {} ms",
            b_first - a_last
        );
        assert!(
            a_last - b_first < ms(RENEW_INTERVAL),
            "batch {id} ran on both instances for {} ms",
            a_last - b_first
        );
    }

    // The new owner's status is the batch's last: the old owner reports no `stopped`.
    let records = status.snapshot();
    for id in &expected {
        let last = last_change(&records, *id);
        assert_eq!(
            (last.status, last.consumer_id.as_str()),
            (BatchStatus::Running, b.as_str()),
            "last status change of batch {id}"
        );
    }

    first.terminate().await;
    second.terminate().await;
}

#[tokio::test]
async fn killed_instance_batches_move_to_survivor() {
    let env = TestEnv::new("ingest_killed_instance").await;
    let nats = nats_of(&env).await;
    let feed = FeedReplayProcess::start(&env, &["--speed", "1", "--loop"]).await;
    let frames = collect_frames(&nats).await;
    let status = collect_status(&nats).await;
    put_batches(&nats).await;
    let leases = &nats.topology.leases;

    let (mut victim, v) =
        start_holding_all(ingest(&env, &feed, &[]), "ingest-victim", &env, leases).await;
    let mut survivor = ingest(&env, &feed, &[]).spawn("ingest-survivor");
    let s = consumer_id(leases, &env, &survivor).await;
    let split = wait_for_leases(leases, "both instances holding batches", WAIT_LIMIT, |l| {
        let holders = holders_of(l);
        let held = |m: &str| holders.values().filter(|h| *h == m).count();
        held(&v) > 0 && held(&s) > 0 && held(&v) + held(&s) == BATCHES as usize
    })
    .await;
    let moved: Vec<u64> = holders_of(&split)
        .into_iter()
        .filter(|(_, holder)| *holder == v)
        .map(|(id, _)| id)
        .collect();
    frames
        .wait("events of the victim's batches", WAIT_LIMIT, |f| {
            moved.iter().all(|id| !event_times(f, *id, &v).is_empty())
        })
        .await;

    victim.kill().await;
    let killed_ms = now_ms();
    wait_for_leases(
        leases,
        "the survivor holding every batch",
        LEASE_TTL + RENEW_INTERVAL + WAIT_LIMIT,
        |l| all_held_by(l, &s),
    )
    .await;
    let leased_ms = now_ms();
    let collected = frames
        .wait(
            "events of the moved batches from the survivor",
            WAIT_LIMIT,
            |f| {
                moved
                    .iter()
                    .all(|id| event_times(f, *id, &s).iter().any(|t| *t > killed_ms))
            },
        )
        .await;

    let running_ms = moved
        .iter()
        .map(|id| *event_times(&collected, *id, &s).iter().min().unwrap())
        .max()
        .unwrap();
    println!(
        "failover of {} batches: leases taken {} ms after SIGKILL, events flowing after {} ms",
        moved.len(),
        leased_ms - killed_ms,
        running_ms - killed_ms
    );
    assert!(
        leased_ms - killed_ms <= ms(LEASE_TTL + RENEW_INTERVAL) + 1_000,
        "the survivor took the leases {} ms after the kill",
        leased_ms - killed_ms
    );
    let records = status.snapshot();
    for id in &moved {
        let running_on_survivor = records.iter().any(|r| {
            matches!(&r.message, StatusMessage::Change(c)
                if c.status == BatchStatus::Running
                    && c.consumer_id == s
                    && matches!(c.scope, StatusScope::Batch { batch_id, .. } if batch_id == *id))
        });
        assert!(
            running_on_survivor,
            "batch {id} not reported running by the survivor"
        );
    }

    survivor.terminate().await;
}

#[tokio::test]
async fn frozen_owner_stops_after_losing_lease() {
    let env = TestEnv::new("ingest_frozen_owner").await;
    let nats = nats_of(&env).await;
    let feed = FeedReplayProcess::start(&env, &["--speed", "1", "--loop"]).await;
    let frames = collect_frames(&nats).await;
    let status = collect_status(&nats).await;
    put_batches(&nats).await;
    let leases = &nats.topology.leases;

    let mut frozen = ingest(&env, &feed, &[]).spawn("ingest-frozen");
    let f = consumer_id(leases, &env, &frozen).await;
    wait_for_leases(
        leases,
        "the first instance holding every batch",
        WAIT_LIMIT,
        |l| all_held_by(l, &f),
    )
    .await;
    let mut other = ingest(&env, &feed, &[]).spawn("ingest-other");
    let o = consumer_id(leases, &env, &other).await;
    let split = wait_for_leases(leases, "both instances holding batches", WAIT_LIMIT, |l| {
        let holders = holders_of(l);
        let held = |m: &str| holders.values().filter(|h| *h == m).count();
        held(&f) > 0 && held(&o) > 0 && held(&f) + held(&o) == BATCHES as usize
    })
    .await;
    let frozen_batches: Vec<u64> = holders_of(&split)
        .into_iter()
        .filter(|(_, holder)| *holder == f)
        .map(|(id, _)| id)
        .collect();

    // A frozen process cannot renew: the other instance takes its leases once they expire.
    frozen.send_signal(Signal::SIGSTOP);
    wait_for_leases(
        leases,
        "the other instance holding every batch",
        LEASE_TTL + RENEW_INTERVAL + WAIT_LIMIT,
        |l| all_held_by(l, &o),
    )
    .await;
    frames
        .wait(
            "events of the frozen instance's batches from the other",
            WAIT_LIMIT,
            |fr| {
                frozen_batches
                    .iter()
                    .all(|id| !event_times(fr, *id, &o).is_empty())
            },
        )
        .await;
    frozen.send_signal(Signal::SIGCONT);
    let resumed_ms = now_ms();

    // Woken up, it must see its leases are stale and stop those batches.
    let records = status
        .wait("the frozen instance reporting its batches stopped", WAIT_LIMIT, |r| {
            frozen_batches.iter().all(|id| {
                r.iter().any(|r| matches!(&r.message, StatusMessage::Change(c)
                    if c.status == BatchStatus::Stopped
                        && c.consumer_id == f
                        && matches!(c.scope, StatusScope::Batch { batch_id, .. } if batch_id == *id)))
            })
        })
        .await;
    for id in &frozen_batches {
        let stop = records
            .iter()
            .find_map(|r| match &r.message {
                StatusMessage::Change(c)
                    if c.status == BatchStatus::Stopped
                        && c.consumer_id == f
                        && c.sent_ms > resumed_ms - 1_000
                        && matches!(c.scope, StatusScope::Batch { batch_id, .. } if batch_id == *id) =>
                {
                    Some(c.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no stop of batch {id} after the freeze: {records:#?}"));
        let reason = stop.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("lost or not renewed"),
            "batch {id} stopped for {reason:?}"
        );
        println!(
            "batch {id}: stale runner stopped {} ms after the process woke up",
            stop.sent_ms - resumed_ms
        );
        assert!(
            stop.sent_ms - resumed_ms < ms(RENEW_INTERVAL),
            "batch {id} kept running on the instance that lost its lease for {} ms",
            stop.sent_ms - resumed_ms
        );
    }

    // Awake again, it is a live member and takes its share back by handover.
    wait_for_leases(
        leases,
        "both instances holding batches again",
        WAIT_LIMIT,
        |l| {
            let holders = holders_of(l);
            holders.values().any(|h| *h == f) && holders.values().any(|h| *h == o)
        },
    )
    .await;

    frozen.terminate().await;
    other.terminate().await;
}

#[tokio::test]
async fn nats_restart_keeps_every_lease() {
    let env = TestEnv::new("ingest_nats_restart_leases").await;
    let mut server = NatsServer::start(&env).await;
    let nats = nats_on(&server, &env).await;
    let feed = FeedReplayProcess::start(&env, &["--speed", "1", "--loop"]).await;
    put_batches(&nats).await;
    let leases = &nats.topology.leases;

    let on_server = ingest(&env, &feed, &[]).env("NATS_URL", server.url());
    let (mut first, a) = start_holding_all(on_server, "ingest-a", &env, leases).await;
    let mut second = ingest(&env, &feed, &[])
        .env("NATS_URL", server.url())
        .spawn("ingest-b");
    let b = consumer_id(leases, &env, &second).await;
    let split = wait_for_split(leases, &a, &b).await;
    let stops =
        |process: &monitor_tests::Process| process.log().matches("stopping batch runner").count();
    // a stops each batch it handed to b once b has run it for a while.
    let moved = holders_of(&split).values().filter(|h| **h == b).count();
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while stops(&first) < moved {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a never stopped the {moved} batches it handed over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stops_before = (stops(&first), stops(&second));

    server.restart().await;
    let nats = nats_on(&server, &env).await;
    // Two rounds of renewals after the restart.
    tokio::time::sleep(2 * RENEW_INTERVAL).await;
    let after = lease_entries(&nats.topology.leases).await;

    assert_eq!(holders_of(&after), holders_of(&split));
    assert!(after.contains_key(&format!("member.{a}")));
    assert!(after.contains_key(&format!("member.{b}")));
    assert_eq!(
        (stops(&first), stops(&second)),
        stops_before,
        "no batch runner stopped because of the restart"
    );

    first.terminate().await;
    second.terminate().await;
}

#[tokio::test]
async fn stopping_instance_hands_over_without_gap() {
    let env = TestEnv::new("ingest_stopping_instance").await;
    let nats = nats_of(&env).await;
    let feed = FeedReplayProcess::start(&env, LIVE_FEED).await;
    let frames = collect_frames(&nats).await;
    let status = collect_status(&nats).await;
    put_batches(&nats).await;
    let leases = &nats.topology.leases;

    let (mut first, a) =
        start_holding_all(ingest(&env, &feed, &[]), "ingest-a", &env, leases).await;
    let mut second = ingest(&env, &feed, &[]).spawn("ingest-b");
    let b = consumer_id(leases, &env, &second).await;
    let split = wait_for_split(leases, &a, &b).await;
    let held_by_a: Vec<u64> = holders_of(&split)
        .into_iter()
        .filter(|(_, holder)| *holder == a)
        .map(|(id, _)| id)
        .collect();
    frames
        .wait("events of a's batches from a", WAIT_LIMIT, |f| {
            held_by_a
                .iter()
                .all(|id| !event_times(f, *id, &a).is_empty())
        })
        .await;

    let stopping = tokio::time::Instant::now();
    first.terminate().await;
    println!(
        "a exited {} ms after SIGTERM",
        stopping.elapsed().as_millis()
    );
    wait_for_leases(leases, "instance b holding every batch", WAIT_LIMIT, |l| {
        all_held_by(l, &b)
    })
    .await;
    let collected = frames
        .wait("events of a's batches from b", WAIT_LIMIT, |f| {
            held_by_a
                .iter()
                .all(|id| !event_times(f, *id, &b).is_empty())
        })
        .await;

    let records = status.snapshot();
    for id in &held_by_a {
        let a_last = *event_times(&collected, *id, &a).iter().max().unwrap();
        let b_first = *event_times(&collected, *id, &b).iter().min().unwrap();
        println!(
            "batch {id}: a's last event {a_last}, b's first {b_first}, gap {} ms",
            b_first - a_last
        );
        assert!(
            a_last >= b_first,
            "batch {id} was unwatched for {} ms",
            b_first - a_last
        );
        let last = last_change(&records, *id);
        assert_eq!(
            (last.status, last.consumer_id.as_str()),
            (BatchStatus::Running, b.as_str()),
            "last status change of batch {id}"
        );
    }

    second.terminate().await;
}
