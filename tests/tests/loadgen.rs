//! `devkit loadgen` against the real services: short, slow runs that check the result line and
//! that alerts went through, not the figures in it.
//!
//! The pipeline run starts the four stage binaries itself, from the directory of the binaries
//! this test uses, on the test's own database and subject prefix (its `--run-id`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use monitor_tests::{bin, TestEnv};

/// Generous bound for a whole run, so the test fails only when loadgen is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(400);

/// Keys every pipeline result line carries, besides the per-process figures.
const PIPELINE_KEYS: [&str; 17] = [
    "mode",
    "targets",
    "rate",
    "duration_s",
    "events",
    "events_per_s",
    "large_trades",
    "alerts",
    "alerts_expected",
    "alerts_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "latency_p999_ms",
    "latency_max_ms",
    "complete",
    "frames",
    "run_id",
];

const STAGES: [&str; 5] = ["allocator", "evaluate", "notify", "ingest", "loadgen"];

fn bin_dir() -> PathBuf {
    let ingest = bin("ingest");
    ingest
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{} has no parent directory", ingest.display()))
}

/// Runs `devkit loadgen ARGS` and returns the fields of the result line it printed.
async fn run_loadgen(env: &TestEnv, name: &str, args: &[&str]) -> BTreeMap<String, String> {
    let output = env
        .stage("devkit")
        .arg("loadgen")
        .args(args)
        .output(name, RUN_TIMEOUT)
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "devkit loadgen {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with("loadgen "))
        .unwrap_or_else(|| panic!("devkit loadgen printed no result line: {stdout}"));
    line.split(' ')
        .skip(1)
        .map(|field| match field.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => panic!("result field {field:?} is not key=value in {line}"),
        })
        .collect()
}

fn number(fields: &BTreeMap<String, String>, key: &str) -> f64 {
    let value = &fields[key];
    value
        .parse()
        .unwrap_or_else(|_| panic!("{key}={value} is not a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_run_prints_every_field_and_alerts_arrive() {
    let env = TestEnv::new("loadgen_pipeline").await;
    let bin_dir = bin_dir();

    let fields = run_loadgen(
        &env,
        "loadgen-pipeline",
        &[
            "--targets",
            "150",
            "--rate",
            "400",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--drain-timeout",
            "120",
            "--run-id",
            env.id(),
            "--bin-dir",
            bin_dir.to_str().expect("utf-8 path"),
        ],
    )
    .await;

    for key in PIPELINE_KEYS {
        assert!(fields.contains_key(key), "{key} missing from {fields:?}");
    }
    for stage in STAGES {
        for suffix in ["cpu_s", "peak_rss_mib"] {
            let key = format!("{stage}_{suffix}");
            assert!(fields.contains_key(&key), "{key} missing from {fields:?}");
        }
    }
    assert_eq!(fields["mode"], "pipeline");
    assert_eq!(fields["run_id"], env.id());
    assert!(number(&fields, "events") > 0.0, "no event sent: {fields:?}");
    assert!(
        number(&fields, "alerts") > 0.0,
        "no alert arrived: {fields:?}"
    );
    assert_eq!(
        fields["alerts"], fields["alerts_expected"],
        "every large trade should raise one alert"
    );
    assert_eq!(fields["complete"], "yes");
    assert_ne!(fields["latency_p50_ms"], "none");
    assert!(number(&fields, "ingest_peak_rss_mib") > 0.0);

    // The run removes what it created, the bucket that notify made included.
    let js = env.jetstream().await;
    let subjects = env.subjects();
    for bucket in [
        subjects.tasks_bucket(),
        subjects.leases_bucket(),
        subjects.notify_status_bucket(),
    ] {
        assert!(
            js.get_key_value(&bucket).await.is_err(),
            "bucket {bucket} is left after the run"
        );
    }
    assert!(js.get_stream(subjects.alerts_stream()).await.is_err());
}

/// Runs `devkit loadgen raw` for 200 targets, 1 s of warm-up and 2 s measured, with `extra`.
async fn run_raw(env: &TestEnv, name: &str, extra: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec![
        "raw",
        "--targets",
        "200",
        "--duration",
        "2",
        "--warmup",
        "1",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--run-id", env.id()]);
    run_loadgen(env, name, &args).await
}

#[tokio::test]
async fn raw_run_consumes_the_frames_it_publishes() {
    let env = TestEnv::new("loadgen_raw").await;

    let fields = run_raw(&env, "loadgen-raw", &["--events-per-frame", "2.5"]).await;

    assert_eq!(fields["mode"], "raw");
    assert_eq!(
        fields["subjects"], "3",
        "one subject per batch of 99 targets"
    );
    assert!(
        number(&fields, "frames") > 0.0,
        "no frame consumed: {fields:?}"
    );
    assert!(number(&fields, "events") >= number(&fields, "frames") * 2.0);
    assert!(number(&fields, "events_per_s") > 0.0);
    assert_eq!(fields["publish_errors"], "0");
    assert!(fields.contains_key("loadgen_cpu_s"), "{fields:?}");
}

#[tokio::test]
async fn paced_raw_run_reports_hop_latency() {
    let env = TestEnv::new("loadgen_raw_paced").await;

    let fields = run_raw(&env, "loadgen-raw-paced", &["--rate", "300"]).await;

    assert_eq!(fields["rate"], "300");
    let frames_per_s = number(&fields, "frames_per_s");
    assert!(
        frames_per_s <= 330.0,
        "publishers keep to the rate: {fields:?}"
    );
    assert!(frames_per_s > 0.0, "no frame consumed: {fields:?}");
    assert!(number(&fields, "hop_latencies") > 0.0, "{fields:?}");
    assert!(number(&fields, "ack_latencies") > 0.0, "{fields:?}");
    assert_ne!(fields["hop_p50_ms"], "none");
    assert_ne!(fields["ack_p99_ms"], "none");
    assert!(number(&fields, "hop_p50_ms") <= number(&fields, "hop_p99_ms"));
}
