//! A direct MessagePack reader for event frames, the one message whose decoding cost matters:
//! evaluate reads every frame that ingest publishes. rmp-serde spends most of its time in its
//! generic value path and in UTF-8 checks of field names. This reader compares field names as
//! bytes and reads each value straight into its field.
//!
//! It reads what [`super::encode`] writes: structs as maps with string keys, newtype variants
//! as one-entry maps, unit variants as strings, `None` as nil or as a missing key. Unknown
//! keys are skipped, as serde skips them. Any input it is not sure about (positional arrays,
//! integer keys, a duplicate field, bytes after the frame, anything malformed) gives `None`,
//! and [`super::decode`] then hands the bytes to serde, which reads them or reports the
//! error. So the reader changes the speed of decoding, never its result; the tests in
//! `core/tests/fuzz_codec.rs` compare it with serde on random and damaged frames.
//!
//! Block task events (blocks, transactions, logs, program logs) are rare next to trades, and
//! they hold nested strings and lists. Their bodies go to serde as a sub-slice.

use serde::de::DeserializeOwned;

use crate::messages::{
    Chain, Event, EventFrame, EventKind, Holders, Price, Side, TargetRef, TokenSnapshot, Trade,
    WindowStats,
};

/// Nesting depth up to which [`Reader::skip`] follows arrays and maps in an unknown field.
/// Deeper values go to serde, whose own limit then applies.
const MAX_SKIP_DEPTH: usize = 32;

/// Reads an event frame, or `None` when serde must decide.
pub(super) fn read(bytes: &[u8]) -> Option<EventFrame> {
    let mut reader = Reader { bytes, pos: 0 };
    let frame = reader.frame()?;
    (reader.pos == bytes.len()).then_some(frame)
}

/// Stores the value of a field, or gives `None` when the field was already set.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn be_u16(&mut self) -> Option<usize> {
        Some(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn be_u32(&mut self) -> Option<usize> {
        usize::try_from(u32::from_be_bytes(self.array()?)).ok()
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x80..=0x8f => Some(usize::from(marker & 0x0f)),
            0xde => self.be_u16(),
            0xdf => self.be_u32(),
            _ => None,
        }
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ 0x90..=0x9f => Some(usize::from(marker & 0x0f)),
            0xdc => self.be_u16(),
            0xdd => self.be_u32(),
            _ => None,
        }
    }

    /// Reads the bytes of a string without a UTF-8 check, for field and variant names.
    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            marker @ 0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => usize::from(self.byte()?),
            0xda => self.be_u16()?,
            0xdb => self.be_u32()?,
            _ => return None,
        };
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.str_bytes()?)
            .ok()
            .map(str::to_owned)
    }

    /// Consumes a nil and returns whether there was one.
    fn nil(&mut self) -> bool {
        let nil = self.peek() == Some(0xc0);
        if nil {
            self.pos += 1;
        }
        nil
    }

    /// Reads nil as `None`, anything else with `read`.
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.nil() {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// Reads any integer, into a type wide enough for every MessagePack integer.
    fn int(&mut self) -> Option<i128> {
        Some(match self.byte()? {
            marker @ 0x00..=0x7f => i128::from(marker),
            marker @ 0xe0..=0xff => i128::from(marker as i8),
            0xcc => i128::from(self.byte()?),
            0xcd => i128::from(u16::from_be_bytes(self.array()?)),
            0xce => i128::from(u32::from_be_bytes(self.array()?)),
            0xcf => i128::from(u64::from_be_bytes(self.array()?)),
            0xd0 => i128::from(i8::from_be_bytes(self.array()?)),
            0xd1 => i128::from(i16::from_be_bytes(self.array()?)),
            0xd2 => i128::from(i32::from_be_bytes(self.array()?)),
            0xd3 => i128::from(i64::from_be_bytes(self.array()?)),
            _ => return None,
        })
    }

    fn u64(&mut self) -> Option<u64> {
        self.int()?.try_into().ok()
    }

    fn u32(&mut self) -> Option<u32> {
        self.int()?.try_into().ok()
    }

    fn u16(&mut self) -> Option<u16> {
        self.int()?.try_into().ok()
    }

    fn i64(&mut self) -> Option<i64> {
        self.int()?.try_into().ok()
    }

    /// Reads a float, or an integer converted as serde converts one into an `f64` field.
    fn f64(&mut self) -> Option<f64> {
        match self.peek()? {
            0xca => {
                self.pos += 1;
                Some(f64::from(f32::from_be_bytes(self.array()?)))
            }
            0xcb => {
                self.pos += 1;
                Some(f64::from_be_bytes(self.array()?))
            }
            _ => Some(self.int()? as f64),
        }
    }

    /// Steps over one value: nil, a boolean, a number, a string, bytes, an array or a map.
    /// Extension types give `None`, so serde decides what they mean.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_SKIP_DEPTH {
            return None;
        }
        let marker = self.byte()?;
        let (len, items) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(marker & 0x0f)),
            0x90..=0x9f => (0, usize::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (usize::from(self.byte()?), 0),
            0xc5 | 0xda => (self.be_u16()?, 0),
            0xc6 | 0xdb => (self.be_u32()?, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xdc => (0, self.be_u16()?),
            0xdd => (0, self.be_u32()?),
            0xde => (0, 2 * self.be_u16()?),
            0xdf => (0, self.be_u32()?.checked_mul(2)?),
            _ => return None,
        };
        self.take(len)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Some(())
    }

    /// Reads an array, each item with `read`.
    fn list<T>(&mut self, read: impl Fn(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let len = self.array_len()?;
        // Every item takes at least one byte, so a forged length cannot reserve more.
        let mut items = Vec::with_capacity(len.min(self.bytes.len() - self.pos));
        for _ in 0..len {
            items.push(read(self)?);
        }
        Some(items)
    }

    /// Hands one value to serde, for the event kinds this reader leaves to it.
    fn serde<T: DeserializeOwned>(&mut self) -> Option<T> {
        let start = self.pos;
        self.skip(0)?;
        rmp_serde::from_slice(&self.bytes[start..self.pos]).ok()
    }

    fn frame(&mut self) -> Option<EventFrame> {
        let (mut v, mut task_id, mut batch_id, mut epoch) = (None, None, None, None);
        let (mut chain, mut producer, mut seq, mut events) = (None, None, None, None);
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"v" => set(&mut v, self.u16()?)?,
                b"task_id" => set(&mut task_id, self.u64()?)?,
                b"batch_id" => set(&mut batch_id, self.option(Self::u64)?)?,
                b"epoch" => set(&mut epoch, self.u32()?)?,
                b"chain" => set(&mut chain, self.chain()?)?,
                b"producer" => set(&mut producer, self.string()?)?,
                b"seq" => set(&mut seq, self.u64()?)?,
                b"events" => set(&mut events, self.list(Self::event)?)?,
                _ => self.skip(0)?,
            }
        }
        Some(EventFrame {
            v: v?,
            task_id: task_id?,
            batch_id: batch_id.flatten(),
            epoch: epoch?,
            chain: chain?,
            producer: producer?,
            seq: seq?,
            events: events?,
        })
    }

    fn chain(&mut self) -> Option<Chain> {
        match self.str_bytes()? {
            b"sol" => Some(Chain::Sol),
            b"eth" => Some(Chain::Eth),
            b"bsc" => Some(Chain::Bsc),
            _ => None,
        }
    }

    fn event(&mut self) -> Option<Event> {
        let (mut source_time_ms, mut ingest_time_ms, mut target) = (None, None, None);
        let (mut kind, mut snapshot) = (None, None);
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"source_time_ms" => set(&mut source_time_ms, self.i64()?)?,
                b"ingest_time_ms" => set(&mut ingest_time_ms, self.i64()?)?,
                b"target" => set(&mut target, self.option(Self::target)?)?,
                b"kind" => set(&mut kind, self.kind()?)?,
                b"snapshot" => set(&mut snapshot, self.option(Self::snapshot)?)?,
                _ => self.skip(0)?,
            }
        }
        Some(Event {
            source_time_ms: source_time_ms?,
            ingest_time_ms: ingest_time_ms?,
            target: target.flatten(),
            kind: kind?,
            snapshot: snapshot.flatten(),
        })
    }

    fn target(&mut self) -> Option<TargetRef> {
        let (mut target_id, mut address) = (None, None);
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"target_id" => set(&mut target_id, self.u64()?)?,
                b"address" => set(&mut address, self.string()?)?,
                _ => self.skip(0)?,
            }
        }
        Some(TargetRef {
            target_id: target_id?,
            address: address?,
        })
    }

    fn kind(&mut self) -> Option<EventKind> {
        if self.map_len()? != 1 {
            return None;
        }
        Some(match self.str_bytes()? {
            b"Trade" => EventKind::Trade(self.trade()?),
            b"Price" => EventKind::Price(self.price()?),
            b"Holders" => EventKind::Holders(self.holders()?),
            b"Block" => EventKind::Block(self.serde()?),
            b"Transaction" => EventKind::Transaction(self.serde()?),
            b"Log" => EventKind::Log(self.serde()?),
            b"ProgramLog" => EventKind::ProgramLog(self.serde()?),
            _ => return None,
        })
    }

    fn trade(&mut self) -> Option<Trade> {
        let (mut side, mut volume_usd, mut price_usd) = (None, None, None);
        let (mut tx_hash, mut owner) = (None, None);
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"side" => set(&mut side, self.side()?)?,
                b"volume_usd" => set(&mut volume_usd, self.f64()?)?,
                b"price_usd" => set(&mut price_usd, self.option(Self::f64)?)?,
                b"tx_hash" => set(&mut tx_hash, self.option(Self::string)?)?,
                b"owner" => set(&mut owner, self.option(Self::string)?)?,
                _ => self.skip(0)?,
            }
        }
        Some(Trade {
            side: side?,
            volume_usd: volume_usd?,
            price_usd: price_usd.flatten(),
            tx_hash: tx_hash.flatten(),
            owner: owner.flatten(),
        })
    }

    fn side(&mut self) -> Option<Side> {
        match self.str_bytes()? {
            b"buy" => Some(Side::Buy),
            b"sell" => Some(Side::Sell),
            _ => None,
        }
    }

    fn price(&mut self) -> Option<Price> {
        let (mut open, mut high, mut low, mut close) = (None, None, None, None);
        let mut volume_usd = None;
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"open" => set(&mut open, self.f64()?)?,
                b"high" => set(&mut high, self.f64()?)?,
                b"low" => set(&mut low, self.f64()?)?,
                b"close" => set(&mut close, self.f64()?)?,
                b"volume_usd" => set(&mut volume_usd, self.option(Self::f64)?)?,
                _ => self.skip(0)?,
            }
        }
        Some(Price {
            open: open?,
            high: high?,
            low: low?,
            close: close?,
            volume_usd: volume_usd.flatten(),
        })
    }

    fn holders(&mut self) -> Option<Holders> {
        let (mut holders, mut top_share_pct, mut top_n) = (None, None, None);
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"holders" => set(&mut holders, self.option(Self::u64)?)?,
                b"top_share_pct" => set(&mut top_share_pct, self.option(Self::f64)?)?,
                b"top_n" => set(&mut top_n, self.option(Self::u32)?)?,
                _ => self.skip(0)?,
            }
        }
        Some(Holders {
            holders: holders.flatten(),
            top_share_pct: top_share_pct.flatten(),
            top_n: top_n.flatten(),
        })
    }

    fn snapshot(&mut self) -> Option<TokenSnapshot> {
        let (mut price, mut market_cap, mut liquidity) = (None, None, None);
        let (mut holders, mut top_share_pct, mut windows) = (None, None, None);
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"price" => set(&mut price, self.option(Self::f64)?)?,
                b"market_cap" => set(&mut market_cap, self.option(Self::f64)?)?,
                b"liquidity" => set(&mut liquidity, self.option(Self::f64)?)?,
                b"holders" => set(&mut holders, self.option(Self::u64)?)?,
                b"top_share_pct" => set(&mut top_share_pct, self.option(Self::f64)?)?,
                b"windows" => set(&mut windows, self.list(Self::window)?)?,
                _ => self.skip(0)?,
            }
        }
        Some(TokenSnapshot {
            price: price.flatten(),
            market_cap: market_cap.flatten(),
            liquidity: liquidity.flatten(),
            holders: holders.flatten(),
            top_share_pct: top_share_pct.flatten(),
            windows: windows.unwrap_or_default(),
        })
    }

    fn window(&mut self) -> Option<WindowStats> {
        let (mut window_sec, mut start_time_ms, mut start_price) = (None, None, None);
        let (mut high, mut low, mut volume_usd, mut buy_usd) = (None, None, None, None);
        let (mut sell_usd, mut trades, mut start_holders) = (None, None, None);
        for _ in 0..self.map_len()? {
            match self.str_bytes()? {
                b"window_sec" => set(&mut window_sec, self.u32()?)?,
                b"start_time_ms" => set(&mut start_time_ms, self.option(Self::i64)?)?,
                b"start_price" => set(&mut start_price, self.option(Self::f64)?)?,
                b"high" => set(&mut high, self.option(Self::f64)?)?,
                b"low" => set(&mut low, self.option(Self::f64)?)?,
                b"volume_usd" => set(&mut volume_usd, self.f64()?)?,
                b"buy_usd" => set(&mut buy_usd, self.f64()?)?,
                b"sell_usd" => set(&mut sell_usd, self.f64()?)?,
                b"trades" => set(&mut trades, self.u32()?)?,
                b"start_holders" => set(&mut start_holders, self.option(Self::u64)?)?,
                _ => self.skip(0)?,
            }
        }
        Some(WindowStats {
            window_sec: window_sec?,
            start_time_ms: start_time_ms.flatten(),
            start_price: start_price.flatten(),
            high: high.flatten(),
            low: low.flatten(),
            volume_usd: volume_usd?,
            buy_usd: buy_usd?,
            sell_usd: sell_usd?,
            trades: trades?,
            start_holders: start_holders.flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::messages::{Block, ChainStatus, ProgramLog, MESSAGE_VERSION};

    fn frame(kind: EventKind) -> EventFrame {
        EventFrame {
            v: MESSAGE_VERSION,
            task_id: 4,
            batch_id: None,
            epoch: 3,
            chain: Chain::Sol,
            producer: "ingest-1".into(),
            seq: u64::MAX,
            events: vec![Event {
                source_time_ms: -5,
                ingest_time_ms: 1_700_000_000_000,
                target: Some(TargetRef {
                    target_id: 300,
                    address: "So11111111111111111111111111111111111111112".into(),
                }),
                kind,
                snapshot: Some(TokenSnapshot {
                    price: Some(0.5),
                    holders: Some(70_000),
                    windows: vec![WindowStats {
                        window_sec: 300,
                        start_time_ms: Some(1_699_999_700_000),
                        high: Some(1.5),
                        volume_usd: 10.0,
                        buy_usd: 6.0,
                        sell_usd: 4.0,
                        trades: 2,
                        ..WindowStats::default()
                    }],
                    ..TokenSnapshot::default()
                }),
            }],
        }
    }

    #[test]
    fn reads_every_event_kind() {
        let kinds = [
            EventKind::Trade(Trade {
                side: Side::Sell,
                volume_usd: 12.5,
                price_usd: None,
                tx_hash: Some("5h6x".into()),
                owner: None,
            }),
            EventKind::Price(Price {
                open: 1.0,
                high: 2.0,
                low: 0.5,
                close: 1.5,
                volume_usd: Some(99.0),
            }),
            EventKind::Holders(Holders {
                holders: Some(12),
                top_share_pct: None,
                top_n: Some(10),
            }),
            EventKind::Block(Block {
                number: 250_000_000,
                hash: "4sGjMW1sUnHzSxGspuhpqLDx6wiyjNtZAMdL4VZHirAn".into(),
                interval_sec: Some(0.4),
                status: ChainStatus::Confirmed,
            }),
            EventKind::ProgramLog(ProgramLog {
                signature: "5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnb".into(),
                slot: 250_000_001,
                program_id: "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA".into(),
                logs: vec!["Program log: Instruction: Transfer".into()],
                failed: true,
                status: ChainStatus::Removed,
            }),
        ];
        for kind in kinds {
            let original = frame(kind);
            let bytes = encode(&original).unwrap();
            assert_eq!(read(&bytes), Some(original));
        }
    }

    #[test]
    fn duplicate_field_goes_to_serde() {
        // {"v": 1, "v": 1, ...}: serde rejects a duplicate field, so the reader must not
        // accept it either.
        let mut bytes = encode(&frame(EventKind::Holders(Holders {
            holders: None,
            top_share_pct: None,
            top_n: None,
        })))
        .unwrap();
        assert_eq!(bytes[0], 0x88, "a map of 8 fields");
        bytes[0] = 0x89;
        bytes.splice(1..1, [0xa1, b'v', 0x01]);
        assert_eq!(read(&bytes), None);
        assert!(rmp_serde::from_slice::<EventFrame>(&bytes).is_err());
    }

    fn holders_frame() -> EventFrame {
        frame(EventKind::Holders(Holders {
            holders: Some(1),
            top_share_pct: None,
            top_n: None,
        }))
    }

    #[test]
    fn trailing_bytes_go_to_serde() {
        let original = holders_frame();
        let mut bytes = encode(&original).unwrap();
        bytes.push(0xc0);
        assert_eq!(read(&bytes), None);
        // serde reads the frame and ignores what follows it.
        assert_eq!(
            crate::codec::decode::<EventFrame>(&bytes).unwrap(),
            original
        );
    }

    #[test]
    fn positional_frame_goes_to_serde() {
        let positional = rmp_serde::to_vec(&holders_frame()).unwrap();
        assert_eq!(read(&positional), None);
    }

    #[test]
    fn skips_unknown_fields_of_any_type() {
        // A newer writer's frame: {"extra": {"a": [1, 2.5, "x", nil, true]}} before the
        // known fields.
        let mut bytes = encode(&frame(EventKind::Price(Price {
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume_usd: None,
        })))
        .unwrap();
        bytes[0] = 0x89;
        let extra = [
            0xa5, b'e', b'x', b't', b'r', b'a', 0x81, 0xa1, b'a', 0x95, 0x01, 0xcb, 0x40, 0x04, 0,
            0, 0, 0, 0, 0, 0xa1, b'x', 0xc0, 0xc3,
        ];
        bytes.splice(1..1, extra);
        let expected = rmp_serde::from_slice::<EventFrame>(&bytes).unwrap();
        assert_eq!(read(&bytes), Some(expected));
    }
}
