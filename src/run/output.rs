//! The output of a container that exited: the collection it saved itself (with API access),
//! or the output directory captured and saved as the output collection. Walking the
//! directory is output/'s job; what a failure here means for the record, final_update's.

use crate::arvados::container::Container;
use crate::mounts;
use crate::output::{self, OutputSpec};

use super::ContainerRun;
use super::outcome::{Outcome, Saved, exit_code_update};

impl ContainerRun<'_> {
    /// The output of a container that exited, its exit code recorded meanwhile (capturing
    /// can take long, and the code must survive crunch-run dying before the final update,
    /// as in Go crunch-run); then the staged mounts go.
    pub(super) fn capture(&self, container: &Container, outcome: &Outcome) -> Saved {
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

    /// For a container that exited: its output collection (or the one it saved itself),
    /// or why it could not be saved (said in crunch-run.txt).
    fn save_output(&self, container: &Container, outcome: &Outcome) -> Saved {
        if !matches!(outcome, Outcome::Exited { .. }) {
            return Saved::Nothing;
        }
        let failed = |reason: String| {
            self.say(&reason);
            Saved::Failed(reason)
        };
        if container.runtime_constraints.api {
            match self.api.get_container(&self.uuid) {
                Ok(record) => {
                    if let Some(pdh) = record["output"].as_str().filter(|p| !p.is_empty()) {
                        self.say(&format!("The container set its own output: {pdh}"));
                        return Saved::As(pdh.to_string());
                    }
                }
                Err(e) => self.say(&format!("Warning: cannot re-read the record's output: {e}")),
            }
        }
        let Some(staged) = &self.staged else {
            return Saved::Nothing;
        };
        self.say("Capturing the output");
        let spec = OutputSpec::from_staged(staged, &container.output_path, &container.output_glob);
        let (api, blocks) = self.container_stores();
        let say = |line: &str| self.say(line);
        let manifest = match output::capture_output(&spec, &*blocks, &say) {
            Ok(m) => m,
            Err(e) => return failed(format!("capturing the output failed: {e}")),
        };
        match api.create_output_collection(&format!("output for {}", self.uuid), &manifest) {
            Ok(saved) => {
                self.say(&format!(
                    "Output collection saved: {}",
                    saved.portable_data_hash
                ));
                Saved::As(saved.portable_data_hash)
            }
            Err(e) => failed(format!("saving the output collection failed: {e}")),
        }
    }
}
