//! Secrets stay out of logs, metrics, errors and `--help`, and a wrong `NATS_CREDS` stops each
//! binary with one line.
//!
//! The pipeline runs as processes with a distinctive value for every secret setting: a MariaDB
//! user created for the test with its own password (`DB_PASSWORD`), user and password in the
//! NATS URL (the test server has no authorization, so it accepts them), `REDIS_PASSWORD` (the
//! test Redis has none, so the allocator's Redis login fails and its error is logged too),
//! `WS_TOKEN` (which the backend stub requires), and `BIRDEYE_API_KEY`. Once an alert has gone
//! through every stage, the test reads each stage's log, its `/metrics`, and the `--help`
//! output of each binary run with the same environment, and looks for each secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use monitor_tests::{free_port, wait_until, workspace_dir, Process, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STAGES: [&str; 4] = ["allocator", "evaluate", "notify", "ingest"];
const BINARIES: [&str; 5] = ["allocator", "ingest", "evaluate", "notify", "devkit"];
const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";

/// The secret values, each unlike anything else in a log.
struct Secrets {
    db: String,
    nats: String,
    redis: String,
    ws_token: String,
    birdeye: String,
}

impl Secrets {
    fn new() -> Secrets {
        let tag: u32 = rand::random();
        Secrets {
            db: format!("DbPw{tag:08x}Zq"),
            nats: format!("NatsPw{tag:08x}Zq"),
            redis: format!("RedisPw{tag:08x}Zq"),
            ws_token: format!("WsTok{tag:08x}Zq"),
            birdeye: format!("BirdKey{tag:08x}Zq"),
        }
    }

    fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("DB_PASSWORD", &self.db),
            ("NATS password", &self.nats),
            ("REDIS_PASSWORD", &self.redis),
            ("WS_TOKEN", &self.ws_token),
            ("BIRDEYE_API_KEY", &self.birdeye),
        ]
    }
}

/// Fails the test with every secret that `text` (named `place`) contains.
fn assert_no_secret(secrets: &Secrets, place: &str, text: &str) {
    let leaked: Vec<&str> = secrets
        .all()
        .iter()
        .filter(|(_, value)| text.contains(value))
        .map(|(name, _)| *name)
        .collect();
    assert!(leaked.is_empty(), "{place} contains {leaked:?}:\n{text}");
}

/// Creates a MariaDB user with `password` and every privilege on the test's database.
async fn create_db_user(env: &TestEnv, user: &str, password: &str) {
    // MariaDB takes neither the user nor the password of CREATE USER as a bound parameter;
    // both are letters and hex digits built by this test, so they cannot carry SQL.
    assert!(user
        .chars()
        .chain(password.chars())
        .all(|c| c.is_ascii_alphanumeric()));
    let statements = format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; \
         GRANT ALL PRIVILEGES ON `{}`.* TO '{user}'@'%'",
        env.db_name()
    );
    sqlx::raw_sql(&statements)
        .execute(env.pool())
        .await
        .expect("create the user");
}

async fn start_server(env: &TestEnv, name: &str, args: &[&str]) -> (Process, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let process = env
        .stage("devkit")
        .arg(name)
        .args(["--listen", address.as_str()])
        .args(args)
        .spawn(name);
    assert!(
        process
            .wait_for_log("listening on", Duration::from_secs(30))
            .await,
        "{name} did not start:\n{}",
        process.log()
    );
    (process, address)
}

/// `GET /metrics` over plain HTTP/1.0.
async fn metrics(address: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.starts_with("HTTP/1.").then_some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_metrics_and_help() {
    let env = TestEnv::new("secrets").await;
    let secrets = Secrets::new();
    let db_user = format!("u{:08x}", rand::random::<u32>());
    create_db_user(&env, &db_user, &secrets.db).await;

    let seed = env
        .stage("devkit")
        .arg("seed")
        .output("seed", Duration::from_secs(60))
        .await;
    assert!(seed.status.success(), "devkit seed failed: {seed:?}");
    let csv = workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv");
    let (_feed, feed_address) = start_server(
        &env,
        "feed-replay",
        &[
            "--csv",
            csv.to_str().expect("utf-8 path"),
            "--token",
            WETH,
            "--symbol",
            "WETH",
            "--chain",
            "ethereum",
            "--speed",
            "0",
        ],
    )
    .await;
    let stub_file = env.work_dir().join("backend-stub.jsonl");
    let (_stub, stub_address) = start_server(
        &env,
        "backend-stub",
        &[
            "--out",
            stub_file.to_str().expect("utf-8 path"),
            "--token",
            &secrets.ws_token,
        ],
    )
    .await;

    let nats_url = env.nats_settings().url.replacen(
        "nats://",
        &format!("nats://monitor:{}@", secrets.nats),
        1,
    );
    let secret_env = [
        ("DB_USER", db_user.clone()),
        ("DB_PASSWORD", secrets.db.clone()),
        ("NATS_URL", nats_url),
        ("REDIS_PASSWORD", secrets.redis.clone()),
        ("WS_TOKEN", secrets.ws_token.clone()),
        ("WS_URL", format!("ws://{stub_address}/websocket/monitor")),
        ("BIRDEYE_WS_URL", format!("ws://{feed_address}")),
        ("BIRDEYE_API_KEY", secrets.birdeye.clone()),
        ("CONFIG_POLL_INTERVAL", "1".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let mut metrics_addresses = Vec::new();
    let mut stages = Vec::new();
    for name in STAGES {
        let address = format!("127.0.0.1:{}", free_port());
        let process = env
            .stage(name)
            .arg("run")
            .envs(secret_env.clone())
            .env("METRICS_ADDR", &address)
            .spawn(name);
        metrics_addresses.push((name, address));
        stages.push(process);
    }

    // An alert that reached the stub went through every stage with the secret settings.
    let pushed = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            std::fs::read_to_string(&stub_file)
                .unwrap_or_default()
                .contains("\"type\":\"alert\"")
        },
    )
    .await;
    assert!(
        pushed,
        "no alert reached the backend stub; see {}",
        env.log_path("ingest").display()
    );
    // The allocator's Redis login fails (the test Redis has no password); wait for its error.
    let allocator = &stages[0];
    assert!(
        allocator
            .wait_for_log("redis unavailable", Duration::from_secs(30))
            .await,
        "the allocator logs its failed Redis login"
    );

    for (name, address) in &metrics_addresses {
        let body = metrics(address)
            .await
            .unwrap_or_else(|| panic!("{name} serves /metrics on {address}"));
        assert_no_secret(&secrets, &format!("/metrics of {name}"), &body);
    }
    for process in &stages {
        assert_no_secret(
            &secrets,
            &format!("log of {}", process.name()),
            &process.log(),
        );
    }
    for binary in BINARIES {
        for args in [vec!["--help"], vec!["run", "--help"]] {
            if binary == "devkit" && args.len() == 2 {
                continue;
            }
            let output = env
                .stage(binary)
                .args(&args)
                .envs(secret_env.clone())
                .output(&format!("{binary}-help"), Duration::from_secs(30))
                .await;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                text.contains("Usage"),
                "{binary} {args:?} printed help:\n{text}"
            );
            assert_no_secret(&secrets, &format!("{binary} {}", args.join(" ")), &text);
        }
    }
}

#[tokio::test]
async fn missing_nats_creds_file_stops_each_binary() {
    let env = TestEnv::new("missing_creds").await;
    let missing = env.work_dir().join("no-such.creds");
    let path = missing.to_str().expect("utf-8 path");
    for binary in STAGES {
        let output = env
            .stage(binary)
            .arg("run")
            .env("NATS_CREDS", path)
            .env("BIRDEYE_API_KEY", "key")
            .output(&format!("{binary}-creds"), Duration::from_secs(30))
            .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{binary} exits with 2: {stderr}"
        );
        assert_eq!(
            stderr.trim_end(),
            format!("error: invalid value \"{path}\" for NATS_CREDS (--nats-creds): failed to open {path}: No such file or directory (os error 2)"),
            "{binary} prints one line"
        );
    }
}
