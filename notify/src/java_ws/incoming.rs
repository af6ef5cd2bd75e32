//! Messages that the Java WebSocket sends to notify, classified.
//!
//! Consumes the text of one frame and produces an [`Incoming`]: `pong` answers a ping,
//! `connected` greets a new session, and anything else is ignored by the socket task. The
//! parse never fails: text that is not a JSON object with a string `type` is classified as
//! such, with a one-line reason for the debug log. Frames are at most
//! [`MAX_INCOMING_BYTES`] long, which the WebSocket reader enforces before this runs.

use serde_json::Value;

/// Largest message or frame accepted from the Java WebSocket. The server sends only `pong` and
/// `connected`, a few hundred bytes; a larger message ends the session, which reconnects.
pub const MAX_INCOMING_BYTES: usize = 1 << 20;

/// Longest `sessionId` or greeting kept from a `connected` message.
const MAX_FIELD_CHARS: usize = 200;

/// A classified message from the Java side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Pong,
    /// The greeting of a new session, fields cut to 200 characters.
    Connected {
        session_id: String,
        greeting: String,
    },
    /// A JSON message of another type, or without a string `type` (then empty).
    Other {
        message_type: String,
    },
    /// Text that is not JSON; carries the parser's one-line error.
    NotJson {
        error: String,
    },
}

/// Classifies the text of one frame.
pub fn parse_incoming(text: &str) -> Incoming {
    let message: Value = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(error) => {
            return Incoming::NotJson {
                error: error.to_string(),
            }
        }
    };
    let field = |name: &str| {
        message
            .get(name)
            .and_then(Value::as_str)
            .map(|text| text.chars().take(MAX_FIELD_CHARS).collect::<String>())
            .unwrap_or_default()
    };
    match message.get("type").and_then(Value::as_str) {
        Some("pong") => Incoming::Pong,
        Some("connected") => Incoming::Connected {
            session_id: field("sessionId"),
            greeting: field("message"),
        },
        _ => Incoming::Other {
            message_type: field("type"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_and_connected_are_recognized() {
        assert_eq!(parse_incoming(r#"{"type":"pong"}"#), Incoming::Pong);
        assert_eq!(
            parse_incoming(r#"{"type":"connected","sessionId":"s1","message":"hi"}"#),
            Incoming::Connected {
                session_id: "s1".into(),
                greeting: "hi".into()
            }
        );
    }

    #[test]
    fn other_and_invalid_messages_are_classified() {
        assert_eq!(
            parse_incoming(r#"{"type":7}"#),
            Incoming::Other {
                message_type: String::new()
            }
        );
        assert!(matches!(
            parse_incoming("{\"type\":"),
            Incoming::NotJson { .. }
        ));
    }
}
