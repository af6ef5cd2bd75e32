//! The rule model: `events_config` plus the config columns, parsed into typed rules.
//!
//! A config row is turned into [`Rules`] by [`parse_config`]. Parsing walks the JSON by hand
//! rather than through derived deserializers so that every rejection names the field, the
//! value and the constraint it breaks ([`ConfigError`]), in English for logs and in zh-CN for
//! the task status that the Java side shows. Keys may be snake_case or camelCase; keys that no
//! rule knows are kept in [`ParsedConfig::unknown_keys`] for the caller to warn about once.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::locale::Locale;
use crate::messages::{Side, TaskType};

/// Default `cooldown_sec`: at most one alert per (task, target, rule) in this many seconds.
pub const DEFAULT_COOLDOWN_SEC: u32 = 300;
/// Default window of `price_change`, `volume` and `holder_change` when none is given.
pub const DEFAULT_WINDOW_SEC: u32 = 300;
/// Default number of holders counted by `top_holders`.
pub const DEFAULT_TOP_N: u32 = 10;
/// Longest window or cooldown a rule may use: 7 days.
pub const MAX_WINDOW_SEC: u32 = 7 * 24 * 3600;
/// Largest USD amount a threshold may name; larger values are typing mistakes.
pub const MAX_USD: f64 = 1e15;
/// Largest percentage a price rise threshold may name (a 100x move).
pub const MAX_RISE_PCT: f64 = 10_000.0;
/// Maximum number of keys in one `events_config` object.
pub const MAX_CONFIG_KEYS: usize = 256;
/// Maximum number of contract addresses, event signatures or program ids in a block config.
pub const MAX_LIST_LEN: usize = 1_000;
/// Maximum `confirmations` of a block config.
pub const MAX_CONFIRMATIONS: u32 = 1_000;

/// How the rules of one config combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TriggerLogic {
    /// Each rule that holds raises its own alert.
    #[default]
    Or,
    /// One `composite` alert when every enabled rule holds on the same snapshot.
    And,
}

/// The columns of `monitor_config_v2` that rules read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigRow {
    pub config_id: u64,
    pub version: u64,
    pub name: String,
    pub min_transaction_usd: Option<f64>,
    pub cumulative_min_amount_usd: Option<f64>,
    /// Seconds.
    pub time_interval: Option<i64>,
    /// Percent.
    pub top_holders_threshold: Option<f64>,
    pub events_config: Option<String>,
    pub trigger_logic: Option<String>,
}

/// The validated rules of one config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Rules {
    Token(TokenRules),
    Block(BlockRules),
}

impl Rules {
    pub fn cooldown_sec(&self) -> u32 {
        match self {
            Rules::Token(t) => t.cooldown_sec,
            Rules::Block(b) => b.cooldown_sec,
        }
    }

    pub fn as_token(&self) -> Option<&TokenRules> {
        match self {
            Rules::Token(t) => Some(t),
            Rules::Block(_) => None,
        }
    }

    pub fn as_block(&self) -> Option<&BlockRules> {
        match self {
            Rules::Block(b) => Some(b),
            Rules::Token(_) => None,
        }
    }
}

/// Rules of a token task (`smart` or `batch`); each is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRules {
    pub price_change: Option<PriceChangeRule>,
    pub volume: Option<VolumeRule>,
    pub holder_change: Option<HolderChangeRule>,
    pub large_trade: Option<LargeTradeRule>,
    pub cumulative_buy: Option<CumulativeBuyRule>,
    pub top_holders: Option<TopHoldersRule>,
    pub cooldown_sec: u32,
}

impl TokenRules {
    /// Window lengths, in seconds, that ingest must track per target for these rules.
    pub fn window_lengths(&self) -> Vec<u32> {
        let mut set = BTreeSet::new();
        if let Some(r) = &self.price_change {
            set.insert(r.window_sec);
        }
        if let Some(r) = &self.volume {
            set.insert(r.window_sec);
        }
        if let Some(r) = &self.holder_change {
            set.insert(r.window_sec);
        }
        if let Some(r) = &self.cumulative_buy {
            set.insert(r.window_sec);
        }
        set.into_iter().collect()
    }

    /// Whether any rule needs holder counts or the top holders' share.
    pub fn needs_holders(&self) -> bool {
        self.holder_change.is_some() || self.top_holders.is_some()
    }

    /// Number of rules enabled.
    pub fn count(&self) -> usize {
        [
            self.price_change.is_some(),
            self.volume.is_some(),
            self.holder_change.is_some(),
            self.large_trade.is_some(),
            self.cumulative_buy.is_some(),
            self.top_holders.is_some(),
        ]
        .iter()
        .filter(|enabled| **enabled)
        .count()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceChangeRule {
    pub window_sec: u32,
    /// Percent; `None` when rises are not watched.
    pub rise_pct: Option<f64>,
    /// Percent; `None` when falls are not watched.
    pub fall_pct: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRule {
    pub window_sec: u32,
    pub min_volume_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderChangeRule {
    pub window_sec: u32,
    pub min_change_pct: f64,
    /// Tokens with fewer holders than this are not judged (small counts swing wildly).
    pub min_holders: u64,
}

/// Which trades `large_trade` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SideFilter {
    Buy,
    Sell,
    Any,
}

impl SideFilter {
    pub fn accepts(self, side: Side) -> bool {
        match self {
            SideFilter::Any => true,
            SideFilter::Buy => side == Side::Buy,
            SideFilter::Sell => side == Side::Sell,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LargeTradeRule {
    pub side: SideFilter,
    /// From the config column `min_transaction_usd`.
    pub min_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CumulativeBuyRule {
    /// From the config column `time_interval`.
    pub window_sec: u32,
    /// From the config column `cumulative_min_amount_usd`.
    pub min_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopHoldersRule {
    pub top_n: u32,
    /// From the config column `top_holders_threshold`, in percent.
    pub threshold_pct: f64,
}

/// Rules of a block task: what to subscribe to on the chain and when to alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BlockRules {
    /// Alert when consecutive blocks are further apart than this many seconds.
    pub new_blocks: Option<NewBlocksRule>,
    pub large_transactions: Option<LargeTransactionsRule>,
    pub contract_events: Option<ContractEventsRule>,
    /// Solana program ids whose logs raise `contract_event` alerts.
    pub program_logs: Option<ProgramLogsRule>,
    /// Watch pending transactions (Ethereum only).
    pub pending_txs: bool,
    /// Blocks to wait before an alert is `confirmed`; 0 sends alerts as `provisional` at once.
    pub confirmations: u32,
    pub cooldown_sec: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewBlocksRule {
    pub interval_threshold_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LargeTransactionsRule {
    pub threshold_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractEventsRule {
    /// Lower-case hex addresses; empty means any contract.
    pub addresses: Vec<String>,
    /// Canonical signatures such as `Transfer(address,address,uint256)`; empty means any event.
    pub signatures: Vec<String>,
}

impl ContractEventsRule {
    /// The topic0 of every signature, in the order of `signatures`.
    pub fn topics(&self) -> Vec<String> {
        self.signatures.iter().map(|s| event_topic(s)).collect()
    }
}

/// Returns the topic0 of an event: `0x` and the keccak-256 hash of its canonical signature
/// (`Transfer(address,address,uint256)`), in lower-case hex.
pub fn event_topic(signature: &str) -> String {
    use tiny_keccak::{Hasher, Keccak};

    let mut hasher = Keccak::v256();
    hasher.update(signature.as_bytes());
    let mut hash = [0u8; 32];
    hasher.finalize(&mut hash);
    format!("0x{}", hex::encode(hash))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramLogsRule {
    pub program_ids: Vec<String>,
}

/// A config that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedConfig {
    pub trigger_logic: TriggerLogic,
    pub rules: Rules,
    /// Keys (dotted paths) that no rule knows; kept so the caller can warn about them once.
    pub unknown_keys: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why a config was rejected: the field, its value and the constraint it breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigError {
    pub config_id: u64,
    pub version: u64,
    /// Dotted path of the field, for example `price_change.rise_pct` or `min_transaction_usd`.
    pub field: String,
    /// The offending value as written (shortened to 80 characters).
    pub value: String,
    pub constraint: Constraint,
}

/// The constraint a config value breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Constraint {
    /// `events_config` is not valid JSON; carries the parser's message.
    NotJson(String),
    /// A JSON object was expected.
    NotObject,
    /// No rule is enabled.
    NoRules,
    /// A number was expected.
    NotNumber,
    /// A whole number was expected.
    NotInteger,
    /// `true` or `false` was expected.
    NotBool,
    /// A list of strings was expected.
    NotStringList,
    /// The value must be greater than the bound.
    GreaterThan(f64),
    /// The value must lie within the bounds (inclusive).
    Range { min: f64, max: f64 },
    /// The value must be one of the listed words.
    OneOf(Vec<String>),
    /// The rule needs a config column that is empty.
    MissingColumn,
    /// A rule needs at least one of these fields.
    AnyOf(Vec<String>),
    /// Too many entries.
    TooMany(usize),
    /// The text is longer than this many bytes.
    TooLarge(usize),
    /// A contract address must be `0x` followed by 40 hex digits.
    NotEvmAddress,
    /// A Solana address must be 32 to 44 base58 characters.
    NotSolanaAddress,
    /// An event signature must look like `Name(type,type)`.
    NotEventSignature,
}

impl ConfigError {
    fn new(field: impl Into<String>, value: impl fmt::Display, constraint: Constraint) -> Self {
        let mut value = escape_controls(&value.to_string());
        if value.chars().count() > 80 {
            value = value.chars().take(77).collect::<String>() + "...";
        }
        ConfigError {
            config_id: 0,
            version: 0,
            field: escape_controls(&field.into()),
            value,
            constraint,
        }
    }

    /// Renders the error for users: zh-CN for the Java side, English otherwise.
    pub fn message(&self, locale: Locale) -> String {
        match locale {
            Locale::En => self.to_string(),
            Locale::ZhCn => format!(
                "配置 {} (版本 {}) 无效：字段 {} 的值 {} {}",
                self.config_id,
                self.version,
                self.field,
                self.value,
                self.constraint.zh()
            ),
        }
    }
}

/// Writes control characters (a newline in a JSON key, for example) as escapes, so that an
/// error stays on one line whatever the config contains.
fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid config {} version {}: {} {}, got {}",
            self.config_id,
            self.version,
            self.field,
            self.constraint.en(),
            self.value
        )
    }
}

impl std::error::Error for ConfigError {}

impl Constraint {
    fn en(&self) -> String {
        match self {
            Constraint::NotJson(detail) => format!("must be valid JSON ({detail})"),
            Constraint::NotObject => "must be a JSON object".into(),
            Constraint::NoRules => "must enable at least one rule".into(),
            Constraint::NotNumber => "must be a number".into(),
            Constraint::NotInteger => "must be a whole number".into(),
            Constraint::NotBool => "must be true or false".into(),
            Constraint::NotStringList => "must be a list of strings".into(),
            Constraint::GreaterThan(bound) => format!("must be > {bound}"),
            Constraint::Range { min, max } => format!("must be between {min} and {max}"),
            Constraint::OneOf(words) => format!("must be one of {}", words.join(", ")),
            Constraint::MissingColumn => "must be set for this rule".into(),
            Constraint::AnyOf(fields) => format!("must set at least one of {}", fields.join(", ")),
            Constraint::TooMany(max) => format!("must have at most {max} entries"),
            Constraint::TooLarge(max) => format!("must be at most {max} bytes"),
            Constraint::NotEvmAddress => "must be 0x followed by 40 hex digits".into(),
            Constraint::NotSolanaAddress => "must be a base58 Solana address".into(),
            Constraint::NotEventSignature => {
                "must be an event signature such as Transfer(address,address,uint256)".into()
            }
        }
    }

    fn zh(&self) -> String {
        match self {
            Constraint::NotJson(detail) => format!("不是合法的 JSON（{detail}）"),
            Constraint::NotObject => "必须是 JSON 对象".into(),
            Constraint::NoRules => "未启用任何规则".into(),
            Constraint::NotNumber => "必须是数字".into(),
            Constraint::NotInteger => "必须是整数".into(),
            Constraint::NotBool => "必须是 true 或 false".into(),
            Constraint::NotStringList => "必须是字符串列表".into(),
            Constraint::GreaterThan(bound) => format!("必须大于 {bound}"),
            Constraint::Range { min, max } => format!("必须在 {min} 到 {max} 之间"),
            Constraint::OneOf(words) => format!("必须是以下之一：{}", words.join("、")),
            Constraint::MissingColumn => "为空，但该规则需要此字段".into(),
            Constraint::AnyOf(fields) => format!("缺失，至少需要设置 {} 之一", fields.join("、")),
            Constraint::TooMany(max) => format!("条目过多，最多 {max} 个"),
            Constraint::TooLarge(max) => format!("过长，最多 {max} 字节"),
            Constraint::NotEvmAddress => "必须是 0x 开头的 40 位十六进制地址".into(),
            Constraint::NotSolanaAddress => "必须是 base58 编码的 Solana 地址".into(),
            Constraint::NotEventSignature => {
                "必须是事件签名，例如 Transfer(address,address,uint256)".into()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// Validates a config row for a task of the given type.
pub fn parse_config(row: &ConfigRow, task_type: TaskType) -> Result<ParsedConfig, ConfigError> {
    parse_config_inner(row, task_type).map_err(|mut e| {
        e.config_id = row.config_id;
        e.version = row.version;
        e
    })
}

fn parse_config_inner(row: &ConfigRow, task_type: TaskType) -> Result<ParsedConfig, ConfigError> {
    let trigger_logic = parse_trigger_logic(row.trigger_logic.as_deref())?;
    let text = row.events_config.as_deref().unwrap_or("").trim();
    if text.len() > crate::limits::MAX_EVENTS_CONFIG_BYTES {
        return Err(ConfigError::new(
            "events_config",
            format!("{} bytes", text.len()),
            Constraint::TooLarge(crate::limits::MAX_EVENTS_CONFIG_BYTES),
        ));
    }
    let root: Value = if text.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(text)
            .map_err(|e| ConfigError::new("events_config", text, Constraint::NotJson(e.to_string())))?
    };
    let Value::Object(object) = root else {
        return Err(ConfigError::new("events_config", text, Constraint::NotObject));
    };
    if object.len() > MAX_CONFIG_KEYS {
        return Err(ConfigError::new(
            "events_config",
            format!("{} keys", object.len()),
            Constraint::TooMany(MAX_CONFIG_KEYS),
        ));
    }

    let mut fields = Fields::new(object, "");
    let rules = if task_type.has_targets() {
        Rules::Token(parse_token_rules(&mut fields, row)?)
    } else {
        Rules::Block(parse_block_rules(&mut fields)?)
    };
    Ok(ParsedConfig {
        trigger_logic,
        rules,
        unknown_keys: fields.finish(),
    })
}

fn parse_trigger_logic(value: Option<&str>) -> Result<TriggerLogic, ConfigError> {
    match value.map(|v| v.trim().to_ascii_uppercase()).as_deref() {
        None | Some("") | Some("OR") => Ok(TriggerLogic::Or),
        Some("AND") => Ok(TriggerLogic::And),
        Some(_) => Err(ConfigError::new(
            "trigger_logic",
            value.unwrap_or_default(),
            Constraint::OneOf(vec!["OR".into(), "AND".into()]),
        )),
    }
}

fn parse_token_rules(fields: &mut Fields, row: &ConfigRow) -> Result<TokenRules, ConfigError> {
    let cooldown_sec = fields
        .integer("cooldown_sec", 1, MAX_WINDOW_SEC as u64)?
        .map_or(DEFAULT_COOLDOWN_SEC, |v| v as u32);

    let price_change = match fields.rule("price_change")? {
        Some(mut rule) => {
            let window_sec = rule.window("window_sec")?;
            let rise_pct = rule.percent("rise_pct", MAX_RISE_PCT)?;
            let fall_pct = rule.percent("fall_pct", 100.0)?;
            if rise_pct.is_none() && fall_pct.is_none() {
                return Err(ConfigError::new(
                    "price_change",
                    rule.describe(),
                    Constraint::AnyOf(vec!["rise_pct".into(), "fall_pct".into()]),
                ));
            }
            rule.finish_into(fields);
            Some(PriceChangeRule {
                window_sec,
                rise_pct,
                fall_pct,
            })
        }
        None => None,
    };

    let volume = match fields.rule("volume")? {
        Some(mut rule) => {
            let window_sec = rule.window("window_sec")?;
            let min_volume_usd = rule.required_usd("min_volume_usd")?;
            rule.finish_into(fields);
            Some(VolumeRule {
                window_sec,
                min_volume_usd,
            })
        }
        None => None,
    };

    let holder_change = match fields.rule("holder_change")? {
        Some(mut rule) => {
            let window_sec = rule.window("window_sec")?;
            let min_change_pct = rule
                .percent("min_change_pct", MAX_RISE_PCT)?
                .ok_or_else(|| rule.missing("min_change_pct"))?;
            let min_holders = rule.integer("min_holders", 0, u32::MAX as u64)?.unwrap_or(0);
            rule.finish_into(fields);
            Some(HolderChangeRule {
                window_sec,
                min_change_pct,
                min_holders,
            })
        }
        None => None,
    };

    let large_trade = match fields.rule("large_trade")? {
        Some(mut rule) => {
            let side = rule.side("side")?;
            rule.finish_into(fields);
            let min_usd = column_usd("min_transaction_usd", row.min_transaction_usd)?;
            Some(LargeTradeRule { side, min_usd })
        }
        None => None,
    };

    let cumulative_buy = match fields.rule("cumulative_buy")? {
        Some(rule) => {
            rule.finish_into(fields);
            let min_usd = column_usd("cumulative_min_amount_usd", row.cumulative_min_amount_usd)?;
            let window_sec = column_window("time_interval", row.time_interval)?;
            Some(CumulativeBuyRule { window_sec, min_usd })
        }
        None => None,
    };

    let top_holders = match fields.rule("top_holders")? {
        Some(mut rule) => {
            let top_n = rule.integer("top_n", 1, 100)?.map_or(DEFAULT_TOP_N, |v| v as u32);
            rule.finish_into(fields);
            let threshold_pct = match row.top_holders_threshold {
                None => {
                    return Err(ConfigError::new(
                        "top_holders_threshold",
                        "null",
                        Constraint::MissingColumn,
                    ))
                }
                Some(v) if !(v > 0.0 && v <= 100.0) => {
                    return Err(ConfigError::new(
                        "top_holders_threshold",
                        v,
                        Constraint::Range { min: 0.0, max: 100.0 },
                    ))
                }
                Some(v) => v,
            };
            Some(TopHoldersRule { top_n, threshold_pct })
        }
        None => None,
    };

    let rules = TokenRules {
        price_change,
        volume,
        holder_change,
        large_trade,
        cumulative_buy,
        top_holders,
        cooldown_sec,
    };
    if rules.count() == 0 {
        return Err(ConfigError::new("events_config", fields.describe(), Constraint::NoRules));
    }
    Ok(rules)
}

fn parse_block_rules(fields: &mut Fields) -> Result<BlockRules, ConfigError> {
    let cooldown_sec = fields
        .integer("cooldown_sec", 1, MAX_WINDOW_SEC as u64)?
        .map_or(DEFAULT_COOLDOWN_SEC, |v| v as u32);
    let confirmations = fields
        .integer("confirmations", 0, MAX_CONFIRMATIONS as u64)?
        .unwrap_or(0) as u32;

    let new_blocks = if fields.flag("monitor_new_blocks")? {
        let threshold = fields
            .positive("block_interval_threshold", MAX_WINDOW_SEC as f64)?
            .ok_or_else(|| fields.missing("block_interval_threshold"))?;
        Some(NewBlocksRule {
            interval_threshold_sec: threshold,
        })
    } else {
        fields.ignore("block_interval_threshold");
        None
    };

    let large_transactions = if fields.flag("monitor_large_transactions")? {
        let threshold_usd = fields
            .positive("transaction_amount_threshold", MAX_USD)?
            .ok_or_else(|| fields.missing("transaction_amount_threshold"))?;
        Some(LargeTransactionsRule { threshold_usd })
    } else {
        fields.ignore("transaction_amount_threshold");
        None
    };

    let contract_events = if fields.flag("monitor_contract_events")? {
        let addresses = fields.string_list("contract_addresses")?;
        for (i, a) in addresses.iter().enumerate() {
            if !is_evm_address(a) {
                return Err(ConfigError::new(
                    format!("contract_addresses[{i}]"),
                    a,
                    Constraint::NotEvmAddress,
                ));
            }
        }
        let signatures = fields.string_list("event_signatures")?;
        for (i, s) in signatures.iter().enumerate() {
            if !is_event_signature(s) {
                return Err(ConfigError::new(
                    format!("event_signatures[{i}]"),
                    s,
                    Constraint::NotEventSignature,
                ));
            }
        }
        Some(ContractEventsRule {
            addresses: addresses.into_iter().map(|a| a.to_ascii_lowercase()).collect(),
            signatures: signatures
                .into_iter()
                .map(|s| s.chars().filter(|c| !c.is_whitespace()).collect())
                .collect(),
        })
    } else {
        fields.ignore("contract_addresses");
        fields.ignore("event_signatures");
        None
    };

    let mut program_logs = None;
    let mut pending_txs = false;
    if let Some(mut chains) = fields.object("chain_specific")? {
        if let Some(mut sol) = chains.object("sol")? {
            if sol.flag("monitor_program_logs")? {
                let program_ids = sol.string_list("program_ids")?;
                for (i, p) in program_ids.iter().enumerate() {
                    if !is_solana_address(p) {
                        return Err(ConfigError::new(
                            format!("chain_specific.sol.program_ids[{i}]"),
                            p,
                            Constraint::NotSolanaAddress,
                        ));
                    }
                }
                if program_ids.is_empty() {
                    return Err(sol.missing("program_ids"));
                }
                program_logs = Some(ProgramLogsRule { program_ids });
            } else {
                sol.ignore("program_ids");
            }
            sol.finish_into(&mut chains);
        }
        if let Some(mut eth) = chains.object("eth")? {
            pending_txs = eth.flag("monitor_pending_txs")?;
            eth.finish_into(&mut chains);
        }
        chains.finish_into(fields);
    }

    let rules = BlockRules {
        new_blocks,
        large_transactions,
        contract_events,
        program_logs,
        pending_txs,
        confirmations,
        cooldown_sec,
    };
    let enabled = rules.new_blocks.is_some()
        || rules.large_transactions.is_some()
        || rules.contract_events.is_some()
        || rules.program_logs.is_some()
        || rules.pending_txs;
    if !enabled {
        return Err(ConfigError::new("events_config", fields.describe(), Constraint::NoRules));
    }
    Ok(rules)
}

fn column_usd(column: &str, value: Option<f64>) -> Result<f64, ConfigError> {
    match value {
        None => Err(ConfigError::new(column, "null", Constraint::MissingColumn)),
        // NaN is not greater than zero either, so it is rejected here too.
        Some(v) if v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) => {
            Err(ConfigError::new(column, v, Constraint::GreaterThan(0.0)))
        }
        Some(v) if v > MAX_USD => Err(ConfigError::new(
            column,
            v,
            Constraint::Range { min: 0.0, max: MAX_USD },
        )),
        Some(v) => Ok(v),
    }
}

fn column_window(column: &str, value: Option<i64>) -> Result<u32, ConfigError> {
    match value {
        None => Err(ConfigError::new(column, "null", Constraint::MissingColumn)),
        Some(v) if v < 1 || v > MAX_WINDOW_SEC as i64 => Err(ConfigError::new(
            column,
            v,
            Constraint::Range { min: 1.0, max: MAX_WINDOW_SEC as f64 },
        )),
        Some(v) => Ok(v as u32),
    }
}

pub fn is_evm_address(s: &str) -> bool {
    s.len() == 42 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn is_solana_address(s: &str) -> bool {
    const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    (32..=44).contains(&s.len()) && s.chars().all(|c| BASE58.contains(c))
}

fn is_event_signature(s: &str) -> bool {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = s.find('(') else { return false };
    let name = &s[..open];
    s.ends_with(')')
        && !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s[open + 1..s.len() - 1]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ',' | '[' | ']' | '(' | ')' | '_'))
}

/// Converts `camelCase` or `PascalCase` to `snake_case`; snake_case passes unchanged.
pub fn to_snake_case(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let starts_word = match prev {
                None | Some('_') => false,
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                Some(_) => false,
            };
            if starts_word {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The keys of one JSON object, looked up by snake_case name; what is never looked up is
/// reported as unknown.
struct Fields {
    path: String,
    entries: Vec<(String, String, Value)>,
    unknown: Vec<String>,
}

/// A rule's own object: `true` (defaults), `false` (off) or `{...}` with `enabled` optional.
type RuleFields = Fields;

impl Fields {
    fn new(object: Map<String, Value>, path: &str) -> Self {
        Fields {
            path: path.to_owned(),
            entries: object
                .into_iter()
                .map(|(k, v)| (to_snake_case(&k), k, v))
                .collect(),
            unknown: Vec::new(),
        }
    }

    fn empty(path: &str) -> Self {
        Self::new(Map::new(), path)
    }

    fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        let index = self.entries.iter().position(|(snake, _, _)| snake == key)?;
        let (_, _, value) = self.entries.swap_remove(index);
        Some(value)
    }

    fn ignore(&mut self, key: &str) {
        self.take(key);
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::new(self.field_path(key), "null", Constraint::MissingColumn)
    }

    fn describe(&self) -> String {
        let keys: Vec<&str> = self.entries.iter().map(|(_, k, _)| k.as_str()).collect();
        format!("{{{}}}", keys.join(", "))
    }

    fn number(&mut self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(ConfigError::new(self.field_path(key), n, Constraint::NotNumber)),
            },
            Some(other) => Err(ConfigError::new(self.field_path(key), other, Constraint::NotNumber)),
        }
    }

    fn integer(&mut self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let Some(value) = self.take(key) else { return Ok(None) };
        let path = self.field_path(key);
        match &value {
            Value::Null => Ok(None),
            Value::Number(n) => {
                let as_int = n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                        .map(|f| f as u64)
                });
                match as_int {
                    Some(i) if (min..=max).contains(&i) => Ok(Some(i)),
                    Some(_) => Err(ConfigError::new(
                        path,
                        n,
                        Constraint::Range { min: min as f64, max: max as f64 },
                    )),
                    None if n.as_f64().is_some_and(|f| f.fract() == 0.0) => Err(ConfigError::new(
                        path,
                        n,
                        Constraint::Range { min: min as f64, max: max as f64 },
                    )),
                    None => Err(ConfigError::new(path, n, Constraint::NotInteger)),
                }
            }
            other => Err(ConfigError::new(path, other, Constraint::NotInteger)),
        }
    }

    fn window(&mut self, key: &str) -> Result<u32, ConfigError> {
        Ok(self
            .integer(key, 1, MAX_WINDOW_SEC as u64)?
            .map_or(DEFAULT_WINDOW_SEC, |v| v as u32))
    }

    /// A number that must be > 0 and <= max.
    fn positive(&mut self, key: &str, max: f64) -> Result<Option<f64>, ConfigError> {
        let Some(v) = self.number(key)? else { return Ok(None) };
        if v <= 0.0 {
            return Err(ConfigError::new(self.field_path(key), v, Constraint::GreaterThan(0.0)));
        }
        if v > max {
            return Err(ConfigError::new(
                self.field_path(key),
                v,
                Constraint::Range { min: 0.0, max },
            ));
        }
        Ok(Some(v))
    }

    fn percent(&mut self, key: &str, max: f64) -> Result<Option<f64>, ConfigError> {
        self.positive(key, max)
    }

    fn required_usd(&mut self, key: &str) -> Result<f64, ConfigError> {
        self.positive(key, MAX_USD)?.ok_or_else(|| self.missing(key))
    }

    fn flag(&mut self, key: &str) -> Result<bool, ConfigError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(b),
            Some(other) => Err(ConfigError::new(self.field_path(key), other, Constraint::NotBool)),
        }
    }

    fn side(&mut self, key: &str) -> Result<SideFilter, ConfigError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(SideFilter::Any),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "buy" => Ok(SideFilter::Buy),
                "sell" => Ok(SideFilter::Sell),
                "any" | "all" | "both" => Ok(SideFilter::Any),
                _ => Err(ConfigError::new(
                    self.field_path(key),
                    s,
                    Constraint::OneOf(vec!["buy".into(), "sell".into(), "any".into()]),
                )),
            },
            Some(other) => Err(ConfigError::new(
                self.field_path(key),
                other,
                Constraint::OneOf(vec!["buy".into(), "sell".into(), "any".into()]),
            )),
        }
    }

    fn string_list(&mut self, key: &str) -> Result<Vec<String>, ConfigError> {
        let path = self.field_path(key);
        match self.take(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                if items.len() > MAX_LIST_LEN {
                    return Err(ConfigError::new(
                        path,
                        format!("{} entries", items.len()),
                        Constraint::TooMany(MAX_LIST_LEN),
                    ));
                }
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s.trim().to_owned()),
                        other => Err(ConfigError::new(path.clone(), other, Constraint::NotStringList)),
                    })
                    .collect()
            }
            Some(other) => Err(ConfigError::new(path, other, Constraint::NotStringList)),
        }
    }

    fn object(&mut self, key: &str) -> Result<Option<Fields>, ConfigError> {
        let path = self.field_path(key);
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields::new(map, &path))),
            Some(other) => Err(ConfigError::new(path, other, Constraint::NotObject)),
        }
    }

    /// Takes a rule entry: `None` when absent, `false` or `{"enabled": false}`.
    fn rule(&mut self, key: &str) -> Result<Option<RuleFields>, ConfigError> {
        let path = self.field_path(key);
        match self.take(key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
            Some(Value::Bool(true)) => Ok(Some(Fields::empty(&path))),
            Some(Value::Object(map)) => {
                let mut rule = Fields::new(map, &path);
                match rule.take("enabled") {
                    None | Some(Value::Bool(true)) => Ok(Some(rule)),
                    Some(Value::Bool(false)) => Ok(None),
                    Some(other) => Err(ConfigError::new(
                        format!("{path}.enabled"),
                        other,
                        Constraint::NotBool,
                    )),
                }
            }
            Some(other) => Err(ConfigError::new(path, other, Constraint::NotObject)),
        }
    }

    /// Moves this object's unknown keys into its parent's list.
    fn finish_into(self, parent: &mut Fields) {
        parent.unknown.extend(self.finish());
    }

    /// Returns the dotted paths of every key never looked up.
    fn finish(self) -> Vec<String> {
        let mut unknown = self.unknown;
        for (_, original, _) in self.entries {
            unknown.push(if self.path.is_empty() {
                original
            } else {
                format!("{}.{}", self.path, original)
            });
        }
        unknown.sort();
        unknown
    }
}

#[cfg(test)]
mod tests;
