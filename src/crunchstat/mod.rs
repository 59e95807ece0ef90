//! crunchstat: resource usage of a cgroup (the container's, or the host's for hoststat),
//! sampled on a thread and written as lines in the format of Go's crunchstat, which
//! `crunchstat-summary` reads; plus the memory warnings and end-of-run totals that go into
//! crunch-run.txt.
//!
//! One job per module: `parse` reads the text of cgroup and /proc files, `files` finds a
//! cgroup's files and reads a sample from them, `report` turns samples into lines and
//! totals, `sampler` is the thread, `hoststat` sets it up for the host. Finding the cgroup
//! is `crate::cgroup`'s job; timestamping the lines and storing them is the log pipeline's:
//! lines reach it through a [`LineSink`].
//!
//! Wiring, in short:
//!
//! ```text
//! let cgroup = ProcessCgroup::find(&Roots::host(), Pid::Of(container_pid))?;
//! let mut config = SamplerConfig::new(cgroup, Roots::host(), interval);
//! config.disk = Some(temp_dir);
//! config.thresholds = Thresholds::percentages(ram, &[90, 95, 99]);
//! let sampler = Sampler::start(config, crunchstat_stream, crunch_log)?;
//! … container exits …
//! for line in sampler.stop().maxima_lines(Some(ram)) { crunch_log.line(&line) }
//! ```

pub mod files;
pub mod hoststat;
pub mod parse;
pub mod report;
pub mod sampler;

pub use files::{DiskSpace, Sample, StatFiles};
pub use report::{Reporter, Thresholds, Totals};
pub use sampler::{Pacer, RealPacer, Sampler, SamplerConfig};

/// Where a stream of lines goes (a log stream that timestamps them). Each call is one line,
/// or several joined by `\n` (a whole report), without the last `\n`.
pub trait LineSink: Send {
    fn line(&mut self, line: &str);
}

impl<F: FnMut(&str) + Send> LineSink for F {
    fn line(&mut self, line: &str) {
        self(line)
    }
}

impl LineSink for Box<dyn LineSink> {
    fn line(&mut self, line: &str) {
        (**self).line(line)
    }
}
