//! Decoding of ERC-20 `Transfer` and `Approval` logs and of 256-bit amounts.
//!
//! Both events have the same layout: topic0 is the event's hash, topic1 and topic2 are the
//! two addresses (left-padded to 32 bytes) and `data` is the amount as one 32-byte word.
//! ERC-721 `Transfer` has the same topic0 but a fourth topic (the token id) and no data, so it
//! is left undecoded and carried raw like every other event.

use monitor_core::messages::DecodedLog;

/// topic0 of `Transfer(address,address,uint256)`.
pub const TRANSFER_TOPIC: &str =
    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
/// topic0 of `Approval(address,address,uint256)`.
pub const APPROVAL_TOPIC: &str =
    "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925";

/// Decodes an ERC-20 `Transfer` or `Approval`; `None` for any other log.
pub fn decode_erc20(topics: &[String], data: &str) -> Option<DecodedLog> {
    let event = match topics.first().map(String::as_str) {
        Some(TRANSFER_TOPIC) => "Transfer",
        Some(APPROVAL_TOPIC) => "Approval",
        _ => return None,
    };
    if topics.len() != 3 {
        return None;
    }
    let amount = data.strip_prefix("0x")?;
    if amount.len() != 64 {
        return None;
    }
    Some(DecodedLog {
        event: event.to_owned(),
        from: topic_address(&topics[1])?,
        to: topic_address(&topics[2])?,
        amount: hex_to_decimal(amount)?,
    })
}

/// Returns the address held in the low 20 bytes of a 32-byte topic.
fn topic_address(topic: &str) -> Option<String> {
    let digits = topic.strip_prefix("0x")?;
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("0x{}", digits[24..].to_ascii_lowercase()))
}

/// Converts hex digits (up to 256 bits or more) to a decimal string.
pub fn hex_to_decimal(digits: &str) -> Option<String> {
    // Base 10^9 limbs, least significant first.
    let mut limbs: Vec<u32> = vec![0];
    for digit in digits.chars() {
        let mut carry = u64::from(digit.to_digit(16)?);
        for limb in limbs.iter_mut() {
            let value = u64::from(*limb) * 16 + carry;
            *limb = (value % 1_000_000_000) as u32;
            carry = value / 1_000_000_000;
        }
        while carry > 0 {
            limbs.push((carry % 1_000_000_000) as u32);
            carry /= 1_000_000_000;
        }
    }
    let mut text = String::new();
    for (i, limb) in limbs.iter().rev().enumerate() {
        if i == 0 {
            text.push_str(&limb.to_string());
        } else {
            text.push_str(&format!("{limb:09}"));
        }
    }
    Some(text)
}

/// Converts wei to the native unit (ETH, BNB): 10^18 wei each.
pub fn wei_to_native(wei: u128) -> f64 {
    wei as f64 / 1e18
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(address: &str) -> String {
        format!(
            "0x000000000000000000000000{}",
            address.trim_start_matches("0x")
        )
    }

    #[test]
    fn transfer_decodes_addresses_and_amount() {
        let topics = vec![
            TRANSFER_TOPIC.to_owned(),
            topic("6b75d8af000000e20b7a7ddf000ba900b4009a80"),
            topic("7054b0f980a7eb5b3a6b3446f3c947d80162775c"),
        ];
        let data = "0x00000000000000000000000000000000000000000000000061ec933f00000000";

        let decoded = decode_erc20(&topics, data).unwrap();

        assert_eq!(decoded.event, "Transfer");
        assert_eq!(decoded.from, "0x6b75d8af000000e20b7a7ddf000ba900b4009a80");
        assert_eq!(decoded.to, "0x7054b0f980a7eb5b3a6b3446f3c947d80162775c");
        assert_eq!(decoded.amount, "7056176614974947328");
    }

    #[test]
    fn erc721_transfer_stays_raw() {
        let topics = vec![
            TRANSFER_TOPIC.to_owned(),
            topic("01"),
            topic("02"),
            topic("03"),
        ];

        assert_eq!(decode_erc20(&topics, "0x"), None);
    }

    #[test]
    fn amounts_beyond_128_bits_convert_exactly() {
        assert_eq!(hex_to_decimal("0").unwrap(), "0");
        assert_eq!(hex_to_decimal("ff").unwrap(), "255");
        assert_eq!(
            hex_to_decimal("0000000000000000000000000000000000000001e5492e000000000000000000")
                .unwrap(),
            "150188698577042438264952193024"
        );
        assert_eq!(
            hex_to_decimal(&"f".repeat(64)).unwrap(),
            "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        );
        assert_eq!(hex_to_decimal("xyz"), None);
    }

    #[test]
    fn wei_convert_to_native_units() {
        assert_eq!(wei_to_native(32_000_000_000_000_000_000), 32.0);
        assert_eq!(wei_to_native(7_400_000_000_000_000_000), 7.4);
    }
}
