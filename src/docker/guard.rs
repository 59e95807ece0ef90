//! The guard: a small process that removes the docker container if crunch-run dies.
//!
//! SIGKILL cannot be caught, and killing the `docker` client does not stop the container it
//! talks to, so without help a killed crunch-run leaves its container running (peers.md, P1).
//! crunch-run therefore starts a copy of itself in a hidden mode, `--guard-container <name>`,
//! whose stdin is a pipe that only crunch-run can write to (std opens pipes close-on-exec, so no
//! other child inherits the write end). The guard just blocks reading that pipe:
//!
//! * it reads the line `release` — crunch-run finished cleanly and has removed the container
//!   itself: the guard exits and touches nothing;
//! * it reads EOF first — crunch-run exited (or was killed) without releasing it: the guard runs
//!   `docker rm -f <name>` (retried briefly, and once more a little later in case a
//!   `docker create` was still in flight) and exits.
//!
//! The guard runs in its own process group, so a Ctrl-C at a terminal (which signals
//! crunch-run's whole group) leaves it alone; it also ignores SIGINT and SIGHUP. Under a
//! batch scheduler that kills a job by its cgroups, the caller moves it out of them
//! (slurm.rs); after a removal it runs what the caller gave it to clean up besides.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::Duration;

use super::cli::Docker;
use crate::process::OwnedChild;

/// The hidden flag the main binary dispatches to [`run_guard`].
pub const GUARD_FLAG: &str = "--guard-container";
/// The hidden flag that passes the container's cgroup parent to the guard.
pub const GUARD_CGROUP_PARENT_FLAG: &str = "--guard-cgroup-parent";
/// Tells the guard which docker program to run (the path crunch-run itself uses).
pub const GUARD_DOCKER_ENV: &str = "CRUNCH_RUN_GUARD_DOCKER";
/// What crunch-run writes when the guard is no longer needed.
const RELEASE: &[u8] = b"release\n";
/// How long `release` waits for the guard to exit before killing it.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// Pause before the guard's second look for the container.
const RECHECK_DELAY: Duration = Duration::from_secs(2);

/// A running guard for one container. Dropping it without [`Guard::release`] closes the pipe,
/// which makes the guard remove the container (so a panic unwinding through the lifecycle also
/// cleans up).
#[derive(Debug)]
pub struct Guard {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Guard {
    /// Start `<exe> --guard-container <container_name> [--guard-cgroup-parent <path>]`,
    /// with `docker`'s program passed on in [`GUARD_DOCKER_ENV`]. `exe` is normally
    /// `std::env::current_exe()`.
    pub fn spawn(
        exe: &Path,
        container_name: &str,
        cgroup_parent: Option<&str>,
        docker: &Docker,
    ) -> io::Result<Guard> {
        Guard::spawn_command(Guard::command(exe, container_name, cgroup_parent, docker))
    }

    /// The command [`Guard::spawn`] runs, in the environment docker clients get: the guard
    /// does not need crunch-run's `ARVADOS_*` variables either.
    pub fn command(
        exe: &Path,
        container_name: &str,
        cgroup_parent: Option<&str>,
        docker: &Docker,
    ) -> Command {
        let mut cmd = Command::new(exe);
        cmd.arg(GUARD_FLAG).arg(container_name);
        if let Some(parent) = cgroup_parent {
            cmd.arg(GUARD_CGROUP_PARENT_FLAG).arg(parent);
        }
        cmd.env_clear()
            .envs(docker.env().iter().map(|(k, v)| (k, v)))
            .env(GUARD_DOCKER_ENV, docker.program());
        cmd
    }

    /// Start a guard from an arbitrary command (tests run the test binary this way). The
    /// command's stdin becomes the guard pipe, its stdout is discarded, its stderr is shared
    /// with crunch-run, and it gets its own process group.
    pub fn spawn_command(mut cmd: Command) -> io::Result<Guard> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        Ok(Guard {
            child: Some(child),
            stdin,
        })
    }

    /// The guard's process id, while it has not been released.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Tell the guard crunch-run has dealt with the container, and wait (at most a few
    /// seconds) for it to exit; one that does not is killed and reaped before this returns.
    /// The container is left alone.
    pub fn release(mut self) -> io::Result<()> {
        let written = match self.stdin.take() {
            Some(mut stdin) => stdin.write_all(RELEASE),
            None => Ok(()),
        };
        let Some(child) = self.child.take() else {
            return written;
        };
        // This thread is the guard's only waiter from here on: if the deadline passes, the
        // kill (on drop) reaches the guard itself, never a process that took its reused pid.
        let mut guard = OwnedChild::new(child);
        let Some(status) = guard.wait_timeout(RELEASE_WAIT)? else {
            drop(guard);
            written?;
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the guard process did not exit after release; killed it",
            ));
        };
        written?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the guard process failed: {status}"
            )))
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe without "release" is the signal to remove the container.
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            // Reap it without blocking the caller; removal may take a few seconds.
            let _ = thread::Builder::new()
                .name("guard-reaper".into())
                .spawn(move || child.wait());
        }
    }
}

/// The guard process's whole life; returns its exit status. The main binary calls this when
/// invoked as `crunch-run --guard-container <name>`, with the docker CLI crunch-run named.
/// `on_removed` runs after each removal (the cgroup directories docker left, say).
pub fn run_guard(name: &str, docker: &Docker, on_removed: &dyn Fn()) -> i32 {
    ignore_terminal_signals();
    if wait_for_release(io::stdin().lock()) {
        return 0;
    }
    eprintln!(
        "crunch-run guard: crunch-run exited without releasing container {name}; removing it"
    );
    if let Err(e) = docker.remove(name) {
        eprintln!("crunch-run guard: {e}");
        return 1;
    }
    on_removed();
    // A `docker create` sent just before crunch-run died may still be creating the container.
    thread::sleep(RECHECK_DELAY);
    match docker.exists(name) {
        Ok(false) => 0,
        Ok(true) => match docker.remove(name) {
            Ok(()) => {
                on_removed();
                0
            }
            Err(e) => {
                eprintln!("crunch-run guard: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("crunch-run guard: {e}");
            1
        }
    }
}

/// Read until EOF. True if the input began with the release line (the guard stops reading
/// right there), false if EOF came first or the input was anything else.
fn wait_for_release(mut input: impl Read) -> bool {
    let mut got = Vec::with_capacity(RELEASE.len());
    let mut buf = [0u8; 64];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if got.len() < RELEASE.len() {
                    let take = n.min(RELEASE.len() - got.len());
                    got.extend_from_slice(&buf[..take]);
                    if got == RELEASE {
                        return true;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A broken stdin is as good as EOF: nobody can release us any more.
            Err(_) => return false,
        }
    }
}

fn ignore_terminal_signals() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it is done
    // once at guard start-up, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_line_releases() {
        assert!(wait_for_release(&b"release\n"[..]));
        assert!(wait_for_release(&b"release\nand more"[..]));
    }

    #[test]
    fn eof_or_anything_else_means_remove() {
        assert!(!wait_for_release(&b""[..]));
        assert!(!wait_for_release(&b"releas"[..]));
        assert!(!wait_for_release(&b"release"[..]));
        assert!(!wait_for_release(&b"nope\nrelease\n"[..]));
    }

    /// A reader that hands out one byte at a time, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.split_first() {
                Some((b, rest)) if !buf.is_empty() => {
                    buf[0] = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn release_line_may_arrive_in_pieces() {
        assert!(wait_for_release(Trickle(b"release\n")));
        assert!(!wait_for_release(Trickle(b"relax\n")));
    }

    #[test]
    fn release_kills_and_reaps_a_guard_that_does_not_exit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut cmd = Command::new("sh");
        // Never reads its stdin, so "release" goes unheard.
        cmd.args([
            "-c",
            r#"echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec sleep 60"#,
        ])
        .arg(&pid_file);
        let guard = Guard::spawn_command(cmd).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                break text.trim().parse::<libc::pid_t>().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the guard did not start"
            );
            thread::sleep(Duration::from_millis(10));
        };
        let err = guard.release().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // Killed and reaped before release returned: the pid names nothing any more.
        // SAFETY: signal 0 only asks whether the pid exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "guard {pid} still exists");
    }

    #[test]
    fn command_names_the_container_and_docker() {
        let env = [
            ("PATH".into(), "/bin".into()),
            ("ARVADOS_API_TOKEN".into(), "secret".into()),
        ];
        let docker = Docker::with_program_and_env("/usr/bin/docker", env);
        let exe = Path::new("/usr/bin/crunch-run");
        let name = "zzzzz-dz642-000000000000000";
        let cmd = Guard::command(exe, name, None, &docker);
        assert_eq!(cmd.get_program(), "/usr/bin/crunch-run");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, [GUARD_FLAG, name]);
        let parented = Guard::command(exe, name, Some("/slurm/job_1"), &docker);
        let args: Vec<_> = parented.get_args().collect();
        assert_eq!(
            args,
            [GUARD_FLAG, name, GUARD_CGROUP_PARENT_FLAG, "/slurm/job_1"]
        );
        let envs: Vec<_> = cmd.get_envs().collect();
        assert_eq!(
            envs,
            [
                (GUARD_DOCKER_ENV.as_ref(), Some("/usr/bin/docker".as_ref())),
                ("PATH".as_ref(), Some("/bin".as_ref())),
            ],
            "the docker clients' environment, without ARVADOS_*"
        );
    }
}
