//! A collection file written through a local spool: the bytes go to `<spool_dir>/<name>`,
//! their md5 is computed as they arrive, and every complete block is handed to an
//! `Uploader` thread that PUTs it to the block store straight from the spool file (never
//! holding a block in RAM). The spool file stays on disk: it is the local copy of the log
//! until the caller has saved the collection, and the only copy if an upload failed.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use md5::{Digest, Md5};

use crate::arvados::manifest::hex;

use crate::store::{BlockStore, FileBlocks, StoreError};
use crate::writeback::WritebackFile;

/// Keep's block size.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 20;

/// One block of a spool file: where it is and what it hashes to.
#[derive(Debug, Clone)]
struct Block {
    index: usize,
    offset: u64,
    len: u64,
    hash: String,
}

/// An upload request for the uploader thread; the answer goes to `reply`.
struct Job {
    path: Arc<PathBuf>,
    block: Block,
    reply: Sender<(usize, Result<String, StoreError>)>,
}

/// PUT one block, read from `path` at its offset.
fn put_from_file(
    blocks: &dyn BlockStore,
    path: &Path,
    block: &Block,
) -> Result<String, StoreError> {
    blocks.put_block_from_file(&block.hash, block.len, path, block.offset)
}

/// Bytes queued for the uploader, and bytes it has done with (stored or failed).
#[derive(Default)]
pub struct Backlog {
    counts: Mutex<(u64, u64)>,
    changed: Condvar,
}

impl Backlog {
    fn counts(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queued(&self, bytes: u64) {
        self.counts().0 += bytes;
    }

    fn done(&self, bytes: u64) {
        self.counts().1 += bytes;
        self.changed.notify_all();
    }

    /// Bytes queued and not yet done with.
    pub fn outstanding(&self) -> u64 {
        let (queued, done) = *self.counts();
        queued.saturating_sub(done)
    }

    /// Wait until the uploader has done with everything queued so far (not what is queued
    /// meanwhile), telling `step` the bytes done as they are; gives up once `alive` says
    /// the uploader is gone.
    fn wait_drained(&self, alive: impl Fn() -> bool, mut step: impl FnMut(u64)) {
        let mut counts = self.counts();
        let (target, mut seen) = *counts;
        while target > counts.1 && alive() {
            counts = match self.changed.wait_timeout(counts, Duration::from_secs(1)) {
                Ok((c, _)) => c,
                Err(e) => e.into_inner().0,
            };
            if counts.1 > seen {
                let delta = counts.1 - seen;
                seen = counts.1;
                drop(counts);
                step(delta);
                counts = self.counts();
            }
        }
    }
}

/// A thread that uploads blocks of spool files, one at a time, in the order submitted.
pub struct Uploader {
    blocks: Arc<dyn BlockStore>,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    backlog: Arc<Backlog>,
}

impl Uploader {
    pub fn start(blocks: Arc<dyn BlockStore>) -> io::Result<Uploader> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let store = Arc::clone(&blocks);
        let backlog = Arc::new(Backlog::default());
        let counted = Arc::clone(&backlog);
        let thread = thread::Builder::new()
            .name("log-uploader".into())
            .spawn(move || {
                for job in rx {
                    let result = put_from_file(store.as_ref(), &job.path, &job.block);
                    counted.done(job.block.len);
                    // The file may have given up waiting; nothing to do then.
                    let _ = job.reply.send((job.block.index, result));
                }
            })?;
        Ok(Uploader {
            blocks,
            jobs: Some(tx),
            thread: Some(thread),
            backlog,
        })
    }

    /// What is queued and not yet uploaded.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Wait until the queued blocks are uploaded, telling `step` the bytes as they go.
    pub fn wait_drained(&self, step: impl FnMut(u64)) {
        let alive = || self.thread.as_ref().is_some_and(|t| !t.is_finished());
        self.backlog.wait_drained(alive, step);
    }

    /// Wait for the queued uploads to end and stop the thread. Files still open must be
    /// finished first, or their remaining blocks are uploaded by their own `finish`.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a spool file could not be completely stored. The spool file is left in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolFailure {
    /// The longest prefix of the file that the block store confirmed.
    pub uploaded: FileBlocks,
    /// What went wrong, naming the file and where its complete copy is.
    pub message: String,
}

impl fmt::Display for SpoolFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpoolFailure {}

/// One file of the log collection, spooled to disk and uploaded block by block.
pub struct SpoolFile {
    name: String,
    path: Arc<PathBuf>,
    file: WritebackFile,
    block_size: u64,
    size: u64,
    block_start: u64,
    md5: Md5,
    blocks: Vec<Block>,
    store: Arc<dyn BlockStore>,
    jobs: Option<Sender<Job>>,
    backlog: Arc<Backlog>,
    reply_tx: Option<Sender<(usize, Result<String, StoreError>)>>,
    reply_rx: Receiver<(usize, Result<String, StoreError>)>,
    /// The uploader's answers so far, by block index.
    answers: Vec<Option<Result<String, StoreError>>>,
    /// The first write error; after it the spool is incomplete and nothing more is written.
    write_error: Option<String>,
}

impl SpoolFile {
    /// Create (or truncate) `<dir>/<name>`; full blocks of `block_size` bytes go to `uploader`.
    pub fn create(
        dir: &Path,
        name: &str,
        block_size: u64,
        uploader: &Uploader,
    ) -> io::Result<SpoolFile> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        Ok(SpoolFile {
            name: name.to_string(),
            path: Arc::new(path),
            file: WritebackFile::new(file),
            block_size: block_size.max(1),
            size: 0,
            block_start: 0,
            md5: Md5::new(),
            blocks: Vec::new(),
            store: Arc::clone(&uploader.blocks),
            jobs: uploader.jobs.clone(),
            backlog: Arc::clone(&uploader.backlog),
            reply_tx: Some(reply_tx),
            reply_rx,
            answers: Vec::new(),
            write_error: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append `data`. After a write error the file refuses all further data (the error is
    /// returned again and reported by `finish`).
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if let Some(e) = &self.write_error {
            return Err(io::Error::other(format!("{}: {e}", self.name)));
        }
        while !data.is_empty() {
            let room = self.block_start + self.block_size - self.size;
            let n = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            let (part, rest) = data.split_at(n);
            if let Err(e) = self.file.write_all(part) {
                let msg = format!(
                    "writing spool file {}: {e}; the log file is incomplete from byte {}",
                    self.path.display(),
                    self.size
                );
                self.write_error = Some(msg.clone());
                return Err(io::Error::new(e.kind(), format!("{}: {msg}", self.name)));
            }
            self.md5.update(part);
            self.size += n as u64;
            if self.size - self.block_start == self.block_size {
                self.cut_block();
            }
            data = rest;
        }
        Ok(())
    }

    /// Close the current block (bytes block_start..size) and queue its upload.
    fn cut_block(&mut self) {
        let hash = hex(&self.md5.finalize_reset());
        let block = Block {
            index: self.blocks.len(),
            offset: self.block_start,
            len: self.size - self.block_start,
            hash,
        };
        self.block_start = self.size;
        self.blocks.push(block.clone());
        // Without an uploader thread the block stays unanswered and finish() uploads it.
        if let (Some(jobs), Some(reply)) = (&self.jobs, &self.reply_tx) {
            let job = Job {
                path: Arc::clone(&self.path),
                block,
                reply: reply.clone(),
            };
            // A job the uploader cannot take stays unanswered: finish() uploads it.
            let len = job.block.len;
            if jobs.send(job).is_ok() {
                self.backlog.queued(len);
            }
        }
    }

    /// End the current block here, even if short, and queue its upload (for a snapshot of
    /// the file). Returns how many blocks the file has now.
    pub fn seal(&mut self) -> usize {
        if self.write_error.is_none() && self.size > self.block_start {
            self.cut_block();
        }
        self.blocks.len()
    }

    /// The file's first `blocks` blocks, if all of them are stored by now.
    pub fn stored_prefix(&mut self, blocks: usize) -> Option<FileBlocks> {
        self.take_answers();
        let mut locators = Vec::with_capacity(blocks);
        let mut size = 0;
        for (block, answer) in self.blocks.iter().zip(&self.answers).take(blocks) {
            match answer {
                Some(Ok(locator)) => locators.push(locator.clone()),
                _ => return None,
            }
            size += block.len;
        }
        (locators.len() == blocks).then(|| FileBlocks {
            name: self.name.clone(),
            locators,
            size,
        })
    }

    /// Record the answers the uploader has given so far.
    fn take_answers(&mut self) {
        while let Ok(answer) = self.reply_rx.try_recv() {
            self.keep_answer(answer);
        }
    }

    fn keep_answer(&mut self, (index, result): (usize, Result<String, StoreError>)) {
        if self.answers.len() < self.blocks.len() {
            self.answers.resize_with(self.blocks.len(), || None);
        }
        if let Some(slot) = self.answers.get_mut(index) {
            *slot = Some(result);
        }
    }

    /// Upload the last partial block (here), wait for every upload of this file, retry once
    /// any block that failed, and return the file's locators in order. Empty file: no
    /// locators.
    pub fn finish(mut self) -> Result<FileBlocks, SpoolFailure> {
        // The last block is PUT below, on this thread, rather than queued behind the other
        // files' at the uploader: files finished at once then store it side by side.
        self.jobs = None;
        self.seal();
        // Only queued jobs hold a reply sender now: the channel disconnects once they are
        // all answered, or if the uploader thread dies. Unanswered blocks are uploaded
        // again below.
        self.reply_tx = None;
        while let Ok(answer) = self.reply_rx.recv() {
            self.keep_answer(answer);
        }
        let mut results = std::mem::take(&mut self.answers);
        results.resize_with(self.blocks.len(), || None);
        let mut errors = Vec::new();
        let mut locators = Vec::with_capacity(self.blocks.len());
        let mut confirmed = (0usize, 0u64); // blocks and bytes of the uploaded prefix
        for (block, result) in self.blocks.iter().zip(results) {
            let result = match result {
                Some(Ok(locator)) => Ok(locator),
                _ => put_from_file(self.store.as_ref(), &self.path, block),
            };
            match result {
                Ok(locator) => {
                    if errors.is_empty() {
                        confirmed = (confirmed.0 + 1, confirmed.1 + block.len);
                    }
                    locators.push(locator);
                }
                Err(e) => errors.push(format!(
                    "block {} (bytes {}..{}): {e}",
                    block.index,
                    block.offset,
                    block.offset + block.len
                )),
            }
        }
        if errors.is_empty() && self.write_error.is_none() {
            return Ok(FileBlocks {
                name: self.name,
                locators,
                size: self.size,
            });
        }
        let mut problems = Vec::new();
        let kept = match self.write_error.take() {
            Some(e) => {
                problems.push(e);
                "what could be written is kept in"
            }
            None => "the complete log file is kept in",
        };
        if !errors.is_empty() {
            problems.push(format!(
                "could not store the log in Keep: {}",
                errors.join("; ")
            ));
        }
        locators.truncate(confirmed.0);
        Err(SpoolFailure {
            message: format!(
                "{}: {}; {kept} {}",
                self.name,
                problems.join("; "),
                self.path.display()
            ),
            uploaded: FileBlocks {
                name: self.name,
                locators,
                size: confirmed.1,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arvados::manifest::md5_hex;
    use crate::store::memory::{MemoryStore, SIGNATURE};
    use std::sync::atomic::Ordering;

    /// Issue 10, point 1: the logs are for crunch-run's user only.
    #[test]
    fn spool_files_are_for_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _blocks, uploader) = setup();
        let _f = SpoolFile::create(dir.path(), "stdout.txt", 8, &uploader).unwrap();
        let mode = std::fs::metadata(dir.path().join("stdout.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_full_disk_is_reported_with_where_the_partial_file_is() {
        let (dir, _blocks, uploader) = setup();
        // Every write to /dev/full fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", dir.path().join("stdout.txt")).unwrap();
        let mut f = SpoolFile::create(dir.path(), "stdout.txt", 8, &uploader).unwrap();
        let err = f.write(b"hello\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("stdout.txt: writing spool file "),
            "{err}"
        );
        assert!(
            f.write(b"more\n").is_err(),
            "a spool file takes nothing after an error"
        );
        let failure = f.finish().unwrap_err();
        let path = dir.path().join("stdout.txt");
        assert_eq!(
            failure.message,
            format!(
                "stdout.txt: writing spool file {p}: No space left on device (os error 28); the log file is incomplete from byte 0; what could be written is kept in {p}",
                p = path.display()
            )
        );
        assert_eq!(failure.uploaded.size, 0);
        assert!(failure.uploaded.locators.is_empty());
    }

    fn setup() -> (tempfile::TempDir, Arc<MemoryStore>, Uploader) {
        let dir = tempfile::tempdir().unwrap();
        let blocks = Arc::new(MemoryStore::new());
        let uploader = Uploader::start(blocks.clone()).unwrap();
        (dir, blocks, uploader)
    }

    #[test]
    fn blocks_are_cut_at_block_size_with_their_md5() {
        let (dir, blocks, uploader) = setup();
        let mut f = SpoolFile::create(dir.path(), "stdout.txt", 16, &uploader).unwrap();
        // 40 bytes in uneven writes: blocks of 16, 16, 8.
        let data: Vec<u8> = (0u8..40).collect();
        for piece in [&data[..5], &data[5..21], &data[21..22], &data[22..]] {
            f.write(piece).unwrap();
        }
        assert_eq!(f.size(), 40);
        let fb = f.finish().unwrap();
        assert_eq!(fb.name, "stdout.txt");
        assert_eq!(fb.size, 40);
        let want: Vec<String> = [&data[..16], &data[16..32], &data[32..]]
            .iter()
            .map(|b| format!("{}+{}{SIGNATURE}", md5_hex(b), b.len()))
            .collect();
        assert_eq!(fb.locators, want);
        assert_eq!(blocks.file(&fb.locators), data);
        assert_eq!(std::fs::read(dir.path().join("stdout.txt")).unwrap(), data);
    }

    #[test]
    fn a_sealed_file_reports_its_stored_prefix_and_goes_on() {
        let (dir, blocks, uploader) = setup();
        let mut f = SpoolFile::create(dir.path(), "stdout.txt", 8, &uploader).unwrap();
        f.write(b"0123456789").unwrap();
        assert_eq!(f.seal(), 2, "one full block and the sealed rest");
        assert_eq!(f.seal(), 2, "nothing new to seal");
        let mut prefix = None;
        for _ in 0..500 {
            prefix = f.stored_prefix(2);
            if prefix.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let prefix = prefix.expect("the uploads were answered");
        assert_eq!(prefix.size, 10);
        assert_eq!(
            prefix.locators,
            [
                format!("{}+8{SIGNATURE}", md5_hex(b"01234567")),
                format!("{}+2{SIGNATURE}", md5_hex(b"89")),
            ]
        );
        assert_eq!(blocks.file(&prefix.locators), b"0123456789");
        f.write(b"abc").unwrap();
        let done = f.finish().unwrap();
        assert_eq!(done.size, 13);
        assert_eq!(done.locators.len(), 3);
        assert_eq!(blocks.file(&done.locators), b"0123456789abc");
    }

    #[test]
    fn known_md5_of_a_small_file() {
        let (dir, _blocks, uploader) = setup();
        let mut f = SpoolFile::create(dir.path(), "x.txt", DEFAULT_BLOCK_SIZE, &uploader).unwrap();
        f.write(b"foo\n").unwrap();
        let fb = f.finish().unwrap();
        assert_eq!(
            fb.locators,
            vec![format!("d3b07384d113edec49eaa6238ad5ff00+4{SIGNATURE}")]
        );
    }

    #[test]
    fn exact_multiple_of_block_size_has_no_empty_tail_block() {
        let (dir, blocks, uploader) = setup();
        let mut f = SpoolFile::create(dir.path(), "a.txt", 4, &uploader).unwrap();
        f.write(b"abcdefgh").unwrap();
        let fb = f.finish().unwrap();
        assert_eq!(fb.locators.len(), 2);
        assert_eq!(blocks.puts(), 2);
    }

    #[test]
    fn empty_file_has_no_locators() {
        let (dir, blocks, uploader) = setup();
        let f = SpoolFile::create(dir.path(), "stderr.txt", 16, &uploader).unwrap();
        let fb = f.finish().unwrap();
        assert_eq!(
            fb,
            FileBlocks {
                name: "stderr.txt".into(),
                locators: vec![],
                size: 0
            }
        );
        assert_eq!(blocks.puts(), 0);
        assert!(dir.path().join("stderr.txt").exists());
    }

    #[test]
    fn binary_bytes_are_stored_byte_exact() {
        let (dir, blocks, uploader) = setup();
        let mut f = SpoolFile::create(dir.path(), "b.txt", 7, &uploader).unwrap();
        let data: Vec<u8> = (0..=255u8)
            .rev()
            .chain(b"\xff\xfe\xc3\x28".iter().copied())
            .collect();
        f.write(&data).unwrap();
        let fb = f.finish().unwrap();
        assert_eq!(blocks.file(&fb.locators), data);
    }

    #[test]
    fn a_failed_upload_is_retried_once_at_finish() {
        let (dir, blocks, uploader) = setup();
        blocks.fail_next_puts.store(1, Ordering::SeqCst);
        let mut f = SpoolFile::create(dir.path(), "c.txt", 4, &uploader).unwrap();
        f.write(b"0123456789").unwrap();
        let fb = f.finish().unwrap();
        assert_eq!(blocks.file(&fb.locators), b"0123456789");
        assert_eq!(blocks.puts(), 4);
    }

    #[test]
    fn an_upload_that_keeps_failing_leaves_the_spool_and_reports() {
        let (dir, blocks, uploader) = setup();
        // Block 1 fails in the uploader and again on retry (puts: b0 ok, b1 fail, b2 ok,
        // then retry b1 fails).
        let mut f = SpoolFile::create(dir.path(), "stdout.txt", 4, &uploader).unwrap();
        f.write(b"0123").unwrap();
        // Wait for block 0 to be stored before arming the failures.
        while blocks.puts() < 1 {
            std::thread::yield_now();
        }
        blocks.fail_next_puts.store(5, Ordering::SeqCst);
        f.write(b"4567").unwrap();
        let err = f.finish().unwrap_err();
        assert!(
            err.message.starts_with(
                "stdout.txt: could not store the log in Keep: block 1 (bytes 4..8): PUT "
            ),
            "{}",
            err.message
        );
        assert!(err.message.ends_with(&format!(
            "the complete log file is kept in {}",
            dir.path().join("stdout.txt").display()
        )));
        assert_eq!(err.uploaded.locators.len(), 1);
        assert_eq!(err.uploaded.size, 4);
        assert_eq!(
            std::fs::read(dir.path().join("stdout.txt")).unwrap(),
            b"01234567"
        );
    }

    #[test]
    fn finish_without_uploader_thread_uploads_itself() {
        let (dir, blocks, mut uploader) = setup();
        uploader.stop();
        let mut f = SpoolFile::create(dir.path(), "d.txt", 4, &uploader).unwrap();
        f.write(b"abcdef").unwrap();
        let fb = f.finish().unwrap();
        assert_eq!(blocks.file(&fb.locators), b"abcdef");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f, 0xf0]), "00ab0ff0");
    }
}
