//! A JSON tree that borrows its strings from the frame text, for [`super::parse_frame`].
//!
//! `serde_json::Value` copies every key and string into its own allocation and stores each
//! object in a `BTreeMap`. Building and dropping it took about 45 % of ingest's CPU time in a
//! profile of `devkit loadgen --rate max`. [`Json`] keeps strings without escapes as slices
//! of the frame and objects as vectors of entries. It reads the text through the same
//! `serde_json` deserializer, so it accepts exactly the texts that `Value` accepts (including
//! the recursion limit and number range), and [`Json::to_value`] returns the `Value` that
//! `serde_json` would have built.
//!
//! [`from_str_fields`] reads only the members that the caller names in a [`Fields`] and skips
//! the others with `serde_json`'s `IgnoredAny`, which checks their syntax but converts no
//! number and keeps no entry. A trade frame has about 36 values and the parser reads 16 of
//! them. A skipped member never makes the text invalid for a reason other than its syntax:
//! a number out of `f64` range or a lone surrogate escape there is accepted, as nothing reads
//! it.
//!
//! [`from_str_fields`] first tries the [`direct`] reader, which walks the bytes once and
//! returns the same tree for the frames Birdeye sends. It leaves every other text to
//! `serde_json`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::{Map, Number, Value};

mod direct;

pub use direct::read_with;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Object<'a>),
}

/// A JSON object's entries in text order. When a key repeats, the last entry counts, as in
/// `serde_json::Map`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object<'a> {
    entries: Vec<(Cow<'a, str>, Json<'a>)>,
}

impl<'a> Object<'a> {
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        for (key, value) in &self.entries {
            map.insert(key.clone().into_owned(), value.to_value());
        }
        map
    }
}

impl<'a> Json<'a> {
    /// Returns the member `key` of an object; `None` for other values, like `Value::get`.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(object) => object.get(key),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    /// Converts to the `Value` that `serde_json::from_str` returns for the same text.
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => Value::Number(n.clone()),
            Json::String(s) => Value::String(s.clone().into_owned()),
            Json::Array(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Object(object) => Value::Object(object.to_map()),
        }
    }
}

/// The members of objects to read. A member whose key is listed is read with the listed
/// `Fields`, and any other member is skipped. A value that is not an object is read whole.
#[derive(Debug, Clone, Copy)]
pub enum Fields {
    /// Every member, at every depth.
    All,
    /// Only these members of an object.
    Only(&'static [(&'static str, Fields)]),
}

impl Fields {
    /// Returns how to read the member `key`, or `None` when it is skipped.
    fn member(self, key: &str) -> Option<Fields> {
        match self {
            Fields::All => Some(Fields::All),
            Fields::Only(members) => members
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, fields)| *fields),
        }
    }
}

/// Parses a whole text, failing with the error `serde_json::from_str::<Value>` gives.
pub fn from_str(text: &str) -> Result<Json<'_>, serde_json::Error> {
    from_str_fields(text, Fields::All)
}

/// Parses a text, keeping only the members `fields` names. The text must still be one JSON
/// value with nothing after it, and the errors are `serde_json`'s.
pub fn from_str_fields(text: &str, fields: Fields) -> Result<Json<'_>, serde_json::Error> {
    match direct::read(text, fields) {
        Some(value) => Ok(value),
        None => from_str_fields_by_serde(text, fields),
    }
}

/// [`from_str_fields`] without the direct reader.
fn from_str_fields_by_serde(text: &str, fields: Fields) -> Result<Json<'_>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = JsonVisitor(fields).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        JsonVisitor(Fields::All).deserialize(deserializer)
    }
}

impl<'de> DeserializeSeed<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Builds the same variants as `serde_json::Value`'s visitor, from the members its `Fields`
/// names.
#[derive(Clone, Copy)]
struct JsonVisitor(Fields);

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json<'de>, E> {
        Ok(Number::from_f64(value).map_or(Json::Null, Json::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(value)))
    }

    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        // Birdeye's trade data has about 16 keys and each leg 10.
        let mut entries = Vec::with_capacity(16);
        while let Some(Key(key)) = map.next_key()? {
            match self.0.member(&key) {
                Some(fields) => {
                    let value = map.next_value_seed(JsonVisitor(fields))?;
                    entries.push((key, value));
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Json::Object(Object { entries }))
    }
}

/// An object key, borrowed from the text when it has no escapes. (`Cow<str>` itself always
/// copies.)
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that both parsers accept `text` or both reject it with the same message, and
    /// that accepted texts give the same value.
    fn assert_same_as_value(text: &str) {
        let expected = serde_json::from_str::<Value>(text).map_err(|e| e.to_string());
        let actual = from_str(text)
            .map(|json| json.to_value())
            .map_err(|e| e.to_string());
        assert_eq!(actual, expected, "text: {text}");
    }

    #[test]
    fn json_matches_value_on_edge_cases() {
        let deep_ok = format!("{}1{}", "[".repeat(127), "]".repeat(127));
        let too_deep = format!("{}1{}", "[".repeat(129), "]".repeat(129));
        let texts = [
            r#"{"type":"TXS_DATA","data":{"a":1,"b":-2,"c":1.5e3,"d":null,"e":true,"f":"x"}}"#,
            r#"{"k":1,"k":2,"a":{"k":"first","k":"last"}}"#,
            r#"{"esc\u0061ped":"tab\tquote\"slash\/ \u00e9 \ud83d\ude00"}"#,
            r#"{"big":1003707317073170700000,"neg":-9223372036854775809,"max":18446744073709551615}"#,
            r#"{"out_of_range":1e400}"#,
            r#"{"lone":"\ud800"}"#,
            r#"{"bad_escape":"\x"}"#,
            r#"[1,2,{"x":[]}]"#,
            r#""just a string""#,
            r#"{"trailing":1} x"#,
            r#"{"unterminated":"#,
            "",
            &deep_ok,
            &too_deep,
        ];
        for text in texts {
            assert_same_as_value(text);
        }
    }

    #[test]
    fn repeated_key_reads_last_entry() {
        let json = from_str(r#"{"k":1,"k":"two"}"#).unwrap();
        assert_eq!(json.get("k").and_then(Json::as_str), Some("two"));
    }

    #[test]
    fn unescaped_strings_are_borrowed() {
        let json = from_str(r#"{"plain":"abc","escaped":"a\nb"}"#).unwrap();
        assert!(matches!(
            json.get("plain"),
            Some(Json::String(Cow::Borrowed("abc")))
        ));
        assert!(matches!(
            json.get("escaped"),
            Some(Json::String(Cow::Owned(_)))
        ));
    }

    /// A trade frame as the load generator sends it, a price candle and an error.
    const BIRDEYE_FRAMES: &[&str] = &[
        r#"{"type":"TXS_DATA","data":{"blockUnixTime":1700000000,"blockUnixTimeMs":1700000000123,"owner":"0x00000000000000000000000000000a11ce00000007","source":"uniswap_v3","txHash":"0x10ad03000000000000000000000000000000000000000007000000000bebc200","side":"buy","tokenAddress":"0x10ad000000000000000000000000000000000007","alias":null,"isTradeOnBe":false,"platform":"uniswap","volumeUSD":1234.56,"from":{"symbol":"USDT","decimals":6,"address":"0xdac17f958d2ee523a2206206994597c13d831ec7","amount":1234560000,"uiAmount":1234.56,"price":1.0,"nearestPrice":1.0,"changeAmount":-1234560000,"uiChangeAmount":-1234.56,"typeSwap":"from"},"to":{"symbol":"LG7","decimals":18,"address":"0x10ad000000000000000000000000000000000007","amount":1003707317073170700000,"uiAmount":1003.7073170731707,"price":1.23,"nearestPrice":1.23,"changeAmount":1003707317073170700000,"uiChangeAmount":1003.7073170731707,"typeSwap":"to"},"tokenPrice":1.23}}"#,
        r#"{ "type": "PRICE_DATA", "data": { "o": 24.6, "h": 24.9, "l": 24.5, "c": 24.8, "eventType": "ohlcv", "type": "1m", "unixTime": 1675296000, "v": 3035.5, "symbol": "SOL", "address": "So11111111111111111111111111111111111111112" } }"#,
        r#"{"type":"ERROR","data":{"message":"invalid api key","code":-1}}"#,
    ];

    #[test]
    fn direct_reader_reads_birdeye_frames() {
        let fields = crate::birdeye::FRAME_FIELDS;
        for text in BIRDEYE_FRAMES {
            let direct = direct::read(text, fields);
            assert!(direct.is_some(), "the direct reader gave up on {text}");
            assert_eq!(direct, from_str_fields_by_serde(text, fields).ok());
        }
    }

    #[test]
    fn direct_reader_leaves_escapes_to_serde() {
        for text in [
            r#"{"a":"quote\"d"}"#,
            r#"{"a\u0062":1}"#,
            r#"{"a":"tab\t"}"#,
        ] {
            assert_eq!(direct::read(text, Fields::All), None, "{text}");
            assert_same_as_value(text);
        }
    }

    #[test]
    fn direct_reader_matches_serde_numbers() {
        for text in [
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "-0",
            "0.1",
            "2.2250738585072011e-308",
            "1e-400",
            "-1.5E+3",
            "1003.7073170731707",
            "130.65331632653061",
        ] {
            let direct = direct::read(text, Fields::All);
            assert!(direct.is_some(), "the direct reader gave up on {text}");
            assert_eq!(
                direct,
                from_str_fields_by_serde(text, Fields::All).ok(),
                "{text}"
            );
        }
    }

    /// Checks that the direct reader gives up on `text` or gives what `serde_json` gives.
    fn assert_direct_agrees(text: &str, fields: Fields) {
        if let Some(direct) = direct::read(text, fields) {
            let by_serde = from_str_fields_by_serde(text, fields).map_err(|e| e.to_string());
            assert_eq!(Ok(direct), by_serde, "text: {text}");
        }
    }

    #[test]
    fn direct_reader_agrees_after_edits() {
        const INSERTED: &[char] = &[
            ',', ':', '{', '}', '[', ']', '"', '\\', ' ', '\n', '\u{1}', '0', '-', '+', '.', 'e',
            'x',
        ];
        for frame in BIRDEYE_FRAMES {
            let fields = crate::birdeye::FRAME_FIELDS;
            for (at, _) in frame.char_indices() {
                let mut removed = frame.to_string();
                removed.remove(at);
                assert_direct_agrees(&removed, fields);
                for c in INSERTED {
                    let mut inserted = frame.to_string();
                    inserted.insert(at, *c);
                    assert_direct_agrees(&inserted, fields);
                    assert_direct_agrees(&inserted, Fields::All);
                }
            }
        }
    }

    mod direct_reader {
        //! Whatever the direct reader returns, the `serde_json` path returns too.

        use super::*;
        use monitor_tests::fuzz;
        use proptest::prelude::*;

        const KEYS: &[&str] = &["type", "data", "volumeUSD", "from", "to", "price", "a"];
        const WORDS: &[&str] = &[
            "TXS_DATA",
            "buy",
            "0xdac17f958d2ee523a2206206994597c13d831ec7",
        ];
        const SOME_FIELDS: Fields = Fields::Only(&[
            ("a", Fields::All),
            (
                "data",
                Fields::Only(&[("from", Fields::Only(&[("price", Fields::All)]))]),
            ),
        ]);

        fn texts() -> impl Strategy<Value = String> {
            prop_oneof![
                fuzz::texts(fuzz::tree(KEYS, WORDS)),
                proptest::sample::select(BIRDEYE_FRAMES)
                    .prop_flat_map(|t| fuzz::mutate(t.to_owned())),
            ]
        }

        proptest! {
            #![proptest_config(fuzz::short_config())]

            #[test]
            fn gives_what_serde_gives(text in texts(), which in 0..3usize) {
                let fields = [Fields::All, crate::birdeye::FRAME_FIELDS, SOME_FIELDS][which];
                if let Some(direct) = direct::read(&text, fields) {
                    let by_serde = from_str_fields_by_serde(&text, fields).map_err(|e| e.to_string());
                    prop_assert_eq!(Ok(direct), by_serde, "text: {}", text);
                }
            }
        }
    }
}
