//! The lifecycle of one container, read top to bottom like Go's `Run`: open the stores,
//! start the logs, then prepare → start → wait → capture → finish, with exactly one final
//! update.
//!
//! The steps live beside this file: `prepare` (record, token, mounts, image, staging),
//! `spec` (the container spec), `attach` (the attached `docker run`, supervised by
//! `supervisor`'s helpers, cancelled through `cancel`), `exit` (how the container ended:
//! the one judgement of the outcome), `output` (the output collection) and `finish` (the
//! log collection, the final update, the cleanup). `outcome` is the one place that turns
//! the outcome and the wrap-up's results into the record's final state and fields
//! (reference §2.5, §5.2a). The engine is reached only through `engine::Engine`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::arvados::container::State;
use crate::cgroup::Roots;
use crate::config::{Backend, Config};
use crate::docker::{Docker, Guard};
use crate::logging::log_collection::LogCollection;
use crate::logging::pipeline::{CrunchLog, LogPipeline, LogPipelineConfig};
use crate::logging::spool::DEFAULT_BLOCK_SIZE;
use crate::logging::timestamp::SystemClock;
use crate::mounts::StagedMounts;
use crate::mounts::arv_mount::ArvMount;
use crate::redact::Secrets;
use crate::store::{ApiStore, BlockStore, ContainerAccess, StoreError};

mod attach;
mod cancel;
mod crunchstat;
mod engine;
mod exit;
mod finish;
mod keep_mount;
mod outcome;
mod output;
mod prepare;
mod spec;
mod supervisor;

pub use cancel::{CancelAction, CancelFlag, watch_signals};
use crunchstat::ResourceStats;
pub use engine::{Client, Engine, KillClient};
use finish::{Cleanup, finish_without_logs};
pub use outcome::{
    FinalState, Outcome, Permitted, RecordProgress, Saved, WrapUp, exit_code_update, final_state,
    final_update,
};
use supervisor::ClientSlot;
pub use supervisor::{Stop, Supervisor};

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
    /// Where /proc and the cgroups are, for crunchstat and hoststat.
    pub cgroups: Roots,
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
        engine: Arc::new(Docker::with_program_and_env(
            &config.docker.program,
            config.docker.env.iter().cloned(),
        )),
        echo: Box::new(io::stderr()),
        secrets,
        cgroups: Roots::host(),
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
        cgroups,
    } = wiring;
    let Some((record, initial)) = prepare::fetch_record(&*api, uuid, &secrets) else {
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
    cancel::remove_on_cancel(&cancel, pipeline.crunch_log(), engine.clone(), uuid);
    let log_collection = Arc::new(LogCollection::new(Arc::clone(&api), uuid));
    let mut run = ContainerRun {
        uuid: uuid.to_string(),
        config,
        api,
        blocks,
        engine,
        log: pipeline.crunch_log(),
        cancel,
        secrets,
        run_dir,
        progress,
        access: None,
        staged: None,
        arv_mount: None,
        guard: None,
        cgroup_parent: None,
        cleanup: None,
        cleanup_done: None,
        engine_asked: AtomicBool::new(false),
        engine_stuck: Arc::default(),
        client: ClientSlot::default(),
        log_collection,
        stats: ResourceStats::new(cgroups),
    };
    run.guard = match run
        .engine
        .guard(uuid, config.container.cgroup_parent.as_deref())
    {
        Ok(guard) => guard,
        Err(e) => {
            run.say(&format!("Warning: cannot start the guard process ({e}); the container is not protected against crunch-run being killed"));
            None
        }
    };
    run.free_the_guard();
    run.start_hoststat(&pipeline);
    let (outcome, output) = run.execute(&record, &pipeline);
    run.finish(outcome, output, pipeline)
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

/// One run, from the record check to the final update: what its steps share.
struct ContainerRun<'a> {
    uuid: String,
    config: &'a Config,
    api: Arc<dyn ApiStore>,
    blocks: Arc<dyn BlockStore>,
    engine: Arc<dyn Engine>,
    log: CrunchLog,
    cancel: CancelFlag,
    secrets: Secrets,
    run_dir: PathBuf,
    progress: RecordProgress,
    /// The container's own token and stores, once fetched.
    access: Option<ContainerAccess>,
    /// What was staged on the host for the record's mounts.
    staged: Option<StagedMounts>,
    /// The arv-mount serving the collection mounts (FUSE path), if any.
    arv_mount: Option<ArvMount>,
    /// Removes the docker container if crunch-run dies; started early so that its
    /// start-up does not compete with the container's.
    guard: Option<Guard>,
    /// The container's cgroup parent, once the engine said it can take it.
    cgroup_parent: Option<String>,
    /// Set once the docker container may exist: what removes it.
    cleanup: Option<Cleanup>,
    /// The removal under way, waited for before crunch-run exits.
    cleanup_done: Option<crossbeam_channel::Receiver<Vec<String>>>,
    /// Set once the engine has been asked anything.
    engine_asked: AtomicBool,
    /// Set when the watchdog gave up: its cancel is then a failure, not a request.
    engine_stuck: Arc<AtomicBool>,
    /// The docker client under way, for the helpers that must kill it.
    client: ClientSlot,
    log_collection: Arc<LogCollection>,
    /// crunchstat and hoststat.
    stats: ResourceStats,
}

/// A failure before or around the user's command, already worded for crunch-run.txt.
type Step<T> = Result<T, Outcome>;

impl ContainerRun<'_> {
    fn say(&self, text: &str) {
        self.log.line(&self.secrets.redact(text));
    }

    /// `say`, for another thread.
    fn sayer(&self) -> impl Fn(&str) + Send + 'static {
        let (log, secrets) = (self.log.clone(), self.secrets.clone());
        move |text: &str| log.line(&secrets.redact(text))
    }

    /// In a Slurm job, move the guard out of the job's cgroups: Slurm's kill of every
    /// process in the job then spares it, and it removes the container (slurm.rs).
    fn free_the_guard(&self) {
        let pid = self.guard.as_ref().and_then(Guard::pid);
        let (Some(job), Some(pid)) = (&self.config.slurm_job, pid) else {
            return;
        };
        let id = job.id();
        match job.release(&Roots::host(), pid) {
            Ok(left) if left.is_empty() => {}
            Ok(left) => self.say(&format!(
                "The guard process left Slurm job {id}'s cgroups ({}), so that the job's kill leaves it to remove the container",
                left.join(", ")
            )),
            Err(e) => self.say(&format!(
                "Warning: the guard process cannot leave Slurm job {id}'s cgroups ({e}): if Slurm kills every process of the job, the docker container keeps running. Run crunch-run as root, or install the Slurm Epilog contrib/slurm-epilog.sh (README: Running on a cluster)"
            )),
        }
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

    /// Everything from the record check to the output: prepare → start → wait → capture.
    fn execute(&mut self, record: &Value, pipeline: &LogPipeline) -> (Outcome, Saved) {
        self.say(&format!("crunch-run {} started", env!("CARGO_PKG_VERSION")));
        self.say(&format!("Executing container: {}", self.uuid));
        if let Ok(host) = hostname() {
            self.say(&format!("Executing on host '{host}'"));
        }
        let prepared = match self.prepare(record, pipeline) {
            Ok(prepared) => prepared,
            Err(outcome) => return (outcome, Saved::Nothing),
        };
        let outcome = match self.start(&prepared) {
            Ok(spec) => self.attach(&spec, prepared.container.max_run_time, pipeline),
            Err(outcome) => outcome,
        };
        // The container is done with: remove it while the output is saved.
        self.start_cleanup();
        let output = self.capture(&prepared.container, &outcome);
        (outcome, output)
    }
}

fn hostname() -> io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string())
}

#[cfg(test)]
mod stub_engine;
#[cfg(test)]
mod tests;
