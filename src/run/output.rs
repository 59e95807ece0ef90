//! The output of a container that exited: the collection it saved itself (with API access),
//! or the output directory captured and saved as the output collection. Walking the
//! directory is output/'s job; what a failure here means for the record, final_update's.

use crate::arvados::container::Container;
use crate::mounts;
use crate::output::{self, OutputSpec};

use super::ContainerRun;
use super::outcome::{Outcome, Saved, exit_code_update};

/// The output as `capture` leaves it: settled, or a manifest whose collection `finish`
/// saves beside the log collection (two requests the final update waits for, side by
/// side rather than one after the other).
pub(super) enum Output {
    Settled(Saved),
    ToSave { manifest: String },
}

impl ContainerRun<'_> {
    /// The output of a container that exited, its exit code recorded meanwhile (capturing
    /// can take long, and the code must survive crunch-run dying before the final update,
    /// as in Go crunch-run); then the staged mounts go.
    pub(super) fn capture(&self, container: &Container, outcome: &Outcome) -> Output {
        let output = std::thread::scope(|s| {
            if let Some(fields) = exit_code_update(outcome, self.progress)
                && self.staged.is_some()
            {
                s.spawn(move || {
                    if let Err(e) = self.api.update_container(&self.uuid, &fields) {
                        self.say(&format!("Warning: cannot record the exit code early: {e}"));
                    }
                });
            }
            self.save_output(container, outcome)
        });
        self.stop_arv_mount();
        if let Err(e) = mounts::remove_staged(&self.mounts_dir()) {
            self.say(&format!("Warning: removing the staged mounts failed: {e}"));
        }
        output
    }

    /// For a container that exited: its output manifest (or the collection it saved
    /// itself), or why it could not be captured (said in crunch-run.txt).
    fn save_output(&self, container: &Container, outcome: &Outcome) -> Output {
        if !matches!(outcome, Outcome::Exited { .. }) {
            return Output::Settled(Saved::Nothing);
        }
        if container.runtime_constraints.api {
            match self.api.get_container(&self.uuid) {
                Ok(record) => {
                    if let Some(pdh) = record["output"].as_str().filter(|p| !p.is_empty()) {
                        self.say(&format!("The container set its own output: {pdh}"));
                        return Output::Settled(Saved::As(pdh.to_string()));
                    }
                }
                Err(e) => self.say(&format!("Warning: cannot re-read the record's output: {e}")),
            }
        }
        let Some(staged) = &self.staged else {
            return Output::Settled(Saved::Nothing);
        };
        self.say("Capturing the output");
        let spec = OutputSpec::from_staged(staged, &container.output_path, &container.output_glob);
        let (_, blocks) = self.container_stores();
        let say = |line: &str| self.say(line);
        let progress = self.progress_of("Capturing the output", None);
        let captured = output::capture_output_with_progress(&spec, &*blocks, &say, &progress);
        progress.finish();
        match captured {
            Ok(manifest) => Output::ToSave { manifest },
            Err(e) => {
                let reason = format!("capturing the output failed: {e}");
                self.say(&reason);
                Output::Settled(Saved::Failed(reason))
            }
        }
    }

    /// Save the output collection, as the container. Says nothing: crunch-run.txt is
    /// being closed meanwhile (a failure is said by the log's corrected last line).
    pub(super) fn save_output_collection(&self, manifest: &str) -> Saved {
        let (api, _) = self.container_stores();
        match api.create_output_collection(&format!("output for {}", self.uuid), manifest) {
            Ok(saved) => Saved::As(saved.portable_data_hash),
            Err(e) => Saved::Failed(format!("saving the output collection failed: {e}")),
        }
    }
}
