//! What the load generator asks of the operating system: more file
//! descriptors, and the resident memory of a process.

use std::io;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

/// File descriptors kept for everything but the connections: the runtime,
/// stdio, the storage channel.
const SPARE_FDS: u64 = 64;

/// Raises this process's soft limit on open files to its hard limit (and
/// the hard limit too, when it is short and the process may: as root) and
/// checks that `connections` fit; returns the limit.
pub(crate) fn raise_fd_limit(connections: u64) -> anyhow::Result<u64> {
    let needed = connections + SPARE_FDS;
    let (_, hard) = rlimit::Resource::NOFILE
        .get()
        .context("cannot read the open-files limit")?;
    if hard < needed {
        // Refused without the privilege; the check below then says so.
        let _ = rlimit::Resource::NOFILE.set(needed, needed);
    }
    let (_, hard) = rlimit::Resource::NOFILE
        .get()
        .context("cannot read the open-files limit")?;
    let limit = rlimit::increase_nofile_limit(hard).context("cannot raise the open-files limit")?;
    anyhow::ensure!(
        needed <= limit,
        "{connections} connections need about {needed} file descriptors, and this process may \
         open {limit} (the hard limit); raise it (`ulimit -Hn`) or open fewer"
    );
    Ok(limit)
}

/// The resident memory of process `pid` (`VmRSS` in `/proc/<pid>/status`),
/// in bytes.
pub(crate) fn rss_bytes(pid: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    vm_rss(&status).ok_or_else(|| io::Error::other(format!("no VmRSS for process {pid}")))
}

/// The CPU time (user and system) process `pid` has used, in seconds.
pub(crate) fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = cpu_ticks(&stat)
        .ok_or_else(|| io::Error::other(format!("no CPU times for process {pid}")))?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Ok(ticks as f64 / 100.0)
}

/// One look at a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    at: Instant,
    cpu_s: f64,
    rss_bytes: u64,
}

impl Sample {
    /// `pid` is a process id or `self`; `None` if it cannot be read.
    fn take(pid: &str) -> Option<Sample> {
        Some(Sample {
            at: Instant::now(),
            cpu_s: cpu_seconds(pid).ok()?,
            rss_bytes: rss_bytes(pid).ok()?,
        })
    }
}

/// Looks at the server (with --server-pid) and at the load generator
/// itself, to report what each used over a stretch of the run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    server_pid: Option<u32>,
}

/// Both processes at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    server: Option<Sample>,
    client: Option<Sample>,
}

impl Probe {
    /// Fails if the server's process cannot be read.
    pub(crate) fn new(server_pid: Option<u32>) -> anyhow::Result<Probe> {
        if let Some(pid) = server_pid {
            rss_bytes(&pid.to_string())
                .with_context(|| format!("--server-pid {pid}: cannot read the process"))?;
        }
        Ok(Probe { server_pid })
    }

    pub(crate) fn take(&self) -> Snapshot {
        Snapshot {
            server: self
                .server_pid
                .and_then(|pid| Sample::take(&pid.to_string())),
            client: Sample::take("self"),
        }
    }

    /// What the server and the load generator used between two snapshots.
    pub(crate) fn between(
        &self,
        first: Snapshot,
        second: Snapshot,
    ) -> (Option<Usage>, Option<Usage>) {
        let usage = |pid, a: Option<Sample>, b: Option<Sample>| {
            a.zip(b).map(|(a, b)| Usage::between(pid, a, b))
        };
        (
            usage(self.server_pid, first.server, second.server),
            usage(None, first.client, second.client),
        )
    }
}

/// What a process used between two samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    /// The process, when it is not the load generator.
    pub(crate) pid: Option<u32>,
    /// CPU time used, user and system, in seconds.
    pub(crate) cpu_s: f64,
    /// CPU time per second of wall time: the cores kept busy on average.
    pub(crate) cores: f64,
    /// Resident memory at the second sample.
    pub(crate) rss_bytes: u64,
}

impl Usage {
    fn between(pid: Option<u32>, first: Sample, second: Sample) -> Usage {
        let cpu_s = (second.cpu_s - first.cpu_s).max(0.0);
        let wall = second.at.duration_since(first.at).as_secs_f64();
        Usage {
            pid,
            cpu_s,
            cores: if wall > 0.0 { cpu_s / wall } else { 0.0 },
            rss_bytes: second.rss_bytes,
        }
    }
}

/// utime + stime from `/proc/<pid>/stat`; the command name in the second
/// field may hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tnatter\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(vm_rss(status), Some(12345 * 1024));
        assert_eq!(vm_rss("Name:\tx\n"), None);
        assert_eq!(vm_rss("VmRSS:\tlots\n"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "1234 (natter (dev) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("1234 (x) S 1"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        assert!(rss_bytes("self").unwrap() > 0);
        assert!(cpu_seconds("self").unwrap() >= 0.0);
        assert!(Sample::take("self").is_some());
    }
}
