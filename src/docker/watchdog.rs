//! The docker watchdog: while `docker start` is attached, ask the engine every so often
//! whether the container is still there and running. A hung engine, or a client that hangs
//! on after its container stopped, would otherwise keep crunch-run waiting for ever; after
//! `STRIKES_TO_GIVE_UP` failed checks in a row the watchdog gives up, and the lifecycle cancels
//! the run with the watchdog's reason.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::{ContainerState, DockerError};

/// Failed checks in a row before the watchdog gives up (as in Go crunch-run).
pub const STRIKES_TO_GIVE_UP: u32 = 5;

/// What one check concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// A failed check, worth a log line.
    Strike(String),
    /// Enough failed checks in a row: the reason to cancel the run.
    GiveUp(String),
}

/// Counts failed checks in a row.
#[derive(Debug, Default)]
pub struct Strikes(u32);

impl Strikes {
    /// Judge one `docker inspect` of the container, made while `docker start` is attached.
    pub fn judge(&mut self, check: Result<ContainerState, DockerError>) -> Verdict {
        let problem = match check {
            // "created": docker start may still be starting it.
            Ok(state) if state.running || state.status == "created" => {
                self.0 = 0;
                return Verdict::Fine;
            }
            Ok(state) => format!(
                "the container is {} but docker start has not returned",
                state.status
            ),
            Err(e) => format!("cannot inspect the container: {e}"),
        };
        self.0 += 1;
        if self.0 >= STRIKES_TO_GIVE_UP {
            Verdict::GiveUp(format!(
                "docker watchdog: {problem}; {} checks in a row failed",
                self.0
            ))
        } else {
            Verdict::Strike(format!(
                "docker watchdog: {problem} (failed check {} of {STRIKES_TO_GIVE_UP})",
                self.0
            ))
        }
    }
}

/// Run `check` every `interval` until `stop` disconnects or the watchdog gives up: each
/// failed check goes to `say`, and the reason for giving up to `give_up`.
pub fn watch(
    interval: Duration,
    stop: &Receiver<()>,
    mut check: impl FnMut() -> Result<ContainerState, DockerError>,
    say: impl Fn(&str),
    give_up: impl FnOnce(String),
) {
    let mut strikes = Strikes::default();
    while stop.recv_timeout(interval) == Err(RecvTimeoutError::Timeout) {
        let checked = check();
        // The client may have returned while the check ran: then the check says nothing.
        if stop.try_recv() == Err(TryRecvError::Disconnected) {
            return;
        }
        match strikes.judge(checked) {
            Verdict::Fine => {}
            Verdict::Strike(line) => say(&line),
            Verdict::GiveUp(reason) => return give_up(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn state(status: &str) -> Result<ContainerState, DockerError> {
        Ok(ContainerState {
            status: status.into(),
            running: status == "running",
            ..Default::default()
        })
    }

    fn hung() -> Result<ContainerState, DockerError> {
        Err(DockerError::Timeout {
            op: "container inspect",
            timeout: Duration::from_secs(180),
            stderr: String::new(),
        })
    }

    #[test]
    fn running_and_created_containers_are_fine() {
        let mut strikes = Strikes::default();
        assert_eq!(strikes.judge(state("created")), Verdict::Fine);
        assert_eq!(strikes.judge(state("running")), Verdict::Fine);
    }

    #[test]
    fn gives_up_after_five_failed_checks_in_a_row() {
        let mut strikes = Strikes::default();
        for n in 1..STRIKES_TO_GIVE_UP {
            let Verdict::Strike(line) = strikes.judge(state("exited")) else {
                panic!("check {n} gave up too early");
            };
            assert!(line.contains("the container is exited but docker start has not returned"));
            assert!(
                line.ends_with(&format!("(failed check {n} of 5)")),
                "{line}"
            );
        }
        let Verdict::GiveUp(reason) = strikes.judge(hung()) else {
            panic!("the fifth failed check did not give up");
        };
        assert!(reason.starts_with("docker watchdog: cannot inspect the container: "));
        assert!(reason.ends_with("5 checks in a row failed"), "{reason}");
    }

    #[test]
    fn a_good_check_starts_the_count_again() {
        let mut strikes = Strikes::default();
        for _ in 1..STRIKES_TO_GIVE_UP {
            strikes.judge(hung());
        }
        assert_eq!(strikes.judge(state("running")), Verdict::Fine);
        assert!(matches!(strikes.judge(hung()), Verdict::Strike(_)));
    }

    #[test]
    fn watch_checks_until_it_gives_up() {
        let (_keep_open, stop) = crossbeam_channel::bounded::<()>(0);
        let said = RefCell::new(Vec::new());
        let mut given_up = None;
        let mut checks = 0;
        watch(
            Duration::from_millis(1),
            &stop,
            || {
                checks += 1;
                if checks <= 2 {
                    state("running")
                } else {
                    state("dead")
                }
            },
            |line| said.borrow_mut().push(line.to_string()),
            |reason| given_up = Some(reason),
        );
        assert_eq!(checks, 2 + STRIKES_TO_GIVE_UP);
        assert_eq!(said.borrow().len(), 4);
        assert!(given_up.unwrap().contains("the container is dead"));
    }

    #[test]
    fn a_check_that_ends_after_the_stop_is_ignored() {
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let stop_tx = RefCell::new(Some(stop_tx));
        watch(
            Duration::from_millis(1),
            &stop,
            || {
                stop_tx.borrow_mut().take();
                hung()
            },
            |line| panic!("said {line}"),
            |_| panic!("gave up"),
        );
    }

    #[test]
    fn watch_stops_when_told() {
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        let mut checked = false;
        watch(
            Duration::from_secs(3600),
            &stop,
            || {
                checked = true;
                hung()
            },
            |_| {},
            |_| panic!("gave up"),
        );
        assert!(!checked);
    }
}
