//! Running the `docker` command-line client: one method per docker operation crunch-run needs.
//!
//! Every docker child is owned through process.rs: stdin is closed (or fed and closed, for
//! `docker load`), stdout and stderr are piped and drained so docker can never block on a full
//! pipe, and the child is always reaped. Short commands are bounded by a timeout (a hung engine
//! must not hang crunch-run); `load`, `wait` and the attached `run` are not, because they
//! legitimately take as long as the image or the container does.
//!
//! Each child gets crunch-run's environment minus every `ARVADOS_*` variable (the dispatcher's
//! token is none of docker's business) and runs in its own process group, so a Ctrl-C at a
//! terminal reaches crunch-run alone, which then decides what to stop and how.
//!
//! Container names and images are passed after `--` so none can be taken for an option
//! (`run` is the exception: argv.rs refuses an image that starts with `-`).
//!
//! What an error means is error.rs's to tell; what it means for the container, the
//! lifecycle's (run/).

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use super::argv::{ContainerSpec, create_argv};
use super::attached::{Attached, EnvFile};
use super::error::DockerError;
use super::exit::ContainerState;
use crate::process::{ChildKiller, Output, Running, widen_pipe};

/// Default bound on short docker commands (Jenkins' docker-workflow uses the same 180 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Pauses between `docker rm -f` attempts.
const REMOVE_BACKOFF: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// What `docker load` reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOutput {
    /// docker's stdout, trimmed, for the log: `Loaded image ID: sha256:…` for images saved by
    /// id, `Loaded image: name:tag` for images saved by name.
    pub output: String,
}

/// The docker CLI, as crunch-run runs it.
#[derive(Debug, Clone)]
pub struct Docker {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Docker {
    /// `program` (e.g. `docker` on PATH, or tests' `binstubs/docker`), run with `env`
    /// (crunch-run's environment, as config.rs read it) minus the `ARVADOS_*` variables.
    pub fn with_program_and_env(
        program: impl Into<PathBuf>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Docker {
        let env = env
            .into_iter()
            .filter(|(k, _)| !is_arvados_variable(k))
            .collect();
        Docker {
            program: program.into(),
            env,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The environment every docker client gets (no `ARVADOS_*` in it).
    pub(super) fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// `docker version --format '{{.Server.Version}}'`: the engine's version, which also
    /// proves the engine is reachable.
    pub fn server_version(&self) -> Result<String, DockerError> {
        self.formatted(
            "version",
            "{{.Server.Version}}",
            "no server version in the output",
        )
    }

    /// `docker info --format '{{.CgroupDriver}}'`: `cgroupfs` or `systemd`, which decides
    /// what a `--cgroup-parent` may be. Asked only when one is wanted: `docker info` is
    /// slower than `version` on a busy engine.
    pub fn cgroup_driver(&self) -> Result<String, DockerError> {
        self.formatted(
            "info",
            "{{.CgroupDriver}}",
            "no cgroup driver in the output",
        )
    }

    /// The first line of `docker <op> --format <format>`; `missing` says what was not there.
    fn formatted(
        &self,
        op: &'static str,
        format: &str,
        missing: &str,
    ) -> Result<String, DockerError> {
        let out = self.run(op, &[op, "--format", format])?;
        DockerError::check(op, &out)?;
        out.first_line()
            .ok_or_else(|| DockerError::unexpected(op, missing))
    }

    /// The id of `image` if the engine has it (`docker image inspect`), `None` if it does not.
    pub fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        let op = "image inspect";
        let out = self.run(
            op,
            &["image", "inspect", "--format", "{{.Id}}", "--", image],
        )?;
        if !out.status.success() && out.stderr.to_lowercase().contains("no such image") {
            return Ok(None);
        }
        DockerError::check(op, &out)?;
        match out.first_line() {
            Some(id) => Ok(Some(id)),
            None => Err(DockerError::unexpected(op, "no image id in the output")),
        }
    }

    /// The ids of every image the engine has (`docker image ls --all --quiet --no-trunc`):
    /// asked beside the image collection's fetch, so that a cached image costs no
    /// `docker image inspect` after it.
    pub fn image_ids(&self) -> Result<Vec<String>, DockerError> {
        let op = "image ls";
        let out = self.run(op, &["image", "ls", "--all", "--quiet", "--no-trunc"])?;
        DockerError::check(op, &out)?;
        let listed = String::from_utf8_lossy(&out.stdout);
        let ids = listed.lines().map(str::trim).filter(|l| !l.is_empty());
        Ok(ids.map(str::to_string).collect())
    }

    /// `docker load --quiet`, with the image tar written into its stdin by `feed`, so the tar
    /// is streamed (from Keep, a file…) and never held in memory.
    ///
    /// If docker stops reading early, `feed` sees `BrokenPipe`; that is reported as docker's
    /// own failure (its stderr), not as the pipe error. Any other error from `feed` is the
    /// source's fault: docker is killed so it cannot load a truncated image, and
    /// [`DockerError::Feed`] is returned.
    ///
    /// `started` is given what kills the client, once it runs: loading has no time bound
    /// (a big image takes minutes), so only a kill ends a load a hung engine never finishes.
    pub fn load_image(
        &self,
        feed: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
        started: &dyn Fn(ChildKiller),
    ) -> Result<LoadOutput, DockerError> {
        let op = "load";
        let cmd = self.command(&["load", "--quiet"]);
        let mut running = self.spawn(op, cmd, Stdio::piped())?;
        started(running.killer());
        let fed = match running.take_stdin() {
            Some(mut stdin) => {
                // Room to write ahead while the client is busy sending to the daemon.
                widen_pipe(&stdin);
                feed(&mut stdin)
            }
            None => Err(io::Error::other("docker load has no stdin pipe")),
        };
        match fed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                let out = finish(op, running, None)?;
                DockerError::check(op, &out)?;
                return Err(DockerError::unexpected(
                    op,
                    "docker stopped reading the image tar before its end",
                ));
            }
            Err(e) => {
                running.kill();
                // Reap it; what it printed after being killed is of no interest.
                let _ = finish(op, running, None);
                return Err(DockerError::Feed { source: e });
            }
        }
        let out = finish(op, running, None)?;
        DockerError::check(op, &out)?;
        parse_load_output(&String::from_utf8_lossy(&out.stdout))
    }

    /// `docker create` for `spec`, bounded by the timeout. The environment values travel in
    /// the client's own environment, or in an env file written into `scratch_dir` (mode
    /// 0600) that is gone when this returns: the engine has copied them by then. `started`
    /// is given what kills the client, once it runs (for a cancel that must not wait).
    pub fn create(
        &self,
        spec: &ContainerSpec,
        scratch_dir: &Path,
        started: &dyn Fn(ChildKiller),
    ) -> Result<(), DockerError> {
        let op = "create";
        let args = create_argv(spec)?;
        let env_path = EnvFile::path(scratch_dir, &spec.name);
        let _env_file = match &args.env_file {
            Some(content) => Some(EnvFile::write(&env_path, content)?),
            None => None,
        };
        let mut cmd = self.command(&args.argv(&env_path));
        // GOMAXPROCS, which `spawn_short` sets, is never one of these: argv.rs passes the
        // variables the CLI reads itself through the env file.
        cmd.envs(args.env.iter().map(|(k, v)| (k, v)));
        let running = self.spawn_short(op, cmd)?;
        started(running.killer());
        let out = finish(op, running, Some(self.timeout))?;
        DockerError::check(op, &out)
    }

    /// `docker start --attach [--interactive] <name>`: start the created container, its
    /// stdout and stderr piped (and its stdin, when it was created with one). The caller
    /// takes both outputs for its reader threads and must drain them. The client exits with
    /// the container's status, or non-zero when it fails itself: ask
    /// [`Docker::inspect_state`].
    pub fn start_attached(&self, name: &str, stdin: bool) -> Result<Attached, DockerError> {
        let op = "start";
        let mut args = vec!["start", "--attach"];
        if stdin {
            args.push("--interactive");
        }
        args.extend(["--", name]);
        let mut cmd = self.command(&args);
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|source| DockerError::spawn(op, &self.program, source))?;
        Ok(Attached::new(child))
    }

    /// `docker wait <name>`: blocks until the container stops, returns its exit code.
    pub fn wait(&self, name: &str) -> Result<i64, DockerError> {
        let op = "wait";
        let cmd = self.command(&["wait", "--", name]);
        let out = finish(op, self.spawn(op, cmd, Stdio::null())?, None)?;
        DockerError::check(op, &out)?;
        out.first_line()
            .and_then(|l| l.parse::<i64>().ok())
            .ok_or_else(|| DockerError::unexpected(op, "no exit code in the output"))
    }

    /// `docker container inspect --format <format> -- <name>`, run to its end.
    fn inspect(&self, format: &str, name: &str) -> Result<Output, DockerError> {
        let args = ["container", "inspect", "--format", format, "--", name];
        self.run("container inspect", &args)
    }

    /// `docker container inspect --format '{{json .State}}' <name>`.
    pub fn inspect_state(&self, name: &str) -> Result<ContainerState, DockerError> {
        let op = "container inspect";
        let out = self.inspect("{{json .State}}", name)?;
        DockerError::check(op, &out)?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            DockerError::unexpected(op, &format!("cannot parse the container state: {e}"))
        })
    }

    /// `docker container inspect --format '{{.State.Pid}}' <name>`: the host PID of the
    /// container's first process while it runs, `None` while it does not (docker says 0)
    /// or when there is no such container (yet, or any more).
    pub fn container_pid(&self, name: &str) -> Result<Option<u32>, DockerError> {
        let op = "container inspect";
        let out = self.inspect("{{.State.Pid}}", name)?;
        if !out.status.success() && no_such_container(&out.stderr) {
            return Ok(None);
        }
        DockerError::check(op, &out)?;
        match out.first_line().map(|pid| pid.parse::<u32>()) {
            Some(Ok(pid)) => Ok(Some(pid).filter(|pid| *pid > 0)),
            _ => Err(DockerError::unexpected(op, "no process ID in the output")),
        }
    }

    /// Whether a container called `name` exists (in any state).
    pub fn exists(&self, name: &str) -> Result<bool, DockerError> {
        let op = "container inspect";
        let out = self.inspect("{{.Id}}", name)?;
        if out.status.success() {
            return Ok(true);
        }
        if no_such_container(&out.stderr) {
            return Ok(false);
        }
        DockerError::check(op, &out)?;
        Ok(true)
    }

    /// `docker rm -f <name>`: kill and remove. A container that is already gone is success;
    /// other failures ("removal already in progress", a restarting engine) are retried a few
    /// times over about four seconds.
    pub fn remove(&self, name: &str) -> Result<(), DockerError> {
        let op = "rm";
        let mut pauses = REMOVE_BACKOFF.iter();
        loop {
            let out = self.run(op, &["rm", "-f", "--", name])?;
            if out.status.success() || no_such_container(&out.stderr) {
                return Ok(());
            }
            match pauses.next() {
                Some(pause) => thread::sleep(*pause),
                None => return DockerError::check(op, &out),
            }
        }
    }

    /// A docker command with our environment, in its own process group.
    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0);
        cmd
    }

    /// Spawn `cmd` with the given stdin, its stdout and stderr piped and drained.
    fn spawn(
        &self,
        op: &'static str,
        mut cmd: Command,
        stdin: Stdio,
    ) -> Result<Running, DockerError> {
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|source| DockerError::spawn(op, &self.program, source))?;
        Running::new(child).map_err(|source| DockerError::Io { op, source })
    }

    /// Run a short docker command to completion, bounded by the timeout.
    fn run(&self, op: &'static str, args: &[&str]) -> Result<Output, DockerError> {
        self.run_command(op, self.command(args))
    }

    /// `run`, for a command already built.
    fn run_command(&self, op: &'static str, cmd: Command) -> Result<Output, DockerError> {
        finish(op, self.spawn_short(op, cmd)?, Some(self.timeout))
    }

    /// Spawn a short command, its stdin closed.
    fn spawn_short(&self, op: &'static str, mut cmd: Command) -> Result<Running, DockerError> {
        // A one-request client starts faster on one Go processor (9.6 → 8.1 ms for an
        // inspect on 2 cores): two such clients frame every run. Not for `start` or `load`,
        // which move data.
        if !self.env.iter().any(|(k, _)| k == "GOMAXPROCS") {
            cmd.env("GOMAXPROCS", "1");
        }
        self.spawn(op, cmd, Stdio::null())
    }
}

/// Whether `name` is one of crunch-run's `ARVADOS_*` variables, which no docker child (nor
/// the guard) is given: the dispatcher's token is none of docker's business.
fn is_arvados_variable(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"ARVADOS_")
}

/// Wait for a docker child spawned by `Docker::spawn`; see [`Running::wait`].
fn finish(
    op: &'static str,
    running: Running,
    timeout: Option<Duration>,
) -> Result<Output, DockerError> {
    running.wait(timeout).map_err(|e| DockerError::wait(op, e))
}

fn no_such_container(stderr: &str) -> bool {
    let t = stderr.to_lowercase();
    t.contains("no such container") || t.contains("no such object")
}

/// Parse `docker load` output; an error text on a zero exit status is still an error, and
/// so is an output that names no loaded image.
fn parse_load_output(stdout: &str) -> Result<LoadOutput, DockerError> {
    let mut loaded = false;
    for line in stdout.lines().map(str::trim) {
        if line.starts_with("Loaded image ID:") || line.starts_with("Loaded image:") {
            loaded = true;
        } else if line.starts_with("Error") || line.contains("invalid tar") {
            return Err(DockerError::unexpected("load", line));
        }
    }
    let output = stdout.trim().to_string();
    if !loaded {
        return Err(DockerError::unexpected(
            "load",
            &format!("docker did not report a loaded image: {output:?}"),
        ));
    }
    Ok(LoadOutput { output })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Instant;

    #[test]
    fn short_commands_run_on_one_go_processor_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("docker");
        fs::write(&program, "#!/bin/sh\necho \"${GOMAXPROCS:-unset}\"\n").unwrap();
        fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // A test thread forking meanwhile may hold the new script open for a moment.
        let version = |docker: &Docker| loop {
            match docker.server_version() {
                Err(DockerError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    thread::sleep(Duration::from_millis(10))
                }
                other => break other.unwrap(),
            }
        };
        let base = || std::env::vars_os().filter(|(k, _)| k != "GOMAXPROCS");
        let docker = Docker::with_program_and_env(&program, base());
        assert_eq!(version(&docker), "1");
        let told = base().chain([("GOMAXPROCS".into(), "4".into())]);
        let docker = Docker::with_program_and_env(&program, told);
        assert_eq!(version(&docker), "4");
    }

    #[test]
    fn a_hung_docker_is_killed_after_the_timeout() {
        let state = tempfile::tempdir().unwrap();
        let env = std::env::vars_os().chain([
            ("FAKE_DOCKER_STATE".into(), state.path().into()),
            ("FAKE_DOCKER_HANG".into(), "version".into()),
        ]);
        let binstub = Path::new(env!("CARGO_MANIFEST_DIR")).join("binstubs/docker");
        let docker = Docker {
            timeout: Duration::from_millis(300),
            ..Docker::with_program_and_env(binstub, env)
        };
        let started = Instant::now();
        let err = docker.server_version().unwrap_err();
        assert!(matches!(err, DockerError::Timeout { .. }), "{err}");
        // The fake's `sleep` grandchild holds the pipes: it was killed with the group.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn parses_load_output() {
        let out = parse_load_output("Loaded image ID: sha256:0263e5a1\nLoaded image: tiny:test\n")
            .unwrap();
        assert_eq!(
            out.output,
            "Loaded image ID: sha256:0263e5a1\nLoaded image: tiny:test"
        );
        assert!(parse_load_output("Loaded image: tiny:test\n").is_ok());
        assert!(parse_load_output("").is_err());
        let err = parse_load_output("Error processing tar file: invalid tar header\n").unwrap_err();
        assert!(err.to_string().contains("invalid tar header"), "{err}");
    }

    #[test]
    fn strips_arvados_variables() {
        let d = Docker::with_program_and_env(
            "docker",
            [
                (
                    OsString::from("ARVADOS_API_TOKEN"),
                    OsString::from("secret"),
                ),
                (OsString::from("ARVADOS_API_HOST"), OsString::from("h")),
                (OsString::from("PATH"), OsString::from("/bin")),
            ],
        );
        assert_eq!(d.env, [(OsString::from("PATH"), OsString::from("/bin"))]);
    }
}
