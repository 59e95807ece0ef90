//! The log pipeline of one run: crunch-run's own log lines, the container's stdout and
//! stderr, and any stream or file opened while it runs, spooled to the files of the log
//! collection and (streams only) offered to the live logs table.
//!
//! ```text
//! docker stdout ─ copier thread: read ≤64 KiB, timestamp line starts ─┐ per file, under
//! docker stderr ─ copier thread                                       │ its own lock:
//! CrunchLog (any thread, crunch-run stream) ──────────────────────────┤
//! LogStream (e.g. crunchstat, opened with `stream`) ──────────────────┘
//!     ├─► SpoolFile of the file (md5, write) → Uploader thread → BlockStore
//!     ├─► LogsTableSink (try_send: drops, never waits)
//!     └─► stderr, crunch-run stream only
//! write_file (e.g. node-info.txt): raw bytes, once ─► SpoolFile only
//! ```
//!
//! Every timestamped stream `<name>` is spooled to `<name>.txt` and posted to the logs table
//! with event type `<name>`; a raw file gets no timestamps and stays out of the logs table.
//! `crunch-run.txt`, `stderr.txt` and `stdout.txt` are always there, empty or not.
//!
//! Each writer spools its own bytes: no thread hop between reading a pipe and writing its
//! spool file. Memory stays flat: buffers are fixed-size and recycled, the logs table's
//! queue is bounded, and blocks are read back from the spool files for upload. Only the
//! Keep copy applies backpressure (a slow disk slows the container down); the logs table
//! never does.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::files::{
    Closed, Echo, LogFile, OpenFile, POOL_SIZE, Shared, check_file_name, lock, stamp_lines,
};
pub use super::files::{CrunchLog, LogSnapshots, LogStream};
use super::late::{LastLine, LateLog, LateTable};
use super::logs_table::{LogsTable, LogsTableConfig, LogsTableReport, LogsTableSink};
use super::spool::{DEFAULT_BLOCK_SIZE, SpoolFile, Uploader};
use super::timestamp::{Clock, LinePrefixer};
#[cfg(test)]
use crate::progress::Cadence;
use crate::progress::Progress;
use crate::store::{ApiStore, BlockStore, FileBlocks};

/// crunch-run's own stream; it is written line by line, never by a copier.
const CRUNCH_RUN: &str = "crunch-run";
const CRUNCH_RUN_FILE: &str = "crunch-run.txt";
/// The streams every log collection has, after crunch-run's, in this order.
const OTHER_FIRST_STREAMS: [&str; 2] = ["stderr", "stdout"];

/// Chunks waiting for the logs table before it drops.
const SINK_QUEUE: usize = 16;
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
    /// `crunch-run.txt`, `stderr.txt`, `stdout.txt` (empty ones too), then the streams and
    /// raw files opened while it ran, in the order they were opened. A file whose upload
    /// failed is given as its longest prefix that the store confirmed.
    pub files: Vec<FileBlocks>,
    /// Spooling and upload failures: the files in `spool_dir` are then the only copy.
    pub errors: Vec<String>,
    pub spool_dir: PathBuf,
}

/// The running pipeline. Call `finish` once the copiers have returned.
pub struct LogPipeline {
    shared: Arc<Shared>,
    crunch_run: Arc<LogFile>,
    spooler: Spooler,
}

/// Creates the spool files of the log collection; their full blocks go to `uploader`.
struct Spooler {
    dir: PathBuf,
    block_size: u64,
    /// Taken by `finish`, after the files.
    uploader: Option<Uploader>,
}

impl Spooler {
    /// Add the file `name`, holding `bytes` so far, to the list of log files.
    fn add(
        &self,
        files: &mut Vec<Arc<LogFile>>,
        name: String,
        event_type: Option<&'static str>,
        echo: Option<Echo>,
        bytes: &[u8],
    ) -> io::Result<Arc<LogFile>> {
        let uploader = self
            .uploader
            .as_ref()
            .ok_or_else(|| io::Error::other("the log pipeline has finished"))?;
        let mut spool = SpoolFile::create(&self.dir, &name, self.block_size, uploader)?;
        spool.write(bytes)?;
        let file = Arc::new(LogFile {
            name,
            event_type,
            state: Mutex::new(Some(OpenFile::new(spool, echo))),
        });
        files.push(Arc::clone(&file));
        Ok(file)
    }
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
    pub(crate) fn start_with_echo(
        cfg: LogPipelineConfig,
        blocks: Arc<dyn BlockStore>,
        echo: Option<Box<dyn Write + Send>>,
    ) -> io::Result<LogPipeline> {
        // crunch-run's user only: the logs are the container's (issue 10, point 1).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&cfg.spool_dir)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "creating log spool directory {}: {e}",
                        cfg.spool_dir.display()
                    ),
                )
            })?;
        let spooler = Spooler {
            dir: cfg.spool_dir,
            block_size: match cfg.block_size {
                0 => DEFAULT_BLOCK_SIZE,
                n => n,
            },
            uploader: Some(Uploader::start(blocks)?),
        };
        let echo = echo.map(|w| {
            let prefixer = LinePrefixer::new(format!("{} ", cfg.container_uuid));
            (w, prefixer, Vec::new())
        });
        let mut files = Vec::new();
        let crunch_run = spooler.add(
            &mut files,
            CRUNCH_RUN_FILE.into(),
            Some(CRUNCH_RUN),
            echo,
            b"",
        )?;
        for name in OTHER_FIRST_STREAMS {
            spooler.add(&mut files, format!("{name}.txt"), Some(name), None, b"")?;
        }
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
                files: Mutex::new(files),
                sink: Mutex::new(sink),
                dropped_total: AtomicU64::new(0),
                pool_tx,
                pool_rx,
                clock: cfg.clock,
                closed: AtomicBool::new(false),
            }),
            crunch_run,
            spooler,
        })
    }

    /// Snapshots of the log files while it runs.
    pub fn snapshots(&self) -> LogSnapshots {
        LogSnapshots::new(Arc::clone(&self.shared))
    }

    /// A writer of the crunch-run stream.
    pub fn crunch_log(&self) -> CrunchLog {
        LogStream::new(Arc::clone(&self.shared), Arc::clone(&self.crunch_run))
    }

    /// The timestamped stream `name`: spooled to `<name>.txt`, posted to the logs table with
    /// event type `name`, saved with the other log files. Opened by the first call, at any
    /// time while the pipeline runs; later calls give another writer of the same stream.
    /// Fails if `<name>.txt` is a raw file, or cannot name or create a file.
    pub fn stream(&self, name: &'static str) -> io::Result<LogStream> {
        check_file_name(name)?;
        let file_name = format!("{name}.txt");
        let mut files = lock(&self.shared.files);
        let file = match files.iter().find(|f| f.name == file_name) {
            Some(file) if file.event_type.is_some() => Arc::clone(file),
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{file_name} is already a raw log file"),
                ));
            }
            None => self
                .spooler
                .add(&mut files, file_name, Some(name), None, b"")?,
        };
        Ok(LogStream::new(Arc::clone(&self.shared), file))
    }

    /// Add `bytes` to the log collection as the file `name`, as they are: no timestamps,
    /// not in the logs table. For files written once (`node-info.txt`, `container.json`).
    /// Fails if the name is taken or the file cannot be spooled; the log collection then
    /// has no such file.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        check_file_name(name)?;
        let mut files = lock(&self.shared.files);
        if files.iter().any(|f| f.name == name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} is already a log file"),
            ));
        }
        self.spooler
            .add(&mut files, name.to_string(), None, None, bytes)
            .map(drop)
    }

    /// Copy `reader` into the log stream `stream` (e.g. "stdout"; opened if need be, as by
    /// `stream`) on a new thread, timestamping its lines. The thread reads until EOF, even
    /// after `finish` (discarding), so the container never blocks on a full pipe, and
    /// returns the number of bytes read. Read errors are logged to the crunch-run stream
    /// and not returned: reading goes on after one, and stops only when they come
    /// `MAX_READ_ERRORS` times in a row (a pipe that cannot be read any more).
    /// crunch-run's own stream takes no copier: that, or a stream that cannot be opened,
    /// gives a thread that reads `reader` to its end, drops what it read, and returns why.
    pub fn spawn_copier(
        &self,
        stream: &'static str,
        reader: Box<dyn Read + Send>,
    ) -> io::Result<JoinHandle<io::Result<u64>>> {
        let target = match stream {
            CRUNCH_RUN => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "crunch-run's own stream takes no copier",
            )),
            _ => self.stream(stream),
        };
        let crunch_log = self.crunch_log();
        thread::Builder::new()
            .name(format!("log-copy-{stream}"))
            .spawn(move || match target {
                Ok(log) => Ok(log.copy(reader, &crunch_log)),
                Err(e) => {
                    let drained = io::copy(&mut { reader }, &mut io::sink());
                    Err(io::Error::new(
                        e.kind(),
                        format!(
                            "no log stream {stream:?}: {e} (read {drained:?} bytes and dropped them)"
                        ),
                    ))
                }
            })
    }

    /// Wait until the full blocks written so far are stored (when Keep is slower than the
    /// container wrote, that can be most of a big log): `start` makes the progress of
    /// those bytes, which is only made when there are some. Writers may still write.
    pub fn wait_for_uploads<'a>(&self, start: impl FnOnce(u64) -> Progress<'a>) {
        let Some(uploader) = &self.spooler.uploader else {
            return;
        };
        let outstanding = uploader.backlog().outstanding();
        if outstanding == 0 {
            return;
        }
        let progress = start(outstanding);
        uploader.wait_drained(|bytes| progress.advance(bytes));
        progress.finish();
    }

    /// Close the streams, flush the logs table (waiting at most `DEFAULT_LOGS_TABLE_WAIT`),
    /// say in crunch-run.txt what the logs table lacks if anything, and finish the uploads.
    pub fn finish(self) -> LogsFinished {
        self.finish_with_timeout(DEFAULT_LOGS_TABLE_WAIT)
    }

    /// `finish`, waiting at most `logs_table_wait` for the logs table.
    pub fn finish_with_timeout(mut self, logs_table_wait: Duration) -> LogsFinished {
        let files = self.close_streams(logs_table_wait);
        self.finish_files(files)
    }

    /// `finish`, with `line` (the final state) as the last line of crunch-run.txt: spooled,
    /// so the saved log collection has it, but held back from stderr and the logs table
    /// until the returned `LastLine` is confirmed or corrected (see late.rs).
    /// The logs table is not waited for: it posts what the streams left while the files
    /// are finished and saved, and the lines said after (`LateLog::close` waits for it).
    pub fn finish_with_last_line(mut self, line: &str) -> (LogsFinished, LastLine) {
        let (mut files, table) = self.begin_closing(DEFAULT_LOGS_TABLE_WAIT);
        let now = self.shared.clock.now();
        let crunch_run = files
            .iter_mut()
            .find(|(name, _)| name == CRUNCH_RUN_FILE)
            .and_then(|(_, open)| open.as_mut());
        let (offset, stamped, echo) = match crunch_run {
            Some(file) => {
                let (offset, stamped) = file.spool_line(now, line);
                (offset, stamped, file.take_echo())
            }
            // Cannot happen: crunch-run.txt is open until here.
            None => {
                let mut stamped = Vec::new();
                stamp_lines(now, line, &mut stamped);
                (0, stamped, None)
            }
        };
        let late = LateLog::new(echo, table, Arc::clone(&self.shared.clock));
        let path = self.spooler.dir.join(CRUNCH_RUN_FILE);
        let finished = self.finish_files(files);
        (finished, LastLine::new(late, path, offset, stamped))
    }

    /// Close the streams and the logs table; say in crunch-run.txt what the logs table
    /// lacks, if anything. Returns the files, still to be finished.
    fn close_streams(&mut self, logs_table_wait: Duration) -> Vec<(String, Option<OpenFile>)> {
        let Closed { mut files, sink } = self.shared.close();
        if let Some(sink) = sink {
            let report = sink.close(Instant::now() + logs_table_wait);
            let dropped = self.shared.dropped_total.load(Ordering::Relaxed);
            let crunch_run = files.iter_mut().find(|(name, _)| name == CRUNCH_RUN_FILE);
            if let (Some(note), Some((_, Some(file)))) = (
                logs_table_shortfall(dropped, &report, logs_table_wait),
                crunch_run,
            ) {
                file.write_line(self.shared.clock.now(), &note);
            }
        }
        files
    }

    /// Close the streams, and the logs table without waiting for it; say in crunch-run.txt
    /// what it lacks so far, if anything.
    fn begin_closing(
        &mut self,
        logs_table_wait: Duration,
    ) -> (Vec<(String, Option<OpenFile>)>, Option<LateTable>) {
        let Closed { mut files, sink } = self.shared.close();
        let Some(sink) = sink else {
            return (files, None);
        };
        let sink = sink.begin_close(Instant::now() + logs_table_wait);
        let said = sink.so_far();
        let dropped = self.shared.dropped_total.load(Ordering::Relaxed);
        let crunch_run = files.iter_mut().find(|(name, _)| name == CRUNCH_RUN_FILE);
        if let (Some(note), Some((_, Some(file)))) = (
            logs_table_shortfall(dropped, &said, logs_table_wait),
            crunch_run,
        ) {
            file.write_line(self.shared.clock.now(), &note);
        }
        let table = LateTable {
            sink,
            waited: logs_table_wait,
            said,
        };
        (files, Some(table))
    }

    /// Finish every spool file, then the uploads.
    fn finish_files(&mut self, files: Vec<(String, Option<OpenFile>)>) -> LogsFinished {
        let mut finished = LogsFinished {
            files: Vec::with_capacity(files.len()),
            errors: Vec::new(),
            spool_dir: self.spooler.dir.clone(),
        };
        let (names, spools): (Vec<String>, Vec<Option<SpoolFile>>) = files
            .into_iter()
            .map(|(name, open)| (name, open.map(|o| o.spool)))
            .unzip();
        for (name, done) in names.into_iter().zip(finish_spools(spools)) {
            match done {
                Some(Ok(file)) => finished.files.push(file),
                Some(Err(failure)) => {
                    finished.errors.push(failure.message);
                    finished.files.push(failure.uploaded);
                }
                // Cannot happen: only finish and drop take the files, and only once.
                None => {
                    finished
                        .errors
                        .push(format!("{name}: log stream already closed"));
                    finished.files.push(FileBlocks {
                        name,
                        locators: vec![],
                        size: 0,
                    });
                }
            }
        }
        if let Some(uploader) = self.spooler.uploader.take() {
            uploader.shutdown();
        }
        finished
    }
}

/// Finish every spool file at once, a thread each, so that their last blocks are PUT
/// side by side rather than one file after the other (each is a round trip at the end of
/// every run). A file whose thread cannot be started is finished here afterwards.
fn finish_spools(
    spools: Vec<Option<SpoolFile>>,
) -> Vec<Option<Result<FileBlocks, super::spool::SpoolFailure>>> {
    let slots: Vec<Mutex<Option<SpoolFile>>> = spools.into_iter().map(Mutex::new).collect();
    let finish = |slot: &Mutex<Option<SpoolFile>>| lock(slot).take().map(SpoolFile::finish);
    thread::scope(|scope| {
        let started: Vec<_> = slots
            .iter()
            .map(|slot| {
                thread::Builder::new()
                    .name("log-finish".into())
                    .spawn_scoped(scope, move || finish(slot))
                    .ok()
            })
            .collect();
        slots
            .iter()
            .zip(started)
            .map(|(slot, thread)| {
                let done = thread.and_then(|t| t.join().ok()).flatten();
                done.or_else(|| finish(slot))
            })
            .collect()
    })
}

/// What the logs table lacks, as a line for crunch-run.txt (which has it all): the bytes
/// dropped at its queue because it was too slow, that failed to post, or that were still
/// waiting when `finish` stopped waiting for it. None if it lacks nothing. Throttled bytes
/// are not counted: the table says so itself.
pub(super) fn logs_table_shortfall(
    dropped_at_queue: u64,
    report: &LogsTableReport,
    waited: Duration,
) -> Option<String> {
    let missed = dropped_at_queue + report.unposted_bytes;
    if missed == 0 && report.finished {
        return None;
    }
    let mut why = Vec::new();
    if dropped_at_queue > 0 {
        why.push("it was too slow to keep up".to_string());
    }
    match report.failed_posts {
        0 => {}
        1 => why.push("1 post failed".to_string()),
        n => why.push(format!("{n} posts failed")),
    }
    if !report.finished {
        let waited = humantime::format_duration(waited);
        why.push(format!("it was still busy after {waited}"));
    } else if why.is_empty() {
        why.push("it ran out of time".to_string());
    }
    let amount = match (missed, report.finished) {
        (n, true) => format!("{n} bytes"),
        (0, false) => "some".to_string(),
        (n, false) => format!("at least {n} bytes"),
    };
    Some(format!(
        "Warning: the logs table lacks {amount} of this run's logs ({}); \
         the log collection has them all",
        why.join(", ")
    ))
}

impl Drop for LogPipeline {
    fn drop(&mut self) {
        // Not finished (an early return or a panic in the caller): drop the spool files
        // before the uploader (which waits for them), and let the logs table end.
        drop(self.shared.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::test_clock::TestClock;
    use crate::process::MAX_READ_ERRORS;
    use crate::rfc3339::format_timestamp;
    use crate::store::memory::MemoryStore;
    use crate::test_io::{Scripted, SharedBuf};
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
    fn the_files_last_blocks_are_put_side_by_side() {
        let s = Setup::new(MemoryStore::new());
        let pause = Duration::from_millis(300);
        *s.store.block_delay.lock().unwrap() = Some(pause);
        let p = s.start();
        p.crunch_log().line("short");
        for name in ["stdout", "stderr"] {
            let copier = p.spawn_copier(name, Box::new(&b"a line\n"[..])).unwrap();
            copier.join().unwrap().unwrap();
        }
        let t = Instant::now();
        let done = p.finish_with_timeout(Duration::from_secs(5));
        let took = t.elapsed();
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert!(done.files.iter().all(|f| f.locators.len() == 1));
        assert_eq!(s.store.puts.load(Ordering::SeqCst), 3);
        // One file after the other: three pauses.
        assert!(took < pause * 2, "{took:?}");
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
        // crunch-run.txt says what the logs table lacks.
        let crunch = String::from_utf8(s.keep_file(&done.files, "crunch-run.txt")).unwrap();
        let note = crunch
            .strip_prefix(&format!("{} Warning: the logs table lacks at least ", ts()))
            .unwrap_or_else(|| panic!("{crunch}"));
        let (bytes, why) = note.split_once(" bytes of this run's logs (").unwrap();
        assert!(bytes.parse::<u64>().unwrap() > 0, "{crunch}");
        assert_eq!(
            why,
            "it was too slow to keep up, it was still busy after 300ms); \
             the log collection has them all\n"
        );
        let kept = s.keep_file(&done.files, "stdout.txt");
        let stamped_line = format!("{} {}", ts(), std::str::from_utf8(line).unwrap());
        assert_eq!(kept, stamped_line.repeat(100_000).as_bytes());
    }

    #[test]
    fn what_a_failing_logs_table_lacks_is_counted_in_crunch_run_txt() {
        let mut store = MemoryStore::new();
        store.fail_logs = true;
        let s = Setup::new(store);
        let p = s.start();
        p.crunch_log().line("hello");
        let done = p.finish();
        let hello = format!("{} hello\n", ts());
        assert_eq!(
            String::from_utf8(s.keep_file(&done.files, "crunch-run.txt")).unwrap(),
            format!(
                "{hello}{} Warning: the logs table lacks {} bytes of this run's logs \
                 (1 post failed); the log collection has them all\n",
                ts(),
                hello.len()
            )
        );
    }

    #[test]
    fn the_logs_table_shortfall_names_every_cause_and_nothing_when_complete() {
        let report = |unposted_bytes, failed_posts, finished| LogsTableReport {
            posts: 3,
            failed_posts,
            unposted_bytes,
            finished,
        };
        let wait = Duration::from_secs(5);
        assert_eq!(logs_table_shortfall(0, &report(0, 0, true), wait), None);
        let note = |dropped, r| logs_table_shortfall(dropped, &r, wait).unwrap();
        assert_eq!(
            note(0, report(10, 0, true)),
            "Warning: the logs table lacks 10 bytes of this run's logs (it ran out of time); \
             the log collection has them all"
        );
        assert_eq!(
            note(7, report(10, 2, false)),
            "Warning: the logs table lacks at least 17 bytes of this run's logs (it was too \
             slow to keep up, 2 posts failed, it was still busy after 5s); the log collection \
             has them all"
        );
        // Busy at the deadline with nothing counted yet: still worth saying.
        assert_eq!(
            note(0, report(0, 0, false)),
            "Warning: the logs table lacks some of this run's logs (it was still busy after \
             5s); the log collection has them all"
        );
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
    fn a_copier_into_crunch_run_or_a_bad_name_is_refused_but_drained() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        for name in ["crunch-run", "a/b"] {
            let h = p.spawn_copier(name, Box::new(&b"abc"[..])).unwrap();
            let err = h.join().unwrap().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name}");
            assert!(err.to_string().contains("read Ok(3) bytes"), "{err}");
        }
        let done = p.finish();
        assert_eq!(done.files.len(), 3);
        assert_eq!(done.files[0].size, 0, "nothing reached crunch-run.txt");
    }

    fn names(files: &[FileBlocks]) -> Vec<&str> {
        files.iter().map(|f| f.name.as_str()).collect()
    }

    /// The files every log collection has, then `more`.
    fn first_three_and(more: &[&'static str]) -> Vec<&'static str> {
        [&["crunch-run.txt", "stderr.txt", "stdout.txt"][..], more].concat()
    }

    #[test]
    fn streams_opened_while_running_are_timestamped_saved_and_in_the_logs_table() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        p.crunch_log().line("starting");
        let crunchstat = p.stream("crunchstat").unwrap();
        crunchstat.line("mem 1 cache");
        // A copier opens its stream if need be.
        let h = p
            .spawn_copier("arv-mount", Box::new(&b"mounted\nno newline"[..]))
            .unwrap();
        assert_eq!(h.join().unwrap().unwrap(), 18);
        // Opening it again gives the same stream.
        p.stream("crunchstat").unwrap().line("cpu 2\nnet 3");
        let done = p.finish();
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(
            names(&done.files),
            first_three_and(&["crunchstat.txt", "arv-mount.txt"])
        );
        let ts = ts();
        let stats = format!("{ts} mem 1 cache\n{ts} cpu 2\n{ts} net 3\n");
        let mount = format!("{ts} mounted\n{ts} no newline");
        assert_eq!(s.keep_file(&done.files, "crunchstat.txt"), stats.as_bytes());
        assert_eq!(s.keep_file(&done.files, "arv-mount.txt"), mount.as_bytes());
        assert_eq!(s.store.texts("crunchstat"), vec![stats]);
        assert_eq!(s.store.texts("arv-mount"), vec![mount + "\n"]);
        assert_eq!(
            s.store.texts("crunch-run"),
            vec![format!("{ts} starting\n")]
        );
    }

    #[test]
    fn raw_files_are_kept_byte_exact_without_timestamps_or_logs_table() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        // Over one block (64 bytes in these tests), with no final newline and a byte that
        // is not UTF-8.
        let node_info: Vec<u8> = b"cpu: 4\nmemory: 8 GiB\n"
            .iter()
            .copied()
            .cycle()
            .take(100)
            .chain(*b"\xff")
            .collect();
        p.write_file("node-info.txt", &node_info).unwrap();
        p.write_file("container.json", b"{}\n").unwrap();
        p.crunch_log().line("after");
        let done = p.finish();
        assert!(done.errors.is_empty(), "{:?}", done.errors);
        assert_eq!(
            names(&done.files),
            first_three_and(&["node-info.txt", "container.json"])
        );
        assert_eq!(s.keep_file(&done.files, "node-info.txt"), node_info);
        assert_eq!(done.files[3].locators.len(), 2);
        assert_eq!(s.keep_file(&done.files, "container.json"), b"{}\n");
        let logged: Vec<String> = s
            .store
            .logs
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.1.clone())
            .collect();
        assert_eq!(
            logged,
            ["crunch-run"],
            "only crunch-run's line reached the logs table"
        );
    }

    #[test]
    fn a_log_file_name_is_taken_once() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        p.write_file("node-info.txt", b"first").unwrap();
        let kind = |r: io::Result<()>| r.unwrap_err().kind();
        assert_eq!(
            kind(p.write_file("node-info.txt", b"second")),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind(p.write_file("stdout.txt", b"x")),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind(p.stream("node-info").map(drop)),
            io::ErrorKind::AlreadyExists
        );
        for bad in ["", ".", "..", "a/b", "nul\0"] {
            assert_eq!(kind(p.write_file(bad, b"x")), io::ErrorKind::InvalidInput);
        }
        assert_eq!(kind(p.stream("").map(drop)), io::ErrorKind::InvalidInput);
        let done = p.finish();
        assert_eq!(s.keep_file(&done.files, "node-info.txt"), b"first");
        assert_eq!(done.files.len(), 4);
    }

    #[test]
    fn a_snapshot_holds_the_streams_and_files_opened_so_far() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let snapshots = p.snapshots();
        p.stream("crunchstat").unwrap().line("mem 1");
        p.write_file("node-info.txt", b"raw").unwrap();
        let files = snapshots.take(Duration::from_secs(30)).unwrap();
        assert_eq!(
            names(&files),
            first_three_and(&["crunchstat.txt", "node-info.txt"])
        );
        assert_eq!(
            s.keep_file(&files, "crunchstat.txt"),
            format!("{} mem 1\n", ts()).as_bytes()
        );
        assert_eq!(s.keep_file(&files, "node-info.txt"), b"raw");
        assert_eq!(snapshots.bytes(), files.iter().map(|f| f.size).sum::<u64>());
        p.finish();
    }

    /// A pipeline echoing into a buffer, with `logs_table` or not.
    fn echoing(s: &Setup, logs_table: bool) -> (LogPipeline, SharedBuf) {
        let echoed = SharedBuf::default();
        let mut cfg = s.config();
        if !logs_table {
            cfg.logs_table = None;
        }
        let echo = Box::new(echoed.clone());
        let p = LogPipeline::start_with_echo(cfg, s.store.clone(), Some(echo)).unwrap();
        (p, echoed)
    }

    #[test]
    fn crunch_run_stream_is_echoed_with_the_container_uuid() {
        let s = Setup::new(MemoryStore::new());
        let (p, echoed) = echoing(&s, true);
        p.crunch_log().line("starting");
        let h = p
            .spawn_copier("stdout", Box::new(&b"not echoed\n"[..]))
            .unwrap();
        h.join().unwrap().unwrap();
        p.finish();
        assert_eq!(echoed.text(), format!("{UUID} {} starting\n", ts()));
    }

    #[test]
    fn the_last_line_is_spooled_but_said_only_once_confirmed() {
        let s = Setup::new(MemoryStore::new());
        let (p, echoed) = echoing(&s, true);
        p.crunch_log().line("hello");
        let (done, last) = p.finish_with_last_line("Complete");
        let ts = ts();
        assert_eq!(
            String::from_utf8(s.keep_file(&done.files, "crunch-run.txt")).unwrap(),
            format!("{ts} hello\n{ts} Complete\n"),
            "the saved collection has it"
        );
        assert_eq!(echoed.text(), format!("{UUID} {ts} hello\n"));
        let mut late = last.confirm();
        assert_eq!(
            echoed.text(),
            format!("{UUID} {ts} hello\n{UUID} {ts} Complete\n")
        );
        late.line("after");
        assert!(echoed.text().ends_with(&format!("{UUID} {ts} after\n")));
        // Posted by the logs table's thread, in order, without the caller waiting.
        late.close();
        assert_eq!(
            s.store.texts("crunch-run").concat(),
            format!("{ts} hello\n{ts} Complete\n{ts} after\n")
        );
    }

    /// Issue 12: blocks the uploader has not stored yet (Keep slower than the container)
    /// are waited for with progress lines in crunch-run.txt, before it closes; without a
    /// backlog nothing is said.
    #[test]
    fn a_log_upload_backlog_is_waited_for_with_progress_lines() {
        let s = Setup::new(MemoryStore::new());
        *s.store.block_delay.lock().unwrap() = Some(Duration::from_millis(100));
        let p = s.start();
        let out = p.stream("stdout").unwrap();
        out.line(&"x".repeat(64 * 10 - 32)); // ten full blocks, timestamps included
        let fast = Cadence {
            first: Duration::from_millis(250),
            every: Duration::from_millis(300),
        };
        let crunch = p.crunch_log();
        let say = move |line: &str| crunch.line_kept(line);
        p.wait_for_uploads(|total| Progress::new("Saving the logs", Some(total), fast, say));
        let done = p.finish();
        let text = String::from_utf8(s.keep_file(&done.files, "crunch-run.txt")).unwrap();
        let lines: Vec<_> = text
            .lines()
            .filter(|l| l.contains("Saving the logs: "))
            .collect();
        assert!(lines.len() >= 2, "{text}");
        assert!(lines[0].contains(" of 640 bytes ("), "{text}");
        assert!(
            lines
                .last()
                .unwrap()
                .contains("640 bytes of 640 bytes (100%)"),
            "{text}"
        );
        assert!(lines.last().unwrap().contains(", done in "), "{text}");
        // Nothing queued: no progress made, nothing said.
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        p.wait_for_uploads(|_| panic!("no backlog, no progress"));
        p.finish();
    }

    #[test]
    fn the_logs_table_is_not_waited_for_before_the_save_nor_after_the_last_line() {
        let s = Setup::new({
            let mut store = MemoryStore::new();
            store.hang_logs = Some(Duration::from_millis(400));
            store
        });
        let (p, _echoed) = echoing(&s, true);
        p.crunch_log().line("hello");
        let started = Instant::now();
        let (_done, last) = p.finish_with_last_line("Complete");
        let late = last.confirm();
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        late.close();
        assert_eq!(s.store.texts("crunch-run").concat().lines().count(), 2);
    }

    #[test]
    fn a_corrected_last_line_is_replaced_on_disk_and_said_instead() {
        let s = Setup::new(MemoryStore::new());
        let (p, echoed) = echoing(&s, true);
        p.crunch_log().line("hello");
        let (done, last) = p.finish_with_last_line("Complete");
        last.correct("the save failed\nCancelled").close();
        let ts = ts();
        let true_lines = format!("{ts} the save failed\n{ts} Cancelled\n");
        let kept = std::fs::read_to_string(done.spool_dir.join("crunch-run.txt")).unwrap();
        assert_eq!(kept, format!("{ts} hello\n{true_lines}"));
        assert_eq!(
            s.store.texts("crunch-run").concat(),
            format!("{ts} hello\n{true_lines}")
        );
        assert_eq!(
            echoed.text(),
            format!("{UUID} {ts} hello\n{UUID} {ts} the save failed\n{UUID} {ts} Cancelled\n")
        );
    }

    #[test]
    fn without_a_logs_table_late_lines_go_to_stderr_only() {
        let s = Setup::new(MemoryStore::new());
        let (p, echoed) = echoing(&s, false);
        let (_, last) = p.finish_with_last_line("Complete");
        let mut late = last.confirm();
        late.line("removing failed");
        late.close();
        assert!(s.store.logs.lock().unwrap().is_empty());
        let ts = ts();
        assert_eq!(
            echoed.text(),
            format!("{UUID} {ts} Complete\n{UUID} {ts} removing failed\n")
        );
    }

    #[test]
    fn a_read_error_is_logged_once_and_reading_goes_on() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let script = [
            Ok(&b"before\n"[..]),
            Err("pipe broke"),
            Ok(b"after\n"),
            Err("pipe broke again"),
            Ok(b"end\n"),
        ];
        let h = p
            .spawn_copier("stdout", Box::new(Scripted::new(script)))
            .unwrap();
        // Logged here, so not returned: the caller would log it a second time.
        assert_eq!(h.join().unwrap().unwrap(), 17);
        let done = p.finish();
        let ts = ts();
        assert_eq!(
            String::from_utf8(s.keep_file(&done.files, "stdout.txt")).unwrap(),
            format!("{ts} before\n{ts} after\n{ts} end\n"),
            "nothing after the error is lost"
        );
        assert_eq!(
            String::from_utf8(s.keep_file(&done.files, "crunch-run.txt")).unwrap(),
            format!("{ts} error reading container stdout: pipe broke; reading on\n")
        );
    }

    #[test]
    fn a_reader_that_only_fails_is_given_up() {
        let s = Setup::new(MemoryStore::new());
        let p = s.start();
        let mut script = vec![Ok(&b"some\n"[..])];
        script.extend(std::iter::repeat_n(Err("bad fd"), 100));
        script.push(Ok(b"never read\n"));
        let h = p
            .spawn_copier("stderr", Box::new(Scripted::new(script)))
            .unwrap();
        assert_eq!(h.join().unwrap().unwrap(), 5);
        let done = p.finish();
        let ts = ts();
        assert_eq!(
            String::from_utf8(s.keep_file(&done.files, "crunch-run.txt")).unwrap(),
            format!(
                "{ts} error reading container stderr: bad fd; reading on\n\
                 {ts} stopped reading container stderr after {MAX_READ_ERRORS} errors in a row: bad fd\n"
            )
        );
        assert_eq!(
            s.keep_file(&done.files, "stderr.txt"),
            format!("{ts} some\n").as_bytes()
        );
    }
}
