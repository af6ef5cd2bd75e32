//! The pipeline's binaries as child processes of a run.
//!
//! Consumes the directory of the built binaries and the environment of the run. Starts each
//! stage in the run's log directory (so no developer `.env` is loaded) with its stdout and
//! stderr appended to `<log dir>/<name>.log`. A stage is stopped with SIGTERM, which starts its
//! own drain, and killed if it is still running after the grace period. Children are also
//! killed when their handle is dropped, so an aborted run leaves no process behind.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("binary {name} not found at {path}: build it (cargo build --release --bins) or set MONITOR_BIN_DIR / --bin-dir")]
    MissingBinary { name: String, path: String },
    #[error("failed to open log file {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} exited with {status}; its log is {log}")]
    Exited {
        name: String,
        status: ExitStatus,
        log: String,
    },
    #[error("{name} did not finish within {timeout_sec} s; its log is {log}")]
    Timeout {
        name: String,
        timeout_sec: u64,
        log: String,
    },
    #[error("failed to wait for {name}: {source}")]
    Wait {
        name: String,
        source: std::io::Error,
    },
}

/// Where the binaries are and how they run.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    /// Variables set for every stage, over the inherited environment.
    pub env: Vec<(String, String)>,
}

/// A running stage.
#[derive(Debug)]
pub struct Stage {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Launcher {
    /// Starts `binary` with `args` as the stage `name`.
    pub fn spawn(&self, name: &str, binary: &str, args: &[&str]) -> Result<Stage, StageError> {
        let mut command = self.command(name, binary, args)?;
        let child = command.spawn().map_err(|source| StageError::Spawn {
            name: name.to_owned(),
            source,
        })?;
        Ok(Stage {
            name: name.to_owned(),
            child,
            log: self.log_path(name),
        })
    }

    /// Runs `binary` with `args` to the end and fails unless it exits with success.
    pub async fn run_to_end(
        &self,
        name: &str,
        binary: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<(), StageError> {
        let mut stage = self.spawn(name, binary, args)?;
        let log = stage.log.display().to_string();
        let status = match tokio::time::timeout(limit, stage.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => {
                return Err(StageError::Wait {
                    name: name.to_owned(),
                    source,
                })
            }
            Err(_) => {
                return Err(StageError::Timeout {
                    name: name.to_owned(),
                    timeout_sec: limit.as_secs(),
                    log,
                })
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(StageError::Exited {
                name: name.to_owned(),
                status,
                log,
            })
        }
    }

    fn command(&self, name: &str, binary: &str, args: &[&str]) -> Result<Command, StageError> {
        // The stage runs in the log directory, so a relative path would not resolve.
        let path = std::path::absolute(self.bin_dir.join(binary)).unwrap_or_default();
        if !path.is_file() {
            return Err(StageError::MissingBinary {
                name: binary.to_owned(),
                path: self.bin_dir.join(binary).display().to_string(),
            });
        }
        let log = self.open_log(name)?;
        let log_err = log.try_clone().map_err(|source| StageError::Log {
            path: self.log_path(name).display().to_string(),
            source,
        })?;

        let mut command = Command::new(path);
        command
            .args(args)
            .current_dir(&self.log_dir)
            // Four stages on one metrics address would collide.
            .env_remove("METRICS_ADDR")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        Ok(command)
    }

    fn open_log(&self, name: &str) -> Result<File, StageError> {
        let path = self.log_path(name);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| StageError::Log {
                path: path.display().to_string(),
                source,
            })
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }
}

impl Stage {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails when the stage has exited.
    pub fn check_running(&mut self) -> Result<(), StageError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(StageError::Exited {
                name: self.name.clone(),
                status,
                log: self.log.display().to_string(),
            }),
            Err(source) => Err(StageError::Wait {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Sends SIGTERM and waits for the exit; kills the stage after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let Some(pid) = self.child.id() else {
            return;
        };
        if let Err(error) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
            tracing::warn!(stage = %self.name, pid, error = %error, "failed to send SIGTERM");
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => tracing::debug!(stage = %self.name, %status, "stage stopped"),
            Ok(Err(error)) => {
                tracing::warn!(stage = %self.name, error = %error, "failed to wait for the stage")
            }
            Err(_) => {
                tracing::warn!(stage = %self.name, grace_sec = grace.as_secs(), "stage still running after SIGTERM, killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}
