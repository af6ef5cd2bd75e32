use super::*;

const WETH: &str = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2";
const USDT: &str = "0xdac17f958d2ee523a2206206994597c13d831ec7";
const PAIR: &str = "0x0d4a11d5eeaac28ec3f61d100daf4d40471f1852";

fn watched(address: &str) -> bool {
    address_key(address) == WETH
}

fn parse(text: &str) -> Result<FeedMessage, ParseError> {
    parse_frame(text, watched)
}

fn simple_trade(volume: &str) -> String {
    format!(
        r#"{{"type":"TXS_DATA","data":{{"blockUnixTime":1675329600,"blockUnixTimeMs":1675329600138,"owner":"0x2b6ed29a95753c3ad948348e3e7b1a251080ffb9","source":"uniswap_v2","txHash":"0x5f0e4b3f3c0b2f0c9bd1fd6bde7f1f5cc2a77e2e5ab4d6e0a4a7c3e7b0f2d0a1","side":"buy","tokenAddress":"{WETH}","alias":null,"isTradeOnBe":false,"platform":"0x7a250d5630b4cf539739df2c5dacb4c659f2488d","volumeUSD":{volume},"from":{{"symbol":"USDT","decimals":6,"address":"{USDT}","amount":43440141600,"uiAmount":43440.1416,"price":1.0,"nearestPrice":1.0,"changeAmount":-43440141600,"uiChangeAmount":-43440.1416}},"to":{{"symbol":"WETH","decimals":18,"address":"{WETH}","amount":26062000000000000000,"uiAmount":26.062,"price":1666.8,"nearestPrice":1666.8,"changeAmount":26062000000000000000,"uiChangeAmount":26.062}},"tokenPrice":1666.8}}}}"#
    )
}

fn complex_trade(from: &str, to: &str) -> String {
    format!(
        r#"{{"type":"TXS_DATA","data":{{"blockUnixTime":1675329601,"owner":"0x2b6ed29a95753c3ad948348e3e7b1a251080ffb9","source":"uniswap_v2","txHash":"0x9a7c","address":"{PAIR}","volumeUSD":253.35208,"from":{{"symbol":"A","decimals":18,"address":"{from}","uiAmount":0.152,"price":1666.79,"nearestPrice":1666.79}},"to":{{"symbol":"B","decimals":6,"address":"{to}","uiAmount":253.35208,"price":1.0,"nearestPrice":1.0}}}}}}"#
    )
}

fn price_frame(fields: &str) -> String {
    format!(
        r#"{{"type":"PRICE_DATA","data":{{{fields},"eventType":"ohlcv","type":"1m","unixTime":1675329600,"v":26.444,"symbol":"WETH","address":"{WETH}"}}}}"#
    )
}

fn problem(text: &str) -> ParseError {
    match parse(text) {
        Err(error) => error,
        Ok(message) => panic!("expected a parse error, got {message:?}"),
    }
}

#[test]
fn welcome_is_parsed() {
    assert_eq!(parse(r#"{"type":"WELCOME"}"#), Ok(FeedMessage::Welcome));
}

#[test]
fn simple_trade_is_parsed() {
    let Ok(FeedMessage::Trades(trades)) = parse(&simple_trade("43440.1416")) else {
        panic!("expected trades");
    };
    assert_eq!(
        trades,
        vec![TradeData {
            address: WETH.into(),
            side: Side::Buy,
            volume_usd: 43440.1416,
            price_usd: Some(1666.8),
            time_ms: 1_675_329_600_138,
            tx_hash: Some(
                "0x5f0e4b3f3c0b2f0c9bd1fd6bde7f1f5cc2a77e2e5ab4d6e0a4a7c3e7b0f2d0a1".into()
            ),
            owner: Some("0x2b6ed29a95753c3ad948348e3e7b1a251080ffb9".into()),
        }]
    );
}

#[test]
fn simple_trade_without_ms_uses_seconds() {
    let text = simple_trade("10").replace(r#""blockUnixTimeMs":1675329600138,"#, "");
    let Ok(FeedMessage::Trades(trades)) = parse(&text) else {
        panic!("expected trades");
    };
    assert_eq!(trades[0].time_ms, 1_675_329_600_000);
}

#[test]
fn simple_trade_without_token_price_takes_leg_price() {
    let text = simple_trade("10").replace(r#""tokenPrice":1666.8"#, r#""tokenPrice":null"#);
    let Ok(FeedMessage::Trades(trades)) = parse(&text) else {
        panic!("expected trades");
    };
    assert_eq!(trades[0].price_usd, Some(1666.8));
}

#[test]
fn complex_trade_receiving_watched_token_is_buy() {
    let Ok(FeedMessage::Trades(trades)) = parse(&complex_trade(USDT, WETH)) else {
        panic!("expected trades");
    };
    assert_eq!(trades.len(), 1);
    assert_eq!(trades[0].address, WETH);
    assert_eq!(trades[0].side, Side::Buy);
    assert_eq!(trades[0].price_usd, Some(1.0), "price of the to leg");
    assert_eq!(trades[0].volume_usd, 253.35208);
    assert_eq!(trades[0].time_ms, 1_675_329_601_000);
}

#[test]
fn complex_trade_giving_watched_token_is_sell() {
    let checksummed = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2";
    let Ok(FeedMessage::Trades(trades)) = parse(&complex_trade(checksummed, USDT)) else {
        panic!("expected trades");
    };
    assert_eq!(trades.len(), 1);
    assert_eq!(trades[0].address, checksummed);
    assert_eq!(trades[0].side, Side::Sell);
    assert_eq!(trades[0].price_usd, Some(1666.79), "price of the from leg");
}

#[test]
fn complex_trade_between_two_watched_tokens_gives_both() {
    let both = |a: &str| a == WETH || a == USDT;
    let Ok(FeedMessage::Trades(trades)) = parse_frame(&complex_trade(USDT, WETH), both) else {
        panic!("expected trades");
    };
    assert_eq!(trades.len(), 2);
    assert_eq!(
        (trades[0].address.as_str(), trades[0].side),
        (WETH, Side::Buy)
    );
    assert_eq!(
        (trades[1].address.as_str(), trades[1].side),
        (USDT, Side::Sell)
    );
}

#[test]
fn complex_trade_without_watched_token_is_rejected() {
    let error = problem(&complex_trade(USDT, PAIR));
    assert_eq!(error.frame_type, "TXS_DATA");
    assert!(error.problem.contains("neither from.address"), "{error}");
    assert!(error.problem.contains(PAIR), "{error}");
}

#[test]
fn price_candle_is_parsed() {
    let text = price_frame(r#""o":1666.8,"h":1667.5,"l":1666.1,"c":1667.2"#);
    assert_eq!(
        parse(&text),
        Ok(FeedMessage::Price(PriceData {
            address: WETH.into(),
            open: 1666.8,
            high: 1667.5,
            low: 1666.1,
            close: 1667.2,
            volume_token: Some(26.444),
            time_ms: 1_675_329_600_000,
        }))
    );
}

#[test]
fn error_frame_keeps_server_message() {
    let text = r#"{"type":"ERROR","data":{"message":"Invalid API key"}}"#;
    assert_eq!(
        parse(text),
        Ok(FeedMessage::Error("Invalid API key".into()))
    );
}

#[test]
fn error_frame_without_message_shows_all_of_data() {
    let text = r#"{"type":"ERROR","data":{"code":401,"reason":"unauthorized"}}"#;
    assert_eq!(
        parse(text),
        Ok(FeedMessage::Error(
            r#"{"code":401,"reason":"unauthorized"}"#.into()
        ))
    );
}

#[test]
fn unread_member_is_checked_for_syntax_only() {
    let trade = simple_trade("1650.2");
    let with = |member: &str| trade.replacen(r#""alias":null"#, member, 1);

    let out_of_range = parse(&with(r#""alias":1e400"#)).expect("an unread number is not converted");
    assert_eq!(out_of_range, parse(&trade).unwrap());
    let broken = problem(&with(r#""alias":[1,"#));
    assert_eq!(broken.frame_type, "<invalid JSON>");
    // The same number where the parser reads it still fails.
    assert_eq!(problem(&simple_trade("1e400")).frame_type, "<invalid JSON>");
}

#[test]
fn unknown_type_is_other() {
    let text = r#"{"type":"PRICE_ACK","data":{}}"#;
    assert_eq!(parse(text), Ok(FeedMessage::Other("PRICE_ACK".into())));
}

#[test]
fn string_volume_names_field_and_value() {
    let error = problem(&simple_trade(r#""abc""#));
    assert_eq!(
        error.to_string(),
        r#"malformed TXS_DATA frame: volumeUSD must be a number, got "abc""#
    );
}

#[test]
fn negative_volume_is_rejected() {
    let error = problem(&simple_trade("-5"));
    assert_eq!(error.problem, "volumeUSD must not be negative, got -5");
}

#[test]
fn nan_volume_is_rejected() {
    // JSON has no NaN: a feed that writes one produces invalid JSON, which is rejected whole.
    let error = problem(&simple_trade("NaN"));
    assert_eq!(error.frame_type, "<invalid JSON>");
    let error = problem(&simple_trade(r#""NaN""#));
    assert_eq!(error.problem, r#"volumeUSD must be a number, got "NaN""#);
}

#[test]
fn missing_volume_is_rejected() {
    let text = simple_trade("1").replace(r#""volumeUSD":1,"#, "");
    assert_eq!(problem(&text).problem, "volumeUSD is missing");
}

#[test]
fn bad_side_is_rejected() {
    let text = simple_trade("1").replace(r#""side":"buy""#, r#""side":"swap""#);
    assert_eq!(
        problem(&text).problem,
        r#"side must be "buy" or "sell", got "swap""#
    );
}

#[test]
fn missing_time_is_rejected() {
    let text = simple_trade("1")
        .replace(r#""blockUnixTime":1675329600,"#, "")
        .replace(r#""blockUnixTimeMs":1675329600138,"#, "");
    assert_eq!(problem(&text).problem, "blockUnixTime is missing");
}

#[test]
fn zero_close_price_is_rejected() {
    let text = price_frame(r#""o":1666.8,"h":1667.5,"l":1666.1,"c":0"#);
    let error = problem(&text);
    assert_eq!(error.frame_type, "PRICE_DATA");
    assert_eq!(error.problem, "c must be a positive number, got 0");
}

#[test]
fn high_below_low_is_rejected() {
    let text = price_frame(r#""o":1666.8,"h":1660,"l":1666.1,"c":1661"#);
    assert_eq!(
        problem(&text).problem,
        "h must be >= l, got h = 1660 and l = 1666.1"
    );
}

#[test]
fn data_that_is_not_object_is_rejected() {
    let error = problem(r#"{"type":"PRICE_DATA","data":[1,2]}"#);
    assert_eq!(error.problem, "data must be an object, got [1,2]");
}

#[test]
fn frame_without_type_is_rejected() {
    let error = problem(r#"{"data":{}}"#);
    assert_eq!(error.frame_type, "<no type>");
}

/// Parses `text` through the tree, without the slots of [`data::parse_frame`].
fn parse_by_tree(text: &str) -> Result<FeedMessage, ParseError> {
    let tree = json::from_str_fields(text, FRAME_FIELDS).map_err(invalid_json)?;
    parse_value(text, &tree, &watched)
}

#[test]
fn slots_read_trades_and_candles() {
    let candle = price_frame(r#""o":1666.1,"h":1667.2,"l":1660,"c":1666.5"#);
    let type_after_data = format!(
        r#"{{"data":{{"o":1,"h":2,"l":0.5,"c":1.5,"unixTime":1675329600,"address":"{WETH}"}},"type":"PRICE_DATA"}}"#
    );
    let repeated_volume =
        simple_trade("1").replace(r#""volumeUSD":1,"#, r#""volumeUSD":"x","volumeUSD":2,"#);
    for text in [
        simple_trade("43440.1416"),
        complex_trade(USDT, WETH),
        complex_trade(WETH, WETH),
        candle,
        type_after_data,
        repeated_volume,
    ] {
        let by_slots = data::parse_frame(&text, &watched);
        assert!(by_slots.is_some(), "the slots gave up on {text}");
        assert_eq!(by_slots.map(Ok), Some(parse_by_tree(&text)), "{text}");
    }
}

#[test]
fn slots_read_legs_only_when_used() {
    // tokenPrice gives the price: the legs are checked for syntax only, as the tree path
    // ignores them too.
    let odd_legs = simple_trade("5").replace(r#""address":"0xdac1"#, r#""address":7,"x":"0xdac1"#);
    // Without tokenPrice the price comes from the `to` leg, whose address is the token.
    let leg_priced = simple_trade("5").replace(r#","tokenPrice":1666.8"#, "");
    let null_priced = simple_trade("5").replace(r#""tokenPrice":1666.8"#, r#""tokenPrice":null"#);
    let blank_token = simple_trade("5").replace(
        &format!(r#""tokenAddress":"{WETH}""#),
        r#""tokenAddress":" ""#,
    );
    for text in [odd_legs, leg_priced.clone(), null_priced, blank_token] {
        let by_slots = data::parse_frame(&text, &watched);
        assert!(by_slots.is_some(), "the slots gave up on {text}");
        assert_eq!(by_slots.map(Ok), Some(parse_by_tree(&text)), "{text}");
    }
    let Ok(FeedMessage::Trades(trades)) = parse(&leg_priced) else {
        panic!("expected trades from {leg_priced}");
    };
    assert_eq!(trades[0].price_usd, Some(1666.8));

    // A leg with an escape sends the whole frame to the tree path, which reads it.
    let escaped_leg = complex_trade(USDT, WETH).replace(r#""symbol":"B""#, r#""symbol":"\u0042""#);
    assert_eq!(data::parse_frame(&escaped_leg, &watched), None);
    assert_eq!(parse(&escaped_leg), parse_by_tree(&escaped_leg));
    assert!(parse(&escaped_leg).is_ok(), "{escaped_leg}");
}

#[test]
fn slots_leave_other_frames_to_tree() {
    for text in [
        r#"{"type":"WELCOME"}"#.to_owned(),
        r#"{"type":"ERROR","data":{"message":"bad key"}}"#.to_owned(),
        r#"{"type":"PRICE_DATA","data":[1,2]}"#.to_owned(),
        r#"{"data":{}}"#.to_owned(),
        simple_trade("-1"),
        simple_trade(r#""12""#),
        complex_trade(USDT, USDT),
        simple_trade("1").replace("buy", r#"b\u0075y"#),
    ] {
        assert_eq!(data::parse_frame(&text, &watched), None, "{text}");
        assert_eq!(parse(&text), parse_by_tree(&text), "{text}");
    }
}

#[test]
fn price_query_lists_each_address_with_chart() {
    let messages = price_subscriptions(&[WETH.to_owned(), USDT.to_owned()]);
    assert_eq!(messages.len(), 1);
    let value: Value = serde_json::from_str(&messages[0]).unwrap();
    assert_eq!(value["type"], "SUBSCRIBE_PRICE");
    assert_eq!(value["data"]["queryType"], "complex");
    assert_eq!(
        value["data"]["query"],
        format!(
            "(address = {WETH} AND chartType = 1m AND currency = usd) OR (address = {USDT} AND chartType = 1m AND currency = usd)"
        )
    );
}

#[test]
fn trade_query_joins_addresses_with_or() {
    let messages = trade_subscriptions(&[WETH.to_owned(), USDT.to_owned()]);
    let value: Value = serde_json::from_str(&messages[0]).unwrap();
    assert_eq!(value["type"], "SUBSCRIBE_TXS");
    assert_eq!(
        value["data"]["query"],
        format!("address = {WETH} OR address = {USDT}")
    );
}

#[test]
fn queries_hold_at_most_100_addresses() {
    let addresses: Vec<String> = (0..250).map(|i| format!("0x{i:040x}")).collect();
    let messages = trade_subscriptions(&addresses);
    assert_eq!(messages.len(), 3);
    let counts: Vec<usize> = messages
        .iter()
        .map(|m| m.matches("address = ").count())
        .collect();
    assert_eq!(counts, vec![100, 100, 50]);
    assert_eq!(price_subscriptions(&addresses).len(), 3);
}

#[test]
fn feed_url_adds_chain_and_key() {
    let base = Url::parse("wss://public-api.birdeye.so/socket").unwrap();
    let url = feed_url(&base, Chain::Sol, "k&y");
    assert_eq!(
        url.as_str(),
        "wss://public-api.birdeye.so/socket/solana?x-api-key=k%26y"
    );
    assert_eq!(
        redact_url(&url),
        "wss://public-api.birdeye.so/socket/solana"
    );

    let trailing = Url::parse("ws://127.0.0.1:9000/").unwrap();
    assert_eq!(
        feed_url(&trailing, Chain::Eth, "k").as_str(),
        "ws://127.0.0.1:9000/ethereum?x-api-key=k"
    );
}

mod same_as_whole_tree {
    //! `parse_frame` reads only the members it needs. On every text whose whole tree parses,
    //! it must give what interpreting the whole tree gives.

    use super::*;
    use monitor_tests::fuzz;
    use proptest::prelude::*;

    const TYPES: &[&str] = &["PRICE_DATA", "TXS_DATA", "ERROR", "WELCOME", ""];
    const KEYS: &[&str] = &[
        "o",
        "h",
        "l",
        "c",
        "v",
        "unixTime",
        "address",
        "blockUnixTime",
        "blockUnixTimeMs",
        "owner",
        "txHash",
        "side",
        "tokenAddress",
        "alias",
        "volumeUSD",
        "from",
        "to",
        "price",
        "uiAmount",
        "tokenPrice",
        "pairAddress",
        "message",
        "type",
        "data",
    ];
    const WORDS: &[&str] = &[WETH, USDT, "buy", "sell", "1m"];

    fn frames() -> impl Strategy<Value = String> {
        let complex = format!(
            r#"{{"type":"TXS_DATA","data":{{"blockUnixTime":1675296001,"address":"{PAIR}","volumeUSD":99.5,"from":{{"address":"{WETH}","price":1650,"amount":1}},"to":{{"address":"{USDT}","price":1}}}}}}"#
        );
        let samples = vec![
            simple_trade("1650.2"),
            complex,
            price_frame(r#""o":1,"h":2,"l":0.5,"c":1.5"#),
            r#"{"type":"ERROR","data":{"message":"bad key","code":1}}"#.to_owned(),
        ];
        prop_oneof![
            fuzz::texts(fuzz::typed_frame("type", TYPES, KEYS, WORDS)),
            proptest::sample::select(samples).prop_flat_map(fuzz::mutate),
        ]
    }

    proptest! {
        #![proptest_config(fuzz::short_config())]

        #[test]
        fn gives_what_the_whole_tree_gives(text in frames()) {
            if let Ok(whole) = json::from_str(&text) {
                prop_assert_eq!(parse(&text), parse_value(&text, &whole, &watched));
            }
        }
    }
}
