//! Flags and environment, turned into one validated `Config`.
//!
//! Parsing is two-staged: clap reads the raw flags (`Args`), then `Config::from_args` checks
//! them against the environment and is the only place that decides what is missing. No I/O
//! happens here apart from reading `--stdin-config`, which dispatchers use to pass the
//! environment without putting a token in our process environment.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

pub use crate::arvados::ids::is_container_uuid;

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

    /// How often the engine is asked whether the container still runs while `docker run`
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

    /// Accepted for compatibility with dispatchers; ignored.
    #[arg(long, value_name = "X", hide = true)]
    pub cgroup_parent: Option<String>,
    /// Accepted for compatibility with dispatchers; ignored.
    #[arg(long, value_name = "X", hide = true)]
    pub cgroup_parent_subsystem: Option<String>,
    /// Accepted for compatibility with dispatchers; ignored.
    #[arg(long, value_name = "X", hide = true)]
    pub cgroup_root: Option<String>,
    /// Accepted for compatibility with dispatchers; ignored.
    #[arg(long, value_name = "X", hide = true)]
    pub crunchstat_interval: Option<String>,
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
    /// None: no docker watchdog.
    pub docker_watchdog_interval: Option<std::time::Duration>,
    /// When the logs so far are saved while the container runs.
    pub log_updates: LogUpdates,
}

/// When the log collection is saved while the container runs (zero: never on that count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogUpdates {
    pub period: std::time::Duration,
    pub bytes: u64,
}

impl LogUpdates {
    /// Go crunch-run's: every 30 minutes, or every 32 MiB.
    pub const DEFAULT: LogUpdates = LogUpdates {
        period: std::time::Duration::from_secs(30 * 60),
        bytes: 32 << 20,
    };

    pub fn is_off(&self) -> bool {
        self.period.is_zero() && self.bytes == 0
    }
}

/// A usage problem: printed as one line, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Rewrite Go-style `-long-flag[=v]` into `--long-flag[=v]`. Single letters (`-h`, `-V`)
/// and anything after `--` are left alone.
pub fn normalize_go_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest_positional = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            Some("--") => {
                rest_positional = true;
                None
            }
            Some(s) if !rest_positional && is_go_long_flag(s) => {
                Some(OsString::from(format!("-{s}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

fn is_go_long_flag(s: &str) -> bool {
    let name = s.strip_prefix('-').unwrap_or("");
    !s.starts_with("--")
        && name.len() >= 2
        && name
            .split('=')
            .next()
            .is_some_and(|n| n.len() >= 2 && n.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "yes" | "true")
}

impl Config {
    /// Validate `args` against `env` (the process environment, overlaid by the stdin
    /// config when `--stdin-config` was given).
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
            docker_watchdog_interval: Some(args.docker_watchdog_interval)
                .filter(|interval| !interval.is_zero()),
            log_updates: LogUpdates {
                period: args.log_update_period,
                bytes: args.log_update_size,
            },
        })
    }
}

/// Read the dispatcher's stdin config and return its "Env" map.
pub fn parse_stdin_config(text: &str) -> Result<BTreeMap<String, String>, UsageError> {
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
        assert_eq!(a.cgroup_parent_subsystem.as_deref(), Some("cpu"));
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
    fn log_updates_default_to_go_crunch_runs() {
        let config = |args: &[&str]| {
            let local = ["--local-store", "/tmp/x", UUID];
            Config::from_args(&parse(&[args, &local[..]].concat()), &env(&[]))
                .unwrap()
                .log_updates
        };
        assert_eq!(config(&[]), LogUpdates::DEFAULT);
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
}
