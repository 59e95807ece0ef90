//! The lifecycle of one container, and only that: fetch the record, get the image into
//! the engine, create the docker container, mark the record Running, run it, and finish
//! with exactly one final update.
//!
//! Every step after the state check reports into one `Outcome`; `final_update` is the one
//! place that turns an outcome into the fields sent to the API (reference §2.5, §5.2a).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::arvados::container::{Container, State, raw_state};
use crate::config::{Backend, Config, LogUpdates};
use crate::docker::{Docker, Guard, create_argv, display_argv, run_argv};
use crate::logging::log_collection::{LogCollection, LogUpdater};
use crate::logging::pipeline::{CrunchLog, LogPipeline, LogPipelineConfig};
use crate::logging::spool::DEFAULT_BLOCK_SIZE;
use crate::logging::timestamp::SystemClock;
use crate::mounts::{self, MountPlan, StagedMounts};
use crate::redact::Secrets;
use crate::store::{ApiStore, BlockStore, ContainerAccess, StoreError};
use std::io::Write;

mod attach;
mod cancel;
mod engine;
mod exit;
mod finish;
mod outcome;
mod output;
mod prepare;
mod spec;
#[cfg(test)]
mod stub_engine;
#[cfg(test)]
mod tests;

pub use cancel::{CancelAction, CancelFlag, watch_signals};
pub use engine::{Client, Engine};
use exit::{ExitFacts, judge_exit};
use finish::{Cleanup, finish_without_logs};
pub use outcome::{
    FinalState, Outcome, Permitted, RecordProgress, Saved, WrapUp, exit_code_update, final_state,
    final_update,
};
use spec::SpecInputs;

/// The record side and the data side of one store.
type Stores = (Arc<dyn ApiStore>, Arc<dyn BlockStore>);

/// Open the configured store: the API and Keep, or a local directory.
fn open_store(config: &Config, secrets: &mut Secrets) -> Result<Stores, StoreError> {
    match &config.backend {
        Backend::Local(dir) => {
            let store = Arc::new(crate::local_store::LocalStore::open(dir)?);
            Ok((store.clone(), store))
        }
        Backend::Arvados(env) => {
            secrets.add(&env.token);
            let settings = crate::arvados::client::ApiSettings {
                host: env.host.clone(),
                token: env.token.clone(),
                insecure: env.insecure,
                extra_ca_file: env.ca_file.clone(),
                retry: crate::arvados::retry::RetryPolicy {
                    deadline: config.api_retry_deadline,
                    ..Default::default()
                },
            };
            let store = Arc::new(crate::arvados::store::ArvadosStore::connect(
                settings,
                env.keep_services.as_deref(),
            )?);
            Ok((store.clone(), store))
        }
    }
}

/// What a run is wired to: the stores, the engine, where crunch-run's log is echoed, and
/// the secrets known so far. `run` wires the real ones; tests wire `MemoryStore` and
/// `StubEngine`.
pub(crate) struct Wiring {
    pub api: Arc<dyn ApiStore>,
    pub blocks: Arc<dyn BlockStore>,
    pub engine: Arc<dyn Engine>,
    pub echo: Box<dyn Write + Send>,
    pub secrets: Secrets,
}

/// Run the container named in `config`. Returns the process exit status: 0 when the record
/// reached its final state, 1 otherwise.
pub fn run(config: &Config, cancel: CancelFlag) -> i32 {
    let mut secrets = Secrets::new();
    let (api, blocks) = match open_store(config, &mut secrets) {
        Ok(s) => s,
        Err(e) => {
            let uuid = &config.container_uuid;
            eprintln!("crunch-run: {uuid}: {}", secrets.redact(&e.to_string()));
            return 1;
        }
    };
    let wiring = Wiring {
        api,
        blocks,
        engine: Arc::new(Docker::new()),
        echo: Box::new(io::stderr()),
        secrets,
    };
    run_with(config, cancel, wiring)
}

/// `run`, with the stores and the engine given.
pub(crate) fn run_with(config: &Config, cancel: CancelFlag, wiring: Wiring) -> i32 {
    let uuid = config.container_uuid.as_str();
    let Wiring {
        api,
        blocks,
        engine,
        echo,
        secrets,
    } = wiring;
    let Some((record, initial)) = fetch_record(&*api, uuid, &secrets) else {
        return 1;
    };
    let progress = RecordProgress {
        legacy_api: initial == State::Queued,
        running: false,
    };
    let logs_table = config.logs_table.then(|| Arc::clone(&api));
    let (run_dir, pipeline) = match start_logs(config, logs_table, Arc::clone(&blocks), echo) {
        Ok(started) => started,
        Err(reason) => {
            eprintln!("crunch-run: {uuid}: {reason}");
            return finish_without_logs(&*api, uuid, progress, &reason);
        }
    };
    remove_on_cancel(&cancel, pipeline.crunch_log(), engine.clone(), uuid);
    let log_collection = Arc::new(LogCollection::new(Arc::clone(&api), uuid));
    let mut run = ContainerRun {
        uuid: uuid.to_string(),
        api,
        blocks,
        engine,
        log: pipeline.crunch_log(),
        cancel,
        secrets,
        run_dir,
        progress,
        cleanup: None,
        cleanup_done: None,
        config,
        access: None,
        mount_plan: None,
        staged: None,
        engine_asked: Default::default(),
        watchdog_interval: config.docker_watchdog_interval,
        engine_stuck: Default::default(),
        log_updates: config.log_updates,
        log_collection,
        log_updater: None,
        guard: None,
    };
    run.guard = run.start_guard();
    let (outcome, output) = run.execute(&record, &pipeline);
    run.finish(outcome, output, pipeline)
}

/// The record and its state, if crunch-run may run it; else says why on stderr.
fn fetch_record(api: &dyn ApiStore, uuid: &str, secrets: &Secrets) -> Option<(Value, State)> {
    let record = match api.get_container(uuid) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "crunch-run: {uuid}: cannot fetch the container record: {}",
                secrets.redact(&e.to_string())
            );
            return None;
        }
    };
    match raw_state(&record) {
        Ok(s @ (State::Locked | State::Queued)) => Some((record, s)),
        Ok(other) => {
            eprintln!(
                "crunch-run: {uuid}: container is {other}; crunch-run runs only Locked (or, with the 2016 API, Queued) containers. Nothing was changed."
            );
            None
        }
        Err(e) => {
            eprintln!("crunch-run: {uuid}: {e}; nothing was changed.");
            None
        }
    }
}

/// The run's spool directory, and the log pipeline spooling into it.
fn start_logs(
    config: &Config,
    logs_table: Option<Arc<dyn ApiStore>>,
    blocks: Arc<dyn BlockStore>,
    echo: Box<dyn Write + Send>,
) -> Result<(PathBuf, LogPipeline), String> {
    let uuid = &config.container_uuid;
    let run_dir = config
        .spool_dir
        .join(format!("crunch-run-{uuid}-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("cannot create spool directory {}: {e}", run_dir.display()))?;
    let pipeline = LogPipeline::start_with_echo(
        LogPipelineConfig {
            spool_dir: run_dir.join("logs"),
            container_uuid: uuid.to_string(),
            logs_table,
            echo_crunch_log_to_stderr: true,
            block_size: DEFAULT_BLOCK_SIZE,
            clock: Arc::new(SystemClock),
        },
        blocks,
        Some(echo),
    )
    .map_err(|e| format!("cannot start logging: {e}"))?;
    Ok((run_dir, pipeline))
}

/// A cancel removes the container at once, on the thread that cancels.
fn remove_on_cancel(cancel: &CancelFlag, log: CrunchLog, engine: Arc<dyn Engine>, uuid: &str) {
    let name = uuid.to_string();
    cancel.on_cancel(Arc::new(move |reason: &str| {
        log.line(&format!("{reason}: removing the docker container"));
        if let Err(e) = engine.remove(&name) {
            log.line(&format!("removing docker container {name} failed: {e}"));
        }
    }));
}

struct ContainerRun<'a> {
    uuid: String,
    api: Arc<dyn ApiStore>,
    blocks: Arc<dyn BlockStore>,
    engine: Arc<dyn Engine>,
    log: CrunchLog,
    cancel: CancelFlag,
    secrets: Secrets,
    run_dir: PathBuf,
    progress: RecordProgress,
    /// Set once the docker container may exist: what removes it.
    cleanup: Option<Cleanup>,
    /// The removal under way, waited for before crunch-run exits.
    cleanup_done: Option<crossbeam_channel::Receiver<Vec<String>>>,
    config: &'a Config,
    /// The container's own token and stores, once fetched.
    access: Option<ContainerAccess>,
    /// Removes the docker container if crunch-run dies; started early so that its
    /// start-up does not compete with the container's.
    guard: Option<Guard>,
    /// Set once docker has been asked anything.
    engine_asked: std::sync::atomic::AtomicBool,
    /// How often the docker watchdog checks on the container; None: never.
    watchdog_interval: Option<std::time::Duration>,
    /// Set when the watchdog gave up: its cancel is then a failure, not a request.
    engine_stuck: Arc<std::sync::atomic::AtomicBool>,
    /// When the logs so far are saved while the container runs, where, and by whom.
    log_updates: LogUpdates,
    log_collection: Arc<LogCollection>,
    log_updater: Option<LogUpdater>,
    /// The checked mounts, and what was staged for them on the host.
    mount_plan: Option<MountPlan>,
    staged: Option<StagedMounts>,
}

/// A failure before or around the user's command, already worded for crunch-run.txt.
type Step<T> = Result<T, Outcome>;

impl ContainerRun<'_> {
    fn say(&self, text: &str) {
        self.log.line(&self.secrets.redact(text));
    }

    fn check_cancel(&self) -> Step<()> {
        match self.cancel.reason() {
            Some(reason) => Err(Outcome::Cancelled {
                reason,
                exit_code: None,
            }),
            None => Ok(()),
        }
    }

    /// Everything from the record check to the container's exit.
    fn execute(&mut self, record: &Value, pipeline: &LogPipeline) -> (Outcome, Saved) {
        self.say(&format!("crunch-run {} started", env!("CARGO_PKG_VERSION")));
        self.say(&format!("Executing container: {}", self.uuid));
        if let Ok(host) = hostname() {
            self.say(&format!("Executing on host '{host}'"));
        }
        let (container, image) = match self.prepare(record) {
            Ok(ready) => ready,
            Err(outcome) => return (outcome, Saved::Nothing),
        };
        let outcome = match self.run_container(&container, &image, pipeline) {
            Ok(outcome) | Err(outcome) => outcome,
        };
        // The container is done with: remove it while the output is saved.
        if let Some(cleanup) = self.cleanup.take() {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let spawned = std::thread::Builder::new()
                .name("cleanup".into())
                .spawn(move || {
                    let _ = tx.send(cleanup.run());
                });
            match spawned {
                Ok(_) => self.cleanup_done = Some(rx),
                // No thread to spare: then the logs wait for the removal.
                // Dropping the cleanup closes the guard's pipe unreleased: the guard removes it.
                Err(e) => self.say(&format!(
                    "Warning: cannot start the removal thread ({e}); the guard process removes the container"
                )),
            }
        }
        let this = &*self;
        let output = std::thread::scope(|s| {
            // Capturing the output can take long: record the exit code meanwhile.
            if let Some(fields) = exit_code_update(&outcome, this.progress)
                && this.staged.is_some()
            {
                s.spawn(move || {
                    if let Err(e) = this.api.update_container(&this.uuid, &fields) {
                        this.say(&format!("Warning: cannot record the exit code early: {e}"));
                    }
                });
            }
            this.save_output(&container, &outcome)
        });
        if let Err(e) = mounts::remove_staged(&self.mounts_dir()) {
            self.say(&format!("Warning: removing the staged mounts failed: {e}"));
        }
        (outcome, output)
    }

    /// Mark the record Running, run the container attached, and ask the engine how it
    /// ended. The container is removed (with the guard released) by `self.cleanup`.
    fn run_container(
        &mut self,
        container: &Container,
        image: &str,
        pipeline: &LogPipeline,
    ) -> Step<Outcome> {
        let (spec, warning) = spec::container_spec(
            container,
            &SpecInputs {
                config: self.config,
                image,
                staged: self.staged.as_ref(),
                token: self.access.as_ref().map(|a| a.token.as_str()),
                pid: std::process::id(),
            },
        );
        if let Some(warning) = warning {
            self.say(warning);
        }
        let args = create_argv(&spec)
            .map_err(|e| Outcome::failed(format!("cannot build the docker command: {e}")))?;
        // Environment values travel in the docker CLI's own environment, never in argv.
        let argv = run_argv(&args.argv(Path::new("<env-file>")));
        self.check_cancel()?;

        let mut running = Map::new();
        running.insert("state".into(), json!("Running"));
        self.api
            .update_container(&self.uuid, &running)
            .map_err(|e| {
                Outcome::failed(format!("cannot set the container record to Running: {e}"))
            })?;
        self.progress.running = true;
        self.start_log_updates(pipeline);
        let run_time_limit = container
            .max_run_time
            .map(|limit| self.limit_run_time(limit));

        self.cleanup = Some(Cleanup {
            engine: self.engine.clone(),
            name: self.uuid.clone(),
            guard: self.guard.take(),
        });
        self.say(&format!("Running: docker {}", display_argv(&argv)));
        let mut ran = self.run_once(&spec, pipeline);
        if let Ok(client) = &ran
            && client.said.contains("is already in use by container")
        {
            // Left by an earlier crunch-run for this UUID that was killed before its guard
            // could act.
            self.say(&format!("Removing leftover docker container {}", self.uuid));
            ran = self
                .engine
                .remove(&self.uuid)
                .map_err(|e| {
                    Outcome::failed(format!(
                        "cannot remove leftover container {}: {e}",
                        self.uuid
                    ))
                })
                .and_then(|()| self.run_once(&spec, pipeline));
        }
        let client = ran?;
        drop(run_time_limit);
        let cancel = self.cancel.reason();
        let facts = ExitFacts {
            client: &client,
            cancel: cancel.as_deref(),
            engine_stuck: self.engine_stuck.load(std::sync::atomic::Ordering::Acquire),
            memory_limit: spec.memory_bytes,
        };
        let say = |line: &str| self.say(line);
        let judged = judge_exit(&facts, || {
            exit::engine_state(&*self.engine, &self.uuid, &say).map_err(|e| e.to_string())
        });
        for note in &judged.notes {
            self.say(note);
        }
        match judged.outcome {
            outcome @ Outcome::Exited { .. } => Ok(outcome),
            outcome => Err(outcome),
        }
    }

    fn start_guard(&self) -> Option<Guard> {
        match self.engine.guard(&self.uuid) {
            Ok(g) => g,
            Err(e) => {
                self.say(&format!("Warning: cannot start the guard process ({e}); the container is not protected against crunch-run being killed"));
                None
            }
        }
    }

    /// Save the logs so far now and then while the container runs (not with the 2016 API,
    /// which does not let a Running record's `log` change).
    fn start_log_updates(&mut self, pipeline: &LogPipeline) {
        if !self.progress.permits(State::Running).log || self.log_updates.is_off() {
            return;
        }
        let (log, secrets) = (self.log.clone(), self.secrets.clone());
        match LogUpdater::start(
            self.log_updates,
            pipeline.snapshots(),
            self.log_collection.clone(),
            move |text| log.line(&secrets.redact(text)),
        ) {
            Ok(updater) => self.log_updater = Some(updater),
            Err(e) => self.say(&format!(
                "Warning: cannot start saving the logs while the container runs: {e}"
            )),
        }
    }

    /// Cancel the run when `limit` passes before the returned sender is dropped.
    fn limit_run_time(&self, limit: std::time::Duration) -> crossbeam_channel::Sender<()> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let cancel = self.cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("max-run-time".into())
            .spawn(move || {
                if stopped.recv_timeout(limit) == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    cancel.cancel(&format!(
                        "maximum run time exceeded ({})",
                        humantime::format_duration(limit)
                    ));
                }
            });
        if let Err(e) = spawned {
            self.say(&format!("Warning: cannot enforce max_run_time: {e}"));
        }
        stop
    }
}

fn hostname() -> io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string())
}
