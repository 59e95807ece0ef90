//! What happened to the container, what the wrap-up managed to save, and the one place that
//! combines them into the record's final state and the fields of its updates (reference
//! §2.5, §5.2a).
//!
//! The outcome is judged once (run/exit.rs, or the step that stopped the run early) and
//! never rewritten. The wrap-up's results (`WrapUp`: the output saved or why not, the log
//! saved or why not) are inputs here, never edits of the outcome: `final_state` decides the
//! state from all three, and `RecordProgress::permits` is the one set of rules for which
//! fields an update may carry.

use serde_json::{Map, Value, json};

use crate::arvados::container::State;

/// What happened to the container, decided once and then only reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The user's command ran and exited with this code (any code: it is data).
    Exited { code: i64 },
    /// A signal (or the run-time limit) asked us to stop; the container was removed.
    Cancelled {
        reason: String,
        exit_code: Option<i64>,
    },
    /// Something other than the user's command failed (record, image, engine, Keep, API).
    Failed {
        reason: String,
        exit_code: Option<i64>,
    },
    /// Before Running, something that is not the container's fault stopped the run (the
    /// engine, this node, the API, a signal): the record goes back to the queue (the
    /// API's unlock) so that another worker runs it (reference §5.2a).
    Requeue { reason: String },
}

impl Outcome {
    /// A failure with no exit code, worded for crunch-run.txt and the record.
    pub fn failed(reason: impl Into<String>) -> Outcome {
        Outcome::Failed {
            reason: reason.into(),
            exit_code: None,
        }
    }
}

/// One result of the wrap-up: a collection saved, or why not.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    /// Nothing to save (no output directory), or not tried (the container did not exit).
    Nothing,
    /// Saved, with this portable data hash.
    As(String),
    /// Saving failed: why, worded for the record.
    Failed(String),
}

impl Saved {
    fn pdh(&self) -> Option<&str> {
        match self {
            Saved::As(pdh) => Some(pdh),
            _ => None,
        }
    }

    fn failure(&self) -> Option<&str> {
        match self {
            Saved::Failed(why) => Some(why),
            _ => None,
        }
    }
}

/// What the wrap-up saved: `final_update` combines it with the outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct WrapUp {
    pub output: Saved,
    pub log: Saved,
}

/// How far the record got: decides which fields the API lets us send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordProgress {
    /// The record was Queued when we found it: the 2016 API, with its narrower rules.
    pub legacy_api: bool,
    /// We set the record to Running.
    pub running: bool,
}

/// The fields besides `state` that an update may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permitted {
    pub log: bool,
    pub exit_code: bool,
    pub output: bool,
    pub runtime_status: bool,
    /// The instance's price × run time (reference §5.2: Go sends it with every end).
    pub cost: bool,
}

impl RecordProgress {
    /// What the API lets an update that leaves the record in `state` carry (for
    /// `State::Running`: an update while it runs, e.g. the early exit code or the logs so
    /// far). Reference §2.5; the 2016 API took less.
    pub fn permits(self, state: State) -> Permitted {
        let complete = state == State::Complete;
        match (self.legacy_api, self.running, state) {
            // Back to the queue: the API's unlock, which takes no fields.
            (_, _, State::Queued) => Permitted::default(),
            // 2016 API: Queued→Cancelled takes nothing else, nor may a Running record
            // change; Running→Cancelled takes log, Running→Complete log, exit code, output.
            (true, false, _) | (true, true, State::Running) => Permitted::default(),
            (true, true, _) => Permitted {
                log: true,
                exit_code: complete,
                output: complete,
                runtime_status: false,
                cost: false,
            },
            // Current API: Locked→Cancelled takes log and runtime_status; a Running record
            // takes log and exit_code, and on its way out runtime_status and output too.
            (false, false, _) => Permitted {
                log: true,
                runtime_status: true,
                cost: true,
                ..Permitted::default()
            },
            (false, true, State::Running) => Permitted {
                log: true,
                exit_code: true,
                ..Permitted::default()
            },
            (false, true, _) => Permitted {
                log: true,
                exit_code: true,
                output: complete,
                runtime_status: true,
                cost: true,
            },
        }
    }
}

/// The state a run ends in, and the `runtime_status` entry that says why when it is not
/// the one the outcome alone would give: `("warning" | "error", reason)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalState {
    pub state: State,
    pub status: Option<(&'static str, String)>,
}

/// The final state of `outcome` after `wrapup`. A container that exited ends Complete
/// only if the record reached Running and nothing of the wrap-up failed; every failure
/// says why. A wrap-up result not known yet is `Saved::Nothing`: the state is then the one
/// it would be if that save worked.
pub fn final_state(outcome: &Outcome, progress: RecordProgress, wrapup: &WrapUp) -> FinalState {
    let status = |key, reason: &str| Some((key, reason.to_string()));
    match outcome {
        Outcome::Exited { .. } => {
            let failures: Vec<&str> = [&wrapup.output, &wrapup.log]
                .into_iter()
                .filter_map(Saved::failure)
                .collect();
            match (progress.running, failures.is_empty()) {
                (true, true) => FinalState {
                    state: State::Complete,
                    status: None,
                },
                // A record that never reached Running cannot become Complete.
                (false, true) => FinalState {
                    state: State::Cancelled,
                    status: None,
                },
                (_, false) => FinalState {
                    state: State::Cancelled,
                    status: status("error", &failures.join("\n")),
                },
            }
        }
        Outcome::Cancelled { reason, .. } => FinalState {
            state: State::Cancelled,
            status: status("warning", reason),
        },
        Outcome::Failed { reason, .. } => FinalState {
            state: State::Cancelled,
            status: status("error", reason),
        },
        // Back to the queue only from before Running: the API lets a Running record end
        // only Complete or Cancelled.
        Outcome::Requeue { .. } if !progress.running => FinalState {
            state: State::Queued,
            status: None,
        },
        Outcome::Requeue { reason } => FinalState {
            state: State::Cancelled,
            status: status("error", reason),
        },
    }
}

fn exit_code(outcome: &Outcome) -> Option<i64> {
    match outcome {
        Outcome::Exited { code } => Some(*code),
        Outcome::Cancelled { exit_code, .. } | Outcome::Failed { exit_code, .. } => *exit_code,
        Outcome::Requeue { .. } => None,
    }
}

/// The final update: the state from `final_state`, and the fields the API permits then.
pub fn final_update(
    outcome: &Outcome,
    progress: RecordProgress,
    wrapup: &WrapUp,
) -> Map<String, Value> {
    let FinalState { state, status } = final_state(outcome, progress, wrapup);
    let permitted = progress.permits(state);
    let mut fields = Map::new();
    fields.insert("state".into(), json!(state.as_str()));
    if let (true, Some(pdh)) = (permitted.output, wrapup.output.pdh()) {
        fields.insert("output".into(), json!(pdh));
    }
    if let (true, Some(pdh)) = (permitted.log, wrapup.log.pdh()) {
        fields.insert("log".into(), json!(pdh));
    }
    if permitted.exit_code {
        fields.insert("exit_code".into(), json!(exit_code(outcome)));
    }
    if let (true, Some((key, reason))) = (permitted.runtime_status, status) {
        fields.insert("runtime_status".into(), runtime_status(key, &reason));
    }
    fields
}

/// Add the run's `cost` (the instance's price × run time, run/prices.rs) to a final update,
/// when it is known and the update may carry it: not the unlock, not the 2016 API.
pub fn add_cost(fields: &mut Map<String, Value>, progress: RecordProgress, cost: Option<f64>) {
    let state = fields
        .get("state")
        .and_then(Value::as_str)
        .and_then(State::parse);
    if let (Some(state), Some(cost)) = (state, cost)
        && progress.permits(state).cost
        && cost.is_finite()
    {
        fields.insert("cost".into(), json!(cost));
    }
}

/// The exit code of a container that exited, sent while the record is still Running so
/// that it survives crunch-run dying before the final update (as Go crunch-run does).
/// None when there is none, or the API does not take it.
pub fn exit_code_update(outcome: &Outcome, progress: RecordProgress) -> Option<Map<String, Value>> {
    let code = match outcome {
        Outcome::Exited { code } => *code,
        _ => return None,
    };
    progress
        .permits(State::Running)
        .exit_code
        .then(|| Map::from_iter([("exit_code".to_string(), json!(code))]))
}

fn runtime_status(key: &str, reason: &str) -> Value {
    let mut rs = Map::new();
    rs.insert(key.into(), json!(first_line(reason)));
    if reason.contains('\n') || reason.len() > 200 {
        rs.insert(format!("{key}Detail"), json!(reason));
    }
    Value::Object(rs)
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.len() > 200 {
        let mut cut = 200;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &line[..cut])
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(legacy_api: bool, running: bool) -> RecordProgress {
        RecordProgress {
            legacy_api,
            running,
        }
    }

    fn saved(log: &str) -> WrapUp {
        WrapUp {
            output: Saved::Nothing,
            log: Saved::As(log.into()),
        }
    }

    fn keys(f: &Map<String, Value>) -> Vec<&str> {
        f.keys().map(String::as_str).collect()
    }

    #[test]
    fn exit_codes_are_data() {
        for code in [0, 1, 125, 126, 127, 137] {
            let f = final_update(
                &Outcome::Exited { code },
                progress(false, true),
                &saved("x+1"),
            );
            assert_eq!(f["state"], "Complete");
            assert_eq!(f["exit_code"], code);
            assert_eq!(f["log"], "x+1");
            assert!(!f.contains_key("runtime_status"));
        }
    }

    #[test]
    fn the_output_goes_with_complete_only() {
        let wrapup = WrapUp {
            output: Saved::As("out+1".into()),
            log: Saved::As("log+1".into()),
        };
        let f = final_update(&Outcome::Exited { code: 0 }, progress(false, true), &wrapup);
        assert_eq!(keys(&f), ["exit_code", "log", "output", "state"]);
        assert_eq!(f["output"], "out+1");
        let cancelled = Outcome::Cancelled {
            reason: "caught signal SIGTERM".into(),
            exit_code: Some(143),
        };
        let f = final_update(&cancelled, progress(false, true), &wrapup);
        assert!(!f.contains_key("output"), "{f:?}");
        assert_eq!(f["exit_code"], 143);
    }

    #[test]
    fn a_failed_output_save_cancels_with_the_exit_code_and_the_reason() {
        let wrapup = WrapUp {
            output: Saved::Failed("saving the output collection failed: 503".into()),
            log: Saved::As("log+1".into()),
        };
        let f = final_update(&Outcome::Exited { code: 3 }, progress(false, true), &wrapup);
        assert_eq!(f["state"], "Cancelled");
        assert_eq!(f["exit_code"], 3);
        assert_eq!(f["log"], "log+1");
        assert_eq!(
            f["runtime_status"]["error"],
            "saving the output collection failed: 503"
        );
    }

    #[test]
    fn a_failed_log_save_cancels_and_sends_no_log() {
        let wrapup = WrapUp {
            output: Saved::As("out+1".into()),
            log: Saved::Failed("Saving the log collection failed: 503".into()),
        };
        let f = final_update(&Outcome::Exited { code: 0 }, progress(false, true), &wrapup);
        assert_eq!(keys(&f), ["exit_code", "runtime_status", "state"]);
        assert_eq!(f["state"], "Cancelled");
        assert_eq!(f["exit_code"], 0);
        assert_eq!(
            f["runtime_status"]["error"],
            "Saving the log collection failed: 503"
        );
    }

    #[test]
    fn both_saves_failing_say_both() {
        let wrapup = WrapUp {
            output: Saved::Failed("output: no".into()),
            log: Saved::Failed("log: no".into()),
        };
        let f = final_update(&Outcome::Exited { code: 0 }, progress(false, true), &wrapup);
        assert_eq!(f["runtime_status"]["error"], "output: no");
        assert_eq!(f["runtime_status"]["errorDetail"], "output: no\nlog: no");
    }

    #[test]
    fn a_wrapup_result_not_known_yet_counts_as_saved() {
        let pending = WrapUp {
            output: Saved::As("out+1".into()),
            log: Saved::Nothing,
        };
        let exited = Outcome::Exited { code: 0 };
        let state = final_state(&exited, progress(false, true), &pending);
        assert_eq!(state.state, State::Complete);
        let failed_output = WrapUp {
            output: Saved::Failed("no".into()),
            log: Saved::Nothing,
        };
        let state = final_state(&exited, progress(false, true), &failed_output);
        assert_eq!(state.state, State::Cancelled);
    }

    #[test]
    fn failure_before_running_cancels_with_log_and_reason_but_no_exit_code() {
        let f = final_update(
            &Outcome::failed("image collection x was not found"),
            progress(false, false),
            &saved("x+1"),
        );
        assert_eq!(f["state"], "Cancelled");
        assert_eq!(f["log"], "x+1");
        assert!(!f.contains_key("exit_code"));
        assert_eq!(
            f["runtime_status"]["error"],
            "image collection x was not found"
        );
    }

    #[test]
    fn signal_after_running_is_a_warning_not_an_error() {
        let f = final_update(
            &Outcome::Cancelled {
                reason: "caught signal SIGTERM".into(),
                exit_code: None,
            },
            progress(false, true),
            &saved("x+1"),
        );
        assert_eq!(f["state"], "Cancelled");
        assert_eq!(f["exit_code"], Value::Null);
        assert_eq!(f["runtime_status"]["warning"], "caught signal SIGTERM");
    }

    #[test]
    fn legacy_api_gets_only_what_it_permitted() {
        let f = final_update(&Outcome::failed("x"), progress(true, false), &saved("x+1"));
        assert_eq!(f.len(), 1, "{f:?}");
        let f = final_update(
            &Outcome::Cancelled {
                reason: "x".into(),
                exit_code: Some(1),
            },
            progress(true, true),
            &saved("x+1"),
        );
        assert_eq!(keys(&f), ["log", "state"]);
        let f = final_update(
            &Outcome::Exited { code: 3 },
            progress(true, true),
            &saved("x+1"),
        );
        assert_eq!(f["exit_code"], 3);
    }

    #[test]
    fn the_early_exit_code_follows_the_same_rules() {
        let exited = Outcome::Exited { code: 7 };
        let early = exit_code_update(&exited, progress(false, true)).unwrap();
        assert_eq!(early, Map::from_iter([("exit_code".to_string(), json!(7))]));
        assert_eq!(exit_code_update(&exited, progress(true, true)), None);
        assert_eq!(
            exit_code_update(&Outcome::failed("x"), progress(false, true)),
            None
        );
        // The logs so far may be saved while it runs under the current API only.
        assert!(progress(false, true).permits(State::Running).log);
        assert!(!progress(true, true).permits(State::Running).log);
    }

    #[test]
    fn a_requeue_before_running_is_queued_with_nothing_else_and_after_it_cancels() {
        let requeue = Outcome::Requeue {
            reason: "docker engine is unreachable".into(),
        };
        for legacy in [false, true] {
            let f = final_update(&requeue, progress(legacy, false), &saved("x+1"));
            assert_eq!(keys(&f), ["state"], "{f:?}");
            assert_eq!(f["state"], "Queued");
        }
        // A Running record can only end Cancelled: the reason is an error then.
        let f = final_update(&requeue, progress(false, true), &saved("x+1"));
        assert_eq!(f["state"], "Cancelled");
        assert_eq!(f["exit_code"], Value::Null);
        assert_eq!(f["runtime_status"]["error"], "docker engine is unreachable");
    }

    #[test]
    fn the_cost_goes_where_the_api_takes_it() {
        let mut f = final_update(
            &Outcome::Exited { code: 0 },
            progress(false, true),
            &saved("x+1"),
        );
        add_cost(&mut f, progress(false, true), Some(0.25));
        assert_eq!(f["cost"], 0.25);
        let mut f = final_update(&Outcome::failed("x"), progress(false, false), &saved("x+1"));
        add_cost(&mut f, progress(false, false), Some(0.5));
        assert_eq!(f["cost"], 0.5, "Locked→Cancelled takes it");
        let requeue = Outcome::Requeue { reason: "x".into() };
        let mut f = final_update(&requeue, progress(false, false), &saved("x+1"));
        add_cost(&mut f, progress(false, false), Some(0.5));
        assert!(!f.contains_key("cost"), "the unlock takes nothing");
        let mut f = final_update(
            &Outcome::Exited { code: 0 },
            progress(true, true),
            &saved("x+1"),
        );
        add_cost(&mut f, progress(true, true), Some(0.5));
        assert!(!f.contains_key("cost"), "the 2016 API had no cost");
        let mut f = final_update(
            &Outcome::Exited { code: 0 },
            progress(false, true),
            &saved("x+1"),
        );
        add_cost(&mut f, progress(false, true), None);
        assert!(!f.contains_key("cost"), "an unknown price sends none");
    }

    #[test]
    fn long_reasons_keep_their_detail() {
        let reason = "could not start container: exec failed\nPossible causes: …";
        let f = final_update(
            &Outcome::failed(reason),
            progress(false, true),
            &WrapUp {
                output: Saved::Nothing,
                log: Saved::Nothing,
            },
        );
        assert_eq!(
            f["runtime_status"]["error"],
            "could not start container: exec failed"
        );
        assert_eq!(f["runtime_status"]["errorDetail"], reason);
    }
}
