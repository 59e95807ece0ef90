//! The `crunch-run` command: flags → `Mode` → one match. The only place that prints why
//! crunch-run stopped and picks the exit status; what each mode does lives in the library.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use crunch_run::cgroup::Roots;
use crunch_run::config::{Args, Config, Mode, normalize_go_flags};
use crunch_run::detach;
use crunch_run::docker::{Docker, run_guard};
use crunch_run::run::{self, CancelFlag};

/// Why crunch-run stopped short: the exit status, and the message that `main` prints once
/// as `crunch-run: <message>`.
type Failure = (u8, String);

fn main() -> ExitCode {
    let argv = normalize_go_flags(std::env::args_os());
    let args = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            // --help and --version land here too, and exit 0.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let done = Mode::from_process(&args)
        .map_err(|e| (2, e.to_string()))
        .and_then(|mode| dispatch(mode, &argv));
    match done {
        Ok(status) => ExitCode::from(status),
        Err((status, message)) => {
            eprintln!("crunch-run: {message}");
            ExitCode::from(status)
        }
    }
}

fn dispatch(mode: Mode, argv: &[OsString]) -> Result<u8, Failure> {
    match mode {
        Mode::Guard {
            container,
            docker,
            cgroups,
        } => {
            let docker = Docker::with_program_and_env(docker.program, docker.env);
            let remove_cgroups = || {
                if let Some(dirs) = &cgroups {
                    dirs.remove_empty(&Roots::host());
                }
            };
            Ok(run_guard(&container, &docker, &remove_cgroups) as u8)
        }
        Mode::List {
            lock_dir,
            read_prices,
        } => {
            // arvados-dispatch-cloud sends the instance's price history on stdin.
            let mut prices = Vec::new();
            if read_prices || !io::stdin().is_terminal() {
                let _ = io::stdin().lock().read_to_end(&mut prices);
            }
            if !prices.iter().all(u8::is_ascii_whitespace)
                && let Err(e) = detach::tell_prices(&lock_dir, &prices)
            {
                eprintln!("crunch-run: --list: cannot keep the prices given on stdin: {e}");
            }
            detach::list(&lock_dir, &mut io::stdout().lock())
                .map(|()| 0)
                .map_err(|e| (1, format!("--list: {e}")))
        }
        Mode::Kill {
            lock_dir,
            uuid,
            signal,
        } => detach::kill(&lock_dir, &uuid, signal)
            .map(|()| 0)
            .map_err(|e| (1, format!("--kill {signal} {uuid}: {e}"))),
        Mode::Detach {
            config,
            lock_dir,
            stdin_config,
        } => {
            let uuid = &config.container_uuid;
            let pid = detach::run_detached(&config, &lock_dir, argv, stdin_config.as_deref())
                .map_err(|e| (1, format!("--detach {uuid}: {e}")))?;
            println!("{}", serde_json::json!({"UUID": uuid, "PID": pid}));
            Ok(0)
        }
        Mode::Run { config, lock_dir } => run_container(&config, &lock_dir),
    }
}

/// Take the run's lock, watch for signals, and hand over to the lifecycle, which reports
/// everything after that itself.
fn run_container(config: &Config, lock_dir: &Path) -> Result<u8, Failure> {
    let uuid = config.container_uuid.as_str();
    // Held until we exit: tells --list and --kill (and a second crunch-run) that we live.
    let _lock = match detach::hold_lock(lock_dir, uuid) {
        Ok(lock) => Some(lock),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err((1, format!("{uuid}: {e}; nothing was changed.")));
        }
        Err(e) => {
            eprintln!(
                "crunch-run: {uuid}: warning: cannot take the lock in {} ({e}): --list and --kill will not see this run",
                lock_dir.display()
            );
            None
        }
    };
    let cancel = CancelFlag::default();
    run::watch_signals(cancel.clone())
        .map_err(|e| (1, format!("cannot install signal handlers: {e}")))?;
    Ok(run::run(config, cancel) as u8)
}
