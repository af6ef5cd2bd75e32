//! Development tools of the monitor pipeline, run as `devkit <subcommand>`.
//!
//! The Java backend and Birdeye cannot be reached from development machines and tests, so this
//! crate replaces them with real protocols over real sockets:
//! - [`feed_replay`] serves recorded trades over Birdeye's WebSocket protocol;
//! - [`chain_replay`] serves recorded Ethereum and Solana blocks as a node's JSON-RPC;
//! - [`backend_stub`] plays the Java side of the monitor WebSocket and records what it receives;
//! - [`seed`] inserts a demo task whose rules fire on the recorded trades;
//! - [`loadgen`] runs the pipeline, or JetStream alone, under load and measures it.

pub mod backend_stub;
pub mod chain_replay;
pub mod feed_replay;
pub mod loadgen;
pub mod seed;
pub mod trades;
