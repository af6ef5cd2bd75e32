//! Client messages of the Birdeye WebSocket protocol and their subscription queries.
//!
//! Consumes the text of one client frame. Produces a [`ClientMessage`] with the subscribed
//! addresses, or a [`QueryError`] whose text is sent back to the client in an `ERROR` frame.
//! Both query forms are accepted:
//! - simple: `{"queryType":"simple","address":"A","chartType":"1m","currency":"usd"}`
//!   (`pairAddress` instead of `address` for trades);
//! - complex: `{"queryType":"complex","query":"(address = A AND chartType = 1m AND currency = usd) OR (...)"}`
//!   for prices and `"address = A OR address = B"` for trades.

use serde_json::{Map, Value};

/// Largest number of addresses that one subscription message may carry, as Birdeye documents.
pub const MAX_ADDRESSES_PER_SUBSCRIPTION: usize = 100;

/// The two data channels of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// `SUBSCRIBE_PRICE` → `PRICE_DATA` candles.
    Price,
    /// `SUBSCRIBE_TXS` → `TXS_DATA` trades.
    Txs,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Price => "price",
            Channel::Txs => "txs",
        }
    }

    fn subscribe_type(self) -> &'static str {
        match self {
            Channel::Price => "SUBSCRIBE_PRICE",
            Channel::Txs => "SUBSCRIBE_TXS",
        }
    }
}

/// A message sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Subscribe {
        channel: Channel,
        /// Addresses in the order of the query, as written.
        addresses: Vec<String>,
    },
    Unsubscribe(Channel),
}

/// Reason for rejecting a client message. The text goes to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid message: not a JSON object ({0})")]
    NotJson(String),
    #[error("invalid message: missing string field \"type\"")]
    MissingType,
    #[error("unsupported message type {0:?}: feed-replay serves SUBSCRIBE_PRICE, SUBSCRIBE_TXS, UNSUBSCRIBE_PRICE and UNSUBSCRIBE_TXS")]
    UnsupportedType(String),
    #[error("invalid {message_type}: missing object field \"data\"")]
    MissingData { message_type: &'static str },
    #[error("invalid {message_type}: queryType must be simple or complex, got {value:?}")]
    QueryType {
        message_type: &'static str,
        value: String,
    },
    #[error("invalid {message_type}: missing string field {field:?}")]
    MissingField {
        message_type: &'static str,
        field: &'static str,
    },
    #[error("invalid {message_type} query {query:?}: {reason}")]
    Query {
        message_type: &'static str,
        query: String,
        reason: String,
    },
    #[error("invalid {message_type}: {field} {value:?} is not supported, feed-replay serves {supported}")]
    Unsupported {
        message_type: &'static str,
        field: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error("invalid {message_type}: at most {MAX_ADDRESSES_PER_SUBSCRIPTION} addresses per subscription, got {count}")]
    TooManyAddresses {
        message_type: &'static str,
        count: usize,
    },
}

/// Parses the text of one client frame.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, QueryError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| QueryError::NotJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(QueryError::NotJson(
            "the frame is JSON but not an object".into(),
        ));
    };
    let message_type = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or(QueryError::MissingType)?;

    match message_type {
        "SUBSCRIBE_PRICE" => parse_subscription(Channel::Price, &object),
        "SUBSCRIBE_TXS" => parse_subscription(Channel::Txs, &object),
        "UNSUBSCRIBE_PRICE" => Ok(ClientMessage::Unsubscribe(Channel::Price)),
        "UNSUBSCRIBE_TXS" => Ok(ClientMessage::Unsubscribe(Channel::Txs)),
        other => Err(QueryError::UnsupportedType(other.to_owned())),
    }
}

fn parse_subscription(
    channel: Channel,
    object: &Map<String, Value>,
) -> Result<ClientMessage, QueryError> {
    let message_type = channel.subscribe_type();
    let data = object
        .get("data")
        .and_then(Value::as_object)
        .ok_or(QueryError::MissingData { message_type })?;

    // Birdeye's examples always name the query type; a missing one is read as simple.
    let conditions = match data
        .get("queryType")
        .and_then(Value::as_str)
        .unwrap_or("simple")
    {
        "simple" => vec![simple_condition(channel, data)?],
        "complex" => {
            let query =
                data.get("query")
                    .and_then(Value::as_str)
                    .ok_or(QueryError::MissingField {
                        message_type,
                        field: "query",
                    })?;
            parse_complex_query(query).map_err(|reason| QueryError::Query {
                message_type,
                query: query.to_owned(),
                reason,
            })?
        }
        other => {
            return Err(QueryError::QueryType {
                message_type,
                value: other.to_owned(),
            })
        }
    };

    let addresses = validate_conditions(channel, conditions)?;
    Ok(ClientMessage::Subscribe { channel, addresses })
}

/// One parenthesised group of a query, or the fields of a simple subscription.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Condition {
    /// `address` or `pairAddress`.
    address: Option<String>,
    chart_type: Option<String>,
    currency: Option<String>,
}

fn simple_condition(channel: Channel, data: &Map<String, Value>) -> Result<Condition, QueryError> {
    let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::to_owned);
    let address = text("address").or_else(|| text("pairAddress"));
    if address.is_none() {
        return Err(QueryError::MissingField {
            message_type: channel.subscribe_type(),
            field: "address",
        });
    }
    Ok(Condition {
        address,
        chart_type: text("chartType"),
        currency: text("currency"),
    })
}

fn validate_conditions(
    channel: Channel,
    conditions: Vec<Condition>,
) -> Result<Vec<String>, QueryError> {
    let message_type = channel.subscribe_type();
    if conditions.len() > MAX_ADDRESSES_PER_SUBSCRIPTION {
        return Err(QueryError::TooManyAddresses {
            message_type,
            count: conditions.len(),
        });
    }

    let mut addresses = Vec::with_capacity(conditions.len());
    for condition in conditions {
        if let Some(chart_type) = condition.chart_type.filter(|c| c != "1m") {
            return Err(QueryError::Unsupported {
                message_type,
                field: "chartType",
                value: chart_type,
                supported: "1m candles only",
            });
        }
        if let Some(currency) = condition.currency.filter(|c| c != "usd" && c != "pair") {
            return Err(QueryError::Unsupported {
                message_type,
                field: "currency",
                value: currency,
                supported: "usd and pair",
            });
        }
        // Every group was checked for an address while parsing.
        addresses.extend(condition.address);
    }
    Ok(addresses)
}

// ---------------------------------------------------------------------------------------------
// Complex queries: `group (OR group)*`, where a group is `term (AND term)*`, optionally in
// parentheses, and a term is `key = value`.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Equals,
    Word(String),
}

fn tokenize(query: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in query.chars() {
        let symbol = match c {
            '(' => Some(Token::Open),
            ')' => Some(Token::Close),
            '=' => Some(Token::Equals),
            _ => None,
        };
        if symbol.is_some() || c.is_whitespace() {
            if !word.is_empty() {
                tokens.push(Token::Word(std::mem::take(&mut word)));
            }
            tokens.extend(symbol);
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        tokens.push(Token::Word(word));
    }
    tokens
}

fn describe(token: Option<&Token>) -> String {
    match token {
        None => "the end of the query".into(),
        Some(Token::Open) => "\"(\"".into(),
        Some(Token::Close) => "\")\"".into(),
        Some(Token::Equals) => "\"=\"".into(),
        Some(Token::Word(w)) => format!("{w:?}"),
    }
}

fn is_keyword(token: Option<&Token>, keyword: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword))
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn query(&mut self) -> Result<Vec<Condition>, String> {
        let mut conditions = vec![self.group()?];
        while is_keyword(self.peek(), "OR") {
            self.next();
            conditions.push(self.group()?);
        }
        match self.peek() {
            None => Ok(conditions),
            other => Err(format!(
                "expected OR or the end of the query, found {}",
                describe(other)
            )),
        }
    }

    fn group(&mut self) -> Result<Condition, String> {
        let parenthesised = self.peek() == Some(&Token::Open);
        if parenthesised {
            self.next();
        }

        let mut condition = Condition::default();
        self.term(&mut condition)?;
        while is_keyword(self.peek(), "AND") {
            self.next();
            self.term(&mut condition)?;
        }

        if parenthesised {
            match self.next() {
                Some(Token::Close) => {}
                other => {
                    return Err(format!(
                        "expected \")\", found {}",
                        describe(other.as_ref())
                    ))
                }
            }
        }
        if condition.address.is_none() {
            return Err("every OR group needs an address condition".into());
        }
        Ok(condition)
    }

    fn term(&mut self, condition: &mut Condition) -> Result<(), String> {
        let key = match self.next() {
            Some(Token::Word(w)) => w,
            other => {
                return Err(format!(
                    "expected a key such as address, found {}",
                    describe(other.as_ref())
                ))
            }
        };
        match self.next() {
            Some(Token::Equals) => {}
            other => {
                return Err(format!(
                    "expected \"=\" after {key}, found {}",
                    describe(other.as_ref())
                ))
            }
        }
        let value = match self.next() {
            Some(Token::Word(w))
                if !w.eq_ignore_ascii_case("AND") && !w.eq_ignore_ascii_case("OR") =>
            {
                w
            }
            other => {
                return Err(format!(
                    "expected a value after \"{key} =\", found {}",
                    describe(other.as_ref())
                ))
            }
        };

        let slot = match key.as_str() {
            "address" | "pairAddress" => &mut condition.address,
            "chartType" => &mut condition.chart_type,
            "currency" => &mut condition.currency,
            _ => {
                return Err(format!(
                    "unknown key {key:?}, expected address, pairAddress, chartType or currency"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("{key} appears twice in one group"));
        }
        *slot = Some(value);
        Ok(())
    }
}

fn parse_complex_query(query: &str) -> Result<Vec<Condition>, String> {
    let tokens = tokenize(query);
    if tokens.is_empty() {
        return Err("the query is empty".into());
    }
    Parser {
        tokens,
        position: 0,
    }
    .query()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
    const B: &str = "So11111111111111111111111111111111111111112";

    fn subscribe(message: &str) -> (Channel, Vec<String>) {
        match parse_client_message(message).unwrap() {
            ClientMessage::Subscribe { channel, addresses } => (channel, addresses),
            other => panic!("expected a subscription, got {other:?}"),
        }
    }

    #[test]
    fn complex_price_query_lists_every_address() {
        let message = format!(
            r#"{{"type":"SUBSCRIBE_PRICE","data":{{"queryType":"complex","query":"(address = {A} AND chartType = 1m AND currency = usd) OR (address = {B} AND chartType = 1m AND currency = usd)"}}}}"#
        );
        assert_eq!(
            subscribe(&message),
            (Channel::Price, vec![A.to_owned(), B.to_owned()])
        );
    }

    #[test]
    fn complex_txs_query_without_parentheses() {
        let message = format!(
            r#"{{"type":"SUBSCRIBE_TXS","data":{{"queryType":"complex","query":"address = {A} OR address = {B}"}}}}"#
        );
        assert_eq!(
            subscribe(&message),
            (Channel::Txs, vec![A.to_owned(), B.to_owned()])
        );
    }

    #[test]
    fn simple_queries_accept_address_or_pair_address() {
        let price = format!(
            r#"{{"type":"SUBSCRIBE_PRICE","data":{{"queryType":"simple","chartType":"1m","address":"{A}","currency":"usd"}}}}"#
        );
        let pair = format!(
            r#"{{"type":"SUBSCRIBE_TXS","data":{{"queryType":"simple","pairAddress":"{B}"}}}}"#
        );
        assert_eq!(subscribe(&price), (Channel::Price, vec![A.to_owned()]));
        assert_eq!(subscribe(&pair), (Channel::Txs, vec![B.to_owned()]));
    }

    #[test]
    fn unsubscribe_names_its_channel() {
        assert_eq!(
            parse_client_message(r#"{"type":"UNSUBSCRIBE_TXS"}"#).unwrap(),
            ClientMessage::Unsubscribe(Channel::Txs)
        );
    }

    #[test]
    fn broken_queries_are_rejected_with_the_reason() {
        let cases = [
            ("address = ", "expected a value after \"address =\""),
            ("(address = A AND chartType = 1m", "expected \")\""),
            ("address A", "expected \"=\" after address"),
            ("chartType = 1m", "every OR group needs an address"),
            ("address = A OR", "expected a key"),
            ("owner = A", "unknown key \"owner\""),
            ("address = A address = B", "expected OR or the end"),
            ("   ", "the query is empty"),
        ];
        for (query, expected) in cases {
            let message = serde_json::json!({"type": "SUBSCRIBE_TXS", "data": {"queryType": "complex", "query": query}});
            let error = parse_client_message(&message.to_string())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "query {query:?}: {error}");
            assert!(error.contains("SUBSCRIBE_TXS"), "query {query:?}: {error}");
        }
    }

    #[test]
    fn other_chart_types_are_rejected() {
        let message = r#"{"type":"SUBSCRIBE_PRICE","data":{"queryType":"complex","query":"address = A AND chartType = 5m"}}"#;
        let error = parse_client_message(message).unwrap_err().to_string();
        assert!(error.contains("chartType \"5m\""), "{error}");
    }

    #[test]
    fn more_than_one_hundred_addresses_are_rejected() {
        let query = (0..101)
            .map(|i| format!("address = A{i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let message = serde_json::json!({"type": "SUBSCRIBE_TXS", "data": {"queryType": "complex", "query": query}});
        let error = parse_client_message(&message.to_string()).unwrap_err();
        assert_eq!(
            error,
            QueryError::TooManyAddresses {
                message_type: "SUBSCRIBE_TXS",
                count: 101
            }
        );
    }

    #[test]
    fn malformed_frames_are_rejected() {
        assert!(matches!(
            parse_client_message("hello"),
            Err(QueryError::NotJson(_))
        ));
        assert_eq!(
            parse_client_message(r#"{"data":{}}"#),
            Err(QueryError::MissingType)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"SUBSCRIBE_TOKEN_STATS"}"#),
            Err(QueryError::UnsupportedType("SUBSCRIBE_TOKEN_STATS".into()))
        );
        assert_eq!(
            parse_client_message(r#"{"type":"SUBSCRIBE_TXS"}"#),
            Err(QueryError::MissingData {
                message_type: "SUBSCRIBE_TXS"
            })
        );
    }
}
