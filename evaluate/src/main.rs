//! `evaluate`: judges event frames against task rules and publishes alerts.

use clap::{Parser, Subcommand};
use monitor_evaluate::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "evaluate",
    version,
    about = "Judges event frames against task rules and publishes alerts"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Settings of `run`, which is the default subcommand.
    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume event frames and publish alerts until SIGINT or SIGTERM (the default).
    Run(Settings),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    monitor_core::settings::load_dotenv();
    let cli = Cli::parse();
    let settings = match cli.command {
        Some(Command::Run(settings)) => settings,
        None => cli.settings,
    };
    monitor_core::telemetry::init(settings.runtime.log_format);
    let shutdown = monitor_core::shutdown::on_signals();
    monitor_evaluate::run(settings, shutdown).await
}
