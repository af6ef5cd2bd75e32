//! The rule engine: judges one event frame against its task's rules.
//!
//! Consumes a [`TaskSpec`] (config and rules) and an [`EventFrame`]; produces the alerts that
//! the frame's events raise. It is a pure function of its inputs, and no state survives
//! between frames, so any evaluate instance may judge any frame. Judging a frame again (after
//! a redelivery or in a replay) yields the same alerts with the same ids.
//!
//! Which event judges which rule, with trigger logic OR: trades judge `large_trade`, `volume`
//! and `cumulative_buy`; price events judge `price_change`; holder events judge
//! `holder_change` and `top_holders`. Each rule that holds raises its own alert. With AND,
//! every enabled rule is judged on each token event's snapshot (`large_trade` holds only on a
//! qualifying trade), and one `composite` alert lists every finding when all of them hold.
//! Thresholds are inclusive.
//!
//! Alert ids are `<task_id>:<target address>:<alert_type>:<bucket>` with
//! `bucket = source_time_ms / 1000 / cooldown_sec`; an id already raised by an earlier event of
//! the same frame is not raised again. The engine checks that before it builds an alert, so a
//! busy frame in which a rule holds on every event costs one alert per id, not one per event.

use std::collections::HashSet;

use monitor_core::messages::{
    Alert, AlertState, AlertType, ConfigSpec, Event, EventFrame, EventKind, Finding, Side,
    TargetRef, TargetSpec, TaskSpec, TokenSnapshot, Trade, MESSAGE_VERSION,
};
use monitor_core::rules::{
    CumulativeBuyRule, HolderChangeRule, LargeTradeRule, PriceChangeRule, Rules, TokenRules,
    TopHoldersRule, TriggerLogic, VolumeRule,
};
use monitor_core::titles::{AlertFacts, MarketFacts, TradeFacts};

/// Judges a frame without token names; alerts carry no `token_name` or `token_symbol`.
pub fn evaluate(task: &TaskSpec, frame: &EventFrame) -> Vec<Alert> {
    evaluate_with_targets(task, frame, |_| None)
}

/// Judges a frame; `lookup_target` returns the target's spec (token name, symbol, market cap
/// from the tasks bucket) when the caller has it.
pub fn evaluate_with_targets<'a, F>(
    task: &TaskSpec,
    frame: &EventFrame,
    lookup_target: F,
) -> Vec<Alert>
where
    F: Fn(&TargetRef) -> Option<&'a TargetSpec>,
{
    let Some(config) = &task.config else {
        return Vec::new();
    };
    let rules = match &config.rules {
        Rules::Token(rules) => rules,
        Rules::Block(rules) => {
            return crate::block_rules::evaluate_block(task, config, rules, frame);
        }
    };

    let judge = TokenJudge {
        task,
        config,
        rules,
        frame,
    };
    let mut raised = HashSet::new();
    let mut held = Vec::new();
    let mut alerts = Vec::new();
    for event in &frame.events {
        let Some(token_event) = TokenEvent::of(event) else {
            continue;
        };
        for (alert_type, findings) in judge.judge_event(&token_event, &mut held) {
            // The id's parts without its text: (target, alert type, cooldown bucket).
            let key = (
                token_event.target.address.as_str(),
                alert_type,
                cooldown_bucket(token_event.time_ms(), rules.cooldown_sec),
            );
            if raised.insert(key) {
                let target = lookup_target(token_event.target);
                alerts.push(judge.build_alert(&token_event, target, alert_type, findings));
            }
        }
    }
    alerts
}

/// Returns the cooldown bucket of a source time: `source_time_ms / 1000 / cooldown_sec`.
fn cooldown_bucket(source_time_ms: i64, cooldown_sec: u32) -> i64 {
    source_time_ms
        .div_euclid(1000)
        .div_euclid(i64::from(cooldown_sec.max(1)))
}

/// Builds the deterministic alert id `<task_id>:<target>:<alert_type>:<cooldown bucket>`.
pub fn alert_id(
    task_id: u64,
    target: &str,
    alert_type: AlertType,
    source_time_ms: i64,
    cooldown_sec: u32,
) -> String {
    let bucket = cooldown_bucket(source_time_ms, cooldown_sec);
    format!("{task_id}:{target}:{alert_type}:{bucket}")
}

/// An event of a token task with the parts every token rule needs.
struct TokenEvent<'e> {
    event: &'e Event,
    target: &'e TargetRef,
    snapshot: &'e TokenSnapshot,
}

impl<'e> TokenEvent<'e> {
    /// Returns `None` for events without a target or snapshot, which no token rule can judge.
    fn of(event: &'e Event) -> Option<Self> {
        Some(TokenEvent {
            event,
            target: event.target.as_ref()?,
            snapshot: event.snapshot.as_ref()?,
        })
    }

    fn trade(&self) -> Option<&'e Trade> {
        match &self.event.kind {
            EventKind::Trade(trade) => Some(trade),
            _ => None,
        }
    }

    fn time_ms(&self) -> i64 {
        self.event.source_time_ms
    }
}

/// A rule that held: its finding and the source time of the oldest observation it covers.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    finding: Finding,
    window_start_ms: Option<i64>,
}

/// The task, config and frame that every alert of one frame refers to.
struct TokenJudge<'a> {
    task: &'a TaskSpec,
    config: &'a ConfigSpec,
    rules: &'a TokenRules,
    frame: &'a EventFrame,
}

impl TokenJudge<'_> {
    /// Judges one event and returns the alerts it would raise, as alert types with their
    /// findings. `held` is scratch space reused across events, so that an event on which no
    /// rule holds allocates nothing.
    fn judge_event(
        &self,
        event: &TokenEvent<'_>,
        held: &mut Vec<Held>,
    ) -> Vec<(AlertType, Vec<Held>)> {
        held.clear();
        match self.config.trigger_logic {
            TriggerLogic::Or => {
                judge_any(self.rules, event, held);
                held.drain(..).map(|h| (h.finding.rule, vec![h])).collect()
            }
            TriggerLogic::And if judge_all(self.rules, event, held) => {
                vec![(AlertType::Composite, std::mem::take(held))]
            }
            TriggerLogic::And => Vec::new(),
        }
    }

    fn build_alert(
        &self,
        event: &TokenEvent<'_>,
        target: Option<&TargetSpec>,
        alert_type: AlertType,
        held: Vec<Held>,
    ) -> Alert {
        let (task, rules, frame) = (self.task, self.rules, self.frame);
        let address = &event.target.address;
        let first_event_time_ms = held.iter().filter_map(|h| h.window_start_ms).min();
        let facts = alert_facts(rules, event, &held);
        let findings = held
            .into_iter()
            .map(|h| Finding {
                reason: reason(&h.finding, rules, event),
                ..h.finding
            })
            .collect();

        Alert {
            v: MESSAGE_VERSION,
            id: alert_id(
                task.task_id,
                address,
                alert_type,
                event.time_ms(),
                rules.cooldown_sec,
            ),
            task_id: task.task_id,
            config_id: self.config.config_id,
            config_version: self.config.version,
            batch_id: frame.batch_id,
            target_id: Some(event.target.target_id),
            chain: frame.chain,
            alert_type,
            state: AlertState::Confirmed,
            target_value: address.clone(),
            token_name: target.and_then(|t| t.token_name.clone()),
            token_symbol: target.and_then(|t| t.token_symbol.clone()),
            findings,
            event_time_ms: event.time_ms(),
            first_event_time_ms,
            price: event.snapshot.price,
            market_cap: event
                .snapshot
                .market_cap
                .or(target.and_then(|t| t.market_cap)),
            extra_json: facts.to_json(),
        }
    }
}

/// Judges, with trigger logic OR, the rules that this kind of event feeds, and pushes the
/// ones that hold onto `held`.
fn judge_any(rules: &TokenRules, event: &TokenEvent<'_>, held: &mut Vec<Held>) {
    let results = match &event.event.kind {
        EventKind::Trade(_) => [
            rules
                .large_trade
                .as_ref()
                .and_then(|r| judge_large_trade(r, event)),
            rules.volume.as_ref().and_then(|r| judge_volume(r, event)),
            rules
                .cumulative_buy
                .as_ref()
                .and_then(|r| judge_cumulative_buy(r, event)),
        ],
        EventKind::Price(_) => [
            rules
                .price_change
                .as_ref()
                .and_then(|r| judge_price_change(r, event)),
            None,
            None,
        ],
        EventKind::Holders(_) => [
            rules
                .holder_change
                .as_ref()
                .and_then(|r| judge_holder_change(r, event)),
            rules
                .top_holders
                .as_ref()
                .and_then(|r| judge_top_holders(r, event)),
            None,
        ],
        _ => [None, None, None],
    };
    held.extend(results.into_iter().flatten());
}

/// Judges, with trigger logic AND, every enabled rule on the event's snapshot. Returns true,
/// with every finding pushed onto `held`, only when all of them hold.
fn judge_all(rules: &TokenRules, event: &TokenEvent<'_>, held: &mut Vec<Held>) -> bool {
    let results = [
        rules
            .price_change
            .as_ref()
            .map(|r| judge_price_change(r, event)),
        rules.volume.as_ref().map(|r| judge_volume(r, event)),
        rules
            .holder_change
            .as_ref()
            .map(|r| judge_holder_change(r, event)),
        rules
            .large_trade
            .as_ref()
            .map(|r| judge_large_trade(r, event)),
        rules
            .cumulative_buy
            .as_ref()
            .map(|r| judge_cumulative_buy(r, event)),
        rules
            .top_holders
            .as_ref()
            .map(|r| judge_top_holders(r, event)),
    ];
    // Every enabled rule must hold: one `Some(None)` fails the whole conjunction.
    if results.iter().any(|result| matches!(result, Some(None))) {
        return false;
    }
    held.extend(results.into_iter().flatten().flatten());
    !held.is_empty()
}

/// Tests `observed >= threshold`, forgiving the rounding error of binary floating point, so
/// that a price that moved by exactly the threshold percent (`(105 - 100) / 100 * 100`) or
/// sums of decimal dollar amounts equal to the minimum count as reaching it.
fn reaches(observed: f64, threshold: f64) -> bool {
    observed >= threshold - threshold.abs().max(1.0) * 1e-9
}

fn judge_price_change(rule: &PriceChangeRule, event: &TokenEvent<'_>) -> Option<Held> {
    let window = event.snapshot.window(rule.window_sec)?;
    let price = event.snapshot.price?;
    let start_price = window.start_price.filter(|p| *p > 0.0)?;
    let change_pct = (price - start_price) / start_price * 100.0;

    // A fall is recorded with a negative threshold, which tells the two apart.
    let threshold = match (rule.rise_pct, rule.fall_pct) {
        (Some(rise), _) if reaches(change_pct, rise) => rise,
        (_, Some(fall)) if reaches(-change_pct, fall) => -fall,
        _ => return None,
    };
    Some(held(
        AlertType::PriceChange,
        change_pct,
        threshold,
        Some(rule.window_sec),
        window.start_time_ms,
    ))
}

fn judge_volume(rule: &VolumeRule, event: &TokenEvent<'_>) -> Option<Held> {
    let window = event.snapshot.window(rule.window_sec)?;
    if !reaches(window.volume_usd, rule.min_volume_usd) {
        return None;
    }
    Some(held(
        AlertType::VolumeChange,
        window.volume_usd,
        rule.min_volume_usd,
        Some(rule.window_sec),
        window.start_time_ms,
    ))
}

fn judge_holder_change(rule: &HolderChangeRule, event: &TokenEvent<'_>) -> Option<Held> {
    let window = event.snapshot.window(rule.window_sec)?;
    let holders = event.snapshot.holders?;
    let start_holders = window.start_holders.filter(|h| *h > 0)?;
    if holders < rule.min_holders {
        return None;
    }
    let change_pct = (holders as f64 - start_holders as f64) / start_holders as f64 * 100.0;
    if !reaches(change_pct.abs(), rule.min_change_pct) {
        return None;
    }
    Some(held(
        AlertType::HolderChange,
        change_pct,
        rule.min_change_pct,
        Some(rule.window_sec),
        window.start_time_ms,
    ))
}

fn judge_large_trade(rule: &LargeTradeRule, event: &TokenEvent<'_>) -> Option<Held> {
    let trade = event.trade()?;
    if !rule.side.accepts(trade.side) || !reaches(trade.volume_usd, rule.min_usd) {
        return None;
    }
    Some(held(
        AlertType::LargeTrade,
        trade.volume_usd,
        rule.min_usd,
        None,
        Some(event.time_ms()),
    ))
}

fn judge_cumulative_buy(rule: &CumulativeBuyRule, event: &TokenEvent<'_>) -> Option<Held> {
    let window = event.snapshot.window(rule.window_sec)?;
    if !reaches(window.buy_usd, rule.min_usd) {
        return None;
    }
    Some(held(
        AlertType::CumulativeBuy,
        window.buy_usd,
        rule.min_usd,
        Some(rule.window_sec),
        window.start_time_ms,
    ))
}

fn judge_top_holders(rule: &TopHoldersRule, event: &TokenEvent<'_>) -> Option<Held> {
    let share_pct = event.snapshot.top_share_pct?;
    if !reaches(share_pct, rule.threshold_pct) {
        return None;
    }
    Some(held(
        AlertType::TopHolders,
        share_pct,
        rule.threshold_pct,
        None,
        Some(event.time_ms()),
    ))
}

/// Builds a rule's finding without its reason, which [`reason`] writes only for the alerts
/// that are raised.
fn held(
    rule: AlertType,
    observed: f64,
    threshold: f64,
    window_sec: Option<u32>,
    window_start_ms: Option<i64>,
) -> Held {
    Held {
        finding: Finding {
            rule,
            observed,
            threshold,
            window_sec,
            reason: String::new(),
        },
        window_start_ms,
    }
}

/// Writes the English explanation of a finding for logs, such as
/// `price rose 6.1000% in 300s (>= 5%)`, from the finding, the rules and the event.
fn reason(finding: &Finding, rules: &TokenRules, event: &TokenEvent<'_>) -> String {
    let (observed, threshold) = (finding.observed, finding.threshold);
    let window_sec = finding.window_sec.unwrap_or_default();
    match finding.rule {
        AlertType::PriceChange if threshold >= 0.0 => {
            format!("price rose {observed:.4}% in {window_sec}s (>= {threshold}%)")
        }
        AlertType::PriceChange => format!(
            "price fell {:.4}% in {window_sec}s (>= {}%)",
            -observed, -threshold
        ),
        AlertType::VolumeChange => {
            format!("volume ${observed:.2} in {window_sec}s (>= ${threshold})")
        }
        AlertType::HolderChange => {
            let holders = event.snapshot.holders.unwrap_or_default();
            let start_holders = event
                .snapshot
                .window(window_sec)
                .and_then(|w| w.start_holders)
                .unwrap_or_default();
            format!(
                "holders changed {observed:.4}% ({start_holders} -> {holders}) in {window_sec}s (>= {threshold}%)"
            )
        }
        AlertType::LargeTrade => {
            let side = match event.trade().map(|t| t.side) {
                Some(Side::Sell) => "sell",
                _ => "buy",
            };
            format!("{side} of ${observed:.2} (>= ${threshold})")
        }
        AlertType::CumulativeBuy => {
            format!("buys of ${observed:.2} in {window_sec}s (>= ${threshold})")
        }
        AlertType::TopHolders => {
            let top_n = rules.top_holders.as_ref().map_or(0, |r| r.top_n);
            format!("top {top_n} holders hold {observed:.4}% (>= {threshold}%)")
        }
        other => other.as_str().to_owned(),
    }
}

/// Collects the trade behind an alert raised on a trade, the top-N count of a
/// `top_holders` finding and the token's market context, which titles and the Java side's
/// `alertData` need and findings cannot carry.
fn alert_facts(rules: &TokenRules, event: &TokenEvent<'_>, held: &[Held]) -> AlertFacts {
    let trade = event.trade().map(|trade| TradeFacts {
        side: trade.side,
        volume_usd: trade.volume_usd,
        tx_hash: trade.tx_hash.clone(),
        owner: trade.owner.clone(),
    });
    let has_top_holders = held.iter().any(|h| h.finding.rule == AlertType::TopHolders);
    let top_n = rules
        .top_holders
        .as_ref()
        .filter(|_| has_top_holders)
        .map(|r| r.top_n);
    let finding_window = held.iter().find_map(|h| h.finding.window_sec);
    AlertFacts {
        trade,
        top_n,
        market: market_facts(event.snapshot, finding_window),
    }
}

/// Reads the price change and volume over the window of the first finding that has one, or
/// else over the longest window of the snapshot.
fn market_facts(snapshot: &TokenSnapshot, window_sec: Option<u32>) -> Option<MarketFacts> {
    let window = window_sec
        .and_then(|w| snapshot.window(w))
        .or_else(|| snapshot.windows.iter().max_by_key(|w| w.window_sec))?;
    let start_price = window.start_price.filter(|p| *p > 0.0);
    let price_change_pct = snapshot
        .price
        .zip(start_price)
        .map(|(price, start)| (price - start) / start * 100.0);
    Some(MarketFacts {
        window_sec: window.window_sec,
        price_change_pct,
        volume_usd: window.volume_usd,
    })
}

#[cfg(test)]
mod tests;
