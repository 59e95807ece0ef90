//! The handle of a `docker start --attach` client, attached to its container's streams, and
//! the env file `docker create` reads.
//!
//! The handle owns the client process only: killing or dropping it never touches the
//! container (that takes `docker rm -f`), and the client's exit status is not the container's
//! (ask `Docker::inspect_state`). Wiring the streams to logs is the caller's job.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, ExitStatus};

use super::error::DockerError;
use crate::process::{ChildKiller, OwnedChild, widen_pipe};

/// `docker start --attach`, running. Dropping it without waiting kills the client (never the container)
/// and reaps it.
#[derive(Debug)]
pub struct Attached {
    client: OwnedChild,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Attached {
    /// A spawned client, its pipes taken from it. stdout and stderr are widened: every
    /// attached run gets the 1 MiB pipes, whichever method spawned it.
    pub(super) fn new(mut child: Child) -> Attached {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        stdout.iter().for_each(widen_pipe);
        stderr.iter().for_each(widen_pipe);
        Attached {
            stdin: child.stdin.take(),
            stdout,
            stderr,
            client: OwnedChild::new(child),
        }
    }

    /// The container's stdin, when the spec asked for one. Drop it to send EOF.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The container's stdout, as relayed by the client. `None` after the first call.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The container's stderr, as relayed by the client (its own errors follow). `None`
    /// after the first call.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Wait for the client to exit. Its status is the client's, not the container's.
    pub fn wait(&mut self) -> Result<ExitStatus, DockerError> {
        self.client.wait().map_err(wait_failed)
    }

    /// What kills the client from another thread, while this one waits (for when the
    /// container is gone but the client hangs on). The container is not affected.
    pub fn killer(&self) -> ChildKiller {
        self.client.killer()
    }
}

fn wait_failed(source: io::Error) -> DockerError {
    DockerError::Io {
        op: "start",
        source,
    }
}

/// An env file with mode 0600, for the variables the docker CLI must not see in its own
/// environment; removed when dropped.
#[derive(Debug)]
pub(super) struct EnvFile {
    path: PathBuf,
}

impl EnvFile {
    /// Where the env file for container `name` goes in `scratch_dir`.
    pub(super) fn path(scratch_dir: &Path, name: &str) -> PathBuf {
        scratch_dir.join(format!(
            ".docker-env-{}-{}",
            std::process::id(),
            file_safe(name)
        ))
    }

    pub(super) fn write(path: &Path, content: &str) -> Result<EnvFile, DockerError> {
        let fail = |source| DockerError::EnvFile {
            path: path.to_path_buf(),
            source,
        };
        // A leftover from a crashed run with the same pid would make create_new fail.
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        let env_file = EnvFile {
            path: path.to_path_buf(),
        };
        file.write_all(content.as_bytes()).map_err(fail)?;
        Ok(env_file)
    }
}

impl Drop for EnvFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 7, review §5.5): the handle's errors named another command than the
    /// one it runs.
    #[test]
    fn a_failed_wait_names_docker_start() {
        let err = wait_failed(io::Error::other("interrupted"));
        assert_eq!(err.to_string(), "`docker start`: interrupted");
    }

    #[test]
    fn env_file_is_private_named_after_the_container_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = EnvFile::path(dir.path(), "a/b c");
        assert!(
            path.to_string_lossy().ends_with("-a_b_c"),
            "{}",
            path.display()
        );
        fs::write(&path, "left over by a crashed run").unwrap();
        let file = EnvFile::write(&path, "HOME=/h\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "HOME=/h\n");
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        drop(file);
        assert!(!path.exists());
    }
}
