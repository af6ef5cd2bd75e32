//! The `allocator` binary: parses the command line and hands over to the library.

use monitor_allocator::cli::{self, Cli};
use monitor_core::runtime::{run_stage, DefaultWorkers};

/// Logs a fatal error through tracing (JSON with `LOG_FORMAT=json`) and exits 1.
fn main() -> std::process::ExitCode {
    monitor_core::settings::load_dotenv();
    let cli = Cli::parse_args();
    let runtime = cli.settings.runtime.clone();
    run_stage(&runtime, DefaultWorkers::PerCore, start(cli))
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let shutdown = monitor_core::shutdown::on_signals();
    cli::execute(cli, shutdown, &mut std::io::stdout()).await
}
