//! The cadence of progress lines (progress.rs), from the environment: tests want it
//! faster than the 5 s and 30 s a person needs.

use std::collections::BTreeMap;

use super::UsageError;
use crate::progress::Cadence;

/// `CRUNCH_RUN_PROGRESS_INTERVALS`: the first progress line's delay and the interval of
/// the next ones (`FIRST,EVERY`, humantime durations); unset or empty: 5 s and 30 s.
pub(super) fn progress_cadence(env: &BTreeMap<String, String>) -> Result<Cadence, UsageError> {
    let Some(value) = env
        .get("CRUNCH_RUN_PROGRESS_INTERVALS")
        .filter(|v| !v.is_empty())
    else {
        return Ok(Cadence::default());
    };
    let bad = || {
        UsageError(format!(
            "CRUNCH_RUN_PROGRESS_INTERVALS={value:?}: want two durations, e.g. 5s,30s"
        ))
    };
    let (first, every) = value.split_once(',').ok_or_else(bad)?;
    let parse = |d: &str| humantime::parse_duration(d.trim()).map_err(|_| bad());
    Ok(Cadence {
        first: parse(first)?,
        every: parse(every)?.max(std::time::Duration::from_millis(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cadence(value: Option<&str>) -> Result<Cadence, UsageError> {
        let env = value
            .map(|v| ("CRUNCH_RUN_PROGRESS_INTERVALS".to_string(), v.to_string()))
            .into_iter()
            .collect();
        progress_cadence(&env)
    }

    #[test]
    fn the_intervals_default_to_five_and_thirty_seconds_and_can_be_set() {
        assert_eq!(cadence(None).unwrap(), Cadence::default());
        assert_eq!(cadence(Some("")).unwrap(), Cadence::default());
        let fast = cadence(Some("200ms, 1s")).unwrap();
        assert_eq!(fast.first, Duration::from_millis(200));
        assert_eq!(fast.every, Duration::from_secs(1));
        assert!(cadence(Some("5s")).is_err());
        assert!(cadence(Some("5s,often")).is_err());
    }
}
