//! Size limits on input from outside the pipeline, in one place.
//!
//! Each limit turns an oversized input into a clear error instead of an allocation that grows
//! with the input. The limits that operators may need to raise are settings of the stage that
//! applies them, with these defaults:
//!
//! | limit | where | setting |
//! |---|---|---|
//! | one Birdeye WebSocket frame or message | ingest | `MAX_FRAME_BYTES` (default [`DEFAULT_MAX_FRAME_BYTES`]) |
//! | events buffered while NATS has not acknowledged them | ingest | `MAX_BUFFERED_EVENTS` (default 10,000) |
//! | targets of one task | allocator | `MAX_TARGETS_PER_TASK` (default [`DEFAULT_MAX_TARGETS_PER_TASK`]) |
//!
//! The others are fixed, because a config or message that exceeds them is a mistake rather
//! than a larger deployment: [`MAX_CONFIG_KEYS`] keys (rules and settings) in one
//! `events_config` object, [`MAX_LIST_LEN`] entries in one list of a block config,
//! [`MAX_EVENTS_CONFIG_BYTES`] bytes of `events_config` text, and [`MAX_MESSAGE_BYTES`] bytes
//! of one MessagePack message decoded by [`crate::codec::decode`].

pub use crate::rules::{MAX_CONFIG_KEYS, MAX_LIST_LEN};

/// Default maximum size of one WebSocket frame or message that ingest reads from a feed.
/// Birdeye frames are a few kilobytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;

/// Default maximum number of targets of one task that the allocator assigns to batches.
/// A larger task is rejected with a task status naming the count and the limit.
pub const DEFAULT_MAX_TARGETS_PER_TASK: usize = 100_000;

/// Largest `events_config` text that [`crate::rules::parse_config`] parses. A config of
/// [`MAX_CONFIG_KEYS`] rules with lists of [`MAX_LIST_LEN`] entries stays far below it.
pub const MAX_EVENTS_CONFIG_BYTES: usize = 1 << 20;

/// Largest MessagePack message that [`crate::codec::decode`] decodes. NATS limits a message to
/// `max_payload` (1 MiB unless the server raises it), and an event frame of 256 events is
/// a few hundred kilobytes.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;
