//! The Solana adapter (sol): one runner per block task, on its own PubSub WebSocket.
//!
//! A [`SolanaRunner`] subscribes to slots (`slotSubscribe`) for block progress and interval
//! alerts, and to the logs of each program id of `chain_specific.sol.program_ids`
//! (`logsSubscribe` with `mentions`, one subscription per program) at the commitment of
//! `SOLANA_COMMITMENT` (`confirmed` by default). It produces `Block` events per slot,
//! `ProgramLog` events with the transaction's signature and log lines, and `Transaction`
//! events for SOL transfers that reach the task's USD threshold, read from the balances of
//! each slot's block (`getBlock` over `SOLANA_RPC_URL`, [`transfers`]).
//!
//! NOTE: program logs sent while the socket was down are not fetched again after a
//! reconnect (PubSub has no history), and forks are not followed: alerts of a slot that
//! does not reach the commitment are not retracted.

pub mod rpc;
pub mod runner;
pub mod transfers;

pub use runner::SolanaRunner;
