//! The wrap-up: say how the run ended, save the log collection, send the one final update,
//! and clean up (the docker container, the guard, the spool).

use serde_json::Value;

use std::sync::Arc;

use crate::docker::Guard;

use super::engine::Engine;
use crate::logging::pipeline::LogPipeline;
use crate::store::ApiStore;

use super::ContainerRun;
use super::outcome::{Outcome, RecordProgress, final_update};

/// When not even the log pipeline could start: cancel with the reason, no log.
pub(super) fn finish_without_logs(
    api: &dyn ApiStore,
    uuid: &str,
    progress: RecordProgress,
    reason: &str,
) -> i32 {
    let outcome = Outcome::Failed {
        reason: reason.to_string(),
        exit_code: None,
    };
    match api.update_container(uuid, &final_update(&outcome, progress, None)) {
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
    /// Log the final state, save the log collection, send the final update.
    pub(super) fn finish(mut self, outcome: Outcome, pipeline: LogPipeline) -> i32 {
        if let Some(updater) = self.log_updater.take() {
            updater.stop();
        }
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
        let state = final_update(&outcome, self.progress, None)
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("Cancelled")
            .to_string();
        self.say(&state);
        let finished = pipeline.finish();
        let saved = self
            .log_collection
            .save_final_logs(&finished, &self.secrets);
        let (outcome, log_pdh) = match saved {
            Ok(c) => (outcome, Some(c.portable_data_hash)),
            Err(msg) => {
                let outcome = match outcome {
                    Outcome::Exited { code, .. } => Outcome::Failed {
                        reason: msg,
                        exit_code: Some(code),
                    },
                    other => other,
                };
                (outcome, None)
            }
        };
        let fields = final_update(&outcome, self.progress, log_pdh.as_deref());
        let status = match self.api.update_container(&self.uuid, &fields) {
            Ok(()) => 0,
            Err(e) => {
                let msg = format!(
                    "final update of the container record failed: {}",
                    self.secrets.redact(&e.to_string())
                );
                eprintln!("crunch-run: {}: {msg}", self.uuid);
                1
            }
        };
        // The spool goes only now: unlinking a large log file can take a while (0.3 s for
        // 700 MB on ext4), and the record need not wait for it. The container is being
        // removed meanwhile.
        if log_pdh.is_some() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
        let problems = match cleanup.map(|done| done.recv()) {
            None => Vec::new(),
            Some(Ok(problems)) => problems,
            Some(Err(_)) => vec!["removing the docker container failed unexpectedly".into()],
        };
        for problem in problems {
            self.log_collection.post_late_log(&problem, &self.secrets);
        }
        status
    }
}
