//! placeholder
pub mod birdeye;
pub mod window;
