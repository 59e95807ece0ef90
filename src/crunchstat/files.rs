//! Which files hold a cgroup's figures, found once when sampling starts, and the reading of
//! one [`Sample`] from them.
//!
//! A v1 controller hierarchy the process is in wins over the unified one: on a hybrid host
//! the controllers live in v1 and the unified tree has only its core files (Go's crunchstat
//! prefers the unified `cpu.stat`, which there counts a wider cgroup). Each file is looked
//! for in the process's directory and then up to the mount point, as Go does. Statistics
//! whose file is missing are left out; what to do with them is `report`'s job.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::parse::{self, CpuTimes, IoCount, Memory};
use crate::cgroup::{Pid, ProcessCgroup, Roots};

/// How a file's text becomes part of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MemoryStat,
    MemoryCurrent,
    SwapCurrent,
    CpuacctStat,
    CpuStat,
    Cpuset,
    CpuMax,
    CfsQuota,
    BlkioServiceBytes,
    IoStat,
}

/// The files of one cgroup that crunchstat reads, with what each holds.
#[derive(Debug, Clone, Default)]
pub struct StatFiles {
    files: Vec<(Kind, PathBuf)>,
    /// `cpu.cfs_period_us`, beside `cpu.cfs_quota_us`.
    cfs_period: Option<PathBuf>,
    /// `/proc/<pid>/net/dev`: the interfaces of the process's network namespace.
    net_dev: Option<PathBuf>,
}

/// Everything read from a cgroup at one time (but disk space, which is about a directory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub memory: Memory,
    pub cpu: Option<CpuTimes>,
    /// CPUs available: cpuset size, lowered by a CPU quota; `None` if neither is known.
    pub cpus: Option<f64>,
    /// Per device (`maj:min`): bytes written and read.
    pub blkio: BTreeMap<String, IoCount>,
    /// Per interface, in `/proc/<pid>/net/dev` order: bytes sent and received.
    pub net: Vec<(String, IoCount)>,
}

impl Sample {
    /// Nothing came from the cgroup's memory and CPU files: the cgroup is gone (or was
    /// never readable).
    pub fn cgroup_gone(&self) -> bool {
        self.memory.is_empty() && self.cpu.is_none()
    }
}

/// One candidate file: in which directory to start looking, its name, what it holds.
type Candidate<'a> = (Option<&'a Path>, &'static str, Kind);

impl StatFiles {
    /// Find the files for `cgroup`. The v1 directory of a controller is preferred over the
    /// unified one; within a group of candidates for the same figure, the first found wins.
    pub fn find(cgroup: &ProcessCgroup, roots: &Roots) -> StatFiles {
        let v1 = |controller| cgroup.v1_dir(controller);
        let unified = cgroup.unified_dir();
        let unless_v1 = |controller| match v1(controller) {
            Some(_) => None,
            None => unified,
        };
        let (v2_memory, v2_cpu) = (unless_v1("memory"), unless_v1("cpuacct"));
        let groups: [&[Candidate]; 7] = [
            &[
                (v1("memory"), "memory.stat", Kind::MemoryStat),
                (v2_memory, "memory.stat", Kind::MemoryStat),
            ],
            &[(v2_memory, "memory.current", Kind::MemoryCurrent)],
            &[(v2_memory, "memory.swap.current", Kind::SwapCurrent)],
            &[
                (v1("cpuacct"), "cpuacct.stat", Kind::CpuacctStat),
                (v2_cpu, "cpu.stat", Kind::CpuStat),
            ],
            &[
                (cgroup.cpuset_dir(), "cpuset.cpus.effective", Kind::Cpuset),
                (cgroup.cpuset_dir(), "cpuset.cpus", Kind::Cpuset),
            ],
            &[
                (v1("cpu"), "cpu.cfs_quota_us", Kind::CfsQuota),
                (v2_cpu, "cpu.max", Kind::CpuMax),
            ],
            &[
                // the throttle file first: on ubuntu1804 the other one exists but says 0
                (
                    v1("blkio"),
                    "blkio.throttle.io_service_bytes",
                    Kind::BlkioServiceBytes,
                ),
                (
                    v1("blkio"),
                    "blkio.io_service_bytes",
                    Kind::BlkioServiceBytes,
                ),
                (unless_v1("blkio"), "io.stat", Kind::IoStat),
            ],
        ];
        let mut found = StatFiles::default();
        for group in groups {
            let first = group.iter().find_map(|(dir, name, kind)| {
                let (path, _) = cgroup.find_file((*dir)?, name)?;
                Some((*kind, path))
            });
            found.files.extend(first);
        }
        found.cfs_period = found
            .path(Kind::CfsQuota)
            .map(|quota| quota.with_file_name("cpu.cfs_period_us"));
        let net_dev = roots.proc_dir(cgroup.pid).join("net/dev");
        found.net_dev = fs::metadata(&net_dev).is_ok().then_some(net_dev);
        found
    }

    fn path(&self, kind: Kind) -> Option<&Path> {
        self.files
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_path())
    }

    /// Every file in use, for the `using <path>` notices.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        let files = self.files.iter().map(|(_, p)| p.as_path());
        files
            .chain(self.cfs_period.as_deref())
            .chain(self.net_dev.as_deref())
    }

    /// Read every file once. `host_cpus` stands for the cpuset when there is none.
    pub fn read(&self, host_cpus: f64) -> Sample {
        let mut sample = Sample::default();
        let (mut cpuset, mut quota) = (None, None);
        for (kind, path) in &self.files {
            let Ok(text) = fs::read_to_string(path) else {
                continue;
            };
            match kind {
                Kind::MemoryStat => {
                    let stat = parse::memory_stat(&text);
                    for (slot, value) in sample.memory.0.iter_mut().zip(stat.0) {
                        *slot = slot.or(value);
                    }
                }
                Kind::MemoryCurrent => set_number(&mut sample.memory, "rss", &text),
                Kind::SwapCurrent => set_number(&mut sample.memory, "swap", &text),
                Kind::CpuacctStat => sample.cpu = parse::cpuacct_stat(&text),
                Kind::CpuStat => sample.cpu = parse::cpu_stat(&text),
                Kind::Cpuset => cpuset = parse::cpuset_count(&text).map(f64::from),
                Kind::CpuMax => quota = parse::cpu_max(&text),
                Kind::CfsQuota => quota = self.cfs_quota(&text),
                Kind::BlkioServiceBytes => sample.blkio = parse::blkio_service_bytes(&text),
                Kind::IoStat => sample.blkio = parse::io_stat(&text),
            }
        }
        if sample.cpu.is_some() {
            let available = cpuset.unwrap_or(host_cpus);
            sample.cpus = Some(quota.map_or(available, |q| q.min(available)));
        }
        if let Some(text) = self
            .net_dev
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
        {
            sample.net = parse::net_dev(&text);
        }
        sample
    }

    fn cfs_quota(&self, quota: &str) -> Option<f64> {
        let period = fs::read_to_string(self.cfs_period.as_ref()?).ok()?;
        parse::cpu_quota(quota, &period)
    }
}

/// Disk space of a filesystem, in bytes, as `statfs` gives it (blocks of `f_bsize`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskSpace {
    pub available: u64,
    pub used: u64,
    pub total: u64,
}

/// The disk space of the filesystem that holds `path` (`None` if it cannot be had).
// fsblkcnt_t is u64 here but narrower on some targets: keep the conversions.
#[allow(clippy::useless_conversion)]
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs(2) writes only into `buf`, a plain C struct for which all-zero bytes
    // are a valid value; `path` is a NUL-terminated string that outlives the call.
    let buf = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        if libc::statfs(path.as_ptr(), &mut buf) != 0 {
            return None;
        }
        buf
    };
    let block = u64::try_from(buf.f_bsize).ok()?;
    let (blocks, free) = (u64::from(buf.f_blocks), u64::from(buf.f_bfree));
    Some(DiskSpace {
        available: u64::from(buf.f_bavail).checked_mul(block)?,
        used: blocks.saturating_sub(free).checked_mul(block)?,
        total: blocks.checked_mul(block)?,
    })
}

/// The resident set of process `pid`, in bytes, from `/proc/<pid>/stat`.
pub fn process_rss(roots: &Roots, pid: u32, page_size: i64) -> Option<i64> {
    let text = fs::read_to_string(roots.proc_dir(Pid::Of(pid)).join("stat")).ok()?;
    parse::proc_stat_rss_pages(&text)?.checked_mul(page_size)
}

/// v2 `memory.current` is reported as `rss` and `memory.swap.current` as `swap`, as Go does
/// (so v2 "rss" includes the page cache, and there is no `cache` figure).
fn set_number(memory: &mut Memory, stat: &str, text: &str) {
    if let Some(value) = parse::single_number(text) {
        memory.set(stat, value);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cgroup::tests::{
        DEBIAN12_CGROUP, DEBIAN12_MOUNTS, UBUNTU1804_CGROUP, UBUNTU1804_MOUNTS, write_tree,
    };

    pub(crate) const NET_DEV: &str = "Inter-| Receive | Transmit\n face |bytes packets|bytes\n\
        lo: 9 1 0 0 0 0 0 0 9 1 0 0 0 0 0 0\n\
        eth0: 859480 10 0 0 0 0 0 0 55888 20 0 0 0 0 0 0\n";

    /// A v1 host like the ubuntu1804 vector (cpu,cpuacct comounted, unified beside), with the
    /// process's files in place.
    pub(crate) fn v1_tree(dir: &Path) -> Roots {
        let cg = "sys/fs/cgroup";
        write_tree(
            dir,
            &[
                ("proc/2523/cgroup", UBUNTU1804_CGROUP),
                ("proc/2523/net/dev", NET_DEV),
                ("proc/mounts", UBUNTU1804_MOUNTS),
                (
                    &format!("{cg}/memory/user.slice/memory.stat"),
                    "cache 4096\nrss 1187840\nswap 0\npgmajfault 3\ntotal_rss 1187840\n",
                ),
                (
                    &format!("{cg}/cpu,cpuacct/user.slice/cpuacct.stat"),
                    "user 0\nsystem 1\n",
                ),
                (
                    &format!("{cg}/cpu,cpuacct/user.slice/cpu.cfs_quota_us"),
                    "-1\n",
                ),
                (
                    &format!("{cg}/cpu,cpuacct/user.slice/cpu.cfs_period_us"),
                    "100000\n",
                ),
                (&format!("{cg}/cpuset/cpuset.cpus"), "0-19\n"),
                (
                    &format!("{cg}/blkio/user.slice/blkio.throttle.io_service_bytes"),
                    "8:0 Read 100\n8:0 Write 200\nTotal 300\n",
                ),
                // the unified tree of a hybrid host has core files only: not used
                (
                    &format!("{cg}/unified/user.slice/user-1000.slice/session-1.scope/cpu.stat"),
                    "usage_usec 99\nuser_usec 99000000\nsystem_usec 0\n",
                ),
            ],
        );
        Roots::under(dir)
    }

    /// A v2 host like the debian12 vector, with a CPU quota of 1.5.
    pub(crate) fn v2_tree(dir: &Path) -> Roots {
        let scope = "sys/fs/cgroup/user.slice/user-1000.slice/session-4.scope";
        write_tree(
            dir,
            &[
                ("proc/1115883/cgroup", DEBIAN12_CGROUP),
                ("proc/1115883/cpuset", "/user.slice\n"),
                ("proc/1115883/net/dev", NET_DEV),
                ("proc/mounts", DEBIAN12_MOUNTS),
                (
                    &format!("{scope}/memory.stat"),
                    "anon 1\nfile 2\npgmajfault 271316\n",
                ),
                (&format!("{scope}/memory.current"), "12045840384\n"),
                (&format!("{scope}/memory.swap.current"), "1544065024\n"),
                (
                    &format!("{scope}/cpu.stat"),
                    "usage_usec 3\nuser_usec 2000000\nsystem_usec 1000000\n",
                ),
                (&format!("{scope}/cpu.max"), "150000 100000\n"),
                ("sys/fs/cgroup/user.slice/cpuset.cpus.effective", "0-3\n"),
                (
                    "sys/fs/cgroup/user.slice/io.stat",
                    "253:2 rbytes=10 wbytes=20 rios=1\n",
                ),
            ],
        );
        Roots::under(dir)
    }

    pub(crate) fn stat_files(roots: &Roots, pid: u32) -> StatFiles {
        let cg = ProcessCgroup::find(roots, Pid::Of(pid)).unwrap();
        StatFiles::find(&cg, roots)
    }

    #[test]
    fn v1_sample_reads_the_v1_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v1_tree(tmp.path());
        let sample = stat_files(&roots, 2523).read(64.0);
        assert_eq!(
            sample.memory,
            Memory([Some(4096), Some(0), Some(3), Some(1187840)])
        );
        assert_eq!(
            sample.cpu,
            Some(CpuTimes {
                user: 0.0,
                sys: 0.01
            })
        );
        assert_eq!(sample.cpus, Some(20.0));
        assert_eq!(sample.blkio["8:0"], IoCount { tx: 200, rx: 100 });
        assert_eq!(
            sample.net,
            [(
                "eth0".into(),
                IoCount {
                    tx: 55888,
                    rx: 859480
                }
            )]
        );
        assert!(!sample.cgroup_gone());
    }

    #[test]
    fn v2_sample_maps_current_to_rss_and_applies_the_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v2_tree(tmp.path());
        let files = stat_files(&roots, 1115883);
        let sample = files.read(64.0);
        assert_eq!(
            sample.memory,
            Memory([None, Some(1544065024), Some(271316), Some(12045840384)])
        );
        assert_eq!(
            sample.cpu,
            Some(CpuTimes {
                user: 2.0,
                sys: 1.0
            })
        );
        assert_eq!(sample.cpus, Some(1.5));
        // io.stat lives in the slice, two levels up
        assert_eq!(sample.blkio["253:2"], IoCount { tx: 20, rx: 10 });
        let used: Vec<_> = files.paths().collect();
        assert!(
            used.contains(
                &tmp.path()
                    .join("sys/fs/cgroup/user.slice/io.stat")
                    .as_path()
            )
        );
    }

    #[test]
    fn cpus_fall_back_to_the_host_and_a_quota_lowers_them() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v1_tree(tmp.path());
        let cg = tmp.path().join("sys/fs/cgroup");
        fs::remove_file(cg.join("cpuset/cpuset.cpus")).unwrap();
        assert_eq!(stat_files(&roots, 2523).read(8.0).cpus, Some(8.0));
        fs::write(
            cg.join("cpu,cpuacct/user.slice/cpu.cfs_quota_us"),
            "250000\n",
        )
        .unwrap();
        assert_eq!(stat_files(&roots, 2523).read(8.0).cpus, Some(2.5));
    }

    #[test]
    fn disk_space_of_a_real_directory_and_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let d = disk_space(tmp.path()).unwrap();
        assert!(
            d.total > 0 && d.used <= d.total && d.available <= d.total,
            "{d:?}"
        );
        assert_eq!(disk_space(&tmp.path().join("missing")), None);
    }

    #[test]
    fn process_rss_of_a_fixture_and_of_this_process() {
        let tmp = tempfile::tempdir().unwrap();
        let fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        write_tree(
            tmp.path(),
            &[(
                "proc/42/stat",
                &format!("42 (crunch-run) {}\n", fields.join(" ")),
            )],
        );
        assert_eq!(
            process_rss(&Roots::under(tmp.path()), 42, 4096),
            Some(24 * 4096)
        );
        assert_eq!(process_rss(&Roots::under(tmp.path()), 43, 4096), None);
        let own = process_rss(&Roots::host(), std::process::id(), 4096).unwrap();
        assert!(own > 1_000_000 && own < 2_000_000_000, "{own}");
    }

    #[test]
    fn a_removed_cgroup_reads_as_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = v2_tree(tmp.path());
        let files = stat_files(&roots, 1115883);
        let scope = tmp
            .path()
            .join("sys/fs/cgroup/user.slice/user-1000.slice/session-4.scope");
        fs::remove_dir_all(scope).unwrap();
        fs::remove_dir_all(tmp.path().join("proc/1115883")).unwrap();
        let sample = files.read(4.0);
        assert!(sample.cgroup_gone(), "{sample:?}");
        assert_eq!(sample.cpus, None);
        assert!(sample.net.is_empty());
    }
}
