//! The one-line result of a load generator run and the statistics in it.
//!
//! A result line starts with `loadgen` and lists `key=value` pairs separated by single spaces,
//! so scripts read a figure with `grep` and `sed`. Values never contain spaces. Latencies are
//! in milliseconds, rates per second, memory in MiB.

use std::fmt::{self, Display};

use super::procstat::ProcUsage;

/// The `key=value` pairs of one result line, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultLine {
    fields: Vec<(String, String)>,
}

impl ResultLine {
    pub fn new(mode: &str) -> Self {
        let mut line = ResultLine::default();
        line.push("mode", mode);
        line
    }

    /// Adds a field. A space in the value would split it, so spaces become `_`.
    pub fn push(&mut self, key: &str, value: impl Display) {
        let value = value.to_string().replace(' ', "_");
        self.fields.push((key.to_owned(), value));
    }

    /// Adds a number with `decimals` digits after the point.
    pub fn push_f64(&mut self, key: &str, value: f64, decimals: usize) {
        self.push(key, format!("{value:.decimals$}"));
    }

    /// Adds a latency in milliseconds, or `none` when nothing was measured.
    pub fn push_ms(&mut self, key: &str, micros: Option<u64>) {
        match micros {
            Some(us) => self.push_f64(key, us as f64 / 1000.0, 3),
            None => self.push(key, "none"),
        }
    }

    /// Adds `<name>_cpu_s` and `<name>_peak_rss_mib` for every process.
    pub fn push_usage(&mut self, usage: &[ProcUsage]) {
        for process in usage {
            self.push_f64(&format!("{}_cpu_s", process.name), process.cpu_sec, 2);
            self.push_f64(
                &format!("{}_peak_rss_mib", process.name),
                process.peak_rss_kib as f64 / 1024.0,
                1,
            );
        }
    }

    /// Returns the value of a field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Display for ResultLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("loadgen")?;
        for (key, value) in &self.fields {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

/// Latencies in microseconds, summarized by nearest-rank percentiles.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    micros: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn record(&mut self, micros: u64) {
        self.micros.push(micros);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The smallest recorded value that at least `quantile` (0 to 1) of the values do not
    /// exceed; `None` when nothing was recorded.
    pub fn percentile(&mut self, quantile: f64) -> Option<u64> {
        if self.micros.is_empty() {
            return None;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        let rank = (quantile.clamp(0.0, 1.0) * self.micros.len() as f64).ceil() as usize;
        Some(self.micros[rank.clamp(1, self.micros.len()) - 1])
    }

    pub fn max(&self) -> Option<u64> {
        self.micros.iter().copied().max()
    }
}

/// Events per second over `seconds`; zero for an empty interval.
pub fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_lists_fields_in_order() {
        let mut line = ResultLine::new("pipeline");
        line.push("events", 10);
        line.push_f64("events_per_s", 2.5, 1);
        line.push_ms("latency_p50_ms", Some(1_234));
        line.push_ms("latency_p99_ms", None);
        assert_eq!(
            line.to_string(),
            "loadgen mode=pipeline events=10 events_per_s=2.5 latency_p50_ms=1.234 latency_p99_ms=none"
        );
        assert_eq!(line.get("events"), Some("10"));
    }

    #[test]
    fn spaces_in_values_become_underscores() {
        let mut line = ResultLine::new("raw");
        line.push("note", "a b");
        assert_eq!(line.get("note"), Some("a_b"));
    }

    #[test]
    fn usage_gives_cpu_and_memory_per_process() {
        let mut line = ResultLine::new("pipeline");
        line.push_usage(&[ProcUsage {
            name: "ingest".into(),
            cpu_sec: 1.234,
            peak_rss_kib: 2048,
        }]);
        assert_eq!(line.get("ingest_cpu_s"), Some("1.23"));
        assert_eq!(line.get("ingest_peak_rss_mib"), Some("2.0"));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut latencies = Latencies::default();
        for value in (1..=1000).rev() {
            latencies.record(value);
        }
        assert_eq!(latencies.percentile(0.5), Some(500));
        assert_eq!(latencies.percentile(0.99), Some(990));
        assert_eq!(latencies.percentile(0.999), Some(999));
        assert_eq!(latencies.percentile(1.0), Some(1000));
        assert_eq!(latencies.percentile(0.0), Some(1));
        assert_eq!(latencies.max(), Some(1000));
    }

    #[test]
    fn empty_latencies_have_no_percentile() {
        assert_eq!(Latencies::default().percentile(0.5), None);
    }
}
