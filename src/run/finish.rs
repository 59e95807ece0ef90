//! The wrap-up: say how the run ended, save the log collection, send the one final update,
//! and clean up (the docker container, the guard, the spool). The container's removal
//! starts as soon as it has exited (`start_cleanup`), while the output is saved.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::cgroup::Roots;
use crate::docker::Guard;
use crate::logging::late::LateLog;
use crate::logging::pipeline::LogPipeline;
use crate::slurm::ContainerCgroups;
use crate::store::ApiStore;

use super::ContainerRun;
use super::engine::Engine;
use super::outcome::{Outcome, RecordProgress, Saved, WrapUp, final_state, final_update};

/// When not even the log pipeline could start: cancel with the reason, no log.
pub(super) fn finish_without_logs(
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
}

impl Cleanup {
    /// Returns what went wrong, for stderr (the log collection is closed by then).
    pub(super) fn run(self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.engine.remove(&self.name) {
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
    pub(super) fn finish(mut self, outcome: Outcome, output: Saved, pipeline: LogPipeline) -> i32 {
        let cleanup = self.cleanup_done.take();
        // Whatever happened, no FUSE mount outlives the run (nor blocks the spool's removal).
        self.stop_arv_mount();
        // No container was run: the guard has nothing to watch.
        if let Some(Err(e)) = self.guard.take().map(Guard::release) {
            self.say(&format!("Warning: releasing the guard process failed: {e}"));
        }
        self.say_how_it_ended(&outcome);
        self.stop_hoststat();
        let (wrapup, mut late) = self.save_logs(&outcome, output, pipeline);
        let fields = final_update(&outcome, self.progress, &wrapup);
        let status = match self.api.update_container(&self.uuid, &fields) {
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
        let problems = match cleanup.map(|done| done.recv()) {
            None => Vec::new(),
            Some(Ok(problems)) => problems,
            Some(Err(_)) => vec!["removing the docker container failed unexpectedly".into()],
        };
        for problem in problems {
            late.line(&self.secrets.redact(&problem));
        }
        status
    }

    /// Why the run did not end as the container's exit, in crunch-run.txt.
    fn say_how_it_ended(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Exited { .. } => {}
            Outcome::Cancelled { reason, .. } => self.say(&format!("Cancelled: {reason}")),
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

    /// Close the logs and save the log collection. Its last line is the final state as it
    /// would be if the save works; it is said (stderr, logs table) only once the save's
    /// result is known, and replaced (in the spool kept on disk, and in what is said) when
    /// the state turned out otherwise. Returns the wrap-up's results, and what says the
    /// lines that come after.
    fn save_logs(
        &self,
        outcome: &Outcome,
        output: Saved,
        pipeline: LogPipeline,
    ) -> (WrapUp, LateLog) {
        let mut wrapup = WrapUp {
            output,
            log: Saved::Nothing,
        };
        let provisional = final_state(outcome, self.progress, &wrapup).state;
        let (finished, last_line) = pipeline.finish_with_last_line(provisional.as_str());
        wrapup.log = match self
            .log_collection
            .save_final_logs(&finished, &self.secrets)
        {
            Ok(c) => Saved::As(c.portable_data_hash),
            Err(why) => Saved::Failed(why),
        };
        let state = final_state(outcome, self.progress, &wrapup).state;
        let late = match &wrapup.log {
            Saved::Failed(why) => last_line.correct(&format!("{why}\n{state}")),
            _ if state != provisional => last_line.correct(state.as_str()),
            _ => last_line.confirm(),
        };
        (wrapup, late)
    }
}
