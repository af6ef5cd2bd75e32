//! The Birdeye REST endpoints that ingest polls for holders, served on the WebSocket port.
//!
//! A connection whose first request is not a WebSocket upgrade is served as plain HTTP/1.1
//! (keep-alive, GET only). Two endpoints exist:
//! - `GET /defi/token_overview?address=A`: `{"success":true,"data":{"holder":N,"supply":S,
//!   "circulatingSupply":S,"liquidity":L,"mc":M,"price":P,...}}`;
//! - `GET /defi/v3/token/holder?address=A&offset=O&limit=N`: `{"success":true,"data":{"items":
//!   [{"owner":..,"ui_amount":..,"amount":..},...]}}`.
//!
//! The figures are deterministic. The holder count is [`BASE_HOLDERS`] plus
//! [`HOLDERS_PER_TRADE`] for every trade due on the server's timeline so far (the recorded
//! pace divided by `--speed`, from the server's start; every trade at once with speed 0), so
//! it grows while the replay runs. The price is the last due trade's. Holder `k` (from 0)
//! holds `TOP_HOLDER_SHARE / (k + 1)` of the fixed supply. Requests need the `X-API-KEY`
//! header when the server has a key, and `x-chain`, when present, must name the served chain.
//! With `--rest-rps`, requests beyond that many in one second get HTTP 429 with
//! `Retry-After: 1`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::FeedReplay;

/// Holder count before any trade.
pub const BASE_HOLDERS: u64 = 10_000;
/// Holders added per trade due.
pub const HOLDERS_PER_TRADE: u64 = 5;
/// Total supply of every replayed token, in token units.
pub const SUPPLY: f64 = 1_000_000.0;
/// Share of the supply held by the largest holder; holder `k` holds this divided by `k + 1`.
pub const TOP_HOLDER_SHARE: f64 = 0.1;
/// Liquidity reported for every token, in USD.
pub const LIQUIDITY_USD: f64 = 5_000_000.0;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send a request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `limit` of the holder list, as Birdeye documents.
const MAX_LIMIT: usize = 100;

/// Requests per second allowed by `--rest-rps`, counted in whole seconds since the start.
#[derive(Debug, Default)]
pub struct RestLimit {
    pub rps: Option<u32>,
    /// Second (since the server started) and requests counted in it, packed as `second << 32
    /// | count`.
    window: AtomicU64,
}

impl RestLimit {
    pub fn new(rps: Option<u32>) -> Self {
        RestLimit {
            rps,
            window: AtomicU64::new(0),
        }
    }

    /// Counts a request; false when it is over the limit.
    fn admit(&self, second: u64) -> bool {
        let Some(rps) = self.rps else {
            return true;
        };
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window_second, count) = (current >> 32, current & 0xffff_ffff);
            let next = if window_second == second {
                (second << 32) | (count + 1)
            } else {
                (second << 32) | 1
            };
            match self
                .window
                .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (next & 0xffff_ffff) <= u64::from(rps),
                Err(actual) => current = actual,
            }
        }
    }
}

/// Returns whether the request waiting on `stream` is a WebSocket upgrade, without reading
/// it. A client that sends nothing within the timeout counts as a WebSocket client, whose
/// handshake then times out as before.
pub async fn is_websocket_upgrade(stream: &TcpStream) -> bool {
    let mut buffer = vec![0u8; MAX_HEAD];
    let peeked = timeout(REQUEST_TIMEOUT, async {
        loop {
            let read = stream.peek(&mut buffer).await.unwrap_or(0);
            let head = &buffer[..read];
            if read == 0 || read == buffer.len() || find_end(head).is_some() {
                return head.to_ascii_lowercase();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    match peeked {
        Ok(head) => {
            let text = String::from_utf8_lossy(&head);
            text.contains("upgrade: websocket") || text.is_empty()
        }
        Err(_) => true,
    }
}

fn find_end(head: &[u8]) -> Option<usize> {
    head.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// Serves HTTP requests on `stream` until the client closes it.
pub async fn serve(mut stream: TcpStream, peer: SocketAddr, server: &FeedReplay) {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let head = match read_head(&mut stream, &mut buffer).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%peer, error = %error, "feed-replay REST connection ended");
                return;
            }
        };
        let (status, body, retry_after) = respond(&head, server);
        tracing::debug!(%peer, request = head.lines().next().unwrap_or(""), status, "feed-replay REST request");
        let retry = if retry_after {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: keep-alive\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request head; `None` when the client closed the connection between requests.
async fn read_head(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    loop {
        if let Some(end) = find_end(buffer) {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end);
            return Ok(Some(head));
        }
        if buffer.len() >= MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let read = timeout(REQUEST_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("timed out waiting for a request"))??;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Builds the status line, the JSON body and whether to send `Retry-After`.
fn respond(head: &str, server: &FeedReplay) -> (&'static str, String, bool) {
    let request = match Request::parse(head) {
        Ok(request) => request,
        Err(message) => return failure("400 Bad Request", &message),
    };
    let second = server.started.elapsed().as_secs();
    if !server.rest_limit.admit(second) {
        return (
            "429 Too Many Requests",
            json!({"success": false, "message": "Too many requests"}).to_string(),
            true,
        );
    }
    if let Some(key) = server.gate.api_key.as_ref().filter(|k| !k.is_empty()) {
        if request.header("x-api-key") != Some(key.expose()) {
            return failure("401 Unauthorized", "missing or wrong X-API-KEY");
        }
    }
    let chain = server.gate.chain.birdeye_name();
    if let Some(asked) = request.header("x-chain") {
        if asked != chain {
            return failure(
                "400 Bad Request",
                &format!("x-chain {asked:?} is not served, this server replays {chain}"),
            );
        }
    }
    let Some(address) = request.query("address") else {
        return failure("400 Bad Request", "missing query parameter address");
    };
    let Some(token) = server
        .matching_tokens(&[address.to_owned()])
        .first()
        .copied()
    else {
        return failure(
            "404 Not Found",
            &format!("token {address} is not replayed by this server"),
        );
    };
    match request.path.as_str() {
        "/defi/token_overview" => ("200 OK", overview(server, token).to_string(), false),
        "/defi/v3/token/holder" => {
            let offset = request
                .query("offset")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let limit = request
                .query("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(MAX_LIMIT);
            if limit == 0 || limit > MAX_LIMIT {
                return failure(
                    "400 Bad Request",
                    &format!("limit must be 1..={MAX_LIMIT}, got {limit}"),
                );
            }
            (
                "200 OK",
                holder_list(server, token, offset, limit).to_string(),
                false,
            )
        }
        other => failure("404 Not Found", &format!("unknown endpoint {other}")),
    }
}

fn failure(status: &'static str, message: &str) -> (&'static str, String, bool) {
    (
        status,
        json!({"success": false, "message": message}).to_string(),
        false,
    )
}

/// Trades due on the server's timeline so far, over every pass of a looping replay.
fn trades_due(server: &FeedReplay) -> (u64, Option<f64>) {
    let trades = &server.plan.trades;
    let (Some(first), Some(last)) = (trades.first(), trades.last()) else {
        return (0, None);
    };
    let count = trades.len() as u64;
    if server.plan.speed == 0.0 {
        return (count, Some(last.trade.price));
    }
    let elapsed_ms = server.started.elapsed().as_secs_f64() * 1000.0 * server.plan.speed;
    let offset =
        |t: &super::frames::ReplayTrade| (t.trade.timestamp_ms - first.trade.timestamp_ms) as f64;
    let span = offset(last) + 1.0;
    let (passes, within) = if server.plan.looping {
        ((elapsed_ms / span).floor() as u64, elapsed_ms % span)
    } else if elapsed_ms >= span {
        return (count, Some(last.trade.price));
    } else {
        (0, elapsed_ms)
    };
    let due = trades.partition_point(|t| offset(t) <= within);
    let price = match due {
        0 if passes == 0 => None,
        0 => Some(last.trade.price),
        n => Some(trades[n - 1].trade.price),
    };
    (passes * count + due as u64, price)
}

fn overview(server: &FeedReplay, token: usize) -> Value {
    let (due, price) = trades_due(server);
    let info = &server.plan.tokens[token];
    let price = price.unwrap_or(0.0);
    json!({
        "success": true,
        "data": {
            "address": info.address,
            "symbol": info.symbol,
            "decimals": info.decimals,
            "holder": BASE_HOLDERS + HOLDERS_PER_TRADE * due,
            "supply": SUPPLY,
            "circulatingSupply": SUPPLY,
            "liquidity": LIQUIDITY_USD,
            "price": price,
            "mc": price * SUPPLY,
        }
    })
}

fn holder_list(server: &FeedReplay, token: usize, offset: usize, limit: usize) -> Value {
    let info = &server.plan.tokens[token];
    let items: Vec<Value> = (offset..offset + limit)
        .map(|k| {
            let ui_amount = SUPPLY * TOP_HOLDER_SHARE / (k as f64 + 1.0);
            let raw = ui_amount * 10f64.powi(info.decimals.min(18) as i32);
            json!({
                "owner": format!("holder{k:035}"),
                "ui_amount": ui_amount,
                "amount": format!("{raw:.0}"),
                "decimals": info.decimals,
                "mint": info.address,
            })
        })
        .collect();
    json!({"success": true, "data": {"items": items}})
}

/// Expected share of the supply, in percent, held by the top `n` holders of the list.
pub fn top_share_pct(n: usize) -> f64 {
    (0..n)
        .map(|k| TOP_HOLDER_SHARE / (k as f64 + 1.0))
        .sum::<f64>()
        * 100.0
}

/// The parts of a request head that the endpoints read.
struct Request {
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl Request {
    fn parse(head: &str) -> Result<Request, String> {
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Err(format!("invalid request line {request_line:?}"));
        };
        if method != "GET" {
            return Err(format!("method {method} is not supported, use GET"));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Ok(Request {
            path: path.to_owned(),
            query,
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_is_parsed() {
        let head = "GET /defi/token_overview?address=0xAb&x=1 HTTP/1.1\r\nX-API-KEY: k\r\nx-chain: ethereum\r\n\r\n";
        let request = Request::parse(head).unwrap();
        assert_eq!(request.path, "/defi/token_overview");
        assert_eq!(request.query("address"), Some("0xAb"));
        assert_eq!(request.header("x-api-key"), Some("k"));
        assert!(Request::parse("POST / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn limit_admits_rps_per_second() {
        let limit = RestLimit::new(Some(2));
        assert!(limit.admit(5));
        assert!(limit.admit(5));
        assert!(!limit.admit(5));
        assert!(limit.admit(6), "a new second starts a new count");
        assert!(RestLimit::new(None).admit(0));
    }

    #[test]
    fn top_ten_share_is_harmonic() {
        let expected = 10.0
            * (1.0
                + 0.5
                + 1.0 / 3.0
                + 0.25
                + 0.2
                + 1.0 / 6.0
                + 1.0 / 7.0
                + 0.125
                + 1.0 / 9.0
                + 0.1);
        assert!((top_share_pct(10) - expected).abs() < 1e-9);
    }
}
