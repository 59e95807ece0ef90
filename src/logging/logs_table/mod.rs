//! The live view of the logs in the API logs table (`ApiStore::create_log`).
//!
//! Small pieces, each testable without threads or sleeping (time comes from an injected
//! `Clock`):
//! - `splitter::LineSplitter` cuts the timestamped byte stream into logs-table lines of at
//!   most 4096 bytes of text, marking the cuts with `[...]` as the bytes arrive (a huge
//!   line is never held whole);
//! - `throttle::Throttle` applies the Arvados limits (reference §1.5) with their exact
//!   messages;
//! - `LogsTable`, here, batches the lines of each stream into at most one POST per second
//!   (or one as soon as 4 KiB is waiting).
//!
//! `sink::LogsTableSink` runs a `LogsTable` on its own thread. The pipeline hands it data
//! with `try_send`: when the API is slow or hangs the data is dropped and counted, and the
//! next chunk that gets through carries the count, reported as `Skipped N bytes of log`.
//! The container and the Keep copy never wait for the logs table. Text is made from bytes
//! with `String::from_utf8_lossy` here and only here; the Keep files stay byte-exact.

mod sink;
mod splitter;
mod throttle;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::timestamp::Clock;
use crate::store::ApiStore;
pub use sink::{Chunk, ClosingSink, LogsTableReport, LogsTableSink};
use splitter::{LineSplitter, Piece};
use throttle::Throttle;

/// Limits of the logs table; `Default` gives the Arvados defaults (discovery keys in
/// comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsTableConfig {
    /// crunchLimitLogBytesPerJob: after this many bytes a stream is cut off for good.
    pub limit_bytes_per_job: u64,
    /// crunchLogThrottleBytes: bytes per throttle period.
    pub throttle_bytes: u64,
    /// crunchLogThrottleLines: lines per throttle period.
    pub throttle_lines: u64,
    /// crunchLogThrottlePeriod.
    pub throttle_period: Duration,
    /// crunchLogPartialLineThrottlePeriod: one middle segment of a long line per period.
    pub partial_line_period: Duration,
    /// crunchLogBytesPerEvent: POST as soon as this much text is waiting.
    pub bytes_per_event: usize,
    /// crunchLogSecondsBetweenEvents: otherwise POST at most this often.
    pub seconds_between_events: Duration,
    /// Longest logs-table line (text after the timestamp) before it is split (MaxLogLine).
    pub max_line: usize,
}

impl Default for LogsTableConfig {
    fn default() -> Self {
        LogsTableConfig {
            limit_bytes_per_job: 67_108_864,
            throttle_bytes: 65_536,
            throttle_lines: 1024,
            throttle_period: Duration::from_secs(60),
            partial_line_period: Duration::from_secs(5),
            bytes_per_event: 4096,
            seconds_between_events: Duration::from_secs(1),
            max_line: 4096,
        }
    }
}

/// Counters of a logs table, readable while its thread runs.
#[derive(Debug, Default)]
pub struct LogsTableStats {
    pub posts: AtomicU64,
    pub failed_posts: AtomicU64,
    /// Text bytes that failed to post or were not posted before the close deadline.
    pub unposted_bytes: AtomicU64,
}

/// One stream's state in the logs table.
struct StreamState {
    event_type: &'static str,
    splitter: LineSplitter,
    throttle: Throttle,
    /// Text waiting to be posted.
    batch: Vec<u8>,
    last_post: SystemTime,
}

/// The logs table of one container: per stream, split, throttle and batch the timestamped
/// bytes, and POST the batches through `ApiStore::create_log`. Synchronous: the thread
/// that calls it does the POSTs.
pub struct LogsTable {
    api: Arc<dyn ApiStore>,
    object_uuid: String,
    clock: Arc<dyn Clock>,
    cfg: LogsTableConfig,
    streams: Vec<StreamState>,
    stats: Arc<LogsTableStats>,
    /// No POST is started after this instant.
    deadline: Option<Instant>,
}

impl LogsTable {
    pub fn new(
        api: Arc<dyn ApiStore>,
        object_uuid: String,
        clock: Arc<dyn Clock>,
        cfg: LogsTableConfig,
    ) -> LogsTable {
        LogsTable {
            api,
            object_uuid,
            clock,
            cfg,
            streams: Vec::new(),
            stats: Arc::new(LogsTableStats::default()),
            deadline: None,
        }
    }

    pub fn stats(&self) -> Arc<LogsTableStats> {
        Arc::clone(&self.stats)
    }

    /// Stop posting after `deadline` (what is left is counted as unposted).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    fn stream_index(&mut self, event_type: &'static str) -> usize {
        if let Some(i) = self.streams.iter().position(|s| s.event_type == event_type) {
            return i;
        }
        self.streams.push(StreamState {
            event_type,
            splitter: LineSplitter::new(self.cfg.max_line),
            throttle: Throttle::new(self.cfg),
            batch: Vec::with_capacity(2 * self.cfg.bytes_per_event),
            last_post: self.clock.now(),
        });
        self.streams.len() - 1
    }

    /// Timestamped bytes of a stream, in order.
    pub fn write(&mut self, event_type: &'static str, mut data: &[u8]) {
        let i = self.stream_index(event_type);
        let s = &mut self.streams[i];
        if s.throttle.is_silenced(self.clock.now()) {
            // Fast path: whole lines that the throttle would skip are only counted.
            if let Some((n, skipped)) = s.splitter.discard_lines(data) {
                s.throttle.add_skipped(skipped);
                data = &data[n..];
            }
        }
        self.feed(i, |splitter, emit| splitter.feed(data, emit));
    }

    /// `dropped` bytes of the stream were lost before the next `write`, which starts at a
    /// line start or not.
    pub fn gap(&mut self, event_type: &'static str, dropped: u64, at_line_start: bool) {
        let i = self.stream_index(event_type);
        self.feed(i, |splitter, emit| {
            splitter.gap(dropped, at_line_start, emit)
        });
    }

    /// Run the splitter of stream `i`, throttle what it emits into the batch, and POST
    /// whenever a full event's worth of text is waiting.
    fn feed(&mut self, i: usize, run: impl FnOnce(&mut LineSplitter, &mut dyn FnMut(Piece<'_>))) {
        let now = self.clock.now();
        let mut full = Vec::new();
        {
            let StreamState {
                splitter,
                throttle,
                batch,
                ..
            } = &mut self.streams[i];
            let bytes_per_event = self.cfg.bytes_per_event;
            run(splitter, &mut |piece| {
                match piece {
                    Piece::Line(line) => throttle.admit(line, now, batch),
                    Piece::Skipped(n) => throttle.lost(n, now, batch),
                }
                if batch.len() >= bytes_per_event {
                    // Keep at most one event's worth in RAM: post it now.
                    full.push(std::mem::take(batch));
                }
            });
        }
        for text in full {
            self.post(i, &text, now);
        }
    }

    /// Whole timestamped lines that the throttle must not drop (progress lines, the final
    /// state): into the stream's batch as they are, posted with it.
    pub fn write_kept(&mut self, event_type: &'static str, data: &[u8]) {
        let i = self.stream_index(event_type);
        let now = self.clock.now();
        let batch = &mut self.streams[i].batch;
        batch.extend_from_slice(data);
        if !data.ends_with(b"\n") {
            batch.push(b'\n');
        }
        if batch.len() >= self.cfg.bytes_per_event {
            self.flush(i, now);
        }
    }

    /// POST every batch now.
    pub fn flush_all(&mut self) {
        let now = self.clock.now();
        for i in 0..self.streams.len() {
            self.flush(i, now);
        }
    }

    /// POST what waits in streams whose last POST is `seconds_between_events` ago.
    pub fn tick(&mut self) {
        let now = self.clock.now();
        for i in 0..self.streams.len() {
            let s = &self.streams[i];
            let due = now
                .duration_since(s.last_post)
                .is_ok_and(|d| d >= self.cfg.seconds_between_events);
            if due && !s.batch.is_empty() {
                self.flush(i, now);
            }
        }
    }

    /// End of all streams: unfinished lines and pending skip counts go out, then every
    /// batch is posted (unless past the deadline).
    pub fn close(&mut self) {
        let now = self.clock.now();
        for s in &mut self.streams {
            let StreamState {
                splitter,
                throttle,
                batch,
                ..
            } = s;
            splitter.finish(&mut |piece| match piece {
                Piece::Line(line) => throttle.admit(line, now, batch),
                Piece::Skipped(n) => throttle.lost(n, now, batch),
            });
            throttle.report_skipped(now, batch);
        }
        // The streams' last batches at once, a thread each: at the end of a run they are
        // several round trips otherwise, and the last line's POST queues behind them.
        let batches: Vec<(&'static str, Vec<u8>)> = self
            .streams
            .iter_mut()
            .filter(|s| !s.batch.is_empty())
            .map(|s| {
                s.last_post = now;
                (s.event_type, std::mem::take(&mut s.batch))
            })
            .collect();
        let this = &*self;
        std::thread::scope(|scope| {
            for (event_type, text) in &batches {
                let spawned = std::thread::Builder::new()
                    .name("logs-table-post".into())
                    .spawn_scoped(scope, move || this.send(event_type, text));
                if spawned.is_err() {
                    this.send(event_type, text);
                }
            }
        });
    }

    fn flush(&mut self, i: usize, now: SystemTime) {
        let mut text = std::mem::take(&mut self.streams[i].batch);
        if !text.is_empty() {
            self.post(i, &text, now);
        }
        // Keep the allocation for the next batch.
        text.clear();
        self.streams[i].batch = text;
    }

    fn post(&mut self, i: usize, text: &[u8], now: SystemTime) {
        self.streams[i].last_post = now;
        self.send(self.streams[i].event_type, text);
    }

    /// POST `text` as one entry of `event_type`, unless past the deadline; counted.
    fn send(&self, event_type: &str, text: &[u8]) {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stats
                .unposted_bytes
                .fetch_add(text.len() as u64, Ordering::Relaxed);
            return;
        }
        let text = String::from_utf8_lossy(text);
        match self.api.create_log(&self.object_uuid, event_type, &text) {
            Ok(()) => {
                self.stats.posts.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.failed_posts.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .unposted_bytes
                    .fetch_add(text.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::test_clock::TestClock;
    use crate::rfc3339::format_timestamp;
    use crate::store::memory::MemoryStore;
    use std::time::UNIX_EPOCH;

    const T0: u64 = 1_451_404_305; // 2015-12-29T15:51:45Z
    /// The timestamp of `t(0)`, as the tests' lines carry it.
    pub(super) const TS: &str = "2015-12-29T15:51:45.000000001Z";

    /// `secs` seconds after the tests' start time.
    pub(super) fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::new(T0 + secs, 1)
    }

    pub(super) fn table(
        api: Arc<MemoryStore>,
        clock: Arc<TestClock>,
        cfg: LogsTableConfig,
    ) -> LogsTable {
        LogsTable::new(api, "zzzzz-dz642-xxxxxxxxxxxxxxx".into(), clock, cfg)
    }

    #[test]
    fn silenced_stream_counts_skipped_bytes_the_same_on_the_fast_path() {
        let api = Arc::new(MemoryStore::new());
        let clock = Arc::new(TestClock::new(t(0)));
        let cfg = LogsTableConfig {
            throttle_lines: 1,
            ..LogsTableConfig::default()
        };
        let mut tab = table(api.clone(), clock.clone(), cfg);
        let l = |s: &str| format!("{TS} {s}\n");
        // Open at the start of the chunk: the slow path lets "a" pass and replaces "bb".
        tab.write("stdout", (l("a") + &l("bb") + &l("ccc")).as_bytes());
        // Silenced: the fast path counts whole lines, the tail goes through the splitter.
        tab.write(
            "stdout",
            (l("dddd") + &l("eeeee") + &format!("{TS} ff")).as_bytes(),
        );
        tab.write("stdout", b"f\n");
        clock.advance(Duration::from_secs(61));
        tab.write("stdout", l("back").as_bytes());
        tab.close();
        let skipped = [2, 3, 4, 5, 3]
            .iter()
            .map(|n| TS.len() + 1 + n)
            .sum::<usize>();
        let text = api.texts("stdout").concat();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], format!("{TS} a"));
        assert!(lines[1].contains("Exceeded rate 1 lines per 60 seconds"));
        assert_eq!(
            lines[2],
            format!("{} Skipped {skipped} bytes of log", format_timestamp(t(61)))
        );
        assert_eq!(lines[3], format!("{TS} back"));
    }

    #[test]
    fn two_lines_make_one_post_after_a_second() {
        let api = Arc::new(MemoryStore::new());
        let clock = Arc::new(TestClock::new(t(0)));
        let mut tab = table(api.clone(), clock.clone(), LogsTableConfig::default());
        tab.write("crunch-run", format!("{TS} Hello world!\n").as_bytes());
        clock.advance(Duration::from_millis(10));
        tab.write("crunch-run", format!("{TS} Goodbye\n").as_bytes());
        tab.tick();
        assert!(
            api.logs.lock().unwrap().is_empty(),
            "posted before a second passed"
        );
        clock.advance(Duration::from_secs(1));
        tab.tick();
        let logs = api.logs.lock().unwrap().clone();
        assert_eq!(
            logs,
            vec![(
                "zzzzz-dz642-xxxxxxxxxxxxxxx".to_string(),
                "crunch-run".to_string(),
                format!("{TS} Hello world!\n{TS} Goodbye\n")
            )]
        );
    }

    #[test]
    fn four_kib_waiting_posts_at_once_and_streams_post_separately() {
        let api = Arc::new(MemoryStore::new());
        let clock = Arc::new(TestClock::new(t(0)));
        let mut tab = table(api.clone(), clock.clone(), LogsTableConfig::default());
        let line = format!("{TS} {}\n", "z".repeat(1000));
        for _ in 0..5 {
            tab.write("stdout", line.as_bytes());
        }
        tab.write("stderr", format!("{TS} err\n").as_bytes());
        assert_eq!(api.texts("stdout"), vec![line.repeat(4)]);
        assert!(api.texts("stderr").is_empty());
        tab.close();
        assert_eq!(api.texts("stdout"), vec![line.repeat(4), line.clone()]);
        assert_eq!(api.texts("stderr"), vec![format!("{TS} err\n")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters_in_the_table_only() {
        let api = Arc::new(MemoryStore::new());
        let clock = Arc::new(TestClock::new(t(0)));
        let mut tab = table(api.clone(), clock, LogsTableConfig::default());
        let mut data = format!("{TS} ").into_bytes();
        data.extend_from_slice(b"a\xffb\n");
        tab.write("stdout", &data);
        tab.close();
        assert_eq!(api.texts("stdout"), vec![format!("{TS} a\u{fffd}b\n")]);
    }

    #[test]
    fn post_failures_are_counted_not_fatal() {
        let mut store = MemoryStore::new();
        store.fail_logs = true;
        let api = Arc::new(store);
        let clock = Arc::new(TestClock::new(t(0)));
        let mut tab = table(api, clock.clone(), LogsTableConfig::default());
        tab.write("stdout", format!("{TS} a\n").as_bytes());
        clock.advance(Duration::from_secs(2));
        tab.tick();
        tab.write("stdout", format!("{TS} b\n").as_bytes());
        tab.close();
        let stats = tab.stats();
        assert_eq!(stats.failed_posts.load(Ordering::Relaxed), 2);
        assert_eq!(stats.posts.load(Ordering::Relaxed), 0);
        assert_eq!(stats.unposted_bytes.load(Ordering::Relaxed), 66);
    }
}
