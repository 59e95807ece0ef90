//! The `crunch-run` command: parse, run, map the result to an exit status. Nothing else.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use crunch_run::config::{Args, Config, is_container_uuid, normalize_go_flags, parse_stdin_config};
use crunch_run::detach;
use crunch_run::runner::{self, CancelFlag};

/// `--detach`: start this same command without `--detach` in the background and print
/// `{"UUID":…,"PID":…}` once it runs.
fn run_detached(config: &Config, stdin_config: Option<&str>) -> ExitCode {
    let uuid = &config.container_uuid;
    let args: Vec<std::ffi::OsString> = normalize_go_flags(std::env::args_os())
        .into_iter()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let log = config.spool_dir.join(format!("crunch-run-{uuid}.log"));
    let started = std::env::current_exe()
        .and_then(|exe| detach::detach(&exe, &args, stdin_config, uuid, &log));
    match started {
        Ok(pid) => {
            println!("{}", serde_json::json!({"UUID": uuid, "PID": pid}));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crunch-run: --detach {uuid}: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse_from(normalize_go_flags(std::env::args_os())) {
        Ok(a) => a,
        Err(e) => {
            // --help and --version land here too, and exit 0.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Some(name) = &args.guard_container {
        return ExitCode::from(crunch_run::docker::run_guard(name) as u8);
    }
    if args.list {
        return match detach::list(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crunch-run: --list: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(signal) = args.kill {
        let uuid = args.container_uuid.as_deref().unwrap_or_default();
        if !is_container_uuid(uuid) {
            eprintln!("crunch-run: --kill needs a container UUID");
            return ExitCode::from(2);
        }
        return match detach::kill(uuid, signal) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crunch-run: --kill {signal} {uuid}: {e}");
                ExitCode::from(1)
            }
        };
    }
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    let mut stdin_config = None;
    if args.stdin_config {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("crunch-run: --stdin-config: cannot read stdin: {e}");
            return ExitCode::from(2);
        }
        stdin_config = Some(text.clone());
        match parse_stdin_config(&text) {
            Ok(extra) => env.extend(extra),
            Err(e) => {
                eprintln!("crunch-run: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let config = match Config::from_args(&args, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("crunch-run: {e}");
            return ExitCode::from(2);
        }
    };
    let uuid = config.container_uuid.as_str();
    if args.detach {
        return run_detached(&config, stdin_config.as_deref());
    }
    // Held until we exit: tells --list and --kill (and a second crunch-run) that we live.
    let _lock = match detach::hold_lock(uuid) {
        Ok(lock) => Some(lock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            eprintln!("crunch-run: {uuid}: {e}; nothing was changed.");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!(
                "crunch-run: {uuid}: warning: cannot take the lock in {} ({e}): --list and --kill will not see this run",
                detach::lock_dir().display()
            );
            None
        }
    };
    let cancel = CancelFlag::default();
    if let Err(e) = runner::watch_signals(cancel.clone()) {
        eprintln!("crunch-run: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    ExitCode::from(runner::run(&config, cancel) as u8)
}
