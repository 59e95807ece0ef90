//! crunchstat and hoststat in a run: where `crate::crunchstat` is plugged into the lifecycle.
//!
//! - **hoststat** samples crunch-run's own cgroup from before the image load (Go starts it
//!   right after its signal handler) to the wrap-up, into hoststat.txt, with crunch-run's
//!   resident set in its `procmem` lines, and any process named with `report_process`
//!   (arv-mount, once it runs). Its own cgroup rather than the host's root, as today's Go
//!   (reference §5.2; Go before its cgroup v2 work read the roots): under Slurm that is the
//!   job's cgroup (crunch-run, arv-mount and, with a cgroup parent, the container: what the
//!   job is charged for); on a cloud node it is the service's, where the root would also
//!   count whatever else the machine runs. `stop_hoststat` puts crunch-run's maximum
//!   resident set into crunch-run.txt.
//! - **crunchstat** samples the container's cgroup into crunchstat.txt. A supervisor helper
//!   (`watch_container`) asks the engine for the container's PID on a thread of its own,
//!   once a second from a second after `docker start` started (as often as the sampler
//!   reads), so that a short container does not pay for docker clients it never needed,
//!   and the helper's stop never waits for one. Once found, the sampler runs until the
//!   client exits: memory warnings go to crunch-run.txt as they come, the totals after the
//!   container's exit lines (`say_container_totals`). A cgroup gone by then is fine: the
//!   sampler keeps what it saw.
//!
//! Reading the cgroup files and wording the lines are `crate::crunchstat`'s; finding a
//! cgroup, `crate::cgroup`'s; timestamping and storing the lines, the log pipeline's.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cgroup::{CgroupError, Pid, ProcessCgroup, Roots};
use crate::crunchstat::hoststat::{self, HostScope};
use crate::crunchstat::{Sampler, SamplerConfig, Thresholds, Totals};
use crate::logging::pipeline::{LogPipeline, LogStream};

use super::ContainerRun;
use super::engine::Engine;
use super::supervisor::{Stop, Supervisor};

/// How often the container's PID is asked for (never more often than the interval), the
/// first time this long after `docker start` started. A container that ends sooner would
/// give the sampler nothing worth a docker client: each ask costs ~10 ms of CPU on the
/// run's critical path (asking from 100 ms on made `echo hello` 1.07x slower in `make
/// bench`, and never found the container running).
const PID_ASK_EVERY: Duration = crate::crunchstat::sampler::TICK;

/// The memory warnings, in percent of the record's `ram` (Go's).
const MEMORY_WARNINGS: [u32; 3] = [90, 95, 99];

/// The resource statistics of one run.
pub(super) struct ResourceStats {
    /// Where /proc and the cgroup filesystems are (a fixture tree in tests).
    roots: Roots,
    hoststat: Option<Sampler>,
    /// The record's `ram`, once known: the memory warnings, and the maximum's percentage.
    pub ram: Option<u64>,
    /// The container's totals, left there by the crunchstat helper when it stops.
    container_totals: Arc<Mutex<Option<Totals>>>,
}

impl ResourceStats {
    pub fn new(roots: Roots) -> ResourceStats {
        ResourceStats {
            roots,
            hoststat: None,
            ram: None,
            container_totals: Arc::default(),
        }
    }

    fn ram(&self) -> Option<i64> {
        self.ram
            .and_then(|ram| i64::try_from(ram).ok())
            .filter(|ram| *ram > 0)
    }
}

fn lock<T>(slot: &Mutex<T>) -> MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl ContainerRun<'_> {
    /// Start hoststat, unless `-crunchstat-interval` is 0. A failure is a warning: the run
    /// goes on without.
    pub(super) fn start_hoststat(&mut self, pipeline: &LogPipeline) {
        let Some(interval) = self.config.crunchstat_interval else {
            return;
        };
        let roots = self.stats.roots.clone();
        let started = hoststat::host_config(roots, HostScope::OwnCgroup, interval, None)
            .map_err(|e| e.to_string())
            .and_then(|config| {
                let stream = pipeline.stream("hoststat").map_err(|e| e.to_string())?;
                hoststat::start(config, move |line: &str| stream.line(line))
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok(sampler) => self.stats.hoststat = Some(sampler),
            Err(e) => self.say(&format!("Warning: no hoststat: {e}")),
        }
    }

    /// Report `name`'s resident set in hoststat's `procmem` lines from now on (Go's
    /// `ReportPID`): for arv-mount, or any helper process crunch-run starts.
    pub(super) fn report_process(&self, name: &str, pid: u32) {
        if let Some(hoststat) = &self.stats.hoststat {
            hoststat.report_process(name, pid);
        }
    }

    /// Stop hoststat (its last reading is reported) and say crunch-run's maximum resident
    /// set, and that of the other processes it reported.
    pub(super) fn stop_hoststat(&mut self) {
        if let Some(hoststat) = self.stats.hoststat.take() {
            for line in hoststat.stop().process_maxima_lines() {
                self.say(&line);
            }
        }
    }

    /// Add the crunchstat helper to a run's supervisor, unless `-crunchstat-interval` is 0.
    /// crunchstat.txt is opened now, so that it is there even if the container is gone
    /// before its process is found.
    pub(super) fn watch_container(&self, supervisor: &mut Supervisor, pipeline: &LogPipeline) {
        let Some(interval) = self.config.crunchstat_interval else {
            return;
        };
        let stream = match pipeline.stream("crunchstat") {
            Ok(stream) => stream,
            Err(e) => return self.say(&format!("Warning: no crunchstat: {e}")),
        };
        let watch = ContainerWatch {
            engine: self.engine.clone(),
            name: self.uuid.clone(),
            roots: self.stats.roots.clone(),
            interval,
            disk: self.run_dir.clone(),
            ram: self.stats.ram(),
            stream,
            say: Arc::new(self.sayer()),
            totals: self.stats.container_totals.clone(),
        };
        supervisor.spawn("crunchstat", move |stop| watch.run(stop));
    }

    /// Say the container's totals (CPU, memory maximum, disk I/O, network), once the
    /// crunchstat helper has stopped; nothing if it never found the container's process.
    pub(super) fn say_container_totals(&self) {
        let totals = lock(&self.stats.container_totals).take();
        for line in totals
            .map(|t| t.maxima_lines(self.stats.ram()))
            .unwrap_or_default()
        {
            self.say(&line);
        }
    }
}

/// Says a line in crunch-run.txt, from any thread.
type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// What the crunchstat helper needs, moved onto its thread.
struct ContainerWatch {
    engine: Arc<dyn Engine>,
    name: String,
    roots: Roots,
    interval: Duration,
    /// Whose filesystem's space is reported: the run's directory, where the mounts are.
    disk: PathBuf,
    ram: Option<i64>,
    stream: LogStream,
    say: Say,
    totals: Arc<Mutex<Option<Totals>>>,
}

impl ContainerWatch {
    fn run(self, stop: Stop) {
        let Some(pid) = self.find_pid(&stop) else {
            self.stream
                .line("notice: the container ended before its process was found");
            return;
        };
        let cgroup = match ProcessCgroup::find(&self.roots, Pid::Of(pid)) {
            Ok(cgroup) => cgroup,
            // The process has exited already.
            Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return;
            }
            Err(e) => return (self.say)(&format!("Warning: no crunchstat: {e}")),
        };
        let mut config = SamplerConfig::new(cgroup, self.roots, self.interval);
        config.name = "crunchstat-sampler".into();
        config.disk = Some(self.disk);
        if let Some(ram) = self.ram {
            config.thresholds = Thresholds::percentages(ram, &MEMORY_WARNINGS);
        }
        let (stream, alerts) = (self.stream, self.say.clone());
        let sink = move |line: &str| stream.line(line);
        let sampler = match Sampler::start(config, sink, move |line: &str| alerts(line)) {
            Ok(sampler) => sampler,
            Err(e) => return (self.say)(&format!("Warning: cannot start crunchstat: {e}")),
        };
        // Only the stop comes: the channel's sender is dropped, never used.
        let _ = stop.channel().recv();
        *lock(&self.totals) = Some(sampler.stop());
    }

    /// The container's PID, asked for on a thread of its own; `None` if the stop came first.
    fn find_pid(&self, stop: &Stop) -> Option<u32> {
        let (found, pid) = crossbeam_channel::bounded(1);
        let (engine, name, asking) = (self.engine.clone(), self.name.clone(), stop.clone());
        let interval = self.interval;
        let say = self.say.clone();
        let spawned = std::thread::Builder::new()
            .name("crunchstat-pid".into())
            .spawn(move || {
                let every = PID_ASK_EVERY.min(interval);
                if let Some(pid) = ask_for_pid(&*engine, &name, every, &asking, &*say) {
                    let _ = found.send(pid);
                }
            });
        if let Err(e) = spawned {
            (self.say)(&format!(
                "Warning: no crunchstat: cannot start a thread: {e}"
            ));
            return None;
        }
        crossbeam_channel::select! {
            recv(stop.channel()) -> _ => None,
            recv(pid) -> pid => pid.ok(),
        }
    }
}

/// Ask the engine for the container's PID `every` so often until it has one or the stop
/// comes. The first failure is said; an engine in trouble is the watchdog's to judge.
fn ask_for_pid(
    engine: &dyn Engine,
    name: &str,
    every: Duration,
    stop: &Stop,
    say: &dyn Fn(&str),
) -> Option<u32> {
    let mut said = false;
    loop {
        if stop.wait(every) {
            return None;
        }
        match engine.container_pid(name) {
            Ok(Some(pid)) => return Some(pid),
            Ok(None) => {}
            Err(e) if !said => {
                said = true;
                say(&format!(
                    "Warning: crunchstat cannot ask for the container's process yet: {e}"
                ));
            }
            Err(_) => {}
        }
    }
}
