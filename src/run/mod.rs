//! The lifecycle of one container, read top to bottom like Go's `Run`: open the stores,
//! start the logs, then prepare → create → Running → start → wait → capture → finish, with
//! exactly one final update.
//!
//! The steps live beside this file: `prepare` (record, token, mounts, image, staging),
//! `spec` (the container spec), `attach` (`docker create`, the Running update, the
//! attached `docker start`, supervised by `supervisor`'s helpers, cancelled through
//! `cancel`), `exit` (how the container ended: the one judgement of the outcome), `output`
//! (the output collection) and `finish` (the log collection, the final update, the
//! cleanup). `outcome` is the one place that turns the outcome and the wrap-up's results
//! into the record's final state and fields (reference §2.5, §5.2a). The engine is
//! reached only through `engine::Engine`.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use crate::arvados::container::State;
use crate::arvados::retry_limit::RetryLimit;
use crate::cgroup::Roots;
use crate::config::{Backend, Config};
use crate::docker::{Docker, Guard};
use crate::logging::log_collection::LogCollection;
use crate::logging::pipeline::{CrunchLog, LogPipeline, LogPipelineConfig};
use crate::logging::spool::DEFAULT_BLOCK_SIZE;
use crate::logging::timestamp::SystemClock;
use crate::mounts::StagedMounts;
use crate::mounts::arv_mount::ArvMount;
use crate::progress::Progress;
use crate::redact::Secrets;
use crate::store::{ApiStore, BlockStore, ContainerAccess, StoreError};

mod attach;
mod cancel;
mod crunchstat;
mod deadline;
mod engine;
mod exit;
mod finish;
mod keep_mount;
mod node_files;
mod node_signals;
mod outcome;
mod output;
mod prepare;
mod requeue;
mod spec;
mod supervisor;

pub use cancel::{CancelAction, CancelFlag, watch_signals};
use crunchstat::ResourceStats;
pub use engine::{Client, Engine, KillClient};
use finish::{Cleanup, cancel_unreadable, finish_without_logs};
use node_signals::{NodeSignals, RunCost};
pub use outcome::{
    FinalState, Outcome, Permitted, RecordProgress, Saved, WrapUp, add_cost, exit_code_update,
    final_state, final_update,
};
use output::Output;
use supervisor::ClientSlot;
pub use supervisor::{Stop, Supervisor};

/// The record side and the data side of one store.
type Stores = (Arc<dyn ApiStore>, Arc<dyn BlockStore>);

/// Open the configured store: the API and Keep, or a local directory.
fn open_store(
    config: &Config,
    secrets: &mut Secrets,
    limit: &RetryLimit,
) -> Result<Stores, StoreError> {
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
                    limit: limit.clone(),
                    ..Default::default()
                },
            };
            // Keep services not listed are discovered beside the first requests; `prepare`
            // waits for them (`BlockStore::ready`) before the record goes Running.
            let store = Arc::new(crate::arvados::store::ArvadosStore::start(
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
    /// The limit over every retry of the stores (the wrap-up's deadline).
    pub retry_limit: RetryLimit,
}

/// Run the container named in `config`. Returns the process exit status: 0 when the record
/// reached its final state, 1 otherwise.
pub fn run(config: &Config, cancel: CancelFlag) -> i32 {
    let mut secrets = Secrets::new();
    let retry_limit = RetryLimit::default();
    let (api, blocks) = match open_store(config, &mut secrets, &retry_limit) {
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
        retry_limit,
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
        retry_limit,
    } = wiring;
    let early_access = prepare::AccessFetch::start(Arc::clone(&api), uuid);
    let (record, initial) = match prepare::fetch_record(&*api, uuid, &secrets) {
        prepare::Fetched::Run(record, state) => (record, state),
        prepare::Fetched::Close(state, reason) => {
            let progress = RecordProgress {
                legacy_api: state == State::Queued,
                running: false,
            };
            return cancel_unreadable(&*api, uuid, progress, &reason);
        }
        prepare::Fetched::Leave => return 1,
    };
    // A record to run (Locked): the engine may be asked from here on.
    let early_images = prepare::list_images(Arc::clone(&engine));
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
    let late_retries = deadline::report_retries(&retry_limit, pipeline.crunch_log(), uuid);
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
        early_access: Some(early_access),
        early_images,
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
        retry_limit,
        late_retries,
        wrap_up: None,
        cost: RunCost::new(&config.node),
        node_signals: NodeSignals::none(),
    };
    run.start_node_signals();
    run.start_guard();
    run.start_hoststat(&pipeline);
    let (outcome, output) = run.execute(&record, &pipeline);
    run.finish(outcome, output, pipeline)
}

impl ContainerRun<'_> {
    /// The guard process, started early so that its start-up does not compete with the
    /// container's; without one, the run goes on unprotected and says so.
    fn start_guard(&mut self) {
        let cgroup_parent = self.config.container.cgroup_parent.as_deref();
        self.guard = match self.engine.guard(&self.uuid, cgroup_parent) {
            Ok(guard) => guard,
            Err(e) => {
                self.say(&format!("Warning: cannot start the guard process ({e}); the container is not protected against crunch-run being killed"));
                None
            }
        };
        self.free_the_guard();
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
    private_dir(&run_dir)
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

/// `dir`, created if missing, reachable by crunch-run's user only (issue 10, point 1): the
/// output and tmp mounts inside it stay writable for the container (they reach it
/// through bind mounts, not this path), but no other local user can reach them, nor the
/// spooled logs and the env file.
fn private_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
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
    /// The token and secret mounts, asked for beside the record.
    early_access: Option<prepare::AccessFetch>,
    /// The engine's images, asked for as soon as the record was found runnable.
    early_images: Option<prepare::ImageList>,
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
    /// The limit over every retry; `wrap_up` once the wrap-up's deadline is set.
    retry_limit: RetryLimit,
    late_retries: deadline::LateRetries,
    wrap_up: Option<deadline::WrapUpDeadline>,
    /// crunchstat and hoststat.
    stats: ResourceStats,
    /// The instance's prices, for the cost of the run.
    cost: RunCost,
    /// SIGUSR1 (save the logs now) and SIGUSR2 (reload the prices).
    node_signals: NodeSignals,
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

    /// Progress lines for a step moving `total` bytes, at the configured cadence, into
    /// crunch-run.txt and the logs table (whose queue and throttle never drop them).
    fn progress_of(&self, what: &str, total: Option<u64>) -> Progress<'static> {
        let (log, secrets) = (self.log.clone(), self.secrets.clone());
        let say = move |text: &str| log.line_kept(&secrets.redact(text));
        Progress::new(what, total, self.config.progress, say)
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

    /// Load the prices kept on this host, and listen for SIGUSR1 and SIGUSR2.
    fn start_node_signals(&mut self) {
        self.cost.reload(&|line| self.say(line));
        match NodeSignals::start(self.cost.clone(), self.sayer()) {
            Ok(signals) => self.node_signals = signals,
            Err(e) => self.say(&format!(
                "Warning: cannot listen for SIGUSR1 and SIGUSR2 ({e}): a dispatcher's price update or log save request kills crunch-run"
            )),
        }
    }

    fn check_cancel(&self) -> Step<()> {
        match self.cancel.reason() {
            Some(reason) => Err(self.cancelled(reason)),
            None => Ok(()),
        }
    }

    /// Everything from the record check to the output: prepare → start → wait → capture.
    fn execute(&mut self, record: &Value, pipeline: &LogPipeline) -> (Outcome, Output) {
        self.say(&format!("crunch-run {} started", env!("CARGO_PKG_VERSION")));
        self.say(&format!("Executing container: {}", self.uuid));
        if let Ok(host) = hostname() {
            self.say(&format!("Executing on host '{host}'"));
        }
        let node_info = self.gather_node_info();
        let prepared = match self.prepare(record, pipeline) {
            Ok(prepared) => prepared,
            Err(outcome) => return (outcome, Output::Settled(Saved::Nothing)),
        };
        let started = self
            .create(&prepared)
            .and_then(|spec| {
                self.log_node_files(record, node_info, pipeline)
                    .map(|()| spec)
            })
            .and_then(|spec| self.set_running(&prepared).map(|()| spec));
        let outcome = match started {
            Ok(spec) => self.attach(&spec, prepared.container.max_run_time, pipeline),
            Err(outcome) => outcome,
        };
        // The container is done with: the wrap-up begins; remove it while the output is
        // saved.
        self.begin_wrap_up();
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
