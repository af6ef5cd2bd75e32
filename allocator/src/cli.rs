//! The command line: `migrate`, `allocate`, `status` and `run` (the default).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::allocate::Allocation;
use crate::control::{ControlOptions, ControlPlane, TaskOutcome};
use crate::settings::AllocatorSettings;

/// Control plane of the monitor: assigns targets to batches and publishes task snapshots.
#[derive(Debug, Parser)]
#[command(name = "allocator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: AllocatorSettings,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create the database if it is missing and apply the schema migrations.
    Migrate,
    /// Allocate one task's active targets to batches and publish its specs.
    Allocate {
        /// Id of the task (monitor_task_v2.id).
        #[arg(long)]
        task_id: u64,
    },
    /// Print the epoch, batches, item counts, config version and config error of one task or
    /// of every active task, from the database and from the tasks bucket.
    Status {
        /// Id of the task; all active tasks when omitted.
        #[arg(long)]
        task_id: Option<u64>,
    },
    /// Keep the tasks bucket in step with the task tables (the default command).
    Run,
}

impl Cli {
    /// Parses the command line. Settings are global, so they may follow the subcommand.
    pub fn parse_args() -> Self {
        let command = Self::command().mut_args(|arg| arg.global(true));
        let matches = monitor_core::settings::matches_or_exit(command);
        Self::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
    }
}

/// Runs the parsed command; command output goes to `out`, logs to stderr.
pub async fn execute(
    cli: Cli,
    shutdown: CancellationToken,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let settings = cli.settings;
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => migrate(&settings, out).await,
        Command::Allocate { task_id } => allocate(&settings, task_id, out).await,
        Command::Status { task_id } => status(&settings, task_id, out).await,
        Command::Run => crate::run(settings, shutdown).await,
    }
}

async fn migrate(settings: &AllocatorSettings, out: &mut dyn Write) -> anyhow::Result<()> {
    let pool = monitor_core::db::migrate(&settings.db).await?;
    pool.close().await;
    writeln!(out, "database {} is migrated", settings.db.name)?;
    Ok(())
}

async fn allocate(
    settings: &AllocatorSettings,
    task_id: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let pool = monitor_core::db::connect(&settings.db).await?;
    let publisher = crate::connect_publisher(settings).await?;
    let mut plane = ControlPlane::new(pool.clone(), publisher, ControlOptions::from(settings));
    let outcome = plane
        .allocate_and_publish(task_id)
        .await
        .with_context(|| format!("failed to allocate task {task_id}"))?;
    pool.close().await;
    writeln!(out, "{}", describe(task_id, &outcome))?;
    Ok(())
}

fn describe(task_id: u64, outcome: &TaskOutcome) -> String {
    match outcome {
        TaskOutcome::Published {
            epoch,
            allocation,
            report,
        } => {
            let allocated = match allocation {
                Some(Allocation::Written {
                    previous_epoch,
                    batches,
                    targets,
                    ..
                }) => format!("epoch {epoch} written (was {previous_epoch}): {targets} targets in {batches} batches"),
                Some(Allocation::Unchanged { .. }) => format!("epoch {epoch} unchanged"),
                None => format!("epoch {epoch}, no batches (block task)"),
            };
            let task_spec = if report.task_written {
                "written"
            } else {
                "unchanged"
            };
            format!(
                "task {task_id}: {allocated}; task spec {task_spec}, {} batch specs written",
                report.batches_written
            )
        }
        TaskOutcome::Retired { deleted } => {
            format!("task {task_id} is not active: allocated but not published, {deleted} entries deleted from the tasks bucket")
        }
        TaskOutcome::Invalid => {
            format!("task {task_id} cannot be run (see the log), nothing published")
        }
    }
}

async fn status(
    settings: &AllocatorSettings,
    task_id: Option<u64>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let pool = monitor_core::db::connect(&settings.db).await?;
    let bucket = open_tasks_bucket(settings).await;
    let result = crate::status::write_status(&pool, &bucket, task_id, out).await;
    pool.close().await;
    Ok(result?)
}

/// Maximum wait for NATS and the tasks bucket in the `status` command.
const STATUS_NATS_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the existing tasks bucket without creating anything; the error says why it is not
/// readable.
async fn open_tasks_bucket(settings: &AllocatorSettings) -> crate::status::Bucket {
    let bucket = settings.nats.subjects().tasks_bucket();
    let open = async {
        let client = settings
            .nats
            .connect("allocator status")
            .await
            .map_err(|e| format!("failed to connect to NATS: {e}"))?;
        async_nats::jetstream::new(client)
            .get_key_value(&bucket)
            .await
            .map_err(|e| format!("failed to open the tasks bucket {bucket}: {e}"))
    };
    match tokio::time::timeout(STATUS_NATS_TIMEOUT, open).await {
        Ok(result) => result,
        // The URL may carry credentials, so it is not quoted.
        Err(_) => Err(format!(
            "NATS did not answer within {} s",
            STATUS_NATS_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn settings_may_follow_the_subcommand() {
        let command = Cli::command().mut_args(|arg| arg.global(true));
        let matches = command
            .try_get_matches_from([
                "allocator",
                "allocate",
                "--task-id",
                "3",
                "--batch-size",
                "10",
                "--db-name",
                "t_x",
            ])
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Allocate { task_id: 3 })
        ));
        assert_eq!(cli.settings.batch_size.get(), 10);
        assert_eq!(cli.settings.db.name, "t_x");
    }
}
