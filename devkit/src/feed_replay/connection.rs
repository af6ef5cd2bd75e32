//! One client connection of the feed replay server.
//!
//! Consumes an accepted TCP stream. Runs the WebSocket handshake, sends `WELCOME`, then serves
//! subscriptions: each channel (price, trades) replays the file for every replayed token that
//! the client subscribes to on it, from its first row or, with `--live`, from the trade due
//! next on the server's timeline. Client messages, pings every
//! `ping_interval` and due frames are handled in one loop, so a slow client slows only its own
//! replay. A finished replay leaves the connection open and idle until the client leaves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{interval_at, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::frames::{error_frame, welcome_frame};
use super::handshake::HandshakeOutcome;
use super::query::{parse_client_message, Channel, ClientMessage};
use super::replay::ChannelReplay;
use super::FeedReplay;

/// Maximum time a client may take to send its upgrade request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum wait for the client's close frame in reply to ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<TcpStream>;
type WsResult<T> = Result<T, tokio_tungstenite::tungstenite::Error>;

/// Serves one accepted TCP stream until the client leaves or the server shuts down. Errors are
/// logged here: a broken client never stops the server.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    server: Arc<FeedReplay>,
    shutdown: CancellationToken,
) {
    if !super::rest::is_websocket_upgrade(&stream).await {
        super::rest::serve(stream, peer, &server).await;
        return;
    }
    let Some((socket, path)) = accept(stream, peer, &server).await else {
        return;
    };
    tracing::info!(%peer, path, "feed-replay connection opened");

    let mut connection = Connection {
        socket,
        peer,
        server,
        replays: Vec::new(),
        frames_sent: 0,
    };
    match connection.run(&shutdown).await {
        Ok(reason) => {
            tracing::info!(%peer, frames_sent = connection.frames_sent, reason, "feed-replay connection closed")
        }
        Err(error) => tracing::info!(
            %peer,
            frames_sent = connection.frames_sent,
            error = %error,
            "feed-replay connection failed"
        ),
    }
}

async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    server: &FeedReplay,
) -> Option<(Socket, String)> {
    let mut outcome = HandshakeOutcome::default();
    #[allow(clippy::result_large_err)]
    let callback = |request: &_, response| server.gate.respond(request, response, &mut outcome);
    let result = timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async(stream, callback),
    )
    .await;

    match result {
        Ok(Ok(socket)) => Some((socket, outcome.path)),
        Ok(Err(error)) => {
            match &outcome.rejection {
                Some(rejection) => {
                    tracing::warn!(%peer, path = outcome.path, status = %rejection.status(), reason = %rejection, "feed-replay handshake rejected")
                }
                None => tracing::warn!(%peer, error = %error, "feed-replay handshake failed"),
            }
            None
        }
        Err(_) => {
            tracing::warn!(%peer, timeout_sec = HANDSHAKE_TIMEOUT.as_secs(), "feed-replay handshake timed out");
            None
        }
    }
}

struct Connection {
    socket: Socket,
    peer: SocketAddr,
    server: Arc<FeedReplay>,
    /// At most one replay per channel.
    replays: Vec<ChannelReplay>,
    /// Data frames (`TXS_DATA`, `PRICE_DATA`) sent so far.
    frames_sent: u64,
}

/// Connection state after a client frame.
enum Flow {
    Continue,
    Closed,
}

impl Connection {
    /// Runs the connection and returns why it ended.
    async fn run(&mut self, shutdown: &CancellationToken) -> WsResult<&'static str> {
        self.socket.send(Message::text(welcome_frame())).await?;
        let period = self.server.ping_interval;
        let mut ping = interval_at(Instant::now() + period, period);

        loop {
            let due = self.next_due();
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Shutdown does not wait for the client's close reply because a client that is
                    // not reading would hold up the whole server.
                    let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                    let _ = self.socket.close(Some(frame)).await;
                    return Ok("server shutting down");
                }
                incoming = self.socket.next() => {
                    let Some(message) = incoming else { return Ok("client disconnected") };
                    if let Flow::Closed = self.on_message(message?).await? {
                        return Ok("client closed the connection");
                    }
                }
                _ = ping.tick() => self.socket.send(Message::Ping(Bytes::new())).await?,
                _ = sleep_until(due.map_or_else(Instant::now, |(_, at)| at)), if due.is_some() => {
                    if let Some((index, _)) = due {
                        self.send_next(index).await?;
                    }
                    if self.server.close_after.is_some_and(|limit| self.frames_sent >= limit) {
                        self.close(CloseCode::Away, "close-after limit reached", shutdown).await;
                        return Ok("close-after limit reached");
                    }
                }
            }
        }
    }

    /// Returns the index of the replay whose next frame is due first, with that instant.
    fn next_due(&self) -> Option<(usize, Instant)> {
        self.replays
            .iter()
            .enumerate()
            .filter_map(|(index, replay)| replay.due().map(|at| (index, at)))
            .min_by_key(|(_, at)| *at)
    }

    async fn send_next(&mut self, index: usize) -> WsResult<()> {
        let replay = &mut self.replays[index];
        let channel = replay.channel;
        if let Some(text) = replay.next_frame() {
            self.socket.send(Message::text(text)).await?;
            self.frames_sent += 1;
        }
        if self.replays[index].is_finished() {
            tracing::info!(peer = %self.peer, channel = channel.as_str(), frames_sent = self.frames_sent, "feed-replay replay finished, connection stays open");
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Message) -> WsResult<Flow> {
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await?,
            Message::Binary(_) => {
                self.reply_error("binary frames are not supported: send JSON text frames")
                    .await?
            }
            Message::Close(_) => return Ok(Flow::Closed),
            // tungstenite replies to pings itself, and pongs only prove the client is alive.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        Ok(Flow::Continue)
    }

    async fn on_text(&mut self, text: &str) -> WsResult<()> {
        match parse_client_message(text) {
            Ok(ClientMessage::Subscribe { channel, addresses }) => {
                self.subscribe(channel, &addresses);
                Ok(())
            }
            Ok(ClientMessage::Unsubscribe(channel)) => {
                self.replays.retain(|r| r.channel != channel);
                tracing::info!(peer = %self.peer, channel = channel.as_str(), "feed-replay unsubscribed");
                Ok(())
            }
            Err(error) => self.reply_error(&error.to_string()).await,
        }
    }

    fn subscribe(&mut self, channel: Channel, addresses: &[String]) {
        let matched = self.server.matching_tokens(addresses);
        let running: Vec<usize> = self
            .replays
            .iter()
            .filter(|r| r.channel == channel)
            .map(ChannelReplay::token)
            .collect();
        tracing::info!(
            peer = %self.peer,
            channel = channel.as_str(),
            addresses = addresses.len(),
            matched = matched.len(),
            already_running = running.len(),
            "feed-replay subscription received"
        );
        // A later subscription on the same channel adds tokens but does not restart the file
        // of a token already replayed.
        for token in matched {
            if !running.contains(&token) {
                self.replays.push(self.server.start_replay(channel, token));
            }
        }
    }

    async fn reply_error(&mut self, message: &str) -> WsResult<()> {
        tracing::warn!(peer = %self.peer, error = message, "feed-replay rejected a client message");
        self.socket.send(Message::text(error_frame(message))).await
    }

    /// Sends a close frame and waits briefly for the client's close reply or for shutdown.
    /// Failures only mean the client is already gone.
    async fn close(&mut self, code: CloseCode, reason: &'static str, shutdown: &CancellationToken) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self.socket.close(Some(frame)).await.is_err() {
            return;
        }
        let drain = async { while let Some(Ok(_)) = self.socket.next().await {} };
        tokio::select! {
            _ = timeout(CLOSE_TIMEOUT, drain) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
