//! The EVM adapter (eth, bsc): one runner per block task, on its own node WebSocket.
//!
//! An [`EvmRunner`] subscribes to `newHeads`, to one `logs` filter (the task's contract
//! addresses and the topic0 of each event signature) when the task watches contract events,
//! and to `newPendingTransactions` when an eth task watches pending transactions. It
//! produces `Block` events (with the time since the parent block), `Transaction` events for
//! transactions whose USD value reaches the task's threshold (bodies fetched with
//! `eth_getBlockByHash`), and `Log` events (ERC-20 `Transfer` and `Approval` decoded).
//!
//! The chain is followed by hash ([`chain::ChainView`]). A head whose parent is not the last
//! block is followed back until it joins, and the events of the blocks it replaced are sent
//! again as removed. After a reconnect or a missed head the blocks in between are fetched by
//! number and their logs with `eth_getLogs` in chunks, so no block is skipped. Events wait in
//! [`crate::block_task::confirm::Confirmations`] until the task's `confirmations` pass.

pub mod abi;
pub mod chain;
pub mod events;
mod pending;
mod runner;
pub mod types;

pub use runner::EvmRunner;
