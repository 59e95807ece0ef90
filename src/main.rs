//! The `crunch-run` command: parse, run, map the result to an exit status. Nothing else.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use crunch_run::config::{Args, Config, normalize_go_flags, parse_stdin_config};
use crunch_run::runner::{self, CancelFlag};

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
        return ExitCode::from(crunch_run::docker::guard::run_guard(name) as u8);
    }
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    if args.stdin_config {
        let mut text = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut text) {
            eprintln!("crunch-run: --stdin-config: cannot read stdin: {e}");
            return ExitCode::from(2);
        }
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
    let cancel = CancelFlag::default();
    if let Err(e) = runner::watch_signals(cancel.clone()) {
        eprintln!("crunch-run: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    ExitCode::from(runner::run(&config, cancel) as u8)
}
