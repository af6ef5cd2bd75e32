//! Proptest inputs for fuzzing the parsers of outside input, and the case counts of the short
//! and the long runs.
//!
//! Every parser has two property tests: one with [`SHORT_CASES`] that always runs, and an
//! `#[ignore]`d one with [`long_config`] (100,000 cases, or `PROPTEST_CASES`) that
//! `scripts/fuzz` runs. The inputs are JSON texts built from the protocol's own keys, so that
//! most cases reach deep into a parser instead of failing on the first byte: valid JSON, JSON
//! with hostile tokens in place of values (`NaN`, `1e999`, numbers past 2^64, quotes with
//! escapes), truncated and spliced texts, deep nesting, and plain random text.
//!
//! This module depends only on proptest, so `monitor-core`'s tests include it by path
//! without depending on this crate.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Cases of the property tests that run with every `cargo test`.
pub const SHORT_CASES: u32 = 2_000;
/// Cases of the `#[ignore]`d long runs unless `PROPTEST_CASES` says otherwise.
pub const LONG_CASES: u32 = 100_000;

/// The configuration of the short runs. Failures are printed with the shrunk input and not
/// written to regression files, so that a run leaves the source tree unchanged.
pub fn short_config() -> ProptestConfig {
    ProptestConfig {
        cases: SHORT_CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The configuration of the long runs: `PROPTEST_CASES` cases, by default [`LONG_CASES`].
pub fn long_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(LONG_CASES);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Value tokens written verbatim: valid JSON numbers at the edges of `f64` and `u64`, and
/// tokens that are not JSON at all.
const HOSTILE_TOKENS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "0.5",
    "-1e-9",
    "1e308",
    "1e309",
    "-1e999",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "true",
    "false",
    "\"\"",
    "\"NaN\"",
    "\"1e999\"",
    "\"100\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"'; DROP TABLE monitor_task_v2; --\"",
    "\"0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2\"",
    "\"So11111111111111111111111111111111111111112\"",
    "1675329600",
    "1675329600000",
    "99999999999999",
    "-1675329600",
    "{}",
    "[]",
];

/// A JSON-like tree, rendered by [`render`]; `Token` leaves may make the text invalid JSON.
#[derive(Debug, Clone)]
pub enum Node {
    Token(String),
    Text(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// Renders a tree as JSON text (invalid where a leaf token is not JSON).
pub fn render(node: &Node) -> String {
    let mut out = String::new();
    render_into(node, &mut out);
    out
}

fn render_into(node: &Node, out: &mut String) {
    match node {
        Node::Token(token) => out.push_str(token),
        Node::Text(text) => out.push_str(&quote(text)),
        Node::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_into(item, out);
            }
            out.push(']');
        }
        Node::Object(fields) => {
            out.push('{');
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&quote(key));
                out.push(':');
                render_into(value, out);
            }
            out.push('}');
        }
    }
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Leaves: hostile tokens, numbers, words of the protocol and random text.
fn leaf(words: &'static [&'static str]) -> impl Strategy<Value = Node> {
    prop_oneof![
        3 => proptest::sample::select(HOSTILE_TOKENS).prop_map(|t| Node::Token(t.to_owned())),
        2 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| Node::Token(format!("{f:?}"))),
        2 => any::<i64>().prop_map(|i| Node::Token(i.to_string())),
        3 => proptest::sample::select(words).prop_map(|w| Node::Text(w.to_owned())),
        1 => ".{0,40}".prop_map(Node::Text),
    ]
}

/// Trees of depth up to 5 whose object keys are mostly `keys`, and whose string values are
/// mostly `words`.
pub fn tree(keys: &'static [&'static str], words: &'static [&'static str]) -> BoxedStrategy<Node> {
    let key = prop_oneof![
        8 => proptest::sample::select(keys).prop_map(str::to_owned),
        1 => "[a-zA-Z_]{0,12}",
    ];
    leaf(words)
        .prop_recursive(5, 64, 10, move |inner| {
            prop_oneof![
                1 => proptest::collection::vec(inner.clone(), 0..6).prop_map(Node::Array),
                4 => proptest::collection::vec((key.clone(), inner), 0..10).prop_map(Node::Object),
            ]
        })
        .boxed()
}

/// An object `{"<type_key>": <one of types>, "data": {...}}`, the frame shape of the feeds.
pub fn typed_frame(
    type_key: &'static str,
    types: &'static [&'static str],
    keys: &'static [&'static str],
    words: &'static [&'static str],
) -> BoxedStrategy<Node> {
    let data = proptest::collection::vec(
        (
            proptest::sample::select(keys).prop_map(str::to_owned),
            tree(keys, words),
        ),
        0..14,
    )
    .prop_map(Node::Object);
    (proptest::sample::select(types), data, tree(keys, words))
        .prop_map(move |(frame_type, data, extra)| {
            Node::Object(vec![
                (type_key.to_owned(), Node::Text(frame_type.to_owned())),
                ("data".to_owned(), data),
                ("extra".to_owned(), extra),
            ])
        })
        .boxed()
}

const INSERTED_CHARS: &[char] = &[' ', '"', '{', '}', '[', ']', ',', ':', '\\', '\u{0}', 'é'];

/// Changes a text: cut it short, insert a character, or remove a range (at char boundaries).
pub fn mutate(text: String) -> impl Strategy<Value = String> {
    let len = text.chars().count();
    let cut = 0..=len;
    (
        cut.clone(),
        cut,
        proptest::sample::select(INSERTED_CHARS),
        0..3u8,
    )
        .prop_map(move |(a, b, c, how)| {
            let chars: Vec<char> = text.chars().collect();
            let (lo, hi) = (a.min(b), a.max(b));
            match how {
                0 => chars[..lo].iter().collect(),
                1 => {
                    let mut out: String = chars[..lo].iter().collect();
                    out.push(c);
                    out.extend(&chars[lo..]);
                    out
                }
                _ => chars[..lo].iter().chain(&chars[hi..]).collect(),
            }
        })
}

/// Text nested `depth` times in `[` or `{"a":`, closed or not.
pub fn deep_nesting() -> impl Strategy<Value = String> {
    (0usize..5_000, any::<bool>(), any::<bool>()).prop_map(|(depth, arrays, closed)| {
        let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
        let mut text = open.repeat(depth);
        text.push('1');
        if closed {
            text.push_str(&close.repeat(depth));
        }
        text
    })
}

/// Every kind of text input: rendered trees (`strategy`), their mutations, deep nesting,
/// and random text.
pub fn texts(strategy: BoxedStrategy<Node>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => strategy.clone().prop_map(|node| render(&node)),
        3 => strategy.prop_map(|node| render(&node)).prop_flat_map(mutate),
        1 => deep_nesting(),
        1 => ".{0,200}",
        1 => proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
    ]
}

/// Byte inputs for binary decoders: random bytes, and `seeds` with bytes flipped, cut short or
/// inserted.
pub fn bytes_from(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::sample::select(seeds),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..6),
    )
        .prop_map(|(mut bytes, edits)| {
            for (position, byte, how) in edits {
                let at = if bytes.is_empty() {
                    0
                } else {
                    position % bytes.len()
                };
                match how {
                    0 if !bytes.is_empty() => bytes[at] = byte,
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, byte),
                }
            }
            bytes
        });
    prop_oneof![
        3 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}
