//! What happened to the container, and the one place that turns it into the fields of the
//! final update (reference §2.5, §5.2a).

use serde_json::{Map, Value, json};

use crate::arvados::container::State;

/// What happened to the container, decided once and then only reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The user's command ran and exited with this code (any code: it is data); `output`
    /// is the PDH of its output collection once saved.
    Exited { code: i64, output: Option<String> },
    /// A signal asked us to stop; the container was removed.
    Cancelled {
        reason: String,
        exit_code: Option<i64>,
    },
    /// Something other than the user's command failed (record, image, engine, Keep, API).
    Failed {
        reason: String,
        exit_code: Option<i64>,
    },
}

/// How far the record got: decides which fields the API lets us send at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordProgress {
    /// The record was Queued when we found it: the 2016 API, with its narrower rules.
    pub legacy_api: bool,
    /// We set the record to Running.
    pub running: bool,
}

/// The final update for an outcome. `log` is the PDH of the saved log collection, if any.
pub fn final_update(
    outcome: &Outcome,
    progress: RecordProgress,
    log: Option<&str>,
) -> Map<String, Value> {
    let mut fields = Map::new();
    let (state, exit_code, status) = match outcome {
        Outcome::Exited { code, .. } => (State::Complete, Some(*code), None),
        Outcome::Cancelled { reason, exit_code } => {
            (State::Cancelled, *exit_code, Some(("warning", reason)))
        }
        Outcome::Failed { reason, exit_code } => {
            (State::Cancelled, *exit_code, Some(("error", reason)))
        }
    };
    // A record that never reached Running cannot become Complete.
    let state = if progress.running {
        state
    } else {
        State::Cancelled
    };
    fields.insert("state".into(), json!(state.as_str()));
    if let (
        State::Complete,
        Outcome::Exited {
            output: Some(pdh), ..
        },
    ) = (state, outcome)
    {
        fields.insert("output".into(), json!(pdh));
    }
    match (progress.legacy_api, progress.running) {
        // 2016 API: Queued→Cancelled takes nothing else; Running→Cancelled takes log (and
        // output) but not exit_code; Running→Complete takes log and exit_code.
        (true, false) => {}
        (true, true) => {
            if let Some(log) = log {
                fields.insert("log".into(), json!(log));
            }
            if state == State::Complete {
                fields.insert("exit_code".into(), json!(exit_code));
            }
        }
        // Current API: Locked→Cancelled takes log and runtime_status; from Running,
        // Complete and Cancelled both take log, exit_code and runtime_status.
        (false, running) => {
            if let Some(log) = log {
                fields.insert("log".into(), json!(log));
            }
            if running {
                fields.insert("exit_code".into(), json!(exit_code));
            }
            if let Some((key, reason)) = status {
                let mut rs = Map::new();
                rs.insert(key.into(), json!(first_line(reason)));
                if reason.contains('\n') || reason.len() > 200 {
                    rs.insert(format!("{key}Detail"), json!(reason));
                }
                fields.insert("runtime_status".into(), Value::Object(rs));
            }
        }
    }
    fields
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

    #[test]
    fn exit_codes_are_data() {
        for code in [0, 1, 125, 126, 127, 137] {
            let f = final_update(
                &Outcome::Exited { code, output: None },
                progress(false, true),
                Some("x+1"),
            );
            assert_eq!(f["state"], "Complete");
            assert_eq!(f["exit_code"], code);
            assert_eq!(f["log"], "x+1");
            assert!(!f.contains_key("runtime_status"));
        }
    }

    #[test]
    fn failure_before_running_cancels_with_log_and_reason_but_no_exit_code() {
        let f = final_update(
            &Outcome::Failed {
                reason: "image collection x was not found".into(),
                exit_code: None,
            },
            progress(false, false),
            Some("x+1"),
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
            Some("x+1"),
        );
        assert_eq!(f["state"], "Cancelled");
        assert_eq!(f["exit_code"], Value::Null);
        assert_eq!(f["runtime_status"]["warning"], "caught signal SIGTERM");
    }

    #[test]
    fn legacy_api_gets_only_what_it_permitted() {
        let f = final_update(
            &Outcome::Failed {
                reason: "x".into(),
                exit_code: None,
            },
            progress(true, false),
            Some("x+1"),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        let f = final_update(
            &Outcome::Cancelled {
                reason: "x".into(),
                exit_code: Some(1),
            },
            progress(true, true),
            Some("x+1"),
        );
        assert_eq!(f.keys().collect::<Vec<_>>(), ["log", "state"]);
        let f = final_update(
            &Outcome::Exited {
                code: 3,
                output: None,
            },
            progress(true, true),
            Some("x+1"),
        );
        assert_eq!(f["exit_code"], 3);
    }

    #[test]
    fn long_reasons_keep_their_detail() {
        let reason = "could not start container: exec failed\nPossible causes: …";
        let f = final_update(
            &Outcome::Failed {
                reason: reason.into(),
                exit_code: None,
            },
            progress(false, true),
            None,
        );
        assert_eq!(
            f["runtime_status"]["error"],
            "could not start container: exec failed"
        );
        assert_eq!(f["runtime_status"]["errorDetail"], reason);
    }
}
