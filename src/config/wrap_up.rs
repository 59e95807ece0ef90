//! How long the wrap-up after the container ended may take (issue 10, point 5): in all,
//! and once a signal came. What the limits do is run/deadline.rs's to say.

use std::time::Duration;

use clap::Args as FlagGroup;

/// `--wrap-up-deadline`, `--wrap-up-grace`.
#[derive(Debug, Clone, FlagGroup)]
pub struct WrapUpFlags {
    /// How long the wrap-up after the container ended (saving the output and the logs, the
    /// final update, removing the container) may take in all, retries included, e.g. "10m".
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wrap_up_deadline: Duration,

    /// How long the wrap-up goes on after SIGTERM, SIGINT or SIGQUIT came during it; then
    /// the run exits non-zero, keeping the logs it could not save.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wrap_up_grace: Duration,
}

impl WrapUpFlags {
    pub fn limits(&self) -> WrapUpLimits {
        WrapUpLimits {
            deadline: self.wrap_up_deadline,
            grace: self.wrap_up_grace,
        }
    }
}

/// The wrap-up's deadline, and what is left of it after a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrapUpLimits {
    pub deadline: Duration,
    pub grace: Duration,
}

impl Default for WrapUpLimits {
    fn default() -> WrapUpLimits {
        WrapUpLimits {
            deadline: Duration::from_secs(600),
            grace: Duration::from_secs(10),
        }
    }
}
