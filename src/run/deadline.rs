//! The wrap-up's one deadline (issue 10, point 5). From the moment the container ended
//! (or the failure that ended the run before it), every retry of the run (saving the
//! output and the logs, the final update, the logs table) stops by
//! `WrapUpLimits::deadline`, all steps together, not each on its own. A signal
//! (SIGTERM, SIGINT, SIGQUIT) during the wrap-up brings that to `grace` from the signal;
//! the run then ends non-zero, keeping the logs it could not save. A signal before the
//! wrap-up only cancels the container (whose logs are then saved as usual): a
//! dispatcher's second `--kill` is what cuts the wrap-up short.
//!
//! The limit itself lives with the clients (`arvados::retry_limit::RetryLimit`); this
//! module sets it, and says where the run's lines about it go.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::ContainerRun;
use super::cancel::CancelFlag;
use super::engine::Engine;
use crate::arvados::retry_limit::RetryLimit;
use crate::config::WrapUpLimits;
use crate::docker::DockerError;
use crate::logging::pipeline::CrunchLog;

/// The container's removal gets this long even when the deadline has passed.
const MIN_CLEANUP_WAIT: Duration = Duration::from_secs(2);

/// The longest wait between two removals while the engine is down.
const MAX_REMOVAL_WAIT: Duration = Duration::from_secs(5);

/// The wrap-up under way: dropping it ends the thread that waits for a signal.
pub(super) struct WrapUpDeadline {
    _done: Sender<()>,
}

impl ContainerRun<'_> {
    /// The wrap-up begins (once): its deadline is set from now.
    pub(super) fn begin_wrap_up(&mut self) {
        if self.wrap_up.is_none() {
            self.wrap_up = begin(
                &self.retry_limit,
                &self.cancel,
                self.config.wrap_up,
                self.log.clone(),
                &self.uuid,
            );
        }
    }

    /// The retry lines said after crunch-run.txt closed, for the kept copy.
    pub(super) fn retries_said_late(&self) -> Vec<(SystemTime, String)> {
        let late = self.late_retries.lock().unwrap_or_else(|e| e.into_inner());
        late.clone()
    }

    /// The wait for the container's removal, bounded by the wrap-up's deadline.
    pub(super) fn wait_cleanup(
        &self,
        done: crossbeam_channel::Receiver<Vec<String>>,
    ) -> Vec<String> {
        let until = self.retry_limit.until();
        let got = match until {
            Some(until) => done.recv_deadline(until.max(Instant::now() + MIN_CLEANUP_WAIT)),
            None => done.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(problems) => problems,
            Err(RecvTimeoutError::Timeout) => vec![format!(
                "removing docker container {} did not finish within the wrap-up's deadline; the guard process removes it",
                self.uuid
            )],
            Err(RecvTimeoutError::Disconnected) => {
                vec!["removing the docker container failed unexpectedly".into()]
            }
        }
    }
}

/// Remove the container; while the engine is down (as in a dockerd restart), again and
/// again until the wrap-up's deadline, so that nothing is left once it is back.
pub(super) fn remove_container(
    engine: &dyn Engine,
    name: &str,
    limit: &RetryLimit,
) -> Result<(), DockerError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match (engine.remove(name), limit.until()) {
            (Err(e), Some(until)) if e.is_engine_down() && Instant::now() + wait < until => {
                let what = format!("removing docker container {name}");
                limit.report(&what, &e.to_string(), until);
                limit.sleep(wait);
                wait = (wait * 2).min(MAX_REMOVAL_WAIT);
            }
            (result, _) => return result,
        }
    }
}

/// Retry lines said once crunch-run.txt was closed, with when: written into the kept
/// crunch-run.txt if the log save fails.
pub(super) type LateRetries = Arc<Mutex<Vec<(SystemTime, String)>>>;

/// Retries report through crunch-run.txt (which echoes to stderr) while it is open; once
/// it is closed (its last line is the final state), on stderr, and into the returned list.
pub(super) fn report_retries(limit: &RetryLimit, log: CrunchLog, uuid: &str) -> LateRetries {
    let uuid = uuid.to_string();
    let late = LateRetries::default();
    let kept = late.clone();
    limit.set_reporter(Arc::new(move |line: &str| {
        if log.is_closed() {
            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.push((SystemTime::now(), line.to_string()));
        }
        say(&log, &uuid, line);
    }));
    late
}

fn say(log: &CrunchLog, uuid: &str, line: &str) {
    if log.is_closed() {
        eprintln!("crunch-run: {uuid}: {line}");
    } else {
        log.line(line);
    }
}

/// Start the wrap-up's clock: no retry goes on past `limits.deadline` from now, and a
/// signal cuts what is left to `limits.grace`. None if the thread that waits for the
/// signal cannot start (the deadline holds all the same).
pub(super) fn begin(
    limit: &RetryLimit,
    cancel: &CancelFlag,
    limits: WrapUpLimits,
    log: CrunchLog,
    uuid: &str,
) -> Option<WrapUpDeadline> {
    limit.limit_to(Instant::now() + limits.deadline);
    let (done, ended) = crossbeam_channel::bounded::<()>(0);
    let signalled = cancel.next_signal();
    let limit = limit.clone();
    let uuid = uuid.to_string();
    let spawned = std::thread::Builder::new()
        .name("wrap-up-signal".into())
        .spawn(move || {
            crossbeam_channel::select! {
                recv(signalled) -> _ => {
                    limit.limit_to(Instant::now() + limits.grace);
                    let grace = humantime::format_duration(limits.grace);
                    say(&log, &uuid, &format!(
                        "Caught a signal: the wrap-up stops retrying within {grace}"
                    ));
                }
                recv(ended) -> _ => {}
            }
        });
    spawned.ok().map(|_| WrapUpDeadline { _done: done })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::logging::pipeline::{LogPipeline, LogPipelineConfig};
    use crate::logging::spool::DEFAULT_BLOCK_SIZE;
    use crate::logging::timestamp::SystemClock;
    use crate::store::memory::MemoryStore;

    fn pipeline() -> (tempfile::TempDir, LogPipeline) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogPipelineConfig {
            spool_dir: dir.path().join("logs"),
            container_uuid: "zzzzz-dz642-000000000000000".into(),
            logs_table: None,
            echo_crunch_log_to_stderr: false,
            block_size: DEFAULT_BLOCK_SIZE,
            clock: Arc::new(SystemClock),
        };
        let p = LogPipeline::start(cfg, Arc::new(MemoryStore::new())).unwrap();
        (dir, p)
    }

    #[test]
    fn a_signal_cuts_the_deadline_to_the_grace() {
        let limit = RetryLimit::default();
        let cancel = CancelFlag::default();
        let limits = WrapUpLimits {
            deadline: Duration::from_secs(600),
            grace: Duration::from_secs(2),
        };
        let (_dir, pipeline) = pipeline();
        let log = pipeline.crunch_log();
        let t0 = Instant::now();
        let _clock = begin(&limit, &cancel, limits, log, "zzzzz-dz642-000000000000000");
        let until = limit.until().unwrap();
        assert!(until >= t0 + Duration::from_secs(600));
        cancel.signal("SIGTERM");
        let cut = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            limit.until().unwrap() < t0 + Duration::from_secs(10)
        });
        assert!(cut, "the signal did not cut the deadline");
        assert_eq!(cancel.reason().as_deref(), Some("caught signal SIGTERM"));
    }

    /// The signal that cancelled the container does not cut the wrap-up that saves its
    /// logs; the next one does.
    #[test]
    fn a_signal_before_the_wrap_up_leaves_it_the_whole_deadline() {
        let limit = RetryLimit::default();
        let cancel = CancelFlag::default();
        cancel.signal("SIGTERM");
        let limits = WrapUpLimits {
            deadline: Duration::from_secs(600),
            grace: Duration::from_secs(2),
        };
        let (_dir, pipeline) = pipeline();
        let log = pipeline.crunch_log();
        let _clock = begin(&limit, &cancel, limits, log, "zzzzz-dz642-000000000000000");
        std::thread::sleep(Duration::from_millis(100));
        assert!(limit.until().unwrap() > Instant::now() + Duration::from_secs(500));
        cancel.signal("SIGTERM");
        let cut = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            limit.until().unwrap() < Instant::now() + Duration::from_secs(10)
        });
        assert!(cut, "the second signal did not cut the wrap-up");
    }

    #[test]
    fn a_cancel_that_is_no_signal_keeps_the_whole_deadline() {
        let limit = RetryLimit::default();
        let cancel = CancelFlag::default();
        cancel.cancel("maximum run time exceeded (1s)");
        let (_dir, pipeline) = pipeline();
        let log = pipeline.crunch_log();
        let _clock = begin(&limit, &cancel, WrapUpLimits::default(), log, "x");
        std::thread::sleep(Duration::from_millis(100));
        assert!(limit.until().unwrap() > Instant::now() + Duration::from_secs(500));
    }
}
