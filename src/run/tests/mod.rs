//! The lifecycle's unit tests, as the Go crunch-run's: the whole `run` driven against the
//! in-memory store (`MemoryStore`) and a scripted engine (`StubEngine`), in a temporary
//! spool directory. `Fixture` holds what one test needs; the tests are in `lifecycle.rs`
//! (how runs end) and `wrapup.rs` (what is saved and said at the end).

mod crunchstat;
mod lifecycle;
mod wrapup;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::stub_engine::{Script, StubEngine};
use super::{CancelFlag, Wiring, run_with};
use crate::arvados::manifest::Manifest;
use crate::cgroup::Roots;
use crate::collection::stream_file;
use crate::config::{Backend, Config, LogUpdates};
use crate::redact::Secrets;
use crate::store::ApiStore;
use crate::store::memory::MemoryStore;
use crate::test_io::SharedBuf;

pub(super) const UUID: &str = "zzzzz-dz642-000000000000001";
pub(super) const IMAGE_ID: &str =
    "sha256:0263e5a1f5f2e5e5d4c2b1a09876543210fedcba9876543210fedcba98765432";
const IMAGE_TAR: &[u8] = b"a docker image tar";

/// A configuration for a run of `UUID` spooling into `spool_dir`: the local store's
/// backend, the logs table on, no watchdog, no saves while running.
pub(super) fn config(spool_dir: &Path) -> Config {
    std::fs::create_dir_all(spool_dir.join("locks")).unwrap();
    Config {
        container_uuid: UUID.into(),
        backend: Backend::Local(spool_dir.join("unused-store")),
        logs_table: true,
        spool_dir: spool_dir.to_path_buf(),
        api_retry_deadline: Duration::from_secs(1),
        wrap_up: Default::default(),
        docker_watchdog_interval: None,
        log_updates: LogUpdates {
            period: Duration::ZERO,
            bytes: 0,
        },
        crunchstat_interval: None,
        keep_mount: crate::config::KeepMount::Stage,
        gpu_devices: None,
        docker: Default::default(),
        container: Default::default(),
        slurm_job: None,
        progress: Default::default(),
        // Never the host's /var/lock: a broken-node mark lands in the test's directory.
        node: crate::config::NodeSetup {
            lock_dir: spool_dir.join("locks"),
            ..Default::default()
        },
    }
}

pub(super) struct Fixture {
    pub store: Arc<MemoryStore>,
    pub engine: StubEngine,
    pub config: Config,
    pub cancel: CancelFlag,
    pub spool: tempfile::TempDir,
    /// Where crunchstat and hoststat find /proc and the cgroups (this host's by default).
    pub cgroups: Roots,
    stderr: SharedBuf,
}

impl Fixture {
    /// A Locked record running `echo hello` in the image collection's image, which the
    /// engine loads as `IMAGE_ID` when asked.
    pub fn new(script: Script) -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let locator = store.put(IMAGE_TAR);
        let manifest = format!(". {locator} 0:{}:{IMAGE_ID}.tar\n", IMAGE_TAR.len());
        let image_pdh = crate::arvados::manifest::portable_data_hash(&manifest);
        store.add_collection(&image_pdh, &manifest);
        store.add_container(
            UUID,
            json!({
                "uuid": UUID,
                "state": "Locked",
                "command": ["echo", "hello"],
                "container_image": image_pdh,
                "cwd": ".",
                "environment": {},
                "output_path": "/out",
                "mounts": {},
                "runtime_constraints": {},
            }),
        );
        let spool = tempfile::tempdir().unwrap();
        let script = Script {
            load: script.load.or(Some(Ok(IMAGE_ID.into()))),
            ..script
        };
        Fixture {
            store,
            engine: StubEngine::new(script),
            config: config(spool.path()),
            cancel: CancelFlag::default(),
            spool,
            cgroups: Roots::host(),
            stderr: SharedBuf::default(),
        }
    }

    /// Change the record before the run.
    pub fn record(&self, change: impl FnOnce(&mut Value)) -> &Fixture {
        let mut containers = self.store.containers.lock().unwrap();
        change(containers.get_mut(UUID).unwrap());
        self
    }

    /// Make saving a collection whose name starts with `prefix` fail.
    pub fn fail_collections(&self, prefix: &str) {
        let mut failing = self.store.fail_collections.lock().unwrap();
        failing.push(prefix.to_string());
    }

    /// Run it; the process exit status.
    pub fn run(&self) -> i32 {
        let wiring = Wiring {
            api: self.store.clone(),
            blocks: self.store.clone(),
            engine: Arc::new(self.engine.clone()),
            echo: Box::new(self.stderr.clone()),
            secrets: Secrets::new(),
            cgroups: self.cgroups.clone(),
            retry_limit: Default::default(),
        };
        run_with(&self.config, self.cancel.clone(), wiring)
    }

    /// Every container update sent, in order.
    pub fn updates(&self) -> Vec<Map<String, Value>> {
        let updates = self.store.updates.lock().unwrap();
        updates.iter().map(|(_, fields)| fields.clone()).collect()
    }

    /// The last update: the final one.
    pub fn final_update(&self) -> Map<String, Value> {
        self.updates().pop().expect("no update was sent")
    }

    /// A file of the collection `pdh` (as the record's `log` or `output` names it).
    pub fn collection_file(&self, pdh: &str, name: &str) -> Option<String> {
        let text = self.store.get_collection_manifest(pdh).ok()?;
        let manifest = Manifest::parse(&text).unwrap();
        let file = manifest
            .files()
            .into_iter()
            .find(|f| f.path == name.as_bytes())?;
        let mut bytes = Vec::new();
        stream_file(&*self.store, &file, &mut bytes, &|| Ok(())).unwrap();
        Some(String::from_utf8(bytes).unwrap())
    }

    /// A file of the final log collection, its timestamps cut off.
    pub fn log(&self, name: &str) -> String {
        let update = self.final_update();
        let pdh = match update.get("log").and_then(Value::as_str) {
            Some(pdh) => pdh.to_string(),
            // A requeue's unlock carries no log: the log collection saved last.
            None => self.last_log_collection().expect("no log collection"),
        };
        strip_timestamps(&self.collection_file(&pdh, name).unwrap())
    }

    fn last_log_collection(&self) -> Option<String> {
        let collections = self.store.collections.lock().unwrap();
        let last = collections
            .values()
            .rfind(|c| c.name.starts_with("logs for "))?;
        Some(crate::arvados::manifest::portable_data_hash(
            &last.manifest_text,
        ))
    }

    /// What crunch-run echoed to stderr, timestamps and uuids cut off.
    pub fn stderr(&self) -> String {
        let echoed = self.stderr.text();
        let lines = echoed
            .lines()
            .map(|l| l.strip_prefix(UUID).unwrap_or(l).trim_start());
        strip_timestamps(&lines.map(|l| format!("{l}\n")).collect::<String>())
    }

    /// The texts posted to the logs table for one event type, timestamps cut off.
    pub fn logs_table(&self, event_type: &str) -> String {
        strip_timestamps(&self.store.texts(event_type).concat())
    }

    /// The run directory a failed log save left behind.
    pub fn kept_run_dir(&self) -> std::path::PathBuf {
        let mut dirs = std::fs::read_dir(self.spool.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("crunch-run-"))
            });
        dirs.next().expect("no run directory was kept")
    }
}

/// Cut the RFC 3339 timestamp off each line that has one.
pub(super) fn strip_timestamps(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.split_once(' ') {
            Some((ts, rest)) if ts.len() == crate::rfc3339::TIMESTAMP_LEN && ts.ends_with('Z') => {
                rest
            }
            _ => line,
        })
        .collect()
}

/// The fields of an update, in order.
pub(super) fn keys(update: &serde_json::Map<String, Value>) -> Vec<&str> {
    update.keys().map(String::as_str).collect()
}

/// The update that marks the record Running.
pub(super) fn running() -> serde_json::Map<String, Value> {
    serde_json::Map::from_iter([("state".to_string(), json!("Running"))])
}

/// Wait (up to 20 s) for `done`.
pub(super) fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The lines of `text` that are exactly `line`.
pub(super) fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}
