//! A `LogsTable` on its own thread, fed without ever waiting: what it cannot take in time
//! is dropped, counted and reported.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{LogsTable, LogsTableStats};

/// A chunk of one stream for the logs table.
pub struct Chunk {
    /// `crunch-run`, `stdout`, `stderr`, …
    pub event_type: &'static str,
    /// Timestamped bytes, exactly as written to the Keep file.
    pub data: Vec<u8>,
    /// Bytes of this stream dropped since the previous chunk that got through.
    pub dropped_before: u64,
    /// `data` starts at a line start.
    pub at_line_start: bool,
}

/// What became of the logs table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsTableReport {
    pub posts: u64,
    pub failed_posts: u64,
    pub unposted_bytes: u64,
    /// False if the close deadline passed while the thread was still busy (e.g. a POST
    /// hanging); the thread is then left behind.
    pub finished: bool,
}

/// Poll interval of the sink thread for time-based POSTs.
const TICK: Duration = Duration::from_millis(100);

/// A `LogsTable` on its own thread, fed with `try_send`, and with `send_kept` for the few
/// lines that must not be lost (progress, the final state): those wait in a queue of
/// their own, with no bound, and pass the throttle (`LogsTable::write_kept`).
pub struct LogsTableSink {
    tx: Sender<Chunk>,
    kept: Sender<Chunk>,
    done: Receiver<()>,
    deadline: Arc<Mutex<Option<Instant>>>,
    stats: Arc<LogsTableStats>,
}

/// A sink whose streams are closed: it posts what they left, and then the kept lines
/// still sent to it (crunch-run's lines after the log closed), until `wait`.
pub struct ClosingSink {
    kept: Sender<Chunk>,
    done: Receiver<()>,
    deadline: Instant,
    stats: Arc<LogsTableStats>,
}

impl LogsTableSink {
    /// Start the thread. At most `queue` chunks wait for it; used chunk buffers are given
    /// back through `recycle` when there is one.
    pub fn start(
        table: LogsTable,
        queue: usize,
        recycle: Option<Sender<Vec<u8>>>,
    ) -> io::Result<LogsTableSink> {
        let (tx, rx) = crossbeam_channel::bounded::<Chunk>(queue.max(1));
        let (kept, kept_rx) = crossbeam_channel::unbounded::<Chunk>();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let deadline = Arc::new(Mutex::new(None::<Instant>));
        let stats = table.stats();
        let shared_deadline = Arc::clone(&deadline);
        thread::Builder::new()
            .name("logs-table".into())
            .spawn(move || {
                serve(table, &rx, &kept_rx, &shared_deadline, recycle);
                let _ = done_tx.send(());
            })?;
        Ok(LogsTableSink {
            tx,
            kept,
            done,
            deadline,
            stats,
        })
    }

    /// Hand over a chunk without waiting; gives it back if the queue is full (or the
    /// thread is gone).
    pub fn try_send(&self, chunk: Chunk) -> Result<(), Chunk> {
        self.tx.try_send(chunk).map_err(|e| match e {
            TrySendError::Full(c) | TrySendError::Disconnected(c) => c,
        })
    }

    /// Hand over whole lines that neither the queue nor the throttle may drop.
    pub fn send_kept(&self, chunk: Chunk) {
        let _ = self.kept.send(chunk);
    }

    /// Post what is queued and buffered, but start no POST after `deadline`, and wait for
    /// the thread no longer than that.
    pub fn close(self, deadline: Instant) -> LogsTableReport {
        self.begin_close(deadline).wait()
    }

    /// Close the streams without waiting: what is queued and buffered is posted meanwhile,
    /// no POST starting after `deadline`.
    pub fn begin_close(self, deadline: Instant) -> ClosingSink {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        drop(self.tx);
        ClosingSink {
            kept: self.kept,
            done: self.done,
            deadline,
            stats: self.stats,
        }
    }
}

impl ClosingSink {
    /// Post these lines after what the streams left (never throttled).
    pub fn send_kept(&self, chunk: Chunk) {
        let _ = self.kept.send(chunk);
    }

    /// What became of the logs table, waiting for its thread until the deadline.
    pub fn wait(self) -> LogsTableReport {
        let ClosingSink {
            kept,
            done,
            deadline,
            stats,
        } = self;
        drop(kept);
        let finished = done.recv_deadline(deadline).is_ok();
        LogsTableReport {
            posts: stats.posts.load(Ordering::Relaxed),
            failed_posts: stats.failed_posts.load(Ordering::Relaxed),
            unposted_bytes: stats.unposted_bytes.load(Ordering::Relaxed),
            finished,
        }
    }

    /// What the logs table lacks so far (as if it had finished).
    pub fn so_far(&self) -> LogsTableReport {
        LogsTableReport {
            posts: self.stats.posts.load(Ordering::Relaxed),
            failed_posts: self.stats.failed_posts.load(Ordering::Relaxed),
            unposted_bytes: self.stats.unposted_bytes.load(Ordering::Relaxed),
            finished: true,
        }
    }
}

/// The sink's thread: chunks until the streams close, then what they left, then the kept
/// lines sent after, until those close too.
fn serve(
    mut table: LogsTable,
    rx: &Receiver<Chunk>,
    kept_rx: &Receiver<Chunk>,
    deadline: &Mutex<Option<Instant>>,
    recycle: Option<Sender<Vec<u8>>>,
) {
    let set_deadline = |table: &mut LogsTable| {
        if let Some(d) = *deadline.lock().unwrap_or_else(|e| e.into_inner()) {
            table.set_deadline(d);
        }
    };
    let never = crossbeam_channel::never();
    let mut kept_open = true;
    loop {
        let mut streams_closed = false;
        crossbeam_channel::select! {
            recv(rx) -> chunk => match chunk {
                Ok(chunk) => {
                    set_deadline(&mut table);
                    if chunk.dropped_before > 0 {
                        table.gap(chunk.event_type, chunk.dropped_before, chunk.at_line_start);
                    }
                    table.write(chunk.event_type, &chunk.data);
                    if let Some(r) = &recycle {
                        let mut data = chunk.data;
                        data.clear();
                        let _ = r.try_send(data);
                    }
                }
                Err(_) => streams_closed = true,
            },
            recv(if kept_open { kept_rx } else { &never }) -> chunk => match chunk {
                Ok(chunk) => table.write_kept(chunk.event_type, &chunk.data),
                Err(_) => kept_open = false,
            },
            default(TICK) => {}
        }
        if streams_closed {
            break;
        }
        table.tick();
    }
    set_deadline(&mut table);
    // Kept lines sent before the close go first, in order.
    while let Ok(chunk) = kept_rx.try_recv() {
        table.write_kept(chunk.event_type, &chunk.data);
    }
    table.close();
    while let Ok(chunk) = kept_rx.recv() {
        table.write_kept(chunk.event_type, &chunk.data);
        table.flush_all();
    }
}

#[cfg(test)]
mod tests {
    use super::super::LogsTableConfig;
    use super::super::tests::{TS, t, table};
    use super::*;
    use crate::logging::test_clock::TestClock;
    use crate::rfc3339::format_timestamp;
    use crate::store::memory::MemoryStore;

    fn chunk(event_type: &'static str, s: &str, dropped_before: u64, at_line_start: bool) -> Chunk {
        Chunk {
            event_type,
            data: s.as_bytes().to_vec(),
            dropped_before,
            at_line_start,
        }
    }

    #[test]
    fn sink_reports_dropped_bytes_as_skipped() {
        let api = Arc::new(MemoryStore::new());
        let clock = Arc::new(TestClock::new(t(0)));
        let sink = LogsTableSink::start(
            table(api.clone(), clock, LogsTableConfig::default()),
            4,
            None,
        )
        .unwrap();
        assert!(
            sink.try_send(chunk("stdout", &format!("{TS} one\n"), 0, true))
                .is_ok()
        );
        assert!(
            sink.try_send(chunk("stdout", &format!("{TS} three\n"), 17, true))
                .is_ok()
        );
        let report = sink.close(Instant::now() + Duration::from_secs(5));
        assert!(report.finished);
        assert_eq!(report.posts, 1);
        assert_eq!(
            api.texts("stdout"),
            vec![format!(
                "{TS} one\n{} Skipped 17 bytes of log\n{TS} three\n",
                format_timestamp(t(0))
            )]
        );
    }

    #[test]
    fn a_hanging_api_never_blocks_the_sender_and_close_gives_up_at_the_deadline() {
        let mut store = MemoryStore::new();
        store.hang_logs = Some(Duration::from_secs(30));
        let api = Arc::new(store);
        let clock = Arc::new(TestClock::new(t(0)));
        let cfg = LogsTableConfig {
            bytes_per_event: 1,
            ..LogsTableConfig::default()
        };
        let sink = LogsTableSink::start(table(api.clone(), clock, cfg), 2, None).unwrap();
        let started = Instant::now();
        let mut refused = 0;
        for i in 0..100 {
            if sink
                .try_send(chunk("stdout", &format!("{TS} {i}\n"), 0, true))
                .is_err()
            {
                refused += 1;
            }
        }
        assert!(refused >= 90, "only {refused} chunks refused");
        let report = sink.close(Instant::now() + Duration::from_millis(200));
        assert!(!report.finished);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(api.logs.lock().unwrap().is_empty());
    }

    #[test]
    fn sink_gives_used_buffers_back() {
        let api = Arc::new(MemoryStore::new());
        let clock = Arc::new(TestClock::new(t(0)));
        let (recycle_tx, recycle_rx) = crossbeam_channel::bounded(4);
        let sink = LogsTableSink::start(
            table(api, clock, LogsTableConfig::default()),
            4,
            Some(recycle_tx),
        )
        .unwrap();
        assert!(
            sink.try_send(chunk("stdout", &format!("{TS} x\n"), 0, true))
                .is_ok()
        );
        let buf = recycle_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(buf.is_empty() && buf.capacity() > 0);
        assert!(sink.close(Instant::now() + Duration::from_secs(5)).finished);
    }
}
