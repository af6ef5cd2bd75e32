//! Test harness for the tests that talk to real services and run the real binaries.
//!
//! `scripts/test` starts private nats-server (JetStream), MariaDB and Redis instances on free
//! loopback ports and exports their addresses as `TEST_*` variables; this crate reads them.
//! [`TestEnv::new`] gives each test its own database (migrated), subject prefix (so its own
//! streams and buckets) and log files, so tests run in parallel on the shared servers.
//! [`Process`] runs a workspace binary with the test's settings as environment variables and
//! kills it when dropped. Nothing is cleaned up afterwards: databases, streams and logs stay
//! for inspection, and the next `scripts/test` run starts on fresh data directories.
//!
//! Variables read (all written by `scripts/services start` into `services.env`):
//! `TEST_NATS_URL`, `TEST_DB_HOST`, `TEST_DB_PORT`, `TEST_DB_USER`, `TEST_DB_PASSWORD`,
//! `TEST_REDIS_HOST`, `TEST_REDIS_PORT`, `TEST_SERVICES_DIR`, `TEST_NATS_BIN`,
//! `TEST_ANVIL_BIN`, and `MONITOR_BIN_DIR` for the binaries.
//!
//! The helpers panic with a message naming what is missing or what failed: they run only in
//! tests, where a panic is the test failure.

mod env;
pub mod fuzz;
mod paths;
mod process;
pub mod recorded;
mod servers;
mod wait;

pub use env::TestEnv;
pub use nix::sys::signal::Signal;
pub use paths::{anvil_bin, bin, nats_bin, services_dir, services_script, workspace_dir};
pub use process::{Process, ProcessBuilder};
pub use servers::{
    assert_no_stub_violations, restart_service, start_service, stop_service, Anvil, MariaDb,
    NatsServer,
};
pub use wait::{free_port, wait_for, wait_until};
