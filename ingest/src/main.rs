//! `ingest`: runs the ingest stage (`ingest run`, the default subcommand).

use clap::{Parser, Subcommand};
use monitor_core::runtime::{run_stage, DefaultWorkers};
use monitor_ingest::settings::IngestSettings;

/// jemalloc instead of the system allocator, because every trade allocates its strings, its
/// event and its window figures. With `devkit loadgen --rate max` on 2 cores, ingest spent
/// 3.8 µs of CPU per event with jemalloc against 4.6 to 5.5 µs with glibc's allocator. Its
/// peak RSS at 10,000 events/s was 68 MiB with jemalloc and 62 MiB with glibc. mimalloc saved
/// as much CPU in an earlier run but reached a peak RSS of 80 MiB there.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ingest",
    version,
    about = "Keeps Birdeye feed connections per batch and publishes event frames to NATS JetStream",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    settings: IngestSettings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the stage until SIGINT or SIGTERM (the default).
    Run(IngestSettings),
}

/// Logs a fatal error through tracing (JSON with `LOG_FORMAT=json`) and exits 1.
fn main() -> std::process::ExitCode {
    monitor_core::settings::load_dotenv();
    let cli = monitor_core::settings::parse_args::<Cli>();
    let settings = match cli.command {
        Some(Command::Run(settings)) => settings,
        None => cli.settings,
    };
    let runtime = settings.runtime.clone();
    run_stage(&runtime, DefaultWorkers::PerCore, start(settings))
}

async fn start(settings: IngestSettings) -> anyhow::Result<()> {
    let shutdown = monitor_core::shutdown::on_signals();
    monitor_ingest::run(settings, shutdown).await?;
    Ok(())
}
