//! The evaluate stage: judges event frames against their task's rules and publishes alerts.

pub mod engine;
