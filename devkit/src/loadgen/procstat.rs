//! CPU time and memory of processes, read from Linux's `/proc`.
//!
//! Consumes `/proc/<pid>/stat` (user and system CPU time) and `/proc/<pid>/status` (`VmRSS`
//! and `VmHWM`, the peak resident set). Produces a [`ProcSample`] per process. CPU time is
//! read in clock ticks of `USER_HZ`, which Linux fixes at 100 per second in the `/proc`
//! interface on every architecture it supports.

use std::fmt;
use std::str::FromStr;

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`.
const USER_HZ: f64 = 100.0;

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcSample {
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_sec: f64,
    /// Resident set size now, in KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started, in KiB.
    pub peak_rss_kib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected content in {path}: {problem}")]
    Format { path: String, problem: &'static str },
}

/// Reads the CPU time and memory of `pid` (`self` for this process).
pub fn sample(pid: &str) -> Result<ProcSample, ProcError> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = read(&stat_path)?;
    let cpu_sec = cpu_seconds(&stat).ok_or(ProcError::Format {
        path: stat_path,
        problem: "no utime and stime fields",
    })?;

    let status_path = format!("/proc/{pid}/status");
    let status = read(&status_path)?;
    let rss_kib = status_kib(&status, "VmRSS").ok_or(ProcError::Format {
        path: status_path.clone(),
        problem: "no VmRSS line",
    })?;
    let peak_rss_kib = status_kib(&status, "VmHWM").unwrap_or(rss_kib);
    Ok(ProcSample {
        cpu_sec,
        rss_kib,
        peak_rss_kib,
    })
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// User plus system time from the text of `/proc/<pid>/stat`, in seconds. The command name
/// (field 2) is in parentheses and may contain spaces, so fields are counted after the last
/// `)`: the state is field 3, `utime` field 14 and `stime` field 15.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `kB` value of `/proc/<pid>/status`, such as `VmHWM:   12345 kB`.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// A process watched by name: `ingest=1234` on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPid {
    pub name: String,
    pub pid: u32,
}

impl FromStr for NamedPid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pid) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=PID, got {s:?}"))?;
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(format!(
                "process name {name:?} must be letters, digits, '_' or '-'"
            ));
        }
        let pid = pid
            .trim()
            .parse()
            .map_err(|_| format!("expected a process id after {name}=, got {pid:?}"))?;
        Ok(NamedPid {
            name: name.to_owned(),
            pid,
        })
    }
}

impl fmt::Display for NamedPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.pid)
    }
}

/// CPU used by one process over a measured interval, and its peak memory at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcUsage {
    pub name: String,
    pub cpu_sec: f64,
    pub peak_rss_kib: u64,
}

impl ProcUsage {
    /// Usage between two samples of the same process.
    pub fn between(name: &str, start: &ProcSample, end: &ProcSample) -> ProcUsage {
        ProcUsage {
            name: name.to_owned(),
            cpu_sec: (end.cpu_sec - start.cpu_sec).max(0.0),
            peak_rss_kib: end.peak_rss_kib.max(start.peak_rss_kib),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_skip_a_name_with_spaces() {
        let stat = "4242 (tokio runtime) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_seconds(stat), Some(3.25));
    }

    #[test]
    fn cpu_seconds_of_truncated_stat_is_none() {
        assert_eq!(cpu_seconds("4242 (x) S 1 2"), None);
        assert_eq!(cpu_seconds("no parenthesis"), None);
    }

    #[test]
    fn status_kib_reads_the_named_line() {
        let status = "Name:\tingest\nVmHWM:\t   81234 kB\nVmRSS:\t   70000 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(81_234));
        assert_eq!(status_kib(status, "VmRSS"), Some(70_000));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let sample = sample("self").unwrap();
        assert!(sample.rss_kib > 0);
        assert!(sample.peak_rss_kib >= sample.rss_kib);
    }

    #[test]
    fn named_pid_parses_and_rejects() {
        assert_eq!(
            "nats=123".parse::<NamedPid>(),
            Ok(NamedPid {
                name: "nats".into(),
                pid: 123
            })
        );
        assert!("nats".parse::<NamedPid>().is_err());
        assert!("=1".parse::<NamedPid>().is_err());
        assert!("a b=1".parse::<NamedPid>().is_err());
        assert!("nats=x".parse::<NamedPid>().is_err());
    }
}
