//! The sampling thread: reads a cgroup every second (for the memory warnings, the maxima and
//! up-to-date totals), writes a report every interval, and stops when told or, quietly,
//! when the cgroup disappears (the container exited and the engine removed it).
//!
//! Unlike Go's crunchstat, which only ever reports on its interval, the last reading is
//! reported when sampling ends, so a short container's crunchstat.txt ends with its final
//! figures rather than those of up to one interval before. Where the lines go is the
//! caller's: a [`LineSink`] each for the statistics and for the warnings.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::LineSink;
use super::files::{self, Sample, StatFiles};
use super::report::{Reporter, Thresholds, Totals};
use crate::cgroup::{ProcessCgroup, Roots};

/// How often the cgroup is read between reports (Go reads memory this often).
pub const TICK: Duration = Duration::from_secs(1);

/// Where "now" comes from and how the thread waits; injected so tests need not sleep.
pub trait Pacer: Send {
    fn now(&mut self) -> Instant;
    /// Wait `timeout`, or less if `stop` gets a message or is closed; `false` then.
    fn wait(&mut self, timeout: Duration, stop: &Receiver<()>) -> bool;
}

/// The real clock.
pub struct RealPacer;

impl Pacer for RealPacer {
    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn wait(&mut self, timeout: Duration, stop: &Receiver<()>) -> bool {
        matches!(stop.recv_timeout(timeout), Err(RecvTimeoutError::Timeout))
    }
}

/// What to sample and how.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// The cgroup; its process's `/proc/<pid>/net/dev` gives the network figures.
    pub cgroup: ProcessCgroup,
    pub roots: Roots,
    /// Time between reports (Go's `-crunchstat-interval`, 10 s by default).
    pub interval: Duration,
    /// A directory whose filesystem's space is reported (`statfs` lines).
    pub disk: Option<PathBuf>,
    pub thresholds: Thresholds,
    /// CPUs reported when the cgroup has no cpuset.
    pub host_cpus: f64,
    /// Bytes per page, for `procmem`.
    pub page_size: i64,
    /// The thread's name.
    pub name: String,
}

impl SamplerConfig {
    /// Sample `cgroup` every `interval`: no disk, no memory warnings, this host's CPUs and
    /// page size.
    pub fn new(cgroup: ProcessCgroup, roots: Roots, interval: Duration) -> SamplerConfig {
        SamplerConfig {
            cgroup,
            roots,
            interval,
            disk: None,
            thresholds: Thresholds::default(),
            host_cpus: sysconf(libc::_SC_NPROCESSORS_ONLN).unwrap_or(1) as f64,
            page_size: sysconf(libc::_SC_PAGESIZE).unwrap_or(4096),
            name: "crunchstat".to_string(),
        }
    }
}

fn sysconf(name: libc::c_int) -> Option<i64> {
    // SAFETY: sysconf(3) only reads its integer argument.
    let value = unsafe { libc::sysconf(name) };
    (value > 0).then_some(value)
}

/// Named processes whose resident set goes in the `procmem` line.
type Processes = Arc<Mutex<BTreeMap<String, u32>>>;

/// A running sampler. Dropping it stops the thread too, discarding the totals.
pub struct Sampler {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<Totals>>,
    processes: Processes,
}

impl Sampler {
    /// Start sampling on a new thread: statistics lines go to `stats`, memory warnings to
    /// `alerts`.
    pub fn start(
        config: SamplerConfig,
        stats: impl LineSink + 'static,
        alerts: impl LineSink + 'static,
    ) -> io::Result<Sampler> {
        Sampler::start_with(
            config,
            Box::new(stats),
            Box::new(alerts),
            Box::new(RealPacer),
        )
    }

    /// `start` with a chosen pacer.
    pub fn start_with(
        config: SamplerConfig,
        stats: Box<dyn LineSink>,
        alerts: Box<dyn LineSink>,
        pacer: Box<dyn Pacer>,
    ) -> io::Result<Sampler> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let processes = Processes::default();
        let run = Run {
            files: StatFiles::find(&config.cgroup, &config.roots),
            reporter: Reporter::new(config.thresholds.clone()),
            config,
            stats,
            alerts,
            pacer,
            processes: Arc::clone(&processes),
        };
        let thread = thread::Builder::new()
            .name(run.config.name.clone())
            .spawn(move || run.run(&stopped))?;
        Ok(Sampler {
            stop: Some(stop),
            thread: Some(thread),
            processes,
        })
    }

    /// Report the resident set of process `pid` as `name` from the next report on (Go's
    /// `ReportPID`; hoststat does it for crunch-run, arv-mount and keepstore).
    pub fn report_process(&self, name: &str, pid: u32) {
        let mut processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        processes.insert(name.to_string(), pid);
    }

    /// Stop sampling (the last reading is reported) and return the totals.
    pub fn stop(mut self) -> Totals {
        self.halt().unwrap_or_default()
    }

    fn halt(&mut self) -> Option<Totals> {
        drop(self.stop.take());
        self.thread.take()?.join().ok()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A reading and when it was taken.
struct Reading {
    at: Instant,
    sample: Sample,
}

/// The sampling thread's state.
struct Run {
    config: SamplerConfig,
    files: StatFiles,
    reporter: Reporter,
    stats: Box<dyn LineSink>,
    alerts: Box<dyn LineSink>,
    pacer: Box<dyn Pacer>,
    processes: Processes,
}

impl Run {
    fn run(mut self, stop: &Receiver<()>) -> Totals {
        for path in self.files.paths() {
            self.stats.line(&format!("using {}", path.display()));
        }
        if let Some(dir) = &self.config.disk {
            self.stats
                .line(&format!("notice: monitoring temp dir {}", dir.display()));
        }
        let Some(mut latest) = self.read() else {
            return self.reporter.into_totals();
        };
        self.report(&latest);
        let mut reported = latest.at;
        let tick = TICK.min(self.config.interval).max(Duration::from_millis(1));
        loop {
            let since = self.pacer.now().saturating_duration_since(reported);
            let wait = tick.min(self.config.interval.saturating_sub(since));
            if !self.pacer.wait(wait, stop) {
                // told to stop: one more reading if the cgroup is still there
                if let Some(last) = self.read() {
                    latest = last;
                }
                break;
            }
            match self.read() {
                Some(reading) => latest = reading,
                None => break,
            }
            if latest.at.saturating_duration_since(reported) >= self.config.interval {
                self.report(&latest);
                reported = latest.at;
            }
        }
        if latest.at > reported {
            self.report(&latest);
        }
        self.reporter.into_totals()
    }

    /// Read the cgroup and take the reading in (totals, warnings); `None` if it is gone.
    fn read(&mut self) -> Option<Reading> {
        let sample = self.files.read(self.config.host_cpus);
        let at = self.pacer.now();
        if sample.cgroup_gone() {
            return None;
        }
        for warning in self.reporter.observe(&sample) {
            self.alerts.line(&warning);
        }
        Some(Reading { at, sample })
    }

    fn report(&mut self, reading: &Reading) {
        let procmem = self.procmem();
        let disk = self.config.disk.as_deref().and_then(files::disk_space);
        let lines = self
            .reporter
            .report(reading.at, &reading.sample, &procmem, disk);
        // One call for the whole report: one chunk for the logs table, whose queue a burst
        // of a dozen lines, one chunk each, overflowed at every run's start.
        if !lines.is_empty() {
            self.stats.line(&lines.join("\n"));
        }
    }

    fn procmem(&self) -> Vec<(String, i64)> {
        let processes = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        let (roots, page) = (&self.config.roots, self.config.page_size);
        processes
            .iter()
            .filter_map(|(name, pid)| Some((name.clone(), files::process_rss(roots, *pid, page)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::cgroup::Pid;
    use crate::crunchstat::files::tests::{v1_tree, v2_tree};

    /// Virtual time: every wait passes at once and moves the clock; `on_wait(n)` runs at
    /// the n-th wait (1-based) and says whether to go on (false: as if told to stop).
    struct FakePacer {
        now: Instant,
        waits: usize,
        on_wait: Box<dyn FnMut(usize) -> bool + Send>,
    }

    impl Pacer for FakePacer {
        fn now(&mut self) -> Instant {
            self.now
        }

        fn wait(&mut self, timeout: Duration, _stop: &Receiver<()>) -> bool {
            self.now += timeout;
            self.waits += 1;
            (self.on_wait)(self.waits)
        }
    }

    type Lines = Arc<Mutex<Vec<String>>>;

    fn collector() -> (Lines, Box<dyn LineSink>) {
        let lines = Lines::default();
        let sink = Arc::clone(&lines);
        // As a log stream does: a call may carry several lines.
        let push = move |l: &str| sink.lock().unwrap().extend(l.split('\n').map(String::from));
        (lines, Box::new(push))
    }

    fn config(roots: &Roots, pid: u32, interval: Duration) -> SamplerConfig {
        let cgroup = ProcessCgroup::find(roots, Pid::Of(pid)).unwrap();
        let mut config = SamplerConfig::new(cgroup, roots.clone(), interval);
        config.host_cpus = 4.0;
        config
    }

    /// Run a sampler to its end on virtual time; the statistics lines, without the `using`
    /// notices, and the warnings.
    fn run(
        config: SamplerConfig,
        on_wait: impl FnMut(usize) -> bool + Send + 'static,
    ) -> (Vec<String>, Vec<String>, Totals) {
        let (stats, stats_sink) = collector();
        let (alerts, alerts_sink) = collector();
        let pacer = FakePacer {
            now: Instant::now(),
            waits: 0,
            on_wait: Box::new(on_wait),
        };
        let sampler = Sampler::start_with(config, stats_sink, alerts_sink, Box::new(pacer));
        let totals = sampler.unwrap().stop();
        let stats = stats.lock().unwrap().clone();
        let alerts = alerts.lock().unwrap().clone();
        let stats = stats
            .into_iter()
            .filter(|l| !l.starts_with("using "))
            .collect();
        (stats, alerts, totals)
    }

    fn set(dir: &Path, file: &str, text: &str) {
        fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn reports_every_interval_with_deltas_and_the_last_reading_at_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v1_tree(tmp.path());
        let cpu = tmp.path().join("sys/fs/cgroup/cpu,cpuacct/user.slice");
        let (stats, alerts, totals) = run(config(&roots, 2523, Duration::from_secs(3)), move |n| {
            set(
                &cpu,
                "cpuacct.stat",
                &format!("user {}\nsystem 1\n", n * 100),
            );
            n < 7
        });
        let cpu_lines: Vec<_> = stats.iter().filter(|l| l.starts_with("cpu ")).collect();
        assert_eq!(
            cpu_lines,
            [
                "cpu 0.0000 user 0.0100 sys 20.00 cpus",
                "cpu 3.0000 user 0.0100 sys 20.00 cpus -- interval 3.0000 seconds 3.0000 user 0.0000 sys",
                "cpu 6.0000 user 0.0100 sys 20.00 cpus -- interval 3.0000 seconds 3.0000 user 0.0000 sys",
                // stopped at the 7th wait: read once more and reported
                "cpu 7.0000 user 0.0100 sys 20.00 cpus -- interval 1.0000 seconds 1.0000 user 0.0000 sys",
            ]
        );
        assert_eq!(stats[0], "mem 4096 cache 0 swap 3 pgmajfault 1187840 rss");
        assert!(alerts.is_empty());
        let (cpu, cpus) = totals.cpu.unwrap();
        assert_eq!((cpu.user, cpus), (7.0, 20.0));
    }

    #[test]
    fn stops_quietly_when_the_cgroup_disappears_and_keeps_the_totals() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v2_tree(tmp.path());
        let scope = tmp
            .path()
            .join("sys/fs/cgroup/user.slice/user-1000.slice/session-4.scope");
        let (stats, _, totals) = run(config(&roots, 1115883, Duration::from_secs(10)), move |n| {
            match n {
                1 => set(
                    &scope,
                    "cpu.stat",
                    "user_usec 2500000\nsystem_usec 1000000\n",
                ),
                2 => fs::remove_dir_all(&scope).unwrap(),
                _ => panic!("sampled on after the cgroup was gone"),
            }
            true
        });
        let cpu_lines: Vec<_> = stats.iter().filter(|l| l.starts_with("cpu ")).collect();
        assert_eq!(
            cpu_lines,
            [
                "cpu 2.0000 user 1.0000 sys 1.50 cpus",
                "cpu 2.5000 user 1.0000 sys 1.50 cpus -- interval 1.0000 seconds 0.5000 user 0.0000 sys",
            ]
        );
        assert!(
            !stats
                .iter()
                .any(|l| l.contains("error") || l.contains("warning"))
        );
        assert_eq!(totals.cpu.unwrap().0.user, 2.5);
        assert_eq!(totals.max_memory.get("rss"), Some(12045840384));
    }

    #[test]
    fn memory_is_watched_every_tick_between_reports() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v1_tree(tmp.path());
        let mem = tmp.path().join("sys/fs/cgroup/memory/user.slice");
        let mut config = config(&roots, 2523, Duration::from_secs(10));
        config.thresholds = Thresholds::percentages(10_000_000, &[90, 95, 99]);
        let (stats, alerts, totals) = run(config, move |n| {
            let rss = if n == 3 { 9_600_000 } else { 1_000_000 };
            set(&mem, "memory.stat", &format!("total_rss {rss}\n"));
            n < 5
        });
        // the peak came and went between two reports: warned, and counted in the maximum
        assert_eq!(
            alerts,
            [
                "Container using over 90% of memory (rss 9600000/10000000 bytes)",
                "Container using over 95% of memory (rss 9600000/10000000 bytes)",
            ]
        );
        assert!(!stats.iter().any(|l| l.contains("9600000")), "{stats:?}");
        assert_eq!(totals.max_memory.get("rss"), Some(9_600_000));
    }

    #[test]
    fn a_cgroup_gone_before_the_first_reading_gives_no_figures() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v2_tree(tmp.path());
        let config = config(&roots, 1115883, Duration::from_secs(10));
        fs::remove_dir_all(tmp.path().join("sys/fs/cgroup/user.slice")).unwrap();
        let (stats, alerts, totals) = run(config, |_| panic!("waited"));
        assert!(stats.is_empty() && alerts.is_empty(), "{stats:?}");
        assert_eq!(totals, Totals::default());
    }

    #[test]
    fn statfs_procmem_and_notices_with_the_real_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v1_tree(tmp.path());
        let mut config = config(&roots, 2523, Duration::from_millis(20));
        config.disk = Some(tmp.path().to_path_buf());
        config.roots = Roots {
            proc: PathBuf::from("/proc"),
            ..roots.clone()
        };
        let (lines, sink) = collector();
        let sampler = Sampler::start(config, sink, |_: &str| {}).unwrap();
        sampler.report_process("self", std::process::id());
        thread::sleep(Duration::from_millis(120));
        let totals = sampler.stop();
        let lines = lines.lock().unwrap().clone();
        let notice = format!("notice: monitoring temp dir {}", tmp.path().display());
        assert!(lines.contains(&notice), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("using ") && l.ends_with("/memory.stat"))
        );
        let statfs = lines.iter().filter(|l| l.starts_with("statfs ")).count();
        assert!(statfs >= 2, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("procmem ") && l.ends_with(" self"))
        );
        assert!(totals.process_rss["self"] > 0);
        assert!(totals.max_disk.unwrap().total > 0);
    }

    #[test]
    fn dropping_the_sampler_stops_its_thread() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v1_tree(tmp.path());
        let (lines, sink) = collector();
        let config = config(&roots, 2523, Duration::from_secs(3600));
        let started = Instant::now();
        drop(Sampler::start(config, sink, |_: &str| {}).unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
        // the first report, and the last reading at stop
        let lines = lines.lock().unwrap();
        assert_eq!(lines.iter().filter(|l| l.starts_with("cpu ")).count(), 2);
    }
}
