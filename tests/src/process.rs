//! Programs that a test runs: the stages, the devkit tools, servers of its own.
//!
//! A [`Process`] writes its stdout and stderr to one log file under
//! `<TEST_SERVICES_DIR>/logs`. It runs with a clean environment: only `PATH`, `HOME`,
//! `RUST_BACKTRACE`, `RUST_LOG` and what the test sets. It is killed with SIGKILL when
//! dropped, so a failing test leaves no process behind.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::wait::wait_until;

/// How long [`Process::terminate`] waits after SIGTERM: longer than any stage's drain limit.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run and with which arguments and environment; [`ProcessBuilder::spawn`] starts it.
/// Get one from [`crate::TestEnv::stage`] or [`crate::TestEnv::command`]. It can be spawned
/// again (after a stop, to test a restart); the new run appends to the same log.
#[derive(Debug, Clone)]
pub struct ProcessBuilder {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log_dir: PathBuf,
    test_id: String,
    work_dir: PathBuf,
}

impl ProcessBuilder {
    pub(crate) fn new(
        program: impl AsRef<OsStr>,
        log_dir: PathBuf,
        test_id: String,
        work_dir: PathBuf,
    ) -> Self {
        ProcessBuilder {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            log_dir,
            test_id,
            work_dir,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable; a later value for the same name wins.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn envs<I, K, V>(mut self, envs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (name, value) in envs {
            self = self.env(name, value);
        }
        self
    }

    /// Replaces the working directory (by default the test's work directory).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = dir.into();
        self
    }

    /// Path of the log that a process spawned under `name` writes.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{}-{name}.log", self.test_id))
    }

    /// Starts the program in the background; `name` names its log file. The log gets a line
    /// `--- starting <command line>` first, so wait for texts the command line does not contain.
    ///
    /// # Panics
    /// If the log file cannot be created or the program cannot be started.
    pub fn spawn(&self, name: &str) -> Process {
        let log_path = self.log_path(name);
        let mut log = self.open_log(&log_path);
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("failed to duplicate {}: {e}", log_path.display()));
        let _ = writeln!(log, "--- starting {}", self.command_line());

        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", self.command_line()));
        let pid = child
            .id()
            .unwrap_or_else(|| panic!("{} exited before its pid was read", self.command_line()));
        Process {
            name: name.to_owned(),
            child,
            pid,
            log_path,
        }
    }

    /// Runs the program to completion and returns its output, which is also appended to the
    /// log named `name`.
    ///
    /// # Panics
    /// If it cannot be started or has not exited within `timeout` (it is killed then).
    pub async fn output(&self, name: &str, timeout: Duration) -> Output {
        let log_path = self.log_path(name);
        let mut log = self.open_log(&log_path);
        let run = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        let output = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => panic!("failed to run {}: {e}", self.command_line()),
            Err(_) => panic!(
                "{} did not finish within {timeout:?}; it was killed",
                self.command_line()
            ),
        };
        let _ = writeln!(log, "--- ran {}: {}", self.command_line(), output.status);
        let _ = log.write_all(&output.stdout);
        let _ = log.write_all(&output.stderr);
        output
    }

    fn command(&self) -> tokio::process::Command {
        std::fs::create_dir_all(&self.work_dir).unwrap_or_else(|e| {
            panic!(
                "failed to create the work directory {}: {e}",
                self.work_dir.display()
            )
        });
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(base_env())
            .envs(self.envs.iter().map(|(name, value)| (name, value)))
            .current_dir(&self.work_dir)
            .kill_on_drop(true);
        command
    }

    fn open_log(&self, path: &Path) -> File {
        std::fs::create_dir_all(&self.log_dir).unwrap_or_else(|e| {
            panic!(
                "failed to create the log directory {}: {e}",
                self.log_dir.display()
            )
        });
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("failed to open the log {}: {e}", path.display()))
    }

    fn command_line(&self) -> String {
        let mut line = self.program.to_string_lossy().into_owned();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

/// Returns the variables every process gets from the test's own environment.
fn base_env() -> Vec<(String, String)> {
    let inherited =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    vec![
        (
            "PATH".into(),
            inherited("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ),
        ("HOME".into(), inherited("HOME", "/root")),
        ("RUST_BACKTRACE".into(), "1".into()),
        ("RUST_LOG".into(), inherited("RUST_LOG", "info")),
    ]
}

/// A running program, killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: tokio::process::Child,
    pid: u32,
    log_path: PathBuf,
}

impl Process {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Returns the file that receives the program's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Reads the log so far, with invalid UTF-8 replaced.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log contains `text`; returns false if it did not within `timeout`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) -> bool {
        wait_until(timeout, Duration::from_millis(100), || async {
            self.log().contains(text)
        })
        .await
    }

    /// Returns the exit status if the program has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("failed to check whether {} exited: {e}", self.name))
    }

    /// Sends `signal` unless the program has already exited.
    pub fn send_signal(&mut self, signal: Signal) {
        if self.try_status().is_some() {
            return;
        }
        // The child has not been reaped, so the pid still belongs to it.
        let pid = Pid::from_raw(self.pid as i32);
        signal::kill(pid, signal).unwrap_or_else(|e| {
            panic!("failed to send {signal} to {} (pid {pid}): {e}", self.name)
        });
    }

    /// Waits for the program to exit by itself; `None` if it still runs after `timeout`.
    pub async fn wait_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => panic!("failed to wait for {} (pid {}): {e}", self.name, self.pid),
            Err(_) => None,
        }
    }

    /// Sends SIGTERM and waits up to 60 s for the exit status.
    ///
    /// # Panics
    /// If the program does not exit in time (it is killed first).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(TERMINATE_TIMEOUT).await
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    ///
    /// # Panics
    /// If the program does not exit in time (it is killed first).
    pub async fn terminate_within(&mut self, timeout: Duration) -> ExitStatus {
        self.send_signal(Signal::SIGTERM);
        if let Some(status) = self.wait_within(timeout).await {
            return status;
        }
        self.kill().await;
        panic!(
            "{} (pid {}) did not exit within {timeout:?} of SIGTERM and was killed; see {}",
            self.name,
            self.pid,
            self.log_path.display()
        );
    }

    /// Kills the program with SIGKILL (a crash, as far as it can tell) and returns its status.
    pub async fn kill(&mut self) -> ExitStatus {
        self.send_signal(Signal::SIGKILL);
        self.child
            .wait()
            .await
            .unwrap_or_else(|e| panic!("failed to wait for {} (pid {}): {e}", self.name, self.pid))
    }
}
