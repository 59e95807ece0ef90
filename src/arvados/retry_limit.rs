//! One limit over every retry of a run (issue 10, point 5): a moment after which no retry
//! waits for another attempt, whatever its own deadline says, and the one voice that says
//! a retry is under way.
//!
//! The run sets the moment when its wrap-up begins (one deadline for the whole wrap-up,
//! not one per call) and brings it forward when a signal comes (a short grace period).
//! Waits between attempts wake at once when the moment moves. Retries report their
//! failures here; the first is said at once, then one every `REPORT_EVERY`, naming what
//! fails and how long it will be tried.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a retry under way is said, after its first failure.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Who hears about retries under way (a line for crunch-run.txt and stderr).
pub type Reporter = Arc<dyn Fn(&str) + Send + Sync>;

/// Shared by every client of one run; cheap to clone. The default sets no limit.
#[derive(Clone, Default)]
pub struct RetryLimit(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<LimitState>,
    moved: Condvar,
}

#[derive(Default)]
struct LimitState {
    until: Option<Instant>,
    reporter: Option<Reporter>,
    last_report: Option<Instant>,
}

impl std::fmt::Debug for RetryLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLimit")
            .field("until", &self.until())
            .finish()
    }
}

impl PartialEq for RetryLimit {
    fn eq(&self, other: &RetryLimit) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for RetryLimit {}

impl RetryLimit {
    fn lock(&self) -> MutexGuard<'_, LimitState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The moment no retry waits past, if one is set.
    pub fn until(&self) -> Option<Instant> {
        self.lock().until
    }

    /// No retry waits past `until` from now on; an earlier limit stays. Wakes the waits
    /// under way, which then measure against it.
    pub fn limit_to(&self, until: Instant) {
        let mut state = self.lock();
        state.until = Some(state.until.map_or(until, |u| u.min(until)));
        drop(state);
        self.0.moved.notify_all();
    }

    /// Who hears about retries from now on.
    pub fn set_reporter(&self, reporter: Reporter) {
        self.lock().reporter = Some(reporter);
    }

    /// How long one attempt may take: until the limit, at least a second (one last try
    /// after the limit passed); None without a limit.
    pub(crate) fn time_left(&self) -> Option<Duration> {
        let left = self.until()?.saturating_duration_since(Instant::now());
        Some(left.max(Duration::from_secs(1)))
    }

    /// The earlier of a retry's own end and the limit.
    pub(crate) fn end_of(&self, own_end: Instant) -> Instant {
        self.until().map_or(own_end, |u| u.min(own_end))
    }

    /// Sleep `wait`, or less when the limit moves meanwhile.
    pub(crate) fn sleep(&self, wait: Duration) {
        let start = Instant::now();
        let mut state = self.lock();
        let until = state.until;
        while state.until == until {
            let left = wait.saturating_sub(start.elapsed());
            if left.is_zero() {
                return;
            }
            state = match self.0.moved.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// `what` failed with `message` and will be tried again until `end`: said the first
    /// time, then at most every `REPORT_EVERY`.
    pub(crate) fn report(&self, what: &str, message: &str, end: Instant) {
        let reporter = {
            let mut state = self.lock();
            let now = Instant::now();
            let due = state
                .last_report
                .is_none_or(|last| now.duration_since(last) >= REPORT_EVERY);
            if !due {
                return;
            }
            state.last_report = Some(now);
            state.reporter.clone()
        };
        let left = end.saturating_duration_since(Instant::now());
        let line = format!(
            "{what} failed ({message}); retrying for up to {} more",
            humantime::format_duration(Duration::from_secs(left.as_secs().max(1)))
        );
        match reporter {
            Some(say) => say(&line),
            None => eprintln!("crunch-run: {line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[test]
    fn the_earliest_limit_holds() {
        let limit = RetryLimit::default();
        assert_eq!(limit.until(), None);
        let now = Instant::now();
        limit.limit_to(now + Duration::from_secs(60));
        limit.limit_to(now + Duration::from_secs(5));
        limit.limit_to(now + Duration::from_secs(30));
        assert_eq!(limit.until(), Some(now + Duration::from_secs(5)));
        assert_eq!(
            limit.end_of(now + Duration::from_secs(600)),
            now + Duration::from_secs(5)
        );
        assert_eq!(limit.end_of(now), now);
    }

    #[test]
    fn a_moved_limit_wakes_a_sleeping_retry() {
        let limit = RetryLimit::default();
        let mover = limit.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            mover.limit_to(Instant::now());
        });
        let start = Instant::now();
        limit.sleep(Duration::from_secs(30));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        t.join().unwrap();
        let start = Instant::now();
        limit.sleep(Duration::from_millis(50));
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn reports_the_first_failure_then_every_30_seconds() {
        let heard = Arc::new(StdMutex::new(Vec::<String>::new()));
        let limit = RetryLimit::default();
        let h = heard.clone();
        limit.set_reporter(Arc::new(move |l: &str| h.lock().unwrap().push(l.into())));
        let end = Instant::now() + Duration::from_secs(90);
        limit.report("PUT /arvados/v1/containers/x", "connection refused", end);
        limit.report("PUT /arvados/v1/containers/x", "connection refused", end);
        let heard = heard.lock().unwrap();
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert!(
            heard[0].starts_with(
                "PUT /arvados/v1/containers/x failed (connection refused); retrying for up to 1m"
            ),
            "{heard:?}"
        );
    }
}
