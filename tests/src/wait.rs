//! Bounded polling and free ports.
//!
//! The waits use tokio timers, so they are meant for tests on the real clock: under
//! `tokio::time::pause` the clock jumps ahead while the runtime is idle and a wait for another
//! process would time out at once.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use tokio::time::Instant;

/// Evaluates `condition` every `poll` until it returns true or `timeout` has passed, and
/// returns whether it held. It is evaluated at least once, and once more at the deadline.
pub async fn wait_until<F, Fut>(timeout: Duration, poll: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(timeout, poll, || {
        let check = condition();
        async move { check.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Evaluates `probe` every `poll` until it returns `Some` or `timeout` has passed, and returns
/// that value (`None` on timeout). It is evaluated at least once, and once more at the
/// deadline.
pub async fn wait_for<T, F, Fut>(timeout: Duration, poll: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

/// Returns a TCP port on 127.0.0.1 that the kernel reports free. Another process may take it before
/// the caller binds it, which is unlikely because the kernel hands out ports in turn.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("failed to bind a free port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("failed to read the address of a bound socket: {e}"))
        .port()
}
