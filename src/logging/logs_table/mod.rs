//! The live view of the logs in the API logs table (`ApiStore::create_log`).
//!
//! Three small pieces, each testable without threads or sleeping (time comes from an
//! injected `Clock`):
//! - `LineSplitter` cuts the timestamped byte stream into logs-table lines of at most 4096
//!   bytes of text, marking the cuts with `[...]` as the bytes arrive (a huge line is never
//!   held whole);
//! - `Throttle` applies the Arvados limits (reference §1.5) with their exact messages;
//! - `LogsTable` batches the lines of each stream into at most one POST per second (or one
//!   as soon as 4 KiB is waiting).
//!
//! `LogsTableSink` runs a `LogsTable` on its own thread. The pipeline hands it data with
//! `try_send`: when the API is slow or hangs the data is dropped and counted, and the next
//! chunk that gets through carries the count, reported as `Skipped N bytes of log`. The
//! container and the Keep copy never wait for the logs table. Text is made from bytes with
//! `String::from_utf8_lossy` here and only here; the Keep files stay byte-exact.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::timestamp::{Clock, TIMESTAMP_LEN, format_timestamp_into};
use crate::store::ApiStore;

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

/// Marks where a long line was cut.
const CUT: &[u8] = b"[...]";
/// A line prefix (`<timestamp> `) longer than this is not a timestamp: treat it as text.
const MAX_PREFIX: usize = TIMESTAMP_LEN + 8;

/// What a `LineSplitter` produces.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One logs-table line, without its `\n`.
    Line(&'a [u8]),
    /// This many bytes of the stream were lost before this point.
    Skipped(u64),
}

/// Cuts a timestamped byte stream (`<ts> text\n<ts> text…`) into logs-table lines: a line
/// whose text is longer than `max_line` becomes `<ts> <first max_line>[...]`,
/// `<ts> [...]<next max_line>[...]`, …, `<ts> [...]<rest>`, all with the line's timestamp.
pub struct LineSplitter {
    max_line: usize,
    /// Collecting the `<ts> ` prefix of a line (true at a line start).
    in_prefix: bool,
    prefix: Vec<u8>,
    /// Text of the current segment (at most `max_line` bytes).
    segment: Vec<u8>,
    /// The current segment continues a cut line.
    continued: bool,
    /// Discarding bytes up to the next `\n` (after a gap in the middle of a line).
    resyncing: bool,
    skipped: u64,
    scratch: Vec<u8>,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> LineSplitter {
        let max_line = max_line.max(1);
        LineSplitter {
            max_line,
            in_prefix: true,
            prefix: Vec::with_capacity(MAX_PREFIX + 1),
            segment: Vec::with_capacity(max_line),
            continued: false,
            resyncing: false,
            skipped: 0,
            scratch: Vec::with_capacity(MAX_PREFIX + max_line + 2 * CUT.len()),
        }
    }

    /// Feed the next bytes of the stream; `emit` gets every completed piece.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Piece<'_>)) {
        while !data.is_empty() {
            if self.resyncing {
                match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.skipped += i as u64 + 1;
                        data = &data[i + 1..];
                        self.resyncing = false;
                        self.report_skipped(emit);
                    }
                    None => {
                        self.skipped += data.len() as u64;
                        return;
                    }
                }
            } else if self.in_prefix {
                let window = &data[..data.len().min(MAX_PREFIX + 1 - self.prefix.len())];
                match window.iter().position(|&b| b == b' ' || b == b'\n') {
                    Some(i) if window[i] == b' ' => {
                        self.prefix.extend_from_slice(&window[..=i]);
                        self.in_prefix = false;
                        data = &data[i + 1..];
                    }
                    Some(i) => {
                        self.prefix.extend_from_slice(&window[..i]);
                        self.in_prefix = false;
                        data = &data[i..];
                    }
                    None => {
                        self.prefix.extend_from_slice(window);
                        data = &data[window.len()..];
                        if self.prefix.len() > MAX_PREFIX {
                            // No timestamp here: the bytes are text.
                            self.segment.append(&mut self.prefix);
                            self.in_prefix = false;
                        }
                    }
                }
            } else {
                let newline = data.iter().position(|&b| b == b'\n');
                let (mut text, rest) = match newline {
                    Some(i) => (&data[..i], &data[i + 1..]),
                    None => (data, &data[data.len()..]),
                };
                while !text.is_empty() {
                    if self.segment.len() >= self.max_line {
                        self.emit_segment(true, emit);
                    }
                    let n = text.len().min(self.max_line - self.segment.len());
                    self.segment.extend_from_slice(&text[..n]);
                    text = &text[n..];
                }
                if newline.is_some() {
                    self.end_line(emit);
                }
                data = rest;
            }
        }
    }

    /// Some bytes of the stream were lost (`dropped`) before the next `feed`, which starts
    /// at a line start or not. A line cut short is emitted with a `[...]` mark; bytes up to
    /// the next line start are discarded; the loss is reported as `Piece::Skipped`.
    pub fn gap(&mut self, dropped: u64, at_line_start: bool, emit: &mut dyn FnMut(Piece<'_>)) {
        if !self.at_line_start() {
            self.emit_segment(true, emit);
            self.reset_line();
        }
        self.skipped += dropped;
        self.resyncing = !at_line_start;
        if !self.resyncing {
            self.report_skipped(emit);
        }
    }

    /// The stream ended: emit a last line that had no `\n`, and any loss not yet reported.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Piece<'_>)) {
        if !self.at_line_start() {
            self.end_line(emit);
        }
        self.resyncing = false;
        self.report_skipped(emit);
    }

    /// Drop everything up to the last `\n` of `data` unseen (the caller knows none of it
    /// can be posted): returns how many bytes of `data` that was and how many bytes of
    /// log text (newlines not counted) were dropped, including the unfinished line held.
    /// `None` (nothing done) if `data` has no `\n` or a resync is under way.
    pub fn discard_lines(&mut self, data: &[u8]) -> Option<(usize, u64)> {
        if self.resyncing {
            return None;
        }
        let last = data.iter().rposition(|&b| b == b'\n')?;
        let newlines = count_newlines(&data[..last]) + 1;
        let held = self.prefix.len() + self.segment.len();
        self.segment.clear();
        self.reset_line();
        Some((last + 1, (held + last + 1 - newlines) as u64))
    }

    fn at_line_start(&self) -> bool {
        self.in_prefix && self.prefix.is_empty() && !self.resyncing
    }

    fn report_skipped(&mut self, emit: &mut dyn FnMut(Piece<'_>)) {
        if self.skipped > 0 {
            emit(Piece::Skipped(self.skipped));
            self.skipped = 0;
        }
    }

    fn end_line(&mut self, emit: &mut dyn FnMut(Piece<'_>)) {
        self.emit_segment(false, emit);
        self.reset_line();
    }

    fn reset_line(&mut self) {
        self.prefix.clear();
        self.in_prefix = true;
        self.continued = false;
    }

    /// Emit the current segment; `more` if the line goes on after it.
    fn emit_segment(&mut self, more: bool, emit: &mut dyn FnMut(Piece<'_>)) {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.prefix);
        if self.continued {
            self.scratch.extend_from_slice(CUT);
        }
        self.scratch.extend_from_slice(&self.segment);
        if more {
            self.scratch.extend_from_slice(CUT);
        }
        emit(Piece::Line(&self.scratch));
        self.segment.clear();
        self.continued = more;
    }
}

/// The number of `\n` in `data`, counted in byte-wide lanes (a plain `filter().count()`
/// compiles to a loop that handles two bytes at a time).
fn count_newlines(data: &[u8]) -> usize {
    data.chunks(255)
        .map(|c| usize::from(c.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'))))
        .sum()
}

const COMPLETE_LOG: &str =
    " A complete log is still being written to Keep, and will be available when the job finishes.";

/// The Arvados logs-table throttle for one stream (same rules and messages as the Go
/// crunch-run before the logs table was retired).
pub struct Throttle {
    cfg: LogsTableConfig,
    bytes_logged: u64,
    reset_time: SystemTime,
    lines_so_far: u64,
    bytes_so_far: u64,
    skipped: u64,
    open: bool,
    partial_next_at: SystemTime,
    first_partial: bool,
}

fn push_message(out: &mut Vec<u8>, now: SystemTime, text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut ts = [b'0'; TIMESTAMP_LEN];
    format_timestamp_into(now, &mut ts);
    out.extend_from_slice(&ts);
    out.push(b' ');
    let _ = out.write_fmt(text);
    out.push(b'\n');
}

/// `(a - b)` in whole seconds, 0 if negative.
fn secs_between(a: SystemTime, b: SystemTime) -> u64 {
    a.duration_since(b).map(|d| d.as_secs()).unwrap_or(0)
}

impl Throttle {
    pub fn new(cfg: LogsTableConfig) -> Throttle {
        Throttle {
            cfg,
            bytes_logged: 0,
            reset_time: UNIX_EPOCH,
            lines_so_far: 0,
            bytes_so_far: 0,
            skipped: 0,
            open: false,
            partial_next_at: UNIX_EPOCH,
            first_partial: true,
        }
    }

    /// Start a new throttle period if the current one is over, reporting what it skipped.
    fn check_reset(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if now > self.reset_time {
            self.report_skipped(now, out);
            self.reset_time = now + self.cfg.throttle_period;
            self.bytes_so_far = 0;
            self.lines_so_far = 0;
            self.open = true;
        }
    }

    /// True if a line arriving at `now` would be skipped.
    pub fn is_silenced(&self, now: SystemTime) -> bool {
        !self.open && now <= self.reset_time
    }

    /// Count bytes skipped without looking at them (see `LineSplitter::discard_lines`).
    pub fn add_skipped(&mut self, bytes: u64) {
        self.skipped += bytes;
    }

    /// Report the skipped bytes now (at a period reset, or when the stream closes).
    pub fn report_skipped(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if self.skipped > 0 {
            push_message(
                out,
                now,
                format_args!("Skipped {} bytes of log", self.skipped),
            );
            self.skipped = 0;
        }
    }

    /// Bytes lost before reaching the throttle: reported at once if the stream is not
    /// silenced, otherwise with the bytes the throttle skipped at the end of the period.
    pub fn lost(&mut self, bytes: u64, now: SystemTime, out: &mut Vec<u8>) {
        self.check_reset(now, out);
        self.skipped += bytes;
        if self.open {
            self.report_skipped(now, out);
        }
    }

    /// Decide about one logs-table line (`<ts> text`, without `\n`) and append to `out`
    /// what goes to the logs table: the line, a throttle message instead, or nothing.
    pub fn admit(&mut self, line: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        self.check_reset(now, out);
        let size = line.len() as u64;
        if !self.open {
            self.skipped += size;
            return;
        }
        let text = match line.iter().position(|&b| b == b' ') {
            Some(i) => &line[i + 1..],
            None => &line[line.len()..],
        };
        if text.starts_with(CUT) && text.ends_with(CUT) && text.len() >= 2 * CUT.len() {
            // A middle segment of a long line.
            if self.first_partial {
                self.first_partial = false;
                self.partial_next_at = now + self.cfg.partial_line_period;
                self.skipped += size;
                push_message(
                    out,
                    now,
                    format_args!(
                        "Rate-limiting partial segments of long lines to one every {} seconds.",
                        self.cfg.partial_line_period.as_secs()
                    ),
                );
                return;
            } else if now > self.partial_next_at {
                self.partial_next_at = now + self.cfg.partial_line_period;
            } else {
                self.skipped += size;
                return;
            }
        } else {
            self.partial_next_at = UNIX_EPOCH;
            self.first_partial = true;
        }

        self.bytes_logged += size;
        self.bytes_so_far += size;
        self.lines_so_far += 1;
        let period = self.cfg.throttle_period.as_secs();
        if self.bytes_logged > self.cfg.limit_bytes_per_job {
            self.reset_time = now + Duration::from_secs(365 * 24 * 3600);
            self.open = false;
            push_message(
                out,
                now,
                format_args!(
                    "Exceeded log limit {} bytes (crunch_limit_log_bytes_per_job). Log will be truncated.{COMPLETE_LOG}",
                    self.cfg.limit_bytes_per_job
                ),
            );
        } else if self.bytes_so_far > self.cfg.throttle_bytes {
            self.open = false;
            push_message(
                out,
                now,
                format_args!(
                    "Exceeded rate {} bytes per {period} seconds (crunch_log_throttle_bytes). Logging will be silenced for the next {} seconds.{COMPLETE_LOG}",
                    self.cfg.throttle_bytes,
                    secs_between(self.reset_time, now)
                ),
            );
        } else if self.lines_so_far > self.cfg.throttle_lines {
            self.open = false;
            push_message(
                out,
                now,
                format_args!(
                    "Exceeded rate {} lines per {period} seconds (crunch_log_throttle_lines), logging will be silenced for the next {} seconds.{COMPLETE_LOG}",
                    self.cfg.throttle_lines,
                    secs_between(self.reset_time, now)
                ),
            );
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
            return;
        }
        // The line that crossed a limit is replaced by the message.
        self.skipped += size;
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
        for i in 0..self.streams.len() {
            self.flush(i, now);
        }
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
        let s = &mut self.streams[i];
        s.last_post = now;
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stats
                .unposted_bytes
                .fetch_add(text.len() as u64, Ordering::Relaxed);
            return;
        }
        let text = String::from_utf8_lossy(text);
        match self.api.create_log(&self.object_uuid, s.event_type, &text) {
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

/// A `LogsTable` on its own thread, fed with `try_send`.
pub struct LogsTableSink {
    tx: Sender<Chunk>,
    done: Receiver<()>,
    deadline: Arc<Mutex<Option<Instant>>>,
    stats: Arc<LogsTableStats>,
}

impl LogsTableSink {
    /// Start the thread. At most `queue` chunks wait for it; used chunk buffers are given
    /// back through `recycle` when there is one.
    pub fn start(
        mut table: LogsTable,
        queue: usize,
        recycle: Option<Sender<Vec<u8>>>,
    ) -> io::Result<LogsTableSink> {
        let (tx, rx) = crossbeam_channel::bounded::<Chunk>(queue.max(1));
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let deadline = Arc::new(Mutex::new(None::<Instant>));
        let stats = table.stats();
        let shared_deadline = Arc::clone(&deadline);
        thread::Builder::new()
            .name("logs-table".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(TICK) {
                        Ok(chunk) => {
                            if let Some(d) =
                                *shared_deadline.lock().unwrap_or_else(|e| e.into_inner())
                            {
                                table.set_deadline(d);
                            }
                            if chunk.dropped_before > 0 {
                                table.gap(
                                    chunk.event_type,
                                    chunk.dropped_before,
                                    chunk.at_line_start,
                                );
                            }
                            table.write(chunk.event_type, &chunk.data);
                            if let Some(r) = &recycle {
                                let mut data = chunk.data;
                                data.clear();
                                let _ = r.try_send(data);
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    table.tick();
                }
                if let Some(d) = *shared_deadline.lock().unwrap_or_else(|e| e.into_inner()) {
                    table.set_deadline(d);
                }
                table.close();
                let _ = done_tx.send(());
            })?;
        Ok(LogsTableSink {
            tx,
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

    /// Post what is queued and buffered, but start no POST after `deadline`, and wait for
    /// the thread no longer than that.
    pub fn close(self, deadline: Instant) -> LogsTableReport {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        drop(self.tx);
        let finished = self.done.recv_deadline(deadline).is_ok();
        LogsTableReport {
            posts: self.stats.posts.load(Ordering::Relaxed),
            failed_posts: self.stats.failed_posts.load(Ordering::Relaxed),
            unposted_bytes: self.stats.unposted_bytes.load(Ordering::Relaxed),
            finished,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::test_clock::TestClock;
    use crate::logging::timestamp::format_timestamp;
    use crate::store::memory::MemoryStore;

    const T0: u64 = 1_451_404_305; // 2015-12-29T15:51:45Z
    const TS: &str = "2015-12-29T15:51:45.000000001Z";

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::new(T0 + secs, 1)
    }

    /// Split `chunks` and render the pieces as strings (`Skipped(n)` as `<skipped n>`).
    fn split(splitter: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut emit = |p: Piece<'_>| {
            out.push(match p {
                Piece::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Piece::Skipped(n) => format!("<skipped {n}>"),
            })
        };
        for c in chunks {
            splitter.feed(c, &mut emit);
        }
        out
    }

    #[test]
    fn newlines_are_counted_across_lanes() {
        let mut data = vec![b'\n'; 1000];
        data.extend_from_slice(&[b'x'; 300]);
        data.extend_from_slice(b"\n\nab\n");
        assert_eq!(count_newlines(&data), 1003);
        assert_eq!(count_newlines(b""), 0);
    }

    #[test]
    fn splitter_passes_short_lines() {
        let mut s = LineSplitter::new(4096);
        let input = format!("{TS} hello\n{TS} \n{TS} world\n");
        assert_eq!(
            split(&mut s, &[input.as_bytes()]),
            vec![
                format!("{TS} hello"),
                format!("{TS} "),
                format!("{TS} world")
            ]
        );
    }

    #[test]
    fn splitter_cuts_a_10000_byte_line_into_4096_4096_1808() {
        let text: Vec<u8> = (0..10_000).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = format!("{TS} ").into_bytes();
        input.extend_from_slice(&text);
        input.extend_from_slice(b"\n");
        // Feed in odd-sized chunks: the cut must not depend on how the bytes arrive.
        let chunks: Vec<&[u8]> = input.chunks(777).collect();
        let mut s = LineSplitter::new(4096);
        let pieces = split(&mut s, &chunks);
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            pieces,
            vec![
                format!("{TS} {}[...]", &text[..4096]),
                format!("{TS} [...]{}[...]", &text[4096..8192]),
                format!("{TS} [...]{}", &text[8192..]),
            ]
        );
        assert_eq!(text[8192..].len(), 1808);
    }

    #[test]
    fn splitter_keeps_a_line_of_exactly_max_whole() {
        let mut s = LineSplitter::new(8);
        assert_eq!(
            split(&mut s, &[format!("{TS} 12345678\n").as_bytes()]),
            vec![format!("{TS} 12345678")]
        );
    }

    #[test]
    fn splitter_prefix_may_arrive_in_pieces_and_last_line_needs_no_newline() {
        let mut s = LineSplitter::new(4096);
        let input = format!("{TS} one\n{TS} two");
        let chunks: Vec<&[u8]> = input.as_bytes().chunks(3).collect();
        let mut pieces = split(&mut s, &chunks);
        s.finish(&mut |p| {
            if let Piece::Line(l) = p {
                pieces.push(String::from_utf8_lossy(l).into_owned())
            }
        });
        assert_eq!(pieces, vec![format!("{TS} one"), format!("{TS} two")]);
    }

    #[test]
    fn splitter_gap_in_mid_line_cuts_resyncs_and_counts() {
        let mut s = LineSplitter::new(4096);
        let mut pieces = split(&mut s, &[format!("{TS} partial").as_bytes()]);
        s.gap(100, false, &mut |p| match p {
            Piece::Line(l) => pieces.push(String::from_utf8_lossy(l).into_owned()),
            Piece::Skipped(n) => pieces.push(format!("<skipped {n}>")),
        });
        // The chunk after the gap starts mid-line: "tail\n" (5 bytes) is discarded.
        pieces.extend(split(&mut s, &[format!("tail\n{TS} next\n").as_bytes()]));
        assert_eq!(
            pieces,
            vec![
                format!("{TS} partial[...]"),
                "<skipped 105>".to_string(),
                format!("{TS} next")
            ]
        );
    }

    fn admit_all(th: &mut Throttle, lines: &[String], now: SystemTime) -> String {
        let mut out = Vec::new();
        for l in lines {
            th.admit(l.as_bytes(), now, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    const COMPLETE: &str = " A complete log is still being written to Keep, and will be available when the job finishes.";

    #[test]
    fn throttle_lines_per_period_then_skipped_report() {
        let mut th = Throttle::new(LogsTableConfig::default());
        let lines: Vec<String> = (0..1030).map(|i| format!("{TS} l{i}")).collect();
        let out = admit_all(&mut th, &lines, t(0));
        let out_lines: Vec<&str> = out.lines().collect();
        assert_eq!(out_lines.len(), 1025);
        assert_eq!(out_lines[1023], format!("{TS} l1023"));
        assert_eq!(
            out_lines[1024],
            format!(
                "{} Exceeded rate 1024 lines per 60 seconds (crunch_log_throttle_lines), logging will be silenced for the next 60 seconds.{COMPLETE}",
                format_timestamp(t(0))
            )
        );
        // Still silenced 59 s later.
        assert_eq!(admit_all(&mut th, &lines[..1], t(59)), "");
        // After the period: what was skipped is reported, then lines pass again.
        let skipped: usize = lines[1024..].iter().map(|l| l.len()).sum::<usize>() + lines[0].len();
        let out = admit_all(&mut th, &[format!("{TS} back")], t(61));
        assert_eq!(
            out,
            format!(
                "{} Skipped {skipped} bytes of log\n{TS} back\n",
                format_timestamp(t(61))
            )
        );
    }

    #[test]
    fn throttle_bytes_per_period_says_how_long_it_is_silenced() {
        let cfg = LogsTableConfig {
            throttle_bytes: 100,
            ..LogsTableConfig::default()
        };
        let mut th = Throttle::new(cfg);
        let line = format!("{TS} {}", "x".repeat(40)); // 71 bytes
        let mut out = admit_all(&mut th, std::slice::from_ref(&line), t(0));
        out += &admit_all(&mut th, std::slice::from_ref(&line), t(15));
        assert_eq!(
            out,
            format!(
                "{line}\n{} Exceeded rate 100 bytes per 60 seconds (crunch_log_throttle_bytes). Logging will be silenced for the next 45 seconds.{COMPLETE}\n",
                format_timestamp(t(15))
            )
        );
    }

    #[test]
    fn throttle_job_limit_is_final() {
        let cfg = LogsTableConfig {
            limit_bytes_per_job: 50,
            ..LogsTableConfig::default()
        };
        let mut th = Throttle::new(cfg);
        let line = format!("{TS} {}", "y".repeat(30)); // 61 bytes
        let out = admit_all(&mut th, std::slice::from_ref(&line), t(0));
        assert_eq!(
            out,
            format!(
                "{} Exceeded log limit 50 bytes (crunch_limit_log_bytes_per_job). Log will be truncated.{COMPLETE}\n",
                format_timestamp(t(0))
            )
        );
        // A year of silence, not a period.
        assert_eq!(admit_all(&mut th, std::slice::from_ref(&line), t(3600)), "");
        let mut out = Vec::new();
        th.report_skipped(t(3600), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{} Skipped 122 bytes of log\n", format_timestamp(t(3600)))
        );
    }

    #[test]
    fn throttle_middle_segments_of_long_lines() {
        let mut th = Throttle::new(LogsTableConfig::default());
        let long_line = |n: usize| {
            vec![
                format!("{TS} first{n}[...]"),
                format!("{TS} [...]middle{n}a[...]"),
                format!("{TS} [...]middle{n}b[...]"),
                format!("{TS} [...]last{n}"),
            ]
        };
        let out = admit_all(&mut th, &long_line(1), t(0));
        assert_eq!(
            out,
            format!(
                "{TS} first1[...]\n{} Rate-limiting partial segments of long lines to one every 5 seconds.\n{TS} [...]last1\n",
                format_timestamp(t(0))
            )
        );
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

    fn table(api: Arc<MemoryStore>, clock: Arc<TestClock>, cfg: LogsTableConfig) -> LogsTable {
        LogsTable::new(api, "zzzzz-dz642-xxxxxxxxxxxxxxx".into(), clock, cfg)
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
