//! Trade and candle frames read straight into slots, without a tree.
//!
//! [`super::parse_frame`] tries [`parse_frame`] first. It reads the frame's `type` and the
//! members of its `data` that the parser uses into one slot per key, and interprets them with
//! the same functions as the tree path. On the frame of the `birdeye/parse_trade` benchmark,
//! checking the syntax alone (every member skipped) took 0.56 µs, and the whole parse through
//! the tree 1.19 to 1.33 µs. The difference was the tree: an [`super::json::Object`] per
//! object with its entries, the search of each key among the listed members, and dropping it
//! all. With the slots the parse took 0.92 to 0.99 µs.
//!
//! The `from` and `to` legs of a trade are kept as text, checked for syntax only, and read
//! into small trees only when the parser uses them: when the frame has no `tokenAddress` or no
//! numeric `tokenPrice`. Birdeye's token subscription sends both, so most frames never read
//! their legs. The benchmark took 0.92 µs per frame before and 0.76 µs after (Intel Xeon).
//!
//! It returns a message only for a `TXS_DATA` or `PRICE_DATA` frame that parses. Anything else
//! goes to the tree path, which then gives the message or the error: other frame types, a
//! `data` that is not an object, an invalid value, and every text the direct reader gives up
//! on. When a key repeats, its slot keeps the last value, as [`super::json::Object::get`]
//! returns the last entry, so both paths read the same values.

use super::json::{self, Fields, Json};
use super::{parse_price, parse_trades, FeedMessage, Members, DATA_FIELDS, LEG_FIELDS};

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
                        Some(index @ (FROM | TO)) => {
                            slots.leg_texts[index - FROM] = Some(value.text()?);
                            Some(())
                        }
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
    let (Some(Json::String(kind)), Some(mut data)) = (frame_type, data) else {
        return None;
    };
    match &*kind {
        "TXS_DATA" => {
            if data.trade_reads_legs() {
                data.read_legs()?;
            }
            parse_trades(&data, is_watched)
                .ok()
                .map(FeedMessage::Trades)
        }
        "PRICE_DATA" => parse_price(&data).ok().map(FeedMessage::Price),
        _ => None,
    }
}

/// The members of `data` that the parser reads, in the order of their slots.
const MEMBERS: &[(&str, Fields)] = match DATA_FIELDS {
    Fields::Only(members) => members,
    Fields::All => &[],
};

/// Slots of the `from` and `to` legs in [`MEMBERS`].
const FROM: usize = 8;
const TO: usize = 9;
/// Slots that [`Slots::trade_reads_legs`] looks at.
const TOKEN_ADDRESS: usize = 5;
const TOKEN_PRICE: usize = 7;

/// One value per member of [`MEMBERS`], `None` when the frame has no member with that key.
#[derive(Default)]
struct Slots<'a> {
    values: [Option<Json<'a>>; MEMBERS.len()],
    /// Texts of the `from` and `to` legs, which go into their slots only when read.
    leg_texts: [Option<&'a str>; 2],
}

impl Slots<'_> {
    /// Returns the slot of `key`, its position in [`MEMBERS`]. A `match` on the key takes the
    /// place of a search of [`MEMBERS`], which compared each key of a frame with all 19 names.
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

    /// Returns how to read the value of slot `index`.
    fn fields(index: usize) -> Fields {
        MEMBERS[index].1
    }

    /// Returns whether [`parse_trades`] may read the legs. It reads neither when `tokenAddress`
    /// is a string that is not blank and `tokenPrice` a number: that simple shape takes its
    /// price from `tokenPrice`, or fails on it.
    fn trade_reads_legs(&self) -> bool {
        let named_token = matches!(
            &self.values[TOKEN_ADDRESS],
            Some(Json::String(address)) if !address.trim().is_empty()
        );
        let priced = matches!(self.values[TOKEN_PRICE], Some(Json::Number(_)));
        !(named_token && priced)
    }

    /// Reads the legs' texts into their slots, or returns `None` when the direct reader gives
    /// up on one.
    fn read_legs(&mut self) -> Option<()> {
        for (offset, text) in self.leg_texts.iter().enumerate() {
            if let Some(text) = text {
                self.values[FROM + offset] =
                    Some(json::read_with(text, |leg| leg.value(LEG_FIELDS))?);
            }
        }
        Some(())
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

    #[test]
    fn named_slots_hold_their_members() {
        for (index, key) in [
            (FROM, "from"),
            (TO, "to"),
            (TOKEN_ADDRESS, "tokenAddress"),
            (TOKEN_PRICE, "tokenPrice"),
        ] {
            assert_eq!(MEMBERS[index].0, key);
        }
    }

    #[test]
    fn slots_are_the_members_the_tree_reads() {
        assert!(!MEMBERS.is_empty(), "the tree reads chosen members of data");
        for (position, (key, _)) in MEMBERS.iter().enumerate() {
            assert_eq!(Slots::index(key), Some(position), "{key}");
        }
    }
}
