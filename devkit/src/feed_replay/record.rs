//! `devkit feed-replay record`: captures the frames of a real Birdeye connection into a file
//! that `devkit feed-replay --recording FILE` serves again.
//!
//! Consumes a Birdeye WebSocket URL, a chain, an API key and the addresses to watch. Opens one
//! connection per channel (prices and trades), subscribes as ingest does (complex queries of at
//! most 100 addresses) and writes every text frame received as one JSON line:
//! `{"t_ms":<receive time, ms since the Unix epoch>,"channel":"price"|"txs","frame":"<raw
//! text>"}`. The first line is a header `{"recording":{"chain":..,"addresses":[..],
//! "started_ms":..}}`. Recording stops after `--duration`, on SIGINT/SIGTERM, or when both
//! connections have closed. The API key is never written or logged.
//!
//! [`Recording::load`] reads such a file back: data frames by channel, with their offsets from
//! the first recorded frame, so a replay keeps the recorded pace and the order across channels.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use url::Url;

use monitor_core::messages::Chain;
use monitor_core::settings::{parse_seconds, Redacted};

use super::query::{Channel, MAX_ADDRESSES_PER_SUBSCRIPTION};

/// Settings of `devkit feed-replay record`.
#[derive(Debug, Clone, Args)]
pub struct RecordSettings {
    /// Base WebSocket URL of the feed, for example wss://public-api.birdeye.so/socket; the
    /// chain's Birdeye name is appended as a path segment and the key as x-api-key.
    #[arg(long)]
    pub url: Url,

    /// Chain to record: sol, eth or bsc (also solana, ethereum).
    #[arg(long, default_value = "ethereum")]
    pub chain: Chain,

    /// API key sent as x-api-key; never written to the file.
    #[arg(long, env = "BIRDEYE_API_KEY", hide_env_values = true)]
    pub api_key: Redacted,

    /// Token address to subscribe to on both channels; repeat it for several.
    #[arg(long = "address", required = true)]
    pub addresses: Vec<String>,

    /// File to write (JSON lines); an existing file is replaced.
    #[arg(long)]
    pub out: PathBuf,

    /// Seconds to record; unset records until SIGINT or SIGTERM.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("failed to write recording {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read recording {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid recording {path} at line {line}: {problem}")]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("failed to connect the {channel} channel to {url}: {source}")]
    Connect {
        channel: &'static str,
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
}

/// First line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub chain: Chain,
    pub addresses: Vec<String>,
    pub started_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeaderLine {
    recording: Header,
}

/// One recorded frame line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameLine {
    pub t_ms: i64,
    pub channel: String,
    pub frame: String,
}

/// Frame counts of a recording run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordSummary {
    pub price_frames: u64,
    pub txs_frames: u64,
}

/// Records until the duration passed, `shutdown` is cancelled or both connections closed.
pub async fn record(
    settings: &RecordSettings,
    shutdown: CancellationToken,
) -> Result<RecordSummary, RecordError> {
    let write_error = |source| RecordError::Write {
        path: settings.out.clone(),
        source,
    };
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&settings.out).map_err(write_error)?);
    let header = HeaderLine {
        recording: Header {
            chain: settings.chain,
            addresses: settings.addresses.clone(),
            started_ms: monitor_core::time::now_ms(),
        },
    };
    writeln!(out, "{}", to_json(&header)).map_err(write_error)?;

    let (sender, mut frames) = mpsc::channel::<FrameLine>(1024);
    let stop = shutdown.child_token();
    let mut connections = tokio::task::JoinSet::new();
    for channel in [Channel::Price, Channel::Txs] {
        let socket = connect(settings, channel).await?;
        connections.spawn(read_channel(socket, channel, sender.clone(), stop.clone()));
    }
    drop(sender);
    tracing::info!(url = %redacted(&settings.url), chain = %settings.chain, addresses = settings.addresses.len(), out = %settings.out.display(), "recording started");

    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let mut summary = RecordSummary::default();
    loop {
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = until_deadline => break,
            line = frames.recv() => match line {
                Some(line) => {
                    match line.channel.as_str() {
                        "price" => summary.price_frames += 1,
                        _ => summary.txs_frames += 1,
                    }
                    writeln!(out, "{}", to_json(&line)).map_err(write_error)?;
                }
                None => break,
            },
        }
    }
    stop.cancel();
    while let Some(line) = frames.recv().await {
        writeln!(out, "{}", to_json(&line)).map_err(write_error)?;
    }
    connections.shutdown().await;
    out.flush().map_err(write_error)?;
    tracing::info!(
        price_frames = summary.price_frames,
        txs_frames = summary.txs_frames,
        "recording stopped"
    );
    Ok(summary)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(settings: &RecordSettings, channel: Channel) -> Result<Socket, RecordError> {
    let mut url = settings.url.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(settings.chain.birdeye_name());
    }
    let shown = redacted(&url);
    url.query_pairs_mut()
        .append_pair("x-api-key", settings.api_key.expose());
    let failed = |source| RecordError::Connect {
        channel: channel.as_str(),
        url: shown.clone(),
        source: Box::new(source),
    };
    let mut request = url.as_str().into_client_request().map_err(failed)?;
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("echo-protocol"),
    );
    headers.insert(
        "origin",
        HeaderValue::from_static("ws://public-api.birdeye.so"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(failed)?;
    for message in subscriptions(channel, &settings.addresses) {
        socket.send(Message::text(message)).await.map_err(failed)?;
    }
    Ok(socket)
}

/// Builds the subscription messages that ingest sends for `channel`.
pub fn subscriptions(channel: Channel, addresses: &[String]) -> Vec<String> {
    addresses
        .chunks(MAX_ADDRESSES_PER_SUBSCRIPTION)
        .map(|chunk| {
            let (kind, query) = match channel {
                Channel::Price => (
                    "SUBSCRIBE_PRICE",
                    chunk
                        .iter()
                        .map(|a| format!("(address = {a} AND chartType = 1m AND currency = usd)"))
                        .collect::<Vec<_>>()
                        .join(" OR "),
                ),
                Channel::Txs => (
                    "SUBSCRIBE_TXS",
                    chunk
                        .iter()
                        .map(|a| format!("address = {a}"))
                        .collect::<Vec<_>>()
                        .join(" OR "),
                ),
            };
            serde_json::json!({"type": kind, "data": {"queryType": "complex", "query": query}})
                .to_string()
        })
        .collect()
}

async fn read_channel(
    mut socket: Socket,
    channel: Channel,
    frames: mpsc::Sender<FrameLine>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = socket.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
            Some(Ok(Message::Close(_))) | None => {
                tracing::info!(
                    channel = channel.as_str(),
                    "recorded connection closed by the server"
                );
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                tracing::warn!(channel = channel.as_str(), error = %error, "recorded connection failed");
                break;
            }
        };
        let line = FrameLine {
            t_ms: monitor_core::time::now_ms(),
            channel: channel.as_str().to_owned(),
            frame: text,
        };
        if frames.send(line).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
}

fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

fn to_json<T: Serialize>(value: &T) -> String {
    // These types hold only strings and numbers, whose serialization does not fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// A recorded frame as served again: its offset from the first frame and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedFrame {
    pub offset_ms: i64,
    pub text: String,
}

/// A recording loaded for serving.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub header: Header,
    pub price: Vec<RecordedFrame>,
    pub txs: Vec<RecordedFrame>,
}

impl Recording {
    /// Reads a recording. `WELCOME` frames are left out, since the server sends its own.
    pub fn load(path: &Path) -> Result<Recording, RecordError> {
        let read_error = |source| RecordError::Read {
            path: path.to_owned(),
            source,
        };
        let invalid = |line: usize, problem: String| RecordError::Invalid {
            path: path.to_owned(),
            line,
            problem,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut lines = BufReader::new(file).lines();
        let first = lines
            .next()
            .ok_or_else(|| invalid(1, "the file is empty".into()))?
            .map_err(read_error)?;
        let header: HeaderLine = serde_json::from_str(&first).map_err(|e| {
            invalid(
                1,
                format!("expected the header line {{\"recording\":..}}: {e}"),
            )
        })?;

        let mut frames: Vec<(usize, FrameLine)> = Vec::new();
        for (index, line) in lines.enumerate() {
            let number = index + 2;
            let line = line.map_err(read_error)?;
            if line.trim().is_empty() {
                continue;
            }
            let frame: FrameLine = serde_json::from_str(&line)
                .map_err(|e| invalid(number, format!("expected a frame line: {e}")))?;
            if frame.channel != "price" && frame.channel != "txs" {
                return Err(invalid(
                    number,
                    format!("channel must be price or txs, got {:?}", frame.channel),
                ));
            }
            frames.push((number, frame));
        }
        let first_ms = frames.iter().map(|(_, f)| f.t_ms).min().unwrap_or(0);
        let mut recording = Recording {
            header: header.recording,
            price: Vec::new(),
            txs: Vec::new(),
        };
        for (_, frame) in frames {
            if frame.frame.contains("\"WELCOME\"") && frame.frame.len() < 64 {
                continue;
            }
            let recorded = RecordedFrame {
                offset_ms: frame.t_ms - first_ms,
                text: frame.frame,
            };
            match frame.channel.as_str() {
                "price" => recording.price.push(recorded),
                _ => recording.txs.push(recorded),
            }
        }
        Ok(recording)
    }

    /// Recorded frames of one channel, in receive order.
    pub fn frames(&self, channel: Channel) -> &[RecordedFrame] {
        match channel {
            Channel::Price => &self.price,
            Channel::Txs => &self.txs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        let lines = [
            r#"{"recording":{"chain":"eth","addresses":["0xabc"],"started_ms":1000}}"#.to_owned(),
            to_json(&FrameLine {
                t_ms: 1_005,
                channel: "txs".into(),
                frame: r#"{"type":"WELCOME"}"#.into(),
            }),
            to_json(&FrameLine {
                t_ms: 1_010,
                channel: "txs".into(),
                frame: r#"{"type":"TXS_DATA","data":{}}"#.into(),
            }),
            to_json(&FrameLine {
                t_ms: 1_020,
                channel: "price".into(),
                frame: r#"{"type":"PRICE_DATA","data":{}}"#.into(),
            }),
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();

        let recording = Recording::load(&path).unwrap();
        assert_eq!(recording.header.addresses, vec!["0xabc".to_owned()]);
        assert_eq!(recording.txs.len(), 1, "WELCOME is left out");
        assert_eq!(
            recording.txs[0].offset_ms, 5,
            "offsets count from the first frame"
        );
        assert_eq!(recording.price[0].offset_ms, 15);
    }

    #[test]
    fn bad_channel_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jsonl");
        std::fs::write(
            &path,
            "{\"recording\":{\"chain\":\"eth\",\"addresses\":[],\"started_ms\":0}}\n{\"t_ms\":1,\"channel\":\"x\",\"frame\":\"\"}\n",
        )
        .unwrap();
        let error = Recording::load(&path).unwrap_err().to_string();
        assert!(error.contains("at line 2"), "{error}");
        assert!(error.contains("price or txs"), "{error}");
    }

    #[test]
    fn subscriptions_hold_at_most_100_addresses() {
        let addresses: Vec<String> = (0..150).map(|i| format!("0x{i:040x}")).collect();
        let messages = subscriptions(Channel::Txs, &addresses);
        assert_eq!(messages.len(), 2);
        assert!(messages[0].contains("SUBSCRIBE_TXS"));
        assert_eq!(subscriptions(Channel::Price, &addresses[..1]).len(), 1);
    }
}
