//! The wrap-up: say how the run ended, save the log collection, send the one final update,
//! and clean up (the docker container, the guard, the spool). The container's removal
//! starts as soon as it has exited (`start_cleanup`), while the output is saved.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::arvados::retry_limit::RetryLimit;
use crate::cgroup::Roots;
use crate::docker::Guard;
use crate::logging::late::LateLog;
use crate::logging::pipeline::LogPipeline;
use crate::slurm::ContainerCgroups;
use crate::store::ApiStore;

use super::ContainerRun;
use super::engine::Engine;
use super::outcome::{Outcome, RecordProgress, Saved, WrapUp, add_cost, final_state, final_update};
use super::output::Output;
use crate::arvados::manifest::portable_data_hash;

/// When not even the log pipeline could start (the spool directory, a thread): not the
/// container's fault, so it goes back to the queue (the API's unlock; nothing for the 2016
/// API, whose record is Queued already), with the reason on stderr only.
pub(super) fn finish_without_logs(
    api: &dyn ApiStore,
    uuid: &str,
    progress: RecordProgress,
    reason: &str,
) -> i32 {
    eprintln!("crunch-run: {uuid}: {reason}; the container goes back to the queue");
    let unlocked = match progress.legacy_api {
        true => Ok(()),
        false => api.unlock_container(uuid),
    };
    match unlocked {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("crunch-run: {uuid}: unlocking the container failed: {e}");
            1
        }
    }
}

/// A record crunch-run cannot read (issue 10) is the record's own fault: cancel it with
/// the reason, before any log exists.
pub(super) fn cancel_unreadable(
    api: &dyn ApiStore,
    uuid: &str,
    progress: RecordProgress,
    reason: &str,
) -> i32 {
    let nothing = WrapUp {
        output: Saved::Nothing,
        log: Saved::Nothing,
    };
    let fields = final_update(&Outcome::failed(reason), progress, &nothing);
    match api.update_container(uuid, &fields) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("crunch-run: {uuid}: final update failed: {e}");
            1
        }
    }
}

/// Removing the docker container (and in a Slurm job the cgroups docker made for it) and
/// releasing the guard: done on a thread of its own while the logs are saved, and waited
/// for before crunch-run exits.
pub(super) struct Cleanup {
    pub engine: Arc<dyn Engine>,
    pub name: String,
    pub guard: Option<Guard>,
    pub cgroups: Option<ContainerCgroups>,
    /// The wrap-up's deadline: while the engine is down, the removal is tried again until it.
    pub limit: RetryLimit,
}

impl Cleanup {
    /// Returns what went wrong, for stderr (the log collection is closed by then).
    pub(super) fn run(self) -> Vec<String> {
        let mut problems = Vec::new();
        match super::deadline::remove_container(&*self.engine, &self.name, &self.limit) {
            Ok(()) => {
                if let Some(cgroups) = &self.cgroups {
                    cgroups.remove_empty(&Roots::host());
                }
            }
            Err(e) => problems.push(format!(
                "removing docker container {} failed: {e}",
                self.name
            )),
        }
        if let Some(Err(e)) = self.guard.map(Guard::release) {
            problems.push(format!("releasing the guard process failed: {e}"));
        }
        problems
    }
}

impl ContainerRun<'_> {
    /// Remove the container (and release the guard) on a thread of its own, while the
    /// output and the logs are saved; `finish` waits for it before crunch-run exits.
    pub(super) fn start_cleanup(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("cleanup".into())
            .spawn(move || {
                let _ = tx.send(cleanup.run());
            });
        match spawned {
            Ok(_) => self.cleanup_done = Some(rx),
            // No thread to spare. Dropping the cleanup closes the guard's pipe unreleased:
            // the guard removes the container.
            Err(e) => self.say(&format!(
                "Warning: cannot start the removal thread ({e}); the guard process removes the container"
            )),
        }
    }

    /// The wrap-up, in order: say how the run ended, save the log collection (its last
    /// line the final state), send the final update, wait for the cleanup. Returns the
    /// process exit status: 0 when the record reached its final state.
    pub(super) fn finish(mut self, outcome: Outcome, output: Output, pipeline: LogPipeline) -> i32 {
        self.begin_wrap_up();
        let cleanup = self.cleanup_done.take();
        // Whatever happened, no FUSE mount outlives the run (nor blocks the spool's removal).
        self.stop_arv_mount();
        // No container was run: the guard has nothing to watch.
        if let Some(Err(e)) = self.guard.take().map(Guard::release) {
            self.say(&format!("Warning: releasing the guard process failed: {e}"));
        }
        self.say_how_it_ended(&outcome);
        self.stop_hoststat();
        pipeline.wait_for_uploads(|total| self.progress_of("Saving the logs", Some(total)));
        let (wrapup, mut late) = self.save_logs(&outcome, output, pipeline);
        let mut fields = final_update(&outcome, self.progress, &wrapup);
        add_cost(&mut fields, self.progress, self.cost.so_far());
        let status = match self.send_final(&fields) {
            Ok(()) => 0,
            Err(e) => {
                let msg = format!("final update of the container record failed: {e}");
                late.line(&self.secrets.redact(&msg));
                1
            }
        };
        // The spool goes only now: unlinking a large log file can take a while (0.3 s for
        // 700 MB on ext4), and the record need not wait for it. The container is being
        // removed meanwhile.
        if let Saved::As(_) = wrapup.log {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
        let problems = cleanup.map_or_else(Vec::new, |done| self.wait_cleanup(done));
        for problem in problems {
            late.line(&self.secrets.redact(&problem));
        }
        // Only now wait (boundedly) for the logs table's last POSTs: the record never does.
        late.close();
        status
    }

    /// Why the run did not end as the container's exit, in crunch-run.txt.
    fn say_how_it_ended(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Exited { .. } => {}
            Outcome::Cancelled { reason, .. } => self.say(&format!("Cancelled: {reason}")),
            Outcome::Requeue { reason } => {
                self.say(reason);
                self.say("This is not the container's fault: it goes back to the queue, for another worker to run");
            }
            Outcome::Failed { reason, .. } => {
                self.say(reason);
                // For whoever diagnoses a failure that involved docker (not asked on
                // the happy path: each docker client costs a start-up).
                if self.engine_asked.load(Ordering::Relaxed) {
                    match self.engine.server_version() {
                        Ok(v) => self.say(&format!("Container runtime: docker Engine {v}")),
                        Err(e) => self.say(&format!("docker version: {e}")),
                    }
                }
            }
        }
    }

    /// Close the logs and save the log collection, and beside it the output collection.
    /// The log's last line is the final state as it would be if both saves work; it is
    /// said (stderr, logs table) only once their results are known, and replaced (in the
    /// spool kept on disk, and in what is said) when the state turned out otherwise.
    /// Returns the wrap-up's results, and what says the lines that come after.
    fn save_logs(
        &self,
        outcome: &Outcome,
        output: Output,
        pipeline: LogPipeline,
    ) -> (WrapUp, LateLog) {
        let (output, to_save) = match output {
            Output::Settled(saved) => (saved, None),
            Output::ToSave { manifest } => {
                let pdh = portable_data_hash(&manifest);
                self.say(&format!("Saving the output collection {pdh}"));
                (Saved::As(pdh), Some(manifest))
            }
        };
        let mut wrapup = WrapUp {
            output,
            log: Saved::Nothing,
        };
        let provisional = final_state(outcome, self.progress, &wrapup).state;
        let (log, output, last_line) = std::thread::scope(|s| {
            let saving = to_save.map(|m| s.spawn(move || self.save_output_collection(&m)));
            let (finished, last_line) = pipeline.finish_with_last_line(provisional.as_str());
            let log = match self
                .log_collection
                .save_final_logs(&finished, &self.secrets)
            {
                Ok(c) => Saved::As(c.portable_data_hash),
                Err(why) => Saved::Failed(why),
            };
            let output = saving.map(|t| {
                t.join().unwrap_or_else(|_| {
                    Saved::Failed("saving the output collection failed unexpectedly".into())
                })
            });
            (log, output, last_line)
        });
        wrapup.log = log;
        if let Some(output) = output {
            wrapup.output = output;
        }
        let state = final_state(outcome, self.progress, &wrapup).state;
        let why: Vec<&str> = [&wrapup.output, &wrapup.log]
            .into_iter()
            .filter_map(|saved| match saved {
                Saved::Failed(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        let late = match why.as_slice() {
            [] if state == provisional => last_line.confirm(),
            [] => last_line.correct(state.as_str()),
            why => {
                // Retries said after crunch-run.txt closed go into its kept copy.
                let before = match wrapup.log {
                    Saved::Failed(_) => self.retries_said_late(),
                    _ => Vec::new(),
                };
                last_line.correct_after(&before, &format!("{}\n{state}", why.join("\n")))
            }
        };
        (wrapup, late)
    }
}
