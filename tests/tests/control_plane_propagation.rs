//! The config propagation benchmark runs against the real services and stages and reports its
//! figures. The figures themselves are printed, never asserted: they depend on the machine.

// The test prints the benchmark's result line for `--nocapture`, and panics on a broken
// set-up: a panic is the test failure.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use monitor_tests::{bin, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_benchmark_reports_percentiles() {
    let env = TestEnv::new("cp_bench").await;
    let bin_dir = bin("allocator")
        .parent()
        .expect("binary directory")
        .to_owned();
    let output = env
        .stage("devkit")
        .args([
            "loadgen",
            "config-propagation",
            "--samples",
            "3",
            "--pause",
            "2.2",
        ])
        .args(["--run-id", env.id()])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--log-dir")
        .arg(env.work_dir().join("loadgen"))
        .output("loadgen", Duration::from_secs(300))
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen failed: {output:?}");

    let line = stdout
        .lines()
        .find(|line| line.starts_with("loadgen mode=config-propagation"))
        .unwrap_or_else(|| panic!("no result line in {stdout}"));
    println!("{line}");
    let field = |key: &str| -> f64 {
        line.split(' ')
            .find_map(|pair| pair.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing in {line}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key} is not a number in {line}: {e}"))
    };
    assert_eq!(field("samples"), 3.0);
    let (p50, p99, max) = (field("p50_ms"), field("p99_ms"), field("max_ms"));
    assert!(p50 > 0.0, "{line}");
    assert!(p50 <= p99, "{line}");
    assert!(p99 <= max, "{line}");
}
