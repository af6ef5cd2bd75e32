//! Config changes while Redis is down: the database poll applies them, and Redis coming back
//! is picked up by the running allocator.
//!
//! Stops and starts the shared Redis server of the test run, so this file holds one test only:
//! cargo runs test binaries one after another, and no other test of this binary runs during
//! the outage.

// A panic on a broken set-up is the test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod control_plane_support;

use std::collections::BTreeSet;

use control_plane_support::*;
use monitor_tests::{start_service, stop_service, wait_until, TestEnv};

const LARGE_TRADES: &str = r#"{"large_trade": {"side": "any"}, "cooldown_sec": 1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_applies_while_redis_is_down() {
    let env = TestEnv::new("cp_redis_down").await;
    let bus = Bus::new(&env).await;
    let v1 = ConfigValues {
        events_config: LARGE_TRADES,
        min_transaction_usd: 1e12,
        version: 1,
    };
    let config_id = insert_config(&env, &v1).await;
    let task_id = insert_task(&env, "smart", config_id).await;
    insert_target(&env, task_id, WETH).await;
    let (_feed, feed_url) = start_feed(&env, &[WETH], &["--speed", "5", "--loop"]).await;
    let mut allocator = start_allocator(&env, &[("CONFIG_POLL_INTERVAL", "1")]);
    let _ingest = start_ingest(&env, &feed_url);
    let _evaluate = start_evaluate(&env);
    assert!(bus
        .wait_task(task_id, |s| !s.batches.is_empty())
        .await
        .is_some());
    assert!(
        wait_subscribed(&env).await,
        "allocator subscribed to its channel"
    );

    stop_service("redis").await;
    let noticed = allocator
        .wait_for_log("redis subscription lost", LIMIT)
        .await;
    let v2 = ConfigValues {
        min_transaction_usd: 1.0,
        version: 2,
        ..v1
    };
    // No notice can be sent: only the poll can find this change.
    update_config(&env, config_id, &v2).await;
    let applied = bus
        .wait_task(task_id, |s| {
            s.config.as_ref().is_some_and(|c| c.version == 2)
        })
        .await;
    let alerted = wait_until(LIMIT, POLL, || async {
        !bus.alerts(task_id).await.is_empty()
    })
    .await;
    start_service("redis").await;

    assert!(noticed, "the allocator saw Redis go:\n{}", allocator.log());
    assert!(
        applied.is_some(),
        "version 2 applied by the poll while Redis is down"
    );
    assert!(alerted, "version 2 raises alerts while Redis is down");
    let versions: BTreeSet<u64> = bus
        .alerts(task_id)
        .await
        .iter()
        .map(|a| a.config_version)
        .collect();
    assert_eq!(versions, BTreeSet::from([2]));
    assert!(
        !allocator.log().contains("reloading config"),
        "no notice was handled while Redis was down"
    );

    // The same allocator process subscribes again and handles notices.
    let resubscribed = wait_until(LIMIT, POLL, || async {
        allocator
            .log()
            .matches("subscribed to config changes")
            .count()
            >= 2
    })
    .await;
    assert!(
        resubscribed,
        "the allocator subscribed again:\n{}",
        allocator.log()
    );
    assert!(wait_subscribed(&env).await);
    let v3 = ConfigValues { version: 3, ..v2 };
    update_config(&env, config_id, &v3).await;
    publish_notice(&env, config_id, 3).await;
    let reloaded = allocator.wait_for_log("reloading config", LIMIT).await;
    assert!(
        reloaded,
        "the notice after the restart reloads the config:\n{}",
        allocator.log()
    );
    assert!(bus
        .wait_task(task_id, |s| s
            .config
            .as_ref()
            .is_some_and(|c| c.version == 3))
        .await
        .is_some());
    assert!(
        allocator.try_status().is_none(),
        "the allocator was never restarted"
    );
}
