//! hoststat: the crunchstat sampler pointed at the host rather than the container, with
//! crunch-run's own resident set in a `procmem` line (and arv-mount's and keepstore's, once
//! the caller names them with [`Sampler::report_process`]).
//!
//! "The host" is either crunch-run's own cgroup (under Slurm, the job's: the container's
//! cgroup parent when `-cgroup-parent-subsystem` is used) or the top of every hierarchy
//! (the whole machine).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::LineSink;
use super::sampler::{Sampler, SamplerConfig};
use crate::cgroup::{CgroupError, Pid, ProcessCgroup, Roots};

/// Which cgroup hoststat samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostScope {
    /// crunch-run's own cgroup.
    OwnCgroup,
    /// The root of every hierarchy.
    Root,
}

/// The sampler settings for hoststat: network figures from crunch-run's own namespace, disk
/// space of `disk` if given.
pub fn host_config(
    roots: Roots,
    scope: HostScope,
    interval: Duration,
    disk: Option<PathBuf>,
) -> Result<SamplerConfig, CgroupError> {
    let own = ProcessCgroup::find(&roots, Pid::Current)?;
    let cgroup = match scope {
        HostScope::OwnCgroup => own,
        HostScope::Root => own.at_roots(),
    };
    let mut config = SamplerConfig::new(cgroup, roots, interval);
    config.disk = disk;
    config.name = "hoststat".to_string();
    Ok(config)
}

/// Start hoststat, reporting crunch-run's own resident set as `crunch-run`.
pub fn start(config: SamplerConfig, stats: impl LineSink + 'static) -> io::Result<Sampler> {
    let sampler = Sampler::start(config, stats, |_: &str| {})?;
    sampler.report_process("crunch-run", std::process::id());
    Ok(sampler)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::{Arc, Mutex};
    use std::thread;

    use super::*;
    use crate::crunchstat::files::tests::v1_tree;

    #[test]
    fn scopes_pick_own_cgroup_or_the_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v1_tree(tmp.path());
        let proc = tmp.path().join("proc");
        fs::create_dir_all(proc.join("self")).unwrap();
        fs::copy(proc.join("2523/cgroup"), proc.join("self/cgroup")).unwrap();
        let base = tmp.path().join("sys/fs/cgroup");

        let own = host_config(
            roots.clone(),
            HostScope::OwnCgroup,
            Duration::from_secs(1),
            None,
        );
        let own = own.unwrap();
        assert_eq!(own.name, "hoststat");
        assert_eq!(own.cgroup.pid, Pid::Current);
        let memory = own.cgroup.v1_dir("memory");
        assert_eq!(memory, Some(base.join("memory/user.slice").as_path()));

        let disk = Some(tmp.path().to_path_buf());
        let root = host_config(roots, HostScope::Root, Duration::from_secs(1), disk.clone());
        let root = root.unwrap();
        assert_eq!(
            root.cgroup.v1_dir("memory"),
            Some(base.join("memory").as_path())
        );
        assert_eq!(root.disk, disk);
    }

    #[test]
    fn hoststat_of_this_host_reports_crunch_run_itself() {
        for scope in [HostScope::OwnCgroup, HostScope::Root] {
            let config = host_config(Roots::host(), scope, Duration::from_millis(30), None);
            let lines = Arc::new(Mutex::new(Vec::<String>::new()));
            let sink = Arc::clone(&lines);
            let push = move |l: &str| sink.lock().unwrap().extend(l.split('\n').map(String::from));
            let sampler = start(config.unwrap(), push).unwrap();
            thread::sleep(Duration::from_millis(100));
            let totals = sampler.stop();
            let lines = lines.lock().unwrap();
            assert!(lines.iter().any(|l| l.starts_with("mem ")), "{lines:?}");
            assert!(lines.iter().any(|l| l.starts_with("cpu ")), "{lines:?}");
            let procmem = lines.iter().find(|l| l.starts_with("procmem ")).unwrap();
            assert!(procmem.ends_with(" crunch-run"), "{procmem}");
            let max = totals.process_maxima_lines();
            assert_eq!(max.len(), 1);
            assert!(max[0].starts_with("Maximum crunch-run memory rss usage was "));
        }
    }
}
