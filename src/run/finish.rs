//! The wrap-up: say how the run ended, save the log collection, send the one final update,
//! and clean up (the docker container, the guard, the spool).

use std::sync::Arc;

use crate::docker::Guard;

use super::engine::Engine;
use crate::logging::pipeline::LogPipeline;
use crate::store::ApiStore;

use super::ContainerRun;
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

/// Removing the docker container and releasing the guard: done on a thread of its own
/// while the logs are saved, and waited for before crunch-run exits.
pub(super) struct Cleanup {
    pub engine: Arc<dyn Engine>,
    pub name: String,
    pub guard: Option<Guard>,
}

impl Cleanup {
    /// Returns what went wrong, for stderr (the log collection is closed by then).
    pub(super) fn run(self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.engine.remove(&self.name) {
            problems.push(format!(
                "removing docker container {} failed: {e}",
                self.name
            ));
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

    /// Log the final state, save the log collection, send the final update.
    pub(super) fn finish(mut self, outcome: Outcome, output: Saved, pipeline: LogPipeline) -> i32 {
        let cleanup = self.cleanup_done.take();
        // No container was run: the guard has nothing to watch.
        if let Some(Err(e)) = self.guard.take().map(Guard::release) {
            self.say(&format!("Warning: releasing the guard process failed: {e}"));
        }
        match &outcome {
            Outcome::Exited { .. } => {}
            Outcome::Cancelled { reason, .. } => self.say(&format!("Cancelled: {reason}")),
            Outcome::Failed { reason, .. } => {
                self.say(reason);
                // For whoever diagnoses a failure that involved docker (not asked on
                // the happy path: each docker client costs a start-up).
                if self.engine_asked.load(std::sync::atomic::Ordering::Relaxed) {
                    match self.engine.server_version() {
                        Ok(v) => self.say(&format!("Container runtime: docker Engine {v}")),
                        Err(e) => self.say(&format!("docker version: {e}")),
                    }
                }
            }
        }
        let mut wrapup = WrapUp {
            output,
            log: Saved::Nothing,
        };
        // The state if the log save works: in crunch-run.txt, said once the save is done.
        let provisional = final_state(&outcome, self.progress, &wrapup).state;
        let (finished, last_line) = pipeline.finish_with_last_line(provisional.as_str());
        wrapup.log = match self
            .log_collection
            .save_final_logs(&finished, &self.secrets)
        {
            Ok(c) => Saved::As(c.portable_data_hash),
            Err(why) => Saved::Failed(why),
        };
        let state = final_state(&outcome, self.progress, &wrapup).state;
        let mut late = match &wrapup.log {
            Saved::Failed(why) => last_line.correct(&format!("{why}\n{state}")),
            _ if state != provisional => last_line.correct(state.as_str()),
            _ => last_line.confirm(),
        };
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
}
