// Per-call faults for the fault matrix (issue 10, point 7, docs/faults.md): a connection
// reset or a slow answer for one API call (method and path prefix) or one Keep method,
// beside fake_arvados.rs's status faults (`fail_api`, `fail_keep`) and whole-server
// faults (`set_api_down`, `set_keep_down`).
//
//   reset_api(method, path_prefix, Times)   the connection is dropped, unanswered
//   slow_api(method, path_prefix, Duration, Times)
//   reset_keep(method, Times)               "GET" (also HEAD) or "PUT", every service
//   slow_keep(method, Duration, Times)
//
// A reset shuts down every open connection of that server (the one carrying the request
// among them) before the request is handled: the client sees its connection closed with
// no answer, as after a proxy or server crash, and nothing was done.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{FakeArvados, Times, times_left};

/// What to do with one request before handling it.
pub(super) enum Action {
    Handle,
    Delay(Duration),
    Reset,
}

#[derive(Clone, Copy)]
enum Kind {
    Reset,
    Delay(Duration),
}

struct Rule {
    keep: bool,
    method: String,
    prefix: String,
    kind: Kind,
    remaining: Option<usize>,
}

#[derive(Default)]
pub(super) struct Faults {
    rules: Vec<Rule>,
}

impl Faults {
    /// The first rule for this request that has not run out (a HEAD counts as a GET).
    pub(super) fn action(&mut self, keep: bool, method: &str, path: &str) -> Action {
        let method = if method == "HEAD" { "GET" } else { method };
        let rule = self.rules.iter_mut().find(|r| {
            r.keep == keep
                && (r.method == "*" || r.method == method)
                && path.starts_with(r.prefix.as_str())
                && r.remaining != Some(0)
        });
        let Some(rule) = rule else {
            return Action::Handle;
        };
        if let Some(n) = rule.remaining.as_mut() {
            *n -= 1;
        }
        match rule.kind {
            Kind::Reset => Action::Reset,
            Kind::Delay(d) => Action::Delay(d),
        }
    }

    pub(super) fn clear(&mut self) {
        self.rules.clear();
    }
}

/// The open connections of one server's front, to reset.
pub(super) type Conns = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Shut down every open connection of a front.
pub(super) fn reset_all(conns: &Conns) {
    let mut conns = conns.lock().unwrap_or_else(|e| e.into_inner());
    for (_, c) in conns.drain() {
        let _ = c.shutdown(Shutdown::Both);
    }
}

impl FakeArvados {
    fn add_rule(&self, keep: bool, method: &str, prefix: &str, kind: Kind, times: Times) {
        self.shared.lock().faults.rules.push(Rule {
            keep,
            method: method.to_ascii_uppercase(),
            prefix: prefix.to_string(),
            kind,
            remaining: times_left(times),
        });
    }

    /// Drop the connection of matching API requests (method or "*", path prefix) unanswered.
    pub fn reset_api(&self, method: &str, path_prefix: &str, times: Times) {
        self.add_rule(false, method, path_prefix, Kind::Reset, times);
    }

    /// Answer matching API requests only after `delay`.
    pub fn slow_api(&self, method: &str, path_prefix: &str, delay: Duration, times: Times) {
        self.add_rule(false, method, path_prefix, Kind::Delay(delay), times);
    }

    /// Drop the connection of Keep `method` requests ("GET", "PUT" or "*") unanswered.
    pub fn reset_keep(&self, method: &str, times: Times) {
        self.add_rule(true, method, "/", Kind::Reset, times);
    }

    /// Answer Keep `method` requests only after `delay`.
    pub fn slow_keep(&self, method: &str, delay: Duration, times: Times) {
        self.add_rule(true, method, "/", Kind::Delay(delay), times);
    }
}
