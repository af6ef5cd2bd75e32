//! Fuzzing of [`monitor_notify::java_ws::incoming::parse_incoming`], which classifies every
//! message the Java WebSocket sends.
//!
//! Inputs are messages built from the protocol's types and keys, with hostile values,
//! truncations, deep nesting and random text. Classification must never panic, and the fields
//! it keeps are cut to 200 characters whatever the message holds.

use monitor_notify::java_ws::incoming::{parse_incoming, Incoming};
use monitor_tests::fuzz;
use proptest::prelude::*;

const TYPES: &[&str] = &["pong", "connected", "ping", "alert", "error", ""];
const KEYS: &[&str] = &[
    "type",
    "sessionId",
    "message",
    "timestamp",
    "data",
    "alertId",
];
const WORDS: &[&str] = &["pong", "connected", "欢迎", "session-1"];

fn messages() -> impl Strategy<Value = String> {
    prop_oneof![
        fuzz::texts(fuzz::typed_frame("type", TYPES, KEYS, WORDS)),
        (proptest::sample::select(TYPES), ".{0,400}").prop_map(|(message_type, text)| {
            serde_json::json!({"type": message_type, "sessionId": text, "message": text})
                .to_string()
        }),
    ]
}

fn check(text: &str) -> Result<(), TestCaseError> {
    match parse_incoming(text) {
        Incoming::Connected {
            session_id,
            greeting,
        } => {
            prop_assert!(session_id.chars().count() <= 200);
            prop_assert!(greeting.chars().count() <= 200);
        }
        Incoming::Other { message_type } => prop_assert!(message_type.chars().count() <= 200),
        Incoming::NotJson { error } => prop_assert!(!error.contains('\n'), "{error}"),
        Incoming::Pong => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn parse_incoming_never_panics(text in messages()) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn parse_incoming_never_panics_long(text in messages()) {
        check(&text)?;
    }
}
