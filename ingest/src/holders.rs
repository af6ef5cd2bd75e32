//! Holder counts and the top holders' share, polled from the Birdeye REST API on one schedule
//! shared by every batch of this instance.
//!
//! Batches whose rules need holders register their targets ([`HolderPolls::register`]) and
//! receive [`HolderSnapshot`]s on a channel. One [`HolderPoller`] task visits the registered
//! targets round robin (batch by batch, target by target), so the number of targets costs no
//! task or timer each. Per target it requests `/defi/token_overview` (holder count, supply,
//! liquidity, market cap) and, when a rule needs the top holders' share,
//! `/defi/v3/token/holder` (the top N holders). Requests carry `X-API-KEY` and `x-chain`.
//!
//! Guarantees: at most `BIRDEYE_RPS` requests per second leave this instance. An HTTP 429
//! pauses every poll for the server's `Retry-After` or an exponential backoff (1 s doubling
//! up to 60 s), then retries the same target. The requests after it stay spaced by at least
//! that delay and speed up by a tenth per successful poll until they are back at
//! `BIRDEYE_RPS`. So both requests of a poll fit under a server limit lower than the setting.
//! Other failures are logged (rate limited) and the poller moves on to the next target. A snapshot that a busy batch cannot take at once
//! is dropped and counted; the next round sends a newer one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use monitor_core::messages::Chain;
use monitor_core::settings::Redacted;
use monitor_core::time::now_ms;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;

/// Snapshots a batch may have waiting before newer ones are dropped.
const CHANNEL_CAPACITY: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Largest `limit` the holder list endpoint accepts.
pub const MAX_TOP_N: u32 = 100;
/// Shortest time between the starts of two rounds over every target, so that a handful of
/// targets is not polled many times a second.
const MIN_ROUND: Duration = Duration::from_secs(5);

/// Holder figures of one token at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct HolderSnapshot {
    pub address: String,
    pub holders: Option<u64>,
    /// Percent of the supply held by the top `top_n` holders.
    pub top_share_pct: Option<f64>,
    pub top_n: Option<u32>,
    pub liquidity: Option<f64>,
    pub market_cap: Option<f64>,
    pub price: Option<f64>,
    /// Wall-clock time of the response, in milliseconds.
    pub time_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error("rate limited by the API (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("request to {endpoint} failed: {source}")]
    Request {
        endpoint: &'static str,
        source: reqwest::Error,
    },
    #[error("{endpoint} answered HTTP {status}: {body}")]
    Status {
        endpoint: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("{endpoint} answered an invalid body: {problem}")]
    Body {
        endpoint: &'static str,
        problem: String,
    },
}

struct Registered {
    chain: Chain,
    top_n: Option<u32>,
    addresses: Vec<String>,
    sender: mpsc::Sender<HolderSnapshot>,
}

#[derive(Default)]
struct Registry {
    batches: BTreeMap<u64, Registered>,
    /// The next target: batch id and position in its list.
    cursor: (u64, usize),
    /// When the current round over every target started.
    round_started: Option<Instant>,
    dropped: u64,
}

/// One target to poll, copied out of the registry.
#[derive(Debug, Clone)]
struct Target {
    batch_id: u64,
    chain: Chain,
    address: String,
    top_n: Option<u32>,
}

impl Registry {
    /// Returns the target at the cursor and moves the cursor past it. The flag is true when
    /// the target is the first of the first batch, so a new round starts.
    fn next_target(&mut self) -> Option<(Target, bool)> {
        let (batch_id, position) = self.cursor;
        let (id, registered, position) = self
            .batches
            .range(batch_id..)
            .find_map(|(id, r)| {
                let position = if *id == batch_id { position } else { 0 };
                (position < r.addresses.len()).then_some((*id, r, position))
            })
            .or_else(|| {
                let (id, r) = self.batches.iter().find(|(_, r)| !r.addresses.is_empty())?;
                Some((*id, r, 0))
            })?;
        let first = self
            .batches
            .iter()
            .find(|(_, r)| !r.addresses.is_empty())?
            .0;
        let wrapped = id == *first && position == 0;
        let target = Target {
            batch_id: id,
            chain: registered.chain,
            address: registered.addresses[position].clone(),
            top_n: registered.top_n,
        };
        self.cursor = (id, position + 1);
        Some((target, wrapped))
    }
}

/// Registrations of the batches that need holders; cheap to clone.
#[derive(Clone, Default)]
pub struct HolderPolls {
    registry: Arc<Mutex<Registry>>,
    wake: Arc<Notify>,
}

impl HolderPolls {
    /// Registers (or replaces) the targets of a batch and returns the receiver of its
    /// snapshots. The batch stays registered until [`HolderPolls::unregister`].
    pub fn register(
        &self,
        batch_id: u64,
        chain: Chain,
        addresses: Vec<String>,
        top_n: Option<u32>,
    ) -> mpsc::Receiver<HolderSnapshot> {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let top_n = top_n.map(|n| n.clamp(1, MAX_TOP_N));
        self.lock().batches.insert(
            batch_id,
            Registered {
                chain,
                top_n,
                addresses,
                sender,
            },
        );
        self.wake.notify_one();
        receiver
    }

    pub fn unregister(&self, batch_id: u64) {
        self.lock().batches.remove(&batch_id);
    }

    /// Number of targets registered, over every batch.
    pub fn target_count(&self) -> usize {
        self.lock()
            .batches
            .values()
            .map(|r| r.addresses.len())
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is plain data that stays consistent even after a panic.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands a snapshot to its batch; false when the batch is gone or its channel is full.
    fn deliver(&self, batch_id: u64, snapshot: HolderSnapshot) -> bool {
        let mut registry = self.lock();
        let Some(registered) = registry.batches.get(&batch_id) else {
            return false;
        };
        match registered.sender.try_send(snapshot) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                registry.dropped += 1;
                debug!(
                    batch_id,
                    dropped_total = registry.dropped,
                    "batch busy, holder snapshot dropped"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Spaces requests by `1 / rps`, or further after the server rate limited them.
struct RateLimit {
    base: Duration,
    interval: Duration,
    next_at: Instant,
}

impl RateLimit {
    fn new(rps: f64) -> Self {
        let base = Duration::from_secs_f64(1.0 / rps);
        RateLimit {
            base,
            interval: base,
            next_at: Instant::now(),
        }
    }

    /// Spaces the next requests by at least `delay`, doubling the spacing on each call.
    fn slow_down(&mut self, delay: Duration) -> Duration {
        self.interval = (self.interval * 2).max(delay).min(BACKOFF_MAX);
        self.next_at = Instant::now() + self.interval;
        self.interval
    }

    /// Shortens the spacing by a tenth, down to `1 / rps`.
    fn recover(&mut self) {
        self.interval = self.interval.mul_f64(0.9).max(self.base);
    }

    async fn acquire(&mut self) {
        sleep_until(self.next_at).await;
        self.next_at = Instant::now().max(self.next_at) + self.interval;
    }
}

/// The one task that polls holders for every registered batch.
pub struct HolderPoller {
    polls: HolderPolls,
    client: reqwest::Client,
    api_url: Url,
    api_key: Redacted,
    rate: RateLimit,
    failures_logged: u32,
}

impl HolderPoller {
    pub fn new(polls: HolderPolls, api_url: Url, api_key: Redacted, rps: f64) -> Self {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        HolderPoller {
            polls,
            client,
            api_url,
            api_key,
            rate: RateLimit::new(rps),
            failures_logged: 0,
        }
    }

    /// Polls until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        info!(api = %self.api_url, rps = 1.0 / self.rate.interval.as_secs_f64(), "holder poller started");
        let mut retry: Option<Target> = None;
        while !stop.is_cancelled() {
            let target = match retry.take() {
                Some(target) => target,
                None => match self.next_target().await {
                    Some(target) => target,
                    None => {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = self.polls.wake.notified() => continue,
                        }
                    }
                },
            };
            let outcome = tokio::select! {
                () = stop.cancelled() => break,
                outcome = self.poll(&target) => outcome,
            };
            match outcome {
                Ok(snapshot) => {
                    self.rate.recover();
                    self.polls.deliver(target.batch_id, snapshot);
                }
                Err(HolderError::RateLimited { retry_after }) => {
                    let delay = self.rate.slow_down(retry_after.unwrap_or(BACKOFF_INITIAL));
                    warn!(address = %target.address, retry_in_ms = delay.as_millis() as u64, "holder API rate limited, backing off");
                    retry = Some(target);
                }
                Err(error) => self.log_failure(&target, &error),
            }
        }
        info!("holder poller stopped");
    }

    /// Returns the next target, waiting out the rest of [`MIN_ROUND`] when a round ends early.
    async fn next_target(&mut self) -> Option<Target> {
        let (target, wrapped, round_started) = {
            let mut registry = self.polls.lock();
            let (target, wrapped) = registry.next_target()?;
            let started = registry.round_started;
            if wrapped || started.is_none() {
                registry.round_started = Some(Instant::now());
            }
            (target, wrapped, started)
        };
        if let (true, Some(started)) = (wrapped, round_started) {
            sleep_until(started + MIN_ROUND).await;
        }
        Some(target)
    }

    fn log_failure(&mut self, target: &Target, error: &HolderError) {
        self.failures_logged += 1;
        // Every failure for the first ten, then one in a hundred.
        if self.failures_logged <= 10 || self.failures_logged.is_multiple_of(100) {
            warn!(
                batch_id = target.batch_id,
                address = %target.address,
                error = %error,
                failures = self.failures_logged,
                "holder poll failed, moving to the next target"
            );
        }
    }

    async fn poll(&mut self, target: &Target) -> Result<HolderSnapshot, HolderError> {
        let overview = self
            .get("token_overview", "/defi/token_overview", target, &[])
            .await?;
        let overview = Overview::parse(&overview)?;
        let top_share_pct = match target.top_n {
            Some(top_n) => {
                let limit = top_n.to_string();
                let list = self
                    .get(
                        "token holder list",
                        "/defi/v3/token/holder",
                        target,
                        &[("offset", "0"), ("limit", &limit)],
                    )
                    .await?;
                top_share(&list, overview.supply)?
            }
            None => None,
        };
        Ok(HolderSnapshot {
            address: target.address.clone(),
            holders: overview.holders,
            top_share_pct,
            top_n: target.top_n,
            liquidity: overview.liquidity,
            market_cap: overview.market_cap,
            price: overview.price,
            time_ms: now_ms(),
        })
    }

    async fn get(
        &mut self,
        endpoint: &'static str,
        path: &str,
        target: &Target,
        query: &[(&str, &str)],
    ) -> Result<Value, HolderError> {
        let mut url = self.api_url.clone();
        url.set_path(&format!(
            "{}{path}",
            self.api_url.path().trim_end_matches('/')
        ));
        url.query_pairs_mut()
            .append_pair("address", &target.address)
            .extend_pairs(query);

        self.rate.acquire().await;
        let request = |source| HolderError::Request { endpoint, source };
        let response = self
            .client
            .get(url)
            .header("X-API-KEY", self.api_key.expose())
            .header("x-chain", target.chain.birdeye_name())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(request)?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(HolderError::RateLimited { retry_after });
        }
        let body = response.text().await.map_err(request)?;
        if !status.is_success() {
            return Err(HolderError::Status {
                endpoint,
                status,
                body: preview(&body),
            });
        }
        let value: Value = serde_json::from_str(&body).map_err(|e| HolderError::Body {
            endpoint,
            problem: format!("not JSON ({e}): {}", preview(&body)),
        })?;
        if value.get("success").and_then(Value::as_bool) != Some(true) {
            return Err(HolderError::Body {
                endpoint,
                problem: format!("success is not true: {}", preview(&body)),
            });
        }
        match value.get("data") {
            Some(data) if data.is_object() => Ok(data.clone()),
            _ => Err(HolderError::Body {
                endpoint,
                problem: format!("data is missing or not an object: {}", preview(&body)),
            }),
        }
    }
}

/// The fields of `token_overview` that ingest uses.
#[derive(Debug, Clone, PartialEq)]
struct Overview {
    holders: Option<u64>,
    supply: Option<f64>,
    liquidity: Option<f64>,
    market_cap: Option<f64>,
    price: Option<f64>,
}

impl Overview {
    fn parse(data: &Value) -> Result<Overview, HolderError> {
        let number = |key: &str| {
            data.get(key)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        let holders = match data.get("holder") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_u64().ok_or_else(|| HolderError::Body {
                endpoint: "token_overview",
                problem: format!("holder must be a whole number >= 0, got {value}"),
            })?),
        };
        Ok(Overview {
            holders,
            supply: number("supply")
                .or_else(|| number("circulatingSupply"))
                .filter(|s| *s > 0.0),
            liquidity: number("liquidity"),
            market_cap: number("mc").or_else(|| number("marketCap")),
            price: number("price"),
        })
    }
}

/// Percent of `supply` held by the listed holders; `None` without a supply.
fn top_share(list: &Value, supply: Option<f64>) -> Result<Option<f64>, HolderError> {
    let invalid = |problem: String| HolderError::Body {
        endpoint: "token holder list",
        problem,
    };
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("data.items is missing or not an array".into()))?;
    let mut held = 0.0;
    for (i, item) in items.iter().enumerate() {
        let amount = item
            .get("ui_amount")
            .and_then(Value::as_f64)
            .filter(|a| a.is_finite() && *a >= 0.0)
            .ok_or_else(|| {
                invalid(format!(
                    "items[{i}].ui_amount must be a number >= 0, got {}",
                    item.get("ui_amount").unwrap_or(&Value::Null)
                ))
            })?;
        held += amount;
    }
    Ok(supply.map(|supply| held / supply * 100.0))
}

fn preview(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn overview_reads_holder_and_supply() {
        let data =
            json!({"holder": 1234, "liquidity": 5.5, "mc": 1.0e9, "price": 2.0, "supply": 1000.0});
        let overview = Overview::parse(&data).unwrap();
        assert_eq!(overview.holders, Some(1234));
        assert_eq!(overview.supply, Some(1000.0));
        assert_eq!(overview.market_cap, Some(1.0e9));

        let circulating = json!({"holder": 1, "circulatingSupply": 50.0});
        assert_eq!(Overview::parse(&circulating).unwrap().supply, Some(50.0));
    }

    #[test]
    fn negative_holder_count_is_rejected() {
        let error = Overview::parse(&json!({"holder": -3})).unwrap_err();
        assert!(
            error.to_string().contains("holder must be a whole number"),
            "{error}"
        );
    }

    #[test]
    fn top_share_sums_listed_holders() {
        let list = json!({"items": [
            {"owner": "a", "ui_amount": 250.0, "amount": "250000"},
            {"owner": "b", "ui_amount": 50.0, "amount": "50000"},
        ]});
        assert_eq!(top_share(&list, Some(1000.0)).unwrap(), Some(30.0));
        assert_eq!(top_share(&list, None).unwrap(), None);
        let bad = json!({"items": [{"owner": "a", "ui_amount": "x"}]});
        assert!(top_share(&bad, Some(1.0)).is_err());
    }

    #[test]
    fn round_robin_visits_every_target_of_every_batch() {
        let polls = HolderPolls::default();
        let _a = polls.register(2, Chain::Eth, vec!["x".into(), "y".into()], None);
        let _b = polls.register(5, Chain::Sol, vec!["z".into()], Some(10));
        let mut registry = polls.lock();
        let visits: Vec<(u64, String, bool)> = (0..6)
            .map(|_| {
                let (target, wrapped) = registry.next_target().unwrap();
                (target.batch_id, target.address, wrapped)
            })
            .collect();
        let addresses: Vec<&str> = visits.iter().map(|v| v.1.as_str()).collect();
        assert_eq!(addresses, ["x", "y", "z", "x", "y", "z"]);
        assert_eq!(
            visits.iter().map(|v| v.2).collect::<Vec<_>>(),
            [true, false, false, true, false, false]
        );
    }

    #[test]
    fn rate_limit_slows_down_and_recovers() {
        let mut rate = RateLimit::new(50.0);
        assert_eq!(rate.interval, Duration::from_millis(20));
        assert_eq!(
            rate.slow_down(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            rate.slow_down(Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        for _ in 0..100 {
            rate.recover();
        }
        assert_eq!(
            rate.interval,
            Duration::from_millis(20),
            "back to BIRDEYE_RPS"
        );
        for _ in 0..10 {
            rate.slow_down(Duration::from_secs(1));
        }
        assert_eq!(rate.interval, BACKOFF_MAX);
    }

    #[test]
    fn empty_registry_has_no_target() {
        let polls = HolderPolls::default();
        assert!(polls.lock().next_target().is_none());
        let _a = polls.register(1, Chain::Eth, Vec::new(), None);
        assert!(polls.lock().next_target().is_none());
    }
}
