// Running the real crunch-run binary in tests: a fake Arvados (API + Keep over HTTPS), a
// private TMPDIR, and either the fake docker from binstubs/ (component tests) or the
// real engine (real-engine tests).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{Value, json};

use super::fake_arvados::FakeArvados;

pub const UUID: &str = "zzzzz-dz642-0123456789abcde";

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn crunch_run_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crunch-run"))
}

/// A fake Arvados plus a scratch directory; `fake_docker` puts binstubs/ first on PATH.
pub struct Harness {
    pub fake: FakeArvados,
    pub tmp: tempfile::TempDir,
    pub fake_docker: bool,
}

impl Harness {
    pub fn with_fake_docker() -> Harness {
        Harness::new(FakeArvados::start(), true)
    }

    pub fn new(fake: FakeArvados, fake_docker: bool) -> Harness {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("spool")).expect("spool dir");
        std::fs::create_dir_all(tmp.path().join("docker")).expect("fake docker state");
        std::fs::create_dir_all(tmp.path().join("locks")).expect("lock dir");
        Harness {
            fake,
            tmp,
            fake_docker,
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.tmp.path().join("spool")
    }

    pub fn docker_state(&self) -> PathBuf {
        self.tmp.path().join("docker")
    }

    /// The crunch-run command for `uuid`, environment set, not started.
    pub fn command(&self, uuid: &str) -> Command {
        let mut cmd = Command::new(crunch_run_bin());
        cmd.arg("--api-retry-deadline=4s")
            .arg(uuid)
            .env("ARVADOS_API_HOST", self.fake.api_host())
            .env("ARVADOS_API_TOKEN", self.fake.token())
            .env("SSL_CERT_FILE", self.fake.ca_file())
            .env("ARVADOS_KEEP_SERVICES", self.fake.keep_services_env())
            .env_remove("ARVADOS_API_HOST_INSECURE")
            .env("TMPDIR", self.spool_dir())
            .env("FAKE_DOCKER_STATE", self.docker_state())
            .env("CRUNCH_RUN_LOCK_DIR", self.tmp.path().join("locks"))
            .stdin(Stdio::null());
        if self.fake_docker {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env(
                "PATH",
                format!("{}:{path}", crate_dir().join("binstubs").display()),
            );
        }
        cmd
    }

    /// Run crunch-run to the end with extra environment (e.g. FAKE_DOCKER_* knobs).
    pub fn run(&self, uuid: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(uuid);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run crunch-run");
        eprintln!(
            "--- crunch-run exited {}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn spawn(&self, uuid: &str, env: &[(&str, &str)]) -> Child {
        let mut cmd = self.command(uuid);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crunch-run")
    }

    /// The fake docker's call log, one invocation per line.
    pub fn docker_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.docker_state().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A file the fake docker kept for the (removed) container, e.g. "env".
    pub fn removed_container_file(&self, uuid: &str, file: &str) -> String {
        let dir = self.docker_state().join("removed");
        for entry in std::fs::read_dir(&dir)
            .expect("removed containers")
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(uuid) {
                return std::fs::read_to_string(entry.path().join(file)).unwrap_or_default();
            }
        }
        panic!("no removed container {uuid} in {}", dir.display());
    }

    /// The final record, and the text of one file of its log collection.
    pub fn log_file(&self, uuid: &str, name: &str) -> Vec<u8> {
        let record = self.fake.container(uuid);
        let pdh = record["log"]
            .as_str()
            .unwrap_or_else(|| panic!("no log on {record}"));
        self.fake
            .read_file(pdh, name)
            .unwrap_or_else(|| panic!("no {name} in log collection {pdh}"))
    }

    pub fn log_text(&self, uuid: &str, name: &str) -> String {
        String::from_utf8_lossy(&self.log_file(uuid, name)).into_owned()
    }

    /// All logs-table text of one event type, concatenated.
    pub fn logs_table(&self, event_type: &str) -> String {
        self.fake
            .logs()
            .iter()
            .filter(|l| l.event_type == event_type)
            .map(|l| l.text.clone())
            .collect()
    }
}

/// A Locked container record for `command`, using image collection `image_pdh`.
pub fn record(uuid: &str, image_pdh: &str, command: &[&str]) -> Value {
    json!({
        "uuid": uuid,
        "state": "Locked",
        "command": command,
        "container_image": image_pdh,
        "cwd": ".",
        "environment": {},
        "mounts": {},
        "output_path": "/tmp",
        "priority": 1,
        "runtime_constraints": {"ram": 256 << 20, "vcpus": 1}
    })
}

/// Panics unless every line of `text` starts with `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ `.
pub fn assert_timestamped(text: &str) {
    assert!(!text.is_empty(), "no lines");
    for line in text.lines() {
        let bytes = line.as_bytes();
        let shape = b"dddd-dd-ddTdd:dd:dd.dddddddddZ ";
        let ok = bytes.len() >= shape.len()
            && shape.iter().zip(bytes).all(|(want, got)| match want {
                b'd' => got.is_ascii_digit(),
                other => other == got,
            });
        assert!(ok, "line without a timestamp: {line:?}");
    }
}

/// The text after the timestamp of each line.
pub fn strip_timestamps(text: &str) -> String {
    text.lines()
        .map(|l| format!("{}\n", l.get(31..).unwrap_or("")))
        .collect()
}

/// Wait until `cond` holds, up to `secs` seconds.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
