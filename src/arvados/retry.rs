//! Retrying HTTP requests: the policy (exponential backoff up to a deadline), what one
//! attempt came to, which failures are worth another try, and the loop that retries one
//! request against one server (reference §2.1).
//!
//! The API client retries with `retry_loop`. Keep, which asks several servers in turn,
//! drives its own rounds over them with the same `Attempt` and the same policy. Building
//! requests and reading answers is left to those two.

use std::time::{Duration, Instant};

pub use crate::arvados::retry_limit::RetryLimit;
use crate::arvados::tls::failure_of;
use crate::store::StoreError;

/// How long to keep retrying, and how long to wait between tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure; doubles after each further failure.
    pub initial_backoff: Duration,
    /// Upper bound of one wait.
    pub max_backoff: Duration,
    /// No new attempt starts once this long has passed since the first one.
    pub deadline: Duration,
    /// The run's limit over every retry (the wrap-up's deadline), and who hears of them.
    pub limit: RetryLimit,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
            limit: RetryLimit::default(),
        }
    }
}

impl RetryPolicy {
    /// The wait after failure number `failures` (0-based): `initial * 2^failures`, at most
    /// `max_backoff`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// The wait before the next attempt, or `None` if that attempt would start after the
    /// deadline (counted from `started`) or the run's limit.
    pub fn next_wait(&self, started: Instant, failures: u32) -> Option<Duration> {
        let wait = self.backoff(failures);
        if Instant::now() + wait > self.end(started) {
            None
        } else {
            Some(wait)
        }
    }

    /// When retries that started at `started` stop: their deadline, or the run's limit.
    pub fn end(&self, started: Instant) -> Instant {
        self.limit.end_of(started + self.deadline)
    }

    /// Say that `what` failed with `message` and is being retried (as often as the
    /// limit's reporter wants it), then wait `wait`, less if the limit moves meanwhile.
    pub(crate) fn pause(&self, started: Instant, wait: Duration, what: &str, message: &str) {
        self.limit.report(what, message, self.end(started));
        self.limit.sleep(wait);
    }
}

/// What one HTTP attempt against one server came to.
pub(crate) enum Attempt<T> {
    Done(T),
    /// The server does not have it (HTTP 404).
    NotFound,
    /// Worth asking again after a wait. `status` is the HTTP status if there was one.
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// This server will not do it, however often asked (a 4xx, a TLS failure, an answer
    /// that makes no sense); another server might.
    Refused {
        status: Option<u16>,
        message: String,
    },
    /// Stop altogether: a local failure, or data that must not be trusted.
    Fatal(StoreError),
}

impl<T> Attempt<T> {
    /// The attempt that failed with this transport error.
    pub(crate) fn from_transport(err: &ureq::Error) -> Attempt<T> {
        // A TLS failure is one sentence of its own; ureq's wrapping would only add noise.
        let message = match (failure_of(err), err) {
            (Some(tls), _) => tls.to_string(),
            // rustls words it with a link to its manual, for a server that only hung up.
            (None, ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the server closed the connection without answering".to_string()
            }
            (None, _) => err.to_string(),
        };
        if is_transient_error(err) {
            Attempt::Transient {
                status: None,
                message,
            }
        } else {
            Attempt::Refused {
                status: None,
                message,
            }
        }
    }

    /// The attempt answered with this unsuccessful status (not 404, which callers read as
    /// `NotFound` where it means that), described by `message`.
    pub(crate) fn from_status(status: u16, message: String) -> Attempt<T> {
        if is_transient_status(status) {
            Attempt::Transient {
                status: Some(status),
                message,
            }
        } else {
            Attempt::Refused {
                status: Some(status),
                message,
            }
        }
    }
}

/// Whether an HTTP status is worth retrying: 408, 429, 5xx except 501.
pub(crate) fn is_transient_status(status: u16) -> bool {
    status == 408 || status == 429 || (status >= 500 && status != 501)
}

/// Whether a transport error is worth retrying. Bad URLs and TLS problems are not: a failed
/// handshake comes as `tls::TlsFailure` inside `Error::Other`, and rustls reports a broken
/// TLS stream later on as an `InvalidData` I/O error.
pub(crate) fn is_transient_error(err: &ureq::Error) -> bool {
    match err {
        ureq::Error::Io(e) => e.kind() != std::io::ErrorKind::InvalidData,
        ureq::Error::Timeout(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_)
        | ureq::Error::BodyStalled => true,
        _ => false,
    }
}

/// Run `attempt` until it is done or fails for good, or the policy's deadline passes,
/// waiting the backoff between tries. A refusal with an HTTP status becomes Rejected, one
/// without (the server could not be talked to) Unavailable; when giving up, the last
/// transient failure becomes the same, with the number of attempts.
pub(crate) fn retry_loop<T>(
    policy: &RetryPolicy,
    what: &str,
    mut attempt: impl FnMut() -> Attempt<T>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        let (status, message) = match attempt() {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fatal(e) => return Err(e),
            Attempt::NotFound => {
                return Err(StoreError::NotFound {
                    what: what.to_string(),
                });
            }
            Attempt::Refused { status, message } => return Err(failed(what, status, message)),
            Attempt::Transient { status, message } => (status, message),
        };
        match policy.next_wait(started, failures) {
            Some(wait) => {
                failures += 1;
                policy.pause(started, wait, what, &message);
            }
            None => {
                let tries = failures + 1;
                let message = format!("{message} (gave up after {tries} attempts)");
                return Err(failed(what, status, message));
            }
        }
    }
}

/// Rejected when the server answered with `status`, Unavailable when it never answered.
fn failed(what: &str, status: Option<u16>, message: String) -> StoreError {
    let what = what.to_string();
    match status {
        Some(status) => StoreError::Rejected {
            what,
            status,
            message,
        },
        None => StoreError::Unavailable { what, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = (0..8).map(|i| p.backoff(i).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(p.backoff(1000), Duration::from_secs(30));
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            deadline: Duration::from_millis(300),
            limit: Default::default(),
        };
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(250));
        let started = Instant::now();
        assert_eq!(p.next_wait(started, 0), Some(Duration::from_millis(100)));
        assert_eq!(p.next_wait(started, 2), Some(Duration::from_millis(250)));
        if let Some(earlier) = started.checked_sub(Duration::from_millis(100)) {
            // 100 ms gone + 250 ms wait > 300 ms deadline.
            assert_eq!(p.next_wait(earlier, 2), None);
            assert_eq!(p.next_wait(earlier, 0), Some(Duration::from_millis(100)));
        }
    }

    #[test]
    fn a_connection_closed_unanswered_is_transient_and_said_plainly() {
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/",
        );
        match Attempt::<()>::from_transport(&ureq::Error::Io(eof)) {
            Attempt::Transient { message, .. } => {
                assert_eq!(
                    message,
                    "the server closed the connection without answering"
                )
            }
            _ => panic!("not transient"),
        }
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(s), "{s}");
            assert!(matches!(
                Attempt::<()>::from_status(s, String::new()),
                Attempt::Transient { status: Some(x), .. } if x == s
            ));
        }
        for s in [400, 401, 403, 404, 409, 422, 501] {
            assert!(!is_transient_status(s), "{s}");
            assert!(matches!(
                Attempt::<()>::from_status(s, String::new()),
                Attempt::Refused { status: Some(x), .. } if x == s
            ));
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            deadline: Duration::from_millis(50),
            limit: Default::default(),
        }
    }

    #[test]
    fn the_loop_retries_only_transient_failures() {
        let mut calls = 0;
        let got = retry_loop(&fast(), "GET /x", || {
            calls += 1;
            if calls < 3 {
                Attempt::from_status(503, "busy".into())
            } else {
                Attempt::Done(calls)
            }
        });
        assert_eq!(got.unwrap(), 3);

        let mut calls = 0;
        let err = retry_loop::<()>(&fast(), "GET /x", || {
            calls += 1;
            Attempt::from_status(422, "no".into())
        })
        .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(err.to_string(), "GET /x: HTTP 422: no");

        let err = retry_loop::<()>(&fast(), "GET /y", || Attempt::NotFound).unwrap_err();
        assert_eq!(err.to_string(), "GET /y: not found");

        let refused = Attempt::Refused {
            status: None,
            message: "bad certificate".into(),
        };
        let mut once = Some(refused);
        let err = retry_loop::<()>(&fast(), "GET /z", || once.take().unwrap()).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    }

    #[test]
    fn giving_up_names_the_last_failure_and_the_attempts() {
        let err = retry_loop::<()>(&fast(), "GET /x", || Attempt::Transient {
            status: None,
            message: "connection refused".into(),
        })
        .unwrap_err();
        match err {
            StoreError::Unavailable { what, message } => {
                assert_eq!(what, "GET /x");
                assert!(message.starts_with("connection refused (gave up after "));
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = retry_loop::<()>(&fast(), "GET /x", || {
            Attempt::from_status(502, "bad gateway".into())
        })
        .unwrap_err();
        assert!(
            matches!(err, StoreError::Rejected { status: 502, .. }),
            "{err:?}"
        );
    }
}
