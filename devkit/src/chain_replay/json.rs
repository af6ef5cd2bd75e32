//! Reading the recorded chain files without losing integer precision, and JSON-RPC quantities.
//!
//! ethereum-etl writes wei amounts as bare JSON numbers, and some exceed 64 bits, which a
//! JSON parser would turn into a float. [`parse_exact`] quotes every integer literal of 16
//! digits or more before parsing, so such values arrive as decimal strings and convert to hex
//! quantities exactly.

use serde_json::Value;

/// Parses one JSON document, with long integer literals read as decimal strings.
pub fn parse_exact(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str(&quote_long_integers(text))
}

/// Wraps integer literals of 16 digits or more (outside strings) in quotes.
pub fn quote_long_integers(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let byte = bytes[i];
        if in_string {
            let end = i + 1;
            out.push_str(&text[i..end]);
            if byte == b'\\' && end < bytes.len() {
                out.push_str(&text[end..end + 1]);
                i = end + 1;
                continue;
            }
            in_string = byte != b'"';
            i = end;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            out.push('"');
            i += 1;
            continue;
        }
        if byte.is_ascii_digit() && (i == 0 || !is_number_part(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !is_number_part(bytes[j]))
                .unwrap_or(bytes.len());
            let literal = &text[i..end];
            let integer = literal.bytes().all(|b| b.is_ascii_digit());
            if integer && literal.len() >= 16 {
                out.push('"');
                out.push_str(literal);
                out.push('"');
            } else {
                out.push_str(literal);
            }
            i = end;
            continue;
        }
        out.push(byte as char);
        i += 1;
    }
    out
}

fn is_number_part(byte: u8) -> bool {
    byte.is_ascii_digit() || matches!(byte, b'.' | b'e' | b'E' | b'+' | b'-')
}

/// Reads an unsigned integer written as a JSON number or a decimal string.
pub fn as_u128(value: &Value) -> Option<u128> {
    match value {
        Value::Number(n) => n.as_u64().map(u128::from),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Formats an integer as a JSON-RPC hex quantity.
pub fn quantity(number: u128) -> Value {
    Value::String(format!("0x{number:x}"))
}

/// Converts a recorded integer field to a hex quantity; `null` when it is absent.
pub fn quantity_of(value: Option<&Value>) -> Value {
    value.and_then(as_u128).map_or(Value::Null, quantity)
}

/// Reads a hex quantity, a block tag or a decimal number sent by a client.
pub fn parse_quantity(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => {
            let digits = text
                .strip_prefix("0x")
                .or_else(|| text.strip_prefix("0X"))?;
            u64::from_str_radix(digits, 16).ok()
        }
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_integers_keep_every_digit() {
        let value =
            parse_exact(r#"{"value": 150188698577042438264952193024, "nonce": 93, "gas": 1.5e3}"#)
                .unwrap();

        assert_eq!(value["value"], "150188698577042438264952193024");
        assert_eq!(value["nonce"], 93);
        assert_eq!(value["gas"], 1500.0);
    }

    #[test]
    fn digits_inside_strings_stay() {
        let text =
            r#"{"hash": "0x1234567890123456789", "note": "a \"quoted\" 12345678901234567890"}"#;

        assert_eq!(quote_long_integers(text), text);
    }

    #[test]
    fn wei_amounts_convert_to_hex() {
        let value = parse_exact(r#"{"value": 32000000000000000000}"#).unwrap();

        assert_eq!(quantity_of(value.get("value")), "0x1bc16d674ec800000");
        assert_eq!(quantity_of(value.get("missing")), Value::Null);
    }

    #[test]
    fn client_quantities_parse() {
        assert_eq!(parse_quantity(&Value::from("0x1060a39")), Some(17_173_049));
        assert_eq!(parse_quantity(&Value::from("latest")), None);
    }
}
