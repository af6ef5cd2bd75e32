//! One-line alert titles shown to users, zh-CN by default and English with [`Locale::En`].
//!
//! A title names the token (its symbol, else its shortened address) and states what happened,
//! for example `WETH 1分钟内价格上涨 0.05%` or `WETH large buy $123,456`. Windows under a
//! minute are written in seconds, whole hours in hours and the rest in minutes (`30秒`,
//! `5分钟`, `1分30秒`, `1小时`). A title is built only from the alert itself: the findings,
//! and the [`AlertFacts`] that evaluate stores in `Alert::extra_json` (trade side, top-N
//! count, market context) because a finding has no field for them.

use serde::{Deserialize, Serialize};

use crate::locale::Locale;
use crate::messages::{Alert, AlertType, Finding, Side};

/// Facts behind a token alert that its findings do not carry, stored as JSON in
/// `Alert::extra_json`. Readers ignore keys they do not know, so block alerts may store
/// other facts in the same field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertFacts {
    /// The trade that raised the alert, when it was raised on a trade event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade: Option<TradeFacts>,
    /// Number of top holders whose share `top_holders` measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<u32>,
    /// The token's price change and volume when the alert was raised, whatever rule raised
    /// it, so that an alert of any type can show both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<MarketFacts>,
}

/// Price change and traded volume of the token over one window of its snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketFacts {
    /// The window: the one of the alert's first finding, else the longest one tracked.
    pub window_sec: u32,
    /// `(price - start_price) / start_price * 100`; `None` before the window saw a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_change_pct: Option<f64>,
    /// Traded volume in the window, in USD.
    pub volume_usd: f64,
}

/// The trade event behind an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeFacts {
    pub side: Side,
    pub volume_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl AlertFacts {
    /// Reads the facts of an alert. An alert without `extra_json`, or with JSON of another
    /// shape, has none.
    pub fn of(alert: &Alert) -> AlertFacts {
        alert
            .extra_json
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }

    /// Returns the JSON text for `Alert::extra_json`, or `None` when there is no fact to keep.
    pub fn to_json(&self) -> Option<String> {
        if self.trade.is_none() && self.top_n.is_none() && self.market.is_none() {
            return None;
        }
        serde_json::to_string(self).ok()
    }
}

/// Builds the one-line title of an alert in the given language.
pub fn alert_title(alert: &Alert, locale: Locale) -> String {
    let subject = subject(alert);
    let facts = AlertFacts::of(alert);
    let phrases: Vec<String> = alert
        .findings
        .iter()
        .map(|finding| finding_phrase(finding, &facts, locale))
        .collect();

    let body = match (alert.alert_type, phrases.as_slice()) {
        (_, []) => alert_type_name(alert.alert_type, locale).to_owned(),
        (AlertType::Composite, _) => {
            let (label, separator) = match locale {
                Locale::ZhCn => ("组合条件触发：", "；"),
                Locale::En => ("all conditions met: ", "; "),
            };
            format!("{label}{}", phrases.join(separator))
        }
        (_, [first, ..]) => first.clone(),
    };
    format!("{subject} {body}")
}

/// Returns the token symbol, else the shortened token address, or the chain for block alerts.
fn subject(alert: &Alert) -> String {
    let is_block_alert = matches!(
        alert.alert_type,
        AlertType::BlockEvent | AlertType::LargeTransaction | AlertType::ContractEvent
    );
    if is_block_alert {
        return alert.chain.to_string().to_ascii_uppercase();
    }
    match alert.token_symbol.as_deref().map(str::trim) {
        Some(symbol) if !symbol.is_empty() => symbol.to_owned(),
        _ => shorten_address(&alert.target_value),
    }
}

/// Shortens a long address to its first 6 and last 4 characters: `0xc02a…6cc2`.
pub fn shorten_address(address: &str) -> String {
    let chars: Vec<char> = address.chars().collect();
    if chars.len() <= 12 {
        return address.to_owned();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

fn finding_phrase(finding: &Finding, facts: &AlertFacts, locale: Locale) -> String {
    let window = finding.window_sec.map(|w| window_text(w, locale));
    let zh_window = window.clone().map(|w| format!("{w}内")).unwrap_or_default();
    let en_window = window.map(|w| format!(" in {w}")).unwrap_or_default();
    let observed = finding.observed;

    match (finding.rule, locale) {
        (AlertType::PriceChange, Locale::ZhCn) => {
            let verb = if observed >= 0.0 { "上涨" } else { "下跌" };
            format!("{zh_window}价格{verb} {}", percent(observed.abs()))
        }
        (AlertType::PriceChange, Locale::En) => {
            let verb = if observed >= 0.0 { "rose" } else { "fell" };
            format!("price {verb} {}{en_window}", percent(observed.abs()))
        }
        (AlertType::VolumeChange, Locale::ZhCn) => format!("{zh_window}成交额 {}", usd(observed)),
        (AlertType::VolumeChange, Locale::En) => format!("volume {}{en_window}", usd(observed)),
        (AlertType::HolderChange, Locale::ZhCn) => {
            let verb = if observed >= 0.0 { "增加" } else { "减少" };
            format!("{zh_window}持币地址{verb} {}", percent(observed.abs()))
        }
        (AlertType::HolderChange, Locale::En) => {
            let verb = if observed >= 0.0 { "rose" } else { "fell" };
            format!("holders {verb} {}{en_window}", percent(observed.abs()))
        }
        (AlertType::LargeTrade, _) => large_trade_phrase(observed, facts, locale),
        (AlertType::CumulativeBuy, Locale::ZhCn) => {
            format!("{zh_window}累计买入 {}", usd(observed))
        }
        (AlertType::CumulativeBuy, Locale::En) => {
            format!("cumulative buys {}{en_window}", usd(observed))
        }
        (AlertType::TopHolders, Locale::ZhCn) => match facts.top_n {
            Some(n) => format!("前{n}大持有者占比 {}", percent(observed)),
            None => format!("头部持有者占比 {}", percent(observed)),
        },
        (AlertType::TopHolders, Locale::En) => match facts.top_n {
            Some(n) => format!("top {n} holders hold {}", percent(observed)),
            None => format!("top holders hold {}", percent(observed)),
        },
        (AlertType::BlockEvent, Locale::ZhCn) => format!(
            "出块间隔 {}秒（阈值 {}秒）",
            seconds(observed),
            seconds(finding.threshold)
        ),
        (AlertType::BlockEvent, Locale::En) => format!(
            "block interval {}s (threshold {}s)",
            seconds(observed),
            seconds(finding.threshold)
        ),
        (AlertType::LargeTransaction, Locale::ZhCn) => format!("大额交易 {}", usd(observed)),
        (AlertType::LargeTransaction, Locale::En) => format!("large transaction {}", usd(observed)),
        (AlertType::ContractEvent | AlertType::Composite, _) => {
            alert_type_name(finding.rule, locale).to_owned()
        }
    }
}

fn large_trade_phrase(volume_usd: f64, facts: &AlertFacts, locale: Locale) -> String {
    let side = facts.trade.as_ref().map(|t| t.side);
    let label = match (side, locale) {
        (Some(Side::Buy), Locale::ZhCn) => "大额买入",
        (Some(Side::Sell), Locale::ZhCn) => "大额卖出",
        (None, Locale::ZhCn) => "大额交易",
        (Some(Side::Buy), Locale::En) => "large buy",
        (Some(Side::Sell), Locale::En) => "large sell",
        (None, Locale::En) => "large trade",
    };
    format!("{label} {}", usd(volume_usd))
}

fn alert_type_name(alert_type: AlertType, locale: Locale) -> &'static str {
    match (alert_type, locale) {
        (AlertType::PriceChange, Locale::ZhCn) => "价格异动",
        (AlertType::VolumeChange, Locale::ZhCn) => "成交额异动",
        (AlertType::HolderChange, Locale::ZhCn) => "持币地址异动",
        (AlertType::LargeTrade, Locale::ZhCn) => "大额交易",
        (AlertType::CumulativeBuy, Locale::ZhCn) => "累计买入",
        (AlertType::TopHolders, Locale::ZhCn) => "头部持有者集中",
        (AlertType::Composite, Locale::ZhCn) => "组合条件触发",
        (AlertType::BlockEvent, Locale::ZhCn) => "出块异常",
        (AlertType::LargeTransaction, Locale::ZhCn) => "大额交易",
        (AlertType::ContractEvent, Locale::ZhCn) => "合约事件",
        (AlertType::PriceChange, Locale::En) => "price change",
        (AlertType::VolumeChange, Locale::En) => "volume change",
        (AlertType::HolderChange, Locale::En) => "holder change",
        (AlertType::LargeTrade, Locale::En) => "large trade",
        (AlertType::CumulativeBuy, Locale::En) => "cumulative buys",
        (AlertType::TopHolders, Locale::En) => "top holders concentration",
        (AlertType::Composite, Locale::En) => "all conditions met",
        (AlertType::BlockEvent, Locale::En) => "block interval",
        (AlertType::LargeTransaction, Locale::En) => "large transaction",
        (AlertType::ContractEvent, Locale::En) => "contract event",
    }
}

/// Formats a window length: seconds under a minute (`30秒`, `30 s`), hours when it is a
/// whole number of hours (`1小时`, `1 h`), else minutes and any remaining seconds (`5分钟`,
/// `1分30秒`, `5 min`, `1 min 30 s`).
fn window_text(window_sec: u32, locale: Locale) -> String {
    let (minutes, seconds) = (window_sec / 60, window_sec % 60);
    match locale {
        Locale::ZhCn if minutes == 0 => format!("{seconds}秒"),
        Locale::ZhCn if seconds == 0 && minutes % 60 == 0 => format!("{}小时", minutes / 60),
        Locale::ZhCn if seconds == 0 => format!("{minutes}分钟"),
        Locale::ZhCn => format!("{minutes}分{seconds}秒"),
        Locale::En if minutes == 0 => format!("{seconds} s"),
        Locale::En if seconds == 0 && minutes % 60 == 0 => format!("{} h", minutes / 60),
        Locale::En if seconds == 0 => format!("{minutes} min"),
        Locale::En => format!("{minutes} min {seconds} s"),
    }
}

fn percent(value: f64) -> String {
    format!("{}%", group_thousands(&format!("{value:.2}")))
}

/// Formats a USD amount in whole dollars from $1,000 up and with cents below.
fn usd(value: f64) -> String {
    let digits = if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    };
    let grouped = group_thousands(&digits);
    match grouped.strip_prefix('-') {
        Some(rest) => format!("-${rest}"),
        None => format!("${grouped}"),
    }
}

fn seconds(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Inserts `,` between groups of three digits of the integer part: `1234567.5` → `1,234,567.5`.
fn group_thousands(number: &str) -> String {
    let (sign, unsigned) = match number.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", number),
    };
    let (integer, fraction) = match unsigned.find('.') {
        Some(dot) => unsigned.split_at(dot),
        None => (unsigned, ""),
    };
    let mut grouped = String::with_capacity(integer.len() + integer.len() / 3);
    for (i, digit) in integer.chars().enumerate() {
        if i > 0 && (integer.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}{grouped}{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{AlertState, Chain, MESSAGE_VERSION};

    fn alert(alert_type: AlertType, findings: Vec<Finding>, facts: AlertFacts) -> Alert {
        Alert {
            v: MESSAGE_VERSION,
            id: "1:0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2:x:0".into(),
            task_id: 1,
            config_id: 2,
            config_version: 3,
            batch_id: Some(4),
            target_id: Some(5),
            chain: Chain::Eth,
            alert_type,
            state: AlertState::Confirmed,
            target_value: "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2".into(),
            token_name: Some("Wrapped Ether".into()),
            token_symbol: Some("WETH".into()),
            findings,
            event_time_ms: 1_675_329_600_000,
            first_event_time_ms: None,
            price: None,
            market_cap: None,
            extra_json: facts.to_json(),
        }
    }

    fn finding(rule: AlertType, observed: f64, threshold: f64, window_sec: Option<u32>) -> Finding {
        Finding {
            rule,
            observed,
            threshold,
            window_sec,
            reason: String::new(),
        }
    }

    fn trade(side: Side) -> AlertFacts {
        AlertFacts {
            trade: Some(TradeFacts {
                side,
                volume_usd: 123_456.0,
                tx_hash: None,
                owner: None,
            }),
            top_n: None,
            market: None,
        }
    }

    /// (alert type, finding, facts, zh-CN title, English title)
    fn cases() -> Vec<(AlertType, Finding, AlertFacts, &'static str, &'static str)> {
        use AlertType::*;
        vec![
            (
                PriceChange,
                finding(PriceChange, 0.05, 0.05, Some(60)),
                AlertFacts::default(),
                "WETH 1分钟内价格上涨 0.05%",
                "WETH price rose 0.05% in 1 min",
            ),
            (
                PriceChange,
                finding(PriceChange, -12.5, -10.0, Some(300)),
                AlertFacts::default(),
                "WETH 5分钟内价格下跌 12.50%",
                "WETH price fell 12.50% in 5 min",
            ),
            (
                VolumeChange,
                finding(VolumeChange, 3_000_000.0, 1_000_000.0, Some(30)),
                AlertFacts::default(),
                "WETH 30秒内成交额 $3,000,000",
                "WETH volume $3,000,000 in 30 s",
            ),
            (
                HolderChange,
                finding(HolderChange, 5.2, 5.0, Some(3600)),
                AlertFacts::default(),
                "WETH 1小时内持币地址增加 5.20%",
                "WETH holders rose 5.20% in 1 h",
            ),
            (
                HolderChange,
                finding(HolderChange, -7.0, 5.0, Some(90)),
                AlertFacts::default(),
                "WETH 1分30秒内持币地址减少 7.00%",
                "WETH holders fell 7.00% in 1 min 30 s",
            ),
            (
                LargeTrade,
                finding(LargeTrade, 123_456.0, 100_000.0, None),
                trade(Side::Buy),
                "WETH 大额买入 $123,456",
                "WETH large buy $123,456",
            ),
            (
                LargeTrade,
                finding(LargeTrade, 512.5, 500.0, None),
                trade(Side::Sell),
                "WETH 大额卖出 $512.50",
                "WETH large sell $512.50",
            ),
            (
                LargeTrade,
                finding(LargeTrade, 2_000.0, 1_000.0, None),
                AlertFacts::default(),
                "WETH 大额交易 $2,000",
                "WETH large trade $2,000",
            ),
            (
                CumulativeBuy,
                finding(CumulativeBuy, 1_234_567.0, 1_000_000.0, Some(60)),
                AlertFacts::default(),
                "WETH 1分钟内累计买入 $1,234,567",
                "WETH cumulative buys $1,234,567 in 1 min",
            ),
            (
                TopHolders,
                finding(TopHolders, 55.0, 50.0, None),
                AlertFacts {
                    trade: None,
                    top_n: Some(10),
                    market: None,
                },
                "WETH 前10大持有者占比 55.00%",
                "WETH top 10 holders hold 55.00%",
            ),
            (
                BlockEvent,
                finding(BlockEvent, 35.0, 30.0, None),
                AlertFacts::default(),
                "ETH 出块间隔 35秒（阈值 30秒）",
                "ETH block interval 35s (threshold 30s)",
            ),
            (
                LargeTransaction,
                finding(LargeTransaction, 2_500_000.0, 1_000_000.0, None),
                AlertFacts::default(),
                "ETH 大额交易 $2,500,000",
                "ETH large transaction $2,500,000",
            ),
            (
                ContractEvent,
                finding(ContractEvent, 1.0, 1.0, None),
                AlertFacts::default(),
                "ETH 合约事件",
                "ETH contract event",
            ),
        ]
    }

    #[test]
    fn title_of_each_alert_type_in_both_locales() {
        for (alert_type, finding, facts, zh, en) in cases() {
            let alert = alert(alert_type, vec![finding], facts);
            assert_eq!(alert_title(&alert, Locale::ZhCn), zh, "{alert_type}");
            assert_eq!(alert_title(&alert, Locale::En), en, "{alert_type}");
        }
    }

    #[test]
    fn default_locale_is_chinese() {
        let alert = alert(
            AlertType::VolumeChange,
            vec![finding(AlertType::VolumeChange, 3_000_000.0, 1.0, Some(60))],
            AlertFacts::default(),
        );
        assert_eq!(
            alert_title(&alert, Locale::default()),
            "WETH 1分钟内成交额 $3,000,000"
        );
    }

    #[test]
    fn composite_title_lists_every_finding() {
        let alert = alert(
            AlertType::Composite,
            vec![
                finding(AlertType::PriceChange, 0.05, 0.05, Some(60)),
                finding(AlertType::LargeTrade, 123_456.0, 100_000.0, None),
            ],
            trade(Side::Buy),
        );
        assert_eq!(
            alert_title(&alert, Locale::ZhCn),
            "WETH 组合条件触发：1分钟内价格上涨 0.05%；大额买入 $123,456"
        );
        assert_eq!(
            alert_title(&alert, Locale::En),
            "WETH all conditions met: price rose 0.05% in 1 min; large buy $123,456"
        );
    }

    #[test]
    fn missing_symbol_falls_back_to_short_address() {
        let mut alert = alert(
            AlertType::VolumeChange,
            vec![finding(AlertType::VolumeChange, 3_000_000.0, 1.0, Some(60))],
            AlertFacts::default(),
        );
        alert.token_symbol = Some("  ".into());
        assert_eq!(
            alert_title(&alert, Locale::En),
            "0xc02a…6cc2 volume $3,000,000 in 1 min"
        );
        alert.token_symbol = None;
        assert_eq!(
            alert_title(&alert, Locale::ZhCn),
            "0xc02a…6cc2 1分钟内成交额 $3,000,000"
        );
    }

    #[test]
    fn alert_without_findings_is_named_by_type() {
        let alert = alert(AlertType::TopHolders, vec![], AlertFacts::default());
        assert_eq!(alert_title(&alert, Locale::ZhCn), "WETH 头部持有者集中");
        assert_eq!(
            alert_title(&alert, Locale::En),
            "WETH top holders concentration"
        );
    }

    #[test]
    fn unreadable_extra_json_gives_no_facts() {
        let mut alert = alert(
            AlertType::LargeTrade,
            vec![finding(AlertType::LargeTrade, 2_000.0, 1_000.0, None)],
            AlertFacts::default(),
        );
        alert.extra_json = Some("{not json".into());
        assert_eq!(alert_title(&alert, Locale::En), "WETH large trade $2,000");
    }

    #[test]
    fn facts_round_trip_through_extra_json() {
        let mut facts = trade(Side::Sell);
        facts.market = Some(MarketFacts {
            window_sec: 300,
            price_change_pct: Some(-1.5),
            volume_usd: 2_000_000.0,
        });
        let alert = alert(AlertType::LargeTrade, vec![], facts.clone());
        assert_eq!(AlertFacts::of(&alert), facts);
        assert_eq!(AlertFacts::default().to_json(), None);
    }

    #[test]
    fn window_units_around_a_minute_and_an_hour() {
        let cases = [
            (1, "1秒", "1 s"),
            (59, "59秒", "59 s"),
            (60, "1分钟", "1 min"),
            (61, "1分1秒", "1 min 1 s"),
            (300, "5分钟", "5 min"),
            (3599, "59分59秒", "59 min 59 s"),
            (3600, "1小时", "1 h"),
            (5400, "90分钟", "90 min"),
            (86_400, "24小时", "24 h"),
        ];
        for (window_sec, zh, en) in cases {
            assert_eq!(window_text(window_sec, Locale::ZhCn), zh, "{window_sec}");
            assert_eq!(window_text(window_sec, Locale::En), en, "{window_sec}");
        }
    }

    #[test]
    fn thousands_grouping() {
        assert_eq!(group_thousands("0.05"), "0.05");
        assert_eq!(group_thousands("999"), "999");
        assert_eq!(group_thousands("1000"), "1,000");
        assert_eq!(group_thousands("-1234567.50"), "-1,234,567.50");
        assert_eq!(usd(-2500.0), "-$2,500");
    }

    #[test]
    fn short_addresses_stay_whole() {
        assert_eq!(shorten_address("0xabc"), "0xabc");
        assert_eq!(
            shorten_address("So11111111111111111111111111111111111111112"),
            "So1111…1112"
        );
    }
}
