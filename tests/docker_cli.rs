//! Integration tests of the docker facade (`Docker`, `Attached`, the guard) against the fake
//! docker in `binstubs/docker`. Each test has its own fake state directory and passes the
//! fake's path and variables to `Docker` directly, so tests run in parallel without touching
//! PATH. Containers are started the way production starts them: `create`, then
//! `start_attached`.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crunch_run::docker::{
    Attached, ContainerSpec, Docker, DockerError, GUARD_DOCKER_ENV, Guard, classify_start_error,
    run_guard,
};

const DISPATCHER_TOKEN: &str = "v2/zzzzz-gj3su-000000000000000/dispatchersecrettoken";
const NAME: &str = "zzzzz-dz642-000000000000000";
const IMAGE: &str = "sha256:d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";

fn binstub() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("binstubs/docker")
}

/// A fake docker with its own state directory. crunch-run's own environment is simulated with
/// an `ARVADOS_API_TOKEN` that must never reach docker.
struct Fake {
    state: tempfile::TempDir,
    env: Vec<(OsString, OsString)>,
    docker: Docker,
}

impl Fake {
    fn new() -> Fake {
        let state = tempfile::tempdir().unwrap();
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        env.push(("ARVADOS_API_TOKEN".into(), DISPATCHER_TOKEN.into()));
        env.push(("ARVADOS_API_HOST".into(), "zzzzz.example".into()));
        env.push(("FAKE_DOCKER_STATE".into(), state.path().into()));
        let docker = Docker::with_program_and_env(binstub(), env.clone());
        Fake { state, env, docker }
    }

    /// The same fake, with `name=value` in the environment of every docker it runs.
    fn with(mut self, name: &str, value: &str) -> Fake {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.into(), value.into()));
        self.docker = Docker::with_program_and_env(binstub(), self.env.clone());
        self
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.state.path().join(rel)
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    fn calls(&self) -> String {
        self.read("calls.log")
    }

    /// A container that has run and exited, as `docker start` leaves it (no `--rm`).
    fn with_container(self, spec: &ContainerSpec) -> Fake {
        let ran = run_to_the_end(&self.docker, spec, tempfile::tempdir().unwrap().path());
        assert!(ran.status.success(), "{:?}", ran.stderr);
        self
    }
}

/// What a `docker start` client did, run to its end.
struct Ran {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// A `docker start --attach` client, both its streams being read on threads.
struct Client {
    attached: Attached,
    out: thread::JoinHandle<Vec<u8>>,
    err: thread::JoinHandle<Vec<u8>>,
}

fn start_client(docker: &Docker, spec: &ContainerSpec, scratch: &Path) -> Client {
    let mut attached = create_and_start(docker, spec, scratch);
    let out = read_all(attached.take_stdout().unwrap());
    let err = read_all(attached.take_stderr().unwrap());
    Client { attached, out, err }
}

impl Client {
    /// Wait for the client, then for both streams to end.
    fn finish(mut self) -> Ran {
        let status = self.attached.wait().unwrap();
        Ran {
            status,
            stdout: self.out.join().unwrap(),
            stderr: String::from_utf8(self.err.join().unwrap()).unwrap(),
        }
    }
}

/// `create` and `start_attached`.
fn create_and_start(docker: &Docker, spec: &ContainerSpec, scratch: &Path) -> Attached {
    docker.create(spec, scratch, &|_| {}).unwrap();
    docker.start_attached(&spec.name, spec.stdin).unwrap()
}

/// `create` and `start_attached`, both streams read, the client waited for.
fn run_to_the_end(docker: &Docker, spec: &ContainerSpec, scratch: &Path) -> Ran {
    start_client(docker, spec, scratch).finish()
}

fn spec() -> ContainerSpec {
    ContainerSpec {
        name: NAME.into(),
        image: IMAGE.into(),
        command: vec!["echo".into(), "hello".into()],
        ..ContainerSpec::default()
    }
}

/// Poll `cond` for up to ten seconds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    })
}

// ---- version, image inspect ------------------------------------------------------------

#[test]
fn server_version() {
    let fake = Fake::new().with("FAKE_DOCKER_VERSION", "27.5.1");
    assert_eq!(fake.docker.server_version().unwrap(), "27.5.1");
    assert!(
        fake.calls()
            .contains("version --format {{.Server.Version}}")
    );
}

#[test]
fn engine_down_is_recognised_and_explained() {
    let fake = Fake::new().with("FAKE_DOCKER_ENGINE_DOWN", "1");
    let err = fake.docker.server_version().unwrap_err();
    assert!(err.is_engine_down(), "{err}");
    assert!(err.suggests_broken_node());
    let msg = err.to_string();
    assert!(msg.contains("Cannot connect to the Docker daemon"), "{msg}");
    assert!(msg.contains("check that dockerd is running"), "{msg}");
    let err = fake.docker.image_id(IMAGE).unwrap_err();
    assert!(err.is_engine_down(), "{err}");
}

#[test]
fn image_id_present_and_absent() {
    let fake = Fake::new().with("FAKE_DOCKER_IMAGES", IMAGE);
    assert_eq!(fake.docker.image_id(IMAGE).unwrap().as_deref(), Some(IMAGE));
    assert_eq!(fake.docker.image_id("sha256:0000").unwrap(), None);
}

#[test]
fn image_ids_lists_every_image_and_fails_with_the_engine() {
    let fake = Fake::new().with("FAKE_DOCKER_IMAGES", &format!("{IMAGE} busybox:latest"));
    assert_eq!(fake.docker.image_ids().unwrap(), [IMAGE]);
    assert!(fake.calls().contains("image ls --all --quiet --no-trunc"));
    let down = Fake::new().with("FAKE_DOCKER_ENGINE_DOWN", "1");
    assert!(down.docker.image_ids().unwrap_err().is_engine_down());
}

#[test]
fn docker_never_sees_crunch_runs_arvados_variables() {
    let fake = Fake::new().with("FAKE_DOCKER_IMAGES", IMAGE);
    fake.docker.server_version().unwrap();
    fake.docker.image_id(IMAGE).unwrap();
    fake.docker.remove(NAME).unwrap();
    assert_eq!(fake.read("arvados-env.log"), "");
}

// ---- load ---------------------------------------------------------------------------------

/// `len` bytes of a repeating pattern, written in 64 KiB pieces.
fn feed_bytes(len: usize) -> impl FnMut(&mut dyn Write) -> io::Result<()> {
    move |w: &mut dyn Write| {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    }
}

#[test]
fn load_streams_the_tar_and_reports_the_id() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_LOAD_ID", IMAGE)
        .with("FAKE_DOCKER_LOAD_NAME", "hello-world:latest");
    let out = fake
        .docker
        .load_image(&mut feed_bytes(3 << 20), &|_| {})
        .unwrap();
    assert_eq!(
        out.output,
        format!("Loaded image ID: {IMAGE}\nLoaded image: hello-world:latest")
    );
    assert_eq!(fake.read("last-load-bytes").trim(), (3 << 20).to_string());
    assert!(fake.calls().contains("load --quiet"));
    assert_eq!(fake.docker.image_id(IMAGE).unwrap().as_deref(), Some(IMAGE));
}

#[test]
fn load_failure_reports_dockers_error_not_the_broken_pipe() {
    let fake = Fake::new().with("FAKE_DOCKER_LOAD_FAIL", "1");
    // Far more than a pipe buffer, so the feed hits EPIPE when docker gives up.
    let err = fake
        .docker
        .load_image(&mut feed_bytes(16 << 20), &|_| {})
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DockerError::Failed { op: "load", .. }),
        "{msg}"
    );
    assert!(msg.contains("invalid tar header"), "{msg}");
    assert!(!msg.to_lowercase().contains("broken pipe"), "{msg}");
}

#[test]
fn load_failure_with_a_small_tar() {
    let fake = Fake::new().with("FAKE_DOCKER_LOAD_FAIL", "1");
    let err = fake
        .docker
        .load_image(&mut feed_bytes(100), &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("invalid tar header"), "{err}");
}

#[test]
fn load_with_the_engine_down() {
    let fake = Fake::new().with("FAKE_DOCKER_ENGINE_DOWN", "1");
    let err = fake
        .docker
        .load_image(&mut feed_bytes(16 << 20), &|_| {})
        .unwrap_err();
    assert!(err.is_engine_down(), "{err}");
}

#[test]
fn load_source_failure_is_a_feed_error() {
    let fake = Fake::new();
    let mut feed = |w: &mut dyn Write| -> io::Result<()> {
        w.write_all(b"partial tar")?;
        Err(io::Error::other("keep block read failed"))
    };
    let err = fake.docker.load_image(&mut feed, &|_| {}).unwrap_err();
    assert!(matches!(err, DockerError::Feed { .. }), "{err}");
    assert!(err.to_string().contains("keep block read failed"));
}

// ---- run, wait, inspect, rm ---------------------------------------------------------------

#[test]
fn run_passes_env_values_outside_argv() {
    let fake = Fake::new().with("FAKE_DOCKER_IMAGES", IMAGE);
    let scratch = tempfile::tempdir().unwrap();
    let s = ContainerSpec {
        env: vec![
            (
                "ARVADOS_API_TOKEN".into(),
                "v2/container-token-value".into(),
            ),
            ("GREETING".into(), "hello world".into()),
            ("HOME".into(), "/home/container-home".into()),
        ],
        labels: vec![("org.arvados.container_uuid".into(), NAME.into())],
        network: Some("default".into()),
        memory_bytes: Some(1 << 30),
        cpus: Some(1.5),
        cwd: Some("/work".into()),
        ..spec()
    };
    let ran = run_to_the_end(&fake.docker, &s, scratch.path());
    assert!(ran.status.success(), "{}", ran.stderr);

    let calls = fake.calls();
    for secret in [
        "container-token-value",
        "hello world",
        "container-home",
        "dispatchersecret",
    ] {
        assert!(!calls.contains(secret), "{secret} in argv: {calls}");
    }
    assert!(
        calls.contains("create --name ")
            && calls.contains("-e ARVADOS_API_TOKEN -e GREETING --env-file "),
        "{calls}"
    );
    assert!(
        calls.contains("--network default --memory 1073741824"),
        "{calls}"
    );

    let c = format!("containers/{NAME}");
    assert_eq!(
        fake.read(&format!("{c}/env")),
        "ARVADOS_API_TOKEN=v2/container-token-value\nGREETING=hello world\n"
    );
    assert_eq!(
        fake.read(&format!("{c}/env-file")),
        "HOME=/home/container-home\n"
    );
    assert_eq!(fake.read(&format!("{c}/env-file-mode")).trim(), "600");
    assert_eq!(fake.read(&format!("{c}/command")), "echo\nhello\n");
    assert_eq!(
        fake.read(&format!("{c}/labels")),
        format!("org.arvados.container_uuid={NAME}\n")
    );
    // The only ARVADOS_ variable docker saw is the container's own, for its -e.
    assert_eq!(fake.read("arvados-env.log"), "create ARVADOS_API_TOKEN\n");
    // The env file is gone once the container is created.
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn create_failure_removes_the_env_file_too() {
    let fake = Fake::new(); // no images
    let scratch = tempfile::tempdir().unwrap();
    let s = ContainerSpec {
        env: vec![("PATH".into(), "/usr/bin".into())],
        ..spec()
    };
    let err = fake.docker.create(&s, scratch.path(), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("No such image"), "{err}");
    assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn create_name_conflict_and_create_failure() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with_container(&spec());
    let scratch = tempfile::tempdir().unwrap();
    let err = fake
        .docker
        .create(&spec(), scratch.path(), &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("already in use"), "{err}");

    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_CREATE_FAIL", "invalid mount config");
    let err = fake
        .docker
        .create(&spec(), scratch.path(), &|_| {})
        .unwrap_err();
    assert!(err.to_string().contains("invalid mount config"), "{err}");
    assert!(!fake.docker.exists(NAME).unwrap());
}

/// A hung `docker create` is killed, its process group with it, by the killer it hands out.
#[test]
fn a_hung_create_is_killed_through_its_killer() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_HANG", "create");
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = fake
        .docker
        .create(&spec(), scratch.path(), &|killer| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(300));
                killer.kill();
            });
        })
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(!fake.docker.exists(NAME).unwrap());
}

#[test]
fn starting_a_container_that_does_not_exist_fails() {
    let fake = Fake::new();
    let mut attached = fake.docker.start_attached(NAME, false).unwrap();
    let err = read_all(attached.take_stderr().unwrap());
    assert!(!attached.wait().unwrap().success());
    let err = String::from_utf8(err.join().unwrap()).unwrap();
    assert!(err.contains("No such container"), "{err}");
}

#[test]
fn create_refuses_an_env_file_value_with_a_newline_before_running_docker() {
    let fake = Fake::new().with("FAKE_DOCKER_IMAGES", IMAGE);
    let scratch = tempfile::tempdir().unwrap();
    let s = ContainerSpec {
        env: vec![("PATH".into(), "/bin\n/secret-part".into())],
        ..spec()
    };
    let err = fake.docker.create(&s, scratch.path(), &|_| {}).unwrap_err();
    assert!(matches!(err, DockerError::Argv(_)), "{err}");
    assert!(!err.to_string().contains("secret-part"));
    assert_eq!(fake.calls(), "");
}

#[test]
fn env_file_is_private_even_in_a_world_writable_scratch_dir() {
    // DOCKER_HOST is for the container, so it must reach docker through the env file, not
    // through the CLI's own environment (where it would redirect the CLI).
    let fake = Fake::new().with("FAKE_DOCKER_IMAGES", IMAGE);
    let scratch = tempfile::tempdir().unwrap();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let s = ContainerSpec {
        env: vec![("DOCKER_HOST".into(), "unix:///container.sock".into())],
        ..spec()
    };
    let ran = run_to_the_end(&fake.docker, &s, scratch.path());
    assert!(ran.status.success(), "{}", ran.stderr);
    assert_eq!(
        fake.read(&format!("containers/{NAME}/env-file-mode"))
            .trim(),
        "600"
    );
}

#[test]
fn run_relays_output_byte_exact_and_state_gives_the_exit() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with(
            "FAKE_DOCKER_STDOUT",
            r"line 1\nbin\0000\0377ary\nno newline",
        )
        .with("FAKE_DOCKER_STDERR", r"warning\n")
        .with("FAKE_DOCKER_EXIT", "137")
        .with("FAKE_DOCKER_OOM", "1");
    let scratch = tempfile::tempdir().unwrap();
    let mut client = start_client(&fake.docker, &spec(), scratch.path());
    assert!(client.attached.take_stdout().is_none());
    assert!(
        client.attached.take_stdin().is_none(),
        "no stdin unless the spec asks"
    );
    let ran = client.finish();
    assert_eq!(ran.status.code(), Some(137));
    assert_eq!(ran.stdout, b"line 1\nbin\0\xffary\nno newline");
    assert_eq!(ran.stderr, "warning\n");

    let state = fake.docker.inspect_state(NAME).unwrap();
    assert_eq!(state.status, "exited");
    assert_eq!(state.exit_code, 137);
    assert!(state.oom_killed && !state.running && !state.never_started());
    assert_eq!(fake.docker.wait(NAME).unwrap(), 137);
}

#[test]
fn run_survives_a_flood() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_STDOUT", r"first\n")
        .with("FAKE_DOCKER_FLOOD_BYTES", "20000000");
    let ran = run_to_the_end(&fake.docker, &spec(), tempfile::tempdir().unwrap().path());
    assert!(ran.status.success());
    assert_eq!(ran.stdout.len(), 6 + 20_000_000);
    assert!(ran.stderr.is_empty());
}

#[test]
fn run_feeds_the_container_stdin_when_the_spec_asks() {
    let fake = Fake::new().with("FAKE_DOCKER_IMAGES", IMAGE);
    let received = fake.path("stdin-received");
    let fake = fake.with("FAKE_DOCKER_STDIN_TO", received.to_str().unwrap());
    let s = ContainerSpec {
        stdin: true,
        ..spec()
    };
    let scratch = tempfile::tempdir().unwrap();
    let mut client = start_client(&fake.docker, &s, scratch.path());
    let mut stdin = client.attached.take_stdin().unwrap();
    stdin.write_all(b"to the container\n").unwrap();
    drop(stdin);
    assert!(client.finish().status.success());
    assert_eq!(fs::read_to_string(received).unwrap(), "to the container\n");
}

/// The pipe size the kernel gives a pipe widened to 1 MiB: less where the host caps it.
fn widened_pipe_size() -> libc::c_int {
    let cap = fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_int>().ok())
        .unwrap_or(1 << 20);
    cap.min(1 << 20)
}

fn pipe_size(fd: &impl AsRawFd) -> libc::c_int {
    // SAFETY: F_GETPIPE_SZ only reads the size of a pipe this test owns.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) }
}

/// Regression (issue 7): the 1 MiB pipes were given only to the attach that tests called;
/// the one production used kept the default 64 KiB.
#[test]
fn start_attached_relays_through_widened_pipes() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_STDOUT", r"hello\n");
    let scratch = tempfile::tempdir().unwrap();
    let mut attached = create_and_start(&fake.docker, &spec(), scratch.path());
    let stdout = attached.take_stdout().unwrap();
    let stderr = attached.take_stderr().unwrap();
    assert_eq!(pipe_size(&stdout), widened_pipe_size());
    assert_eq!(pipe_size(&stderr), widened_pipe_size());
    let out = read_all(stdout);
    let err = read_all(stderr);
    assert!(attached.wait().unwrap().success());
    assert_eq!(out.join().unwrap(), b"hello\n");
    assert!(err.join().unwrap().is_empty());
}

#[test]
fn start_failure_shows_in_state_with_advice() {
    let msg = "failed to create shim task: OCI runtime create failed: runc create failed: unable \
               to start container process: exec: \"nosuchcmd\": executable file not found in $PATH: unknown";
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_START_FAIL", msg);
    let ran = run_to_the_end(&fake.docker, &spec(), tempfile::tempdir().unwrap().path());
    // `docker start --attach` exits 1; the 127 is the engine's to tell.
    assert_eq!(ran.status.code(), Some(1));
    assert!(ran.stdout.is_empty());
    assert!(
        ran.stderr.contains("executable file not found"),
        "{}",
        ran.stderr
    );

    let state = fake.docker.inspect_state(NAME).unwrap();
    assert!(state.never_started());
    assert_eq!(state.exit_code, 127);
    assert_eq!(state.error, msg);
    assert!(
        classify_start_error(&state.error)
            .unwrap()
            .contains("#! line")
    );
}

/// A fake whose container runs for a minute, unless removed.
fn long_running() -> Fake {
    Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_SLEEP", "60")
}

fn wait_until_running(fake: &Fake) {
    eventually("the container to run", || {
        fake.docker
            .inspect_state(NAME)
            .map(|s| s.running)
            .unwrap_or(false)
    });
}

#[test]
fn remove_ends_a_running_container_and_its_attach() {
    let fake = long_running();
    let scratch = tempfile::tempdir().unwrap();
    let client = start_client(&fake.docker, &spec(), scratch.path());
    wait_until_running(&fake);
    assert!(fake.docker.exists(NAME).unwrap());

    let started = Instant::now();
    fake.docker.remove(NAME).unwrap();
    assert_eq!(client.finish().status.code(), Some(137));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!fake.docker.exists(NAME).unwrap());
    assert!(fake.docker.inspect_state(NAME).is_err());
}

#[test]
fn dropping_an_unwaited_attach_reaps_the_client() {
    // The fake client writes its own pid ($$ is the script's, even in the subshell).
    let fake = long_running().with(
        "FAKE_DOCKER_RUN_SH",
        r#"echo $$ >"$FAKE_DOCKER_STATE/client-pid""#,
    );
    let scratch = tempfile::tempdir().unwrap();
    let attached = create_and_start(&fake.docker, &spec(), scratch.path());
    wait_until_running(&fake);
    let pid = fake.read("client-pid").trim().to_string();
    assert!(process_exists(&pid), "docker client {pid} not found");
    drop(attached);
    // Killed and reaped: the pid no longer names our child.
    assert!(!process_exists(&pid), "docker client {pid} still exists");
    // The container itself is untouched by killing the client.
    assert!(fake.docker.exists(NAME).unwrap());
    fake.docker.remove(NAME).unwrap();
}

fn process_exists(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn container_pid_while_it_runs_and_none_before_or_after() {
    let fake = long_running().with(
        "FAKE_DOCKER_RUN_SH",
        r#"echo $$ >"$FAKE_DOCKER_STATE/client-pid""#,
    );
    assert_eq!(
        fake.docker.container_pid(NAME).unwrap(),
        None,
        "no container yet"
    );
    let scratch = tempfile::tempdir().unwrap();
    let client = start_client(&fake.docker, &spec(), scratch.path());
    wait_until_running(&fake);
    // the fake's container is its `run` client, whose PID it gives
    let pid: u32 = fake.read("client-pid").trim().parse().unwrap();
    assert_eq!(fake.docker.container_pid(NAME).unwrap(), Some(pid));
    assert!(fake.calls().contains(&format!(
        "container inspect --format {{{{.State.Pid}}}} -- {NAME}\n"
    )));
    fake.docker.remove(NAME).unwrap();
    client.finish();
    assert_eq!(fake.docker.container_pid(NAME).unwrap(), None, "removed");

    let exited = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with_container(&spec());
    assert_eq!(exited.docker.container_pid(NAME).unwrap(), None, "exited");

    let down = Fake::new().with("FAKE_DOCKER_ENGINE_DOWN", "1");
    let err = down.docker.container_pid(NAME).unwrap_err();
    assert!(err.is_engine_down(), "{err}");
}

#[test]
fn remove_of_a_missing_container_is_ok() {
    let fake = Fake::new();
    fake.docker.remove(NAME).unwrap();
    assert!(!fake.docker.exists(NAME).unwrap());
}

#[test]
fn remove_retries_while_removal_is_in_progress() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_RM_BUSY", "2")
        .with_container(&spec());
    fake.docker.remove(NAME).unwrap();
    assert_eq!(fake.calls().matches("rm -f -- ").count(), 3);
    assert!(!fake.docker.exists(NAME).unwrap());

    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_RM_BUSY", "100")
        .with_container(&spec());
    let err = fake.docker.remove(NAME).unwrap_err();
    assert!(err.to_string().contains("already in progress"), "{err}");
    assert_eq!(fake.calls().matches("rm -f -- ").count(), 5);
}

#[test]
fn wait_returns_the_exit_code() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with("FAKE_DOCKER_EXIT", "3")
        .with("FAKE_DOCKER_SLEEP", "1");
    let scratch = tempfile::tempdir().unwrap();
    let client = start_client(&fake.docker, &spec(), scratch.path());
    wait_until_running(&fake);
    assert_eq!(fake.docker.wait(NAME).unwrap(), 3);
    assert_eq!(client.finish().status.code(), Some(3));
}

#[test]
fn missing_container_errors_name_it() {
    let fake = Fake::new();
    let err = fake.docker.inspect_state(NAME).unwrap_err();
    assert!(err.to_string().contains("No such container"), "{err}");
    assert!(fake.docker.wait(NAME).is_err());
}

// ---- process handling ---------------------------------------------------------------------

#[test]
fn a_missing_docker_program_is_a_spawn_error() {
    let docker = Docker::with_program_and_env("/nonexistent/docker", std::env::vars_os());
    let err = docker.server_version().unwrap_err();
    assert!(matches!(err, DockerError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/docker"));
}

// ---- guard --------------------------------------------------------------------------------

/// Set when this test binary is re-run as a guard process by the tests below.
const GUARD_TEST_NAME: &str = "CRUNCH_RUN_TEST_GUARD_NAME";

/// Not a test of its own: the entry point of the guard child. When the tests below re-run
/// this binary with only this test selected and `GUARD_TEST_NAME` set, it becomes the guard.
#[test]
fn guard_child_entry() {
    if let Some(name) = std::env::var_os(GUARD_TEST_NAME) {
        let program = std::env::var_os(GUARD_DOCKER_ENV).unwrap();
        let docker = Docker::with_program_and_env(program, std::env::vars_os());
        let code = run_guard(&name.to_string_lossy(), &docker, &|| {});
        std::process::exit(code);
    }
}

fn spawn_guard(fake: &Fake) -> Guard {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "guard_child_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(GUARD_TEST_NAME, NAME)
    .env(GUARD_DOCKER_ENV, binstub())
    .env("FAKE_DOCKER_STATE", fake.state.path())
    .env("FAKE_DOCKER_IMAGES", IMAGE);
    Guard::spawn_command(cmd).unwrap()
}

fn guard_removed(fake: &Fake) -> bool {
    fake.calls().contains(&format!("rm -f -- {NAME}"))
}

#[test]
fn guard_removes_the_container_when_crunch_run_goes_away() {
    let fake = long_running();
    let scratch = tempfile::tempdir().unwrap();
    let client = start_client(&fake.docker, &spec(), scratch.path());
    wait_until_running(&fake);
    let guard = spawn_guard(&fake);
    // The guard must stay put while crunch-run lives.
    thread::sleep(Duration::from_millis(300));
    assert!(!guard_removed(&fake));
    // Dropping the write end is what the kernel does when crunch-run is SIGKILLed.
    drop(guard);
    eventually("the guard to remove the container", || guard_removed(&fake));
    eventually("the container to be gone", || {
        !fake.path(&format!("containers/{NAME}")).exists()
    });
    assert_eq!(client.finish().status.code(), Some(137));
}

#[test]
fn released_guard_leaves_the_container_alone() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with_container(&spec());
    let guard = spawn_guard(&fake);
    thread::sleep(Duration::from_millis(200));
    guard.release().unwrap();
    // release() returns once the guard has exited, so nothing can come later.
    assert!(!guard_removed(&fake));
    assert!(fake.docker.exists(NAME).unwrap());
}

#[test]
fn other_children_do_not_keep_the_guard_pipe_open() {
    let fake = Fake::new()
        .with("FAKE_DOCKER_IMAGES", IMAGE)
        .with_container(&spec());
    let guard = spawn_guard(&fake);
    // A long-lived child started after the guard (like a docker client or arv-mount) must
    // not inherit the guard pipe's write end, or the guard would never see EOF.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    drop(guard);
    eventually("the guard to remove the container", || guard_removed(&fake));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}
