//! The log pipeline of one run: crunch-run's own log lines and the container's stdout and
//! stderr, timestamped, spooled to the log collection files (`crunch-run.txt`,
//! `stderr.txt`, `stdout.txt`) and offered to the live logs table.
//!
//! ```text
//! docker stdout ─ copier thread: read ≤64 KiB, timestamp line starts ─┐ per stream, under
//! docker stderr ─ copier thread                                       ├ its own lock:
//! CrunchLog (any thread, crunch-run stream) ──────────────────────────┘
//!     ├─► SpoolFile of the stream (md5, write) → Uploader thread → BlockStore
//!     ├─► LogsTableSink (try_send: drops, never waits)
//!     └─► stderr, crunch-run stream only
//! ```
//!
//! Each writer spools its own bytes: no thread hop between reading a pipe and writing its
//! spool file. Memory stays flat: buffers are fixed-size and recycled, the logs table's
//! queue is bounded, and blocks are read back from the spool files for upload. Only the
//! Keep copy applies backpressure (a slow disk slows the container down); the logs table
//! never does.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::logs_table::{Chunk, LogsTable, LogsTableConfig, LogsTableReport, LogsTableSink};
use super::spool::{DEFAULT_BLOCK_SIZE, SpoolFile, Uploader};
use super::timestamp::{Clock, LinePrefixer, TIMESTAMP_LEN, Timestamper, format_timestamp_into};
use crate::store::{ApiStore, BlockStore, FileBlocks};

/// The streams, in the order of `LogsFinished::files`.
const STREAMS: [&str; 3] = ["crunch-run", "stderr", "stdout"];
const CRUNCH_RUN: usize = 0;

/// Bytes read from a pipe at a time.
const READ_SIZE: usize = 64 * 1024;
/// Input timestamped per step: bounds the output of one step (a slice of empty lines
/// grows 32-fold) so a buffer handed on stays below about 256 KiB.
const STAMP_SLICE: usize = 8 * 1024;
/// Chunks waiting for the logs table before it drops.
const SINK_QUEUE: usize = 16;
/// Spare buffers kept for reuse; larger ones are freed.
const POOL_SIZE: usize = 32;
const POOL_MAX_CAPACITY: usize = 512 * 1024;
/// How long `finish` waits for the logs table.
pub const DEFAULT_LOGS_TABLE_WAIT: Duration = Duration::from_secs(5);

pub struct LogPipelineConfig {
    /// Where the log files are spooled (created if missing). Left in place by `finish`.
    pub spool_dir: PathBuf,
    /// The container: `object_uuid` of the logs-table entries, prefix of echoed lines.
    pub container_uuid: String,
    /// The live logs table, if any.
    pub logs_table: Option<Arc<dyn ApiStore>>,
    /// Also write the crunch-run stream to our stderr, as `<uuid> <ts> line`.
    pub echo_crunch_log_to_stderr: bool,
    /// Keep block size; 0 means the default 64 MiB.
    pub block_size: u64,
    pub clock: Arc<dyn Clock>,
}

/// What the pipeline left when it finished.
#[derive(Debug)]
pub struct LogsFinished {
    /// `crunch-run.txt`, `stderr.txt`, `stdout.txt`, always all three (empty ones too).
    /// A file whose upload failed is given as its longest prefix that the store confirmed.
    pub files: Vec<FileBlocks>,
    /// Spooling and upload failures: the files in `spool_dir` are then the only copy.
    pub errors: Vec<String>,
    pub spool_dir: PathBuf,
    /// Bytes of log that never reached the logs table because it was too slow (dropped at
    /// its queue), failed to post, or were still waiting at the close deadline. Throttled
    /// bytes are not counted: the table reports those itself.
    pub logs_table_dropped_bytes: u64,
    /// What became of the logs table (None without one).
    pub logs_table: Option<LogsTableReport>,
}

/// Where the crunch-run stream is echoed: the writer, its line prefixer, a scratch buffer.
type Echo = (Box<dyn Write + Send>, LinePrefixer, Vec<u8>);

/// One log stream: its spool file and what the logs table needs to know about it.
struct Stream {
    spool: SpoolFile,
    /// The bytes written so far end a line.
    at_line_start: bool,
    /// Bytes dropped at the logs table's queue since a chunk of this stream got through.
    dropped: u64,
    /// The crunch-run stream only, if echoed.
    echo: Option<Echo>,
}

/// What the copiers and `CrunchLog`s share.
struct Shared {
    /// Per stream; `None` once the pipeline finished (later data is discarded).
    streams: [Mutex<Option<Stream>>; 3],
    /// Taken by `finish` after the streams, so no chunk is offered to a closed table.
    sink: Mutex<Option<LogsTableSink>>,
    dropped_total: AtomicU64,
    pool_tx: Sender<Vec<u8>>,
    pool_rx: Receiver<Vec<u8>>,
    clock: Arc<dyn Clock>,
    closed: AtomicBool,
}

/// Lock, ignoring poisoning: a panicking writer leaves the stream as it was between writes.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn buffer(&self) -> Vec<u8> {
        self.pool_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(READ_SIZE + READ_SIZE / 4))
    }

    /// Spool `data` (timestamped bytes) to its stream, echo it, offer it to the logs table.
    /// False if the pipeline has finished (the data is dropped).
    fn write(&self, index: usize, data: Vec<u8>) -> bool {
        let mut slot = lock(&self.streams[index]);
        let Some(stream) = slot.as_mut() else {
            return false;
        };
        // A write error is kept by the spool file and reported by its finish().
        let _ = stream.spool.write(&data);
        if let Some((w, prefixer, buf)) = &mut stream.echo {
            buf.clear();
            prefixer.prefix(&data, buf);
            let _ = w.write_all(buf).and_then(|()| w.flush());
        }
        let at_line_start =
            std::mem::replace(&mut stream.at_line_start, data.last() == Some(&b'\n'));
        let sink = lock(&self.sink);
        let Some(sink) = sink.as_ref() else {
            recycle(&self.pool_tx, data);
            return true;
        };
        let len = data.len() as u64;
        let chunk = Chunk {
            event_type: STREAMS[index],
            data,
            dropped_before: stream.dropped,
            at_line_start,
        };
        match sink.try_send(chunk) {
            Ok(()) => stream.dropped = 0,
            Err(chunk) => {
                stream.dropped += len;
                self.dropped_total.fetch_add(len, Ordering::Relaxed);
                recycle(&self.pool_tx, chunk.data);
            }
        }
        true
    }

    /// Take the streams and the logs table out (stopping all writers), streams first.
    fn close(&self) -> (Vec<Option<Stream>>, Option<LogsTableSink>) {
        self.closed.store(true, Ordering::Release);
        let streams = self.streams.iter().map(|s| lock(s).take()).collect();
        (streams, lock(&self.sink).take())
    }
}

fn recycle(pool: &Sender<Vec<u8>>, mut buf: Vec<u8>) {
    if buf.capacity() <= POOL_MAX_CAPACITY {
        buf.clear();
        let _ = pool.try_send(buf);
    }
}

/// Writes crunch-run's own log lines. Cheap to clone; after the pipeline finished, writing
/// does nothing.
#[derive(Clone)]
pub struct CrunchLog {
    shared: Arc<Shared>,
}

impl CrunchLog {
    /// Log `text`: each `\n`-separated line gets the current timestamp (a single trailing
    /// `\n` is ignored). Waits if another thread is writing this stream; never fails.
    pub fn line(&self, text: &str) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let mut ts = [b'0'; TIMESTAMP_LEN];
        format_timestamp_into(self.shared.clock.now(), &mut ts);
        let mut buf = self.shared.buffer();
        let text = text.strip_suffix('\n').unwrap_or(text);
        for line in text.split('\n') {
            buf.extend_from_slice(&ts);
            buf.push(b' ');
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        self.shared.write(CRUNCH_RUN, buf);
    }
}

/// Snapshots of the log files while the pipeline runs. Cheap to clone.
#[derive(Clone)]
pub struct LogSnapshots {
    shared: Arc<Shared>,
}

impl LogSnapshots {
    /// Bytes written to the log files so far.
    pub fn bytes(&self) -> u64 {
        self.shared
            .streams
            .iter()
            .filter_map(|s| lock(s).as_ref().map(|s| s.spool.size()))
            .sum()
    }

    /// The log files as they stand, in the order of `LogsFinished::files`: each is sealed
    /// where it is (its last block cut short) and waited for, up to `patience`, until all
    /// its blocks are stored. None if the pipeline finished or some upload is not done.
    pub fn take(&self, patience: Duration) -> Option<Vec<FileBlocks>> {
        let sealed = self
            .shared
            .streams
            .iter()
            .map(|s| lock(s).as_mut().map(|s| s.spool.seal()))
            .collect::<Option<Vec<usize>>>()?;
        let deadline = Instant::now() + patience;
        loop {
            let files = self
                .shared
                .streams
                .iter()
                .zip(&sealed)
                .map(|(s, &blocks)| lock(s).as_mut()?.spool.stored_prefix(blocks))
                .collect::<Option<Vec<FileBlocks>>>();
            if files.is_some() || Instant::now() >= deadline {
                return files;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The running pipeline. Call `finish` once the copiers have returned.
pub struct LogPipeline {
    shared: Arc<Shared>,
    spool_dir: PathBuf,
    uploader: Option<Uploader>,
}

impl LogPipeline {
    pub fn start(cfg: LogPipelineConfig, blocks: Arc<dyn BlockStore>) -> io::Result<LogPipeline> {
        let echo: Option<Box<dyn Write + Send>> = if cfg.echo_crunch_log_to_stderr {
            Some(Box::new(io::stderr()))
        } else {
            None
        };
        LogPipeline::start_with_echo(cfg, blocks, echo)
    }

    /// `start`, echoing the crunch-run stream to `echo` instead of stderr.
    fn start_with_echo(
        cfg: LogPipelineConfig,
        blocks: Arc<dyn BlockStore>,
        echo: Option<Box<dyn Write + Send>>,
    ) -> io::Result<LogPipeline> {
        std::fs::create_dir_all(&cfg.spool_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "creating log spool directory {}: {e}",
                    cfg.spool_dir.display()
                ),
            )
        })?;
        let block_size = if cfg.block_size == 0 {
            DEFAULT_BLOCK_SIZE
        } else {
            cfg.block_size
        };
        let uploader = Uploader::start(blocks)?;
        let mut echo = echo.map(|w| {
            (
                w,
                LinePrefixer::new(format!("{} ", cfg.container_uuid)),
                Vec::new(),
            )
        });
        let mut streams = Vec::with_capacity(STREAMS.len());
        for (i, name) in STREAMS.iter().enumerate() {
            streams.push(Mutex::new(Some(Stream {
                spool: SpoolFile::create(
                    &cfg.spool_dir,
                    &format!("{name}.txt"),
                    block_size,
                    &uploader,
                )?,
                at_line_start: true,
                dropped: 0,
                echo: if i == CRUNCH_RUN { echo.take() } else { None },
            })));
        }
        let streams: [Mutex<Option<Stream>>; 3] = streams
            .try_into()
            .map_err(|_| io::Error::other("log streams miscounted"))?;
        let (pool_tx, pool_rx) = crossbeam_channel::bounded(POOL_SIZE);
        let sink = match &cfg.logs_table {
            Some(api) => {
                let table = LogsTable::new(
                    Arc::clone(api),
                    cfg.container_uuid.clone(),
                    Arc::clone(&cfg.clock),
                    LogsTableConfig::default(),
                );
                Some(LogsTableSink::start(
                    table,
                    SINK_QUEUE,
                    Some(pool_tx.clone()),
                )?)
            }
            None => None,
        };
        Ok(LogPipeline {
            shared: Arc::new(Shared {
                streams,
                sink: Mutex::new(sink),
                dropped_total: AtomicU64::new(0),
                pool_tx,
                pool_rx,
                clock: cfg.clock,
                closed: AtomicBool::new(false),
            }),
            spool_dir: cfg.spool_dir,
            uploader: Some(uploader),
        })
    }

    /// Snapshots of the log files while it runs.
    pub fn snapshots(&self) -> LogSnapshots {
        LogSnapshots {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A writer of the crunch-run stream.
    pub fn crunch_log(&self) -> CrunchLog {
        CrunchLog {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Copy `reader` ("stdout" or "stderr") into its log stream on a new thread. The thread
    /// reads until EOF no matter what (even after `finish`, discarding), so the container
    /// never blocks on a full pipe, and returns the number of bytes read. A read error is
    /// logged to the crunch-run stream and returned.
    pub fn spawn_copier(
        &self,
        stream: &'static str,
        reader: Box<dyn Read + Send>,
    ) -> io::Result<JoinHandle<io::Result<u64>>> {
        let index = STREAMS
            .iter()
            .position(|s| *s == stream && *s != STREAMS[CRUNCH_RUN]);
        let shared = Arc::clone(&self.shared);
        thread::Builder::new()
            .name(format!("log-copy-{stream}"))
            .spawn(move || match index {
                Some(index) => copy(&shared, stream, index, reader),
                None => {
                    let drained = io::copy(&mut { reader }, &mut io::sink());
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "no log stream {stream:?} (read {drained:?} bytes and dropped them)"
                        ),
                    ))
                }
            })
    }

    /// Close the streams, flush the logs table (waiting at most `DEFAULT_LOGS_TABLE_WAIT`)
    /// and finish the uploads.
    pub fn finish(self) -> LogsFinished {
        self.finish_with_timeout(DEFAULT_LOGS_TABLE_WAIT)
    }

    /// `finish`, waiting at most `logs_table_wait` for the logs table.
    pub fn finish_with_timeout(mut self, logs_table_wait: Duration) -> LogsFinished {
        let (streams, sink) = self.shared.close();
        let mut finished = LogsFinished {
            files: Vec::with_capacity(STREAMS.len()),
            errors: Vec::new(),
            spool_dir: self.spool_dir.clone(),
            logs_table_dropped_bytes: self.shared.dropped_total.load(Ordering::Relaxed),
            logs_table: None,
        };
        if let Some(sink) = sink {
            let report = sink.close(Instant::now() + logs_table_wait);
            finished.logs_table_dropped_bytes += report.unposted_bytes;
            finished.logs_table = Some(report);
        }
        for (name, stream) in STREAMS.iter().zip(streams) {
            let Some(stream) = stream else {
                // Cannot happen: only finish and drop take the streams, and only once.
                finished
                    .errors
                    .push(format!("{name}.txt: log stream already closed"));
                finished.files.push(FileBlocks {
                    name: format!("{name}.txt"),
                    locators: vec![],
                    size: 0,
                });
                continue;
            };
            match stream.spool.finish() {
                Ok(file) => finished.files.push(file),
                Err(failure) => {
                    finished.errors.push(failure.message);
                    finished.files.push(failure.uploaded);
                }
            }
        }
        if let Some(uploader) = self.uploader.take() {
            uploader.shutdown();
        }
        finished
    }
}

impl Drop for LogPipeline {
    fn drop(&mut self) {
        // Not finished (an early return or a panic in the caller): drop the spool files
        // before the uploader (which waits for them), and let the logs table end.
        drop(self.shared.close());
    }
}

/// The copier loop of one pipe.
fn copy(
    shared: &Arc<Shared>,
    stream: &'static str,
    index: usize,
    mut reader: Box<dyn Read + Send>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut stamper = Timestamper::new(Arc::clone(&shared.clock));
    let mut total = 0u64;
    let mut open = true;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                CrunchLog {
                    shared: Arc::clone(shared),
                }
                .line(&format!("error reading container {stream}: {e}"));
                return Err(e);
            }
        };
        total += n as u64;
        if !open {
            continue;
        }
        let mut out = shared.buffer();
        for slice in buf[..n].chunks(STAMP_SLICE) {
            stamper.stamp(slice, &mut out);
            if out.len() >= READ_SIZE {
                open = shared.write(index, std::mem::replace(&mut out, shared.buffer()));
                if !open {
                    break;
                }
            }
        }
        if open && !out.is_empty() {
            open = shared.write(index, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::test_clock::TestClock;
    use crate::logging::timestamp::format_timestamp;
    use crate::store::memory::MemoryStore;
    use std::sync::Mutex;
    use std::time::{SystemTime, UNIX_EPOCH};

    const UUID: &str = "zzzzz-dz642-xxxxxxxxxxxxxxx";

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_451_404_305, 1) // 2015-12-29T15:51:45.000000001Z
    }

    /// One `MemoryStore` serves as the block store and the logs table.
    struct Setup {
        dir: tempfile::TempDir,
        store: Arc<MemoryStore>,
        clock: Arc<TestClock>,
    }

    impl Setup {
        fn new(store: MemoryStore) -> Setup {
            Setup {
                dir: tempfile::tempdir().unwrap(),
                store: Arc::new(store),
                clock: Arc::new(TestClock::new(t0())),
            }
        }

        fn config(&self) -> LogPipelineConfig {
            LogPipelineConfig {
                spool_dir: self.dir.path().join("logs"),
                container_uuid: UUID.into(),
                logs_table: Some(self.store.clone()),
                echo_crunch_log_to_stderr: false,
                block_size: 64,
                clock: self.clock.clone(),
            }
        }

        fn start(&self) -> LogPipeline {
            LogPipeline::start(self.config(), self.store.clone()).unwrap()
        }

        fn keep_file(&self, files: &[FileBlocks], name: &str) -> Vec<u8> {
            let f = files.iter().find(|f| f.name == name).unwrap();
            let data = self.store.file(&f.locators);
            assert_eq!(data.len() as u64, f.size);
            data
        }
    }

    fn ts() -> String {
        format_timestamp(t0())
    }

    #[test]
    fn streams_go_to_separate_timestamped_files_and_the_logs_table() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let log = p.crunch_log();
        log.line("Hello world!");
        let out = p
            .spawn_copier("stdout", Box::new(&b"out 1\nout 2\n"[..]))
            .unwrap();
        let err = p
            .spawn_copier("stderr", Box::new(&b"err 1\nno newline"[..]))
            .unwrap();
        assert_eq!(out.join().unwrap().unwrap(), 12);
        assert_eq!(err.join().unwrap().unwrap(), 16);
        log.line("two\nlines\n");
        let done = p.finish();
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        let names: Vec<&str> = done.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["crunch-run.txt", "stderr.txt", "stdout.txt"]);
        let ts = ts();
        let crunch = format!("{ts} Hello world!\n{ts} two\n{ts} lines\n");
        let stdout = format!("{ts} out 1\n{ts} out 2\n");
        let stderr = format!("{ts} err 1\n{ts} no newline");
        assert_eq!(
            s.keep_file(&done.files, "crunch-run.txt"),
            crunch.as_bytes()
        );
        assert_eq!(s.keep_file(&done.files, "stdout.txt"), stdout.as_bytes());
        assert_eq!(s.keep_file(&done.files, "stderr.txt"), stderr.as_bytes());
        // Blocks were cut at the configured size.
        assert_eq!(done.files[0].locators.len(), crunch.len().div_ceil(64));
        // The spool is left for the caller.
        let spooled = std::fs::read(done.spool_dir.join("stdout.txt")).unwrap();
        assert_eq!(spooled, stdout.as_bytes());
        // The logs table got the same text with the same timestamps, one POST per stream.
        assert_eq!(s.store.texts("crunch-run"), vec![crunch]);
        assert_eq!(s.store.texts("stdout"), vec![stdout]);
        assert_eq!(s.store.texts("stderr"), vec![stderr + "\n"]);
        assert!(
            s.store
                .logs
                .lock()
                .unwrap()
                .iter()
                .all(|(u, _, _)| u == UUID)
        );
        assert_eq!(done.logs_table_dropped_bytes, 0);
        assert!(done.logs_table.unwrap().finished);
    }

    #[test]
    fn a_snapshot_holds_what_was_logged_so_far_and_logging_goes_on() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let snapshots = p.snapshots();
        let log = p.crunch_log();
        log.line("before");
        let out = p.spawn_copier("stdout", Box::new(&b"out 1\n"[..])).unwrap();
        out.join().unwrap().unwrap();
        let ts = ts();
        let before = format!("{ts} before\n");
        assert_eq!(snapshots.bytes(), (before.len() + ts.len() + 7) as u64);
        let files = snapshots.take(Duration::from_secs(30)).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["crunch-run.txt", "stderr.txt", "stdout.txt"]);
        assert_eq!(s.keep_file(&files, "crunch-run.txt"), before.as_bytes());
        assert_eq!(
            s.keep_file(&files, "stdout.txt"),
            format!("{ts} out 1\n").as_bytes()
        );
        assert_eq!(files[1].size, 0);
        log.line("after");
        let done = p.finish();
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(
            s.keep_file(&done.files, "crunch-run.txt"),
            format!("{before}{ts} after\n").as_bytes()
        );
        // The snapshot's blocks are the final file's first blocks.
        assert!(done.files[0].locators.starts_with(&files[0].locators));
        assert!(
            snapshots.take(Duration::ZERO).is_none(),
            "no snapshot after finish"
        );
    }

    #[test]
    fn empty_streams_still_give_three_files() {
        let s = Setup::new(MemoryStore::new());
        let done = s.start().finish();
        assert!(done.errors.is_empty());
        let want: Vec<FileBlocks> = ["crunch-run.txt", "stderr.txt", "stdout.txt"]
            .iter()
            .map(|n| FileBlocks {
                name: n.to_string(),
                locators: vec![],
                size: 0,
            })
            .collect();
        assert_eq!(done.files, want);
        assert!(s.store.logs.lock().unwrap().is_empty());
    }

    #[test]
    fn binary_output_is_byte_exact_in_keep() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let mut data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        data.extend_from_slice(b"\xff\xfe");
        let h = p
            .spawn_copier("stdout", Box::new(io::Cursor::new(data.clone())))
            .unwrap();
        assert_eq!(h.join().unwrap().unwrap(), data.len() as u64);
        let done = p.finish();
        let kept = s.keep_file(&done.files, "stdout.txt");
        // Removing the timestamps gives back the input exactly.
        let prefix = format!("{} ", ts()).into_bytes();
        let mut unstamped = Vec::new();
        let mut at_start = true;
        let mut rest = &kept[..];
        while !rest.is_empty() {
            if at_start {
                assert!(rest.starts_with(&prefix));
                rest = &rest[prefix.len()..];
            }
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            unstamped.extend_from_slice(&rest[..end]);
            at_start = rest[end - 1] == b'\n';
            rest = &rest[end..];
        }
        assert_eq!(unstamped, data);
    }

    #[test]
    fn a_hanging_logs_table_does_not_slow_the_container() {
        let mut store = MemoryStore::new();
        store.hang_logs = Some(Duration::from_secs(60));
        let s = Setup::new(store);
        let mut cfg = s.config();
        cfg.block_size = 1 << 20;
        let p = LogPipeline::start(cfg, s.store.clone()).unwrap();
        let started = Instant::now();
        let line = b"0123456789 this is a line of container output\n";
        let data: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(line.len() * 100_000)
            .collect();
        let h = p
            .spawn_copier("stdout", Box::new(io::Cursor::new(data.clone())))
            .unwrap();
        assert_eq!(h.join().unwrap().unwrap(), data.len() as u64);
        let done = p.finish_with_timeout(Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert!(done.errors.is_empty());
        assert!(!done.logs_table.unwrap().finished);
        assert!(done.logs_table_dropped_bytes > 0);
        let kept = s.keep_file(&done.files, "stdout.txt");
        let stamped_line = format!("{} {}", ts(), std::str::from_utf8(line).unwrap());
        assert_eq!(kept, stamped_line.repeat(100_000).as_bytes());
    }

    #[test]
    fn a_failed_upload_is_reported_and_the_spool_kept() {
        let s = Setup::new(MemoryStore::new());
        s.store
            .fail_next_puts
            .store(100, std::sync::atomic::Ordering::SeqCst);
        let p = s.start();
        p.crunch_log().line("will not reach Keep");
        let done = p.finish();
        assert_eq!(done.errors.len(), 1);
        assert!(
            done.errors[0].starts_with("crunch-run.txt: could not store the log in Keep: block 0"),
            "{}",
            done.errors[0]
        );
        assert_eq!(done.files[0].locators, Vec::<String>::new());
        let spooled = std::fs::read_to_string(done.spool_dir.join("crunch-run.txt")).unwrap();
        assert_eq!(spooled, format!("{} will not reach Keep\n", ts()));
    }

    #[test]
    fn crunch_log_after_finish_is_a_no_op_and_copiers_drain_to_eof() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let log = p.crunch_log();
        // A pipe that is still written after finish: the copier keeps reading.
        let (r, mut w) = std::io::pipe().unwrap();
        let h = p.spawn_copier("stderr", Box::new(r)).unwrap();
        let done = p.finish();
        log.line("too late");
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                w.write_all(&chunk).unwrap();
            }
        });
        writer.join().unwrap();
        assert_eq!(h.join().unwrap().unwrap(), 64 * 64 * 1024);
        assert_eq!(done.files[0].size, 0);
    }

    #[test]
    fn unknown_stream_is_refused_but_drained() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let h = p.spawn_copier("crunch-run", Box::new(&b"abc"[..])).unwrap();
        let err = h.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        p.finish();
    }

    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn crunch_run_stream_is_echoed_with_the_container_uuid() {
        let s = Setup::new(MemoryStore::new());
        let echoed = Arc::new(Mutex::new(Vec::new()));
        let p = LogPipeline::start_with_echo(
            s.config(),
            s.store.clone(),
            Some(Box::new(SharedBuf(echoed.clone()))),
        )
        .unwrap();
        p.crunch_log().line("starting");
        let h = p
            .spawn_copier("stdout", Box::new(&b"not echoed\n"[..]))
            .unwrap();
        h.join().unwrap().unwrap();
        p.finish();
        assert_eq!(
            String::from_utf8(echoed.lock().unwrap().clone()).unwrap(),
            format!("{UUID} {} starting\n", ts())
        );
    }

    #[test]
    fn read_errors_are_logged_and_returned() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("pipe broke"))
            }
        }
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let h = p.spawn_copier("stdout", Box::new(Failing)).unwrap();
        assert!(h.join().unwrap().is_err());
        let done = p.finish();
        assert_eq!(
            s.keep_file(&done.files, "crunch-run.txt"),
            format!("{} error reading container stdout: pipe broke\n", ts()).as_bytes()
        );
    }
}
