//! What arvados-dispatch-cloud needs around a run: `--detach` (start the run in the
//! background and say its PID), the lock file each run holds while it lives, `--list`
//! (the UUIDs of live runs, and `broken` while the node is marked broken; the price
//! history on its stdin kept for the runs, which are told with SIGUSR2) and `--kill N UUID`
//! (signal a run, and check that it went).
//!
//! The lock file is `<lock dir>/crunch-run-<uuid>.lock` (`/var/lock` unless
//! `CRUNCH_RUN_LOCK_DIR` says otherwise: config.rs decides, every function here is told),
//! holding `{"UUID":…,"PID":…}` under an exclusive flock(2) for as long as the run's
//! process lives, so a crashed run leaves a lock nobody holds.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{BROKEN_FILE, Config, PRICES_FILE};

const PREFIX: &str = "crunch-run-";
const SUFFIX: &str = ".lock";

fn lock_path(dir: &Path, uuid: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{uuid}{SUFFIX}"))
}

/// Try an exclusive lock without waiting: Ok(false) when another process holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Take this run's lock in `lock_dir` and write our PID into it. Keep the returned file
/// open for as long as the run lives.
pub fn hold_lock(lock_dir: &Path, uuid: &str) -> io::Result<File> {
    let path = lock_path(lock_dir, uuid);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    if !try_lock(&file)? {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another crunch-run holds {} (container {uuid} is already being run)",
                path.display()
            ),
        ));
    }
    file.set_len(0)?;
    file.rewind()?;
    let record = serde_json::json!({"UUID": uuid, "PID": std::process::id()});
    // One write, so that `--list` never reads half a record.
    file.write_all(format!("{record}\n").as_bytes())?;
    Ok(file)
}

/// The PID a lock file names, and whether a live process still holds the lock.
fn inspect_lock(path: &Path) -> io::Result<(Option<u32>, bool)> {
    let mut file = File::open(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let pid = serde_json::from_str::<serde_json::Value>(text.trim())
        .ok()
        .and_then(|v| v.get("PID").and_then(serde_json::Value::as_u64))
        .and_then(|p| u32::try_from(p).ok());
    let held = !try_lock(&file)?;
    Ok((pid, held))
}

/// `--list`: `broken` while the node is marked so (broken_node.rs), then the UUIDs of live
/// runs with a lock in `lock_dir`, one per line, as arvados-dispatch-cloud reads them. A
/// lock still held when the crunch-run that took it has died (a child, such as a stuck
/// arv-mount, inherited it) is listed `<uuid> stale`, as Go's: the dispatcher then knows
/// the run is gone but the node is not clean. Lock files nobody holds are left by runs
/// that ended without cleaning up: removed.
pub fn list(lock_dir: &Path, out: &mut dyn Write) -> io::Result<()> {
    if lock_dir.join(BROKEN_FILE).exists() {
        writeln!(out, "broken")?;
    }
    let mut live = live_runs(lock_dir)?;
    live.sort();
    for (uuid, pid) in live {
        let dead = pid
            .and_then(|p| libc::pid_t::try_from(p).ok())
            .is_some_and(|p| !alive(p));
        match dead {
            true => writeln!(out, "{uuid} stale")?,
            false => writeln!(out, "{uuid}")?,
        }
    }
    Ok(())
}

/// `--list` given a price history on stdin: keep it for the runs on this host (prices.rs),
/// and tell each live run to reload it (SIGUSR2, as Go's `--list` does).
pub fn tell_prices(lock_dir: &Path, text: &[u8]) -> io::Result<()> {
    crate::prices::keep_prices(&lock_dir.join(PRICES_FILE), text)?;
    for (_, pid) in live_runs(lock_dir)? {
        if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill(2) with a PID and a signal number touches no memory.
            unsafe { libc::kill(pid, libc::SIGUSR2) };
        }
    }
    Ok(())
}

/// The runs alive in `lock_dir` and their PIDs; lock files nobody holds are removed.
fn live_runs(lock_dir: &Path) -> io::Result<Vec<(String, Option<u32>)>> {
    let entries = match fs::read_dir(lock_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(uuid) = name
            .strip_prefix(PREFIX)
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        match inspect_lock(&entry.path()) {
            Ok((pid, true)) => live.push((uuid.to_string(), pid)),
            Ok((_, false)) => {
                let _ = fs::remove_file(entry.path());
            }
            Err(_) => {}
        }
    }
    Ok(live)
}

/// `--kill N UUID`: send signal `signal` to the run of `uuid`, and wait (up to 10 s: it
/// removes its container and saves its logs first) for it to end. Nothing to do when no
/// live run holds the lock.
pub fn kill(lock_dir: &Path, uuid: &str, signal: i32) -> io::Result<()> {
    let path = lock_path(lock_dir, uuid);
    let (pid, held) = match inspect_lock(&path) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(pid) = pid.filter(|_| held) else {
        return Ok(());
    };
    let pid = pid as libc::pid_t;
    // SAFETY: kill(2) with a pid read from the lock file that process holds.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !alive(pid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::other(format!(
        "sent signal {signal} to PID {pid} but process is still alive"
    )))
}

/// Whether `pid` is a process that has not yet exited (a zombie waiting for its parent to
/// reap it has).
fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')'.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// `--detach`: start this same command (`argv`, as normalized, without `--detach`) in a
/// process group of its own, its output appended to `<spool dir>/crunch-run-<uuid>.log`,
/// `stdin_config` (if any) on its stdin; wait until it holds the run's lock in `lock_dir`,
/// and return its PID.
pub fn run_detached(
    config: &Config,
    lock_dir: &Path,
    argv: &[OsString],
    stdin_config: Option<&str>,
) -> io::Result<u32> {
    let uuid = config.container_uuid.as_str();
    let log = config.spool_dir.join(format!("crunch-run-{uuid}.log"));
    let args = argv.iter().skip(1).filter(|a| *a != "--detach");
    // crunch-run's own stderr: for crunch-run's user only, as the spooled logs are.
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(if stdin_config.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(output.try_clone()?)
        .stderr(output)
        .process_group(0)
        .spawn()?;
    if let (Some(mut stdin), Some(text)) = (child.stdin.take(), stdin_config) {
        stdin.write_all(text.as_bytes())?;
    }
    let pid = child.id();
    let path = lock_path(lock_dir, uuid);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((Some(locked_by), true)) = inspect_lock(&path)
            && locked_by == pid
        {
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the detached crunch-run exited ({status}) before taking its lock; see {}",
                log.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the detached crunch-run (PID {pid}) did not take its lock; see {}",
                    log.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_listed_and_a_second_holder_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let uuid = "zzzzz-dz642-000000000000001";
        let held = hold_lock(dir, uuid).unwrap();
        // A stale lock file, nobody holding it.
        fs::write(lock_path(dir, "zzzzz-dz642-000000000000002"), "{}").unwrap();
        // flock is per open file: a second open in this process is another holder.
        assert!(hold_lock(dir, uuid).is_err());
        let mut out = Vec::new();
        list(dir, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{uuid}\n"));
        assert!(!lock_path(dir, "zzzzz-dz642-000000000000002").exists());
        let (pid, live) = inspect_lock(&lock_path(dir, uuid)).unwrap();
        assert_eq!(pid, Some(std::process::id()));
        assert!(live);
        drop(held);
        let mut out = Vec::new();
        list(dir, &mut out).unwrap();
        assert!(out.is_empty());
    }

    /// As Go's `--list`: the lock is held, but not by the crunch-run it names, which died.
    #[test]
    fn a_lock_held_after_its_crunch_run_died_is_listed_stale() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let uuid = "zzzzz-dz642-000000000000003";
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = gone.id();
        gone.wait().unwrap();
        let path = lock_path(dir, uuid);
        fs::write(
            &path,
            format!("{{\"UUID\":\"{uuid}\",\"PID\":{dead_pid}}}\n"),
        )
        .unwrap();
        // The holder is this process, standing in for an arv-mount that inherited it.
        let holder = File::open(&path).unwrap();
        assert!(try_lock(&holder).unwrap());
        let mut out = Vec::new();
        list(dir, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{uuid} stale\n"));
        assert!(path.exists(), "a held lock is not removed");
    }

    #[test]
    fn a_broken_node_is_listed_first_and_prices_are_kept_for_the_runs() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let uuid = "zzzzz-dz642-000000000000001";
        let _held = hold_lock(dir, uuid).unwrap();
        fs::write(dir.join(BROKEN_FILE), "").unwrap();
        let mut out = Vec::new();
        list(dir, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("broken\n{uuid}\n"));
        assert!(tell_prices(dir, b"not prices").is_err());
        assert!(!dir.join(PRICES_FILE).exists());
        // The live run is this process: ignore the SIGUSR2 it is sent.
        let got = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(libc::SIGUSR2, got.clone()).unwrap();
        let prices = br#"[{"StartTime":"2026-01-01T00:00:00Z","Price":0.5}]"#;
        tell_prices(dir, prices).unwrap();
        assert_eq!(fs::read(dir.join(PRICES_FILE)).unwrap(), prices);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !got.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            got.load(std::sync::atomic::Ordering::SeqCst),
            "SIGUSR2 sent"
        );
    }

    #[test]
    fn kill_without_a_live_run_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        kill(dir.path(), "zzzzz-dz642-000000000000003", 15).unwrap();
        // Nor does a missing lock directory.
        kill(
            &dir.path().join("nowhere"),
            "zzzzz-dz642-000000000000003",
            15,
        )
        .unwrap();
        list(&dir.path().join("nowhere"), &mut Vec::new()).unwrap();
    }
}
