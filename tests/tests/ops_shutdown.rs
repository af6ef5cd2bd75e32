//! Shutdown of the stages under load: SIGTERM drains and exits 0 within 10 s, nothing is lost
//! across the restart, and a second signal during a drain exits at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::time::Duration;

use monitor_tests::{wait_until, NatsServer, Process, Signal, TestEnv};
use ops_support::{
    alert_rows, allocate, expected_alert_ids, seed, start_devkit_server, start_feed_replay,
    stub_alert_counts,
};

/// The limit within which a stage must drain and exit after SIGTERM.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

async fn stop_cleanly(process: &mut Process) {
    let status = process.terminate_within(DRAIN_LIMIT).await;
    assert!(
        status.success(),
        "{} exited with {status} after SIGTERM:\n{}",
        process.name(),
        process.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_loses_no_alert() {
    let env = TestEnv::new("ops_sigterm").await;
    let task_id = seed(&env, &[]).await;
    let expected = expected_alert_ids(&env, task_id).await;
    // Ten times the recorded pace: the 3.5 minutes of trades take about 21 s.
    let (_feed, feed_address) = start_feed_replay(&env, "10", &[]).await;
    let stub_file = env.work_dir().join("backend-stub.jsonl");
    let (_stub, stub_address) = start_devkit_server(
        &env,
        "backend-stub",
        &["--out", stub_file.to_str().expect("utf-8 path")],
    )
    .await;
    allocate(&env, task_id).await;

    let ws_url = format!("ws://{stub_address}/websocket/monitor");
    let feed_url = format!("ws://{feed_address}");
    let notify_builder = env.stage("notify").arg("run").env("WS_URL", &ws_url);
    let evaluate_builder = env.stage("evaluate").arg("run");
    let ingest_builder = env
        .stage("ingest")
        .arg("run")
        .env("BIRDEYE_WS_URL", &feed_url)
        .env("BIRDEYE_API_KEY", "test-key");
    let _allocator = env.stage("allocator").arg("run").spawn("allocator");
    let mut evaluate_a = evaluate_builder.spawn("evaluate-a");
    let _evaluate_b = evaluate_builder.spawn("evaluate-b");
    let mut notify = notify_builder.spawn("notify");
    let mut ingest = ingest_builder.spawn("ingest");

    // Mid-stream: the first alert is stored, most of the trades are still to come.
    let started = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async { !alert_rows(&env, task_id).await.is_empty() },
    )
    .await;
    assert!(started, "no alert arrived:\n{}", ingest.log());
    let stored_before = alert_rows(&env, task_id).await.len();
    assert!(
        stored_before < expected.len(),
        "every alert arrived before the restart, so the restart tests nothing"
    );

    stop_cleanly(&mut evaluate_a).await;
    stop_cleanly(&mut notify).await;
    stop_cleanly(&mut ingest).await;
    assert!(
        ingest.log().contains("dropped_events=0"),
        "ingest published every event it held:\n{}",
        ingest.log()
    );
    assert!(evaluate_a.log().contains("event consumer stopped"));

    let _evaluate_a = evaluate_builder.spawn("evaluate-a");
    let _notify = notify_builder.spawn("notify");
    let _ingest = ingest_builder.spawn("ingest");

    let complete = wait_until(
        Duration::from_secs(180),
        Duration::from_millis(250),
        || async {
            let rows = alert_rows(&env, task_id).await;
            let pushed = stub_alert_counts(&stub_file);
            rows.len() >= expected.len() && rows.iter().all(|row| pushed.contains_key(&row.id))
        },
    )
    .await;
    // Give a late duplicate the chance to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = alert_rows(&env, task_id).await;
    let pushed = stub_alert_counts(&stub_file);
    assert!(
        complete,
        "{} expected, {} stored ({stored_before} before the restart), {} pushed",
        expected.len(),
        rows.len(),
        pushed.len()
    );

    let keys: std::collections::BTreeSet<String> =
        rows.iter().map(|row| row.alert_key.clone()).collect();
    assert_eq!(keys.len(), rows.len(), "an alert was stored twice");
    assert_eq!(keys, expected, "the stored alerts differ from the model");
    for row in &rows {
        assert_eq!(
            row.notify_status, "pushed",
            "alert {} not pushed",
            row.alert_key
        );
        assert_eq!(
            pushed.get(&row.id),
            Some(&1),
            "alert {} pushed {:?} times",
            row.alert_key,
            pushed.get(&row.id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let env = TestEnv::new("ops_second_signal").await;
    let mut nats = NatsServer::start(&env).await;
    let nats_url = nats.url();
    let task_id = seed(&env, &[]).await;
    let (_feed, feed_address) = start_feed_replay(&env, "5", &[]).await;
    let allocate = env
        .stage("allocator")
        .env("NATS_URL", &nats_url)
        .args(["allocate", "--task-id", &task_id.to_string()])
        .output("allocate", Duration::from_secs(60))
        .await;
    assert!(allocate.status.success(), "{allocate:?}");

    let mut ingest = env
        .stage("ingest")
        .arg("run")
        .env("NATS_URL", &nats_url)
        .env("BIRDEYE_WS_URL", format!("ws://{feed_address}"))
        .env("BIRDEYE_API_KEY", "test-key")
        .spawn("ingest");
    assert!(
        ingest
            .wait_for_log("feed connected and subscribed", Duration::from_secs(60))
            .await,
        "ingest never subscribed:\n{}",
        ingest.log()
    );

    // With NATS gone, the batch holds events it cannot publish, so its drain waits for them.
    nats.kill().await;
    assert!(
        ingest
            .wait_for_log("event frame publish failed", Duration::from_secs(60))
            .await,
        "ingest never failed to publish:\n{}",
        ingest.log()
    );
    ingest.send_signal(Signal::SIGTERM);
    assert!(
        ingest
            .wait_for_log("shutdown requested, draining", Duration::from_secs(10))
            .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ingest.send_signal(Signal::SIGTERM);
    let status = ingest
        .wait_within(Duration::from_secs(2))
        .await
        .unwrap_or_else(|| {
            panic!(
                "ingest still runs 2 s after the second signal:\n{}",
                ingest.log()
            )
        });
    assert_eq!(status.code(), Some(130), "{}", ingest.log());
    assert!(ingest.log().contains("second signal, exiting at once"));
}
