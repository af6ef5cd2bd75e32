//! Crash suite: the whole pipeline under a steady replay of real trades, with one fault at a
//! time, checked against the alerts the same input produces without faults.
//!
//! The four stages run as processes on a private nats-server and a private MariaDB, with
//! `devkit feed-replay
//! --loop` serving the 1,000 recorded ETH/USDT trades and `devkit backend-stub` playing the
//! Java side. Each fault gets a task of its own (`devkit seed`), because feed-replay starts a
//! connection's replay at the first row: after ingest restarts, the task's replay starts
//! again and must catch up with the point of the fault, which takes as long as the task has
//! run. The previous task is stopped when the next one starts, so the load stays one task.
//!
//! Faults: SIGKILL of ingest, evaluate, notify and allocator (each restarted at once), a
//! restart of the private nats-server, a restart of the private MariaDB, Redis stopped for the
//! outage time and the backend stub stopped for the outage time. Redis is the shared test
//! Redis (`monitor_tests::stop_service`), which only the tests of this test binary use
//! meanwhile.
//!
//! Expected alerts come from the independent model `monitor_tests::recorded`. feed-replay
//! shifts each pass by the recorded span rounded up to whole minutes (4 minutes for this file),
//! so every pass after the first sees the same history as the one before: the model is run over
//! three passes, pass 2 is checked to equal pass 1 shifted, and later passes are pass 1 shifted.
//!
//! After each fault the check waits until the task's alerts reach two passes past the pass
//! of the fault (so the stages are past it), then compares every complete pass: each expected
//! alert is in MySQL exactly once, no other alert is there, and the backend stub received each
//! at least once. One line per fault goes to stderr (`cargo test -- --nocapture` shows it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use monitor_core::messages::TaskType;
use monitor_core::rules::{parse_config, ConfigRow, Rules, TokenRules};
use monitor_tests::recorded::{expected_alerts, load_trades, ExpectedAlert, RecordedTrade};
use monitor_tests::{
    free_port, start_service, stop_service, wait_for, workspace_dir, MariaDb, NatsServer, Process,
    ProcessBuilder, TestEnv,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::{MySqlPool, Row};

const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
const STAGES: [&str; 4] = ["allocator", "evaluate", "notify", "ingest"];
/// How long a stage or server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillIngest,
    KillEvaluate,
    KillNotify,
    KillAllocator,
    RestartNats,
    RestartMysql,
    StopRedis,
    StopBackendStub,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillIngest => "kill-ingest",
            Fault::KillEvaluate => "kill-evaluate",
            Fault::KillNotify => "kill-notify",
            Fault::KillAllocator => "kill-allocator",
            Fault::RestartNats => "restart-nats",
            Fault::RestartMysql => "restart-mysql",
            Fault::StopRedis => "stop-redis",
            Fault::StopBackendStub => "stop-backend-stub",
        }
    }
}

/// What one run of the suite does.
#[derive(Debug, Clone)]
struct Options {
    /// How many times each fault is injected.
    rounds: u32,
    /// How long Redis and the backend stub stay stopped.
    outage: Duration,
    /// Maximum random wait between a task's first alert and its fault.
    max_delay: Duration,
    /// feed-replay `--speed`.
    speed: u32,
    seed: u64,
}

impl Options {
    /// Returns the always-on variant: each fault once, 10 s outages.
    fn short() -> Options {
        Options {
            rounds: 1,
            outage: Duration::from_secs(10),
            max_delay: Duration::from_secs(6),
            speed: 20,
            seed: rand::random(),
        }
    }

    /// Reads the long variant that `scripts/chaos` runs: `CHAOS_ROUNDS` (10),
    /// `CHAOS_OUTAGE_SECS` (60), `CHAOS_SPEED` (20), `CHAOS_SEED` (random).
    fn from_env() -> Options {
        let number = |name: &str, default: u64| -> u64 {
            match std::env::var(name) {
                Ok(value) => value
                    .parse()
                    .unwrap_or_else(|_| panic!("{name} must be a whole number, got {value:?}")),
                Err(_) => default,
            }
        };
        Options {
            rounds: number("CHAOS_ROUNDS", 10) as u32,
            outage: Duration::from_secs(number("CHAOS_OUTAGE_SECS", 60)),
            max_delay: Duration::from_secs(20),
            speed: number("CHAOS_SPEED", 20) as u32,
            seed: number("CHAOS_SEED", rand::random()),
        }
    }

    fn faults(&self) -> Vec<Fault> {
        vec![
            Fault::KillIngest,
            Fault::KillEvaluate,
            Fault::KillNotify,
            Fault::KillAllocator,
            Fault::RestartNats,
            Fault::StopRedis,
            Fault::StopBackendStub,
            Fault::RestartMysql,
        ]
    }

    /// Bound of one check: catching up with the fault, two more passes, and slack for lease
    /// expiry and redelivery.
    fn check_timeout(&self) -> Duration {
        Duration::from_secs(300) + self.outage
    }
}

// ---------------------------------------------------------------------------------------------
// The expected alerts.

/// Expected alerts of any pass of the looping replay, from the model.
struct Expected {
    /// Start of the minute of the first trade: pass `p` covers
    /// `origin + p * cycle ..< origin + (p + 1) * cycle`, candles included.
    origin_ms: i64,
    cycle_ms: i64,
    cooldown_ms: i64,
    first_pass: Vec<ExpectedAlert>,
    /// The alerts of pass 1, which repeat shifted in every later pass.
    steady_pass: Vec<ExpectedAlert>,
}

impl Expected {
    fn new(trades: &[RecordedTrade], rules: &TokenRules) -> Expected {
        let first = trades.first().expect("the recording has trades").time_ms;
        let last = trades.last().expect("the recording has trades").time_ms;
        // feed-replay's shift between passes: the span rounded up to whole minutes.
        let cycle_ms = (last - first + 1 + 59_999).div_euclid(60_000).max(1) * 60_000;
        let origin_ms = first.div_euclid(60_000) * 60_000;
        let cooldown_ms = i64::from(rules.cooldown_sec) * 1000;
        assert_eq!(
            cycle_ms % cooldown_ms,
            0,
            "a pass shifts cooldown buckets by whole buckets"
        );
        assert_eq!(
            origin_ms % cooldown_ms,
            0,
            "passes start at a cooldown bucket"
        );

        let three_passes: Vec<RecordedTrade> = (0..3)
            .flat_map(|pass| trades.iter().map(move |t| shifted(t, pass * cycle_ms)))
            .collect();
        let all = expected_alerts(&three_passes, rules);
        let expected = Expected {
            origin_ms,
            cycle_ms,
            cooldown_ms,
            first_pass: Vec::new(),
            steady_pass: Vec::new(),
        };
        let of_pass = |pass: i64| -> Vec<ExpectedAlert> {
            all.iter()
                .filter(|a| expected.pass_of(a.event_time_ms) == pass)
                .cloned()
                .collect()
        };
        let (first_pass, steady_pass, third) = (of_pass(0), of_pass(1), of_pass(2));
        let shifted_steady: Vec<ExpectedAlert> =
            steady_pass.iter().map(|a| expected.shift(a, 1)).collect();
        assert_eq!(
            ids(&third),
            ids(&shifted_steady),
            "pass 2 of the model is not pass 1 shifted: the replay is not periodic"
        );
        assert!(
            !steady_pass.is_empty(),
            "the seeded rules fire in every pass"
        );
        Expected {
            first_pass,
            steady_pass,
            ..expected
        }
    }

    fn pass_of(&self, time_ms: i64) -> i64 {
        (time_ms - self.origin_ms).div_euclid(self.cycle_ms)
    }

    fn shift(&self, alert: &ExpectedAlert, passes: i64) -> ExpectedAlert {
        let event_time_ms = alert.event_time_ms + passes * self.cycle_ms;
        ExpectedAlert {
            bucket: event_time_ms.div_euclid(self.cooldown_ms),
            event_time_ms,
            ..alert.clone()
        }
    }

    /// Alert ids of passes `0..=last`, with the pass of each.
    fn ids_through(&self, task_id: u64, last: i64) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for alert in &self.first_pass {
            out.insert(alert.id(task_id, WETH), 0);
        }
        for pass in 1..=last {
            for alert in &self.steady_pass {
                out.insert(self.shift(alert, pass - 1).id(task_id, WETH), pass);
            }
        }
        out
    }

    /// Pass of an alert id's cooldown bucket (its last part).
    fn pass_of_id(&self, id: &str) -> Option<i64> {
        let bucket: i64 = id.rsplit(':').next()?.parse().ok()?;
        Some(self.pass_of(bucket * self.cooldown_ms))
    }
}

fn shifted(trade: &RecordedTrade, by_ms: i64) -> RecordedTrade {
    RecordedTrade {
        time_ms: trade.time_ms + by_ms,
        ..trade.clone()
    }
}

fn ids(alerts: &[ExpectedAlert]) -> Vec<String> {
    alerts.iter().map(|a| a.id(0, WETH)).collect()
}

// ---------------------------------------------------------------------------------------------
// The pipeline.

struct Pipeline {
    env: TestEnv,
    nats: NatsServer,
    mariadb: MariaDb,
    /// A pool on the private MariaDB, which reconnects after its restarts.
    pool: MySqlPool,
    builders: BTreeMap<&'static str, ProcessBuilder>,
    stages: BTreeMap<&'static str, Process>,
    stub_builder: ProcessBuilder,
    stub: Option<Process>,
    stub_file: PathBuf,
    _feed: Process,
}

impl Pipeline {
    async fn start(env: TestEnv, speed: u32) -> Pipeline {
        let nats = NatsServer::start(&env).await;
        let mariadb = MariaDb::start(&env).await;
        let pool = monitor_core::db::migrate(&mariadb.settings(&env))
            .await
            .expect("the test database is created on the private MariaDB");
        let csv = trades_csv();
        let feed_address = format!("127.0.0.1:{}", free_port());
        let feed = env
            .stage("devkit")
            .arg("feed-replay")
            .args([
                "--listen",
                &feed_address,
                "--csv",
                csv.to_str().expect("utf-8 path"),
            ])
            .args(["--token", WETH, "--symbol", "WETH", "--chain", "ethereum"])
            .args(["--speed", &speed.to_string(), "--loop"])
            .spawn("feed-replay");
        wait_for_log(&feed, "listening on").await;

        let stub_address = format!("127.0.0.1:{}", free_port());
        let stub_file = env.work_dir().join("backend-stub.jsonl");
        let stub_builder = env.stage("devkit").arg("backend-stub").args([
            "--listen",
            &stub_address,
            "--out",
            stub_file.to_str().expect("utf-8 path"),
        ]);
        let stub = stub_builder.spawn("backend-stub");
        wait_for_log(&stub, "listening on").await;

        let builders = STAGES
            .into_iter()
            .map(|name| {
                let builder = env
                    .stage(name)
                    .arg("run")
                    .envs(mariadb.stage_env())
                    .env("NATS_URL", nats.url())
                    .env("CONFIG_POLL_INTERVAL", "1")
                    .env("WS_URL", format!("ws://{stub_address}/websocket/monitor"))
                    .env("BIRDEYE_WS_URL", format!("ws://{feed_address}"))
                    .env("BIRDEYE_API_KEY", "chaos-key");
                (name, builder)
            })
            .collect::<BTreeMap<_, _>>();
        let stages = builders
            .iter()
            .map(|(name, builder)| (*name, builder.spawn(name)))
            .collect();
        Pipeline {
            env,
            nats,
            mariadb,
            pool,
            builders,
            stages,
            stub_builder,
            stub: Some(stub),
            stub_file,
            _feed: feed,
        }
    }

    /// Seeds a new task with `devkit seed` and stops `previous`, so one task runs at a time.
    async fn next_task(&self, name: &str, previous: Option<u64>) -> u64 {
        let output = self
            .env
            .stage("devkit")
            .envs(self.mariadb.stage_env())
            .args(["seed", "--task-name", name])
            .output("seed", Duration::from_secs(60))
            .await;
        assert!(output.status.success(), "devkit seed failed: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let task_id = stdout
            .lines()
            .find_map(|line| line.strip_prefix("task_id="))
            .and_then(|id| id.trim().parse().ok())
            .unwrap_or_else(|| panic!("devkit seed printed no task_id: {stdout}"));
        if let Some(previous) = previous {
            sqlx::query("UPDATE monitor_task_v2 SET status = 0 WHERE id = ?")
                .bind(previous)
                .execute(&self.pool)
                .await
                .expect("the previous task can be stopped");
        }
        task_id
    }

    async fn restart_stage(&mut self, name: &'static str) {
        let builder = &self.builders[name];
        let process = self.stages.get_mut(name).expect("every stage runs");
        process.kill().await;
        *process = builder.spawn(name);
    }

    async fn inject(&mut self, fault: Fault, outage: Duration) {
        match fault {
            Fault::KillIngest => self.restart_stage("ingest").await,
            Fault::KillEvaluate => self.restart_stage("evaluate").await,
            Fault::KillNotify => self.restart_stage("notify").await,
            Fault::KillAllocator => self.restart_stage("allocator").await,
            Fault::RestartNats => self.nats.restart().await,
            Fault::RestartMysql => {
                self.mariadb.stop().await;
                self.mariadb.start_again().await;
            }
            Fault::StopRedis => {
                stop_service("redis").await;
                tokio::time::sleep(outage).await;
                start_service("redis").await;
            }
            Fault::StopBackendStub => {
                if let Some(mut stub) = self.stub.take() {
                    stub.terminate().await;
                }
                tokio::time::sleep(outage).await;
                let stub = self.stub_builder.spawn("backend-stub");
                wait_for_log(&stub, "listening on").await;
                self.stub = Some(stub);
            }
        }
    }

    /// Alert keys of a task in MySQL with their row ids; `None` while MySQL does not answer.
    async fn rows(&self, task_id: u64) -> Option<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT id, alert_key FROM monitor_alert_log_v2 WHERE task_id = ?")
            .bind(task_id)
            .fetch_all(&self.pool)
            .await
            .ok()?;
        Some(
            rows.iter()
                .map(|r| (r.get("alert_key"), r.get("id")))
                .collect(),
        )
    }

    /// Row ids of the alerts that the backend stub received, with how often.
    fn pushed(&self) -> BTreeMap<i64, usize> {
        let text = std::fs::read_to_string(&self.stub_file).unwrap_or_default();
        let mut pushed = BTreeMap::new();
        for message in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            if message["type"] == "alert" {
                if let Some(id) = message["data"]["alertId"].as_i64() {
                    *pushed.entry(id).or_insert(0) += 1;
                }
            }
        }
        pushed
    }

    fn logs(&self) -> String {
        STAGES
            .iter()
            .map(|name| self.env.log_path(name).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The comparison of one task's alerts with the model over its complete passes.
#[derive(Debug, Default)]
struct Counts {
    last_pass: i64,
    expected: usize,
    in_mysql: usize,
    missing: Vec<String>,
    unexpected: Vec<String>,
    pushed: usize,
}

impl Counts {
    fn complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.pushed == self.expected
    }
}

async fn compare(
    pipeline: &Pipeline,
    expected: &Expected,
    task_id: u64,
    min_pass: i64,
) -> Option<Counts> {
    let rows: BTreeMap<String, i64> = pipeline.rows(task_id).await?.into_iter().collect();
    let newest = rows.keys().filter_map(|id| expected.pass_of_id(id)).max()?;
    if newest < min_pass {
        return None;
    }
    // The newest pass may still be in flight; every pass before it is complete.
    let last_pass = newest - 1;
    let wanted = expected.ids_through(task_id, last_pass);
    let pushed = pipeline.pushed();
    let counts = Counts {
        last_pass,
        expected: wanted.len(),
        in_mysql: wanted.keys().filter(|id| rows.contains_key(*id)).count(),
        missing: wanted
            .keys()
            .filter(|id| !rows.contains_key(*id))
            .cloned()
            .collect(),
        unexpected: rows
            .keys()
            .filter(|id| expected.pass_of_id(id).is_none_or(|p| p <= last_pass))
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect(),
        pushed: wanted
            .keys()
            .filter_map(|id| rows.get(id))
            .filter(|row_id| pushed.contains_key(row_id))
            .count(),
    };
    Some(counts)
}

/// Pass of the newest alert of a task so far (0 when it has none).
async fn newest_pass(pipeline: &Pipeline, expected: &Expected, task_id: u64) -> i64 {
    let rows = pipeline.rows(task_id).await.unwrap_or_default();
    rows.iter()
        .filter_map(|(id, _)| expected.pass_of_id(id))
        .max()
        .unwrap_or(0)
}

async fn run_suite(name: &str, options: Options) {
    let env = TestEnv::new(name).await;
    let trades = load_trades(&trades_csv()).expect("the recorded trades load");
    let mut pipeline = Pipeline::start(env, options.speed).await;
    let mut rng = StdRng::seed_from_u64(options.seed);
    eprintln!(
        "chaos: seed={} rounds={} outage={}s speed={} faults={}",
        options.seed,
        options.rounds,
        options.outage.as_secs(),
        options.speed,
        options
            .faults()
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(",")
    );

    let mut schedule: Vec<(u32, Fault)> = (1..=options.rounds)
        .flat_map(|round| options.faults().into_iter().map(move |f| (round, f)))
        .collect();
    schedule.shuffle(&mut rng);

    let mut expected: Option<Expected> = None;
    let mut previous_task = None;
    let mut failures = Vec::new();
    for (round, fault) in schedule {
        let task_id = pipeline
            .next_task(&format!("chaos {} {round}", fault.name()), previous_task)
            .await;
        previous_task = Some(task_id);
        let model = match &expected {
            Some(model) => model,
            None => expected.insert(Expected::new(
                &trades,
                &task_rules(&pipeline.pool, task_id).await,
            )),
        };

        // The fault comes at a random moment after the task's first alert.
        let flowing = wait_for(START_TIMEOUT * 2, Duration::from_millis(250), || async {
            pipeline
                .rows(task_id)
                .await
                .filter(|rows| !rows.is_empty())
                .map(|_| ())
        })
        .await;
        assert!(
            flowing.is_some(),
            "task {task_id} raised no alert; see {}",
            pipeline.logs()
        );
        let delay = rng.random_range(Duration::ZERO..=options.max_delay);
        tokio::time::sleep(delay).await;

        let fault_pass = newest_pass(&pipeline, model, task_id).await;
        let started = Instant::now();
        pipeline.inject(fault, options.outage).await;
        let counts = wait_for(
            options.check_timeout(),
            Duration::from_millis(500),
            || async {
                compare(&pipeline, model, task_id, fault_pass + 2)
                    .await
                    .filter(Counts::complete)
            },
        )
        .await;
        let counts = match counts {
            Some(counts) => counts,
            None => compare(&pipeline, model, task_id, 0)
                .await
                .unwrap_or_default(),
        };
        eprintln!(
            "chaos: fault={} round={round}/{} task={task_id} after={:.1}s passes=0..={} expected={} in_mysql={} missing={} unexpected={} pushed={} recovered_in={:.1}s",
            fault.name(),
            options.rounds,
            delay.as_secs_f64(),
            counts.last_pass,
            counts.expected,
            counts.in_mysql,
            counts.missing.len(),
            counts.unexpected.len(),
            counts.pushed,
            started.elapsed().as_secs_f64(),
        );
        if !counts.complete() || counts.last_pass < fault_pass + 1 {
            failures.push(format!(
                "{} round {round} (task {task_id}, fault at pass {fault_pass}): {counts:?}",
                fault.name()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "alerts differ from the fault-free model after {} fault(s):\n{}\nlogs: {}",
        failures.len(),
        failures.join("\n"),
        pipeline.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_once_keeps_alerts_exact() {
    run_suite("chaos", Options::short()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long crash suite: scripts/chaos"]
async fn every_fault_repeatedly_keeps_alerts_exact() {
    run_suite("chaos_long", Options::from_env()).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn trades_csv() -> PathBuf {
    workspace_dir().join("data/binance-ethusdt-trades-2023-02-02/trades.csv")
}

async fn wait_for_log(process: &Process, text: &str) {
    assert!(
        process.wait_for_log(text, START_TIMEOUT).await,
        "{} did not log {text:?}; see {}",
        process.name(),
        process.log_path().display()
    );
}

/// Reads a task's config from MySQL and parses it as the allocator does.
async fn task_rules(pool: &MySqlPool, task_id: u64) -> TokenRules {
    let row = sqlx::query(
        "SELECT c.id, c.version, c.config_name, \
                CAST(c.min_transaction_usd AS DOUBLE) AS min_transaction_usd, \
                CAST(c.cumulative_min_amount_usd AS DOUBLE) AS cumulative_min_amount_usd, \
                c.time_interval, CAST(c.top_holders_threshold AS DOUBLE) AS top_holders_threshold, \
                c.events_config, c.trigger_logic \
         FROM monitor_config_v2 c JOIN monitor_task_config_v2 tc ON tc.config_id = c.id \
         WHERE tc.task_id = ?",
    )
    .bind(task_id)
    .fetch_one(pool)
    .await
    .expect("the seeded task has a config");
    let config = ConfigRow {
        config_id: row.get::<i64, _>("id") as u64,
        version: row.get::<i64, _>("version") as u64,
        name: row.get("config_name"),
        min_transaction_usd: row.get("min_transaction_usd"),
        cumulative_min_amount_usd: row.get("cumulative_min_amount_usd"),
        time_interval: row.get::<Option<i32>, _>("time_interval").map(i64::from),
        top_holders_threshold: row.get("top_holders_threshold"),
        events_config: row.get("events_config"),
        trigger_logic: row.get("trigger_logic"),
    };
    match parse_config(&config, TaskType::Smart)
        .expect("the seeded config is valid")
        .rules
    {
        Rules::Token(rules) => rules,
        Rules::Block(_) => panic!("the seeded task is a token task"),
    }
}
