//! The `allocator` binary: parses the command line and hands over to the library.

use monitor_allocator::cli::{self, Cli};
use monitor_core::runtime::{block_on, worker_threads, DefaultWorkers};

/// Logs a fatal error through tracing (JSON with `LOG_FORMAT=json`) and exits 1.
fn main() -> std::process::ExitCode {
    monitor_core::settings::load_dotenv();
    let cli = Cli::parse_args();
    monitor_core::telemetry::init(cli.settings.runtime.log_format);
    let workers = worker_threads(cli.settings.runtime.worker_threads, DefaultWorkers::PerCore);
    monitor_core::telemetry::exit_code(block_on(workers, start(cli)))
}

async fn start(cli: Cli) -> anyhow::Result<()> {
    let shutdown = monitor_core::shutdown::on_signals();
    cli::execute(cli, shutdown, &mut std::io::stdout()).await
}
