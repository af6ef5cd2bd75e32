//! Server faults and servers of a test's own.
//!
//! [`restart_service`], [`stop_service`] and [`start_service`] act on the shared servers that
//! `scripts/test` started, through `scripts/services`, on the same ports and data directories.
//! The outage hits every test of the same test binary, so a test binary that does this must
//! keep its other tests away from it meanwhile (cargo runs test binaries one after another).
//! A test that wants a NATS outage of its own starts a private [`NatsServer`] instead, and one
//! that wants a MySQL outage a private [`MariaDb`]. [`Anvil`] is a private EVM node for the
//! tests of the EVM adapter. [`assert_no_stub_violations`] fails a test in which
//! `devkit backend-stub` received a message that does not match the Java protocol.

use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_core::settings::{DbSettings, NatsSettings, Redacted};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::net::TcpStream;

use crate::env::TestEnv;
use crate::paths;
use crate::process::{Process, ProcessBuilder};
use crate::wait::{free_port, wait_until};

/// How long a server may take to accept connections after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one `scripts/services` call: it waits up to 60 s for a stop and 60 s for
/// a start itself.
const SERVICES_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Restarts a shared server (`"nats"`, `"mysql"` or `"redis"`) on the same port and data
/// directory, and returns once it accepts clients again. Clients reconnect by themselves.
///
/// # Panics
/// If `service` is not one of those names or `scripts/services` fails.
pub async fn restart_service(service: &str) {
    run_services_verb("restart", service).await;
}

/// Stops a shared server (`"nats"`, `"mysql"` or `"redis"`) until [`start_service`].
pub async fn stop_service(service: &str) {
    run_services_verb("stop", service).await;
}

/// Starts a shared server stopped by [`stop_service`] again on the same port and data
/// directory, and returns once it accepts clients.
pub async fn start_service(service: &str) {
    run_services_verb("start", service).await;
}

async fn run_services_verb(action: &str, service: &str) {
    if !matches!(service, "nats" | "mysql" | "redis") {
        panic!("unknown service {service:?}: expected \"nats\", \"mysql\" or \"redis\"");
    }
    let script = paths::services_script();
    let dir = paths::services_dir();
    let verb = format!("{action}-{service}");
    let run = tokio::process::Command::new(&script)
        .arg(&verb)
        .arg("--dir")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(SERVICES_SCRIPT_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("failed to run {} {verb}: {e}", script.display()),
        Err(_) => panic!(
            "{} {verb} did not finish within {SERVICES_SCRIPT_TIMEOUT:?}",
            script.display()
        ),
    };
    if !output.status.success() {
        panic!(
            "{} {verb} --dir {} failed ({}): {}",
            script.display(),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A nats-server with JetStream of one test, on its own port and storage directory, which
/// the test may stop, kill and start again without disturbing other tests.
pub struct NatsServer {
    port: u16,
    builder: ProcessBuilder,
    process: Option<Process>,
}

impl NatsServer {
    /// Starts the server (the binary of `TEST_NATS_BIN`) and waits until it accepts clients.
    pub async fn start(env: &TestEnv) -> NatsServer {
        let port = free_port();
        let store: PathBuf = env.work_dir().join(format!("nats-{port}"));
        let builder = env
            .command(paths::nats_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store);
        let mut server = NatsServer {
            port,
            builder,
            process: None,
        };
        server.start_again().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Returns the test's NATS settings with the URL of this server.
    pub fn settings(&self, env: &TestEnv) -> NatsSettings {
        NatsSettings {
            url: self.url(),
            ..env.nats_settings()
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown).
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate().await;
        }
    }

    /// Kills the server with SIGKILL (a crash).
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same port and storage, and waits until it accepts
    /// clients. Does nothing if it runs.
    ///
    /// # Panics
    /// If it does not accept clients within 60 s.
    pub async fn start_again(&mut self) {
        if self.process.is_some() {
            return;
        }
        let process = self.builder.spawn(&format!("nats-{}", self.port));
        let port = self.port;
        if !wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
            nats_answers(port)
        })
        .await
        {
            panic!(
                "private nats-server on port {port} did not answer within {READY_TIMEOUT:?}; see {}",
                process.log_path().display()
            );
        }
        self.process = Some(process);
    }

    /// Stops the server cleanly and starts it again.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }
}

/// Checks that a NATS server with JetStream sends its INFO line on `port`.
async fn nats_answers(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stream);
    let read = tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await;
    matches!(read, Ok(Ok(_))) && line.starts_with("INFO") && line.contains("\"jetstream\":true")
}

/// A MariaDB server of one test, on its own port and data directory, which the test may stop
/// and start again without disturbing the tests that use the shared server. It is set up the
/// way `scripts/services` sets up the shared one: `mariadb-install-db` into a directory under
/// the test's work directory, then `mariadbd` on a free loopback port, user root without a
/// password.
pub struct MariaDb {
    port: u16,
    builder: ProcessBuilder,
    process: Option<Process>,
}

impl MariaDb {
    /// Creates the data directory, starts the server and waits until it accepts clients.
    ///
    /// # Panics
    /// If `mariadb-install-db` fails or the server does not accept clients within 60 s.
    pub async fn start(env: &TestEnv) -> MariaDb {
        let port = free_port();
        let dir = env.work_dir().join(format!("mariadb-{port}"));
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).unwrap_or_else(|e| {
            panic!(
                "failed to create the MariaDB data directory {}: {e}",
                data_dir.display()
            )
        });
        let options = [
            "--no-defaults".to_owned(),
            "--user=root".to_owned(),
            format!("--datadir={}", data_dir.display()),
            "--innodb-log-file-size=16M".to_owned(),
            "--innodb-buffer-pool-size=64M".to_owned(),
            "--innodb-use-native-aio=0".to_owned(),
            "--skip-name-resolve".to_owned(),
        ];

        let install_name = format!("mariadb-install-{port}");
        let install = env
            .command("mariadb-install-db")
            .args(&options)
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output(&install_name, Duration::from_secs(300))
            .await;
        if !install.status.success() {
            panic!(
                "mariadb-install-db for port {port} failed ({}): {}",
                install.status,
                String::from_utf8_lossy(&install.stderr)
            );
        }

        let builder = env
            .command("mariadbd")
            .args(&options)
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            // A Unix socket path is limited to 107 bytes, too few for the work directory.
            .arg(format!(
                "--socket={}",
                std::env::temp_dir()
                    .join(format!("monitor-test-mariadb-{port}.sock"))
                    .display()
            ))
            .arg(format!("--pid-file={}", dir.join("mysql.pid").display()))
            .args([
                "--max-connections=200",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
            ]);
        let mut server = MariaDb {
            port,
            builder,
            process: None,
        };
        server.start_again().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the test's database settings (same database name) on this server.
    pub fn settings(&self, env: &TestEnv) -> DbSettings {
        DbSettings {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            user: "root".to_owned(),
            password: Redacted::default(),
            ..env.db_settings()
        }
    }

    /// Returns the variables that point a stage at this server (see [`TestEnv::stage_env`]).
    pub fn stage_env(&self) -> Vec<(String, String)> {
        vec![
            ("DB_HOST".to_owned(), "127.0.0.1".to_owned()),
            ("DB_PORT".to_owned(), self.port.to_string()),
            ("DB_USER".to_owned(), "root".to_owned()),
            ("DB_PASSWORD".to_owned(), String::new()),
        ]
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits until it exited.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate().await;
        }
    }

    /// Kills the server with SIGKILL (a crash).
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same port and data directory, and waits until it accepts
    /// clients. Does nothing if it runs.
    ///
    /// # Panics
    /// If it does not accept clients within 60 s.
    pub async fn start_again(&mut self) {
        if self.process.is_some() {
            return;
        }
        let mut process = self.builder.spawn(&format!("mariadb-{}", self.port));
        let port = self.port;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while !mysql_answers(port).await {
            if let Some(status) = process.try_status() {
                panic!(
                    "private MariaDB on port {port} exited while starting ({status}); see {}",
                    process.log_path().display()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "private MariaDB on port {port} did not answer within {READY_TIMEOUT:?}; see {}",
                    process.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.process = Some(process);
    }
}

/// Checks that a MySQL server sends its handshake on `port`: a packet whose payload starts with
/// protocol version 10.
async fn mysql_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut header = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut header)).await;
    matches!(read, Ok(Ok(_))) && header[4] == 10
}

/// Fails the test if `devkit backend-stub` wrote any protocol violation to `path`, the file of
/// its `--violations` flag, listing the first ten.
///
/// # Panics
/// If the file does not exist (the stub creates it at start, so the stub did not run with
/// `--violations path`), cannot be read, or is not empty.
pub fn assert_no_stub_violations(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "failed to read the backend-stub violations file {}: {e} (start the stub with --violations {})",
            path.display(),
            path.display()
        )
    });
    let violations: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if !violations.is_empty() {
        panic!(
            "backend-stub received {} messages that do not match the Java protocol; the first ones:\n{}",
            violations.len(),
            violations.iter().take(10).copied().collect::<Vec<_>>().join("\n")
        );
    }
}

/// An anvil EVM node of one test (`TEST_ANVIL_BIN`), on its own port; killed when dropped.
pub struct Anvil {
    port: u16,
    process: Process,
}

impl Anvil {
    /// Starts anvil on a free port with `args` added (for example `["--block-time", "1"]`)
    /// and waits until it accepts connections.
    ///
    /// # Panics
    /// If it does not accept connections within 60 s.
    pub async fn start(env: &TestEnv, args: &[&str]) -> Anvil {
        let port = free_port();
        let process = env
            .command(paths::anvil_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .spawn(&format!("anvil-{port}"));
        let accepts = || async move { TcpStream::connect(("127.0.0.1", port)).await.is_ok() };
        if !wait_until(READY_TIMEOUT, Duration::from_millis(100), accepts).await {
            panic!(
                "anvil on port {port} did not accept connections within {READY_TIMEOUT:?}; see {}",
                process.log_path().display()
            );
        }
        Anvil { port, process }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the JSON-RPC endpoint over HTTP.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Returns the JSON-RPC endpoint over WebSocket (for `eth_subscribe`).
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}
