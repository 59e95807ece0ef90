//! The output of a container that exited: the collection it saved itself (with API access),
//! or the output directory captured and saved as the output collection. Walking the
//! directory is output/'s job.

use crate::arvados::container::Container;
use crate::output::{self, OutputSpec};

use super::ContainerRun;
use super::outcome::Outcome;

impl ContainerRun<'_> {
    /// For a container that exited: its output collection (or the one it saved itself).
    /// A failure to save it turns Complete into Cancelled, the exit code kept.
    pub(super) fn save_output(&self, container: &Container, outcome: Outcome) -> Outcome {
        let Outcome::Exited { code, .. } = outcome else {
            return outcome;
        };
        let exited = |output: Option<String>| Outcome::Exited { code, output };
        let failed = |reason: String| Outcome::Failed {
            reason,
            exit_code: Some(code),
        };
        if container.runtime_constraints.api {
            match self.api.get_container(&self.uuid) {
                Ok(record) => {
                    if let Some(pdh) = record["output"].as_str().filter(|p| !p.is_empty()) {
                        self.say(&format!("The container set its own output: {pdh}"));
                        return exited(Some(pdh.to_string()));
                    }
                }
                Err(e) => self.say(&format!("Warning: cannot re-read the record's output: {e}")),
            }
        }
        let Some(staged) = &self.staged else {
            return exited(None);
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
                exited(Some(saved.portable_data_hash))
            }
            Err(e) => failed(format!("saving the output collection failed: {e}")),
        }
    }
}
