//! Cancelling a run: the flag that a signal, the run-time limit or the watchdog sets; the
//! thread that turns SIGTERM, SIGINT and SIGQUIT into it; what a cancel does at once
//! (remove the container); and the helpers the supervisor runs for it while the client
//! lives: the run-time limit, and the two that make a cancel stick (keep removing the
//! container; kill a client that hangs on).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::engine::{Engine, KillClient};
use super::supervisor::{ClientSlot, Stop};
use crate::logging::pipeline::CrunchLog;

/// How often a cancelled container is removed again while the client lives.
const TICK: Duration = Duration::from_millis(500);
/// How long a client may outlive a cancel before it is killed.
pub(super) const CLIENT_GRACE: Duration = Duration::from_secs(10);

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
    /// Dropped by the next signal, cancel or not: wake whoever waits on `next_signal()`.
    signal_waiters: Vec<Sender<()>>,
}

impl Default for CancelState {
    fn default() -> CancelState {
        let (notify, cancelled) = crossbeam_channel::bounded(0);
        CancelState {
            reason: None,
            action: None,
            notify: Some(notify),
            cancelled,
            signal_waiters: Vec::new(),
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

    /// A signal came (`name`): cancel for it, and wake whoever waits on `next_signal()`,
    /// also when the run was cancelled before (the wrap-up then cuts its retries short).
    pub fn signal(&self, name: &str) {
        self.lock().signal_waiters.clear();
        self.cancel(&format!("caught signal {name}"));
    }

    /// A channel that disconnects when the next signal comes (signals before this call
    /// do not count).
    pub fn next_signal(&self) -> Receiver<()> {
        let (waiter, next) = crossbeam_channel::bounded(0);
        self.lock().signal_waiters.push(waiter);
        next
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
                cancel.signal(name);
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

/// Run `step`, an engine command before Running, so that a cancel kills its client at
/// once: a hung engine must not keep a cancelled run waiting for the command's timeout
/// (or, for `docker load`, for ever). `step` hands what kills its client to `started`.
pub(super) fn killed_by_cancel<T>(
    cancel: &CancelFlag,
    step: impl FnOnce(&dyn Fn(KillClient)) -> T,
) -> T {
    let (killer_tx, killer_rx) = crossbeam_channel::bounded::<KillClient>(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let cancelled = cancel.cancelled();
    std::thread::scope(|s| {
        s.spawn(move || {
            let Ok(kill) = killer_rx.recv() else { return };
            crossbeam_channel::select! {
                recv(cancelled) -> _ => kill(),
                recv(done_rx) -> _ => {}
            }
        });
        let out = step(&|kill| {
            let _ = killer_tx.try_send(kill);
        });
        drop((killer_tx, done_tx));
        out
    })
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

/// Wait for a cancel; false if the stop came first.
fn cancelled_before(cancel: &CancelFlag, stop: &Stop) -> bool {
    crossbeam_channel::select! {
        recv(stop.channel()) -> _ => false,
        recv(cancel.cancelled()) -> _ => true,
    }
}

/// What kills a docker client that outlives a cancel.
pub(super) struct ClientReaper {
    pub cancel: CancelFlag,
    pub client: ClientSlot,
    /// Set when the watchdog gave up on the engine.
    pub engine_stuck: Arc<AtomicBool>,
    pub say: Box<dyn Fn(&str) + Send>,
    /// How long a client may outlive a cancel (`CLIENT_GRACE`).
    pub grace: Duration,
}

impl ClientReaper {
    /// Make a cancel stick (a supervisor helper): a client still there `grace`
    /// after the cancel, or one the watchdog gave up on, is killed. The
    /// engine is then stuck, and the container may stay on the host under its name until
    /// the engine recovers (the guard keeps trying after crunch-run exits).
    pub fn run(self, stop: Stop) {
        if !cancelled_before(&self.cancel, &stop) {
            return;
        }
        let since = Instant::now();
        let why = loop {
            if self.engine_stuck.load(Ordering::Acquire) {
                break "the docker watchdog gave up on docker start".to_string();
            }
            let left = self.grace.saturating_sub(since.elapsed());
            if left.is_zero() {
                break format!(
                    "docker start did not end within {} of the cancel",
                    humantime::format_duration(self.grace)
                );
            }
            if stop.wait(left.min(TICK)) {
                return;
            }
        };
        (self.say)(&format!("{why}: killing the docker client"));
        self.client.kill();
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

    type Said = Arc<Mutex<Vec<String>>>;

    /// A reaper for a client whose kills are counted, and what it said.
    fn reaper(grace: Duration) -> (ClientReaper, Arc<Mutex<u32>>, Said) {
        let (killed, said) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(Vec::new())));
        let client = ClientSlot::default();
        let count = killed.clone();
        client.set(Arc::new(move || *count.lock().unwrap() += 1));
        let log = said.clone();
        let reaper = ClientReaper {
            cancel: CancelFlag::default(),
            client,
            engine_stuck: Arc::default(),
            say: Box::new(move |line: &str| log.lock().unwrap().push(line.to_string())),
            grace,
        };
        (reaper, killed, said)
    }

    /// A stop that never comes (its sender is kept), and the sender.
    fn never() -> (crossbeam_channel::Sender<()>, Stop) {
        let (tx, rx) = crossbeam_channel::bounded(0);
        (tx, Stop::new(rx))
    }

    #[test]
    fn a_client_that_outlives_a_cancel_is_killed_after_the_grace() {
        let (reaper, killed, said) = reaper(Duration::from_millis(50));
        reaper.cancel.cancel("caught signal SIGTERM");
        let (_keep, stop) = never();
        let started = Instant::now();
        reaper.run(stop);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(*killed.lock().unwrap(), 1);
        assert_eq!(
            *said.lock().unwrap(),
            ["docker start did not end within 50ms of the cancel: killing the docker client"]
        );
    }

    #[test]
    fn a_client_the_watchdog_gave_up_on_is_killed_at_once() {
        let (reaper, killed, said) = reaper(Duration::from_secs(3600));
        reaper.engine_stuck.store(true, Ordering::Release);
        reaper.cancel.cancel("docker watchdog: gave up");
        let (_keep, stop) = never();
        reaper.run(stop);
        assert_eq!(*killed.lock().unwrap(), 1);
        assert_eq!(
            *said.lock().unwrap(),
            ["the docker watchdog gave up on docker start: killing the docker client"]
        );
    }

    #[test]
    fn without_a_cancel_the_reaper_ends_with_the_stop_and_kills_nothing() {
        let (reaper, killed, said) = reaper(Duration::ZERO);
        let (stopping, stop) = never();
        drop(stopping);
        reaper.run(stop);
        assert_eq!(*killed.lock().unwrap(), 0);
        assert!(said.lock().unwrap().is_empty());
    }
}
