//! Being a good citizen of a Slurm job (crunch-dispatch-slurm runs crunch-run as a batch
//! job's script). Two things Slurm and docker leave undone:
//!
//! - Slurm kills a job by signalling the processes in its cgroups; the docker container is
//!   dockerd's child, in none of them, and outlives the kill. The guard process removes it
//!   when crunch-run dies, but only if the same SIGKILL did not reach the guard too: so the
//!   guard leaves the job's cgroups for the root ones ([`SlurmJob::release`]).
//! - With `-cgroup-parent-subsystem`, docker creates the parent path in every hierarchy
//!   and nobody removes it: [`ContainerCgroups::remove_empty`] does, once the container is
//!   gone, never above the job's own directory.
//!
//! Only cgroup files are touched here, through `cgroup`'s view of the mounts. When to do it
//! is run/'s and the guard's call; the operator's Epilog (contrib/slurm-epilog.sh) covers
//! what cannot be done here (crunch-run not root).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cgroup::{CgroupError, CgroupMounts, Pid, Roots, join_cgroup_path, parse_memberships};

/// The Slurm job crunch-run runs in (`SLURM_JOB_ID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    id: String,
}

/// Why a process could not leave the job's cgroups. Each failure names the hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum LeaveError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{}", .0.join("; "))]
    Moves(Vec<String>),
}

impl SlurmJob {
    /// The job of this id; `None` unless it is a number, as Slurm's are.
    pub fn new(id: &str) -> Option<SlurmJob> {
        let numeric = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
        numeric.then(|| SlurmJob { id: id.to_string() })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name of the job's directory in each hierarchy Slurm constrains.
    fn dir_name(&self) -> String {
        format!("job_{}", self.id)
    }

    /// Whether the cgroup `path` is the job's or below it.
    fn contains(&self, path: &str) -> bool {
        let name = self.dir_name();
        path.split('/').any(|part| part == name)
    }

    /// Move process `pid` into the root cgroup of every hierarchy in which it sits inside
    /// this job, so that Slurm's kill of the job (which signals the processes in its
    /// cgroups) does not reach it. Returns the hierarchies it left (none when Slurm does not
    /// track jobs by cgroup). Needs root; every hierarchy is tried even after a failure.
    pub fn release(&self, roots: &Roots, pid: u32) -> Result<Vec<String>, LeaveError> {
        let listed = roots.proc_dir(Pid::Of(pid)).join("cgroup");
        let text = fs::read_to_string(&listed).map_err(|source| CgroupError::Read {
            path: listed.clone(),
            source,
        })?;
        let mounts = CgroupMounts::discover(roots);
        let (mut left, mut failures) = (Vec::new(), Vec::new());
        for line in parse_memberships(&text) {
            if !self.contains(&line.path) {
                continue;
            }
            let name = match line.controllers.is_empty() {
                true => "unified".to_string(),
                false => line.controllers.join(","),
            };
            let moved = match mounts.mount_of(&line) {
                Some(top) => fs::write(top.join("cgroup.procs"), pid.to_string()),
                None => Err(io::Error::other("hierarchy not mounted")),
            };
            match moved {
                Ok(()) => left.push(name),
                Err(e) => failures.push(format!("{name}:{}: {e}", line.path)),
            }
        }
        match failures.is_empty() {
            true => Ok(left),
            false => Err(LeaveError::Moves(failures)),
        }
    }
}

/// The cgroup directories docker makes for a container whose `--cgroup-parent` is inside a
/// Slurm job: the parent path, in every hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroups {
    job: SlurmJob,
    parent: String,
}

impl ContainerCgroups {
    /// `None` when `parent` is not inside `job`: above the job's directory the paths are
    /// shared with other jobs, and nothing tells which directories are ours.
    pub fn new(job: SlurmJob, parent: &str) -> Option<ContainerCgroups> {
        job.contains(parent).then(|| ContainerCgroups {
            job,
            parent: parent.to_string(),
        })
    }

    pub fn parent(&self) -> &str {
        &self.parent
    }

    pub fn job(&self) -> &SlurmJob {
        &self.job
    }

    /// Once the container is gone: in every hierarchy, remove the parent directory and its
    /// ancestors up to and including the job's, deepest first, stopping at the first that
    /// cannot go (still in use — crunch-run's own cgroup while it lives — or never made).
    /// Returns how many were removed.
    pub fn remove_empty(&self, roots: &Roots) -> usize {
        let mounts = CgroupMounts::discover(roots);
        mounts
            .points()
            .map(|top| self.remove_in(top, &join_cgroup_path(top, &self.parent)))
            .sum()
    }

    fn remove_in(&self, top: &Path, deepest: &Path) -> usize {
        let job_dir = self.job.dir_name();
        let mut removed = 0;
        let mut at: PathBuf = deepest.to_path_buf();
        while at.starts_with(top) && at != top && fs::remove_dir(&at).is_ok() {
            removed += 1;
            if at.file_name().is_some_and(|name| *name == *job_dir) || !at.pop() {
                break;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::tests::write_tree;

    /// A Slurm batch job's /proc/<pid>/cgroup on a cgroup v1 host (proctrack/cgroup,
    /// task/cgroup), as measured on Debian 12 with slurm-wlm 22.05.
    const JOB_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n7:blkio:/\n\
        6:freezer:/slurm_vm/uid_0/job_17/step_batch\n5:devices:/\n\
        4:memory:/slurm_vm/uid_0/job_17/step_batch/task_0\n\
        3:cpuset:/slurm_vm/uid_0/job_17/step_batch\n2:cpu,cpuacct:/\n0::/\n";
    const MOUNTS: &str = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
        cgroup /sys/fs/cgroup/systemd cgroup rw,xattr,name=systemd 0 0\n\
        cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n\
        cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n\
        cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
        cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n";

    fn job() -> SlurmJob {
        SlurmJob::new("17").unwrap()
    }

    fn host(cgroup: &str) -> (tempfile::TempDir, Roots) {
        let tmp = tempfile::tempdir().unwrap();
        write_tree(
            tmp.path(),
            &[("proc/mounts", MOUNTS), ("proc/4242/cgroup", cgroup)],
        );
        for hierarchy in ["unified", "systemd", "pids", "freezer", "memory", "cpuset"] {
            write_tree(
                tmp.path(),
                &[(&format!("sys/fs/cgroup/{hierarchy}/cgroup.procs"), "")],
            );
        }
        let roots = Roots::under(tmp.path());
        (tmp, roots)
    }

    fn procs(roots: &Roots, hierarchy: &str) -> String {
        fs::read_to_string(roots.cgroup.join(hierarchy).join("cgroup.procs")).unwrap()
    }

    #[test]
    fn only_numbers_are_job_ids() {
        assert_eq!(job().id(), "17");
        for bad in ["", "17a", "../1", "-1"] {
            assert_eq!(SlurmJob::new(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn release_moves_the_process_to_the_root_of_the_jobs_hierarchies_only() {
        let (_tmp, roots) = host(JOB_CGROUP);
        let left = job().release(&roots, 4242).unwrap();
        assert_eq!(left, ["freezer", "memory", "cpuset"]);
        for hierarchy in ["freezer", "memory", "cpuset"] {
            assert_eq!(procs(&roots, hierarchy), "4242", "{hierarchy}");
        }
        for hierarchy in ["unified", "systemd", "pids"] {
            assert_eq!(procs(&roots, hierarchy), "", "{hierarchy}");
        }
    }

    #[test]
    fn release_outside_the_job_moves_nothing() {
        // Another job's cgroups, or a Slurm that tracks jobs without cgroups.
        let (_tmp, roots) = host(&JOB_CGROUP.replace("job_17", "job_171"));
        assert!(job().release(&roots, 4242).unwrap().is_empty());
        assert_eq!(procs(&roots, "freezer"), "");
    }

    #[test]
    fn release_tries_every_hierarchy_and_names_each_failure() {
        let (_tmp, roots) = host(JOB_CGROUP);
        // As when the write is refused (not root): here cgroup.procs is a directory.
        let memory_procs = roots.cgroup.join("memory/cgroup.procs");
        fs::remove_file(&memory_procs).unwrap();
        fs::create_dir(&memory_procs).unwrap();
        let err = job().release(&roots, 4242).unwrap_err().to_string();
        assert!(
            err.starts_with("memory:/slurm_vm/uid_0/job_17/step_batch/task_0: "),
            "{err}"
        );
        assert_eq!(procs(&roots, "freezer"), "4242");
        assert_eq!(procs(&roots, "cpuset"), "4242");
        let (_tmp, roots) = host(JOB_CGROUP);
        let err = job().release(&roots, 999).unwrap_err().to_string();
        assert!(err.contains("999/cgroup"), "{err}");
    }

    #[test]
    fn container_cgroups_only_inside_the_job() {
        let parent = "/slurm_vm/uid_0/job_17/step_batch/task_0";
        let dirs = ContainerCgroups::new(job(), parent).unwrap();
        assert_eq!(dirs.parent(), parent);
        assert_eq!(dirs.job(), &job());
        for outside in ["/slurm_vm/uid_0", "/slurm_vm/uid_0/job_171/step_batch", "/"] {
            assert_eq!(ContainerCgroups::new(job(), outside), None, "{outside}");
        }
    }

    #[test]
    fn remove_empty_goes_up_to_the_job_and_stops_at_what_is_in_use() {
        let (_tmp, roots) = host(JOB_CGROUP);
        let parent = "/slurm_vm/uid_0/job_17/step_batch/task_0";
        let cg = |hierarchy: &str, path: &str| roots.cgroup.join(hierarchy).join(path);
        for hierarchy in ["pids", "systemd", "unified", "freezer", "memory"] {
            fs::create_dir_all(cg(hierarchy, &parent[1..])).unwrap();
        }
        // Still in use: the memory cgroup crunch-run is in (here: holds a file, so rmdir
        // fails as it does on EBUSY); another job's directory beside ours.
        fs::write(cg("memory", &parent[1..]).join("tasks"), "1").unwrap();
        fs::create_dir_all(cg("pids", "slurm_vm/uid_0/job_18")).unwrap();
        let removed = ContainerCgroups::new(job(), parent)
            .unwrap()
            .remove_empty(&roots);
        // pids, systemd, unified, freezer: task_0, step_batch, job_17 each; memory: none;
        // cpuset: never made.
        assert_eq!(removed, 12);
        for hierarchy in ["pids", "systemd", "unified", "freezer"] {
            assert!(
                !cg(hierarchy, "slurm_vm/uid_0/job_17").exists(),
                "{hierarchy}"
            );
            assert!(cg(hierarchy, "slurm_vm/uid_0").is_dir(), "{hierarchy}");
        }
        assert!(cg("memory", &parent[1..]).is_dir());
        assert!(cg("pids", "slurm_vm/uid_0/job_18").is_dir());
    }
}
