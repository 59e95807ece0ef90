//! Which failures are not the container's fault, and what they end in (reference §5.2a):
//! before Running, an engine that cannot be reached (or no docker CLI at all), an engine
//! error on the broken-node list, `docker create` failing (the spec was checked before: what
//! the engine refuses then is the host's trouble: no space, a lost image, a mount source
//! gone), the Running update or the node's files in the log failing, or a signal, give
//! `Outcome::Requeue`; the final step is then the API's unlock, so that
//! another worker runs the container. An engine error on the broken-node list also marks
//! the node broken (broken_node.rs), before or after Running. Everything else stays the
//! failure it was: the container's own (bad mounts, a missing image, a bad tar, a command
//! that does not exist) ends Cancelled with the reason.

use std::io;

use serde_json::{Map, Value};

use crate::arvados::container::State;
use crate::broken_node::mark_broken;
use crate::docker::{DockerError, suggests_broken_node};
use crate::store::StoreError;

use super::ContainerRun;
use super::outcome::Outcome;

/// Whether the docker CLI itself is missing: the node cannot run containers.
fn no_docker_cli(e: &DockerError) -> bool {
    matches!(e, DockerError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

impl ContainerRun<'_> {
    /// A failure that is not the container's: back to the queue before Running; after,
    /// the record can only end Cancelled.
    pub(super) fn not_its_fault(&self, reason: String) -> Outcome {
        match self.progress.running {
            false => Outcome::Requeue { reason },
            true => Outcome::failed(reason),
        }
    }

    /// A cancel (a signal): before Running the container goes back to the queue, as Go's
    /// does; after, it ends Cancelled.
    pub(super) fn cancelled(&self, reason: String) -> Outcome {
        match self.progress.running {
            false => Outcome::Requeue { reason },
            true => Outcome::Cancelled {
                reason,
                exit_code: None,
            },
        }
    }

    /// What an engine error `e` while doing `what` ends in: a node that cannot run
    /// containers is marked broken, and its failure is not the container's; any other
    /// error is a failure of the run.
    pub(super) fn engine_failure(&self, what: &str, e: &DockerError) -> Outcome {
        let reason = format!("{what}: {e}");
        if e.suggests_broken_node() || no_docker_cli(e) {
            self.node_is_broken(&e.to_string());
            return self.not_its_fault(reason);
        }
        Outcome::failed(reason)
    }

    /// `docker create` failed: the host's trouble, never the container's (its spec was
    /// checked), so it goes back to the queue; a node that cannot run containers is marked
    /// broken too.
    pub(super) fn create_failed(&self, e: &DockerError) -> Outcome {
        if e.suggests_broken_node() || no_docker_cli(e) {
            self.node_is_broken(&e.to_string());
        }
        self.not_its_fault(format!("cannot create the container: {e}"))
    }

    /// If `text` (an engine's error) is on the broken-node list, say so and mark the node.
    pub(super) fn check_broken_node(&self, text: &str) {
        if suggests_broken_node(text) {
            self.node_is_broken(text);
        }
    }

    fn node_is_broken(&self, error: &str) {
        self.say(&format!(
            "Error suggests node is unable to run containers: {error}"
        ));
        mark_broken(&self.config.node, &|line| self.say(line));
    }

    /// Send the final update: the unlock for a record going back to the queue (nothing
    /// for the 2016 API, whose record is still Queued), else the update itself.
    pub(super) fn send_final(&self, fields: &Map<String, Value>) -> Result<(), StoreError> {
        let queued = fields.get("state").and_then(Value::as_str) == Some(State::Queued.as_str());
        match (queued, self.progress.legacy_api) {
            (true, true) => Ok(()),
            (true, false) => self.api.unlock_container(&self.uuid),
            (false, _) => self.api.update_container(&self.uuid, fields),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_missing_docker_cli_is_the_node_s_fault_and_other_spawn_errors_are_not() {
        let spawn = |kind| DockerError::Spawn {
            op: "version",
            program: PathBuf::from("docker"),
            source: io::Error::from(kind),
        };
        let missing = spawn(io::ErrorKind::NotFound);
        assert!(no_docker_cli(&missing));
        let denied = spawn(io::ErrorKind::PermissionDenied);
        assert!(!no_docker_cli(&denied));
    }
}
