//! A direct reader for the frames Birdeye sends, tried before `serde_json`.
//!
//! Reading trade frames through `serde_json` took about 29 % of ingest's CPU time in a profile
//! of `devkit loadgen --rate max`. This reader walks the bytes once, finds the end of a string
//! eight bytes at a time, and handles what Birdeye's frames hold: strings without escapes,
//! plain numbers, and nesting a few levels deep. On anything else it gives up and returns
//! `None`: a string with an escape, deep nesting, and every text that is not valid JSON.
//! [`super::from_str_fields`] then reads the text with `serde_json`, which gives its value or
//! its error. The `birdeye/parse_trade` benchmark went from 1.22 to 1.04 µs per frame.
//!
//! What the reader returns is what the `serde_json` path returns for the same text and
//! [`Fields`], entry for entry. Members that `Fields` leaves out are checked for syntax only,
//! as `IgnoredAny` does. Integers and short decimals are converted here, where the exact
//! result is known (see [`short_decimal`]). Other numbers are converted by `serde_json`
//! itself, token by token: without its `float_roundtrip` feature it parses floats with
//! best-effort precision, and `1003.7073170731707` comes out one unit in the last place away
//! from the standard library's result. The tests in `super::tests` keep the two paths equal,
//! after every one-character edit of Birdeye frames and on generated texts.

use std::borrow::Cow;

use serde_json::Number;

use super::{Fields, Json, Object};

/// Nesting deeper than this is left to `serde_json`, whose limit is 128.
const MAX_DEPTH: usize = 32;

/// Reads `text` as [`super::from_str_fields`] does, or returns `None` when `serde_json` must.
pub fn read(text: &str, fields: Fields) -> Option<Json<'_>> {
    read_with(text, |value| value.value(fields))
}

/// Reads `text` through `read`, which gets a cursor at the top-level value. Returns `None`
/// when the direct reader or `read` gives up, or when text follows the value. Callers use it
/// to read the members they need into their own types, without a [`Json`] tree.
pub fn read_with<'a, T>(
    text: &'a str,
    read: impl FnOnce(Cursor<'_, 'a>) -> Option<T>,
) -> Option<T> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    reader.skip_whitespace();
    let value = read(Cursor {
        reader: &mut reader,
        depth: 0,
    })?;
    reader.skip_whitespace();
    (reader.pos == reader.bytes.len()).then_some(value)
}

/// A value at the reader's position, inside `depth` objects and arrays. Each method reads the
/// whole value, so a cursor is used once.
pub struct Cursor<'r, 'a> {
    reader: &'r mut Reader<'a>,
    depth: usize,
}

impl<'a> Cursor<'_, 'a> {
    /// Reads the value as [`read`] would.
    pub fn value(self, fields: Fields) -> Option<Json<'a>> {
        self.reader.value(fields, self.depth)
    }

    /// Moves past the value, checking its syntax.
    pub fn skip(self) -> Option<()> {
        self.reader.skip_value(self.depth)
    }

    /// Moves past the value, checking its syntax, and returns its text.
    pub fn text(self) -> Option<&'a str> {
        let start = self.reader.pos;
        self.reader.skip_value(self.depth)?;
        Some(&self.reader.text[start..self.reader.pos])
    }

    /// Calls `member` with the key and value of each member of the object, in text order;
    /// `None` when the value is not an object.
    pub fn members(
        self,
        mut member: impl FnMut(&'a str, Cursor<'_, 'a>) -> Option<()>,
    ) -> Option<()> {
        if self.reader.peek()? != b'{' {
            return None;
        }
        let depth = self.depth + 1;
        self.reader
            .members(depth, |reader, key| member(key, Cursor { reader, depth }))
    }
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Reads the value at the reader's position, `depth` objects and arrays deep.
    fn value(&mut self, fields: Fields, depth: usize) -> Option<Json<'a>> {
        match self.peek()? {
            b'{' => self.object(fields, depth + 1).map(Json::Object),
            b'[' => self.array(depth + 1).map(Json::Array),
            b'"' => self.string().map(|s| Json::String(Cow::Borrowed(s))),
            b't' => self.literal("true").map(|()| Json::Bool(true)),
            b'f' => self.literal("false").map(|()| Json::Bool(false)),
            b'n' => self.literal("null").map(|()| Json::Null),
            _ => self.number().map(Json::Number),
        }
    }

    /// Moves past the value at the reader's position, checking only its syntax.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.members(depth + 1, |reader, _key| reader.skip_value(depth + 1)),
            b'[' => self.items(depth + 1, |reader| reader.skip_value(depth + 1)),
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number_token().map(drop),
        }
    }

    fn object(&mut self, fields: Fields, depth: usize) -> Option<Object<'a>> {
        let mut entries = Vec::with_capacity(match fields {
            Fields::All => 8,
            Fields::Only(members) => members.len(),
        });
        self.members(depth, |reader, key| {
            match fields.member(key) {
                Some(member) => {
                    let value = reader.value(member, depth)?;
                    entries.push((Cow::Borrowed(key), value));
                }
                None => reader.skip_value(depth)?,
            }
            Some(())
        })?;
        Some(Object { entries })
    }

    fn array(&mut self, depth: usize) -> Option<Vec<Json<'a>>> {
        let mut items = Vec::new();
        // Array items are read whole, as `serde_json` reads them through `Json`'s own impl.
        self.items(depth, |reader| {
            items.push(reader.value(Fields::All, depth)?);
            Some(())
        })?;
        Some(items)
    }

    /// Walks the members of the object at the reader's position, calling `member` with each
    /// key when the reader is at the member's value.
    fn members(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.elements(depth, b'}', |reader| {
            if reader.peek()? != b'"' {
                return None;
            }
            let key = reader.string()?;
            reader.skip_whitespace();
            reader.eat(b':')?;
            reader.skip_whitespace();
            member(reader, key)
        })
    }

    /// Walks the items of the array at the reader's position, calling `item` when the reader
    /// is at each one.
    fn items(&mut self, depth: usize, item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.elements(depth, b']', item)
    }

    /// Walks the comma-separated elements between the opening bracket at the reader's
    /// position and `close`, calling `element` at the start of each one.
    fn elements(
        &mut self,
        depth: usize,
        close: u8,
        mut element: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            element(self)?;
            self.skip_whitespace();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.skip_whitespace();
                }
                byte if byte == close => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads the string at the reader's position. Gives up on escapes and on the control
    /// characters that JSON forbids inside strings.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.pos + 1;
        let end = start + string_length(&self.bytes[start..])?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.pos = end + 1;
        // Both ends are at an ASCII quote, so they are character boundaries.
        Some(&self.text[start..end])
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word.as_bytes()).then(|| self.pos = end)
    }

    /// Reads the number at the reader's position as `serde_json` does.
    fn number(&mut self) -> Option<Number> {
        let (token, integer) = self.number_token()?;
        let converted = if integer {
            plain_integer(token)
        } else {
            short_decimal(token)
        };
        converted.or_else(|| serde_json::from_str(token).ok())
    }

    /// Moves past a number of JSON's grammar. Returns its text and whether it has neither a
    /// fraction nor an exponent.
    fn number_token(&mut self) -> Option<(&'a str, bool)> {
        let start = self.pos;
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.eat(b'.').is_some() {
            integer = false;
            self.digits_required()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits_required()?;
        }
        Some((&self.text[start..self.pos], integer))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn digits_required(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }
}

/// Converts an integer token as `serde_json` does when the digits fit in a `u64`: a positive
/// one to `u64`, a negative one to `i64` when it fits. `None` for the rest (overflow, `-0`),
/// which `serde_json` converts to a float.
fn plain_integer(token: &str) -> Option<Number> {
    let (negative, digits) = match token.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, token),
    };
    let magnitude = digits.bytes().try_fold(0u64, |value, digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })?;
    if !negative {
        return Some(magnitude.into());
    }
    let value = (magnitude as i64).wrapping_neg();
    (value < 0).then(|| value.into())
}

/// Converts a decimal token without exponent that has at most 15 digits (so they fit in the 53
/// bits of an `f64`'s significand) and at most 22 after the point. Such a number is its digits
/// divided by a power of ten that `f64` represents exactly, and one division rounds correctly,
/// so every correct reader gives this value, `serde_json` included. `None` for the rest.
fn short_decimal(token: &str) -> Option<Number> {
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, unsigned) = match token.strip_prefix('-') {
        Some(unsigned) => (true, unsigned),
        None => (false, token),
    };
    let (whole, fraction) = unsigned.split_once('.')?;
    // With an exponent, the text after the point is more than digits.
    if whole.len() + fraction.len() > 15 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = whole
        .bytes()
        .chain(fraction.bytes())
        .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
    let magnitude = digits as f64 / POW10[fraction.len()];
    Number::from_f64(if negative { -magnitude } else { magnitude })
}

/// Returns the index of the first quote, backslash or control character in `bytes`, eight bytes
/// at a time.
fn string_length(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut offset = 0;
    while let Some(chunk) = bytes[offset..].first_chunk::<8>() {
        let word = u64::from_le_bytes(*chunk);
        // The lowest flagged byte of each test is a true match, because a borrow can only flag
        // bytes above a true match. So the lowest bit of the union marks where the scan ends.
        let quotes = word ^ (ONES * u64::from(b'"'));
        let backslashes = word ^ (ONES * u64::from(b'\\'));
        let flags = ((quotes.wrapping_sub(ONES) & !quotes)
            | (backslashes.wrapping_sub(ONES) & !backslashes)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGHS;
        if flags != 0 {
            return Some(offset + flags.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    bytes[offset..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| offset + i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_tests::fuzz;
    use proptest::prelude::*;

    fn string_length_bytewise(bytes: &[u8]) -> Option<usize> {
        bytes
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    }

    proptest! {
        #![proptest_config(fuzz::short_config())]

        #[test]
        fn string_length_matches_bytewise_scan(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..=0xff, 0x80u8..=0xff],
                0..40,
            )
        ) {
            prop_assert_eq!(string_length(&bytes), string_length_bytewise(&bytes));
        }
    }
}
