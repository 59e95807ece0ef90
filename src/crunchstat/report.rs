//! Turning samples into crunchstat's lines, in Go's format, and keeping what the end of the
//! run reports: totals, maxima and the memory warnings.
//!
//! Lines of one report, in Go's order (`[…]` only from the second report of that figure on):
//!
//! ```text
//! mem <n> cache <n> swap <n> pgmajfault <n> rss
//! procmem <n> <name> …
//! cpu %.4f user %.4f sys %.2f cpus[ -- interval %.4f seconds %.4f user %.4f sys]
//! blkio:<maj:min> %d write %d read[ -- interval %.4f seconds %d write %d read]
//! net:<if> %d tx %d rx[ -- interval %.4f seconds %d tx %d rx]
//! statfs %d available %d used %d total[ -- interval %.4f seconds %d used]
//! ```
//!
//! A figure a sample lacks gets no line. Counters that go backwards give negative deltas,
//! as in Go. Sampling, timing and where the lines go are `sampler`'s job.

use std::collections::BTreeMap;
use std::time::Instant;

use super::files::{DiskSpace, Sample};
use super::parse::{CpuTimes, IoCount, MEMORY_STATS, Memory};

/// Memory warnings: each percentage of the container's RAM is reported once, the first
/// time the `rss` figure reaches it.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    total: i64,
    /// (percentage, bytes), ascending; those passed are removed.
    pending: Vec<(u32, i64)>,
}

impl Thresholds {
    /// Warnings at `percentages` (e.g. 90, 95, 99) of `total` bytes.
    pub fn percentages(total: i64, percentages: &[u32]) -> Thresholds {
        let mut pending: Vec<(u32, i64)> = percentages
            .iter()
            .map(|&p| (p, (i128::from(total) * i128::from(p) / 100) as i64))
            .collect();
        pending.sort_unstable();
        Thresholds { total, pending }
    }

    /// The warnings `rss` brings: every pending threshold it reached, lowest first.
    fn passed(&mut self, rss: i64) -> Vec<String> {
        let reached = self
            .pending
            .iter()
            .take_while(|(_, bytes)| rss >= *bytes)
            .count();
        self.pending
            .drain(..reached)
            .map(|(percent, _)| {
                format!(
                    "Container using over {percent}% of memory (rss {rss}/{} bytes)",
                    self.total
                )
            })
            .collect()
    }
}

/// What the end of the run reports: the last figures seen and the maxima.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// CPU time used and the CPUs it had, at the last sample.
    pub cpu: Option<(CpuTimes, f64)>,
    /// Per device: bytes written and read, at the last sample that had it.
    pub disk_io: BTreeMap<String, IoCount>,
    /// The disk space sample with the most used.
    pub max_disk: Option<DiskSpace>,
    /// Each memory figure's maximum.
    pub max_memory: Memory,
    /// Per interface: bytes sent and received, at the last sample that had it.
    pub net: BTreeMap<String, IoCount>,
    /// Per named process (`procmem`): its largest resident set, in bytes.
    pub process_rss: BTreeMap<String, i64>,
}

impl Totals {
    /// Go's `LogMaxima` lines, for crunch-run.txt; `ram` (bytes) turns the rss maximum into
    /// a percentage.
    pub fn maxima_lines(&self, ram: Option<i64>) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some((cpu, cpus)) = self.cpu {
            lines.push(format!(
                "Total CPU usage was {:.6} user and {:.6} sys on {cpus:.2} CPUs",
                cpu.user, cpu.sys
            ));
        }
        for (device, io) in &self.disk_io {
            lines.push(format!(
                "Total disk I/O on {device} was {} bytes written and {} bytes read",
                io.tx, io.rx
            ));
        }
        if let Some(disk) = self.max_disk.filter(|d| d.total > 0) {
            lines.push(format!(
                "Maximum disk usage was {}%, {}/{} bytes",
                u128::from(disk.used) * 100 / u128::from(disk.total),
                disk.used,
                disk.total
            ));
        }
        for (stat, value) in MEMORY_STATS.iter().zip(self.max_memory.0) {
            let limit = ram.filter(|_| *stat == "rss");
            lines.extend(value.map(|v| memory_max_line("container", stat, v, limit)));
        }
        for (interface, io) in &self.net {
            lines.push(format!(
                "Total network I/O on {interface} was {} bytes written and {} bytes read",
                io.tx, io.rx
            ));
        }
        lines
    }

    /// Go's `LogProcessMemMax` lines: `Maximum <name> memory rss usage was <n> bytes`.
    pub fn process_maxima_lines(&self) -> Vec<String> {
        self.process_rss
            .iter()
            .map(|(name, rss)| memory_max_line(name, "rss", *rss, None))
            .collect()
    }
}

fn memory_max_line(source: &str, stat: &str, value: i64, limit: Option<i64>) -> String {
    let units = if stat == "pgmajfault" {
        "faults"
    } else {
        "bytes"
    };
    match limit.filter(|l| *l > 0) {
        Some(limit) => format!(
            "Maximum {source} memory {stat} usage was {}%, {value}/{limit} {units}",
            i128::from(value) * 100 / i128::from(limit)
        ),
        None => format!("Maximum {source} memory {stat} usage was {value} {units}"),
    }
}

/// The state between reports: the last figures reported (for the deltas), and the totals.
#[derive(Debug, Default)]
pub struct Reporter {
    thresholds: Thresholds,
    last_cpu: Option<(Instant, CpuTimes)>,
    last_blkio: BTreeMap<String, (Instant, IoCount)>,
    last_net: BTreeMap<String, (Instant, IoCount)>,
    last_disk: Option<(Instant, DiskSpace)>,
    totals: Totals,
}

impl Reporter {
    pub fn new(thresholds: Thresholds) -> Reporter {
        Reporter {
            thresholds,
            ..Reporter::default()
        }
    }

    /// Take in a sample that may not be reported: update the totals and maxima, and return
    /// the memory warnings it brings.
    pub fn observe(&mut self, sample: &Sample) -> Vec<String> {
        let totals = &mut self.totals;
        for (max, value) in totals.max_memory.0.iter_mut().zip(sample.memory.0) {
            *max = (*max).max(value);
        }
        if let (Some(cpu), Some(cpus)) = (sample.cpu, sample.cpus) {
            totals.cpu = Some((cpu, cpus));
        }
        for (device, io) in &sample.blkio {
            totals.disk_io.insert(device.clone(), *io);
        }
        for (interface, io) in &sample.net {
            totals.net.insert(interface.clone(), *io);
        }
        match sample.memory.get("rss") {
            Some(rss) => self.thresholds.passed(rss),
            None => Vec::new(),
        }
    }

    /// The lines of one report of `sample`, taken at `at`, with the resident sets of named
    /// processes and the disk space of the watched directory.
    pub fn report(
        &mut self,
        at: Instant,
        sample: &Sample,
        procmem: &[(String, i64)],
        disk: Option<DiskSpace>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(mem_line(&sample.memory));
        lines.extend(self.procmem_line(procmem));
        if let (Some(cpu), Some(cpus)) = (sample.cpu, sample.cpus) {
            lines.push(self.cpu_line(at, cpu, cpus));
        }
        for (device, io) in &sample.blkio {
            let prev = self.last_blkio.insert(device.clone(), (at, *io));
            lines.push(io_line(
                &format!("blkio:{device}"),
                ("write", "read"),
                at,
                *io,
                prev,
            ));
        }
        for (interface, io) in &sample.net {
            let prev = self.last_net.insert(interface.clone(), (at, *io));
            lines.push(io_line(
                &format!("net:{interface}"),
                ("tx", "rx"),
                at,
                *io,
                prev,
            ));
        }
        if let Some(disk) = disk {
            lines.push(self.statfs_line(at, disk));
        }
        lines
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn into_totals(self) -> Totals {
        self.totals
    }

    fn procmem_line(&mut self, procmem: &[(String, i64)]) -> Option<String> {
        let mut line = String::from("procmem");
        for (name, rss) in procmem {
            line.push_str(&format!(" {rss} {name}"));
            let max = self.totals.process_rss.entry(name.clone()).or_insert(*rss);
            *max = (*max).max(*rss);
        }
        (!procmem.is_empty()).then_some(line)
    }

    fn cpu_line(&mut self, at: Instant, cpu: CpuTimes, cpus: f64) -> String {
        let mut line = format!("cpu {:.4} user {:.4} sys {cpus:.2} cpus", cpu.user, cpu.sys);
        if let Some((then, prev)) = self.last_cpu.replace((at, cpu)) {
            line.push_str(&format!(
                " -- interval {:.4} seconds {:.4} user {:.4} sys",
                seconds_between(then, at),
                cpu.user - prev.user,
                cpu.sys - prev.sys
            ));
        }
        line
    }

    fn statfs_line(&mut self, at: Instant, disk: DiskSpace) -> String {
        let max = &mut self.totals.max_disk;
        if max.is_none_or(|m| disk.used > m.used) {
            *max = Some(disk);
        }
        let mut line = format!(
            "statfs {} available {} used {} total",
            disk.available, disk.used, disk.total
        );
        if let Some((then, prev)) = self.last_disk.replace((at, disk)) {
            line.push_str(&format!(
                " -- interval {:.4} seconds {} used",
                seconds_between(then, at),
                i128::from(disk.used) - i128::from(prev.used)
            ));
        }
        line
    }
}

/// `mem 0 cache 0 swap 0 pgmajfault 1187840 rss`: the figures the sample has, in order.
fn mem_line(memory: &Memory) -> Option<String> {
    let mut line = String::from("mem");
    for (stat, value) in MEMORY_STATS.iter().zip(memory.0) {
        if let Some(value) = value {
            line.push_str(&format!(" {value} {stat}"));
        }
    }
    (!memory.is_empty()).then_some(line)
}

/// `<label> <tx> <out> <rx> <in>`, with the deltas since `prev` if there was one.
fn io_line(
    label: &str,
    (out, into): (&str, &str),
    at: Instant,
    io: IoCount,
    prev: Option<(Instant, IoCount)>,
) -> String {
    let mut line = format!("{label} {} {out} {} {into}", io.tx, io.rx);
    if let Some((then, prev)) = prev {
        line.push_str(&format!(
            " -- interval {:.4} seconds {} {out} {} {into}",
            seconds_between(then, at),
            io.tx - prev.tx,
            io.rx - prev.rx
        ));
    }
    line
}

fn seconds_between(then: Instant, now: Instant) -> f64 {
    now.saturating_duration_since(then).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(cpu: (f64, f64), rss: i64, eth0: (i64, i64)) -> Sample {
        Sample {
            memory: Memory([Some(0), Some(0), Some(0), Some(rss)]),
            cpu: Some(CpuTimes {
                user: cpu.0,
                sys: cpu.1,
            }),
            cpus: Some(20.0),
            blkio: BTreeMap::from([("8:0".into(), IoCount { tx: 200, rx: 100 })]),
            net: vec![(
                "eth0".into(),
                IoCount {
                    tx: eth0.0,
                    rx: eth0.1,
                },
            )],
        }
    }

    fn disk(used: u64) -> DiskSpace {
        DiskSpace {
            available: 402611240960 - used,
            used,
            total: 402611240960,
        }
    }

    /// The lines of the real sample in the reference (§6.3), and their deltas.
    #[test]
    fn first_report_has_no_deltas_and_the_next_ones_do() {
        let t0 = Instant::now();
        let mut r = Reporter::default();
        let first = r.report(
            t0,
            &sample((0.0, 0.01), 1187840, (51930, 844687)),
            &[],
            Some(disk(4869779456)),
        );
        assert_eq!(
            first,
            [
                "mem 0 cache 0 swap 0 pgmajfault 1187840 rss",
                "cpu 0.0000 user 0.0100 sys 20.00 cpus",
                "blkio:8:0 200 write 100 read",
                "net:eth0 51930 tx 844687 rx",
                "statfs 397741461504 available 4869779456 used 402611240960 total",
            ]
        );
        let t1 = t0 + Duration::from_micros(10_000_400);
        let next = r.report(
            t1,
            &sample((2.0, 0.38), 1187840, (55888, 859480)),
            &[],
            Some(disk(4865929216)),
        );
        assert_eq!(
            next[1..],
            [
                "cpu 2.0000 user 0.3800 sys 20.00 cpus -- interval 10.0004 seconds 2.0000 user 0.3700 sys",
                "blkio:8:0 200 write 100 read -- interval 10.0004 seconds 0 write 0 read",
                "net:eth0 55888 tx 859480 rx -- interval 10.0004 seconds 3958 tx 14793 rx",
                "statfs 397745311744 available 4865929216 used 402611240960 total -- interval 10.0004 seconds -3850240 used",
            ]
        );
    }

    #[test]
    fn missing_figures_give_no_line_and_new_devices_start_without_deltas() {
        let t0 = Instant::now();
        let mut r = Reporter::default();
        let v2 = Sample {
            memory: Memory([None, Some(5), Some(7), Some(100)]),
            ..Sample::default()
        };
        assert_eq!(
            r.report(t0, &v2, &[], None),
            ["mem 5 swap 7 pgmajfault 100 rss"]
        );
        assert!(r.report(t0, &Sample::default(), &[], None).is_empty());

        let mut s = sample((1.0, 1.0), 1, (10, 10));
        r.report(t0, &s, &[], None);
        // eth0 vanished, eth1 appeared; the counter that went backwards gives a negative delta
        s.net = vec![("eth1".into(), IoCount { tx: 1, rx: 2 })];
        s.blkio.insert("8:0".into(), IoCount { tx: 150, rx: 100 });
        let lines = r.report(t0 + Duration::from_secs(1), &s, &[], None);
        assert_eq!(
            lines[2..],
            [
                "blkio:8:0 150 write 100 read -- interval 1.0000 seconds -50 write 0 read",
                "net:eth1 1 tx 2 rx",
            ]
        );
    }

    #[test]
    fn procmem_line_and_process_maxima() {
        let mut r = Reporter::default();
        let t = Instant::now();
        let procs = [
            ("arv-mount".to_string(), 300),
            ("crunch-run".to_string(), 500),
        ];
        let lines = r.report(t, &Sample::default(), &procs, None);
        assert_eq!(lines, ["procmem 300 arv-mount 500 crunch-run"]);
        r.report(
            t,
            &Sample::default(),
            &[("crunch-run".to_string(), 400)],
            None,
        );
        assert_eq!(
            r.totals().process_maxima_lines(),
            [
                "Maximum arv-mount memory rss usage was 300 bytes",
                "Maximum crunch-run memory rss usage was 500 bytes",
            ]
        );
    }

    #[test]
    fn thresholds_warn_once_each_even_when_all_are_passed() {
        let gib = 1 << 30;
        let mut r = Reporter::new(Thresholds::percentages(gib, &[99, 90, 95]));
        let at = |rss| sample((0.0, 0.0), rss, (0, 0));
        assert!(r.observe(&at(gib * 89 / 100)).is_empty());
        assert_eq!(
            r.observe(&at(gib * 96 / 100)),
            [
                "Container using over 90% of memory (rss 1030792151/1073741824 bytes)",
                "Container using over 95% of memory (rss 1030792151/1073741824 bytes)",
            ]
        );
        assert_eq!(r.observe(&at(gib)).len(), 1);
        assert!(r.observe(&at(gib)).is_empty());
        assert!(r.observe(&at(gib * 2)).is_empty());
    }

    #[test]
    fn maxima_lines_in_go_wording() {
        let mut r = Reporter::default();
        let t = Instant::now();
        for (rss, used) in [(700, 10), (900, 30), (800, 20)] {
            let s = sample((2.5, 0.25), rss, (55888, 859480));
            r.observe(&s);
            r.report(t, &s, &[], Some(disk(used)));
        }
        let mut s = sample((3.0, 0.5), 100, (1, 2));
        s.memory.set("pgmajfault", 12);
        r.observe(&s);
        assert_eq!(
            r.totals().maxima_lines(Some(1000)),
            [
                "Total CPU usage was 3.000000 user and 0.500000 sys on 20.00 CPUs",
                "Total disk I/O on 8:0 was 200 bytes written and 100 bytes read",
                "Maximum disk usage was 0%, 30/402611240960 bytes",
                "Maximum container memory cache usage was 0 bytes",
                "Maximum container memory swap usage was 0 bytes",
                "Maximum container memory pgmajfault usage was 12 faults",
                "Maximum container memory rss usage was 90%, 900/1000 bytes",
                "Total network I/O on eth0 was 1 bytes written and 2 bytes read",
            ]
        );
        let without_ram = r.totals().maxima_lines(None);
        assert_eq!(
            without_ram[6],
            "Maximum container memory rss usage was 900 bytes"
        );
        assert!(Totals::default().maxima_lines(Some(1)).is_empty());
    }
}
