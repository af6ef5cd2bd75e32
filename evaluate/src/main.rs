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

impl Cli {
    fn into_settings(self) -> Settings {
        match self.command {
            Some(Command::Run(settings)) => settings,
            None => self.settings,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    monitor_core::settings::load_dotenv();
    let settings = monitor_core::settings::parse_args::<Cli>().into_settings();
    monitor_core::telemetry::init(settings.runtime.log_format);
    let shutdown = monitor_core::shutdown::on_signals();
    monitor_evaluate::run(settings, shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_subcommand() {
        let default = Cli::try_parse_from(["evaluate", "--evaluate-batch", "9"]).unwrap();
        assert_eq!(default.into_settings().pull_batch, 9);

        let run = Cli::try_parse_from(["evaluate", "run", "--evaluate-batch", "8"]).unwrap();
        assert_eq!(run.into_settings().pull_batch, 8);
    }
}
