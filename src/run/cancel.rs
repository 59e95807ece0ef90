//! Cancelling a run: the flag that a signal, the run-time limit or the watchdog sets; the
//! thread that turns SIGTERM, SIGINT and SIGQUIT into it; and the two helpers the
//! supervisor runs for it while the client lives: the run-time limit, and the enforcer
//! that makes a cancel stick (keeps removing the container, kills a client that hangs on).
//! What a cancel does at once (remove the container) is the action the lifecycle registers.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::engine::Engine;
use super::supervisor::{ClientSlot, Stop};
use crate::logging::pipeline::CrunchLog;

/// How often the enforcer removes a cancelled container again while the client lives.
const TICK: Duration = Duration::from_millis(500);
/// How long a client may outlive a cancel before it is killed.
const CLIENT_GRACE: Duration = Duration::from_secs(10);

/// Shared between the signal thread and the run: the first reason wins, and the action
/// registered by the run (remove the docker container) runs at once on the thread that
/// cancels.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<Mutex<CancelState>>);

/// Runs on the thread that cancels the run.
pub type CancelAction = Arc<dyn Fn(&str) + Send + Sync>;

struct CancelState {
    reason: Option<String>,
    action: Option<CancelAction>,
    /// Dropped by the cancel: wakes whoever waits on `cancelled()`.
    notify: Option<Sender<()>>,
    cancelled: Receiver<()>,
}

impl Default for CancelState {
    fn default() -> CancelState {
        let (notify, cancelled) = crossbeam_channel::bounded(0);
        CancelState {
            reason: None,
            action: None,
            notify: Some(notify),
            cancelled,
        }
    }
}

impl CancelFlag {
    fn lock(&self) -> MutexGuard<'_, CancelState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record the reason, wake the waiters and run the action; returns false if it was
    /// already cancelled.
    pub fn cancel(&self, reason: &str) -> bool {
        let action = {
            let mut state = self.lock();
            if state.reason.is_some() {
                return false;
            }
            state.reason = Some(reason.to_string());
            state.notify = None;
            state.action.clone()
        };
        if let Some(action) = action {
            action(reason);
        }
        true
    }

    pub fn reason(&self) -> Option<String> {
        self.lock().reason.clone()
    }

    /// A channel that disconnects when the run is cancelled (at once if it is), for a
    /// thread to wait on beside others (`crossbeam_channel::select!`).
    pub fn cancelled(&self) -> Receiver<()> {
        self.lock().cancelled.clone()
    }

    /// What to do when cancelled; runs now if the cancel already happened.
    pub fn on_cancel(&self, action: CancelAction) {
        let already = {
            let mut state = self.lock();
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

/// A cancel removes the container at once, on the thread that cancels.
pub(super) fn remove_on_cancel(
    cancel: &CancelFlag,
    log: CrunchLog,
    engine: Arc<dyn Engine>,
    uuid: &str,
) {
    let name = uuid.to_string();
    cancel.on_cancel(Arc::new(move |reason: &str| {
        log.line(&format!("{reason}: removing the docker container"));
        if let Err(e) = engine.remove(&name) {
            log.line(&format!("removing docker container {name} failed: {e}"));
        }
    }));
}

/// The run-time limit (a supervisor helper): cancel the run when `deadline` passes first.
pub(super) fn limit_run_time(cancel: &CancelFlag, limit: Duration, deadline: Instant, stop: Stop) {
    if !stop.wait(deadline.saturating_duration_since(Instant::now())) {
        cancel.cancel(&format!(
            "maximum run time exceeded ({})",
            humantime::format_duration(limit)
        ));
    }
}

/// What the enforcer of a cancel works with.
pub(super) struct Enforcer {
    pub cancel: CancelFlag,
    pub engine: Arc<dyn Engine>,
    pub name: String,
    pub client: ClientSlot,
    /// Set when the watchdog gave up on the engine.
    pub engine_stuck: Arc<AtomicBool>,
    pub say: Box<dyn Fn(&str) + Send>,
}

impl Enforcer {
    /// Make a cancel stick (a supervisor helper). The cancel removed the container at once,
    /// but one that came while `docker run` was still creating it found nothing to remove:
    /// so, while the client lives, a cancelled run keeps removing. A client still there
    /// `CLIENT_GRACE` after the cancel, or one the watchdog gave up on, is killed: the
    /// engine is then stuck, and the container may stay on the host under its name until
    /// the engine recovers.
    pub fn run(self, stop: Stop) {
        crossbeam_channel::select! {
            recv(stop.channel()) -> _ => return,
            recv(self.cancel.cancelled()) -> _ => {}
        }
        let since = Instant::now();
        while !stop.wait(TICK) {
            let why = if self.engine_stuck.load(Ordering::Acquire) {
                Some("the docker watchdog gave up on docker run".to_string())
            } else if since.elapsed() >= CLIENT_GRACE {
                Some(format!(
                    "docker run did not end within {} of the cancel",
                    humantime::format_duration(CLIENT_GRACE)
                ))
            } else {
                None
            };
            if let Some(why) = why {
                (self.say)(&format!("{why}: killing the docker client"));
                self.client.kill();
                return;
            }
            let _ = self.engine.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_wakes_the_waiters_and_runs_the_action_once() {
        let cancel = CancelFlag::default();
        let waiting = cancel.cancelled();
        assert_eq!(
            waiting.recv_timeout(Duration::from_millis(1)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        );
        let ran = Arc::new(Mutex::new(Vec::new()));
        let log = ran.clone();
        cancel.on_cancel(Arc::new(move |r: &str| {
            log.lock().unwrap().push(r.to_string())
        }));
        assert!(cancel.cancel("first"));
        assert!(!cancel.cancel("second"));
        assert_eq!(cancel.reason().as_deref(), Some("first"));
        assert_eq!(*ran.lock().unwrap(), ["first"]);
        assert!(waiting.recv().is_err(), "woken by the disconnect");
        assert!(
            cancel.cancelled().recv().is_err(),
            "and so is a late waiter"
        );
    }

    #[test]
    fn an_action_registered_after_the_cancel_runs_at_once() {
        let cancel = CancelFlag::default();
        cancel.cancel("early");
        let ran = Arc::new(Mutex::new(None));
        let log = ran.clone();
        cancel.on_cancel(Arc::new(move |r: &str| {
            *log.lock().unwrap() = Some(r.to_string())
        }));
        assert_eq!(ran.lock().unwrap().as_deref(), Some("early"));
    }
}
