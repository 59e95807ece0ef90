//! Flags and environment, turned into what this invocation does: a `Mode`, and for a run
//! one validated `Config`.
//!
//! Parsing is two-staged: clap reads the raw flags (`Args`), then `Mode::from_parts` and
//! `Config::from_args` check them against the environment and are the only places that
//! decide what is missing. This is the only module that reads the process environment
//! (`process_env`, and the snapshot the docker clients and the guard are given, in
//! `DockerCli`), and `Mode::from_process` the only function that reads the stdin
//! config, which dispatchers use to pass the environment without putting a token in our
//! process environment. Doing what the mode says is left to main.rs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read};
use std::path::PathBuf;

use clap::Parser;

use crate::arvados::ids::is_container_uuid;
use crate::cgroup::Roots;
use crate::docker::GUARD_DOCKER_ENV;
use crate::progress::Cadence;
use crate::slurm::{ContainerCgroups, SlurmJob};
use progress::progress_cadence;

mod flags;
mod go_flags;
mod node;
mod progress;
mod wrap_up;
pub use flags::{ContainerFlags, ContainerSetup, IgnoredFlags, KeepMount};
pub use go_flags::normalize_go_flags;
pub use node::{BROKEN_FILE, NodeFlags, NodeSetup, PRICES_FILE};
pub use wrap_up::{WrapUpFlags, WrapUpLimits};

/// The raw command line. Go-style single-dash long flags (`-runtime-engine=docker`) are
/// accepted too: `normalize_go_flags` rewrites them before clap sees them.
#[derive(Debug, Parser)]
#[command(
    name = "crunch-run",
    version,
    about = "Run one Arvados container through the docker CLI, from Locked to its final state."
)]
pub struct Args {
    /// The container to run, e.g. zzzzz-dz642-0123456789abcde.
    pub container_uuid: Option<String>,

    /// Container engine. Only "docker" is supported.
    #[arg(long, default_value = "docker", value_name = "ENGINE")]
    pub runtime_engine: String,

    /// Use a local directory instead of the API server and Keep (container records as JSON
    /// files, Keep blocks as files, logs appended to logs.jsonl).
    #[arg(long, value_name = "DIR")]
    pub local_store: Option<PathBuf>,

    /// Do not send log lines to the API logs table (the Keep log collection is unaffected).
    #[arg(long)]
    pub no_logs_table: bool,

    /// Where log files are spooled while the container runs (default: $TMPDIR or /tmp).
    /// They are removed once the log collection is saved, and kept if it is not.
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// How long API and Keep requests keep retrying transient failures (connection
    /// errors, 429, 5xx) before the run gives up, e.g. "10m", "30s".
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub api_retry_deadline: std::time::Duration,

    #[command(flatten)]
    pub wrap_up: WrapUpFlags,

    /// How often the engine is asked whether the container still runs while `docker start`
    /// is attached; after 5 failed checks in a row the run is cancelled. "0s" turns the
    /// watchdog off.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub docker_watchdog_interval: std::time::Duration,

    /// While the container runs, save the logs so far to the log collection (and point the
    /// record's `log` at it) when this long passed and anything new was logged. "0s": never.
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub log_update_period: std::time::Duration,

    /// ... and whenever this many more bytes were logged. 0: never.
    #[arg(long, default_value_t = 32 << 20, value_name = "BYTES")]
    pub log_update_size: u64,

    /// Read {"Env": {"ARVADOS_API_HOST": …, "ARVADOS_API_TOKEN": …}} from stdin, as
    /// arvados-dispatch-cloud sends it. Values there win over the process environment.
    #[arg(long)]
    pub stdin_config: bool,

    #[command(flatten)]
    pub container: ContainerFlags,

    #[command(flatten)]
    pub node: NodeFlags,

    /// How often the container's and the host's resource usage is written to
    /// crunchstat.txt and hoststat.txt (Go's syntax: "10s", "1m30s"). "0s" turns both off.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub crunchstat_interval: std::time::Duration,

    /// How collection mounts reach the container: "fuse" through one arv-mount per run
    /// (read lazily), "stage" copied from Keep onto the host before the start, "auto"
    /// FUSE when arv-mount is on PATH and /dev/fuse can be opened, else staging.
    #[arg(long, value_enum, default_value_t = KeepMount::Auto, value_name = "HOW")]
    pub keep_mount: KeepMount,

    /// CA bundle to trust in addition to the system roots (same as SSL_CERT_FILE).
    #[arg(long, value_name = "FILE")]
    pub ca_certs: Option<PathBuf>,

    /// Start the run in the background, print {"UUID":…,"PID":…} and exit (as
    /// arvados-dispatch-cloud runs crunch-run). Output goes to
    /// <spool dir>/crunch-run-<uuid>.log.
    #[arg(long)]
    pub detach: bool,

    /// Print the UUIDs of the runs alive on this host (from their lock files) and exit.
    #[arg(long)]
    pub list: bool,

    /// Send this signal (e.g. 15) to the run of CONTAINER_UUID and wait for it to end.
    #[arg(long, value_name = "SIGNAL")]
    pub kill: Option<i32>,

    /// Internal: run as the guard process that removes the named docker container when
    /// crunch-run's pipe closes without a release.
    #[arg(long, value_name = "NAME", hide = true)]
    pub guard_container: Option<String>,

    /// Internal: the container's cgroup parent, for the guard to remove the directories
    /// docker made for it inside the Slurm job (`SLURM_JOB_ID`).
    #[arg(long, value_name = "PATH", hide = true)]
    pub guard_cgroup_parent: Option<String>,

    #[command(flatten)]
    pub ignored: IgnoredFlags,
}

/// How to reach the Arvados API and Keep.
#[derive(Clone)]
pub struct ApiEnv {
    pub host: String,
    pub token: String,
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub keep_services: Option<String>,
}

impl std::fmt::Debug for ApiEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiEnv")
            .field("host", &self.host)
            .field("token", &"[REDACTED]")
            .field("insecure", &self.insecure)
            .field("ca_file", &self.ca_file)
            .field("keep_services", &self.keep_services)
            .finish()
    }
}

/// Where records and blocks live.
#[derive(Debug, Clone)]
pub enum Backend {
    Arvados(ApiEnv),
    Local(PathBuf),
}

/// Everything a run needs to know before it starts.
#[derive(Debug, Clone)]
pub struct Config {
    pub container_uuid: String,
    pub backend: Backend,
    pub logs_table: bool,
    pub spool_dir: PathBuf,
    pub api_retry_deadline: std::time::Duration,
    /// The whole wrap-up's deadline, and what is left of it after a signal.
    pub wrap_up: WrapUpLimits,
    /// None: no docker watchdog.
    pub docker_watchdog_interval: Option<std::time::Duration>,
    /// When the logs so far are saved while the container runs.
    pub log_updates: LogUpdates,
    /// How often crunchstat and hoststat report; None: neither runs.
    pub crunchstat_interval: Option<std::time::Duration>,
    /// How collection mounts reach the container (`--keep-mount`).
    pub keep_mount: KeepMount,
    /// The GPUs a scheduler assigned to this run (CUDA_VISIBLE_DEVICES), when it did; else
    /// the engine picks as many as the record asks for.
    pub gpu_devices: Option<Vec<String>>,
    /// How the docker CLI is run.
    pub docker: DockerCli,
    /// Network, memory limit and cgroup parent, as the dispatcher's flags ask.
    pub container: ContainerSetup,
    /// The Slurm job crunch-run runs in (`SLURM_JOB_ID`), if any.
    pub slurm_job: Option<SlurmJob>,
    /// When steps that move many bytes say how far they are: after 5 s, then every 30 s;
    /// `CRUNCH_RUN_PROGRESS_INTERVALS=FIRST,EVERY` (e.g. `1s,2s`) for tests.
    pub progress: Cadence,
    /// The broken-node hook, the node's marks, the instance type.
    pub node: NodeSetup,
}

/// How crunch-run runs the docker CLI: the program, and the environment its clients (and
/// the guard) are given, which is crunch-run's own, read once here (the docker module
/// drops the `ARVADOS_*` variables from it). `Debug` shows the names only: the
/// dispatcher's token may be among the values.
#[derive(Clone, Default)]
pub struct DockerCli {
    pub program: PathBuf,
    pub env: Vec<(OsString, OsString)>,
}

impl std::fmt::Debug for DockerCli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerCli")
            .field("program", &self.program)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

/// What one invocation of crunch-run does, decided from its flags and environment before
/// anything runs. The modes that touch run locks carry the directory they live in.
#[derive(Debug)]
pub enum Mode {
    /// `--guard-container NAME`: be the guard that removes NAME when our pipe closes, with
    /// the docker program crunch-run named in `GUARD_DOCKER_ENV`.
    Guard {
        container: String,
        docker: DockerCli,
        /// What docker made for the container inside the Slurm job, to remove after it.
        cgroups: Option<ContainerCgroups>,
    },
    /// `--list`: print the UUIDs of the live runs. `read_prices`: `--stdin-prices` (stdin is
    /// read too whenever it is not a terminal, as Go's `--list` reads it).
    List {
        lock_dir: PathBuf,
        read_prices: bool,
    },
    /// `--kill SIGNAL UUID`: signal the run of UUID and wait for it to end.
    Kill {
        lock_dir: PathBuf,
        uuid: String,
        signal: i32,
    },
    /// `--detach`: start the run in the background, handing it the stdin config.
    Detach {
        config: Config,
        lock_dir: PathBuf,
        stdin_config: Option<String>,
    },
    /// Run the container.
    Run { config: Config, lock_dir: PathBuf },
}

/// When the log collection is saved while the container runs (zero: never on that count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogUpdates {
    pub period: std::time::Duration,
    pub bytes: u64,
}

impl LogUpdates {
    /// Whether the logs are saved only when the run ends.
    pub fn is_off(&self) -> bool {
        self.period.is_zero() && self.bytes == 0
    }
}

/// A usage problem: printed as one line, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The process environment. A variable whose name or value is not UTF-8 is left out:
/// none of ours can be, and `std::env::vars` would panic on it.
pub fn process_env() -> BTreeMap<String, String> {
    utf8_vars(std::env::vars_os())
}

fn utf8_vars(vars: impl Iterator<Item = (OsString, OsString)>) -> BTreeMap<String, String> {
    vars.filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Where run lock files live: `CRUNCH_RUN_LOCK_DIR`, else `/var/lock`.
fn lock_dir(env: &BTreeMap<String, String>) -> PathBuf {
    env.get("CRUNCH_RUN_LOCK_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lock"))
}

/// The GPUs a scheduler assigned, from `CUDA_VISIBLE_DEVICES` (`"1,3"`); none when unset
/// or blank.
fn gpu_devices(env: &BTreeMap<String, String>) -> Option<Vec<String>> {
    env.get("CUDA_VISIBLE_DEVICES")
        .filter(|ids| !ids.trim().is_empty())
        .map(|ids| ids.split(',').map(|id| id.trim().to_string()).collect())
}

/// The Slurm job this process runs in, from `SLURM_JOB_ID`.
fn slurm_job(env: &BTreeMap<String, String>) -> Option<SlurmJob> {
    env.get("SLURM_JOB_ID").and_then(|id| SlurmJob::new(id))
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "yes" | "true")
}

impl Config {
    /// Validate `args` against `env` (the process environment, overlaid by the stdin
    /// config when `--stdin-config` was given). The docker CLI's environment is left empty
    /// for `Mode::from_parts` to fill.
    pub fn from_args(args: &Args, env: &BTreeMap<String, String>) -> Result<Config, UsageError> {
        if args.runtime_engine != "docker" {
            return Err(UsageError(format!(
                "unsupported --runtime-engine {:?}: this crunch-run only drives docker",
                args.runtime_engine
            )));
        }
        let uuid = match &args.container_uuid {
            None => return Err(UsageError("missing container UUID argument".into())),
            Some(u) if !is_container_uuid(u) => {
                return Err(UsageError(format!(
                    "{u:?} is not a container UUID (expected zzzzz-dz642-0123456789abcde)"
                )));
            }
            Some(u) => u.clone(),
        };
        let backend = match &args.local_store {
            Some(dir) => Backend::Local(dir.clone()),
            None => {
                let get = |name: &str| env.get(name).filter(|v| !v.is_empty()).cloned();
                let missing: Vec<&str> = ["ARVADOS_API_HOST", "ARVADOS_API_TOKEN"]
                    .into_iter()
                    .filter(|n| get(n).is_none())
                    .collect();
                if !missing.is_empty() {
                    return Err(UsageError(format!(
                        "missing environment variable {} (or use --local-store DIR)",
                        missing.join(" and ")
                    )));
                }
                Backend::Arvados(ApiEnv {
                    host: get("ARVADOS_API_HOST").unwrap_or_default(),
                    token: get("ARVADOS_API_TOKEN").unwrap_or_default(),
                    insecure: get("ARVADOS_API_HOST_INSECURE").is_some_and(|v| truthy(&v)),
                    ca_file: args
                        .ca_certs
                        .clone()
                        .or_else(|| get("SSL_CERT_FILE").map(PathBuf::from)),
                    keep_services: get("ARVADOS_KEEP_SERVICES"),
                })
            }
        };
        let spool_dir = args
            .spool_dir
            .clone()
            .or_else(|| {
                env.get("TMPDIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        Ok(Config {
            container_uuid: uuid,
            backend,
            logs_table: !args.no_logs_table,
            spool_dir,
            api_retry_deadline: args.api_retry_deadline,
            wrap_up: args.wrap_up.limits(),
            docker_watchdog_interval: Some(args.docker_watchdog_interval)
                .filter(|interval| !interval.is_zero()),
            log_updates: LogUpdates {
                period: args.log_update_period,
                bytes: args.log_update_size,
            },
            crunchstat_interval: Some(args.crunchstat_interval)
                .filter(|interval| !interval.is_zero()),
            keep_mount: args.keep_mount,
            gpu_devices: gpu_devices(env),
            docker: DockerCli {
                program: "docker".into(),
                env: Vec::new(),
            },
            container: ContainerSetup::from_flags(&args.container)?,
            slurm_job: slurm_job(env),
            progress: progress_cadence(env)?,
            node: NodeSetup::from_flags(&args.node, env),
        })
    }
}

impl Mode {
    /// The mode of this process: its flags, its environment, and for a run with
    /// `--stdin-config` what the dispatcher wrote on stdin.
    pub fn from_process(args: &Args) -> Result<Mode, UsageError> {
        let inherited = std::env::vars_os().collect();
        let mut mode = Mode::from_parts(args, process_env(), inherited, &mut io::stdin().lock())?;
        if let Mode::Run { config, .. } | Mode::Detach { config, .. } = &mut mode {
            let setup = &mut config.container;
            setup.resolve_cgroup_parent(&args.container, &Roots::host())?;
        }
        Ok(mode)
    }

    /// The mode for these flags and this environment. `stdin` is read only for a run with
    /// `--stdin-config`; its "Env" is laid over `env` for the run, as the Go crunch-run
    /// sets it in its environment. The lock directory always comes from `env` itself:
    /// `--list` and `--kill`, which read no stdin, must look where the runs lock.
    /// `inherited` is the whole process environment, as docker clients get it.
    pub fn from_parts(
        args: &Args,
        mut env: BTreeMap<String, String>,
        inherited: Vec<(OsString, OsString)>,
        stdin: &mut dyn Read,
    ) -> Result<Mode, UsageError> {
        let lock_dir = lock_dir(&env);
        if let Some(container) = &args.guard_container {
            let program = env.get(GUARD_DOCKER_ENV).map_or("docker", String::as_str);
            let cgroups = slurm_job(&env).zip(args.guard_cgroup_parent.as_deref());
            return Ok(Mode::Guard {
                container: container.clone(),
                docker: DockerCli {
                    program: program.into(),
                    env: inherited,
                },
                cgroups: cgroups.and_then(|(job, parent)| ContainerCgroups::new(job, parent)),
            });
        }
        if args.list {
            return Ok(Mode::List {
                lock_dir,
                read_prices: args.node.stdin_prices,
            });
        }
        if let Some(signal) = args.kill {
            let uuid = args.container_uuid.as_deref().unwrap_or_default();
            if !is_container_uuid(uuid) {
                return Err(UsageError("--kill needs a container UUID".into()));
            }
            let uuid = uuid.to_string();
            return Ok(Mode::Kill {
                lock_dir,
                uuid,
                signal,
            });
        }
        let mut stdin_config = None;
        if args.stdin_config {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|e| UsageError(format!("--stdin-config: cannot read stdin: {e}")))?;
            env.extend(parse_stdin_config(&text)?);
            stdin_config = Some(text);
        }
        let mut config = Config::from_args(args, &env)?;
        config.docker.env = inherited;
        Ok(match args.detach {
            true => Mode::Detach {
                config,
                lock_dir,
                stdin_config,
            },
            false => Mode::Run { config, lock_dir },
        })
    }
}

/// Read the dispatcher's stdin config and return its "Env" map.
fn parse_stdin_config(text: &str) -> Result<BTreeMap<String, String>, UsageError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| UsageError(format!("--stdin-config: stdin is not JSON: {e}")))?;
    let mut env = BTreeMap::new();
    if let Some(map) = value.get("Env").and_then(|e| e.as_object()) {
        for (k, v) in map {
            match v.as_str() {
                Some(s) => {
                    env.insert(k.clone(), s.to_string());
                }
                None => {
                    return Err(UsageError(format!(
                        "--stdin-config: Env.{k} is not a string"
                    )));
                }
            }
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(argv: &[&str]) -> Args {
        let raw = std::iter::once("crunch-run")
            .chain(argv.iter().copied())
            .map(OsString::from);
        Args::try_parse_from(normalize_go_flags(raw)).unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const UUID: &str = "zzzzz-dz642-0123456789abcde";

    #[test]
    fn go_style_flags_are_accepted() {
        let a = parse(&[
            "-runtime-engine=docker",
            "-cgroup-parent-subsystem",
            "cpu",
            UUID,
        ]);
        assert_eq!(a.runtime_engine, "docker");
        assert_eq!(a.container.cgroup_parent_subsystem.as_deref(), Some("cpu"));
        assert_eq!(a.container_uuid.as_deref(), Some(UUID));
    }

    #[test]
    fn other_engines_are_a_clear_error() {
        let a = parse(&["--runtime-engine=singularity", UUID]);
        let e = Config::from_args(&a, &env(&[])).unwrap_err();
        assert!(e.0.contains("singularity"), "{e}");
    }

    #[test]
    fn missing_env_names_what_is_missing() {
        let a = parse(&[UUID]);
        let e = Config::from_args(&a, &env(&[("ARVADOS_API_HOST", "h:1")])).unwrap_err();
        assert_eq!(
            e.0,
            "missing environment variable ARVADOS_API_TOKEN (or use --local-store DIR)"
        );
    }

    #[test]
    fn bad_uuid_shape_is_rejected() {
        for bad in [
            "zzzzz-4zz18-0123456789abcde",
            "zzzzz-dz642-short",
            "ZZZZZ-dz642-0123456789abcde",
        ] {
            let a = parse(&[bad]);
            assert!(Config::from_args(&a, &env(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn insecure_and_ca_file_come_from_env() {
        let a = parse(&[UUID]);
        let c = Config::from_args(
            &a,
            &env(&[
                ("ARVADOS_API_HOST", "h:1"),
                ("ARVADOS_API_TOKEN", "secret-token-value"),
                ("ARVADOS_API_HOST_INSECURE", "Yes"),
                ("SSL_CERT_FILE", "/etc/ca.pem"),
            ]),
        )
        .unwrap();
        match c.backend {
            Backend::Arvados(api) => {
                assert!(api.insecure);
                assert_eq!(api.ca_file, Some(PathBuf::from("/etc/ca.pem")));
                assert!(!format!("{api:?}").contains("secret-token-value"));
            }
            Backend::Local(_) => panic!("expected the API backend"),
        }
    }

    #[test]
    fn local_store_needs_no_env_and_logs_table_flag_turns_it_off() {
        let a = parse(&["--local-store", "/tmp/x", "--no-logs-table", UUID]);
        let c = Config::from_args(&a, &env(&[])).unwrap();
        assert!(matches!(c.backend, Backend::Local(_)));
        assert!(!c.logs_table);
    }

    #[test]
    fn retry_deadline_takes_a_human_duration() {
        let a = parse(&["-api-retry-deadline=90s", UUID]);
        assert_eq!(a.api_retry_deadline, std::time::Duration::from_secs(90));
        assert_eq!(
            parse(&[UUID]).api_retry_deadline,
            std::time::Duration::from_secs(600)
        );
    }

    #[test]
    fn watchdog_interval_defaults_to_two_minutes_and_zero_turns_it_off() {
        let config = |args: &[&str]| {
            Config::from_args(&parse(args), &env(&[]))
                .unwrap()
                .docker_watchdog_interval
        };
        let local = ["--local-store", "/tmp/x"];
        assert_eq!(
            config(&[&local[..], &[UUID]].concat()),
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(
            config(&[&local[..], &["-docker-watchdog-interval=250ms", UUID]].concat()),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            config(&[&local[..], &["--docker-watchdog-interval", "0s", UUID]].concat()),
            None
        );
    }

    #[test]
    fn keep_mount_defaults_to_auto() {
        let keep_mount = |args: &[&str]| {
            let local = ["--local-store", "/tmp/x", UUID];
            Config::from_args(&parse(&[args, &local[..]].concat()), &env(&[]))
                .unwrap()
                .keep_mount
        };
        assert_eq!(keep_mount(&[]), KeepMount::Auto);
        assert_eq!(keep_mount(&["--keep-mount", "stage"]), KeepMount::Stage);
        assert_eq!(keep_mount(&["-keep-mount=fuse"]), KeepMount::Fuse);
    }

    #[test]
    fn crunchstat_interval_defaults_to_ten_seconds_and_zero_turns_it_off() {
        let config = |args: &[&str]| {
            let local = ["--local-store", "/tmp/x", UUID];
            Config::from_args(&parse(&[args, &local[..]].concat()), &env(&[]))
                .unwrap()
                .crunchstat_interval
        };
        let secs = std::time::Duration::from_secs;
        assert_eq!(config(&[]), Some(secs(10)));
        assert_eq!(config(&["-crunchstat-interval=1m30s"]), Some(secs(90)));
        assert_eq!(
            config(&["-crunchstat-interval", "1.5s"]),
            Some(std::time::Duration::from_millis(1500))
        );
        assert_eq!(config(&["-crunchstat-interval=0"]), None);
        assert_eq!(config(&["--crunchstat-interval=0s"]), None);
    }

    #[test]
    fn log_updates_default_to_go_crunch_runs() {
        let config = |args: &[&str]| {
            let local = ["--local-store", "/tmp/x", UUID];
            Config::from_args(&parse(&[args, &local[..]].concat()), &env(&[]))
                .unwrap()
                .log_updates
        };
        // Go crunch-run's: every 30 minutes, or every 32 MiB.
        let go = LogUpdates {
            period: std::time::Duration::from_secs(30 * 60),
            bytes: 32 << 20,
        };
        assert_eq!(config(&[]), go);
        let off = config(&["--log-update-period=0s", "-log-update-size=0"]);
        assert!(off.is_off());
        assert_eq!(
            config(&["--log-update-period", "5s", "--log-update-size", "1000"]),
            LogUpdates {
                period: std::time::Duration::from_secs(5),
                bytes: 1000
            }
        );
    }

    #[test]
    fn stdin_config_env_is_read() {
        let e =
            parse_stdin_config(r#"{"Env":{"ARVADOS_API_HOST":"a:1"},"KeepBuffers":2}"#).unwrap();
        assert_eq!(e.get("ARVADOS_API_HOST").map(String::as_str), Some("a:1"));
        assert!(parse_stdin_config(r#"{"Env":{"X":1}}"#).is_err());
    }

    fn mode(argv: &[&str], vars: &[(&str, &str)], stdin: &str) -> Result<Mode, UsageError> {
        Mode::from_parts(&parse(argv), env(vars), Vec::new(), &mut stdin.as_bytes())
    }

    #[test]
    fn the_slurm_job_comes_from_slurm_job_id_for_the_run_and_the_guard() {
        let job = |vars: &[(&str, &str)]| {
            Config::from_args(&parse(&["--local-store", "/tmp/x", UUID]), &env(vars))
                .unwrap()
                .slurm_job
        };
        assert_eq!(job(&[]), None);
        assert_eq!(job(&[("SLURM_JOB_ID", "x1")]), None);
        assert_eq!(job(&[("SLURM_JOB_ID", "42")]), SlurmJob::new("42"));
        let guard = |parent: &str, vars: &[(&str, &str)]| match mode(
            &["--guard-container", "c1", "--guard-cgroup-parent", parent],
            vars,
            "",
        ) {
            Ok(Mode::Guard { cgroups, .. }) => cgroups,
            other => panic!("unexpected {other:?}"),
        };
        let inside = "/slurm/uid_0/job_42/step_batch/task_0";
        let in_job = [("SLURM_JOB_ID", "42")];
        assert_eq!(
            guard(inside, &in_job).map(|c| c.parent().to_string()),
            Some(inside.to_string())
        );
        assert_eq!(guard(inside, &[]), None, "no job: nothing to clean");
        assert_eq!(guard("/docker", &in_job), None, "outside the job: not ours");
    }

    #[test]
    fn gpu_devices_come_from_cuda_visible_devices() {
        let gpus = |vars: &[(&str, &str)]| {
            Config::from_args(&parse(&["--local-store", "/tmp/x", UUID]), &env(vars))
                .unwrap()
                .gpu_devices
        };
        assert_eq!(gpus(&[]), None);
        assert_eq!(gpus(&[("CUDA_VISIBLE_DEVICES", " ")]), None);
        assert_eq!(
            gpus(&[("CUDA_VISIBLE_DEVICES", "1, 3")]),
            Some(vec!["1".to_string(), "3".to_string()])
        );
    }

    #[test]
    fn list_kill_and_guard_need_no_run_settings_and_read_no_stdin() {
        let locks = [("CRUNCH_RUN_LOCK_DIR", "/run/locks")];
        // Unreadable JSON on stdin would be an error if it were read.
        match mode(&["--list", "--stdin-config"], &locks, "not json").unwrap() {
            Mode::List { lock_dir, .. } => assert_eq!(lock_dir, PathBuf::from("/run/locks")),
            other => panic!("unexpected {other:?}"),
        }
        match mode(&["--kill", "15", UUID], &[], "").unwrap() {
            Mode::Kill {
                lock_dir,
                uuid,
                signal,
            } => {
                assert_eq!(lock_dir, PathBuf::from("/var/lock"));
                assert_eq!((uuid.as_str(), signal), (UUID, 15));
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = mode(&["--kill", "15"], &[], "").unwrap_err();
        assert_eq!(e.0, "--kill needs a container UUID");
        assert!(matches!(
            mode(&["--guard-container", "c1"], &[], "").unwrap(),
            Mode::Guard { container, docker, .. } if container == "c1" && docker.program == Path::new("docker")
        ));
        let named = [(GUARD_DOCKER_ENV, "/opt/bin/docker")];
        assert!(matches!(
            mode(&["--guard-container", "c1"], &named, "").unwrap(),
            Mode::Guard { docker, .. } if docker.program == Path::new("/opt/bin/docker")
        ));
    }

    #[test]
    fn a_run_hands_its_whole_environment_to_docker_and_does_not_show_it() {
        let inherited = vec![
            (OsString::from("PATH"), OsString::from("/bin")),
            (
                OsString::from("ARVADOS_API_TOKEN"),
                OsString::from("secret-token"),
            ),
        ];
        let args = parse(&["--local-store", "/tmp/x", UUID]);
        let mode = Mode::from_parts(&args, env(&[]), inherited.clone(), &mut &b""[..]).unwrap();
        let Mode::Run { config, .. } = mode else {
            panic!("not a run: {mode:?}")
        };
        assert_eq!(config.docker.program, PathBuf::from("docker"));
        assert_eq!(config.docker.env, inherited);
        let shown = format!("{config:?}");
        assert!(
            shown.contains("ARVADOS_API_TOKEN") && !shown.contains("secret-token"),
            "{shown}"
        );
    }

    #[test]
    fn the_stdin_config_is_laid_over_the_environment_for_a_run() {
        let stdin =
            r#"{"Env":{"ARVADOS_API_HOST":"from-stdin:1","ARVADOS_API_TOKEN":"tok-from-stdin"}}"#;
        let vars = [
            ("ARVADOS_API_HOST", "from-env:1"),
            ("CRUNCH_RUN_LOCK_DIR", "/run/locks"),
        ];
        match mode(&["--stdin-config", "--detach", UUID], &vars, stdin).unwrap() {
            Mode::Detach {
                config,
                lock_dir,
                stdin_config,
            } => {
                let Backend::Arvados(api) = config.backend else {
                    panic!("expected the API backend");
                };
                assert_eq!(api.host, "from-stdin:1");
                assert_eq!(api.token, "tok-from-stdin");
                assert_eq!(lock_dir, PathBuf::from("/run/locks"));
                assert_eq!(stdin_config.as_deref(), Some(stdin));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Without the flag stdin is not read, and the environment must do.
        let e = mode(&[UUID], &vars, stdin).unwrap_err();
        assert!(e.0.contains("ARVADOS_API_TOKEN"), "{e}");
        let e = mode(&["--stdin-config", UUID], &vars, "[").unwrap_err();
        assert!(e.0.starts_with("--stdin-config: stdin is not JSON"), "{e}");
        assert!(matches!(
            mode(&["--local-store", "/tmp/x", UUID], &[], "").unwrap(),
            Mode::Run { .. }
        ));
    }

    /// Regression: `std::env::vars` panicked on a variable that is not UTF-8, so crunch-run
    /// exited 101 before it parsed anything.
    #[test]
    fn variables_that_are_not_utf8_are_left_out() {
        use std::os::unix::ffi::OsStringExt;
        let vars = [
            (OsString::from("TMPDIR"), OsString::from("/scratch")),
            (OsString::from("BAD"), OsString::from_vec(vec![0xff])),
            (OsString::from_vec(vec![b'X', 0xfe]), OsString::from("v")),
        ];
        let got = utf8_vars(vars.into_iter());
        assert_eq!(got, env(&[("TMPDIR", "/scratch")]));
    }
}
