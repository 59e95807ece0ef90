//! What a failed docker command was, and what it suggests: the error type every docker
//! operation returns, the hint its message ends with, and the pattern checks a caller uses to
//! judge the failure (engine down, broken node, a command that could not start).
//!
//! What this module does not decide: what an error means for the container's final state. It
//! offers [`DockerError::is_engine_down`], [`suggests_broken_node`] and [`classify_start_error`]
//! so the lifecycle (run/) can.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::argv::ArgvError;
use crate::process::{Output, WaitError, describe_status};

/// A failed docker operation. Messages carry the operation, the CLI's exit status and the tail
/// of its stderr; they never carry environment values (those are never in argv either).
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("could not run {program:?} for `docker {op}`: {source}")]
    Spawn {
        op: &'static str,
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`docker {op}` failed ({status}): {stderr}{}", hint(.stderr))]
    Failed {
        op: &'static str,
        status: String,
        stderr: String,
    },
    #[error(
        "`docker {op}` did not finish within {} s and was killed; the Docker engine may be hung \
         (stderr so far: {stderr:?})",
        .timeout.as_secs()
    )]
    Timeout {
        op: &'static str,
        timeout: Duration,
        stderr: String,
    },
    #[error("`docker {op}`: {detail}{}", hint(.detail))]
    Unexpected { op: &'static str, detail: String },
    #[error("`docker {op}`: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading the image tar to feed `docker load` failed: {source}")]
    Feed {
        #[source]
        source: io::Error,
    },
    #[error("could not write the docker env file {path:?}: {source}")]
    EnvFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the `docker create` command: {0}")]
    Argv(#[from] ArgvError),
}

impl DockerError {
    /// `Err(Failed)` unless the command exited 0.
    pub(super) fn check(op: &'static str, out: &Output) -> Result<(), DockerError> {
        if out.status.success() {
            Ok(())
        } else {
            Err(DockerError::Failed {
                op,
                status: describe_status(out.status),
                stderr: out.stderr.clone(),
            })
        }
    }

    /// Output that makes no sense to us.
    pub(super) fn unexpected(op: &'static str, detail: &str) -> DockerError {
        DockerError::Unexpected {
            op,
            detail: detail.to_string(),
        }
    }

    pub(super) fn spawn(op: &'static str, program: &Path, source: io::Error) -> DockerError {
        DockerError::Spawn {
            op,
            program: program.to_path_buf(),
            source,
        }
    }

    /// A short command that did not give its output.
    pub(super) fn wait(op: &'static str, e: WaitError) -> DockerError {
        match e {
            WaitError::TimedOut { timeout, stderr } => DockerError::Timeout {
                op,
                timeout,
                stderr,
            },
            WaitError::Io(source) => DockerError::Io { op, source },
        }
    }

    /// The docker CLI could not reach the engine (daemon stopped, socket refused).
    pub fn is_engine_down(&self) -> bool {
        self.text().is_some_and(engine_down_text)
    }

    /// The error matches one of the patterns after which the Go crunch-run declares the node
    /// unable to run containers (so the dispatcher should stop using it).
    pub fn suggests_broken_node(&self) -> bool {
        self.text().is_some_and(suggests_broken_node)
    }

    /// What docker said, for the pattern checks above.
    fn text(&self) -> Option<&str> {
        match self {
            DockerError::Failed { stderr, .. } | DockerError::Timeout { stderr, .. } => {
                Some(stderr)
            }
            DockerError::Unexpected { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

fn engine_down_text(text: &str) -> bool {
    let t = text.to_lowercase();
    [
        "cannot connect to the docker daemon",
        "is the docker daemon running",
        "connection refused",
        "error during connect",
    ]
    .iter()
    .any(|p| t.contains(p))
}

/// The next step to suggest after a docker failure, appended to its message.
fn hint(text: &str) -> &'static str {
    if engine_down_text(text) {
        " (the Docker engine is not reachable: check that dockerd is running and that this user \
         may use its socket)"
    } else if text.to_lowercase().contains("no space left on device") {
        " (the Docker host is out of disk space)"
    } else {
        ""
    }
}

/// Whether `text` (a docker error or stderr) matches the Go crunch-run's broken-node list:
/// engine unreachable, OCI mount of a missing source, containerd gRPC gone, disk full.
pub fn suggests_broken_node(text: &str) -> bool {
    let t = text.to_lowercase();
    engine_down_text(&t)
        || t.contains("grpc: the connection is unavailable")
        || t.contains("no space left on device")
        || contains_in_order(
            &t,
            &[
                "oci runtime error",
                "starting container process",
                "container init",
                "mounting",
                "to rootfs",
                "no such file or directory",
            ],
        )
}

fn contains_in_order(text: &str, parts: &[&str]) -> bool {
    let mut rest = text;
    for p in parts {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Advice for a container whose command could not be started, judged from docker's start
/// error (stderr of `docker start`, or `.State.Error`). `None` when the text is not a
/// command-start failure, or is a node problem rather than the user's.
pub fn classify_start_error(text: &str) -> Option<&'static str> {
    if suggests_broken_node(text) {
        return None;
    }
    let t = text.to_lowercase();
    if !(t.contains("exec") || t.contains("system error")) {
        return None;
    }
    if t.contains("executable file not found")
        || t.contains("no such file or directory")
        || t.contains("file not found")
    {
        Some(
            "Possible causes: the command is not in the image (or not on its PATH), the \
             interpreter named on the script's #! line is missing from the image, or the script \
             has Windows (CRLF) line endings.",
        )
    } else if t.contains("exec format error") {
        Some(
            "Possible causes: the command is a script without a #! line, or a program built for \
             a different CPU architecture than this host.",
        )
    } else if t.contains("permission denied") {
        Some(
            "Possible causes: the command is not marked executable in the image, or it names a \
             directory.",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_down_and_broken_node_patterns() {
        let down = DockerError::Failed {
            op: "version",
            status: "exit status 1".into(),
            stderr: "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. \
                     Is the docker daemon running?"
                .into(),
        };
        assert!(down.is_engine_down() && down.suggests_broken_node());
        assert!(
            down.to_string().contains("check that dockerd is running"),
            "{down}"
        );
        assert!(suggests_broken_node(
            "write /var/lib/docker/tmp/x: no space left on device"
        ));
        assert!(suggests_broken_node(
            r#"oci runtime error: container_linux.go:247: starting container process caused "process_linux.go:359: container init caused \"rootfs_linux.go:54: mounting \"/tmp/x\" to rootfs \"/var/lib/docker\": no such file or directory"#
        ));
        assert!(!suggests_broken_node("No such image: foo"));
    }

    /// The requeue work will decide on these: each kind of error is judged by what docker
    /// said, and only by that.
    #[test]
    fn engine_down_and_broken_node_are_judged_on_what_docker_said() {
        let grpc = DockerError::unexpected("run", "grpc: the connection is unavailable");
        assert!(grpc.suggests_broken_node() && !grpc.is_engine_down());
        let hung = DockerError::Timeout {
            op: "container inspect",
            timeout: Duration::from_secs(180),
            stderr: "error during connect: Get http://docker/v1.47/info: EOF".into(),
        };
        assert!(hung.is_engine_down() && hung.suggests_broken_node());
        let full = DockerError::Failed {
            op: "load",
            status: "exit status 1".into(),
            stderr: "write /var/lib/docker/tmp/x: no space left on device".into(),
        };
        assert!(full.suggests_broken_node() && !full.is_engine_down());
        assert!(
            full.to_string()
                .ends_with("(the Docker host is out of disk space)")
        );
        // Errors that carry nothing docker said are never judged.
        let io = DockerError::Io {
            op: "run",
            source: io::Error::other("connection refused"),
        };
        let spawn = DockerError::spawn("version", Path::new("docker"), io::Error::other("x"));
        for e in [io, spawn] {
            assert!(!e.is_engine_down() && !e.suggests_broken_node(), "{e}");
        }
        let user = DockerError::unexpected("run", "No such image: foo");
        assert!(!user.is_engine_down() && !user.suggests_broken_node());
    }

    #[test]
    fn start_error_advice() {
        let not_found = "failed to create shim task: OCI runtime create failed: runc create failed: \
            unable to start container process: exec: \"nosuchcmd\": executable file not found in $PATH: unknown";
        assert!(classify_start_error(not_found).unwrap().contains("#! line"));
        let missing = r#"exec: "/nonexistent": stat /nonexistent: no such file or directory"#;
        assert!(classify_start_error(missing).unwrap().contains("CRLF"));
        assert!(
            classify_start_error("exec /bin/bad: exec format error")
                .unwrap()
                .contains("architecture")
        );
        let perm = r#"unable to start container process: exec: "/bin": permission denied: unknown"#;
        assert!(classify_start_error(perm).unwrap().contains("executable"));
        assert_eq!(classify_start_error("No such container: x"), None);
        assert_eq!(
            classify_start_error("open /x: no such file or directory"),
            None
        );
    }
}
