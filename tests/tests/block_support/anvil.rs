//! Driving an anvil node from a test: JSON-RPC over HTTP, transfers, a contract that emits
//! ERC-20 `Transfer` logs, and a TCP proxy that can cut ingest off the node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;

/// The first two of anvil's default accounts, unlocked for `eth_sendTransaction`.
pub const ACCOUNT_0: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
pub const ACCOUNT_1: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
/// keccak-256 of `Transfer(address,address,uint256)`.
pub const TRANSFER_TOPIC: &str =
    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
/// One ether in wei.
pub const ETHER: u128 = 1_000_000_000_000_000_000;

/// Sends one JSON-RPC request over HTTP/1.1 and returns its result.
///
/// # Panics
/// If the node cannot be reached or returns an error.
pub async fn rpc(http_url: &str, method: &str, params: Value) -> Value {
    let address = http_url.trim_start_matches("http://");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("failed to connect to {address}: {e}"));
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("response read");
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("{method}: no HTTP body in {text}"));
    let answer: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("{method}: invalid JSON response {body}: {e}"));
    if let Some(error) = answer.get("error") {
        panic!("{method} failed: {error}");
    }
    answer["result"].clone()
}

/// Sends `wei` from one unlocked account to another; returns the transaction hash.
pub async fn send_ether(http_url: &str, from: &str, to: &str, wei: u128) -> String {
    let result = rpc(
        http_url,
        "eth_sendTransaction",
        json!([{"from": from, "to": to, "value": format!("0x{wei:x}")}]),
    )
    .await;
    result.as_str().expect("a transaction hash").to_owned()
}

/// Installs at `address` a contract that, when called with `to` and `amount` as two 32-byte
/// words, emits `Transfer(caller, to, amount)` like an ERC-20 token.
///
/// The runtime code, written by hand: `mstore(0, calldataload(32))`, then
/// `log3(0, 32, TRANSFER_TOPIC, caller, calldataload(0))`, then `stop`.
pub async fn install_transfer_emitter(http_url: &str, address: &str) {
    let topic = TRANSFER_TOPIC.trim_start_matches("0x");
    let code = format!("0x602035600052600035337f{topic}60206000a300");
    rpc(http_url, "anvil_setCode", json!([address, code])).await;
}

/// Calls the emitter at `contract` from `from`; returns the transaction hash.
pub async fn emit_transfer(
    http_url: &str,
    contract: &str,
    from: &str,
    to: &str,
    amount: u128,
) -> String {
    let data = format!("0x{:0>64}{amount:064x}", to.trim_start_matches("0x"));
    let result = rpc(
        http_url,
        "eth_sendTransaction",
        json!([{"from": from, "to": contract, "data": data}]),
    )
    .await;
    result.as_str().expect("a transaction hash").to_owned()
}

/// Returns the receipt of a transaction once it is mined; anvil mines right after
/// `eth_sendTransaction` returns, or when the test mines a block.
///
/// # Panics
/// If the transaction is not mined within 30 s.
pub async fn receipt(http_url: &str, tx_hash: &str) -> Value {
    let mined = monitor_tests::wait_for(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let receipt = rpc(http_url, "eth_getTransactionReceipt", json!([tx_hash])).await;
            (!receipt.is_null()).then_some(receipt)
        },
    )
    .await;
    mined.unwrap_or_else(|| panic!("transaction {tx_hash} is not mined"))
}

/// Returns a block header by number.
pub async fn block(http_url: &str, number: u64) -> Value {
    rpc(
        http_url,
        "eth_getBlockByNumber",
        json!([format!("0x{number:x}"), false]),
    )
    .await
}

/// Returns the number and timestamp (seconds) of the block that mined `tx_hash`.
pub async fn mined_at(http_url: &str, tx_hash: &str) -> (u64, u64) {
    let receipt = receipt(http_url, tx_hash).await;
    let number = quantity(&receipt["blockNumber"]);
    let header = block(http_url, number).await;
    (number, quantity(&header["timestamp"]))
}

pub async fn block_number(http_url: &str) -> u64 {
    quantity(&rpc(http_url, "eth_blockNumber", json!([])).await)
}

/// Mines one block now.
pub async fn mine(http_url: &str) {
    rpc(http_url, "evm_mine", json!([])).await;
}

/// Reads a hex quantity.
pub fn quantity(value: &Value) -> u64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a hex quantity"));
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("{text} is not a hex quantity: {e}"))
}

/// A TCP proxy in front of a node that a test can cut: while cut, open connections are
/// closed and new ones wait unconnected until the proxy is restored.
pub struct CuttableProxy {
    pub port: u16,
    open: watch::Sender<bool>,
    /// Connections forwarding to the node right now.
    piping: Arc<AtomicUsize>,
    /// The forwarding tasks; dropping the proxy drops them with the accept task.
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts forwarding a free port on 127.0.0.1 to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy port bound");
        let port = listener.local_addr().expect("proxy address").port();
        let (open, open_rx) = watch::channel(true);
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let tasks = Arc::clone(&connections);
        let piping = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&piping);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let mut open = open_rx.clone();
                let counter = Arc::clone(&counter);
                tasks.lock().await.spawn(async move {
                    // A connection made while the proxy is cut waits until it is restored.
                    if open.wait_for(|is_open| *is_open).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    pipe(client, server, open).await;
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        CuttableProxy {
            port,
            open,
            piping,
            connections,
            accept,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Closes every open connection and returns once none forwards any more; new ones wait
    /// until [`CuttableProxy::restore`].
    ///
    /// # Panics
    /// If a connection still forwards after 10 s.
    pub async fn cut(&self) {
        self.open.send_replace(false);
        let closed = monitor_tests::wait_until(
            Duration::from_secs(10),
            Duration::from_millis(10),
            || async { self.piping.load(Ordering::SeqCst) == 0 },
        )
        .await;
        assert!(closed, "the proxy's connections did not close");
    }

    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn pipe(client: TcpStream, server: TcpStream, mut open: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
        _ = open.wait_for(|is_open| !*is_open) => {}
    }
}
