//! The files of the log collection while the pipeline runs, and the handles that write
//! them from any thread.
//!
//! The files form a list that grows: `crunch-run.txt`, `stderr.txt` and `stdout.txt` from
//! the start, then any stream or raw file opened later (`crunchstat.txt`, `node-info.txt`).
//! The list's lock is taken only to open a file, to snapshot and to close. Every file has
//! its own lock, held by a writer for one write: writers of different streams never wait
//! for each other, and a writer keeps its file's `Arc`, so it never looks in the list.
//!
//! A timestamped stream has an event type and feeds the logs table; a raw file has none.
//! After `Shared::close`, writing does nothing.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::logs_table::{Chunk, LogsTableSink};
use super::spool::SpoolFile;
use super::timestamp::{Clock, LinePrefixer, Timestamper};
use crate::process::read_on;
use crate::rfc3339::{TIMESTAMP_LEN, format_timestamp_into};
use crate::store::FileBlocks;

/// Bytes read from a pipe at a time.
const READ_SIZE: usize = 64 * 1024;
/// Input timestamped per step: bounds the output of one step (a slice of empty lines
/// grows 32-fold) so a buffer handed on stays below about 256 KiB.
const STAMP_SLICE: usize = 8 * 1024;
/// Spare buffers kept for reuse; larger ones are freed.
pub(super) const POOL_SIZE: usize = 32;
const POOL_MAX_CAPACITY: usize = 512 * 1024;

/// Where the crunch-run stream is echoed: the writer, its line prefixer, a scratch buffer.
pub(super) type Echo = (Box<dyn Write + Send>, LinePrefixer, Vec<u8>);

/// One file of the log collection.
pub(super) struct LogFile {
    /// Its name in the collection, e.g. `stdout.txt`.
    pub name: String,
    /// The logs-table event type of a timestamped stream (e.g. `stdout`); None for a raw
    /// file, which only `LogPipeline::write_file` writes.
    pub event_type: Option<&'static str>,
    /// None once the pipeline finished.
    pub state: Mutex<Option<OpenFile>>,
}

/// A log file's spool, and what the logs table needs to know about its stream.
pub(super) struct OpenFile {
    pub spool: SpoolFile,
    /// The bytes written so far end a line.
    at_line_start: bool,
    /// Bytes dropped at the logs table's queue since a chunk of this stream got through.
    dropped: u64,
    /// The crunch-run stream only, if echoed.
    echo: Option<Echo>,
}

impl OpenFile {
    pub fn new(spool: SpoolFile, echo: Option<Echo>) -> OpenFile {
        OpenFile {
            spool,
            at_line_start: true,
            dropped: 0,
            echo,
        }
    }

    /// Spool `data` and echo it; returns whether it started at a line start.
    pub fn write(&mut self, data: &[u8]) -> bool {
        // A write error is kept by the spool file and reported by its finish().
        let _ = self.spool.write(data);
        if let Some((w, prefixer, buf)) = &mut self.echo {
            buf.clear();
            prefixer.prefix(data, buf);
            let _ = w.write_all(buf).and_then(|()| w.flush());
        }
        std::mem::replace(&mut self.at_line_start, data.last() == Some(&b'\n'))
    }

    /// Spool and echo `text` as lines stamped `now`; for the pipeline itself, once no
    /// writer can reach this file any more.
    pub fn write_line(&mut self, now: SystemTime, text: &str) {
        let mut buf = Vec::new();
        stamp_lines(now, text, &mut buf);
        self.write(&buf);
    }

    /// Spool `text` as lines stamped `now`, without echoing them. Returns where they start
    /// in the file, and the stamped bytes.
    pub fn spool_line(&mut self, now: SystemTime, text: &str) -> (u64, Vec<u8>) {
        let mut buf = Vec::new();
        stamp_lines(now, text, &mut buf);
        let offset = self.spool.size();
        // A write error is kept by the spool file and reported by its finish().
        let _ = self.spool.write(&buf);
        (offset, buf)
    }

    /// The echo, for the lines said after the file closed.
    pub fn take_echo(&mut self) -> Option<Echo> {
        self.echo.take()
    }
}

/// What the writers, the snapshots and the pipeline share.
pub(super) struct Shared {
    /// Every log file, in the order of `LogsFinished::files`.
    pub files: Mutex<Vec<Arc<LogFile>>>,
    /// Taken by `close` after the files, so no chunk is offered to a closed table.
    pub sink: Mutex<Option<LogsTableSink>>,
    pub dropped_total: AtomicU64,
    pub pool_tx: Sender<Vec<u8>>,
    pub pool_rx: Receiver<Vec<u8>>,
    pub clock: Arc<dyn Clock>,
    pub closed: AtomicBool,
}

/// Lock, ignoring poisoning: a panicking writer leaves the file as it was between writes.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn buffer(&self) -> Vec<u8> {
        self.pool_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(READ_SIZE + READ_SIZE / 4))
    }

    /// Spool `data` (timestamped bytes) to its stream, echo it, offer it to the logs table.
    /// False if the pipeline has finished (the data is dropped).
    pub fn write(&self, file: &LogFile, data: Vec<u8>) -> bool {
        self.write_as(file, data, false)
    }

    /// `write`; `kept`: whole lines the logs table must have (neither its queue nor its
    /// throttle drops them).
    fn write_as(&self, file: &LogFile, data: Vec<u8>, kept: bool) -> bool {
        let mut state = lock(&file.state);
        let Some(open) = state.as_mut() else {
            return false;
        };
        let at_line_start = open.write(&data);
        let sink = lock(&self.sink);
        let (Some(sink), Some(event_type)) = (sink.as_ref(), file.event_type) else {
            recycle(&self.pool_tx, data);
            return true;
        };
        if kept {
            sink.send_kept(Chunk {
                event_type,
                data,
                dropped_before: 0,
                at_line_start,
            });
            return true;
        }
        let len = data.len() as u64;
        let chunk = Chunk {
            event_type,
            data,
            dropped_before: open.dropped,
            at_line_start,
        };
        match sink.try_send(chunk) {
            Ok(()) => open.dropped = 0,
            Err(chunk) => {
                open.dropped += len;
                self.dropped_total.fetch_add(len, Ordering::Relaxed);
                recycle(&self.pool_tx, chunk.data);
            }
        }
        true
    }

    /// Take the files and the logs table out (stopping all writers), files first.
    pub fn close(&self) -> Closed {
        self.closed.store(true, Ordering::Release);
        let files = lock(&self.files).clone();
        let files = files
            .into_iter()
            .map(|f| {
                let open = lock(&f.state).take();
                (f.name.clone(), open)
            })
            .collect();
        Closed {
            files,
            sink: lock(&self.sink).take(),
        }
    }
}

/// What `Shared::close` took out.
pub(super) struct Closed {
    /// Every file's name and state (None if it was taken before), in order.
    pub files: Vec<(String, Option<OpenFile>)>,
    pub sink: Option<LogsTableSink>,
}

fn recycle(pool: &Sender<Vec<u8>>, mut buf: Vec<u8>) {
    if buf.capacity() <= POOL_MAX_CAPACITY {
        buf.clear();
        let _ = pool.try_send(buf);
    }
}

/// `text` as log lines: each `\n`-separated line gets the timestamp `now` (a single
/// trailing `\n` is ignored).
pub(super) fn stamp_lines(now: SystemTime, text: &str, buf: &mut Vec<u8>) {
    let mut ts = [b'0'; TIMESTAMP_LEN];
    format_timestamp_into(now, &mut ts);
    let text = text.strip_suffix('\n').unwrap_or(text);
    for line in text.split('\n') {
        buf.extend_from_slice(&ts);
        buf.push(b' ');
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
}

/// Writes lines to one timestamped log stream: crunch-run's own (`LogPipeline::crunch_log`)
/// or one opened with `LogPipeline::stream`. Cheap to clone; after the pipeline finished,
/// writing does nothing.
#[derive(Clone)]
pub struct LogStream {
    shared: Arc<Shared>,
    file: Arc<LogFile>,
}

/// The writer of crunch-run's own log, `crunch-run.txt`.
pub type CrunchLog = LogStream;

impl LogStream {
    pub(super) fn new(shared: Arc<Shared>, file: Arc<LogFile>) -> LogStream {
        LogStream { shared, file }
    }

    /// Whether the pipeline has finished: writing does nothing then.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Log `text`: each `\n`-separated line gets the current timestamp (a single trailing
    /// `\n` is ignored). Waits if another thread is writing this stream; never fails.
    pub fn line(&self, text: &str) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let mut buf = self.shared.buffer();
        stamp_lines(self.shared.clock.now(), text, &mut buf);
        self.shared.write(&self.file, buf);
    }

    /// `line`, for lines the logs table must show even when it throttles or drops the
    /// rest (progress lines): they bypass its queue and throttle.
    pub fn line_kept(&self, text: &str) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let mut buf = Vec::new();
        stamp_lines(self.shared.clock.now(), text, &mut buf);
        self.shared.write_as(&self.file, buf, true);
    }

    /// Copy `reader` into this stream until EOF, timestamping line starts; after the
    /// pipeline finished, read on and discard. Read errors are process::read_on's: the
    /// first is logged to `crunch_log` and reading goes on, until too many in a row.
    /// Returns the number of bytes read.
    pub(super) fn copy(&self, mut reader: Box<dyn Read + Send>, crunch_log: &LogStream) -> u64 {
        let what = format!("container {}", self.file.event_type.unwrap_or("log"));
        let mut buf = vec![0u8; READ_SIZE];
        let mut stamper = Timestamper::new(Arc::clone(&self.shared.clock));
        let mut open = true;
        let take = |data: &[u8]| {
            if open {
                open = self.stamp_and_write(&mut stamper, data);
            }
        };
        read_on(&mut *reader, &mut buf, take, |trouble| {
            crunch_log.line(&trouble.describe(&what))
        })
    }

    /// Timestamp `data` and write it, in pieces of at most about `READ_SIZE`. False if the
    /// pipeline has finished.
    fn stamp_and_write(&self, stamper: &mut Timestamper, data: &[u8]) -> bool {
        let shared = &self.shared;
        let mut out = shared.buffer();
        for slice in data.chunks(STAMP_SLICE) {
            stamper.stamp(slice, &mut out);
            if out.len() >= READ_SIZE
                && !shared.write(&self.file, std::mem::replace(&mut out, shared.buffer()))
            {
                return false;
            }
        }
        out.is_empty() || shared.write(&self.file, out)
    }
}

/// Snapshots of the log files while the pipeline runs. Cheap to clone.
#[derive(Clone)]
pub struct LogSnapshots {
    shared: Arc<Shared>,
}

impl LogSnapshots {
    pub(super) fn new(shared: Arc<Shared>) -> LogSnapshots {
        LogSnapshots { shared }
    }

    /// Bytes written to the log files so far.
    pub fn bytes(&self) -> u64 {
        lock(&self.shared.files)
            .iter()
            .filter_map(|f| lock(&f.state).as_ref().map(|s| s.spool.size()))
            .sum()
    }

    /// The log files as they stand, in the order of `LogsFinished::files`: each is sealed
    /// where it is (its last block cut short) and waited for, up to `patience`, until all
    /// its blocks are stored. None if the pipeline finished or some upload is not done.
    pub fn take(&self, patience: Duration) -> Option<Vec<FileBlocks>> {
        let files = lock(&self.shared.files).clone();
        let sealed = files
            .iter()
            .map(|f| lock(&f.state).as_mut().map(|s| s.spool.seal()))
            .collect::<Option<Vec<usize>>>()?;
        let deadline = Instant::now() + patience;
        loop {
            let stored = files
                .iter()
                .zip(&sealed)
                .map(|(f, &blocks)| lock(&f.state).as_mut()?.spool.stored_prefix(blocks))
                .collect::<Option<Vec<FileBlocks>>>();
            if stored.is_some() || Instant::now() >= deadline {
                return stored;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A name the log collection can hold as one file of its top directory (and the spool
/// directory as one file): not empty, not `.` or `..`, no `/` and no NUL.
pub(super) fn check_file_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} cannot name a log file"),
        ));
    }
    Ok(())
}
