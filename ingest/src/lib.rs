//! placeholder
pub mod window;
