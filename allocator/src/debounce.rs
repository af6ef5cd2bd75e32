//! Coalescing of config change notices.
//!
//! The first notice of a config is applied at once. Further notices of the same config within
//! the window are merged into one reload when the window closes, so a burst of edits costs at
//! most two reloads and the newest version is always applied. Pure: the caller passes the time.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How long notices of one config are merged after a reload.
pub const DEBOUNCE_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Debouncer {
    window: Duration,
    last_applied: HashMap<u64, Instant>,
    pending: HashMap<u64, Instant>,
}

impl Debouncer {
    pub fn new(window: Duration) -> Self {
        Debouncer {
            window,
            last_applied: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Records a notice; returns true when the config is to be reloaded now.
    pub fn on_change(&mut self, config_id: u64, now: Instant) -> bool {
        let window = self.window;
        self.last_applied.retain(|_, at| now < *at + window);
        match self.last_applied.get(&config_id) {
            Some(&at) => {
                self.pending.entry(config_id).or_insert(at + window);
                false
            }
            None => {
                self.last_applied.insert(config_id, now);
                true
            }
        }
    }

    /// When the earliest merged reload is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }

    /// Removes and returns the configs whose merged reload is due, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<u64> {
        let mut due: Vec<(Instant, u64)> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, at)| (*at, *id))
            .collect();
        due.sort();
        for (_, config_id) in &due {
            self.pending.remove(config_id);
            self.last_applied.insert(*config_id, now);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> (Debouncer, Instant) {
        (Debouncer::new(Duration::from_secs(2)), Instant::now())
    }

    #[test]
    fn first_notice_applies_at_once() {
        let (mut debouncer, t0) = start();
        assert!(debouncer.on_change(7, t0));
        assert_eq!(debouncer.next_due(), None);
    }

    #[test]
    fn notices_within_window_merge_into_one_reload() {
        let (mut debouncer, t0) = start();
        assert!(debouncer.on_change(7, t0));
        assert!(!debouncer.on_change(7, t0 + Duration::from_millis(300)));
        assert!(!debouncer.on_change(7, t0 + Duration::from_millis(900)));

        assert_eq!(debouncer.next_due(), Some(t0 + Duration::from_secs(2)));
        assert!(debouncer
            .take_due(t0 + Duration::from_millis(1999))
            .is_empty());
        assert_eq!(debouncer.take_due(t0 + Duration::from_secs(2)), vec![7]);
        assert_eq!(debouncer.next_due(), None);
    }

    #[test]
    fn notice_after_window_applies_at_once() {
        let (mut debouncer, t0) = start();
        assert!(debouncer.on_change(7, t0));
        assert!(debouncer.on_change(7, t0 + Duration::from_secs(3)));
    }

    #[test]
    fn configs_are_debounced_separately() {
        let (mut debouncer, t0) = start();
        assert!(debouncer.on_change(7, t0));
        assert!(debouncer.on_change(8, t0 + Duration::from_millis(100)));
        assert!(!debouncer.on_change(8, t0 + Duration::from_millis(200)));
        assert_eq!(debouncer.next_due(), Some(t0 + Duration::from_millis(2100)));
    }

    #[test]
    fn merged_reload_starts_a_new_window() {
        let (mut debouncer, t0) = start();
        debouncer.on_change(7, t0);
        debouncer.on_change(7, t0 + Duration::from_secs(1));
        let reload_at = t0 + Duration::from_secs(2);
        assert_eq!(debouncer.take_due(reload_at), vec![7]);
        assert!(!debouncer.on_change(7, reload_at + Duration::from_millis(500)));
        assert_eq!(
            debouncer.next_due(),
            Some(reload_at + Duration::from_secs(2))
        );
    }
}
