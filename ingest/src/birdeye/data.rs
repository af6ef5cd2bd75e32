//! Trade and candle frames read straight into slots, without a tree.
//!
//! [`super::parse_frame`] tries [`parse_frame`] first. It reads the frame's `type` and the
//! members of its `data` that the parser uses into one slot per key, and interprets them with
//! the same functions as the tree path. On the frame of the `birdeye/parse_trade` benchmark,
//! checking the syntax alone (every member skipped) took 0.56 µs, and the whole parse through
//! the tree 1.19 to 1.33 µs.
//! The rest was the tree: an [`super::json::Object`] per object with its entries, the search of
//! each key among the listed members, and dropping it all. With the slots the parse takes
//! 0.99 µs.
//!
//! It returns a message only for a `TXS_DATA` or `PRICE_DATA` frame that parses. On anything
//! else it returns `None` and leaves the frame to the tree path, which then gives the message
//! or the error: other frame types, a `data` that is not an object, an invalid value, and every
//! text the direct reader gives up on. The slot of a key holds the value of its last member,
//! as [`super::json::Object::get`] returns the last entry, so both paths read the same values.

use super::json::{self, Fields, Json};
use super::{parse_price, parse_trades, FeedMessage, Members, LEG_FIELDS};

/// Parses a trade or candle frame, or returns `None` for the tree path.
pub(super) fn parse_frame(text: &str, is_watched: &impl Fn(&str) -> bool) -> Option<FeedMessage> {
    let mut frame_type = None;
    let mut data = None;
    json::read_with(text, |frame| {
        frame.members(|key, value| {
            match key {
                "type" => frame_type = Some(value.value(Fields::All)?),
                "data" => {
                    let mut slots = Slots::default();
                    value.members(|key, value| match Slots::index(key) {
                        Some(index) => {
                            slots.values[index] = Some(value.value(Slots::fields(index))?);
                            Some(())
                        }
                        None => value.skip(),
                    })?;
                    data = Some(slots);
                }
                _ => value.skip()?,
            }
            Some(())
        })
    })?;
    let (Some(Json::String(kind)), Some(data)) = (frame_type, data) else {
        return None;
    };
    match &*kind {
        "TXS_DATA" => parse_trades(&data, is_watched)
            .ok()
            .map(FeedMessage::Trades),
        "PRICE_DATA" => parse_price(&data).ok().map(FeedMessage::Price),
        _ => None,
    }
}

/// The keys of `data` that the parser reads, in the order of their slots. They are the
/// members of [`super::DATA_FIELDS`], which a test checks.
const KEYS: [&str; 19] = [
    // TXS_DATA
    "volumeUSD",
    "blockUnixTimeMs",
    "blockUnixTime",
    "txHash",
    "owner",
    "tokenAddress",
    "side",
    "tokenPrice",
    "from",
    "to",
    "pairAddress",
    // PRICE_DATA (and the pair's address in TXS_DATA)
    "address",
    "o",
    "h",
    "l",
    "c",
    "v",
    "unixTime",
    // ERROR
    "message",
];

/// One value per key of [`KEYS`], `None` when the frame has no member with that key.
#[derive(Default)]
struct Slots<'a> {
    values: [Option<Json<'a>>; KEYS.len()],
}

impl Slots<'_> {
    /// Returns the slot of `key`. A `match` compares the key with the few names of its length, where a
    /// search of [`KEYS`] would compare it with all of them.
    fn index(key: &str) -> Option<usize> {
        Some(match key {
            "volumeUSD" => 0,
            "blockUnixTimeMs" => 1,
            "blockUnixTime" => 2,
            "txHash" => 3,
            "owner" => 4,
            "tokenAddress" => 5,
            "side" => 6,
            "tokenPrice" => 7,
            "from" => 8,
            "to" => 9,
            "pairAddress" => 10,
            "address" => 11,
            "o" => 12,
            "h" => 13,
            "l" => 14,
            "c" => 15,
            "v" => 16,
            "unixTime" => 17,
            "message" => 18,
            _ => return None,
        })
    }

    /// Returns how to read the value of slot `index`: the legs of a trade keep their address and
    /// price, other values are read whole.
    fn fields(index: usize) -> Fields {
        match KEYS[index] {
            "from" | "to" => LEG_FIELDS,
            _ => Fields::All,
        }
    }
}

impl<'j> Members<'j> for Slots<'j> {
    fn get(&self, key: &str) -> Option<&Json<'j>> {
        self.values[Slots::index(key)?].as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::birdeye::DATA_FIELDS;

    #[test]
    fn slots_are_the_members_the_tree_reads() {
        let Fields::Only(members) = DATA_FIELDS else {
            panic!("the tree reads chosen members of data");
        };
        let listed: Vec<&str> = members.iter().map(|(key, _)| *key).collect();
        assert_eq!(listed, KEYS);
        for (position, (key, fields)) in members.iter().enumerate() {
            assert_eq!(Slots::index(key), Some(position), "{key}");
            assert_eq!(
                format!("{:?}", Slots::fields(position)),
                format!("{fields:?}"),
                "{key}"
            );
        }
    }
}
