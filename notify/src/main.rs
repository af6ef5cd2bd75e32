//! `notify`: writes alerts to MySQL and forwards alerts, heartbeats and status to the Java
//! WebSocket.

use clap::{Parser, Subcommand};
use monitor_core::runtime::{run_stage, DefaultWorkers};
use monitor_notify::NotifySettings;

#[derive(Debug, Parser)]
#[command(
    name = "notify",
    version,
    about = "Writes alerts to MySQL and pushes alerts, heartbeats and status to the Java WebSocket"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    settings: NotifySettings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the stage (the default when no subcommand is given).
    Run(NotifySettings),
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
    run_stage(&runtime, DefaultWorkers::One, start(settings))
}

async fn start(settings: NotifySettings) -> anyhow::Result<()> {
    let shutdown = monitor_core::shutdown::on_signals();
    monitor_notify::run(settings, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_subcommand_and_no_subcommand_take_the_same_flags() {
        let cli =
            Cli::try_parse_from(["notify", "run", "--ws-url", "wss://java.example/ws"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Run(ref s)) if s.ws.url == "wss://java.example/ws")
        );

        let cli = Cli::try_parse_from(["notify", "--ws-token", "abc"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.settings.ws.token.expose(), "abc");
    }
}
