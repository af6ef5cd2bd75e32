//! USD prices of the chains' native tokens (ETH, BNB, SOL), which turn transaction values
//! into USD for `large_transaction`.
//!
//! With a market feed configured (`BIRDEYE_API_KEY` set), one Birdeye price subscription per
//! chain and process follows the wrapped native token (WETH, WBNB, wrapped SOL), and every
//! block task of the chain reads its latest candle close. Until the feed sends a price, or without a
//! feed, the setting `NATIVE_PRICE_USD_<CHAIN>` is used. Each quote names its source, and the
//! alert carries it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use monitor_core::messages::Chain;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::settings::ChainSettings;
use crate::birdeye::{self, Channel, FeedMessage};
use crate::feed::{FeedConnection, FeedEvent};
use crate::settings::FeedSettings;

/// Source name of prices from the Birdeye feed.
pub const FEED_SOURCE: &str = "birdeye";

/// Returns the wrapped native token whose Birdeye price is the chain's native price.
pub fn wrapped_native_token(chain: Chain) -> &'static str {
    match chain {
        Chain::Eth => "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
        Chain::Bsc => "0xbb4cdb9cbd36b01bd1cbaebf2de08d9173bc095c",
        Chain::Sol => "So11111111111111111111111111111111111111112",
    }
}

/// A native price and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub usd: f64,
    /// `birdeye`, or `setting NATIVE_PRICE_USD_ETH` (and so on).
    pub source: String,
}

/// The price feeds of this process, one per chain, started on first use.
pub struct NativePrices {
    chains: ChainSettings,
    feed: FeedSettings,
    shutdown: CancellationToken,
    feeds: Mutex<HashMap<Chain, watch::Receiver<Option<f64>>>>,
}

impl NativePrices {
    pub fn new(
        chains: ChainSettings,
        feed: FeedSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(NativePrices {
            chains,
            feed,
            shutdown,
            feeds: Mutex::new(HashMap::new()),
        })
    }

    /// Returns the price source of `chain` for one block task.
    pub fn price(&self, chain: Chain) -> NativePrice {
        NativePrice {
            fixed: self.chains.native_price(chain),
            feed: self.feed_of(chain),
        }
    }

    fn feed_of(&self, chain: Chain) -> Option<watch::Receiver<Option<f64>>> {
        if self.feed.api_key.is_empty() {
            return None;
        }
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = feeds.entry(chain).or_insert_with(|| {
            let (sender, receiver) = watch::channel(None);
            tokio::spawn(follow_price(
                chain,
                self.feed.clone(),
                sender,
                self.shutdown.clone(),
            ));
            receiver
        });
        Some(receiver.clone())
    }
}

/// The native price source of one block task.
#[derive(Debug, Clone)]
pub struct NativePrice {
    fixed: Option<(f64, &'static str)>,
    feed: Option<watch::Receiver<Option<f64>>>,
}

impl NativePrice {
    /// Creates a price source with a setting only (tests, and tasks without a feed).
    pub fn fixed(usd: f64, variable: &'static str) -> Self {
        NativePrice {
            fixed: Some((usd, variable)),
            feed: None,
        }
    }

    /// Returns the current price: the feed's latest close, else the setting.
    pub fn current(&self) -> Option<Quote> {
        let from_feed = self.feed.as_ref().and_then(|feed| *feed.borrow());
        if let Some(usd) = from_feed {
            return Some(Quote {
                usd,
                source: FEED_SOURCE.to_owned(),
            });
        }
        self.fixed.map(|(usd, variable)| Quote {
            usd,
            source: format!("setting {variable}"),
        })
    }

    /// Waits until the feed sends a price; never completes without a feed. Cancel-safe.
    pub async fn changed(&mut self) {
        match &mut self.feed {
            Some(feed) => {
                if feed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Describes why no price is available, naming the settings that would provide one.
    pub fn missing_reason(&self, chain: Chain) -> String {
        let variable = match chain {
            Chain::Eth => "NATIVE_PRICE_USD_ETH",
            Chain::Bsc => "NATIVE_PRICE_USD_BSC",
            Chain::Sol => "NATIVE_PRICE_USD_SOL",
        };
        if self.feed.is_some() {
            format!("no {chain} price from the Birdeye feed yet and {variable} is not set")
        } else {
            format!("no {chain} price: set {variable} or BIRDEYE_API_KEY")
        }
    }
}

/// Follows the Birdeye price of the chain's wrapped native token until shutdown.
async fn follow_price(
    chain: Chain,
    feed: FeedSettings,
    sender: watch::Sender<Option<f64>>,
    shutdown: CancellationToken,
) {
    let token = wrapped_native_token(chain);
    let url = birdeye::feed_url(&feed.ws_url, chain, feed.api_key.expose());
    let subscriptions = birdeye::price_subscriptions(&[token.to_owned()]);
    let mut connection = FeedConnection::new(Channel::Prices, url, subscriptions);
    info!(chain = %chain, token, "following the native price on the Birdeye feed");

    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = connection.next() => event,
        };
        match event {
            FeedEvent::Subscribed => info!(chain = %chain, "native price feed subscribed"),
            FeedEvent::Frame(text) => on_price_frame(chain, token, &text, &sender, &mut connection),
            FeedEvent::ConnectFailed { error, retry_in } => {
                warn!(chain = %chain, error = %error, retry_in_ms = retry_in.as_millis() as u64, "native price feed connection failed, retrying");
            }
            FeedEvent::Closed { reason, retry_in } => {
                warn!(chain = %chain, reason = %reason, retry_in_ms = retry_in.as_millis() as u64, "native price feed connection lost, reconnecting");
            }
        }
    }
    connection.close().await;
}

fn on_price_frame(
    chain: Chain,
    token: &str,
    text: &str,
    sender: &watch::Sender<Option<f64>>,
    connection: &mut FeedConnection,
) {
    let token_key = birdeye::address_key(token);
    match birdeye::parse_frame(text, |address| birdeye::address_key(address) == token_key) {
        Ok(FeedMessage::Price(price)) if birdeye::address_key(&price.address) == token_key => {
            connection.data_received();
            if price.close.is_finite() && price.close > 0.0 {
                debug!(chain = %chain, usd = price.close, "native price");
                sender.send_replace(Some(price.close));
            }
        }
        Ok(FeedMessage::Error(message)) => {
            let retry_in = connection.reconnect();
            warn!(chain = %chain, message = %message, retry_in_ms = retry_in.as_millis() as u64, "native price feed sent ERROR, reconnecting");
        }
        Ok(_) => {}
        Err(error) => warn!(chain = %chain, error = %error, "malformed native price frame skipped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_price_names_its_setting() {
        let price = NativePrice::fixed(1_850.0, "NATIVE_PRICE_USD_ETH");

        assert_eq!(
            price.current(),
            Some(Quote {
                usd: 1_850.0,
                source: "setting NATIVE_PRICE_USD_ETH".into()
            })
        );
    }

    #[test]
    fn feed_price_wins_over_setting() {
        let (sender, receiver) = watch::channel(None);
        let price = NativePrice {
            fixed: Some((1_850.0, "NATIVE_PRICE_USD_ETH")),
            feed: Some(receiver),
        };

        assert_eq!(
            price.current().unwrap().source,
            "setting NATIVE_PRICE_USD_ETH"
        );
        sender.send_replace(Some(1_666.5));
        assert_eq!(
            price.current(),
            Some(Quote {
                usd: 1_666.5,
                source: FEED_SOURCE.into()
            })
        );
    }

    #[test]
    fn no_price_names_the_settings() {
        let price = NativePrice {
            fixed: None,
            feed: None,
        };

        assert_eq!(price.current(), None);
        assert_eq!(
            price.missing_reason(Chain::Bsc),
            "no bsc price: set NATIVE_PRICE_USD_BSC or BIRDEYE_API_KEY"
        );
    }
}
