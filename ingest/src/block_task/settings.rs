//! Settings of the chain adapters that serve block tasks.

use std::fmt;
use std::str::FromStr;

use clap::Args;
use monitor_core::messages::Chain;
use url::Url;

/// Endpoints and prices of the chain adapters.
#[derive(Debug, Clone, Args)]
pub struct ChainSettings {
    /// WebSocket JSON-RPC endpoint of an Ethereum node (eth_subscribe), for block tasks on eth.
    #[arg(
        long = "evm-ws-url-eth",
        env = "EVM_WS_URL_ETH",
        hide_env_values = true
    )]
    pub evm_ws_url_eth: Option<NodeUrl>,

    /// WebSocket JSON-RPC endpoint of a BNB Smart Chain node, for block tasks on bsc.
    #[arg(
        long = "evm-ws-url-bsc",
        env = "EVM_WS_URL_BSC",
        hide_env_values = true
    )]
    pub evm_ws_url_bsc: Option<NodeUrl>,

    /// Solana PubSub WebSocket endpoint (slotSubscribe, logsSubscribe), for block tasks on sol.
    #[arg(long = "solana-ws-url", env = "SOLANA_WS_URL", hide_env_values = true)]
    pub solana_ws_url: Option<NodeUrl>,

    /// Solana JSON-RPC HTTP endpoint (getBlock), needed for large transfers on sol.
    #[arg(
        long = "solana-rpc-url",
        env = "SOLANA_RPC_URL",
        hide_env_values = true
    )]
    pub solana_rpc_url: Option<NodeUrl>,

    /// Commitment of Solana subscriptions and getBlock: processed, confirmed or finalized.
    #[arg(long = "solana-commitment", env = "SOLANA_COMMITMENT", default_value = "confirmed", value_parser = parse_commitment)]
    pub solana_commitment: String,

    /// USD price of ETH used for large transactions when no market feed is configured
    /// (BIRDEYE_API_KEY empty) or while the feed has sent no price yet.
    #[arg(long = "native-price-usd-eth", env = "NATIVE_PRICE_USD_ETH", value_parser = parse_price)]
    pub native_price_usd_eth: Option<f64>,

    /// USD price of BNB, used like NATIVE_PRICE_USD_ETH.
    #[arg(long = "native-price-usd-bsc", env = "NATIVE_PRICE_USD_BSC", value_parser = parse_price)]
    pub native_price_usd_bsc: Option<f64>,

    /// USD price of SOL, used like NATIVE_PRICE_USD_ETH.
    #[arg(long = "native-price-usd-sol", env = "NATIVE_PRICE_USD_SOL", value_parser = parse_price)]
    pub native_price_usd_sol: Option<f64>,
}

impl Default for ChainSettings {
    /// No endpoints and no prices, so block tasks report that they cannot run.
    fn default() -> Self {
        ChainSettings {
            evm_ws_url_eth: None,
            evm_ws_url_bsc: None,
            solana_ws_url: None,
            solana_rpc_url: None,
            solana_commitment: "confirmed".to_owned(),
            native_price_usd_eth: None,
            native_price_usd_bsc: None,
            native_price_usd_sol: None,
        }
    }
}

impl ChainSettings {
    /// Returns the WebSocket endpoint that serves block tasks on `chain`, if one is set.
    pub fn ws_url(&self, chain: Chain) -> Option<&NodeUrl> {
        match chain {
            Chain::Eth => self.evm_ws_url_eth.as_ref(),
            Chain::Bsc => self.evm_ws_url_bsc.as_ref(),
            Chain::Sol => self.solana_ws_url.as_ref(),
        }
    }

    /// Returns the name of the variable that sets [`ChainSettings::ws_url`] for `chain`.
    pub fn ws_url_variable(chain: Chain) -> &'static str {
        match chain {
            Chain::Eth => "EVM_WS_URL_ETH",
            Chain::Bsc => "EVM_WS_URL_BSC",
            Chain::Sol => "SOLANA_WS_URL",
        }
    }

    /// Returns the configured native price of `chain` and the variable that set it.
    pub fn native_price(&self, chain: Chain) -> Option<(f64, &'static str)> {
        match chain {
            Chain::Eth => self
                .native_price_usd_eth
                .map(|p| (p, "NATIVE_PRICE_USD_ETH")),
            Chain::Bsc => self
                .native_price_usd_bsc
                .map(|p| (p, "NATIVE_PRICE_USD_BSC")),
            Chain::Sol => self
                .native_price_usd_sol
                .map(|p| (p, "NATIVE_PRICE_USD_SOL")),
        }
    }
}

/// A node endpoint. Hosted nodes put the API key in the path or query, so `Debug` and
/// `Display` show only the scheme, host and port.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeUrl(pub Url);

impl NodeUrl {
    pub fn url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.0;
        write!(f, "{}://{}", url.scheme(), url.host_str().unwrap_or(""))?;
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        let has_secret_part = url.path() != "/" || url.query().is_some();
        if has_secret_part {
            f.write_str("/***")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl FromStr for NodeUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(s.trim()).map_err(|e| format!("invalid URL: {e}"))?;
        if !matches!(url.scheme(), "ws" | "wss" | "http" | "https") {
            return Err(format!(
                "expected a ws://, wss://, http:// or https:// URL, got scheme {:?}",
                url.scheme()
            ));
        }
        Ok(NodeUrl(url))
    }
}

fn parse_commitment(s: &str) -> Result<String, String> {
    match s.trim() {
        "processed" | "confirmed" | "finalized" => Ok(s.trim().to_owned()),
        other => Err(format!(
            "expected processed, confirmed or finalized, got {other:?}"
        )),
    }
}

fn parse_price(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(price) if price.is_finite() && price > 0.0 => Ok(price),
        _ => Err(format!("expected a USD price greater than 0, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_url_hides_path_and_query() {
        let url: NodeUrl = "wss://eth-mainnet.example.com/v2/secret-key"
            .parse()
            .unwrap();
        let local: NodeUrl = "ws://127.0.0.1:8545".parse().unwrap();

        assert_eq!(url.to_string(), "wss://eth-mainnet.example.com/***");
        assert_eq!(format!("{url:?}"), "\"wss://eth-mainnet.example.com/***\"");
        assert_eq!(local.to_string(), "ws://127.0.0.1:8545");
    }

    #[test]
    fn node_url_rejects_other_schemes() {
        let error = "ftp://node".parse::<NodeUrl>().unwrap_err();

        assert!(error.contains("ftp"), "{error}");
    }

    #[test]
    fn price_must_be_positive() {
        assert_eq!(parse_price("1650.5"), Ok(1650.5));
        assert!(parse_price("0").is_err());
        assert!(parse_price("NaN").is_err());
    }

    #[test]
    fn commitment_is_one_of_three() {
        assert_eq!(parse_commitment("finalized"), Ok("finalized".into()));
        assert!(parse_commitment("max").is_err());
    }
}
