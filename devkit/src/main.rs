//! `devkit`: development tools (feed replay, Java backend stub, demo seed).

// Printing to stdout is this binary's output: the bound address and the seeded ids.
#![allow(clippy::print_stdout)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use monitor_core::telemetry::{self, LogFormat};
use monitor_devkit::backend_stub::{run_backend_stub, BackendStub, BackendStubSettings};
use monitor_devkit::chain_replay::{ChainReplay, ChainReplayCommand};
use monitor_devkit::feed_replay::record::{record, RecordSettings};
use monitor_devkit::feed_replay::{FeedReplay, FeedReplaySettings};
use monitor_devkit::loadgen::{self, LoadgenCommand};
use monitor_devkit::seed::{seed, SeedSettings};

/// jemalloc instead of the system allocator: `devkit loadgen` allocates a trade frame and its
/// WebSocket message for every trade, on the cores of the pipeline it measures. In two
/// alternated pairs of `devkit loadgen --rate max` runs it spent 1.49 and 1.51 µs of CPU per
/// event with jemalloc, against 1.73 and 1.61 µs with glibc's allocator.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Development tools for the monitor pipeline: a Birdeye feed replay, an EVM and Solana node
/// replay, a stub of the Java backend's WebSocket, a demo seed for the database and a load
/// generator.
#[derive(Debug, Parser)]
#[command(name = "devkit", version)]
struct Cli {
    /// Log format on stderr: text (readable) or json (one object per line).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve recorded trades over Birdeye's WebSocket protocol (TXS_DATA and 1m PRICE_DATA).
    FeedReplay(Box<FeedReplayCommand>),
    /// Serve recorded mainnet blocks as a node: eth (eth_subscribe) or sol (PubSub and getBlock).
    #[command(subcommand)]
    ChainReplay(ChainReplayCommand),
    /// Play the Java backend's monitor WebSocket and record every message received as a JSON line.
    BackendStub(BackendStubSettings),
    /// Insert a demo smart task on WETH whose rules fire on the recorded trades and print
    /// task_id=N. Each run inserts a new config, task and target.
    Seed(SeedSettings),
    /// Run the pipeline (or JetStream alone) under load and print one result line with rates,
    /// alert latencies, CPU time and peak memory.
    Loadgen(Box<LoadgenCommand>),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct FeedReplayCommand {
    #[command(subcommand)]
    action: Option<FeedReplayAction>,

    #[command(flatten)]
    settings: FeedReplaySettings,
}

#[derive(Debug, Subcommand)]
enum FeedReplayAction {
    /// Serve the replay (the default when no action is given).
    Serve(FeedReplaySettings),
    /// Record the frames of a real Birdeye connection (both channels) into a file that
    /// `feed-replay --recording FILE` serves again, and print the frame counts.
    Record(RecordSettings),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    monitor_core::settings::load_dotenv();
    let cli = monitor_core::settings::parse_args::<Cli>();
    telemetry::init(cli.log_format);

    match cli.command {
        Command::FeedReplay(command) => {
            let FeedReplayCommand { action, settings } = *command;
            let settings = match action {
                Some(FeedReplayAction::Serve(settings)) => settings,
                Some(FeedReplayAction::Record(settings)) => {
                    let shutdown = monitor_core::shutdown::on_signals();
                    let summary = record(&settings, shutdown).await?;
                    println!(
                        "recorded {} price frames and {} trade frames to {}",
                        summary.price_frames,
                        summary.txs_frames,
                        settings.out.display()
                    );
                    return Ok(());
                }
                None => settings,
            };
            feed_replay(settings, monitor_core::shutdown::on_signals()).await
        }
        Command::ChainReplay(command) => {
            chain_replay(command, monitor_core::shutdown::on_signals()).await
        }
        Command::BackendStub(settings) => {
            backend_stub(settings, monitor_core::shutdown::on_signals()).await
        }
        Command::Seed(settings) => {
            let seeded = seed(&settings).await?;
            println!("task_id={}", seeded.task_id);
            println!("config_id={}", seeded.config_id);
            println!("target_id={}", seeded.target_id);
            Ok(())
        }
        Command::Loadgen(command) => {
            let line = loadgen::run(*command, monitor_core::shutdown::on_signals()).await?;
            println!("{line}");
            Ok(())
        }
    }
}

async fn feed_replay(
    settings: FeedReplaySettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let replay = FeedReplay::load(&settings)?;
    let listener = bind(settings.listen).await?;
    std::sync::Arc::new(replay).serve(listener, shutdown).await;
    Ok(())
}

async fn chain_replay(
    command: ChainReplayCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let replay = ChainReplay::load(&command)?;
    let listen = match &command {
        ChainReplayCommand::Eth(settings) => settings.listen,
        ChainReplayCommand::Sol(settings) => settings.listen,
    };
    let listener = bind(listen).await?;
    std::sync::Arc::new(replay).serve(listener, shutdown).await;
    Ok(())
}

async fn backend_stub(
    settings: BackendStubSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stub = BackendStub::from_settings(&settings);
    let out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &settings.out {
        Some(path) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .with_context(|| format!("failed to open output file {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let listener = bind(settings.listen).await?;
    run_backend_stub(listener, stub, out, shutdown).await?;
    Ok(())
}

/// Binds the listener and prints its address as the first stdout line, which tests wait for.
async fn bind(address: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("failed to listen on {address}"))?;
    let bound = listener
        .local_addr()
        .context("failed to read the bound address")?;
    println!("listening on {bound}");
    Ok(listener)
}
