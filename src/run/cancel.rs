//! Cancelling a run: the flag that the signal thread (and later the watchdog and the
//! run-time limit) sets, and the thread that turns SIGTERM, SIGINT and SIGQUIT into it.
//! What a cancel does to the container is the action the lifecycle registers.

use std::io;
use std::sync::{Arc, Mutex};

/// Shared between the signal thread and the run: the first reason wins, and the action
/// registered by the run (remove the docker container) runs at once on the signal thread.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<Mutex<CancelState>>);

/// Runs on the signal thread when the run is cancelled.
pub type CancelAction = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct CancelState {
    reason: Option<String>,
    action: Option<CancelAction>,
}

impl CancelFlag {
    /// Record the reason and run the action; returns false if it was already cancelled.
    pub fn cancel(&self, reason: &str) -> bool {
        let action = {
            let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if state.reason.is_some() {
                return false;
            }
            state.reason = Some(reason.to_string());
            state.action.clone()
        };
        if let Some(action) = action {
            action(reason);
        }
        true
    }

    pub fn reason(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reason
            .clone()
    }

    /// What to do when cancelled; runs now if the cancel already happened.
    pub fn on_cancel(&self, action: CancelAction) {
        let already = {
            let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
            state.action = Some(action.clone());
            state.reason.clone()
        };
        if let Some(reason) = already {
            action(&reason);
        }
    }
}

/// Turn SIGTERM, SIGINT and SIGQUIT into a cancel, on a thread of their own.
pub fn watch_signals(cancel: CancelFlag) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGQUIT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = match signal {
                    SIGTERM => "SIGTERM",
                    SIGINT => "SIGINT",
                    _ => "SIGQUIT",
                };
                cancel.cancel(&format!("caught signal {name}"));
            }
        })?;
    Ok(())
}
