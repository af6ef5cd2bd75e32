//! Logs and settings of the binaries, run as processes: JSON logs with span fields, secrets
//! kept out of logs and `--help`, one-line errors for malformed settings, and every setting
//! documented in both READMEs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use monitor_tests::{bin, wait_until, workspace_dir, Process, TestEnv};
use ops_support::{alert_rows, allocate, seed, start_devkit_server, start_feed_replay};
use serde_json::Value;

/// A random text that cannot appear in a log by chance.
fn secret(kind: &str) -> String {
    format!("{kind}-{:016x}", rand::random::<u64>())
}

/// Creates a MariaDB user with a password on the test's database, so that DB_PASSWORD is a
/// secret the stages really use.
async fn user_with_password(env: &TestEnv, password: &str) -> String {
    let user = format!("u{:08x}", rand::random::<u32>());
    for host in ["%", "localhost", "127.0.0.1"] {
        sqlx::query(&format!(
            "CREATE USER '{user}'@'{host}' IDENTIFIED BY '{password}'"
        ))
        .execute(env.pool())
        .await
        .expect("create the user");
        sqlx::query(&format!(
            "GRANT ALL PRIVILEGES ON `{}`.* TO '{user}'@'{host}'",
            env.db_name()
        ))
        .execute(env.pool())
        .await
        .expect("grant the user the test database");
    }
    user
}

/// Parses every line a process wrote (after the harness's `--- ` lines) as one JSON object.
fn json_lines(process: &Process) -> Vec<Value> {
    process
        .log()
        .lines()
        .filter(|line| !line.starts_with("--- "))
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{} wrote a line that is not JSON ({e}): {line}",
                    process.name()
                )
            });
            assert!(
                value.is_object(),
                "{}: not an object: {line}",
                process.name()
            );
            value
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_spans_and_no_secrets() {
    let env = TestEnv::new("ops_json_logs").await;
    let db_password = secret("dbpw");
    let ws_token = secret("wstoken");
    let api_key = secret("apikey");
    let user = user_with_password(&env, &db_password).await;
    let secrets_env: Vec<(&str, String)> = vec![
        ("DB_USER", user.clone()),
        ("DB_PASSWORD", db_password.clone()),
        ("WS_TOKEN", ws_token.clone()),
        ("BIRDEYE_API_KEY", api_key.clone()),
        ("LOG_FORMAT", "json".to_owned()),
    ];
    let with_secrets = |binary: &str| {
        env.stage(binary)
            .envs(secrets_env.iter().map(|(k, v)| (*k, v.as_str())))
    };

    let task_id = seed(
        &env,
        &[
            ("DB_USER", user.as_str()),
            ("DB_PASSWORD", db_password.as_str()),
        ],
    )
    .await;
    let (_feed, feed_address) = start_feed_replay(&env, "0", &["--api-key", &api_key]).await;
    let (_stub, stub_address) =
        start_devkit_server(&env, "backend-stub", &["--token", &ws_token]).await;
    allocate(&env, task_id).await;

    let mut allocator = with_secrets("allocator").arg("run").spawn("allocator");
    let mut evaluate = with_secrets("evaluate").arg("run").spawn("evaluate");
    let mut notify = with_secrets("notify")
        .arg("run")
        .env("WS_URL", format!("ws://{stub_address}/websocket/monitor"))
        .spawn("notify");
    let mut ingest = with_secrets("ingest")
        .arg("run")
        .env("BIRDEYE_WS_URL", format!("ws://{feed_address}"))
        .spawn("ingest");

    // Alerts in MySQL mean every stage ran with its secret: the database password, the feed's
    // key, and the stub's token (notify pushes only through an accepted connection).
    let flowed = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            alert_rows(&env, task_id)
                .await
                .iter()
                .any(|row| row.notify_status == "pushed")
        },
    )
    .await;
    assert!(
        flowed,
        "no alert was pushed:\n{}\n{}",
        ingest.log(),
        notify.log()
    );

    for process in [&mut allocator, &mut evaluate, &mut notify, &mut ingest] {
        let status = process.terminate_within(Duration::from_secs(10)).await;
        assert!(status.success(), "{} exited with {status}", process.name());
    }

    let has_secret = [
        (&allocator, true),
        (&evaluate, false),
        (&notify, true),
        (&ingest, true),
    ];
    for (process, has_secret) in has_secret {
        let name = process.name();
        let lines = json_lines(process);
        let settings: Vec<&Value> = lines
            .iter()
            .filter(|line| line["message"] == "settings in force")
            .collect();
        assert_eq!(settings.len(), 1, "{name} logs its settings once");
        let text = settings[0]["settings"]
            .as_str()
            .expect("settings is a field");
        if has_secret {
            assert!(
                text.contains("***"),
                "{name}: secrets are shown as ***: {text}"
            );
        }
        let log = process.log();
        for value in [&db_password, &ws_token, &api_key] {
            assert!(!log.contains(value.as_str()), "{name} logged a secret");
        }
    }

    let ingest_lines = json_lines(&ingest);
    let in_batch_span = ingest_lines.iter().any(|line| {
        line["span"]["name"] == "batch" && line["span"]["task_id"].as_u64() == Some(task_id)
    });
    assert!(
        in_batch_span,
        "ingest's batch logs carry the span's task_id"
    );
}

#[test]
fn help_hides_secret_values() {
    let secrets = [
        ("DB_PASSWORD", secret("dbpw")),
        ("WS_TOKEN", secret("wstoken")),
        ("BIRDEYE_API_KEY", secret("apikey")),
        ("REDIS_PASSWORD", secret("redispw")),
    ];
    for (binary, subcommand) in [
        ("allocator", "run"),
        ("ingest", "run"),
        ("evaluate", "run"),
        ("notify", "run"),
        ("devkit", "seed"),
    ] {
        let output = Command::new(bin(binary))
            .args([subcommand, "--help"])
            .env_clear()
            .envs(secrets.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("the binary runs");
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout);
        for (name, value) in &secrets {
            assert!(
                !text.contains(value.as_str()),
                "{binary} {subcommand} --help shows {name}"
            );
        }
    }
}

/// Runs `binary args` with only `variable=value` set and returns (exit code, stderr).
fn run_with(binary: &str, args: &[&str], variable: &str, value: &str) -> (Option<i32>, String) {
    let mut child = Command::new(bin(binary))
        .args(args)
        .env_clear()
        .env(variable, value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // A parse error ends the process at once; one that started instead is killed after 30 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn malformed_settings_stop_with_one_line() {
    let cases: [(&str, &[&str], &str, &str); 10] = [
        ("allocator", &["run"], "DB_PORT", "abc"),
        ("allocator", &["migrate"], "BATCH_SIZE", "0"),
        ("ingest", &["run"], "NATS_REPLICAS", "9"),
        ("ingest", &["run"], "METRICS_ADDR", "localhost"),
        ("evaluate", &["run"], "LOG_FORMAT", "xml"),
        ("evaluate", &["run"], "EVALUATE_BATCH", "0"),
        ("notify", &["run"], "WS_URL", "http://java.example/ws"),
        ("notify", &["run"], "WS_TOKEN", "two words"),
        ("notify", &["run"], "MONITOR_LOCALE", "fr"),
        ("devkit", &["seed"], "DB_PORT", "70000"),
    ];
    for (binary, args, variable, value) in cases {
        let (code, stderr) = run_with(binary, args, variable, value);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            code,
            Some(2),
            "{binary} with {variable}={value:?}: exit {code:?}, stderr {stderr}"
        );
        assert_eq!(
            lines.len(),
            1,
            "{binary} with {variable}={value:?} wrote {stderr}"
        );
        assert!(
            lines[0].contains(variable),
            "{binary}: the line names {variable}: {}",
            lines[0]
        );
        if variable == "WS_TOKEN" {
            assert!(!stderr.contains(value), "the token is echoed: {stderr}");
        } else {
            assert!(
                lines[0].contains(value),
                "{binary}: the line shows the value: {}",
                lines[0]
            );
        }
    }
}

/// Every variable (`[env: NAME`) that the help of a binary's command lists, with its default.
fn settings_in_help() -> Vec<(String, Option<String>)> {
    let commands: [(&str, &str); 9] = [
        ("allocator", "run"),
        ("allocator", "migrate"),
        ("ingest", "run"),
        ("evaluate", "run"),
        ("evaluate", "replay"),
        ("notify", "run"),
        ("devkit", "seed"),
        ("devkit", "feed-replay"),
        ("devkit", "backend-stub"),
    ];
    let mut found = Vec::new();
    for (binary, subcommand) in commands {
        let output = Command::new(bin(binary))
            .args([subcommand, "--help"])
            .env_clear()
            .output()
            .expect("the binary runs");
        let text = String::from_utf8_lossy(&output.stdout).replace('\n', " ");
        for part in text.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let rest = &part[name.len()..];
            let default = rest
                .split_once("] [default: ")
                .filter(|(before, _)| !before.contains('['))
                .and_then(|(_, after)| after.split_once(']'))
                .map(|(value, _)| value.to_owned());
            found.push((name, default));
        }
    }
    found
}

/// The table rows of a README that name `variable` in backticks.
fn rows<'a>(readme: &'a str, variable: &str) -> Vec<&'a str> {
    readme
        .lines()
        .filter(|line| line.starts_with("| ") && line.contains(&format!("`{variable}`")))
        .collect()
}

#[test]
fn settings_are_documented_in_both_readmes() {
    let english = std::fs::read_to_string(workspace_dir().join("README.md")).expect("README.md");
    let chinese =
        std::fs::read_to_string(workspace_dir().join("README.zh-CN.md")).expect("README.zh-CN.md");
    let settings = settings_in_help();
    assert!(settings.len() > 30, "too few settings found: {settings:?}");

    let mut names = BTreeSet::new();
    for (name, default) in settings {
        for (readme, text) in [("README.md", &english), ("README.zh-CN.md", &chinese)] {
            let rows = rows(text, &name);
            assert!(!rows.is_empty(), "{readme} does not document {name}");
            if let Some(default) = &default {
                assert!(
                    rows.iter().any(|row| row.contains(&format!("`{default}`"))),
                    "{readme}: the row of {name} does not give its default `{default}`"
                );
            }
        }
        names.insert(name);
    }
    for name in ["RUST_LOG", "METRICS_ADDR", "NATS_REPLICAS"] {
        assert!(
            !rows(&english, name).is_empty() && !rows(&chinese, name).is_empty(),
            "{name}"
        );
    }
    assert!(names.contains("DB_PASSWORD"));
}

#[tokio::test]
async fn unreachable_nats_logs_server_without_password() {
    let env = TestEnv::new("ops_logs_nats_down").await;
    let password = secret("nats-password");
    // Nothing listens on a free port, so every connection attempt fails.
    let address = format!("127.0.0.1:{}", monitor_tests::free_port());
    let mut evaluate = env
        .stage("evaluate")
        .arg("run")
        .env("NATS_URL", format!("nats://monitor:{password}@{address}"))
        // The binary's own default, which the test harness replaces with plain `info`.
        .env("RUST_LOG", monitor_core::telemetry::DEFAULT_FILTER)
        .spawn("evaluate");

    let logged = evaluate
        .wait_for_log("NATS connection failed, retrying", Duration::from_secs(30))
        .await;
    evaluate.kill().await;
    let log = evaluate.log();

    assert!(logged, "no connection failure logged:\n{log}");
    let line = log
        .lines()
        .find(|line| line.contains("NATS connection failed, retrying"))
        .unwrap();
    assert!(line.contains(&address), "the line names no server: {line}");
    assert!(line.contains("WARN"), "not a warning: {line}");
    assert!(!log.contains(&password), "the password is logged:\n{log}");
    assert!(
        !log.contains("client error: nats"),
        "the client's own line without the server is still logged:\n{log}"
    );
}

/// A stage asked to stop while NATS is unreachable stops during start-up with a clean exit,
/// instead of waiting for the streams' creation to time out and exiting with an error.
#[tokio::test]
async fn stage_stops_cleanly_while_nats_is_down() {
    let env = TestEnv::new("ops_logs_stop_nats_down").await;
    let address = format!("127.0.0.1:{}", monitor_tests::free_port());
    let mut stages: Vec<Process> = ["allocator", "ingest", "evaluate", "notify"]
        .into_iter()
        .map(|name| {
            env.stage(name)
                .arg("run")
                .env("NATS_URL", format!("nats://{address}"))
                .spawn(name)
        })
        .collect();

    for stage in &mut stages {
        let retrying = stage
            .wait_for_log("NATS connection failed, retrying", Duration::from_secs(30))
            .await;
        assert!(
            retrying,
            "{} never tried NATS:\n{}",
            stage.name(),
            stage.log()
        );
        let status = stage.terminate().await;
        let log = stage.log();
        assert!(
            status.success(),
            "{} exited with {status}:\n{log}",
            stage.name()
        );
        let stopped = format!("{} stopped during start-up", stage.name());
        assert!(log.contains(&stopped), "no {stopped:?} in:\n{log}");
        assert!(!log.contains("ERROR"), "an error is logged:\n{log}");
    }
}
