//! The helper threads of a run, owned by one `Supervisor` and stopped together.
//!
//! From the Running update until the docker client exits, helpers watch the run beside the
//! thread that waits for the client: the run-time limit, the two that make a cancel stick
//! (the removal, the client reaper), the docker watchdog, the interim log saves and
//! crunchstat (run/crunchstat.rs); and, with later work, the arv-mount watcher. Each is one `spawn`
//! call: a name and a function given the run's `Stop`. `stop` sends one stop signal to all of them, waits for each, and names
//! any that did not end within `STOP_PATIENCE` (left to end by themselves: a helper can be
//! stuck in a docker or API call that only its own timeout ends).
//!
//! A helper that must end the client's wait (the client reaper) kills the client through
//! the `ClientSlot`, which holds the killer of the client under way, if any.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::ContainerRun;
use super::cancel::{CLIENT_GRACE, ClientReaper, limit_run_time};
use super::engine::KillClient;
use crate::arvados::container::State;
use crate::logging::log_collection::save_while_running;
use crate::logging::pipeline::LogPipeline;

/// How long `Supervisor::stop` waits for the helpers.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// What a helper waits on: the run's stop signal.
#[derive(Clone)]
pub struct Stop(Receiver<()>);

impl Stop {
    /// The stop of a channel whose senders all dropping means stop.
    pub fn new(stopped: Receiver<()>) -> Stop {
        Stop(stopped)
    }

    /// Wait up to `timeout` for the stop; true if it came (then the helper should return).
    pub fn wait(&self, timeout: Duration) -> bool {
        self.0.recv_timeout(timeout) != Err(RecvTimeoutError::Timeout)
    }

    /// The stop as a channel that disconnects, for `crossbeam_channel::select!` or for a
    /// loop that takes a receiver (the watchdog's).
    pub fn channel(&self) -> &Receiver<()> {
        &self.0
    }
}

/// The helper threads of one run.
pub struct Supervisor {
    stop: Option<Sender<()>>,
    stopped: Stop,
    /// Each helper's index reaches `done` when it ends, by returning or by a panic.
    done_tx: Sender<usize>,
    done: Receiver<usize>,
    helpers: Vec<(&'static str, JoinHandle<()>)>,
    say: Box<dyn Fn(&str) + Send>,
    /// How long `stop` waits for the helpers.
    patience: Duration,
}

impl Supervisor {
    /// No helpers yet. `say` takes what the supervisor has to say about them.
    pub fn new(say: impl Fn(&str) + Send + 'static) -> Supervisor {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let (done_tx, done) = crossbeam_channel::unbounded();
        Supervisor {
            stop: Some(stop),
            stopped: Stop(stopped),
            done_tx,
            done,
            helpers: Vec::new(),
            say: Box::new(say),
            patience: STOP_PATIENCE,
        }
    }

    /// Run `work` on a thread called `name` until it returns; it must return soon after its
    /// `Stop` fires. A helper that cannot be started is a warning: the run goes on without.
    pub fn spawn(&mut self, name: &'static str, work: impl FnOnce(Stop) + Send + 'static) {
        let stop = self.stopped.clone();
        let done = Done(self.done_tx.clone(), self.helpers.len());
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _done = done;
                work(stop);
            });
        match spawned {
            Ok(thread) => self.helpers.push((name, thread)),
            Err(e) => (self.say)(&format!("Warning: cannot start the {name} thread: {e}")),
        }
    }

    /// Stop every helper, and wait (up to `STOP_PATIENCE` in all) for each to end.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        drop(self.stop.take());
        let deadline = Instant::now() + self.patience;
        let mut ended = vec![false; self.helpers.len()];
        while ended.contains(&false) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(helper) => ended[helper] = true,
                Err(_) => break,
            }
        }
        for ((name, thread), ended) in self.helpers.drain(..).zip(ended) {
            // An ended helper's thread is about to finish: joining it does not wait.
            if !ended {
                (self.say)(&format!(
                    "Warning: the {name} thread did not stop within {}; left to end by itself",
                    humantime::format_duration(self.patience)
                ));
            } else if thread.join().is_err() {
                (self.say)(&format!("Warning: the {name} thread panicked"));
            }
        }
    }
}

/// Tells the supervisor that helper `.1` ended, when dropped: after its work returned or
/// while a panic unwinds it.
struct Done(Sender<usize>, usize);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The killer of the docker client under way, if any: how a helper ends the wait for it.
#[derive(Clone, Default)]
pub struct ClientSlot(Arc<Mutex<Option<KillClient>>>);

impl ClientSlot {
    fn lock(&self) -> MutexGuard<'_, Option<KillClient>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, killer: KillClient) {
        *self.lock() = Some(killer);
    }

    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// Kill the client under way, if there is one.
    pub fn kill(&self) {
        if let Some(kill) = self.lock().clone() {
            kill();
        }
    }
}

impl ContainerRun<'_> {
    /// Start the helpers of a run that has gone Running: they watch it until the client
    /// exits and the returned supervisor is stopped. `max_run_time` counts from now.
    pub(super) fn supervise(
        &self,
        max_run_time: Option<Duration>,
        pipeline: &LogPipeline,
    ) -> Supervisor {
        let mut supervisor = Supervisor::new(self.sayer());
        if let Some(limit) = max_run_time {
            let (cancel, deadline) = (self.cancel.clone(), Instant::now() + limit);
            supervisor.spawn("max-run-time", move |stop| {
                limit_run_time(&cancel, limit, deadline, stop)
            });
        }
        let reaper = ClientReaper {
            cancel: self.cancel.clone(),
            client: self.client.clone(),
            engine_stuck: self.engine_stuck.clone(),
            say: Box::new(self.sayer()),
            grace: CLIENT_GRACE,
        };
        supervisor.spawn("client-reaper", move |stop| reaper.run(stop));
        if let Some(interval) = self.config.docker_watchdog_interval {
            let (engine, name, say) = (self.engine.clone(), self.uuid.clone(), self.sayer());
            let (cancel, stuck) = (self.cancel.clone(), self.engine_stuck.clone());
            supervisor.spawn("docker-watchdog", move |stop| {
                let check = || engine.inspect_state(&name);
                crate::docker::watch(interval, stop.channel(), check, say, |reason| {
                    stuck.store(true, Ordering::Release);
                    // The cancel logs the reason; the client reaper kills the client.
                    cancel.cancel(&reason);
                });
            });
        }
        // Not with the 2016 API, which does not let a Running record's `log` change.
        let updates = self.config.log_updates;
        // With saves on schedule off, SIGUSR1 still asks for one.
        if self.progress.permits(State::Running).log {
            let (snapshots, collection) = (pipeline.snapshots(), self.log_collection.clone());
            let say = self.sayer();
            let save_now = self.node_signals.save_now.clone();
            supervisor.spawn("log-updates", move |stop| {
                save_while_running(
                    updates,
                    &snapshots,
                    &collection,
                    say,
                    stop.channel(),
                    &save_now,
                )
            });
        }
        self.watch_container(&mut supervisor, pipeline);
        self.watch_arv_mount(&mut supervisor);
        supervisor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str) + Send + 'static) {
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = said.clone();
        (said, move |line: &str| {
            log.lock().unwrap().push(line.to_string())
        })
    }

    #[test]
    fn one_stop_ends_every_helper_and_each_is_joined() {
        let (said, say) = said();
        let mut supervisor = Supervisor::new(say);
        let ended = Arc::new(Mutex::new(Vec::new()));
        for name in ["first", "second", "third"] {
            let ended = ended.clone();
            supervisor.spawn(name, move |stop| {
                assert_eq!(std::thread::current().name(), Some(name));
                while !stop.wait(Duration::from_secs(60)) {}
                ended.lock().unwrap().push(name);
            });
        }
        let started = Instant::now();
        supervisor.stop();
        assert!(started.elapsed() < Duration::from_secs(30));
        let mut ended = ended.lock().unwrap().clone();
        ended.sort();
        assert_eq!(
            ended,
            ["first", "second", "third"],
            "all ended before stop returned"
        );
        assert!(
            said.lock().unwrap().is_empty(),
            "{:?}",
            said.lock().unwrap()
        );
    }

    #[test]
    fn a_helper_that_does_not_stop_is_named_and_left() {
        let (said, say) = said();
        let mut supervisor = Supervisor::new(say);
        supervisor.patience = Duration::from_millis(50);
        let (release, hold) = crossbeam_channel::bounded::<()>(0);
        supervisor.spawn("stubborn", move |_stop| {
            let _ = hold.recv();
        });
        supervisor.spawn("broken", |_stop| panic!("helper failed"));
        supervisor.spawn(
            "polite",
            |stop| while !stop.wait(Duration::from_secs(60)) {},
        );
        // The panic hook (a backtrace, maybe) runs before the unwinding that reports it.
        while !supervisor.helpers[1].1.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        supervisor.stop();
        let mut said = said.lock().unwrap().clone();
        said.sort();
        assert_eq!(
            said,
            [
                "Warning: the broken thread panicked",
                "Warning: the stubborn thread did not stop within 50ms; left to end by itself",
            ]
        );
        drop(release);
    }

    #[test]
    fn the_client_slot_kills_the_client_under_way_only() {
        let slot = ClientSlot::default();
        slot.kill();
        let killed = Arc::new(Mutex::new(0));
        let count = killed.clone();
        slot.set(Arc::new(move || *count.lock().unwrap() += 1));
        slot.kill();
        slot.clear();
        slot.kill();
        assert_eq!(*killed.lock().unwrap(), 1);
    }
}
