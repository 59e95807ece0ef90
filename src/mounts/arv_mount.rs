//! The FUSE path of collection mounts: one `arv-mount` per run (Go's `ArvMountCmd`,
//! reference §5.2), serving collections lazily under `by_id/` and `by_uuid/`, which
//! staging binds read-only at each read-only collection mount.
//!
//! [`choose`] decides between FUSE and staging (`--keep-mount`) and says why.
//! [`ArvMount::start`] starts arv-mount with the container's token in its environment
//! (never in argv), hands its stderr to the caller (timestamped into arv-mount.txt) and
//! waits until the mount answers; a thread of its own reaps it, so [`ArvMount::exited`]
//! tells a watcher at once when it dies. [`ArvMount::stop`] (and `Drop`, the backstop)
//! unmounts it (`fusermount -u -z`), waits a bounded time and kills it if need be.
//!
//! arv-mount is started read-only: writable collection mounts are copied onto the host by
//! staging, as Go copies them out of its mount, so nothing ever writes through FUSE.

use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::KeepMount;
use crate::process::{ChildKiller, OwnedChild, describe_status};

/// How long arv-mount may take to answer at its mount point.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long arv-mount may take to exit once unmounted, before it is killed.
const EXIT_PATIENCE: Duration = Duration::from_secs(10);

/// How collection mounts reach the container in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Through this arv-mount program.
    Fuse(PathBuf),
    Stage,
}

/// What FUSE needs of the host.
pub struct FuseHost<'a> {
    pub dev_fuse: &'a Path,
    /// Where `user_allow_other` is set for a user other than root.
    pub fuse_conf: &'a Path,
    pub root: bool,
}

impl FuseHost<'static> {
    pub fn this_host() -> FuseHost<'static> {
        FuseHost {
            dev_fuse: Path::new("/dev/fuse"),
            fuse_conf: Path::new("/etc/fuse.conf"),
            // SAFETY: geteuid has no preconditions and cannot fail.
            root: unsafe { libc::geteuid() } == 0,
        }
    }
}

impl FuseHost<'_> {
    /// Why arv-mount cannot work here, if it cannot.
    fn check(&self) -> Result<(), String> {
        usable(self.dev_fuse)
            .map_err(|e| format!("{} is not usable: {e}", self.dev_fuse.display()))?;
        let allowed = self.root
            || fs::read_to_string(self.fuse_conf)
                .is_ok_and(|conf| conf.lines().any(|l| l.trim() == "user_allow_other"));
        match allowed {
            true => Ok(()),
            false => Err(format!(
                "not root, and {} lacks user_allow_other, which --allow-other needs (docker must read the mount)",
                self.fuse_conf.display()
            )),
        }
    }
}

/// FUSE or staging, and why (one line for crunch-run.txt); an error when FUSE was asked
/// for and cannot work here. `path` is the PATH crunch-run was given; `local_store` says
/// the collections live in a local directory, which arv-mount cannot serve.
pub fn choose(
    how: KeepMount,
    local_store: bool,
    path: Option<&OsStr>,
    host: &FuseHost,
) -> Result<(Choice, String), String> {
    if how == KeepMount::Stage {
        return Ok((Choice::Stage, "staging (--keep-mount=stage)".into()));
    }
    let fuse = if local_store {
        Err("arv-mount cannot serve a local store".to_string())
    } else {
        find_program("arv-mount", path)
            .ok_or_else(|| "no arv-mount on PATH".to_string())
            .and_then(|program| host.check().map(|()| program))
    };
    match (how, fuse) {
        (_, Ok(program)) => {
            let why = format!(
                "FUSE through {} (--keep-mount={})",
                program.display(),
                flag(how)
            );
            Ok((Choice::Fuse(program), why))
        }
        (KeepMount::Fuse, Err(e)) => Err(format!("--keep-mount=fuse, but {e}")),
        (_, Err(e)) => Ok((Choice::Stage, format!("staging ({e})"))),
    }
}

fn flag(how: KeepMount) -> &'static str {
    match how {
        KeepMount::Auto => "auto",
        KeepMount::Fuse => "fuse",
        KeepMount::Stage => "stage",
    }
}

fn find_program(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn usable(dev_fuse: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_fuse)
        .map(drop)
}

/// How to start arv-mount for one run.
pub struct Settings {
    pub program: PathBuf,
    /// crunch-run's environment without `ARVADOS_*` (PATH, HOME…).
    pub base_env: Vec<(OsString, OsString)>,
    pub api_host: String,
    /// The container's own token: in arv-mount's environment only.
    pub token: String,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub keep_cache_ram: Option<u64>,
    /// With a cache directory for `--disk-cache-dir`.
    pub keep_cache_disk: Option<(u64, PathBuf)>,
    pub crunchstat_interval: Option<Duration>,
    pub storage_classes: Vec<String>,
    /// No mount names a collection by UUID: `by_id` serves PDHs only, as in Go.
    pub pdh_only: bool,
}

impl Settings {
    /// arv-mount's argv (no secret in it), Go's order.
    pub fn argv(&self, mount_point: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = ["--foreground", "--allow-other"]
            .map(OsString::from)
            .to_vec();
        if !self.storage_classes.is_empty() {
            argv.push("--storage-classes".into());
            argv.push(self.storage_classes.join(",").into());
        }
        if let Some(interval) = self.crunchstat_interval {
            argv.push(format!("--crunchstat-interval={}", interval.as_secs_f64()).into());
        }
        if let Some((bytes, dir)) = &self.keep_cache_disk {
            argv.extend(["--disk-cache".into(), "--disk-cache-dir".into()]);
            argv.push(dir.into());
            argv.extend(["--file-cache".into(), bytes.to_string().into()]);
        } else if let Some(bytes) = self.keep_cache_ram {
            argv.extend(["--ram-cache", "--file-cache"].map(OsString::from));
            argv.push(bytes.to_string().into());
        }
        // Event listening (websocket) only matters for collections named by UUID.
        if self.pdh_only {
            argv.extend(
                ["--mount-by-pdh", "by_id", "--disable-event-listening"].map(OsString::from),
            );
        } else {
            argv.extend(["--mount-by-id", "by_id"].map(OsString::from));
        }
        argv.extend(["--mount-by-id", "by_uuid"].map(OsString::from));
        argv.push(mount_point.into());
        argv
    }

    fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = self
            .base_env
            .iter()
            .filter(|(k, _)| !k.to_string_lossy().starts_with("ARVADOS_"))
            .filter(|(k, _)| k != "SSL_CERT_FILE")
            .cloned()
            .collect();
        env.push(("ARVADOS_API_HOST".into(), self.api_host.clone().into()));
        env.push(("ARVADOS_API_TOKEN".into(), self.token.clone().into()));
        if self.insecure {
            env.push(("ARVADOS_API_HOST_INSECURE".into(), "1".into()));
        }
        if let Some(ca) = &self.ca_file {
            env.push(("SSL_CERT_FILE".into(), ca.into()));
        }
        env
    }
}

/// What in arv-mount's output the user must hear of (Go's logScanner patterns).
pub const WARNING_PATTERNS: [&str; 3] = [
    "Keep write error",
    "Block not found error",
    "Unhandled exception during FUSE operation",
];

/// Passes arv-mount's output through, and calls `report(pattern, line)` for the first line
/// that holds one of [`WARNING_PATTERNS`], once (as Go's logScanner does).
pub struct WarningScan<R, F> {
    inner: R,
    line: Vec<u8>,
    report: Option<F>,
}

impl<R: Read, F: FnOnce(&str, &str)> WarningScan<R, F> {
    pub fn new(inner: R, report: F) -> WarningScan<R, F> {
        WarningScan {
            inner,
            line: Vec::new(),
            report: Some(report),
        }
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.report.is_none() {
                return;
            }
            if b != b'\n' {
                // A line longer than this is cut; the patterns are near its start.
                if self.line.len() < 8192 {
                    self.line.push(b);
                }
                continue;
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if let Some(pattern) = WARNING_PATTERNS.iter().find(|p| line.contains(*p))
                && let Some(report) = self.report.take()
            {
                report(pattern, &line);
            }
        }
    }
}

impl<R: Read, F: FnOnce(&str, &str)> Read for WarningScan<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan(&buf[..n]);
        Ok(n)
    }
}

/// A running arv-mount.
pub struct ArvMount {
    mount_point: PathBuf,
    pid: u32,
    killer: ChildKiller,
    /// Disconnected once arv-mount has exited (and was reaped).
    exited: Receiver<()>,
    status: ExitNote,
    stopped: AtomicBool,
}

/// How arv-mount ended, once it has; shared with a watcher thread.
#[derive(Clone, Default)]
pub struct ExitNote(Arc<Mutex<Option<ExitStatus>>>);

impl ExitNote {
    /// "exit status 1", "signal 9 (SIGKILL)", or "still running".
    pub fn describe(&self) -> String {
        match *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(status) => describe_status(status),
            None => "still running".into(),
        }
    }

    fn set(&self, status: Option<ExitStatus>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

impl ArvMount {
    /// Start arv-mount at `mount_point` (created if missing), give its stderr to
    /// `output`, and wait (at most `timeout`, and while `cancelled` gives no reason) until
    /// the mount answers. On failure it is gone (killed if need be) before this returns.
    pub fn start(
        settings: &Settings,
        mount_point: &Path,
        output: impl FnOnce(Box<dyn Read + Send>),
        timeout: Duration,
        cancelled: &dyn Fn() -> Option<String>,
    ) -> Result<ArvMount, String> {
        fs::create_dir_all(mount_point)
            .map_err(|e| format!("cannot create {}: {e}", mount_point.display()))?;
        if let Some((_, dir)) = &settings.keep_cache_disk {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut child = Command::new(&settings.program)
            .args(settings.argv(mount_point))
            .env_clear()
            .envs(settings.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", settings.program.display()))?;
        if let Some(stderr) = child.stderr.take() {
            output(Box::new(stderr));
        }
        let pid = child.id();
        let mut owned = OwnedChild::new(child);
        let killer = owned.killer();
        let status = ExitNote::default();
        let (done, exited) = crossbeam_channel::bounded::<()>(0);
        let kept = status.clone();
        std::thread::Builder::new()
            .name("arv-mount-reaper".into())
            .spawn(move || {
                kept.set(owned.wait().ok());
                drop(done);
            })
            .map_err(|e| {
                killer.kill();
                format!("cannot start arv-mount's reaper thread: {e}")
            })?;
        let mount = ArvMount {
            mount_point: mount_point.to_path_buf(),
            pid,
            killer,
            exited,
            status,
            stopped: AtomicBool::new(false),
        };
        if let Err(e) = mount.wait_ready(timeout, cancelled) {
            mount.stop();
            return Err(e);
        }
        Ok(mount)
    }

    /// Poll until the mount point is a mount with `by_id` in it.
    fn wait_ready(
        &self,
        timeout: Duration,
        cancelled: &dyn Fn() -> Option<String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let parent_dev = self
            .mount_point
            .parent()
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| m.dev());
        loop {
            let mounted =
                fs::metadata(&self.mount_point).is_ok_and(|m| Some(m.dev()) != parent_dev);
            if mounted && self.mount_point.join("by_id").is_dir() {
                return Ok(());
            }
            match self.exited.recv_timeout(Duration::from_millis(50)) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => {
                    return Err(format!(
                        "arv-mount exited before its mount was ready ({}); see arv-mount.txt",
                        self.exit_description()
                    ));
                }
            }
            if let Some(reason) = cancelled() {
                return Err(format!("cancelled while arv-mount was starting: {reason}"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "arv-mount did not mount {} within {} s; see arv-mount.txt",
                    self.mount_point.display(),
                    timeout.as_secs()
                ));
            }
        }
    }

    /// Where the mount is; collections are under `by_id/<pdh or uuid>`.
    pub fn root(&self) -> &Path {
        &self.mount_point
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A channel that disconnects once arv-mount has exited.
    pub fn exited(&self) -> Receiver<()> {
        self.exited.clone()
    }

    /// How it ended ("exit status 1", "signal 9 (SIGKILL)"), or "still running".
    pub fn exit_description(&self) -> String {
        self.status.describe()
    }

    /// How it ended, for another thread.
    pub fn status_handle(&self) -> ExitNote {
        self.status.clone()
    }

    /// Unmount (lazily, so a busy mount never stops it), wait up to `EXIT_PATIENCE` for
    /// arv-mount to exit, then kill it. Returns what went wrong, for crunch-run.txt.
    pub fn stop(&self) -> Vec<String> {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return Vec::new();
        }
        let mut problems = Vec::new();
        let running = self.exited.try_recv() != Err(crossbeam_channel::TryRecvError::Disconnected);
        if running && !is_mounted(&self.mount_point) {
            // It never mounted (a failed or cancelled start): nothing to wait for.
            self.killer.kill();
            let _ = self.exited.recv_timeout(EXIT_PATIENCE);
        } else if running {
            if let Err(e) = unmount(&self.mount_point) {
                problems.push(format!(
                    "unmounting {} failed: {e}",
                    self.mount_point.display()
                ));
            }
            if self.exited.recv_timeout(EXIT_PATIENCE) == Err(RecvTimeoutError::Timeout) {
                problems.push(format!(
                    "arv-mount did not exit within {} s of the unmount: killed",
                    EXIT_PATIENCE.as_secs()
                ));
                self.killer.kill();
                let _ = self.exited.recv_timeout(EXIT_PATIENCE);
            }
        }
        // A killed arv-mount leaves its mount behind ("transport endpoint not connected").
        if is_mounted(&self.mount_point) {
            let _ = unmount(&self.mount_point);
        }
        problems
    }
}

impl Drop for ArvMount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `/proc/self/mountinfo` lists `path` as a mount point.
fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p.replace("\\040", " ") == want)
}

/// `fusermount -u -z` (fuse 2 or 3's).
fn unmount(path: &Path) -> Result<(), String> {
    let mut last = String::from("no fusermount");
    for program in ["fusermount", "fusermount3"] {
        match Command::new(program)
            .args(["-u", "-z"])
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => last = format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()),
            Err(e) => last = format!("{program}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            program: "/usr/bin/arv-mount".into(),
            base_env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("ARVADOS_API_TOKEN".into(), "dispatcher-token".into()),
            ],
            api_host: "api.example:443".into(),
            token: "v2/zzzzz-gj3su-000000000000000/container-secret".into(),
            insecure: true,
            ca_file: None,
            keep_cache_ram: Some(1 << 20),
            keep_cache_disk: None,
            crunchstat_interval: Some(Duration::from_secs(10)),
            storage_classes: vec!["default".into()],
            pdh_only: true,
        }
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn argv_is_gos_and_holds_no_token() {
        let argv = strings(settings().argv(Path::new("/run/keep")));
        assert_eq!(
            argv.join(" "),
            "--foreground --allow-other --storage-classes default --crunchstat-interval=10 \
             --ram-cache --file-cache 1048576 --mount-by-pdh by_id --disable-event-listening \
             --mount-by-id by_uuid /run/keep"
        );
        assert!(!argv.iter().any(|a| a.contains("secret")));
    }

    #[test]
    fn disk_cache_wins_over_ram_cache_and_uuids_need_mount_by_id() {
        let mut s = settings();
        s.keep_cache_disk = Some((5 << 30, "/run/cache".into()));
        s.pdh_only = false;
        let argv = strings(s.argv(Path::new("/k"))).join(" ");
        assert!(
            argv.contains("--disk-cache --disk-cache-dir /run/cache --file-cache 5368709120 "),
            "{argv}"
        );
        assert!(!argv.contains("--ram-cache"), "{argv}");
        assert!(
            argv.contains("--mount-by-id by_id --mount-by-id by_uuid"),
            "{argv}"
        );
    }

    #[test]
    fn the_container_token_replaces_the_dispatchers_in_the_environment() {
        let env = settings().env();
        let tokens: Vec<_> = env
            .iter()
            .filter(|(k, _)| k == "ARVADOS_API_TOKEN")
            .collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            tokens[0].1,
            "v2/zzzzz-gj3su-000000000000000/container-secret"
        );
        assert!(
            env.iter()
                .any(|(k, v)| k == "ARVADOS_API_HOST_INSECURE" && v == "1")
        );
        assert!(env.iter().any(|(k, _)| k == "PATH"));
    }

    #[test]
    fn the_first_known_warning_is_reported_once() {
        let text = "ok\n2026 arv-mount ERROR: Block not found error: abc\nKeep write error: x\n";
        let mut said = Vec::new();
        let mut out = Vec::new();
        WarningScan::new(text.as_bytes(), |p: &str, l: &str| {
            said.push((p.to_string(), l.to_string()))
        })
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out, text.as_bytes());
        assert_eq!(
            said,
            [(
                "Block not found error".to_string(),
                "2026 arv-mount ERROR: Block not found error: abc".to_string()
            )]
        );
    }

    #[test]
    fn choice_follows_the_flag_the_store_and_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("arv-mount");
        fs::write(&prog, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
        let path = Some(dir.path().as_os_str());
        let fuse_dev = dir.path().join("fuse");
        fs::write(&fuse_dev, "").unwrap();
        let conf = dir.path().join("fuse.conf");
        let nofuse = dir.path().join("nofuse");
        let host = |dev_fuse, root| FuseHost {
            dev_fuse,
            fuse_conf: &conf,
            root,
        };
        let (fuse_dev, missing) = (host(&fuse_dev, true), host(&nofuse, true));

        let (c, why) = choose(KeepMount::Auto, false, path, &fuse_dev).unwrap();
        assert_eq!(c, Choice::Fuse(prog.clone()));
        assert!(why.ends_with("(--keep-mount=auto)"), "{why}");
        let (c, why) = choose(KeepMount::Stage, false, path, &fuse_dev).unwrap();
        assert_eq!(
            (c, why.as_str()),
            (Choice::Stage, "staging (--keep-mount=stage)")
        );
        let (c, why) = choose(KeepMount::Auto, false, None, &fuse_dev).unwrap();
        assert_eq!(
            (c, why.as_str()),
            (Choice::Stage, "staging (no arv-mount on PATH)")
        );
        let (c, why) = choose(KeepMount::Auto, true, path, &fuse_dev).unwrap();
        assert_eq!(c, Choice::Stage);
        assert!(why.contains("local store"), "{why}");
        let (c, why) = choose(KeepMount::Auto, false, path, &missing).unwrap();
        assert_eq!(c, Choice::Stage);
        assert!(why.contains("nofuse is not usable"), "{why}");
        let err = choose(KeepMount::Fuse, false, path, &missing).unwrap_err();
        assert!(err.starts_with("--keep-mount=fuse, but "), "{err}");
        // Not root: --allow-other needs user_allow_other.
        let user = host(fuse_dev.dev_fuse, false);
        let (c, why) = choose(KeepMount::Auto, false, path, &user).unwrap();
        assert_eq!(c, Choice::Stage);
        assert!(why.contains("lacks user_allow_other"), "{why}");
        fs::write(&conf, "# user_allow_other\nuser_allow_other\n").unwrap();
        let (c, _) = choose(KeepMount::Auto, false, path, &user).unwrap();
        assert_eq!(c, Choice::Fuse(prog.clone()));
    }
}
