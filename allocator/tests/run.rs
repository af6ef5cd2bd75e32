//! The control plane against real MariaDB, NATS and Redis: polls, Redis notices, retirement.

// Helpers outside #[test] functions panic on failure too: a panic is the test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{addresses, wait_for, Fixture, VALID_RULES};
use monitor_allocator::order::Strategy;
use tokio_util::sync::CancellationToken;

/// Upper bound of every wait, far above what a healthy run needs.
const LIMIT: Duration = Duration::from_secs(30);

const OTHER_RULES: &str = r#"{"price_change": {"window_sec": 60, "rise_pct": 5}}"#;

#[tokio::test]
async fn poll_picks_up_new_task() {
    let fx = Fixture::new("newtask").await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();

    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(1, 5)).await;
    let report = plane.poll().await.unwrap();

    assert!(!report.full, "the second poll is incremental");
    let spec = fx
        .task_spec(task_id)
        .await
        .expect("new task published by the next poll");
    assert_eq!(spec.epoch, 1);
    assert_eq!(spec.batches.len(), 1);
    assert_eq!(fx.current_epoch(task_id).await, 1);
}

#[tokio::test]
async fn poll_picks_up_config_change() {
    let fx = Fixture::new("confpoll").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(2, 5)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    plane.poll().await.unwrap();

    fx.update_config(config_id, OTHER_RULES, 2).await;
    plane.poll().await.unwrap();

    let config = fx.task_spec(task_id).await.unwrap().config.unwrap();
    assert_eq!(config.version, 2);
    let rules = config.rules.as_token().unwrap();
    assert!(rules.price_change.is_some());
    assert!(rules.volume.is_none());
}

#[tokio::test]
async fn poll_allocates_added_target() {
    let fx = Fixture::new("addpoll").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(3, 99)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();

    fx.insert_targets(task_id, &addresses(4, 1)).await;
    plane.poll().await.unwrap();

    let spec = fx.task_spec(task_id).await.unwrap();
    assert_eq!(spec.epoch, 2);
    let counts: Vec<u32> = spec.batches.iter().map(|b| b.item_count).collect();
    assert_eq!(counts, vec![99, 1]);
}

#[tokio::test]
async fn deactivated_task_disappears() {
    let fx = Fixture::new("retire").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(5, 120)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    let batch_ids: Vec<u64> = fx
        .task_spec(task_id)
        .await
        .unwrap()
        .batches
        .iter()
        .map(|b| b.batch_id)
        .collect();
    assert_eq!(batch_ids.len(), 2);

    fx.set_task_status(task_id, 0).await;
    let report = plane.poll().await.unwrap();

    assert_eq!(report.retired, 1);
    assert!(fx.task_spec(task_id).await.is_none(), "task spec deleted");
    for batch_id in batch_ids {
        assert!(
            fx.batch_spec(batch_id).await.is_none(),
            "batch spec {batch_id} deleted"
        );
    }
}

#[tokio::test]
async fn restarted_allocator_retires_stopped_task() {
    let fx = Fixture::new("restart").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "sol", config_id).await;
    fx.insert_targets(task_id, &addresses(6, 3)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    drop(plane);

    // The task stops while no allocator runs; a new one finds its entries in the bucket.
    sqlx::query("UPDATE monitor_task_v2 SET del_flag = 1 WHERE id = ?")
        .bind(task_id)
        .execute(&fx.pool)
        .await
        .unwrap();
    let mut restarted = fx.plane(Strategy::Sticky, 99).await;
    restarted.poll().await.unwrap();

    assert!(fx.task_spec(task_id).await.is_none());
}

#[tokio::test]
async fn replaced_epoch_is_deleted_after_grace() {
    let fx = Fixture::new("grace").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("batch", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(7, 10)).await;
    let mut plane = fx.plane(Strategy::Sticky, 99).await;
    plane.poll().await.unwrap();
    let old_batch = fx.task_spec(task_id).await.unwrap().batches[0].batch_id;
    fx.insert_targets(task_id, &addresses(8, 1)).await;
    plane.poll().await.unwrap();
    assert_eq!(fx.current_epoch(task_id).await, 2);
    assert!(
        fx.batch_spec(old_batch).await.is_some(),
        "kept during the grace period"
    );

    // Age the switch beyond the default grace period of 600 s.
    sqlx::query("UPDATE monitor_batch_v2 SET create_time = NOW(3) - INTERVAL 1 HOUR WHERE task_id = ? AND epoch = 2")
        .bind(task_id)
        .execute(&fx.pool)
        .await
        .unwrap();
    let report = plane.poll().await.unwrap();

    assert_eq!(report.expired_batches, 1);
    assert!(fx.batch_rows(task_id, 1).await.is_empty());
    assert!(fx.items(task_id, 1).await.is_empty());
    assert!(fx.batch_spec(old_batch).await.is_none());
    assert_eq!(
        fx.items(task_id, 2).await.len(),
        11,
        "the current epoch stays"
    );
}

#[tokio::test]
async fn run_applies_redis_notice() {
    let fx = Fixture::new("redis").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(9, 4)).await;
    let mut settings = fx.settings();
    // Only the first poll runs during the test, so the change can only come through Redis.
    settings.config_poll_interval = Duration::from_secs(3600);
    let channel = settings.config_channel.clone();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(monitor_allocator::run(settings, shutdown.clone()));

    wait_for(LIMIT, || async { fx.task_spec(task_id).await })
        .await
        .expect("first poll publishes the task");
    let redis = fx.redis().host;
    let port = fx.redis().port;
    assert!(
        wait_subscribed(&redis, port, &channel).await,
        "allocator subscribed to {channel}"
    );

    fx.update_config(config_id, OTHER_RULES, 2).await;
    publish_notice(&redis, port, &channel, config_id, 2).await;

    let version = wait_for(LIMIT, || async {
        let version = fx.task_spec(task_id).await?.config?.version;
        (version == 2).then_some(version)
    })
    .await;
    assert_eq!(version, Some(2), "config reloaded on the notice");

    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn run_polls_without_redis() {
    let fx = Fixture::new("noredis").await;
    let mut settings = fx.settings();
    settings.redis.port = closed_port();
    settings.config_poll_interval = Duration::from_millis(200);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(monitor_allocator::run(settings, shutdown.clone()));

    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(10, 2)).await;
    let spec = wait_for(LIMIT, || async { fx.task_spec(task_id).await }).await;
    assert!(
        spec.is_some(),
        "task published by polling while Redis is down"
    );

    fx.set_task_status(task_id, 0).await;
    let gone = wait_for(LIMIT, || async {
        fx.task_spec(task_id).await.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "stopped task deleted by polling");

    shutdown.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn run_resubscribes_after_redis_restart() {
    let fx = Fixture::new("reconnect").await;
    let config_id = fx.insert_config(VALID_RULES).await;
    let task_id = fx.insert_task("smart", "eth", config_id).await;
    fx.insert_targets(task_id, &addresses(11, 2)).await;
    let port = closed_port();
    let mut server = start_redis(port).await;
    let mut settings = fx.settings();
    settings.redis.host = "127.0.0.1".into();
    settings.redis.port = port;
    // Only the first poll runs during the test, so the change can only come through Redis.
    settings.config_poll_interval = Duration::from_secs(3600);
    let channel = settings.config_channel.clone();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(monitor_allocator::run(settings, shutdown.clone()));
    wait_for(LIMIT, || async { fx.task_spec(task_id).await })
        .await
        .expect("first poll publishes the task");
    assert!(
        wait_subscribed("127.0.0.1", port, &channel).await,
        "allocator subscribed to {channel}"
    );

    server.kill().await.unwrap();
    let _restarted = start_redis(port).await;
    assert!(
        wait_subscribed("127.0.0.1", port, &channel).await,
        "allocator subscribed again after the restart"
    );
    fx.update_config(config_id, OTHER_RULES, 2).await;
    publish_notice("127.0.0.1", port, &channel, config_id, 2).await;

    let version = wait_for(LIMIT, || async {
        let version = fx.task_spec(task_id).await?.config?.version;
        (version == 2).then_some(version)
    })
    .await;
    assert_eq!(
        version,
        Some(2),
        "config reloaded on a notice after the restart"
    );

    shutdown.cancel();
    run.await.unwrap().unwrap();
}

/// Starts a private redis-server on a loopback port; it is killed when the handle drops.
async fn start_redis(port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server (install the redis-server package)");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let ready = wait_for(LIMIT, || async {
        client.get_multiplexed_async_connection().await.ok()
    })
    .await;
    assert!(
        ready.is_some(),
        "redis-server on port {port} accepts connections"
    );
    child
}

/// Waits until the channel has a subscriber on the Redis server at `host:port`.
async fn wait_subscribed(host: &str, port: u16, channel: &str) -> bool {
    let client = redis::Client::open(format!("redis://{host}:{port}/")).unwrap();
    wait_for(LIMIT, || async {
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut connection)
            .await
            .ok()?;
        (counts.first()?.1 >= 1).then_some(())
    })
    .await
    .is_some()
}

async fn publish_notice(host: &str, port: u16, channel: &str, config_id: u64, version: u64) {
    let client = redis::Client::open(format!("redis://{host}:{port}/")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(format!(
            r#"{{"configId": {config_id}, "version": {version}}}"#
        ))
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// Returns a loopback port with no listener: bound once, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
