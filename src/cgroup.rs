//! Where a process's cgroups are on this host: for each controller, the directory under
//! `/sys/fs/cgroup` that holds its accounting files, for cgroup v1 (one hierarchy per
//! controller, some comounted like `cpu,cpuacct`), v2 (one unified hierarchy) and the hybrid
//! of both; and crunch-run's own cgroup for a subsystem (`-cgroup-parent-subsystem`).
//!
//! Reads `/proc/<pid>/cgroup`, `/proc/mounts` and `/proc/<pid>/cpuset` only; reading the
//! accounting files is `crunchstat`'s job. Both roots are injectable ([`Roots`]) so tests run
//! on fixture trees. Lines that are blank or malformed are skipped, never an error.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the host's `/proc` and `/sys/fs/cgroup` are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub proc: PathBuf,
    pub cgroup: PathBuf,
}

/// The conventional place of the cgroup filesystems: mount points under it are found under
/// [`Roots::cgroup`] instead.
const CGROUP_MOUNT_BASE: &str = "/sys/fs/cgroup";

impl Roots {
    /// This host: `/proc` and `/sys/fs/cgroup`.
    pub fn host() -> Roots {
        Roots {
            proc: PathBuf::from("/proc"),
            cgroup: PathBuf::from(CGROUP_MOUNT_BASE),
        }
    }

    /// A copy of a host's tree under `dir` (`dir/proc`, `dir/sys/fs/cgroup`), for tests.
    pub fn under(dir: &Path) -> Roots {
        Roots {
            proc: dir.join("proc"),
            cgroup: dir.join("sys/fs/cgroup"),
        }
    }

    /// `/proc/<pid>` (or `/proc/self`).
    pub fn proc_dir(&self, pid: Pid) -> PathBuf {
        match pid {
            Pid::Of(n) => self.proc.join(n.to_string()),
            Pid::Current => self.proc.join("self"),
        }
    }

    /// Where a mount point named in `/proc/mounts` is found from here.
    fn mount_point(&self, named: &str) -> PathBuf {
        match Path::new(named).strip_prefix(CGROUP_MOUNT_BASE) {
            Ok(rest) => self.cgroup.join(rest),
            Err(_) => PathBuf::from(named),
        }
    }
}

/// A process: a number, or the one reading (`/proc/self`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    Of(u32),
    Current,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "none of the cgroups in {} is on a mounted hierarchy (see {})",
        listed.display(),
        mounts.display()
    )]
    NotMounted { listed: PathBuf, mounts: PathBuf },
    #[error("subsystem {subsystem:?} not found in {}", path.display())]
    NoSubsystem { subsystem: String, path: PathBuf },
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controller,list:/path`. The v2 line is
/// `0::/path` (no controllers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub controllers: Vec<String>,
    pub path: String,
}

impl Membership {
    /// The unified (cgroup v2) line.
    pub fn is_unified(&self) -> bool {
        self.controllers.is_empty()
    }
}

/// The lines of a `/proc/<pid>/cgroup` file, skipping those that are not `id:list:/path`.
pub fn parse_memberships(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, list, path) = (fields.next()?, fields.next()?, fields.next()?);
            if id.parse::<u32>().is_err() || !path.starts_with('/') {
                return None;
            }
            let controllers = list
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>();
            if controllers.is_empty() && id != "0" {
                return None;
            }
            Some(Membership {
                controllers,
                path: path.to_string(),
            })
        })
        .collect()
}

/// The cgroup filesystems of a host, from `/proc/mounts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// v1 hierarchies: mount point and the mount options (they name its controllers).
    v1: Vec<(PathBuf, Vec<String>)>,
    unified: Option<PathBuf>,
}

impl CgroupMounts {
    /// Parse `/proc/mounts` text; mount points are mapped through `roots`.
    pub fn parse(text: &str, roots: &Roots) -> CgroupMounts {
        let mut mounts = CgroupMounts::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 4 {
                continue;
            }
            let point = roots.mount_point(&unescape_mount_field(fields[1]));
            match fields[2] {
                "cgroup2" => mounts.unified = Some(point),
                "cgroup" => {
                    let options = fields[3].split(',').map(str::to_string).collect();
                    mounts.v1.push((point, options));
                }
                _ => {}
            }
        }
        mounts
    }

    /// Read the host's `/proc/mounts`; when it names no cgroup filesystem (a trimmed view),
    /// fall back to the usual layout of `roots.cgroup`.
    pub fn discover(roots: &Roots) -> CgroupMounts {
        let text = fs::read_to_string(roots.proc.join("mounts")).unwrap_or_default();
        let mounts = CgroupMounts::parse(&text, roots);
        if mounts.v1.is_empty() && mounts.unified.is_none() {
            CgroupMounts::from_layout(&roots.cgroup)
        } else {
            mounts
        }
    }

    /// Guess from directory names: `cgroup.controllers` at the top means v2; otherwise each
    /// directory `a,b` is the v1 hierarchy of controllers a and b, `unified` the v2 one.
    fn from_layout(base: &Path) -> CgroupMounts {
        if base.join("cgroup.controllers").exists() {
            return CgroupMounts {
                v1: Vec::new(),
                unified: Some(base.to_path_buf()),
            };
        }
        let mut mounts = CgroupMounts::default();
        for entry in fs::read_dir(base).into_iter().flatten().flatten() {
            let (path, name) = (entry.path(), entry.file_name());
            let Some(name) = name.to_str() else { continue };
            if !path.is_dir() || path.is_symlink() {
                continue;
            }
            if name == "unified" {
                mounts.unified = Some(path);
            } else {
                mounts
                    .v1
                    .push((path, name.split(',').map(str::to_string).collect()));
            }
        }
        mounts
    }

    /// The mount point of the v1 hierarchy that has `controller`.
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(_, options)| options.iter().any(|o| o == controller))
            .map(|(point, _)| point.as_path())
    }

    /// The mount point of the unified (v2) hierarchy.
    pub fn unified_mount(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// The mount point of the hierarchy a `/proc/<pid>/cgroup` line is about.
    pub fn mount_of(&self, line: &Membership) -> Option<&Path> {
        match line.controllers.first() {
            Some(controller) => self.v1_mount(controller),
            None => self.unified_mount(),
        }
    }

    /// The mount points of every hierarchy, v1 and unified.
    pub fn points(&self) -> impl Iterator<Item = &Path> {
        let v1 = self.v1.iter().map(|(point, _)| point.as_path());
        v1.chain(self.unified.as_deref())
    }
}

/// `/proc/mounts` writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup directories of one process, by controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCgroup {
    pub pid: Pid,
    /// v1 controller name → its directory (`…/memory/docker/<id>`).
    v1: BTreeMap<String, PathBuf>,
    /// The process's directory in the unified hierarchy, if one is mounted.
    unified: Option<PathBuf>,
    /// Where its `cpuset.cpus` is: the v1 cpuset directory, or in v2 the directory named by
    /// `/proc/<pid>/cpuset` (the `0::` directory may have no cpuset files).
    cpuset: Option<PathBuf>,
    /// The mount point above each directory: a search for a file never goes above it.
    tops: BTreeMap<PathBuf, PathBuf>,
}

impl ProcessCgroup {
    /// Find the cgroups of `pid` from `roots`.
    pub fn find(roots: &Roots, pid: Pid) -> Result<ProcessCgroup, CgroupError> {
        let path = roots.proc_dir(pid).join("cgroup");
        let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        let mounts = CgroupMounts::discover(roots);
        let mut found = ProcessCgroup {
            pid,
            v1: BTreeMap::new(),
            unified: None,
            cpuset: None,
            tops: BTreeMap::new(),
        };
        for line in parse_memberships(&text) {
            found.add(&mounts, &line);
        }
        if found.v1.is_empty() && found.unified.is_none() {
            return Err(CgroupError::NotMounted {
                listed: path,
                mounts: roots.proc.join("mounts"),
            });
        }
        found.cpuset = found.v1.get("cpuset").cloned();
        if found.cpuset.is_none() {
            found.find_v2_cpuset(roots, &mounts);
        }
        Ok(found)
    }

    /// In v2 the cpuset files may be in another directory than the `0::` one: the one
    /// `/proc/<pid>/cpuset` names (else the `0::` one).
    fn find_v2_cpuset(&mut self, roots: &Roots, mounts: &CgroupMounts) {
        let Some(top) = mounts.unified_mount() else {
            return;
        };
        let named = fs::read_to_string(roots.proc_dir(self.pid).join("cpuset")).ok();
        let dir = match named.as_deref().map(str::trim) {
            Some(p) if p.starts_with('/') => join_cgroup_path(top, p),
            _ => match &self.unified {
                Some(dir) => dir.clone(),
                None => return,
            },
        };
        self.tops.insert(dir.clone(), top.to_path_buf());
        self.cpuset = Some(dir);
    }

    fn add(&mut self, mounts: &CgroupMounts, line: &Membership) {
        if line.is_unified() {
            if let Some(top) = mounts.unified_mount() {
                let dir = join_cgroup_path(top, &line.path);
                self.tops.insert(dir.clone(), top.to_path_buf());
                self.unified = Some(dir);
            }
            return;
        }
        for controller in &line.controllers {
            if let Some(top) = mounts.v1_mount(controller) {
                let dir = join_cgroup_path(top, &line.path);
                self.tops.insert(dir.clone(), top.to_path_buf());
                self.v1.insert(controller.clone(), dir);
            }
        }
    }

    /// The same hierarchies at their top: the cgroup of the whole host. The process (for
    /// its network namespace) stays the same.
    pub fn at_roots(&self) -> ProcessCgroup {
        let top = |dir: &PathBuf| self.tops.get(dir).cloned().unwrap_or_else(|| dir.clone());
        let v1 = self
            .v1
            .iter()
            .map(|(c, dir)| (c.clone(), top(dir)))
            .collect();
        let (unified, cpuset) = (
            self.unified.as_ref().map(top),
            self.cpuset.as_ref().map(top),
        );
        let tops = self.tops.values().map(|t| (t.clone(), t.clone())).collect();
        ProcessCgroup {
            pid: self.pid,
            v1,
            unified,
            cpuset,
            tops,
        }
    }

    /// The directory of a v1 controller (`memory`, `cpuacct`, `blkio`, …).
    pub fn v1_dir(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// The directory in the unified (v2) hierarchy.
    pub fn unified_dir(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// The directory holding this process's `cpuset.cpus(.effective)`.
    pub fn cpuset_dir(&self) -> Option<&Path> {
        self.cpuset.as_deref()
    }

    /// The first readable, non-empty `file` in `dir` or one of its parents up to the mount
    /// point of its hierarchy, with its contents: some files exist only higher up (e.g. v2
    /// `io.stat` of a session scope lives in its slice).
    pub fn find_file(&self, dir: &Path, file: &str) -> Option<(PathBuf, String)> {
        let top = self.tops.get(dir)?;
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| d.starts_with(top)) {
            let path = d.join(file);
            if let Ok(text) = fs::read_to_string(&path)
                && !text.trim().is_empty()
            {
                return Some((path, text));
            }
            at = d.parent();
        }
        None
    }
}

/// `top` + the cgroup path `/a/b` (a path of `/` is `top` itself).
pub(crate) fn join_cgroup_path(top: &Path, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        top.to_path_buf()
    } else {
        top.join(rel)
    }
}

/// crunch-run's own cgroup path for `subsystem` (as `-cgroup-parent-subsystem` wants it, e.g.
/// `/slurm/uid_0/job_12`): from `/proc/self/cgroup`, the path of the v1 hierarchy that has
/// that subsystem, or else the v2 `0::` path (the only line on a v2-only host, whatever the
/// subsystem).
pub fn own_cgroup_path(roots: &Roots, subsystem: &str) -> Result<String, CgroupError> {
    let path = roots.proc_dir(Pid::Current).join("cgroup");
    let text = fs::read_to_string(&path).map_err(|source| CgroupError::Read {
        path: path.clone(),
        source,
    })?;
    let lines = parse_memberships(&text);
    let v1 = lines
        .iter()
        .find(|l| l.controllers.iter().any(|c| c == subsystem));
    v1.or_else(|| lines.iter().find(|l| l.is_unified()))
        .map(|l| l.path.clone())
        .ok_or_else(|| CgroupError::NoSubsystem {
            subsystem: subsystem.to_string(),
            path,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Write `files` (path relative to `dir` → contents) into `dir`.
    pub(crate) fn write_tree(dir: &Path, files: &[(&str, &str)]) {
        for (path, contents) in files {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }
    }

    // Vectors: /proc/<pid>/cgroup and /proc/mounts as found on the hosts of Arvados'
    // lib/crunchstat/testdata (ubuntu1804: hybrid v1 + unified; debian12: v2 only).
    pub(crate) const UBUNTU1804_CGROUP: &str = "12:freezer:/\n11:rdma:/\n10:devices:/user.slice\n\
        9:blkio:/user.slice\n8:net_cls,net_prio:/\n7:cpu,cpuacct:/user.slice\n6:memory:/user.slice\n\
        5:cpuset:/\n4:perf_event:/\n3:pids:/user.slice/user-1000.slice/session-1.scope\n\
        2:hugetlb:/\n1:name=systemd:/user.slice/user-1000.slice/session-1.scope\n\
        0::/user.slice/user-1000.slice/session-1.scope\n";
    pub(crate) const UBUNTU1804_MOUNTS: &str = "sysfs /sys sysfs rw,nosuid 0 0\n\
        tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0\n\
        cgroup /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n\
        cgroup /sys/fs/cgroup/systemd cgroup rw,nosuid,nodev,noexec,relatime,xattr,name=systemd 0 0\n\
        cgroup /sys/fs/cgroup/cpuset cgroup rw,nosuid,nodev,noexec,relatime,cpuset 0 0\n\
        cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0\n\
        cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0\n\
        cgroup /sys/fs/cgroup/blkio cgroup rw,nosuid,nodev,noexec,relatime,blkio 0 0\n";
    pub(crate) const DEBIAN12_CGROUP: &str = "0::/user.slice/user-1000.slice/session-4.scope\n";
    pub(crate) const DEBIAN12_MOUNTS: &str = "proc /proc proc rw,relatime 0 0\n\
        cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n\
        tmpfs /run/user/0 tmpfs rw,nosuid,nodev,relatime,size=3275416k,mode=700 0 0\n";

    #[test]
    fn memberships_of_hybrid_and_odd_lines() {
        let lines = parse_memberships(UBUNTU1804_CGROUP);
        assert_eq!(lines.len(), 13);
        assert_eq!(lines[5].controllers, ["cpu", "cpuacct"]);
        assert_eq!(lines[5].path, "/user.slice");
        assert!(lines[12].is_unified());
        let odd = "\ngarbage\n3:memory\nx:memory:/a\n4::/no-controllers-but-not-0\n\
                   5:memory:relative\n6:cpu:/with:colon\n";
        let lines = parse_memberships(odd);
        assert_eq!(
            lines,
            [Membership {
                controllers: vec!["cpu".into()],
                path: "/with:colon".into()
            }]
        );
    }

    #[test]
    fn mounts_map_controllers_and_escapes() {
        let roots = Roots::under(Path::new("/fx"));
        let m = CgroupMounts::parse(UBUNTU1804_MOUNTS, &roots);
        let cpu = Path::new("/fx/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(m.v1_mount("cpuacct"), Some(cpu));
        assert_eq!(m.v1_mount("cpu"), Some(cpu));
        assert_eq!(
            m.v1_mount("name=systemd"),
            Some(Path::new("/fx/sys/fs/cgroup/systemd"))
        );
        assert_eq!(m.v1_mount("rdma"), None);
        assert_eq!(
            m.unified_mount(),
            Some(Path::new("/fx/sys/fs/cgroup/unified"))
        );
        let odd = CgroupMounts::parse(
            "cgroup /cg\\040v1/mem cgroup rw,memory 0 0\nshort\n",
            &roots,
        );
        assert_eq!(odd.v1_mount("memory"), Some(Path::new("/cg v1/mem")));
    }

    #[test]
    fn finds_v1_dirs_by_controller_with_unified_beside() {
        let tmp = tempfile::tempdir().unwrap();
        write_tree(
            tmp.path(),
            &[
                ("proc/2523/cgroup", UBUNTU1804_CGROUP),
                ("proc/mounts", UBUNTU1804_MOUNTS),
            ],
        );
        let roots = Roots::under(tmp.path());
        let cg = ProcessCgroup::find(&roots, Pid::Of(2523)).unwrap();
        let base = tmp.path().join("sys/fs/cgroup");
        assert_eq!(
            cg.v1_dir("memory"),
            Some(base.join("memory/user.slice").as_path())
        );
        assert_eq!(
            cg.v1_dir("cpuacct"),
            Some(base.join("cpu,cpuacct/user.slice").as_path())
        );
        assert_eq!(
            cg.v1_dir("blkio"),
            Some(base.join("blkio/user.slice").as_path())
        );
        assert_eq!(cg.cpuset_dir(), Some(base.join("cpuset").as_path()));
        assert_eq!(
            cg.unified_dir(),
            Some(
                base.join("unified/user.slice/user-1000.slice/session-1.scope")
                    .as_path()
            )
        );
        let host = cg.at_roots();
        assert_eq!(host.v1_dir("memory"), Some(base.join("memory").as_path()));
        assert_eq!(host.v1_dir("cpu"), Some(base.join("cpu,cpuacct").as_path()));
        assert_eq!(host.unified_dir(), Some(base.join("unified").as_path()));
        assert_eq!(host.pid, Pid::Of(2523));
        write_tree(
            tmp.path(),
            &[("sys/fs/cgroup/memory/memory.stat", "rss 1\n")],
        );
        let (found, _) = host.find_file(&base.join("memory"), "memory.stat").unwrap();
        assert_eq!(found, base.join("memory/memory.stat"));
    }

    #[test]
    fn finds_v2_dir_and_cpuset_from_proc_cpuset() {
        let tmp = tempfile::tempdir().unwrap();
        write_tree(
            tmp.path(),
            &[
                ("proc/1115883/cgroup", DEBIAN12_CGROUP),
                ("proc/1115883/cpuset", "/user.slice\n"),
                ("proc/mounts", DEBIAN12_MOUNTS),
            ],
        );
        let roots = Roots::under(tmp.path());
        let cg = ProcessCgroup::find(&roots, Pid::Of(1115883)).unwrap();
        let base = tmp.path().join("sys/fs/cgroup");
        let scope = base.join("user.slice/user-1000.slice/session-4.scope");
        assert_eq!(cg.unified_dir(), Some(scope.as_path()));
        assert_eq!(cg.v1_dir("memory"), None);
        assert_eq!(cg.cpuset_dir(), Some(base.join("user.slice").as_path()));
    }

    #[test]
    fn find_file_walks_up_to_the_mount_point_only() {
        let tmp = tempfile::tempdir().unwrap();
        write_tree(
            tmp.path(),
            &[
                ("proc/1/cgroup", DEBIAN12_CGROUP),
                ("proc/mounts", DEBIAN12_MOUNTS),
                (
                    "sys/fs/cgroup/user.slice/io.stat",
                    "8:0 rbytes=1 wbytes=2\n",
                ),
                ("sys/fs/cgroup/user.slice/user-1000.slice/memory.stat", "\n"),
                ("sys/fs/memory.stat", "above the mount point\n"),
            ],
        );
        let cg = ProcessCgroup::find(&Roots::under(tmp.path()), Pid::Of(1)).unwrap();
        let dir = cg.unified_dir().unwrap().to_path_buf();
        let (path, text) = cg.find_file(&dir, "io.stat").unwrap();
        assert_eq!(path, tmp.path().join("sys/fs/cgroup/user.slice/io.stat"));
        assert_eq!(text, "8:0 rbytes=1 wbytes=2\n");
        // an empty file is skipped like a missing one; nothing is looked for above the mount
        assert_eq!(cg.find_file(&dir, "memory.stat"), None);
        assert_eq!(cg.find_file(Path::new("/elsewhere"), "io.stat"), None);
    }

    #[test]
    fn falls_back_to_the_layout_when_mounts_name_no_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        write_tree(
            tmp.path(),
            &[
                (
                    "proc/7/cgroup",
                    "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
                ),
                ("proc/mounts", "proc /proc proc rw 0 0\n"),
                ("sys/fs/cgroup/memory/docker/abc/memory.stat", "rss 1\n"),
                (
                    "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpuacct.stat",
                    "user 1\n",
                ),
            ],
        );
        let cg = ProcessCgroup::find(&Roots::under(tmp.path()), Pid::Of(7)).unwrap();
        let base = tmp.path().join("sys/fs/cgroup");
        assert_eq!(
            cg.v1_dir("memory"),
            Some(base.join("memory/docker/abc").as_path())
        );
        assert_eq!(
            cg.v1_dir("cpu"),
            Some(base.join("cpu,cpuacct/docker/abc").as_path())
        );

        write_tree(
            tmp.path(),
            &[("sys/fs/cgroup/cgroup.controllers", "cpu memory\n")],
        );
        let err = ProcessCgroup::find(&Roots::under(tmp.path()), Pid::Of(7)).unwrap_err();
        assert!(matches!(err, CgroupError::NotMounted { .. }), "{err}");
    }

    #[test]
    fn a_missing_process_is_a_read_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ProcessCgroup::find(&Roots::under(tmp.path()), Pid::Of(99)).unwrap_err();
        assert!(err.to_string().contains("proc/99/cgroup"), "{err}");
    }

    /// `own_cgroup_path` vectors, as Go's TestFindCgroup has them.
    #[test]
    fn own_cgroup_path_for_a_subsystem() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::under(tmp.path());
        let cases = [
            (UBUNTU1804_CGROUP, "blkio", "/user.slice"),
            (UBUNTU1804_CGROUP, "cpuacct", "/user.slice"),
            (UBUNTU1804_CGROUP, "cpu", "/user.slice"),
            (
                UBUNTU1804_CGROUP,
                "pids",
                "/user.slice/user-1000.slice/session-1.scope",
            ),
            (
                UBUNTU1804_CGROUP,
                "bogus",
                "/user.slice/user-1000.slice/session-1.scope",
            ),
            (
                DEBIAN12_CGROUP,
                "cpuacct",
                "/user.slice/user-1000.slice/session-4.scope",
            ),
            (
                DEBIAN12_CGROUP,
                "bogus",
                "/user.slice/user-1000.slice/session-4.scope",
            ),
            // the v2 line first (never seen, but a v1 match still wins)
            ("0::/v2\n3:memory:/v1\n", "memory", "/v1"),
        ];
        for (text, subsystem, want) in cases {
            write_tree(tmp.path(), &[("proc/self/cgroup", text)]);
            let got = own_cgroup_path(&roots, subsystem).unwrap();
            assert_eq!(got, want, "{subsystem} in {text:?}");
        }
        write_tree(tmp.path(), &[("proc/self/cgroup", "3:memory:/v1\n")]);
        let err = own_cgroup_path(&roots, "cpu").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "subsystem \"cpu\" not found in {}",
                tmp.path().join("proc/self/cgroup").display()
            )
        );
    }

    #[test]
    fn own_cgroup_path_on_this_host() {
        let path = own_cgroup_path(&Roots::host(), "memory").unwrap();
        assert!(path.starts_with('/'), "{path}");
    }
}
