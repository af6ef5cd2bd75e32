//! `devkit feed-replay`: a Birdeye WebSocket server that replays recorded trades.
//!
//! Consumes a trades CSV (see [`crate::trades`]) and attributes every trade to each of the
//! given tokens. Serves any number of WebSocket clients speaking Birdeye's protocol. A client
//! gets `WELCOME` on connect and subscribes with `SUBSCRIBE_PRICE` / `SUBSCRIBE_TXS` (simple
//! or complex queries). The trades channel then gets one `TXS_DATA` frame per trade and
//! subscribed token, and the price channel gets the token's current one-minute `PRICE_DATA`
//! candle after every trade. Every connection, channel and token replays the file from its
//! first row when it subscribes, at the recorded pace divided by `--speed`. With `--live`
//! every replay follows one timeline that starts with the server, so a subscription gets only
//! the trades due from then on, as from a live feed. The server guarantees the same frames for
//! the same file and settings, so tests can predict alerts.

mod connection;
pub mod frames;
pub mod handshake;
pub mod query;
pub mod record;
pub mod replay;
pub mod rest;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use monitor_core::messages::Chain;
use monitor_core::rules::{is_evm_address, is_solana_address};
use monitor_core::settings::{parse_seconds, Redacted};

use crate::trades::{load_csv, TradesError};
use frames::{ReplayTrade, TokenInfo, TxsShape};
use handshake::Gate;
use replay::ReplayPlan;

/// Wrapped Ether on Ethereum mainnet.
pub const WETH_ADDRESS: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
/// The Uniswap V3 WETH/USDT 0.05 % pool on Ethereum mainnet.
pub const WETH_USDT_POOL: &str = "0x11b815efb8f581194ae79006d24e0d814b7697f6";
/// Time that open connections get to close after shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The recorded trades shipped in `data/`, relative to the repository root.
pub const DEFAULT_TRADES_CSV: &str = "data/binance-ethusdt-trades-2023-02-02/trades.csv";

/// Settings of `devkit feed-replay`.
#[derive(Debug, Clone, Args)]
pub struct FeedReplaySettings {
    /// Address to listen on; port 0 picks a free port. The bound address is printed as the
    /// first line on stdout: `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8765")]
    pub listen: SocketAddr,

    /// Trades CSV to replay (header `,timestamp,id,type,side,price,amount,cost,date`, timestamp
    /// in milliseconds, cost in USD).
    #[arg(long, default_value = DEFAULT_TRADES_CSV)]
    pub csv: PathBuf,

    /// Token address the trades are attributed to; subscriptions to other addresses get no
    /// data. Repeat it to replay the same trades for several tokens, each subscribed token on
    /// its own schedule.
    #[arg(long, default_value = WETH_ADDRESS)]
    pub token: Vec<String>,

    /// Symbol sent with every token.
    #[arg(long, default_value = "WETH")]
    pub symbol: String,

    /// Decimals of the token, for the raw `amount` fields of trades.
    #[arg(long, default_value_t = 18, value_parser = clap::value_parser!(u32).range(0..=30))]
    pub decimals: u32,

    /// Pair address of the first token, sent in the complex trade layout. Further tokens use
    /// their own address as their pair.
    #[arg(long, default_value = WETH_USDT_POOL)]
    pub pair: String,

    /// Chain served: clients must connect to a path ending in its Birdeye name (solana,
    /// ethereum or bsc).
    #[arg(long, default_value = "ethereum")]
    pub chain: Chain,

    /// Replay speed: recorded gaps are divided by it; 1 is the recorded pace, 0 sends every
    /// frame as fast as the client reads.
    #[arg(long, default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,

    /// Start again from the first row after the last one, with times moved forward by the
    /// recorded span rounded up to whole minutes, instead of going idle.
    #[arg(long = "loop")]
    pub looping: bool,

    /// Replay on one timeline shared by every connection, which starts when the server loads
    /// the file: a subscription gets the trades due from then on (and a candle that includes
    /// the minute's earlier trades), as from a live feed. Needs a speed above 0.
    #[arg(long)]
    pub live: bool,

    /// Layout of TXS_DATA frames: simple (token subscription, with tokenAddress and side) or
    /// complex (pair layout, the side follows from the from/to addresses).
    #[arg(long, value_enum, default_value_t = TxsShape::Simple)]
    pub txs_shape: TxsShape,

    /// API key that clients must send as x-api-key (query or header); any key is accepted
    /// when unset. Rejected clients get HTTP 401.
    #[arg(long, hide_default_value = true)]
    pub api_key: Option<Redacted>,

    /// Seconds between WebSocket pings sent to each client.
    #[arg(long, default_value = "15", value_parser = parse_seconds)]
    pub ping_interval: Duration,

    /// Close each connection after this many data frames (TXS_DATA and PRICE_DATA together),
    /// to exercise client reconnects; unset keeps connections open.
    #[arg(long)]
    pub close_after: Option<u64>,

    /// Replay this many generated token addresses in place of --token (EVM chains only):
    /// `0x5e5e…` followed by the token number in 8 hex digits. Token `i` replays the trades
    /// shifted in time by `i` times 997 ms (modulo the recorded span), so the tokens do not
    /// trade in step.
    #[arg(long, conflicts_with = "live")]
    pub synthetic_tokens: Option<u32>,

    /// Serve the frames of a file written by `devkit feed-replay record` instead of the
    /// trades CSV: a client subscribing on a channel to any recorded address gets that
    /// channel's recorded frames as they were received, at the recorded pace divided by
    /// --speed. The frames are not filtered by the subscribed addresses.
    #[arg(long, conflicts_with_all = ["synthetic_tokens", "live", "looping"])]
    pub recording: Option<PathBuf>,

    /// Answer REST requests beyond this many per second with HTTP 429 and `Retry-After: 1`;
    /// unset answers all.
    #[arg(long)]
    pub rest_rps: Option<u32>,
}

/// Address of synthetic token `index` (see `--synthetic-tokens`).
pub fn synthetic_token(index: u32) -> String {
    format!("0x{}{index:08x}", "5e".repeat(16))
}

/// Shift of synthetic token `index`'s replay: `index` times 997 ms, modulo the replay's span.
const SYNTHETIC_SHIFT_MS: u64 = 997;

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed >= 0.0 => Ok(speed),
        _ => Err(format!(
            "expected a speed factor >= 0 (0 = as fast as possible), got {s:?}"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedReplayError {
    #[error(transparent)]
    Trades(#[from] TradesError),
    #[error("invalid token {token:?} for chain {chain}: {expected}")]
    InvalidToken {
        token: String,
        chain: Chain,
        expected: &'static str,
    },
    #[error("trade {id} does not fit in base units with {decimals} decimals: amount {amount}, cost {cost}")]
    AmountTooLarge {
        id: u64,
        decimals: u32,
        amount: String,
        cost: String,
    },
    #[error("ping interval must be greater than 0")]
    ZeroPingInterval,
    #[error("--live needs a speed above 0, got {0}")]
    LiveWithoutPace(f64),
    #[error(transparent)]
    Recording(#[from] record::RecordError),
}

/// A loaded replay, ready to serve.
#[derive(Debug)]
pub struct FeedReplay {
    plan: Arc<ReplayPlan>,
    gate: Gate,
    ping_interval: Duration,
    close_after: Option<u64>,
    /// Start of the shared timeline of `--live` replays and of the REST figures.
    started: Instant,
    live: bool,
    /// Whether tokens are synthetic and replay shifted in time.
    synthetic: bool,
    /// Token index by lower-case address (token and pair).
    index: std::collections::HashMap<String, usize>,
    rest_limit: rest::RestLimit,
}

impl FeedReplay {
    /// Loads the trades and checks the settings.
    pub fn load(settings: &FeedReplaySettings) -> Result<FeedReplay, FeedReplayError> {
        let recording = match &settings.recording {
            Some(path) => Some(record::Recording::load(path)?),
            None => None,
        };
        let addresses: Vec<String> = match (&recording, settings.synthetic_tokens) {
            (Some(recording), _) => recording.header.addresses.clone(),
            (None, Some(count)) => (0..count).map(synthetic_token).collect(),
            (None, None) => settings.token.clone(),
        };
        for token in &addresses {
            check_token(token, settings.chain)?;
        }
        if settings.ping_interval.is_zero() {
            return Err(FeedReplayError::ZeroPingInterval);
        }
        if settings.live && settings.speed == 0.0 {
            return Err(FeedReplayError::LiveWithoutPace(settings.speed));
        }

        // A recording replaces the trades file.
        let rows = match &recording {
            Some(_) => Vec::new(),
            None => load_csv(&settings.csv)?,
        };
        let trades = rows
            .into_iter()
            .map(|trade| {
                let error = FeedReplayError::AmountTooLarge {
                    id: trade.id,
                    decimals: settings.decimals,
                    amount: trade.amount_text.clone(),
                    cost: trade.cost_text.clone(),
                };
                ReplayTrade::new(trade, settings.decimals).ok_or(error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(path = %settings.csv.display(), trades = trades.len(), tokens = addresses.len(), first_token = ?addresses.first(), "feed-replay trades loaded");

        let tokens: Vec<TokenInfo> = addresses
            .iter()
            .enumerate()
            .map(|(index, address)| TokenInfo {
                address: address.clone(),
                symbol: settings.symbol.clone(),
                decimals: settings.decimals,
                pair_address: if index == 0 && settings.synthetic_tokens.is_none() {
                    settings.pair.clone()
                } else {
                    address.clone()
                },
            })
            .collect();
        let mut index = std::collections::HashMap::new();
        for (position, token) in tokens.iter().enumerate() {
            index.insert(token.address.to_ascii_lowercase(), position);
            index
                .entry(token.pair_address.to_ascii_lowercase())
                .or_insert(position);
        }
        let plan = ReplayPlan {
            trades,
            tokens,
            speed: settings.speed,
            looping: settings.looping,
            txs_shape: settings.txs_shape,
            recording,
        };
        Ok(FeedReplay {
            plan: Arc::new(plan),
            gate: Gate {
                chain: settings.chain,
                api_key: settings.api_key.clone(),
            },
            ping_interval: settings.ping_interval,
            close_after: settings.close_after,
            started: Instant::now(),
            live: settings.live,
            synthetic: settings.synthetic_tokens.is_some(),
            index,
            rest_limit: rest::RestLimit::new(settings.rest_rps),
        })
    }

    /// Number of trades in one pass over the file.
    pub fn trade_count(&self) -> usize {
        self.plan.trades.len()
    }

    /// Returns the indexes of the replayed tokens that the subscribed addresses name, by
    /// token or pair address. EVM addresses compare without regard to case, Solana addresses
    /// exactly.
    fn matching_tokens(&self, addresses: &[String]) -> Vec<usize> {
        let mut matched: Vec<usize> = addresses
            .iter()
            .filter_map(|address| {
                let position = *self.index.get(&address.to_ascii_lowercase())?;
                let token = &self.plan.tokens[position];
                (same_address(&token.address, address)
                    || same_address(&token.pair_address, address))
                .then_some(position)
            })
            .collect();
        matched.sort_unstable();
        matched.dedup();
        if self.plan.recording.is_some() {
            // A recording is one stream per channel, whichever recorded tokens it names.
            matched.truncate(1);
            matched.iter_mut().for_each(|token| *token = 0);
        }
        matched
    }

    /// Creates the replay of one channel and token for a subscription arriving now.
    fn start_replay(&self, channel: query::Channel, token: usize) -> replay::ChannelReplay {
        let now = Instant::now();
        if self.synthetic {
            // Starting earlier on the replay's own timeline shifts the token in time.
            let shift = self.synthetic_shift(token);
            let started = now.checked_sub(shift).unwrap_or(now);
            let mut replay =
                replay::ChannelReplay::new(channel, Arc::clone(&self.plan), token, started);
            replay.skip_until(now);
            return replay;
        }
        if !self.live {
            return replay::ChannelReplay::new(channel, Arc::clone(&self.plan), token, now);
        }
        let mut replay =
            replay::ChannelReplay::new(channel, Arc::clone(&self.plan), token, self.started);
        replay.skip_until(now);
        replay
    }

    /// Returns how far synthetic token `token` is shifted on the wall clock.
    fn synthetic_shift(&self, token: usize) -> Duration {
        let trades = &self.plan.trades;
        let (Some(first), Some(last)) = (trades.first(), trades.last()) else {
            return Duration::ZERO;
        };
        if self.plan.speed == 0.0 {
            return Duration::ZERO;
        }
        let span_ms = (last.trade.timestamp_ms - first.trade.timestamp_ms).max(1) as u64;
        let shift_ms = (token as u64 * SYNTHETIC_SHIFT_MS) % span_ms;
        Duration::from_secs_f64(shift_ms as f64 / 1000.0 / self.plan.speed)
    }

    /// Accepts connections until `shutdown` is cancelled, then closes every connection and
    /// returns once they are gone.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let address = listener.local_addr().ok();
        tracing::info!(
            ?address,
            speed = self.plan.speed,
            looping = self.plan.looping,
            live = self.live,
            tokens = self.plan.tokens.len(),
            "feed-replay serving"
        );

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
                        tracing::warn!(error = %error, "feed-replay failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(joined) = connections.join_next(), if !connections.is_empty() => log_panic(joined),
            }
        }

        // A connection blocked on a client that stopped reading cannot see the shutdown, so it
        // is aborted after a grace period.
        let drain = async {
            while let Some(joined) = connections.join_next().await {
                log_panic(joined);
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(
                grace_sec = SHUTDOWN_GRACE.as_secs(),
                "feed-replay aborted connections still open after the shutdown grace period"
            );
            connections.shutdown().await;
        }
        tracing::info!("feed-replay stopped");
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(error = %error, "feed-replay connection task panicked");
    }
}

fn check_token(token: &str, chain: Chain) -> Result<(), FeedReplayError> {
    let (valid, expected) = match chain {
        Chain::Eth | Chain::Bsc => (
            is_evm_address(token),
            "expected 0x followed by 40 hex digits",
        ),
        Chain::Sol => (is_solana_address(token), "expected a base58 Solana address"),
    };
    if valid {
        Ok(())
    } else {
        Err(FeedReplayError::InvalidToken {
            token: token.to_owned(),
            chain,
            expected,
        })
    }
}

fn same_address(a: &str, b: &str) -> bool {
    if a.starts_with("0x") && b.starts_with("0x") {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evm_addresses_match_without_case() {
        assert!(same_address(
            WETH_ADDRESS,
            "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
        ));
        assert!(!same_address(
            "So11111111111111111111111111111111111111112",
            "so11111111111111111111111111111111111111112"
        ));
    }

    #[test]
    fn token_must_fit_the_chain() {
        assert!(check_token(WETH_ADDRESS, Chain::Eth).is_ok());
        assert!(check_token(WETH_ADDRESS, Chain::Sol).is_err());
        assert!(check_token("0x1234", Chain::Bsc).is_err());
    }

    #[test]
    fn speed_must_be_a_non_negative_number() {
        assert_eq!(parse_speed("0"), Ok(0.0));
        assert_eq!(parse_speed("2.5"), Ok(2.5));
        assert!(parse_speed("-1").is_err());
        assert!(parse_speed("fast").is_err());
    }
}
