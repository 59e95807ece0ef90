//! Owning a child process: waiting for it with a deadline, killing it with whatever it
//! started, always reaping it, and draining its pipes so it can never block on them
//! (reading pipes is pipes.rs's).
//!
//! Nothing here knows about docker (the docker CLI is one user, the guard another). The
//! shapes follow ripgrep's `CommandReader` and duct: both pipes are drained on threads, a wait
//! means the child exited *and* its pipes were drained, and `Drop` is the backstop that kills
//! and reaps a child nobody waited for. What a child's failure means is left to the caller:
//! [`Output`] and [`WaitError`] are data, and [`describe_status`] only words an exit status.
//!
//! The one invariant that makes killing safe: an [`OwnedChild`] is the only waiter of its
//! process, so while it has not seen the exit the pid cannot have been reaped and reused.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

mod pipes;

use pipes::{Keep, drain, trimmed_text};
pub use pipes::{MAX_READ_ERRORS, ReadTrouble, Tail, TailReader, read_on, widen_pipe};

/// How much of a short command's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;
/// How much of a short command's stdout is kept (ids, versions, one JSON object…).
const STDOUT_HEAD_BYTES: usize = 1 << 20;

/// A child that is always reaped, by a wait or by `Drop` (which kills it and its process
/// group first). Waits sleep on a pidfd of the child, so an exit is noticed at once; where
/// pidfds are missing (Linux < 5.3), a wait polls with a growing pause instead.
///
/// Another thread may kill it while this one waits, through a [`ChildKiller`]: reaping
/// and killing take the same lock, so a kill never reaches a pid that was reaped (and
/// maybe reused), as shared_child does with `waitid(WNOWAIT)`.
#[derive(Debug)]
pub struct OwnedChild {
    cell: Arc<ChildCell>,
}

#[derive(Debug)]
struct ChildCell {
    state: Mutex<ChildState>,
    /// Readable once the child has exited; opened while the child is surely unreaped.
    exit_notice: Option<OwnedFd>,
}

#[derive(Debug)]
struct ChildState {
    child: Child,
    /// Set when the child is reaped: from then on, its pid is not ours.
    status: Option<ExitStatus>,
}

impl ChildCell {
    fn lock(&self) -> MutexGuard<'_, ChildState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILL the child and its process group, unless it has already been reaped.
    fn kill(&self) {
        let mut state = self.lock();
        if state.status.is_none() {
            kill_group(&mut state.child);
        }
    }

    /// Reap the child if it has exited.
    fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        let mut state = self.lock();
        if state.status.is_none() {
            state.status = state.child.try_wait()?;
        }
        Ok(state.status)
    }
}

/// Kills an [`OwnedChild`] (and its process group) from any thread; after the child was
/// reaped, does nothing.
#[derive(Debug, Clone)]
pub struct ChildKiller(Arc<ChildCell>);

impl ChildKiller {
    pub fn kill(&self) {
        self.0.kill();
    }
}

impl OwnedChild {
    /// Take ownership of a child nobody has waited for. Its pipes stay with `child`'s caller,
    /// who should take them first.
    pub fn new(child: Child) -> OwnedChild {
        OwnedChild {
            cell: Arc::new(ChildCell {
                exit_notice: pidfd_open(child.id()),
                state: Mutex::new(ChildState {
                    child,
                    status: None,
                }),
            }),
        }
    }

    /// Wait for the child to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = wait_until(&self.cell, None)? {
                return Ok(status);
            }
        }
    }

    /// Like [`OwnedChild::wait`], giving up after `timeout` (then `Ok(None)`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        wait_until(&self.cell, Some(Instant::now() + timeout))
    }

    /// SIGKILL the child and its process group, unless it has already been reaped.
    pub fn kill(&mut self) {
        self.cell.kill();
    }

    /// A handle that kills the child from another thread.
    pub fn killer(&self) -> ChildKiller {
        ChildKiller(Arc::clone(&self.cell))
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        let mut state = self.cell.lock();
        if state.status.is_none() {
            kill_group(&mut state.child);
            state.status = state.child.wait().ok();
        }
    }
}

/// A short command, running, its stdout and stderr drained on threads: a bounded head of
/// stdout and a tail of stderr are kept.
#[derive(Debug)]
pub struct Running {
    child: OwnedChild,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// A finished short command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// The first [`STDOUT_HEAD_BYTES`] of stdout.
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL_BYTES`] of stderr, lossily decoded and trimmed.
    pub stderr: String,
}

/// Why [`Running::wait`] has no [`Output`].
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The deadline passed: the child and its group were killed and reaped.
    #[error("did not finish within {} s and was killed", .timeout.as_secs())]
    TimedOut { timeout: Duration, stderr: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Running {
    /// Own `child` and drain its piped stdout and stderr. Whatever fails, the child is reaped.
    pub fn new(mut child: Child) -> io::Result<Running> {
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let mut running = Running {
            stdin: child.stdin.take(),
            child: OwnedChild::new(child),
            stdout: None,
            stderr: None,
        };
        if let Some(out) = stdout {
            running.stdout = Some(drain(out, Keep::Head(STDOUT_HEAD_BYTES))?);
        }
        if let Some(err) = stderr {
            running.stderr = Some(drain(err, Keep::Tail(STDERR_TAIL_BYTES))?);
        }
        Ok(running)
    }

    /// The child's stdin, if it was piped. Drop it to send EOF.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// SIGKILL the child and its process group; [`Running::wait`] still reaps it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// What kills the child from another thread while this one waits.
    pub fn killer(&self) -> ChildKiller {
        self.child.killer()
    }

    /// Close stdin if still open, wait for exit (killing the child after `timeout`), then
    /// for both pipes to be drained.
    pub fn wait(mut self, timeout: Option<Duration>) -> Result<Output, WaitError> {
        drop(self.stdin.take());
        let status = match timeout {
            None => self.child.wait()?,
            Some(timeout) => match self.child.wait_timeout(timeout)? {
                Some(status) => status,
                None => {
                    self.child.kill();
                    // Reap it; how it died is not the news, the timeout is.
                    let _ = self.child.wait();
                    let (_, stderr) = self.join();
                    let stderr = trimmed_text(&stderr);
                    return Err(WaitError::TimedOut { timeout, stderr });
                }
            },
        };
        let (stdout, stderr) = self.join();
        Ok(Output {
            status,
            stdout,
            stderr: trimmed_text(&stderr),
        })
    }

    /// Collect what the drain threads kept. They end once the child's pipes close.
    fn join(&mut self) -> (Vec<u8>, Vec<u8>) {
        let collect =
            |h: Option<JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        (collect(self.stdout.take()), collect(self.stderr.take()))
    }
}

impl Output {
    /// The first non-empty line of stdout, trimmed.
    pub fn first_line(&self) -> Option<String> {
        String::from_utf8_lossy(&self.stdout)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(String::from)
    }
}

/// SIGKILL a child and whatever it started: the callers' children lead their own process
/// groups (`process_group(0)`), so helpers they spawned cannot keep our pipes open after them.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) touches no memory of ours. Only `OwnedChild` calls this, before it
        // has seen the exit; it is the child's only waiter, so the pid is not yet reaped and
        // still names this child's group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
}

/// `Ok(None)` if `deadline` passed first. Sleeps on the child's pidfd if there is one, else
/// polls with a growing pause; the lock is taken only to reap, never while sleeping, so a
/// `ChildKiller` is never kept waiting. No waiter thread: the child is reaped only here or
/// by `Drop`.
fn wait_until(cell: &ChildCell, deadline: Option<Instant>) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = cell.try_reap()? {
            return Ok(Some(status));
        }
        let left = match deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Ok(None),
            },
            None => None,
        };
        match &cell.exit_notice {
            Some(fd) => poll_readable(fd, left)?,
            None => {
                thread::sleep(left.map_or(pause, |left| pause.min(left)));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// A pidfd for `pid` (readable once the process has exited), or None where the kernel has none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Wait until `fd` is readable or `timeout` (if any) passed; a signal may end the wait early.
fn poll_readable(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up, so the deadline is never missed by a poll that returns early; -1: none.
    let millis = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut pollfd, 1, millis) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// `exit status 1`, `killed by signal 9 (SIGKILL)`.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match signal_name(sig) {
            Some(name) => format!("killed by signal {sig} ({name})"),
            None => format!("killed by signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// The conventional Linux name of a signal number, for the common ones.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn wait_timeout_gives_the_exit_status() {
        let mut child = OwnedChild::new(sh("exit 3").spawn().unwrap());
        let status = child.wait_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
        // Reaped once; the status is remembered.
        assert_eq!(child.wait().unwrap().code(), Some(3));
    }

    #[test]
    fn wait_timeout_gives_up_at_the_timeout() {
        let mut child = OwnedChild::new(Command::new("sleep").arg("60").spawn().unwrap());
        let started = Instant::now();
        assert!(
            child
                .wait_timeout(Duration::from_millis(50))
                .unwrap()
                .is_none()
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        child.kill();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_killer_on_another_thread_ends_a_wait_and_does_nothing_after_it() {
        let mut child = OwnedChild::new(sh("sleep 60; true").process_group(0).spawn().unwrap());
        let killer = child.killer();
        let started = Instant::now();
        let killing = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            killer.kill();
        });
        // A wait without a deadline, woken by the exit alone.
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(started.elapsed() < Duration::from_secs(30));
        killing.join().unwrap();
        // Reaped: the pid is no longer ours to signal.
        child.killer().kill();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn dropping_kills_and_reaps_the_whole_group() {
        // `; true` keeps sh from exec'ing: `sleep` is a grandchild holding the pipe.
        let mut child = sh("sleep 60; true")
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let pid = child.id() as libc::pid_t;
        let started = Instant::now();
        drop(OwnedChild::new(child));
        // SAFETY: signal 0 only asks whether the pid exists; it is reaped, so it does not.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the child was not reaped");
        // EOF comes only once the grandchild is dead too.
        io::copy(&mut stdout, &mut io::sink()).unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn running_keeps_stdout_head_and_stderr_tail() {
        let script = "head -c 2000000 /dev/zero; head -c 10000 /dev/zero >&2; echo end >&2; exit 4";
        let child = sh(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Running::new(child).unwrap().wait(None).unwrap();
        assert_eq!(out.status.code(), Some(4));
        assert_eq!(out.stdout.len(), STDOUT_HEAD_BYTES);
        assert!(out.stderr.ends_with("end"), "{:?}", out.stderr);
        assert!(out.stderr.len() <= STDERR_TAIL_BYTES);
    }

    #[test]
    fn running_past_its_timeout_is_killed_with_what_it_said() {
        let child = sh("echo stuck >&2; sleep 60; true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let started = Instant::now();
        let err = Running::new(child)
            .unwrap()
            .wait(Some(Duration::from_millis(200)))
            .unwrap_err();
        // The `sleep` grandchild holds the pipes: the wait returns only because the group
        // was killed.
        assert!(started.elapsed() < Duration::from_secs(30));
        match err {
            WaitError::TimedOut { stderr, .. } => assert_eq!(stderr, "stuck"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn describes_statuses() {
        assert_eq!(
            describe_status(ExitStatus::from_raw(1 << 8)),
            "exit status 1"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(34)),
            "killed by signal 34"
        );
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(64), None);
    }
}
