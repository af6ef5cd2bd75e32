//! Config changes end to end: a Redis notice puts new rules in force in the running pipeline,
//! a burst of changes ends on the newest version, and invalid configs leave the last valid
//! rules running with the error in the task's status.
//!
//! Runs the real `allocator`, `ingest`, `evaluate` and `devkit feed-replay` against the test's
//! own database, subject prefix and Redis channel. Tests that must see a change come through
//! Redis set `CONFIG_POLL_INTERVAL` to an hour, so only the start-up poll runs.

// The tests print the measured delays and every config error message, for `--nocapture`, and
// panic on a broken set-up: a panic is the test failure.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

mod control_plane_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use control_plane_support::*;
use futures::StreamExt;
use monitor_core::codec;
use monitor_core::messages::{BatchStatus, StatusMessage, TaskSpec};
use monitor_core::rules::Constraint;
use monitor_core::{Locale, Subjects};
use monitor_tests::{wait_until, TestEnv};

/// Large trades only, with a one-second cooldown so that alerts keep coming.
const LARGE_TRADES: &str = r#"{"large_trade": {"side": "any"}, "cooldown_sec": 1}"#;
/// Large trades and a volume rule over 120 s that no recorded window reaches.
const LARGE_TRADES_AND_VOLUME: &str = r#"{"large_trade": {"side": "any"}, "volume": {"window_sec": 120, "min_volume_usd": 1e12}, "cooldown_sec": 1}"#;
/// `min_transaction_usd` that no recorded trade reaches.
const NEVER: f64 = 1e12;
/// `min_transaction_usd` that every recorded trade reaches.
const ALWAYS: f64 = 1.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_notice_puts_new_rules_in_force() {
    let env = TestEnv::new("cp_notice").await;
    let bus = Bus::new(&env).await;
    let v1 = ConfigValues {
        events_config: LARGE_TRADES,
        min_transaction_usd: NEVER,
        version: 1,
    };
    let config_id = insert_config(&env, &v1).await;
    // Two tasks share the config: a notice reloads every task that uses it.
    let mut task_ids = Vec::new();
    for _ in 0..2 {
        let task_id = insert_task(&env, "smart", config_id).await;
        insert_target(&env, task_id, WETH).await;
        task_ids.push(task_id);
    }

    let (_feed, feed_url) = start_feed(&env, &[WETH], &["--speed", "5", "--loop"]).await;
    let allocator = start_allocator(&env, &[("CONFIG_POLL_INTERVAL", "3600")]);
    let _ingest = start_ingest(&env, &feed_url);
    let _evaluate = start_evaluate(&env);
    for task_id in &task_ids {
        let spec = bus.wait_task(*task_id, |s| !s.batches.is_empty()).await;
        assert!(spec.is_some(), "task {task_id} published by the first poll");
    }
    assert!(
        wait_subscribed(&env).await,
        "allocator subscribed to its channel"
    );
    // Frames flow and are judged with version 1, which raises nothing.
    for task_id in &task_ids {
        let flowing = wait_until(LIMIT, POLL, || async {
            !bus.frames(*task_id).await.is_empty()
        })
        .await;
        assert!(flowing, "events of task {task_id} reach the events stream");
    }

    // Version 2 lowers the threshold for evaluate and adds a 120 s window for ingest.
    let v2 = ConfigValues {
        events_config: LARGE_TRADES_AND_VOLUME,
        min_transaction_usd: ALWAYS,
        version: 2,
    };
    update_config(&env, config_id, &v2).await;
    let published = Instant::now();
    publish_notice(&env, config_id, 2).await;

    for task_id in &task_ids {
        let alerted = wait_until(LIMIT, POLL, || async {
            !bus.alerts(*task_id).await.is_empty()
        })
        .await;
        assert!(alerted, "task {task_id} raises alerts under version 2");
        println!(
            "task {task_id}: first alert under version 2 found {:?} after the notice (the stream is read every 100 ms or slower; devkit loadgen config-propagation measures the delay)",
            published.elapsed()
        );
        let versions: BTreeSet<u64> = bus
            .alerts(*task_id)
            .await
            .iter()
            .map(|alert| alert.config_version)
            .collect();
        assert_eq!(
            versions,
            BTreeSet::from([2]),
            "every alert of task {task_id} comes from version 2"
        );
        let spec = bus.task_spec(*task_id).await.expect("task spec");
        assert_eq!(spec.config.expect("config in force").version, 2);
        let windowed = wait_until(LIMIT, POLL, || async {
            bus.frames(*task_id)
                .await
                .iter()
                .flat_map(|f| &f.events)
                .any(|event| {
                    event
                        .snapshot
                        .as_ref()
                        .is_some_and(|snapshot| snapshot.window(120).is_some())
                })
        })
        .await;
        assert!(
            windowed,
            "ingest of task {task_id} keeps the 120 s window of version 2"
        );
    }
    assert!(
        allocator.log().contains("reloading config"),
        "the change came through the notice, not a poll:\n{}",
        allocator.log()
    );
}

/// Window in which the allocator merges notices of one config (`debounce::DEBOUNCE_WINDOW`).
const DEBOUNCE_WINDOW: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_changes_ends_on_newest_version() {
    let env = TestEnv::new("cp_burst").await;
    let bus = Bus::new(&env).await;
    let values = |version: u64| ConfigValues {
        events_config: LARGE_TRADES,
        // Each version has its own threshold, so the spec shows which one was read.
        min_transaction_usd: 1000.0 * version as f64,
        version,
    };
    let config_id = insert_config(&env, &values(1)).await;
    let task_id = insert_task(&env, "smart", config_id).await;
    insert_target(&env, task_id, WETH).await;
    let allocator = start_allocator(&env, &[("CONFIG_POLL_INTERVAL", "3600")]);
    assert!(
        bus.wait_task(task_id, |_| true).await.is_some(),
        "task published"
    );
    assert!(
        wait_subscribed(&env).await,
        "allocator subscribed to its channel"
    );

    // Record every version the task's key takes from now on.
    let mut watch = bus
        .tasks
        .watch_with_history(Subjects::task_key(task_id))
        .await
        .expect("watch the task key");
    let (versions_tx, mut versions_rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = tokio::spawn(async move {
        while let Some(Ok(entry)) = watch.next().await {
            if let Ok(spec) = codec::decode::<TaskSpec>(&entry.value) {
                let _ = versions_tx.send(spec);
            }
        }
    });

    // Five changes within one second, each announced at once.
    let burst_start = Instant::now();
    for version in 2..=6 {
        update_config(&env, config_id, &values(version)).await;
        publish_notice(&env, config_id, version).await;
        if version < 6 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let burst = burst_start.elapsed();
    let newest = bus
        .wait_task(task_id, |s| {
            s.config.as_ref().is_some_and(|c| c.version == 6)
        })
        .await
        .expect("version 6 in force after the window closes");
    // A late notice of an older version reloads the database, which still holds version 6.
    publish_notice(&env, config_id, 3).await;
    let reloads = |log: &str| log.matches("reloading config").count();
    let stale_reloaded = wait_until(LIMIT, POLL, || async { reloads(&allocator.log()) >= 3 }).await;
    recorder.abort();

    let mut written = Vec::new();
    while let Ok(spec) = versions_rx.try_recv() {
        written.push(spec);
    }
    let versions: Vec<u64> = written
        .iter()
        .map(|s| s.config.as_ref().expect("config").version)
        .collect();
    println!("task spec versions written: {versions:?}, burst lasted {burst:?}");
    assert!(
        stale_reloaded,
        "the stale notice was handled:\n{}",
        allocator.log()
    );
    let config = newest.config.expect("config");
    let rules = config.rules.as_token().expect("token rules");
    assert_eq!(
        rules.large_trade.as_ref().expect("large_trade").min_usd,
        6000.0
    );
    assert_eq!(versions.first(), Some(&1), "the watch starts at version 1");
    assert_eq!(
        versions.last(),
        Some(&6),
        "the newest version is the last written"
    );
    assert!(
        versions.windows(2).all(|pair| pair[0] <= pair[1]),
        "an older version never follows a newer one: {versions:?}"
    );
    assert_eq!(
        bus.task_spec(task_id)
            .await
            .expect("spec")
            .config
            .expect("config")
            .version,
        6,
        "the stale notice left version 6 in force"
    );
    if burst < DEBOUNCE_WINDOW {
        // The first change applies at once and the rest merge into one reload when the
        // window closes, so at most two writes follow version 1.
        assert!(
            versions.len() <= 3,
            "one write at once, one when the window closes: {versions:?}"
        );
    }
}

/// An invalid config and what the allocator must report about it.
struct InvalidCase {
    name: &'static str,
    events_config: &'static str,
    min_transaction_usd: f64,
    trigger_logic: &'static str,
    field: &'static str,
    constraint: fn(&Constraint) -> bool,
}

fn invalid_cases() -> Vec<InvalidCase> {
    let case = |name, events_config, field, constraint| InvalidCase {
        name,
        events_config,
        min_transaction_usd: ALWAYS,
        trigger_logic: "OR",
        field,
        constraint,
    };
    vec![
        case(
            "not JSON",
            r#"{"large_trade": {"side": "any""#,
            "events_config",
            |c| matches!(c, Constraint::NotJson(_)),
        ),
        case(
            "number beyond f64",
            r#"{"volume": {"min_volume_usd": 1e400}}"#,
            "events_config",
            |c| matches!(c, Constraint::NotJson(_)),
        ),
        case("empty object", "{}", "events_config", |c| {
            matches!(c, Constraint::NoRules)
        }),
        case(
            "array instead of object",
            "[1, 2, 3]",
            "events_config",
            |c| matches!(c, Constraint::NotObject),
        ),
        case(
            "threshold as string",
            r#"{"volume": {"min_volume_usd": "lots"}}"#,
            "volume.min_volume_usd",
            |c| matches!(c, Constraint::NotNumber),
        ),
        case(
            "negative threshold",
            r#"{"price_change": {"rise_pct": -5}}"#,
            "price_change.rise_pct",
            |c| matches!(c, Constraint::GreaterThan(_)),
        ),
        case(
            "huge threshold",
            r#"{"volume": {"min_volume_usd": 1e300}}"#,
            "volume.min_volume_usd",
            |c| matches!(c, Constraint::Range { .. }),
        ),
        case(
            "nested garbage",
            r#"{"price_change": [[[{"a": null}]]]}"#,
            "price_change",
            |c| matches!(c, Constraint::NotObject),
        ),
        case(
            "fractional window",
            r#"{"volume": {"window_sec": 1.5, "min_volume_usd": 5}}"#,
            "volume.window_sec",
            |c| matches!(c, Constraint::NotInteger),
        ),
        case(
            "unknown side",
            r#"{"large_trade": {"side": "sideways"}}"#,
            "large_trade.side",
            |c| matches!(c, Constraint::OneOf(_)),
        ),
        case(
            "enabled flag as string",
            r#"{"volume": {"enabled": "yes", "min_volume_usd": 5}}"#,
            "volume.enabled",
            |c| matches!(c, Constraint::NotBool),
        ),
        case(
            "zero cooldown",
            r#"{"large_trade": true, "cooldown_sec": 0}"#,
            "cooldown_sec",
            |c| matches!(c, Constraint::Range { .. }),
        ),
        InvalidCase {
            name: "unknown trigger logic",
            events_config: LARGE_TRADES,
            min_transaction_usd: ALWAYS,
            trigger_logic: "XOR",
            field: "trigger_logic",
            constraint: |c| matches!(c, Constraint::OneOf(_)),
        },
        InvalidCase {
            name: "negative column threshold",
            events_config: LARGE_TRADES,
            min_transaction_usd: -5.0,
            trigger_logic: "OR",
            field: "min_transaction_usd",
            constraint: |c| matches!(c, Constraint::GreaterThan(_) | Constraint::Range { .. }),
        },
    ]
}

async fn write_invalid(env: &TestEnv, config_id: u64, case: &InvalidCase, version: u64) {
    sqlx::query(
        "UPDATE monitor_config_v2 SET events_config = ?, min_transaction_usd = ?, \
         trigger_logic = ?, version = ? WHERE id = ?",
    )
    .bind(case.events_config)
    .bind(case.min_transaction_usd)
    .bind(case.trigger_logic)
    .bind(version)
    .bind(config_id)
    .execute(env.pool())
    .await
    .expect("write the invalid config");
}

/// The reason of the last task status change published for the task.
async fn last_task_reason(bus: &Bus, task_id: u64) -> Option<(BatchStatus, String)> {
    let subject = bus.subjects.task_status(task_id);
    bus.statuses(task_id)
        .await
        .into_iter()
        .rev()
        .find(|(_, s, _)| *s == subject)
        .and_then(|(_, _, message)| match message {
            StatusMessage::Change(change) => Some((change.status, change.reason?)),
            StatusMessage::Heartbeat(_) => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_keep_last_valid_rules() {
    let env = TestEnv::new("cp_invalid").await;
    let bus = Bus::new(&env).await;
    let valid = ConfigValues {
        events_config: LARGE_TRADES,
        min_transaction_usd: ALWAYS,
        version: 1,
    };
    let config_id = insert_config(&env, &valid).await;
    let task_id = insert_task(&env, "smart", config_id).await;
    insert_target(&env, task_id, WETH).await;

    let (_feed, feed_url) = start_feed(&env, &[WETH], &["--speed", "5", "--loop"]).await;
    let (_stub, _notify, stub_out) = start_notify_and_stub(&env).await;
    let allocator = start_allocator(&env, &[("CONFIG_POLL_INTERVAL", "0.3")]);
    let _ingest = start_ingest(&env, &feed_url);
    let _evaluate = start_evaluate(&env);
    let first = bus
        .wait_task(task_id, |s| !s.batches.is_empty())
        .await
        .expect("task published");
    let rules_v1 = first.config.clone().expect("version 1 in force");
    let alerting = wait_until(LIMIT, POLL, || async {
        !bus.alerts(task_id).await.is_empty()
    })
    .await;
    assert!(alerting, "version 1 raises alerts");

    let cases = invalid_cases();
    assert!(cases.len() >= 10);
    let mut version = 1;
    for case in &cases {
        version += 1;
        write_invalid(&env, config_id, case, version).await;
        let spec = bus
            .wait_task(task_id, |s| {
                s.config_error
                    .as_ref()
                    .is_some_and(|e| e.version == version)
            })
            .await
            .unwrap_or_else(|| {
                panic!("{}: the error of version {version} is published", case.name)
            });
        let error = spec.config_error.clone().expect("config error");
        let zh = error.message(Locale::ZhCn);
        let en = error.message(Locale::En);
        println!(
            "{} (version {version}):\n  zh-CN: {zh}\n  en:    {en}",
            case.name
        );

        assert_eq!(
            spec.config.as_ref(),
            Some(&rules_v1),
            "{}: version 1 stays in force",
            case.name
        );
        assert_eq!(error.field, case.field, "{}: field", case.name);
        assert!(
            (case.constraint)(&error.constraint),
            "{}: constraint {:?}",
            case.name,
            error.constraint
        );
        assert!(!error.value.is_empty(), "{}: the value is named", case.name);
        assert!(
            zh.contains("无效") && zh.contains(case.field),
            "{}: {zh}",
            case.name
        );
        let reported = wait_until(LIMIT, POLL, || async {
            last_task_reason(&bus, task_id).await == Some((BatchStatus::Running, zh.clone()))
        })
        .await;
        assert!(
            reported,
            "{}: task status carries {zh:?}, got {:?}",
            case.name,
            last_task_reason(&bus, task_id).await
        );
        let logged = wait_until(LIMIT, POLL, || async { allocator.log().contains(&en) }).await;
        assert!(logged, "{}: the allocator logs {en:?}", case.name);
    }

    // The task still judges with version 1: new alerts keep coming, all of version 1.
    let before = bus.alerts(task_id).await.len();
    let more = wait_until(LIMIT, POLL, || async {
        bus.alerts(task_id).await.len() > before
    })
    .await;
    assert!(more, "alerts keep coming after the invalid configs");
    let versions: BTreeSet<u64> = bus
        .alerts(task_id)
        .await
        .iter()
        .map(|a| a.config_version)
        .collect();
    assert_eq!(versions, BTreeSet::from([1]));

    // Every error reached the Java side in zh-CN.
    let last_zh = bus
        .task_spec(task_id)
        .await
        .expect("spec")
        .config_error
        .expect("error")
        .message(Locale::ZhCn);
    let pushed = wait_until(LIMIT, POLL, || async {
        stub_task_statuses(&stub_out, task_id)
            .iter()
            .any(|d| d["message"] == last_zh.as_str())
    })
    .await;
    assert!(
        pushed,
        "the backend stub received {last_zh:?}: {:?}",
        stub_task_statuses(&stub_out, task_id)
    );

    // A valid version clears the error and is in force.
    version += 1;
    update_config(&env, config_id, &ConfigValues { version, ..valid }).await;
    let fixed = bus
        .wait_task(task_id, |s| {
            s.config_error.is_none() && s.config.as_ref().is_some_and(|c| c.version == version)
        })
        .await;
    assert!(fixed.is_some(), "valid version {version} clears the error");
    let cleared = format!("配置 {config_id} (版本 {version}) 已通过校验并生效");
    let reported = wait_until(LIMIT, POLL, || async {
        last_task_reason(&bus, task_id).await == Some((BatchStatus::Running, cleared.clone()))
    })
    .await;
    assert!(
        reported,
        "status says the config is valid again: {:?}",
        last_task_reason(&bus, task_id).await
    );
}
