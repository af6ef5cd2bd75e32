//! Fuzzing of [`monitor_allocator::redis_watch::parse_notice`], which reads the config change
//! notices that the Java side publishes on Redis.
//!
//! Inputs are notices built from their keys with hostile values, truncations, deep nesting
//! and random text. Parsing must never panic, and a rejected notice quotes at most 200
//! characters of its payload, so a huge message cannot flood the log.

use monitor_allocator::redis_watch::parse_notice;
use monitor_tests::fuzz;
use proptest::prelude::*;

const KEYS: &[&str] = &["configId", "config_id", "version", "taskId", "type"];
const WORDS: &[&str] = &["7", "config", ""];

fn notices() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => fuzz::texts(fuzz::tree(KEYS, WORDS)),
        1 => (any::<u64>(), any::<Option<u64>>()).prop_map(|(id, version)| {
            serde_json::json!({"configId": id, "version": version}).to_string()
        }),
        1 => "\\{\"configId\": *[0-9]{0,40}(\\.[0-9]*)?(e[0-9]{1,4})?\\}",
    ]
}

fn check(text: &str) -> Result<(), TestCaseError> {
    if let Err(error) = parse_notice(text) {
        prop_assert!(error.payload.chars().count() <= 200);
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz::short_config())]

    #[test]
    fn parse_notice_never_panics(text in notices()) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(fuzz::long_config())]

    #[test]
    #[ignore = "long fuzzing run: scripts/fuzz"]
    fn parse_notice_never_panics_long(text in notices()) {
        check(&text)?;
    }
}
