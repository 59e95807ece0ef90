//! How the container ended: the engine's state once it has stopped, and the exit judge, a
//! pure function from everything known at the client's end to the run's `Outcome`. The
//! judge decides once; the wrap-up only reports (run/outcome.rs).

use std::time::Duration;

use crate::docker::classify_start_error;
use crate::docker::{ContainerExit, ContainerState, DockerError, MIN_MEMORY_BYTES};

use super::engine::Engine;

use super::outcome::Outcome;

/// How the `docker start` client ended. Its status is not the container's, except that it
/// exits 0 only when the container did.
#[derive(Debug, Clone)]
pub(super) struct ClientEnd {
    pub succeeded: bool,
    /// e.g. "docker start exited exit status 125", for messages.
    pub text: String,
    /// The tail of what the client wrote to stderr: its own errors land there, after the
    /// container's.
    pub said: String,
    /// How long the client ran.
    pub ran_for: Duration,
    /// The container wrote to its stdout: it had started.
    pub wrote_output: bool,
}

/// A client that ran this long before the engine lost track of its container did not
/// fail at the start.
const LOST_AFTER: Duration = Duration::from_secs(2);

/// What the judge weighs besides the engine's state.
pub(super) struct ExitFacts<'a> {
    pub client: &'a ClientEnd,
    /// Why the run was cancelled, if it was.
    pub cancel: Option<&'a str>,
    /// The watchdog gave up on the engine: its cancel is a failure, not a request.
    pub engine_stuck: bool,
    /// The record's memory limit (`runtime_constraints.ram`), if any.
    pub memory_limit: Option<u64>,
}

/// The judged outcome, and what crunch-run.txt says about the exit before the wrap-up.
#[derive(Debug, PartialEq)]
pub(super) struct Judged {
    pub outcome: Outcome,
    pub notes: Vec<String>,
}

/// Judge how the container ended. `engine` gives the container's state from the engine; it
/// is asked only when the client's end does not settle it (no cancel, and a client that
/// did not exit 0), and its error is worded for the record.
pub(super) fn judge_exit(
    facts: &ExitFacts,
    engine: impl FnOnce() -> Result<ContainerState, String>,
) -> Judged {
    let judged = |outcome, notes| Judged { outcome, notes };
    if let Some(reason) = facts.cancel {
        let reason = reason.to_string();
        let outcome = match facts.engine_stuck {
            true => Outcome::failed(reason),
            false => Outcome::Cancelled {
                reason,
                exit_code: None,
            },
        };
        return judged(outcome, vec![]);
    }
    // docker start exits 0 only when the container did: nothing to ask the engine.
    // Any other status may be the client's own (125, 126, 127) or the container's.
    if facts.client.succeeded {
        let notes = vec![ContainerExit::new(0).to_string()];
        return judged(Outcome::Exited { code: 0 }, notes);
    }
    let (client, said) = (&facts.client.text, &facts.client.said);
    let state = match engine() {
        Ok(state) => state,
        Err(e) => return judged(Outcome::failed(lost(facts.client, &e)), vec![]),
    };
    if state.never_started() {
        return judged(Outcome::failed(start_failure(&state, client, said)), vec![]);
    }
    let code = state.exit_code;
    let mut notes = vec![ContainerExit::new(code).to_string()];
    notes.extend(memory_note(&state, facts.memory_limit));
    judged(Outcome::Exited { code }, notes)
}

/// Why the run failed when the engine cannot say how the container ended: after it
/// started (it wrote output, or ran a while), the engine lost it, as in a dockerd restart;
/// else it may never have been created.
fn lost(end: &ClientEnd, engine_said: &str) -> String {
    let client = &end.text;
    let said = match end.said.is_empty() {
        true => String::new(),
        false => format!("\n{}", end.said),
    };
    let ran = humantime::format_duration(Duration::from_secs(end.ran_for.as_secs()));
    if end.wrote_output || end.ran_for >= LOST_AFTER {
        let started = match end.wrote_output {
            true => "the container started and ran",
            false => "docker start ran",
        };
        format!(
            "{started} for {ran}, then the engine lost it ({client}; the engine cannot inspect \
             it, it may have restarted: {engine_said}){said}"
        )
    } else {
        format!(
            "the container was not created or cannot be inspected ({client}): {engine_said}{said}"
        )
    }
}

/// Why a container never started, with advice when its command looks missing.
fn start_failure(state: &ContainerState, client: &str, said: &str) -> String {
    let why = if state.error.is_empty() {
        format!("{client}: {said}")
    } else {
        state.error.clone()
    };
    let mut reason = format!("could not start container: {why}");
    if let Some(advice) = classify_start_error(&why) {
        reason.push('\n');
        reason.push_str(advice);
    }
    reason
}

/// What to say about memory: the OOM killer, or a SIGKILL under a memory limit.
fn memory_note(state: &ContainerState, memory_limit: Option<u64>) -> Option<String> {
    let limit = memory_limit.map(|r| r.max(MIN_MEMORY_BYTES));
    match (state.oom_killed, limit) {
        (true, Some(limit)) => Some(format!(
            "Container was killed by the out-of-memory killer (memory limit {limit} bytes)"
        )),
        (true, None) => Some("Container was killed by the out-of-memory killer".into()),
        // The engine's OOMKilled flag is unreliable on some kernels (moby#38352): a SIGKILL
        // under a memory limit is worth a hint.
        (false, Some(limit)) if state.exit_code == 137 => Some(format!(
            "Container was killed by SIGKILL under a memory limit of {limit} bytes: probably the out-of-memory killer, though the engine did not report it"
        )),
        _ => None,
    }
}

/// The container's state from the engine, once it has stopped: the docker client's own
/// exit says nothing reliable (it may have died while the container runs on).
pub(super) fn engine_state(
    docker: &dyn Engine,
    name: &str,
    say: &dyn Fn(&str),
) -> Result<ContainerState, DockerError> {
    let state = docker.inspect_state(name)?;
    if !state.running {
        return Ok(state);
    }
    if let Err(e) = docker.wait(name) {
        say(&format!("docker wait: {e}"));
    }
    docker.inspect_state(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn client(succeeded: bool, said: &str) -> ClientEnd {
        ClientEnd {
            succeeded,
            text: format!(
                "docker start exited exit status {}",
                if succeeded { 0 } else { 1 }
            ),
            said: said.into(),
            ran_for: Duration::from_millis(300),
            wrote_output: false,
        }
    }

    fn facts(client: &ClientEnd) -> ExitFacts<'_> {
        ExitFacts {
            client,
            cancel: None,
            engine_stuck: false,
            memory_limit: None,
        }
    }

    fn exited(code: i64, oom_killed: bool) -> Result<ContainerState, String> {
        Ok(ContainerState {
            status: "exited".into(),
            exit_code: code,
            oom_killed,
            started_at: "2026-11-28T16:58:17.2Z".into(),
            ..Default::default()
        })
    }

    fn never_asked() -> Result<ContainerState, String> {
        panic!("the engine was asked")
    }

    #[test]
    fn a_client_that_exited_0_is_a_container_that_did_and_the_engine_is_not_asked() {
        let end = client(true, "");
        let j = judge_exit(&facts(&end), never_asked);
        assert_eq!(j.outcome, Outcome::Exited { code: 0 });
        assert_eq!(j.notes, ["Container exited with status code 0"]);
    }

    #[test]
    fn any_other_exit_code_is_the_containers_as_the_engine_reports_it() {
        let end = client(false, "");
        let j = judge_exit(&facts(&end), || exited(3, false));
        assert_eq!(j.outcome, Outcome::Exited { code: 3 });
        assert_eq!(j.notes, ["Container exited with status code 3"]);
    }

    #[test]
    fn oom_is_an_exit_with_a_note_naming_the_limit() {
        let end = client(false, "");
        let mut f = facts(&end);
        f.memory_limit = Some(GIB);
        let j = judge_exit(&f, || exited(137, true));
        assert_eq!(j.outcome, Outcome::Exited { code: 137 });
        assert_eq!(
            j.notes,
            [
                "Container exited with status code 137 (signal 9, SIGKILL)".to_string(),
                format!(
                    "Container was killed by the out-of-memory killer (memory limit {GIB} bytes)"
                ),
            ]
        );
        f.memory_limit = None;
        let j = judge_exit(&f, || exited(137, true));
        assert_eq!(
            j.notes[1],
            "Container was killed by the out-of-memory killer"
        );
    }

    #[test]
    fn sigkill_under_a_memory_limit_without_the_oom_flag_gets_a_hint() {
        let end = client(false, "");
        let mut f = facts(&end);
        // Below docker's minimum, the limit docker applied is named.
        f.memory_limit = Some(1);
        let j = judge_exit(&f, || exited(137, false));
        assert_eq!(j.outcome, Outcome::Exited { code: 137 });
        assert_eq!(
            j.notes[1],
            format!(
                "Container was killed by SIGKILL under a memory limit of {MIN_MEMORY_BYTES} bytes: probably the out-of-memory killer, though the engine did not report it"
            )
        );
        f.memory_limit = None;
        let j = judge_exit(&f, || exited(137, false));
        assert_eq!(j.notes.len(), 1, "no limit, no hint: {:?}", j.notes);
    }

    #[test]
    fn a_container_that_never_started_fails_with_advice() {
        let end = client(false, "docker: Error response from daemon: …");
        let j = judge_exit(&facts(&end), || {
            Ok(ContainerState {
                status: "created".into(),
                exit_code: 127,
                error: "exec: \"/nonexistent\": stat /nonexistent: no such file or directory"
                    .into(),
                started_at: "0001-01-01T00:00:00Z".into(),
                ..Default::default()
            })
        });
        let Outcome::Failed { reason, exit_code } = j.outcome else {
            panic!("{:?}", j.outcome)
        };
        assert_eq!(exit_code, None);
        assert!(
            reason.starts_with("could not start container: exec: \"/nonexistent\""),
            "{reason}"
        );
        assert!(reason.contains("\nPossible causes:"), "{reason}");
        assert!(j.notes.is_empty());
    }

    #[test]
    fn a_start_failure_without_engine_error_text_quotes_the_client() {
        let end = client(false, "docker: invalid spec");
        let j = judge_exit(&facts(&end), || {
            Ok(ContainerState {
                started_at: String::new(),
                ..Default::default()
            })
        });
        assert_eq!(
            j.outcome,
            Outcome::failed(
                "could not start container: docker start exited exit status 1: docker: invalid spec"
            )
        );
    }

    #[test]
    fn an_engine_that_cannot_tell_is_a_failure_quoting_the_client() {
        let end = client(false, "docker: Error: name in use");
        let j = judge_exit(&facts(&end), || Err("No such container".into()));
        assert_eq!(
            j.outcome,
            Outcome::failed(
                "the container was not created or cannot be inspected (docker start exited exit \
                 status 1): No such container\ndocker: Error: name in use"
            )
        );
    }

    /// Issue 10, point 7: a container that ran 10 s and was lost in a dockerd restart was
    /// said to be "not created or cannot be inspected".
    #[test]
    fn a_container_the_engine_lost_after_it_started_is_said_so() {
        let mut end = client(false, "error waiting for container: unexpected EOF");
        end.ran_for = Duration::from_millis(10_400);
        end.wrote_output = true;
        let engine_down = || Err("Cannot connect to the Docker daemon".to_string());
        let j = judge_exit(&facts(&end), engine_down);
        assert_eq!(
            j.outcome,
            Outcome::failed(
                "the container started and ran for 10s, then the engine lost it (docker start \
                 exited exit status 1; the engine cannot inspect it, it may have restarted: \
                 Cannot connect to the Docker daemon)\nerror waiting for container: unexpected EOF"
            )
        );
        end.wrote_output = false;
        let Outcome::Failed { reason, .. } = judge_exit(&facts(&end), engine_down).outcome else {
            panic!("not a failure");
        };
        assert!(
            reason.starts_with("docker start ran for 10s, then the engine lost it"),
            "{reason}"
        );
    }

    #[test]
    fn a_cancel_wins_and_the_engine_is_not_asked() {
        let end = client(true, "");
        let mut f = facts(&end);
        f.cancel = Some("caught signal SIGTERM");
        let j = judge_exit(&f, never_asked);
        assert_eq!(
            j.outcome,
            Outcome::Cancelled {
                reason: "caught signal SIGTERM".into(),
                exit_code: None
            }
        );
        assert!(j.notes.is_empty());
    }

    #[test]
    fn a_stuck_engine_is_a_failure_not_a_cancel() {
        let end = client(false, "");
        let mut f = facts(&end);
        f.cancel = Some("docker watchdog: gave up");
        f.engine_stuck = true;
        let j = judge_exit(&f, never_asked);
        assert_eq!(j.outcome, Outcome::failed("docker watchdog: gave up"));
    }
}
