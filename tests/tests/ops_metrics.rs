//! `/metrics` and `/healthz` of the four long-running binaries, scraped over HTTP while they run
//! as processes with `METRICS_ADDR` on a free port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::collections::BTreeMap;
use std::time::Duration;

use monitor_tests::{wait_until, NatsServer, TestEnv};
use ops_support::{
    alert_rows, allocate, expected_alert_ids, samples, seed, start_devkit_server,
    start_feed_replay, stub_alert_counts, total, Stage,
};

/// Waits until `/healthz` of the stage returns 200.
async fn wait_healthy(stage: &Stage) -> bool {
    wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { matches!(stage.health().await, Some((200, _))) },
    )
    .await
}

/// Scrapes the stage every 500 ms until `check` holds on its metrics (at most 30 s) and
/// returns the last scrape.
async fn metrics_when(stage: &Stage, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Some(text) = stage.metrics().await {
            let holds = check(&text);
            last = text;
            if holds {
                return last;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn value(metrics: &str, series: &str) -> f64 {
    samples(metrics, series.split('{').next().unwrap_or(series))
        .into_iter()
        .find(|(name, _)| name == series)
        .map(|(_, value)| value)
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

fn assert_names(stage: &str, metrics: &str, names: &[&str]) {
    for name in names {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{stage} does not expose {name}:\n{metrics}"
        );
    }
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("monitor_"),
            "{stage}: {line} lacks the monitor_ prefix"
        );
    }
    assert!(
        metrics.ends_with("# EOF\n"),
        "{stage}: the exposition is not complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_stages_report_metrics_and_health() {
    let env = TestEnv::new("ops_metrics").await;
    let task_id = seed(&env, &[]).await;
    let expected = expected_alert_ids(&env, task_id).await;
    let (_feed, feed_address) = start_feed_replay(&env, "0", &[]).await;
    let stub_file = env.work_dir().join("backend-stub.jsonl");
    let (_stub, stub_address) = start_devkit_server(
        &env,
        "backend-stub",
        &["--out", stub_file.to_str().expect("utf-8 path")],
    )
    .await;
    allocate(&env, task_id).await;

    let allocator = Stage::start(&env, "allocator", "allocator", &[]);
    let evaluate = Stage::start(&env, "evaluate", "evaluate", &[]);
    let ws_url = format!("ws://{stub_address}/websocket/monitor");
    let notify = Stage::start(&env, "notify", "notify", &[("WS_URL", ws_url)]);
    let feed_url = format!("ws://{feed_address}");
    let ingest = Stage::start(
        &env,
        "ingest",
        "ingest",
        &[
            ("BIRDEYE_WS_URL", feed_url),
            ("BIRDEYE_API_KEY", "test-key".into()),
        ],
    );
    for stage in [&allocator, &evaluate, &notify, &ingest] {
        assert!(
            wait_healthy(stage).await,
            "{} never reported healthy; /healthz: {:?}\n{}",
            stage.process.name(),
            stage.health().await,
            stage.process.log()
        );
        assert_eq!(stage.health().await, Some((200, "ok\n".to_owned())));
    }

    let delivered = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let rows = alert_rows(&env, task_id).await;
            let pushed = stub_alert_counts(&stub_file);
            rows.len() >= expected.len() && rows.iter().all(|row| pushed.contains_key(&row.id))
        },
    )
    .await;
    assert!(delivered, "not every expected alert arrived");
    let expected_count = expected.len() as f64;
    let mut expected_by_type: BTreeMap<String, f64> = BTreeMap::new();
    for row in alert_rows(&env, task_id).await {
        *expected_by_type.entry(row.alert_type).or_default() += 1.0;
    }

    // Every expected alert can be stored before ingest has read and published the last
    // frames of the recording, so the scrape waits for the counts asserted below.
    let feed_frames = |m: &str, channel: &str| {
        samples(m, "monitor_ingest_feed_frames_total")
            .iter()
            .filter(|(series, _)| series.contains(&format!("channel=\"{channel}\"")))
            .map(|(_, count)| count)
            .sum::<f64>()
    };
    let metrics = metrics_when(&ingest, |m| {
        feed_frames(m, "trades") >= 1000.0
            && feed_frames(m, "prices") > 0.0
            && total(m, "monitor_ingest_events_published_total") >= 1000.0
    })
    .await;
    assert_names(
        "ingest",
        &metrics,
        &[
            "monitor_ingest_feed_frames",
            "monitor_ingest_feed_connections",
            "monitor_ingest_feed_reconnects",
            "monitor_ingest_feed_gaps",
            "monitor_ingest_frames_published",
            "monitor_ingest_events_published",
            "monitor_ingest_publish_latency_seconds",
            "monitor_ingest_leases_held",
        ],
    );
    assert!(
        value(
            &metrics,
            "monitor_ingest_feed_frames_total{channel=\"trades\"}"
        ) >= 1000.0
    );
    assert!(
        value(
            &metrics,
            "monitor_ingest_feed_frames_total{channel=\"prices\"}"
        ) > 0.0
    );
    assert_eq!(
        value(
            &metrics,
            "monitor_ingest_feed_connections{channel=\"trades\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &metrics,
            "monitor_ingest_feed_connections{channel=\"prices\"}"
        ),
        1.0
    );
    let frames_published = total(&metrics, "monitor_ingest_frames_published_total");
    let events_published = total(&metrics, "monitor_ingest_events_published_total");
    assert!(
        events_published >= 1000.0,
        "the 1,000 trades and their candles: {events_published}"
    );
    assert!(total(&metrics, "monitor_ingest_publish_latency_seconds_count") >= frames_published);
    assert!(value(&metrics, "monitor_ingest_leases_held") >= 1.0);

    let metrics = metrics_when(&evaluate, |m| {
        total(m, "monitor_evaluate_events_judged_total") >= events_published
            && samples(m, "monitor_consumer_pending").len() == 1
            && total(m, "monitor_consumer_pending") == 0.0
    })
    .await;
    assert_names(
        "evaluate",
        &metrics,
        &[
            "monitor_evaluate_frames_judged",
            "monitor_evaluate_events_judged",
            "monitor_evaluate_alerts_raised",
            "monitor_evaluate_frames_settled",
            "monitor_evaluate_alert_ack_latency_seconds",
            "monitor_evaluate_task_config_version",
            "monitor_evaluate_tasks_cached",
            "monitor_consumer_pending",
            "monitor_consumer_ack_pending",
        ],
    );
    assert!(total(&metrics, "monitor_evaluate_frames_judged_total") >= frames_published);
    assert!(
        value(
            &metrics,
            "monitor_evaluate_frames_settled_total{result=\"ack\"}"
        ) >= frames_published
    );
    for (alert_type, count) in &expected_by_type {
        let raised = value(
            &metrics,
            &format!("monitor_evaluate_alerts_raised_total{{alert_type=\"{alert_type}\"}}"),
        );
        assert!(
            raised >= *count,
            "{alert_type}: {raised} raised, {count} stored"
        );
    }
    let version = value(
        &metrics,
        &format!("monitor_evaluate_task_config_version{{task_id=\"{task_id}\"}}"),
    );
    assert!(version >= 1.0);
    let lag = samples(&metrics, "monitor_consumer_pending");
    assert!(
        lag.iter()
            .any(|(series, value)| series.contains("consumer=\"evaluate\"") && *value == 0.0),
        "the evaluate consumer has no backlog: {lag:?}"
    );

    let metrics = metrics_when(&notify, |m| {
        total(m, "monitor_notify_alerts_pushed_total") >= expected_count
            && total(m, "monitor_notify_outbox_pending") == 0.0
            && samples(m, "monitor_consumer_pending").len() == 2
            && total(m, "monitor_consumer_pending") == 0.0
    })
    .await;
    assert_names(
        "notify",
        &metrics,
        &[
            "monitor_notify_alerts_received",
            "monitor_notify_alerts_pushed",
            "monitor_notify_alert_ack_latency_seconds",
            "monitor_notify_websocket_connected",
            "monitor_notify_websocket_sessions",
            "monitor_notify_outbox_pending",
            "monitor_consumer_pending",
        ],
    );
    assert_eq!(
        total(&metrics, "monitor_notify_alerts_pushed_total"),
        expected_count
    );
    assert_eq!(value(&metrics, "monitor_notify_outbox_pending"), 0.0);
    assert_eq!(value(&metrics, "monitor_notify_websocket_connected"), 1.0);
    assert!(value(&metrics, "monitor_notify_websocket_sessions_total") >= 1.0);
    for (alert_type, count) in &expected_by_type {
        let received = value(
            &metrics,
            &format!("monitor_notify_alerts_received_total{{alert_type=\"{alert_type}\"}}"),
        );
        assert!(
            received >= *count,
            "{alert_type}: {received} received, {count} stored"
        );
    }
    assert!(total(&metrics, "monitor_notify_alert_ack_latency_seconds_count") >= expected_count);
    assert_eq!(total(&metrics, "monitor_consumer_pending"), 0.0);

    let metrics = metrics_when(&allocator, |m| {
        total(m, "monitor_allocator_tasks_published") >= 1.0
    })
    .await;
    assert_names(
        "allocator",
        &metrics,
        &[
            "monitor_allocator_polls",
            "monitor_allocator_epochs_written",
            "monitor_allocator_tasks_published",
            "monitor_allocator_task_config_version",
        ],
    );
    assert!(value(&metrics, "monitor_allocator_polls_total{result=\"ok\"}") >= 1.0);
    assert_eq!(value(&metrics, "monitor_allocator_tasks_published"), 1.0);
    assert_eq!(
        value(
            &metrics,
            &format!("monitor_allocator_task_config_version{{task_id=\"{task_id}\"}}")
        ),
        version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_follows_nats_connection() {
    let env = TestEnv::new("ops_healthz").await;
    let mut nats = NatsServer::start(&env).await;
    let evaluate = Stage::start(&env, "evaluate", "evaluate", &[("NATS_URL", nats.url())]);
    assert!(
        wait_healthy(&evaluate).await,
        "evaluate never healthy:\n{}",
        evaluate.process.log()
    );

    nats.stop().await;
    let unhealthy = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            matches!(evaluate.health().await, Some((503, body)) if body.starts_with("nats: "))
        },
    )
    .await;
    assert!(
        unhealthy,
        "/healthz stayed {:?} with NATS down",
        evaluate.health().await
    );

    nats.start_again().await;
    assert!(
        wait_healthy(&evaluate).await,
        "evaluate not healthy after NATS returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_port_in_use_stops_the_stage() {
    let env = TestEnv::new("ops_metrics_port").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("bound address").to_string();
    let mut evaluate = env
        .stage("evaluate")
        .arg("run")
        .env("METRICS_ADDR", &address)
        .env("LOG_FORMAT", "json")
        .spawn("evaluate");
    let status = evaluate
        .wait_within(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("evaluate kept running with METRICS_ADDR {address} taken"));
    assert!(!status.success());
    let log = evaluate.log();
    // The fatal error is a JSON line too, naming the setting and the address.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.starts_with("--- "))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let error = lines
        .iter()
        .find(|line| line["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error line: {log}"));
    let text = error["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("METRICS_ADDR") && text.contains(&address),
        "{log}"
    );
}
