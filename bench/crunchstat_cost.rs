//! The CPU cost of crunchstat, per sample, on this host's real cgroups: for `make bench`.
//!
//!     cargo run --release --example crunchstat-cost [-- PID|self|root [SAMPLES]]
//!
//! Reads the cgroup of PID (default: this process; `root`: the top of every hierarchy)
//! SAMPLES times (default 10000). A "tick" is what the sampler does every second (read
//! and take in a sample); a "report" is what it does every interval besides (format the
//! lines, `statfs` the temp dir, `procmem` of this process). Prints CPU time (user + sys,
//! from getrusage) per tick and per report.

use std::time::{Duration, Instant};

use crunch_run::cgroup::{Pid, ProcessCgroup, Roots};
use crunch_run::crunchstat::files::{disk_space, process_rss};
use crunch_run::crunchstat::{Reporter, StatFiles};

fn cpu_time() -> Duration {
    // SAFETY: getrusage(2) writes only into `usage`, for which all-zero bytes are valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time and wall time of `samples` runs of `work`, per run.
fn measure(samples: u32, mut work: impl FnMut()) -> (Duration, Duration) {
    let (cpu, wall) = (cpu_time(), Instant::now());
    for _ in 0..samples {
        work();
    }
    ((cpu_time() - cpu) / samples, wall.elapsed() / samples)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "self".to_string());
    let samples: u32 = args.next().map_or(Ok(10_000), |s| s.parse())?;
    let roots = Roots::host();
    let pid = match target.as_str() {
        "self" | "root" => Pid::Current,
        n => Pid::Of(n.parse()?),
    };
    let mut cgroup = ProcessCgroup::find(&roots, pid)?;
    if target == "root" {
        cgroup = cgroup.at_roots();
    }
    let files = StatFiles::find(&cgroup, &roots);
    let files_read: Vec<_> = files.paths().collect();
    let tmp = std::env::temp_dir();
    let mut reporter = Reporter::default();
    let (tick_cpu, tick_wall) = measure(samples, || {
        let sample = files.read(1.0);
        reporter.observe(&sample);
    });
    let (report_cpu, report_wall) = measure(samples, || {
        let sample = files.read(1.0);
        reporter.observe(&sample);
        let procmem = process_rss(&roots, std::process::id(), 4096).unwrap_or(0);
        let procmem = [("crunch-run".to_string(), procmem)];
        let lines = reporter.report(Instant::now(), &sample, &procmem, disk_space(&tmp));
        std::hint::black_box(lines);
    });
    println!(
        "crunchstat cost ({target}, {} files, {samples} samples): tick {:.1} us CPU ({:.1} us wall), \
         report {:.1} us CPU ({:.1} us wall); at 1 tick/s that is {:.4}% of one CPU",
        files_read.len(),
        tick_cpu.as_secs_f64() * 1e6,
        tick_wall.as_secs_f64() * 1e6,
        report_cpu.as_secs_f64() * 1e6,
        report_wall.as_secs_f64() * 1e6,
        tick_cpu.as_secs_f64() * 100.0,
    );
    Ok(())
}
