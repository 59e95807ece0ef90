// Time and connections as the fake Arvados (fake_arvados.rs) sees them: a latency every
// request waits before it is handled, the start and end of every request (API and Keep)
// on one clock, the TCP connections each server accepted, and what those say about a run:
// how many requests were on its critical path.
//
// Kept apart from fake_arvados.rs, which only calls `Timing::serve_one` around each
// request, `responding` as it answers and `Timing::accepted` per connection, so the API
// rules there stay about HTTP.
//
// The critical path, defined so that a test and `make bench` can compute it from the
// log alone: a request is on it when the run waited for it. From the server we see
// only times, so requests that were in flight together are taken as one wait: the
// critical path is the number of *stretches*, maximal spans of time in which at least
// one request was in flight (requests that overlap, even through a third one, belong to
// one stretch). A request that runs in the background across two stretches joins them,
// so the count is a lower bound; `longest_chain`, the most requests of which each
// started after the one before ended, is the upper bound (it counts background
// requests that nothing waited for).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http_server::Request;

/// The request this thread handles, logged when its answer starts.
struct Pending {
    log: Arc<Mutex<Vec<Timed>>>,
    epoch: Instant,
    timed: Timed,
}

impl Pending {
    fn log(mut self) {
        self.timed.end = self.epoch.elapsed();
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.timed);
    }
}

thread_local! {
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Say that the answer to this thread's request is about to be sent: it ends, and is
/// logged, now rather than once the answer is written. A client may get the answer and
/// send its next request (or exit) before the handler's thread runs again; that request
/// must not seem to overlap the one it waited for, nor the log miss the last one.
pub fn responding() {
    if let Some(pending) = PENDING.with(|p| p.borrow_mut().take()) {
        pending.log();
    }
}

/// One request, on the fake's clock (time since it started).
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// "api", "keep0", "keep1".
    pub server: String,
    pub method: String,
    /// The path without the query, as sent; a Keep locator's signature is cut off.
    pub path: String,
    /// The TCP connection it came on (numbered per server from 0, in accept order).
    pub conn: u64,
    /// When that connection was accepted.
    pub conn_opened: Duration,
    pub start: Duration,
    pub end: Duration,
}

/// What a run's request log says.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSummary {
    pub requests: usize,
    /// Stretches of time with a request in flight: the critical path (see the header).
    pub critical_path: usize,
    /// The longest chain of requests each started after the one before ended.
    pub longest_chain: usize,
    /// The requests of each stretch, "METHOD server path", in start order.
    pub stretches: Vec<Vec<String>>,
}

/// Latency, request log and connection counts of one fake cluster.
#[derive(Default)]
pub struct Timing {
    epoch: Option<Instant>,
    latency_nanos: AtomicU64,
    log: Arc<Mutex<Vec<Timed>>>,
    /// Per server name: connections accepted.
    accepts: Mutex<Vec<(String, u64)>>,
    /// Server name, connection number and when it was accepted.
    opened: Mutex<Vec<(String, u64, Duration)>>,
}

impl Timing {
    pub fn new() -> Arc<Timing> {
        Arc::new(Timing {
            epoch: Some(Instant::now()),
            ..Default::default()
        })
    }

    fn now(&self) -> Duration {
        self.epoch.map(|e| e.elapsed()).unwrap_or_default()
    }

    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::SeqCst);
    }

    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::SeqCst))
    }

    /// Count one accepted TCP connection (one TLS handshake) to `server`; returns its
    /// number on that server.
    pub fn accepted(&self, server: &str) -> u64 {
        let mut accepts = self.accepts.lock().unwrap_or_else(|e| e.into_inner());
        let number = match accepts.iter_mut().find(|(s, _)| s == server) {
            Some((_, n)) => {
                *n += 1;
                *n - 1
            }
            None => {
                accepts.push((server.to_string(), 1));
                0
            }
        };
        self.opened.lock().unwrap_or_else(|e| e.into_inner()).push((
            server.to_string(),
            number,
            self.now(),
        ));
        number
    }

    fn opened_at(&self, server: &str, conn: u64) -> Option<Duration> {
        let opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        opened
            .iter()
            .rev()
            .find(|(s, n, _)| s == server && *n == conn)
            .map(|(_, _, at)| *at)
    }

    /// Handle one request of `server` with `handle`, after the latency, and log it.
    /// `conn` is the connection's number, from its peer address (see `ConnNumbers`).
    pub fn serve_one(&self, server: &str, conn: u64, rq: Request, handle: impl FnOnce(Request)) {
        let start = self.now();
        let method = rq.method().to_string().to_ascii_uppercase();
        let url = rq.url();
        let path = url.split('?').next().unwrap_or(url);
        // A signed locator's +A hint is a credential-like blob: keep hash+size only.
        let path = match path.split_once("+A") {
            Some((bare, _)) => bare.to_string(),
            None => path.to_string(),
        };
        let latency = self.latency();
        if !latency.is_zero() {
            thread::sleep(latency);
        }
        let pending = Pending {
            log: self.log.clone(),
            epoch: self.epoch.unwrap_or_else(Instant::now),
            timed: Timed {
                server: server.to_string(),
                method,
                path,
                conn,
                conn_opened: self.opened_at(server, conn).unwrap_or(start),
                start,
                end: start,
            },
        };
        PENDING.with(|p| *p.borrow_mut() = Some(pending));
        handle(rq);
        // A handler that never answered through `send` ends here.
        responding();
    }

    /// The requests handled so far, by start time.
    pub fn timeline(&self) -> Vec<Timed> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        log.sort_by_key(|t| t.start);
        log
    }

    /// Connections accepted so far, per server name, by name.
    pub fn connections(&self) -> Vec<(String, u64)> {
        let mut c = self
            .accepts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        c.sort();
        c
    }

    /// Forget the requests and connections so far (a new run starts).
    pub fn reset(&self) {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.accepts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Numbers for the relay connections to one HTTPS server: the fake's front accepts a
/// client and opens one backend connection for it, whose local port the handler sees as
/// the request's peer. The front registers each backend port with its client's number.
#[derive(Default, Clone)]
pub struct ConnNumbers(Arc<Mutex<Vec<(u16, u64)>>>);

impl ConnNumbers {
    pub fn register(&self, backend_port: u16, number: u64) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|(p, _)| *p != backend_port);
        v.push((backend_port, number));
    }

    pub fn number(&self, rq: &Request) -> u64 {
        let port = rq.remote_addr().map(|a| a.port()).unwrap_or(0);
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .rev()
            .find(|(p, _)| *p == port)
            .map(|(_, n)| *n)
            .unwrap_or(u64::MAX)
    }
}

/// The critical path of a request log (see the header).
pub fn summarize(timeline: &[Timed]) -> PathSummary {
    let mut sorted: Vec<&Timed> = timeline.iter().collect();
    sorted.sort_by_key(|t| t.start);
    let mut stretches: Vec<Vec<String>> = Vec::new();
    let mut stretch_end = Duration::ZERO;
    for t in &sorted {
        let name = format!("{} {} {}", t.method, t.server, t.path);
        match stretches.last_mut() {
            Some(s) if t.start < stretch_end => s.push(name),
            _ => stretches.push(vec![name]),
        }
        stretch_end = stretch_end.max(t.end);
    }
    PathSummary {
        requests: timeline.len(),
        critical_path: stretches.len(),
        longest_chain: longest_chain(&sorted),
        stretches,
    }
}

/// The most requests of which each started after the one before ended: greedy by
/// earliest end (interval scheduling).
fn longest_chain(timeline: &[&Timed]) -> usize {
    let mut by_end: Vec<&&Timed> = timeline.iter().collect();
    by_end.sort_by_key(|t| t.end);
    let mut count = 0;
    let mut last_end: Option<Duration> = None;
    for t in by_end {
        if last_end.is_none_or(|e| t.start >= e) {
            count += 1;
            last_end = Some(t.end);
        }
    }
    count
}

/// The most requests to `server` that were in flight at one time: how many connections
/// a client that reuses its idle connections needs to that server. The client took a
/// request's connection before the fake saw the request: the first request on a
/// connection is taken to start when the connection was accepted (its TLS handshake came
/// between), and every request `lead` earlier still (the client's checkout and connect).
pub fn peak_in_flight(timeline: &[Timed], server: &str, lead: Duration) -> usize {
    let first_on_conn = |t: &Timed| {
        !timeline
            .iter()
            .any(|o| o.server == t.server && o.conn == t.conn && o.start < t.start)
    };
    let taken = |t: &Timed| match first_on_conn(t) {
        true => t.start.min(t.conn_opened),
        false => t.start,
    };
    // Ends sort before starts at the same instant: a connection freed can be taken again.
    let mut edges: Vec<(Duration, i32)> = timeline
        .iter()
        .filter(|t| t.server == server)
        .flat_map(|t| [(taken(t).saturating_sub(lead), 1), (t.end, -1)])
        .collect();
    edges.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// The log and its summary as JSON (for `make bench`), times in milliseconds.
pub fn timeline_json(timeline: &[Timed], connections: &[(String, u64)]) -> Value {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    let summary = summarize(timeline);
    json!({
        "requests": timeline.iter().map(|t| json!({
            "server": t.server, "method": t.method, "path": t.path, "conn": t.conn,
            "start_ms": ms(t.start), "end_ms": ms(t.end),
        })).collect::<Vec<_>>(),
        "connections": connections.iter().map(|(s, n)| (s.clone(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "critical_path": summary.critical_path,
        "longest_chain": summary.longest_chain,
        "stretches": summary.stretches,
    })
}
