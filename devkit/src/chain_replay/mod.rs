//! `devkit chain-replay eth|sol`: a node that replays recorded mainnet blocks.
//!
//! Consumes the recordings in `data/` ([`eth::EthRecording`], [`sol::SolRecording`]) and
//! serves them on one port in the protocols the chain adapters speak. JSON-RPC over WebSocket
//! carries the subscriptions: `eth_subscribe` `newHeads` and `logs`, or Solana `slotSubscribe`
//! and `logsSubscribe` with `mentions`. JSON-RPC over HTTP POST serves Solana `getBlock` and
//! every other method that is not a subscription. A connection's replay starts when it
//! subscribes to heads or slots and sends one block (or slot) per step, paced by the recorded
//! block times divided by `--speed` (eth) or by `--slot-interval` (sol). With
//! `--remove-last-block` a last eth step sends the last block's logs again as removed. Every
//! connection replays the recording from its start, so each client gets the same
//! notifications.

mod connection;
pub mod eth;
mod http;
pub mod json;
pub mod sol;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use monitor_core::settings::parse_seconds;

/// Time that open connections get to close after shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The recorded Ethereum blocks shipped in `data/`, relative to the repository root.
pub const DEFAULT_ETH_DIR: &str = "data/eth-mainnet-blocks-17173049-17173050";
/// The recorded Solana block shipped in `data/`, relative to the repository root.
pub const DEFAULT_SOL_FILE: &str = "data/sol-mainnet-slot-110130000/getBlock-110130000.json.gz";

/// The recording `devkit chain-replay` serves.
#[derive(Debug, Clone, Subcommand)]
pub enum ChainReplayCommand {
    /// Serve recorded Ethereum blocks as an EVM node (eth_subscribe newHeads and logs, block
    /// bodies, eth_getLogs).
    Eth(EthReplaySettings),
    /// Serve a recorded Solana block as a Solana node (slotSubscribe, logsSubscribe with
    /// mentions, getBlock over HTTP).
    Sol(SolReplaySettings),
}

/// Settings of `devkit chain-replay eth`.
#[derive(Debug, Clone, Args)]
pub struct EthReplaySettings {
    /// Address to listen on; port 0 picks a free port. The bound address is printed as the
    /// first line on stdout: `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8545")]
    pub listen: SocketAddr,

    /// Directory with ethereum-etl's blocks.json, transactions.json and logs.json.
    #[arg(long, default_value = DEFAULT_ETH_DIR)]
    pub dir: PathBuf,

    /// Replay speed: recorded gaps between blocks are divided by it; 0 sends every block as
    /// fast as the client reads.
    #[arg(long, default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,

    /// After the last block, send its logs again with `removed: true`, as a node does when a
    /// reorg drops a block, one block interval later.
    #[arg(long)]
    pub remove_last_block: bool,
}

/// Settings of `devkit chain-replay sol`.
#[derive(Debug, Clone, Args)]
pub struct SolReplaySettings {
    /// Address to listen on (WebSocket PubSub and HTTP JSON-RPC on the same port); port 0
    /// picks a free port. The bound address is printed as the first line on stdout.
    #[arg(long, default_value = "127.0.0.1:8899")]
    pub listen: SocketAddr,

    /// Gzipped getBlock response (jsonParsed encoding) to serve.
    #[arg(long, default_value = DEFAULT_SOL_FILE)]
    pub file: PathBuf,

    /// Slot of the recorded block; read from the file name `getBlock-<slot>.json.gz` when
    /// unset.
    #[arg(long)]
    pub slot: Option<u64>,

    /// Slots announced per connection: the recorded one, then that many minus one slots after
    /// it without a block (getBlock reports them as skipped).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub slots: u64,

    /// Seconds between two slot notifications.
    #[arg(long, default_value = "0.4", value_parser = parse_seconds)]
    pub slot_interval: Duration,
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed >= 0.0 => Ok(speed),
        _ => Err(format!(
            "expected a speed factor >= 0 (0 = as fast as possible), got {s:?}"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChainReplayError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid recording {path}: {problem}")]
    Record { path: PathBuf, problem: String },
}

/// A JSON-RPC error returned to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFailure {
    pub code: i64,
    pub message: String,
}

impl RpcFailure {
    pub fn method_not_found(method: &str) -> Self {
        RpcFailure {
            code: -32601,
            message: format!("method {method} is not served by devkit chain-replay"),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcFailure {
            code: -32602,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        RpcFailure {
            code: -32600,
            message: message.into(),
        }
    }
}

/// Builds a JSON-RPC response.
pub fn response(id: &Value, result: Result<Value, RpcFailure>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(failure) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": failure.code, "message": failure.message}
        }),
    }
}

/// The recording of a replay, with the Solana slot count.
#[derive(Debug, Clone)]
pub enum Recording {
    Eth {
        recording: eth::EthRecording,
        /// Whether a last step sends the last block's logs again as removed.
        remove_last_block: bool,
    },
    Sol {
        recording: sol::SolRecording,
        slots: u64,
    },
}

/// A loaded recording with its pacing, ready to serve.
#[derive(Debug)]
pub struct ChainReplay {
    pub recording: Recording,
    speed: f64,
    slot_interval: Duration,
}

impl ChainReplay {
    /// Loads the recording that `command` names.
    pub fn load(command: &ChainReplayCommand) -> Result<ChainReplay, ChainReplayError> {
        match command {
            ChainReplayCommand::Eth(settings) => {
                let recording = eth::EthRecording::load(&settings.dir)?;
                tracing::info!(dir = %settings.dir.display(), blocks = recording.blocks.len(), "chain-replay eth recording loaded");
                Ok(ChainReplay {
                    recording: Recording::Eth {
                        recording,
                        remove_last_block: settings.remove_last_block,
                    },
                    speed: settings.speed,
                    slot_interval: Duration::ZERO,
                })
            }
            ChainReplayCommand::Sol(settings) => {
                let recording = sol::SolRecording::load(&settings.file, settings.slot)?;
                tracing::info!(file = %settings.file.display(), slot = recording.slot, transactions = recording.transactions.len(), "chain-replay sol recording loaded");
                Ok(ChainReplay {
                    recording: Recording::Sol {
                        recording,
                        slots: settings.slots,
                    },
                    speed: 0.0,
                    slot_interval: settings.slot_interval,
                })
            }
        }
    }

    /// Number of replay steps: blocks (eth) or slots (sol).
    pub fn steps(&self) -> usize {
        match &self.recording {
            Recording::Eth {
                recording,
                remove_last_block,
            } => recording.blocks.len() + usize::from(*remove_last_block),
            Recording::Sol { slots, .. } => *slots as usize,
        }
    }

    /// Time to wait before step `index`: zero for the first one.
    pub fn wait_before(&self, index: usize) -> Duration {
        if index == 0 {
            return Duration::ZERO;
        }
        match &self.recording {
            Recording::Eth { recording, .. } => {
                if self.speed == 0.0 {
                    return Duration::ZERO;
                }
                // The removal step after the last block waits as long as the last block did.
                let index = index.min(recording.blocks.len() - 1);
                let gap = recording.blocks[index]
                    .timestamp
                    .saturating_sub(recording.blocks[index - 1].timestamp);
                Duration::from_secs_f64(gap as f64 / self.speed)
            }
            Recording::Sol { .. } => self.slot_interval,
        }
    }

    /// Returns the result of a JSON-RPC method that is not a subscription.
    pub fn call(&self, method: &str, params: &Value) -> Result<Value, RpcFailure> {
        match &self.recording {
            Recording::Eth { recording, .. } => recording.call(method, params),
            Recording::Sol { recording, .. } => recording.call(method, params),
        }
    }

    /// Accepts connections until `shutdown` is cancelled, then closes every connection.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        tracing::info!(address = ?listener.local_addr().ok(), steps = self.steps(), "chain-replay serving");
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(connection::serve(stream, peer, Arc::clone(&self), shutdown.clone()));
                    }
                    Err(error) => {
                        // Usually out of file descriptors: wait instead of spinning.
                        tracing::warn!(error = %error, "chain-replay failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(joined) = connections.join_next(), if !connections.is_empty() => log_panic(joined),
            }
        }
        let drain = async {
            while let Some(joined) = connections.join_next().await {
                log_panic(joined);
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(
                "chain-replay aborted connections still open after the shutdown grace period"
            );
            connections.shutdown().await;
        }
        tracing::info!("chain-replay stopped");
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(error = %error, "chain-replay connection task panicked");
    }
}
