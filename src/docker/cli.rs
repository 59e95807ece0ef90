//! Running the `docker` command-line client: one method per docker operation crunch-run needs.
//!
//! Every docker child is owned the same way (after ripgrep's `CommandReader` and duct): stdin is
//! closed (or fed and closed, for `docker load`), stdout and stderr are piped and drained on their
//! own threads so docker can never block on a full pipe, the child is always waited for (a `Drop`
//! backstop kills and reaps it), and only a bounded head of stdout and tail of stderr are kept.
//! Short commands are bounded by a timeout (a hung engine must not hang crunch-run); `load`,
//! `wait` and the attached `run` are not, because they legitimately take as long as the image or
//! the container does.
//!
//! Each child gets crunch-run's environment minus every `ARVADOS_*` variable (the dispatcher's
//! token is none of docker's business) and runs in its own process group, so a Ctrl-C at a
//! terminal reaches crunch-run alone, which then decides what to stop and how.
//!
//! Container names and images are passed after `--` so none can be taken for an option
//! (`run` is the exception: argv.rs refuses an image that starts with `-`).
//!
//! What this module does not decide: what an error means for the container's final state. It
//! offers [`DockerError::is_engine_down`], [`suggests_broken_node`] and [`classify_start_error`]
//! so the runner can.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::argv::{ArgvError, ContainerSpec, create_argv, signal_name};

/// How much of docker's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;
/// How much of docker's stdout is kept (ids, versions, one JSON object, "Loaded image" lines).
const STDOUT_HEAD_BYTES: usize = 1 << 20;
/// Default bound on short docker commands (Jenkins' docker-workflow uses the same 180 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Pauses between `docker rm -f` attempts.
const REMOVE_BACKOFF: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

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
    #[error("cannot build the `docker run` command: {0}")]
    Argv(#[from] ArgvError),
}

impl DockerError {
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

/// What `docker load` reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOutput {
    /// docker's stdout, trimmed, for the log: `Loaded image ID: sha256:…` for images saved by
    /// id, `Loaded image: name:tag` for images saved by name.
    pub output: String,
}

/// `docker inspect`'s `.State`, the source of truth for how a container ended.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "Running")]
    pub running: bool,
    #[serde(rename = "Dead")]
    pub dead: bool,
    #[serde(rename = "Pid")]
    pub pid: i64,
    #[serde(rename = "ExitCode")]
    pub exit_code: i64,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    #[serde(rename = "Error")]
    pub error: String,
    #[serde(rename = "StartedAt")]
    pub started_at: String,
    #[serde(rename = "FinishedAt")]
    pub finished_at: String,
}

impl ContainerState {
    /// The command never ran: docker reports Go's zero time as StartedAt.
    pub fn never_started(&self) -> bool {
        self.started_at.is_empty() || self.started_at.starts_with("0001-01-01")
    }
}

/// `docker create …` arguments turned into `docker run …` ones: the options are the same.
pub fn run_argv(create_argv: &[String]) -> Vec<String> {
    let mut argv = create_argv.to_vec();
    if let Some(first) = argv.first_mut() {
        *first = "run".to_string();
    }
    argv
}

/// The docker CLI, as crunch-run runs it.
#[derive(Debug, Clone)]
pub struct Docker {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Default for Docker {
    fn default() -> Docker {
        Docker::new()
    }
}

impl Docker {
    /// `docker` found on PATH, with crunch-run's environment minus `ARVADOS_*`.
    pub fn new() -> Docker {
        Docker::with_program("docker")
    }

    /// A given docker program (tests use `binstubs/docker`).
    pub fn with_program(program: impl Into<PathBuf>) -> Docker {
        Docker::with_program_and_env(program, std::env::vars_os())
    }

    /// A given program and base environment; `ARVADOS_*` variables are dropped from it.
    pub fn with_program_and_env(
        program: impl Into<PathBuf>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Docker {
        let env = env
            .into_iter()
            .filter(|(k, _)| !k.as_encoded_bytes().starts_with(b"ARVADOS_"))
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

    /// `docker version --format '{{.Server.Version}}'`: the engine's version, which also
    /// proves the engine is reachable.
    pub fn server_version(&self) -> Result<String, DockerError> {
        let op = "version";
        let out = self.run(op, &["version", "--format", "{{.Server.Version}}"])?;
        out.check(op)?;
        match out.first_line() {
            Some(v) => Ok(v),
            None => Err(unexpected(op, "no server version in the output")),
        }
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
        out.check(op)?;
        match out.first_line() {
            Some(id) => Ok(Some(id)),
            None => Err(unexpected(op, "no image id in the output")),
        }
    }

    /// `docker load --quiet`, with the image tar written into its stdin by `feed`, so the tar
    /// is streamed (from Keep, a file…) and never held in memory.
    ///
    /// If docker stops reading early, `feed` sees `BrokenPipe`; that is reported as docker's
    /// own failure (its stderr), not as the pipe error. Any other error from `feed` is the
    /// source's fault: docker is killed so it cannot load a truncated image, and
    /// [`DockerError::Feed`] is returned.
    pub fn load_image(
        &self,
        feed: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
    ) -> Result<LoadOutput, DockerError> {
        let op = "load";
        let cmd = self.command(&["load", "--quiet"]);
        let mut running = Running::spawn(op, &self.program, cmd, Stdio::piped())?;
        let fed = match running.child.stdin.take() {
            Some(mut stdin) => feed(&mut stdin),
            None => Err(io::Error::other("docker load has no stdin pipe")),
        };
        match fed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                let out = running.wait(None)?;
                out.check(op)?;
                return Err(unexpected(
                    op,
                    "docker stopped reading the image tar before its end",
                ));
            }
            Err(e) => {
                running.kill();
                // Reap it; what it printed after being killed is of no interest.
                let _ = running.wait(None);
                return Err(DockerError::Feed { source: e });
            }
        }
        let out = running.wait(None)?;
        out.check(op)?;
        parse_load_output(&String::from_utf8_lossy(&out.stdout))
    }

    /// The `docker run` command for `spec`, with the environment values in the child's
    /// environment or in an env file written into `scratch_dir` (mode 0600), which is
    /// deleted when the returned guard drops.
    fn run_command(
        &self,
        spec: &ContainerSpec,
        scratch_dir: &Path,
    ) -> Result<(Command, Option<EnvFile>), DockerError> {
        let args = create_argv(spec)?;
        let env_path = scratch_dir.join(format!(
            ".docker-env-{}-{}",
            std::process::id(),
            file_safe(&spec.name)
        ));
        let env_file = match &args.env_file {
            Some(content) => Some(EnvFile::write(&env_path, content)?),
            None => None,
        };
        let mut cmd = self.command(&run_argv(&args.argv(&env_path)));
        cmd.envs(args.env.iter().map(|(k, v)| (k, v)));
        Ok((cmd, env_file))
    }

    /// Spawn `docker run` for `spec`: create, attach and start in one client (one client
    /// start-up less than create + start), the container's stdout and stderr piped. The
    /// caller takes both for its reader threads and must drain them. The env file, if
    /// any, lives until the client exits. The CLI's exit status is not the container's:
    /// ask [`Docker::inspect_state`].
    pub fn run_attached(
        &self,
        spec: &ContainerSpec,
        scratch_dir: &Path,
    ) -> Result<Attached, DockerError> {
        let op = "run";
        let (mut cmd, env_file) = self.run_command(spec, scratch_dir)?;
        cmd.stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|source| spawn_error(op, &self.program, source))?;
        Ok(Attached::new(child, env_file))
    }

    /// `docker wait <name>`: blocks until the container stops, returns its exit code.
    pub fn wait(&self, name: &str) -> Result<i64, DockerError> {
        let op = "wait";
        let cmd = self.command(&["wait", "--", name]);
        let out = Running::spawn(op, &self.program, cmd, Stdio::null())?.wait(None)?;
        out.check(op)?;
        out.first_line()
            .and_then(|l| l.parse::<i64>().ok())
            .ok_or_else(|| unexpected(op, "no exit code in the output"))
    }

    /// `docker container inspect --format '{{json .State}}' <name>`.
    pub fn inspect_state(&self, name: &str) -> Result<ContainerState, DockerError> {
        let op = "container inspect";
        let out = self.run(
            op,
            &[
                "container",
                "inspect",
                "--format",
                "{{json .State}}",
                "--",
                name,
            ],
        )?;
        out.check(op)?;
        serde_json::from_slice(&out.stdout)
            .map_err(|e| unexpected(op, &format!("cannot parse the container state: {e}")))
    }

    /// Whether a container called `name` exists (in any state).
    pub fn exists(&self, name: &str) -> Result<bool, DockerError> {
        let op = "container inspect";
        let out = self.run(
            op,
            &["container", "inspect", "--format", "{{.Id}}", "--", name],
        )?;
        if out.status.success() {
            return Ok(true);
        }
        if no_such_container(&out.stderr) {
            return Ok(false);
        }
        out.check(op)?;
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
                None => return out.check(op),
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

    /// Run a short docker command to completion, bounded by the timeout.
    fn run(&self, op: &'static str, args: &[&str]) -> Result<Output, DockerError> {
        let mut cmd = self.command(args);
        // A one-request client starts faster on one Go processor (9.6 → 8.1 ms for an
        // inspect on 2 cores): two such clients frame every run. Not for `run` or `load`,
        // which move data.
        if !self.env.iter().any(|(k, _)| k == "GOMAXPROCS") {
            cmd.env("GOMAXPROCS", "1");
        }
        Running::spawn(op, &self.program, cmd, Stdio::null())?.wait(Some(self.timeout))
    }
}

/// `docker start --attach`, running. Dropping it without waiting kills the CLI client (never
/// the container: that takes `docker rm -f`) and reaps it.
#[derive(Debug)]
pub struct Attached {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    status: Option<ExitStatus>,
    /// Removed once the client has exited (it reads the file when it starts).
    env_file: Option<EnvFile>,
    /// Readable once the client has exited (see `wait_bounded`), opened once.
    exit_notice: Option<OwnedFd>,
}

/// Room for the container's output in each pipe from the CLI. The default 64 KiB makes
/// the CLI stop whenever our reader is busy hashing and spooling a chunk; with 1 MiB (the
/// usual unprivileged maximum) it can write ahead, and we read more per wake-up.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Enlarge a pipe to `PIPE_SIZE` if the system allows; it is only a speed-up.
fn widen_pipe(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ changes nothing if it fails.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE);
    }
}

impl Attached {
    /// A spawned client, its stdout and stderr taken from it and widened: every attached
    /// run gets the 1 MiB pipes, whichever method spawned it.
    fn new(mut child: Child, env_file: Option<EnvFile>) -> Attached {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        for fd in [
            stdout.as_ref().map(AsRawFd::as_raw_fd),
            stderr.as_ref().map(AsRawFd::as_raw_fd),
        ]
        .into_iter()
        .flatten()
        {
            widen_pipe(fd);
        }
        Attached {
            stdin: child.stdin.take(),
            stdout,
            stderr,
            exit_notice: pidfd_open(child.id()),
            child,
            status: None,
            env_file,
        }
    }

    /// The container's stdin, when the spec asked for one. Drop it to send EOF.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The container's stdout, as relayed by the CLI. `None` after the first call.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The container's stderr, as relayed by the CLI. `None` after the first call.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Wait for the CLI client to exit. Its status is the CLI's, not the container's.
    pub fn wait(&mut self) -> Result<ExitStatus, DockerError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().map_err(|source| DockerError::Io {
            op: "start",
            source,
        })?;
        self.status = Some(status);
        self.env_file = None;
        Ok(status)
    }

    /// Like [`Attached::wait`], giving up after `timeout` (then `Ok(None)`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, DockerError> {
        if self.status.is_none() {
            let deadline = Instant::now() + timeout;
            self.status = wait_until(&mut self.child, deadline, self.exit_notice.as_ref())
                .map_err(|source| DockerError::Io {
                    op: "start",
                    source,
                })?;
            if self.status.is_some() {
                self.env_file = None;
            }
        }
        Ok(self.status)
    }

    /// Kill the CLI client (for when the container is gone but the client hangs on).
    /// The container is not affected.
    pub fn kill_client(&mut self) {
        if self.status.is_none() {
            kill_group(&mut self.child);
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.status.is_none() {
            kill_group(&mut self.child);
            let _ = self.child.wait();
        }
    }
}

/// Write an env file with mode 0600; removed when dropped.
#[derive(Debug)]
struct EnvFile {
    path: PathBuf,
}

impl EnvFile {
    fn write(path: &Path, content: &str) -> Result<EnvFile, DockerError> {
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

fn no_such_container(stderr: &str) -> bool {
    let t = stderr.to_lowercase();
    t.contains("no such container") || t.contains("no such object")
}

fn unexpected(op: &'static str, detail: &str) -> DockerError {
    DockerError::Unexpected {
        op,
        detail: detail.to_string(),
    }
}

fn spawn_error(op: &'static str, program: &Path, source: io::Error) -> DockerError {
    DockerError::Spawn {
        op,
        program: program.to_path_buf(),
        source,
    }
}

/// Parse `docker load` output; an error text on a zero exit status is still an error, and
/// so is an output that names no loaded image.
fn parse_load_output(stdout: &str) -> Result<LoadOutput, DockerError> {
    let mut loaded = false;
    for line in stdout.lines().map(str::trim) {
        if line.starts_with("Loaded image ID:") || line.starts_with("Loaded image:") {
            loaded = true;
        } else if line.starts_with("Error") || line.contains("invalid tar") {
            return Err(unexpected("load", line));
        }
    }
    let output = stdout.trim().to_string();
    if !loaded {
        return Err(unexpected(
            "load",
            &format!("docker did not report a loaded image: {output:?}"),
        ));
    }
    Ok(LoadOutput { output })
}

/// `exit status 1`, `killed by signal 9 (SIGKILL)`.
fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match signal_name(sig) {
            Some(name) => format!("killed by signal {sig} ({name})"),
            None => format!("killed by signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// A finished docker command.
struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    /// The last [`STDERR_TAIL_BYTES`] of stderr, lossily decoded and trimmed.
    stderr: String,
}

impl Output {
    /// `Err(Failed)` unless the command exited 0.
    fn check(&self, op: &'static str) -> Result<(), DockerError> {
        if self.status.success() {
            Ok(())
        } else {
            Err(DockerError::Failed {
                op,
                status: describe_status(self.status),
                stderr: self.stderr.clone(),
            })
        }
    }

    fn first_line(&self) -> Option<String> {
        String::from_utf8_lossy(&self.stdout)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(String::from)
    }
}

/// A docker child with stdout and stderr being drained on threads. Always reaped: by `wait`,
/// or by `Drop` (kill first) if the caller bailed out early.
struct Running {
    op: &'static str,
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    reaped: bool,
}

impl Running {
    /// Spawn `cmd` with the given stdin and with stdout and stderr piped and drained.
    fn spawn(
        op: &'static str,
        program: &Path,
        mut cmd: Command,
        stdin: Stdio,
    ) -> Result<Running, DockerError> {
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .map_err(|source| spawn_error(op, program, source))?;
        // From here on, Drop reaps the child whatever fails.
        let mut running = Running {
            op,
            child,
            stdout: None,
            stderr: None,
            reaped: false,
        };
        let io_err = |source| DockerError::Io { op, source };
        if let Some(out) = running.child.stdout.take() {
            running.stdout = Some(drain(out, Keep::Head(STDOUT_HEAD_BYTES)).map_err(io_err)?);
        }
        if let Some(err) = running.child.stderr.take() {
            running.stderr = Some(drain(err, Keep::Tail(STDERR_TAIL_BYTES)).map_err(io_err)?);
        }
        Ok(running)
    }

    fn kill(&mut self) {
        kill_group(&mut self.child);
    }

    /// Wait for exit (killing the child after `timeout`), then for both pipes to be drained.
    fn wait(mut self, timeout: Option<Duration>) -> Result<Output, DockerError> {
        let op = self.op;
        let status = match wait_bounded(&mut self.child, timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                self.kill();
                let _ = self.child.wait();
                self.reaped = true;
                let (_, stderr) = self.join();
                return Err(DockerError::Timeout {
                    op,
                    timeout: timeout.unwrap_or_default(),
                    stderr: tail_text(&stderr),
                });
            }
            Err(source) => return Err(DockerError::Io { op, source }),
        };
        self.reaped = true;
        let (stdout, stderr) = self.join();
        Ok(Output {
            status,
            stdout,
            stderr: tail_text(&stderr),
        })
    }

    /// Collect what the drain threads kept. They end once the child's pipes close.
    fn join(&mut self) -> (Vec<u8>, Vec<u8>) {
        let collect =
            |h: Option<JoinHandle<Vec<u8>>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        (collect(self.stdout.take()), collect(self.stderr.take()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(&mut self.child);
            let _ = self.child.wait();
        }
    }
}

/// SIGKILL a docker child and whatever it started: each docker child leads its own process
/// group (`process_group(0)`), so helpers it spawned cannot keep our pipes open after it.
/// Only for children not yet reaped, while their pid still names the group.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) touches no memory of ours. The group id is the unreaped child's pid,
        // which cannot have been reused yet.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
}

/// `Ok(None)` if `timeout` passed first. Sleeps on a pidfd of the child, so the exit is
/// noticed at once (a docker command lasts milliseconds, and polling would add as much
/// again); where pidfds are missing (Linux < 5.3), polls with a growing pause instead.
/// No waiter thread: nothing races with `kill`, and the child is reaped only here.
fn wait_bounded(child: &mut Child, timeout: Option<Duration>) -> io::Result<Option<ExitStatus>> {
    let Some(timeout) = timeout else {
        return child.wait().map(Some);
    };
    let exit_notice = pidfd_open(child.id());
    wait_until(child, Instant::now() + timeout, exit_notice.as_ref())
}

/// `wait_bounded` with a deadline and the child's pidfd, if there is one.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
    exit_notice: Option<&OwnedFd>,
) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        match exit_notice {
            Some(fd) => poll_readable(fd, deadline - now)?,
            None => {
                thread::sleep(pause.min(deadline - now));
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

/// Wait until `fd` is readable or `timeout` passed (a signal may end the wait early).
fn poll_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up, so the deadline is never missed by a poll that returns early.
    let millis =
        libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut pollfd, 1, millis) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Which part of a stream to keep while draining all of it.
#[derive(Clone, Copy)]
enum Keep {
    Head(usize),
    Tail(usize),
}

/// Read `r` to EOF on a new thread, keeping only the part `keep` says.
fn drain<R: Read + Send + 'static>(mut r: R, keep: Keep) -> io::Result<JoinHandle<Vec<u8>>> {
    thread::Builder::new()
        .name("docker-pipe".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                match keep {
                    Keep::Head(limit) => {
                        let room = limit.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Keep::Tail(limit) => {
                        kept.extend_from_slice(&buf[..n]);
                        // Trim only now and then, so the cost stays linear.
                        if kept.len() > 2 * limit {
                            kept.drain(..kept.len() - limit);
                        }
                    }
                }
            }
            if let Keep::Tail(limit) = keep
                && kept.len() > limit
            {
                kept.drain(..kept.len() - limit);
            }
            kept
        })
}

fn tail_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn wait_bounded_gives_the_exit_status() {
        let mut child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let status = wait_bounded(&mut child, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn wait_bounded_gives_up_at_the_timeout() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let status = wait_bounded(&mut child, Some(Duration::from_millis(50))).unwrap();
        assert!(status.is_none());
        child.kill().unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
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
    fn parses_state_and_zero_start_time() {
        let json = r#"{"Status":"created","Running":false,"Paused":false,"Restarting":false,
            "OOMKilled":false,"Dead":false,"Pid":0,"ExitCode":127,
            "Error":"exec: \"/nonexistent\": stat /nonexistent: no such file or directory",
            "StartedAt":"0001-01-01T00:00:00Z","FinishedAt":"0001-01-01T00:00:00Z"}"#;
        let st: ContainerState = serde_json::from_str(json).unwrap();
        assert_eq!(st.exit_code, 127);
        assert!(st.never_started());
        assert!(st.error.contains("no such file"));
        let st: ContainerState = serde_json::from_str(
            r#"{"Status":"exited","OOMKilled":true,"ExitCode":137,"StartedAt":"2026-11-28T16:58:17.2Z"}"#,
        )
        .unwrap();
        assert!(st.oom_killed && !st.never_started());
    }

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

    #[test]
    fn drain_keeps_head_or_tail() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let head = drain(io::Cursor::new(data.clone()), Keep::Head(10))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(head, data[..10]);
        let tail = drain(io::Cursor::new(data.clone()), Keep::Tail(4096))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(tail, data[data.len() - 4096..]);
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
    }
}
