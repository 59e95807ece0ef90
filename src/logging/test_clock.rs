//! A clock for tests: it stands still, steps by a fixed amount after each reading, or is
//! moved by the test, so that timestamps and throttling can be tested without sleeping.
//! Test-only: production code uses `timestamp::SystemClock`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::timestamp::Clock;

/// A clock for tests: starts at a given time, moves only when told to, or by `step` after
/// every reading (like the counter timestamper of the Go tests).
#[derive(Debug)]
pub struct TestClock {
    state: Mutex<(SystemTime, Duration)>,
}

impl TestClock {
    /// A clock standing still at `start`.
    pub fn new(start: SystemTime) -> TestClock {
        TestClock::with_step(start, Duration::ZERO)
    }

    /// A clock that reads `start` first and then advances by `step` after each reading.
    pub fn with_step(start: SystemTime, step: Duration) -> TestClock {
        TestClock {
            state: Mutex::new((start, step)),
        }
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += by;
    }

    /// Set the clock to `t`.
    pub fn set(&self, t: SystemTime) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = t;
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (t, step) = *state;
        state.0 = t + step;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn test_clock_steps_and_advances() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let c = TestClock::with_step(at(100), Duration::from_secs(1));
        assert_eq!(c.now(), at(100));
        assert_eq!(c.now(), at(101));
        c.advance(Duration::from_secs(10));
        assert_eq!(c.now(), at(112));
        c.set(at(5));
        assert_eq!(c.now(), at(5));
    }
}
