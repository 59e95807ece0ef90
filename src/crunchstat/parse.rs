//! Parsers for the text of the files crunchstat reads: cgroup accounting files (v1 and v2),
//! `/proc/<pid>/net/dev` and `/proc/<pid>/stat`. Pure functions: reading the files is
//! `files`' job. A line that does not parse is skipped; a file with nothing usable gives
//! `None` or an empty collection, never an error.

use std::collections::BTreeMap;

/// Clock ticks per second of `cpuacct.stat` (USER_HZ, 100 on every Linux architecture).
const USER_HZ: f64 = 100.0;

/// Bytes out and in: written and read for a disk, sent and received for a network interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCount {
    pub tx: i64,
    pub rx: i64,
}

/// CPU time used, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub sys: f64,
}

/// The memory figures crunchstat reports, in the order of its `mem` line.
pub const MEMORY_STATS: [&str; 4] = ["cache", "swap", "pgmajfault", "rss"];

/// One reading of [`MEMORY_STATS`]; a figure the files did not give is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory(pub [Option<i64>; 4]);

impl Memory {
    /// The figure named `stat` (one of [`MEMORY_STATS`]).
    pub fn get(&self, stat: &str) -> Option<i64> {
        let index = MEMORY_STATS.iter().position(|s| *s == stat)?;
        self.0[index]
    }

    pub fn set(&mut self, stat: &str, value: i64) {
        if let Some(index) = MEMORY_STATS.iter().position(|s| *s == stat) {
            self.0[index] = Some(value);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// `memory.stat` (v1 or v2): the [`MEMORY_STATS`] figures, the hierarchical `total_X` (v1)
/// in preference to `X`, as Go's crunchstat reports them. v2 has only `pgmajfault` here.
pub fn memory_stat(text: &str) -> Memory {
    let mut plain = Memory::default();
    let mut total = Memory::default();
    for (key, value) in key_values(text) {
        match key.strip_prefix("total_") {
            Some(stat) => total.set(stat, value),
            None => plain.set(key, value),
        }
    }
    let mut merged = plain;
    for (slot, value) in merged.0.iter_mut().zip(total.0) {
        if value.is_some() {
            *slot = value;
        }
    }
    merged
}

/// A file holding one number (`memory.current`, `memory.swap.current`).
pub fn single_number(text: &str) -> Option<i64> {
    text.split_whitespace().next()?.parse().ok()
}

/// v1 `cpuacct.stat`: `user <ticks>` and `system <ticks>`.
pub fn cpuacct_stat(text: &str) -> Option<CpuTimes> {
    let (mut user, mut sys) = (None, None);
    for (key, value) in key_values(text) {
        match key {
            "user" => user = Some(value as f64 / USER_HZ),
            "system" => sys = Some(value as f64 / USER_HZ),
            _ => {}
        }
    }
    Some(CpuTimes {
        user: user?,
        sys: sys?,
    })
}

/// v2 `cpu.stat`: `user_usec` and `system_usec`.
pub fn cpu_stat(text: &str) -> Option<CpuTimes> {
    let (mut user, mut sys) = (None, None);
    for (key, value) in key_values(text) {
        match key {
            "user_usec" => user = Some(value as f64 / 1e6),
            "system_usec" => sys = Some(value as f64 / 1e6),
            _ => {}
        }
    }
    Some(CpuTimes {
        user: user?,
        sys: sys?,
    })
}

/// The number of CPUs in a cpuset list such as `0-3,8,10-11`.
pub fn cpuset_count(text: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let n = match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?);
                hi.checked_sub(lo)? + 1
            }
            None => part.parse::<u32>().map(|_| 1).ok()?,
        };
        count = count.checked_add(n)?;
    }
    (count > 0).then_some(count)
}

/// v2 `cpu.max` (`<quota> <period>` or `max <period>`): the CPUs the quota allows, if any.
pub fn cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota = words.next()?;
    let period = words.next()?;
    cpu_quota(quota, period)
}

/// v1 `cpu.cfs_quota_us` (-1: none) over `cpu.cfs_period_us`: the CPUs allowed, if limited.
pub fn cpu_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// v1 `blkio.throttle.io_service_bytes` / `blkio.io_service_bytes`: `<maj:min> Read|Write
/// <bytes>` lines, per device; a device needs both.
pub fn blkio_service_bytes(text: &str) -> BTreeMap<String, IoCount> {
    let mut partial: BTreeMap<String, (Option<i64>, Option<i64>)> = BTreeMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [device, op, value] = words[..] else {
            continue;
        };
        let Ok(value) = value.parse::<i64>() else {
            continue;
        };
        let entry = partial.entry(device.to_string()).or_default();
        match op {
            "Write" => entry.0 = Some(value),
            "Read" => entry.1 = Some(value),
            _ => {}
        }
    }
    partial
        .into_iter()
        .filter_map(|(device, (tx, rx))| Some((device, IoCount { tx: tx?, rx: rx? })))
        .collect()
}

/// v2 `io.stat`: `<maj:min> rbytes=N wbytes=N …` lines, per device.
pub fn io_stat(text: &str) -> BTreeMap<String, IoCount> {
    let mut devices = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(device) = words.next() else { continue };
        let (mut tx, mut rx) = (None, None);
        for word in words {
            if let Some(v) = word.strip_prefix("rbytes=") {
                rx = v.parse::<i64>().ok();
            } else if let Some(v) = word.strip_prefix("wbytes=") {
                tx = v.parse::<i64>().ok();
            }
        }
        if let (Some(tx), Some(rx)) = (tx, rx) {
            devices.insert(device.to_string(), IoCount { tx, rx });
        }
    }
    devices
}

/// `/proc/<pid>/net/dev`: bytes sent and received per interface, in the file's order,
/// without the loopback interface.
pub fn net_dev(text: &str) -> Vec<(String, IoCount)> {
    let mut interfaces = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() != 17 {
            continue;
        }
        let name = words[0].trim_end_matches(':');
        if name.is_empty() || name == "lo" || !words[0].ends_with(':') {
            continue;
        }
        let (Ok(rx), Ok(tx)) = (words[1].parse::<i64>(), words[9].parse::<i64>()) else {
            continue;
        };
        interfaces.push((name.to_string(), IoCount { tx, rx }));
    }
    interfaces
}

/// `/proc/<pid>/stat`: the resident set size in pages (field 24). The command name (field 2)
/// may hold spaces and `)`, so fields are counted from the last `)`.
pub fn proc_stat_rss_pages(text: &str) -> Option<i64> {
    let after_name = &text[text.rfind(')')? + 1..];
    // after the name: state is field 3, so rss (field 24) is the 22nd word
    after_name.split_whitespace().nth(21)?.parse().ok()
}

/// `key value` lines whose value is an integer.
fn key_values(text: &str) -> impl Iterator<Item = (&str, i64)> {
    text.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        let key = words.next()?;
        let value = words.next()?.parse().ok()?;
        Some((key, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stat_prefers_hierarchical_totals() {
        let v1 = "cache 100\nrss 200\nswap 5\npgmajfault 7\nmapped_file 9\n\
                  total_cache 1000\ntotal_rss 2000\ntotal_pgmajfault 70\nbad line\nrss x\n";
        assert_eq!(
            memory_stat(v1),
            Memory([Some(1000), Some(5), Some(70), Some(2000)])
        );
        // v2 (debian12 vector): only pgmajfault is one of ours
        let v2 = "anon 9158508544\nfile 2762801152\nswapcached 170151936\npgmajfault 271316\n";
        assert_eq!(memory_stat(v2), Memory([None, None, Some(271316), None]));
        assert!(memory_stat("").is_empty());
    }

    #[test]
    fn cpu_times_v1_ticks_and_v2_microseconds() {
        let v1 = cpuacct_stat("user 238\nsystem 17\n").unwrap();
        assert_eq!((v1.user, v1.sys), (2.38, 0.17));
        assert_eq!(cpuacct_stat("user 1\n"), None);
        let v2 = cpu_stat(
            "usage_usec 1055978930168\nuser_usec 980146248781\nsystem_usec 75832681387\n\
             nr_periods 0\n",
        )
        .unwrap();
        assert_eq!((v2.user, v2.sys), (980146.248781, 75832.681387));
        assert_eq!(cpu_stat("usage_usec 5\n"), None);
    }

    #[test]
    fn cpu_counts_and_quotas() {
        assert_eq!(cpuset_count("0-3,8,10-11\n"), Some(7));
        assert_eq!(cpuset_count("0\n"), Some(1));
        assert_eq!(cpuset_count("\n"), None);
        assert_eq!(cpuset_count("3-1"), None);
        assert_eq!(cpuset_count("a-b"), None);
        assert_eq!(cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(cpu_max("max 100000\n"), None);
        assert_eq!(cpu_max(""), None);
        assert_eq!(cpu_quota("-1\n", "100000\n"), None);
        assert_eq!(cpu_quota("50000\n", "100000\n"), Some(0.5));
        assert_eq!(cpu_quota("50000\n", "0\n"), None);
    }

    #[test]
    fn blkio_v1_and_io_stat_v2() {
        // ubuntu1804 vector, plus a device with no Write line and junk
        let v1 = "252:0 Read 6119424\n252:0 Write 0\n252:0 Sync 6119424\n252:0 Total 6119424\n\
                  253:0 Read 1\n8:0 Write x\nTotal 12238848\n";
        let devices = blkio_service_bytes(v1);
        assert_eq!(
            devices.into_iter().collect::<Vec<_>>(),
            [("252:0".to_string(), IoCount { tx: 0, rx: 6119424 })]
        );
        let v2 = "253:2 rbytes=2110803968 wbytes=8333664256 rios=515333 wios=1682507\n\
                  8:32 rbytes=50547765248 wbytes=0 rios=12340763\n9:0 rios=4\n\n";
        let devices = io_stat(v2);
        assert_eq!(devices.len(), 2);
        assert_eq!(
            devices["253:2"],
            IoCount {
                tx: 8333664256,
                rx: 2110803968
            }
        );
    }

    #[test]
    fn net_dev_skips_headers_loopback_and_short_lines() {
        // debian12 vector plus a glued name (old kernels) that does not split into 17 words
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n \
            lo: 44467931   32124    0    0    0     0          0         0 44467931   32124    0    0    0     0       0          0\n\
            enp4s0: 76312173774 219652689    0   33    0     0          0    226563 52498381226 153789479    0    0    0     0       0          0\n\
            eth1:5 1 0 0 0 0 0 0 6 1 0 0 0 0 0 0\n";
        assert_eq!(
            net_dev(text),
            [(
                "enp4s0".to_string(),
                IoCount {
                    tx: 52498381226,
                    rx: 76312173774
                }
            )]
        );
    }

    #[test]
    fn proc_stat_rss_after_a_name_with_spaces_and_parens() {
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        let text = format!("1234 (odd ) name)) {}\n", fields.join(" "));
        assert_eq!(proc_stat_rss_pages(&text), Some(24));
        assert_eq!(proc_stat_rss_pages("1 (short) S 1 2"), None);
        assert_eq!(proc_stat_rss_pages("no parens"), None);
    }
}
