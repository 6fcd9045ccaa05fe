//! The standard `process_*` metrics, read from `/proc/self` at each scrape.
//!
//! The prometheus crate's `process` feature does the same through the
//! `procfs` crate (plus `libc` and `lazy_static`); these five files are
//! simple enough to read directly. On a system without `/proc` the collector
//! reports nothing. Clock ticks are `USER_HZ`, which the Linux ABI fixes at
//! 100 for every architecture the project builds on.

use prometheus::core::{Collector, Desc};
use prometheus::{Counter, IntGauge, proto};
use std::sync::Mutex;

const USER_HZ: f64 = 100.0;

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads`, `process_start_time_seconds`.
pub struct ProcessCollector {
    cpu: Counter,
    rss: IntGauge,
    vsize: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: IntGauge,
    descs: Vec<Desc>,
    /// Serializes scrapes: the CPU counter is advanced by the difference
    /// from its last value, which two concurrent scrapes would add twice.
    lock: Mutex<()>,
}

impl ProcessCollector {
    pub fn new() -> Result<ProcessCollector, prometheus::Error> {
        let c = ProcessCollector {
            cpu: Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )?,
            rss: IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            )?,
            vsize: IntGauge::new(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            )?,
            open_fds: IntGauge::new("process_open_fds", "Number of open file descriptors.")?,
            max_fds: IntGauge::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            )?,
            threads: IntGauge::new("process_threads", "Number of OS threads in the process.")?,
            start_time: IntGauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
            )?,
            descs: Vec::new(),
            lock: Mutex::new(()),
        };
        let mut descs = Vec::new();
        for m in [
            &c.rss,
            &c.vsize,
            &c.open_fds,
            &c.max_fds,
            &c.threads,
            &c.start_time,
        ] {
            descs.extend(m.desc().into_iter().cloned());
        }
        descs.extend(c.cpu.desc().into_iter().cloned());
        if let Some(t) = start_time() {
            c.start_time.set(t);
        }
        Ok(ProcessCollector { descs, ..c })
    }
}

/// Fields of `/proc/self/stat` after the command name (which may hold
/// spaces, so split after its closing parenthesis). Index 0 is field 3.
fn stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn field(fields: &[String], n: usize) -> Option<f64> {
    // `n` is the 1-based field number of proc(5); the slice starts at field 3.
    fields.get(n.checked_sub(3)?)?.parse().ok()
}

/// Boot time (`btime` of `/proc/stat`) plus the process's start in ticks.
fn start_time() -> Option<i64> {
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let ticks = field(&stat_fields()?, 22)?;
    Some(boot + (ticks / USER_HZ) as i64)
}

/// A `/proc/self/status` line's value in kB, as bytes.
fn status_kb(status: &str, key: &str) -> Option<i64> {
    let v = status.lines().find_map(|l| l.strip_prefix(key))?;
    let kb: i64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

fn max_open_files() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files  <soft>  <hard>  files"
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let Some(stat) = stat_fields() else {
            return Vec::new();
        };
        let _guard = self.lock.lock();
        if let (Some(u), Some(s)) = (field(&stat, 14), field(&stat, 15)) {
            let total = (u + s) / USER_HZ;
            let delta = total - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
        }
        if let Some(n) = field(&stat, 20) {
            self.threads.set(n as i64);
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(b) = status_kb(&status, "VmRSS:") {
                self.rss.set(b);
            }
            if let Some(b) = status_kb(&status, "VmSize:") {
                self.vsize.set(b);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // Minus the descriptor of the directory being read.
            self.open_fds.set(dir.count().saturating_sub(1) as i64);
        }
        if let Some(n) = max_open_files() {
            self.max_fds.set(n);
        }
        let mut out = Vec::with_capacity(7);
        out.extend(self.cpu.collect());
        for g in [
            &self.rss,
            &self.vsize,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ] {
            out.extend(g.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_from_proc() {
        let r = prometheus::Registry::new();
        r.register(Box::new(ProcessCollector::new().unwrap()))
            .unwrap();
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= 64.0);
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as f64;
        let start = value("process_start_time_seconds");
        assert!(
            start > now - 86_400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }
}
