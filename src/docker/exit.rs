//! How a container ended, as the engine tells it: `docker inspect`'s `.State`, and the
//! reading of an exit code. What the ending means for the record is the lifecycle's to
//! decide (run/exit.rs).

use std::fmt;

use serde::Deserialize;

use crate::process::signal_name;

/// `docker inspect`'s `.State`, the source of truth for how a container ended.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "Running")]
    pub running: bool,
    #[serde(rename = "Dead")]
    pub dead: bool,
    #[serde(rename = "Pid")]
    pub pid: i64,
    #[serde(rename = "ExitCode")]
    pub exit_code: i64,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    #[serde(rename = "Error")]
    pub error: String,
    #[serde(rename = "StartedAt")]
    pub started_at: String,
    #[serde(rename = "FinishedAt")]
    pub finished_at: String,
}

impl ContainerState {
    /// The command never ran: docker reports Go's zero time as StartedAt.
    pub fn never_started(&self) -> bool {
        self.started_at.is_empty() || self.started_at.starts_with("0001-01-01")
    }
}

/// A container's exit code as docker reports it (`docker wait`, `.State.ExitCode`).
///
/// The code is the data (0, 1, 125, 137 all mean something to the user); this only adds the
/// reading "128+N means the process was killed by signal N".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    pub code: i64,
}

impl ContainerExit {
    pub fn new(code: i64) -> ContainerExit {
        ContainerExit { code }
    }

    /// The signal number if the code has the shape 128+N for a real signal number N.
    pub fn signal(self) -> Option<i32> {
        if (129..=128 + 64).contains(&self.code) {
            i32::try_from(self.code - 128).ok()
        } else {
            None
        }
    }
}

impl fmt::Display for ContainerExit {
    /// `Container exited with status code 137 (signal 9, SIGKILL)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Container exited with status code {}", self.code)?;
        match self.signal() {
            Some(sig) => match signal_name(sig) {
                Some(name) => write!(f, " (signal {sig}, {name})"),
                None => write!(f, " (signal {sig})"),
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_state_and_zero_start_time() {
        let json = r#"{"Status":"created","Running":false,"Paused":false,"Restarting":false,
            "OOMKilled":false,"Dead":false,"Pid":0,"ExitCode":127,
            "Error":"exec: \"/nonexistent\": stat /nonexistent: no such file or directory",
            "StartedAt":"0001-01-01T00:00:00Z","FinishedAt":"0001-01-01T00:00:00Z"}"#;
        let st: ContainerState = serde_json::from_str(json).unwrap();
        assert_eq!(st.exit_code, 127);
        assert!(st.never_started());
        assert!(st.error.contains("no such file"));
        let st: ContainerState = serde_json::from_str(
            r#"{"Status":"exited","OOMKilled":true,"ExitCode":137,"StartedAt":"2026-11-28T16:58:17.2Z"}"#,
        )
        .unwrap();
        assert!(st.oom_killed && !st.never_started());
    }

    #[test]
    fn exit_codes_decode_signals() {
        assert_eq!(
            ContainerExit::new(0).to_string(),
            "Container exited with status code 0"
        );
        assert_eq!(ContainerExit::new(1).signal(), None);
        assert_eq!(ContainerExit::new(128).signal(), None);
        assert_eq!(
            ContainerExit::new(137).to_string(),
            "Container exited with status code 137 (signal 9, SIGKILL)"
        );
        assert_eq!(
            ContainerExit::new(143).to_string(),
            "Container exited with status code 143 (signal 15, SIGTERM)"
        );
        assert_eq!(
            ContainerExit::new(162).to_string(),
            "Container exited with status code 162 (signal 34)"
        );
        assert_eq!(ContainerExit::new(255).signal(), None);
        assert_eq!(ContainerExit::new(-1).signal(), None);
    }
}
