//! Where the workspace, its binaries, the services directory and the test tools are.

use std::path::PathBuf;

/// Reads a variable that `scripts/test` sets, panicking with how to get it when it is missing.
pub(crate) fn required_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: run the tests with scripts/test, which starts private NATS, \
             MariaDB and Redis instances and sets it (or run `scripts/services start` and \
             source the services.env it prints)"
        ),
    }
}

/// Returns the workspace root (the parent of this crate's directory).
pub fn workspace_dir() -> PathBuf {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{} has no parent directory", crate_dir.display()))
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MONITOR_BIN_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("debug")
}

/// Returns the path of a workspace binary (`allocator`, `ingest`, `evaluate`, `notify`, `devkit`) in
/// `MONITOR_BIN_DIR`, by default `<workspace>/target/debug`.
///
/// # Panics
/// If the binary does not exist: `cargo test` does not build other packages' binaries, so it
/// must be built first (`scripts/test` does).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: build it with `cargo build --workspace --bins` \
             or run the tests with scripts/test",
            path.display()
        );
    }
    path
}

/// Returns the directory of the running services (`TEST_SERVICES_DIR`): their data, `services.env`,
/// and `logs/`, where [`crate::Process`] writes the output of the binaries tests start.
pub fn services_dir() -> PathBuf {
    PathBuf::from(required_var("TEST_SERVICES_DIR"))
}

/// `scripts/services`, which starts, stops and restarts the shared servers.
pub fn services_script() -> PathBuf {
    workspace_dir().join("scripts").join("services")
}

/// Returns the nats-server binary that `scripts/services` installed (`TEST_NATS_BIN`).
pub fn nats_bin() -> PathBuf {
    existing_tool("TEST_NATS_BIN")
}

/// Returns the anvil binary that `scripts/services` installed from npm (`TEST_ANVIL_BIN`).
pub fn anvil_bin() -> PathBuf {
    existing_tool("TEST_ANVIL_BIN")
}

fn existing_tool(var: &str) -> PathBuf {
    let path = PathBuf::from(required_var(var));
    if !path.is_file() {
        panic!(
            "{var} points to {}, which does not exist: run `scripts/services install`",
            path.display()
        );
    }
    path
}
