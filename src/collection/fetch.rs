//! Getting a collection's bytes out of the block store into host files
//! ([`CollectionReader::write_selection`], for staging mounts). One file into a stream is
//! `stream.rs`'s.
//!
//! Each distinct block is fetched once (up to [`FETCH_PARALLEL`] at a time) and its byte ranges written straight into every file
//! that uses it, never a whole block in memory. The block store checks each block's md5
//! against its locator (the [`BlockStore::get_block`] contract: the Keep client and the
//! local store both hash what they deliver), so it is hashed once, there; here only its
//! size is checked again, which costs nothing. Which files to read is `select.rs`'s job,
//! and what the files are for (modes, binds, output) is the caller's.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::CollectionError;
use super::select::{Selection, select};
use crate::arvados::manifest::{Locator, Manifest, ManifestFile};
use crate::progress::Progress;
use crate::store::{ApiStore, BlockStore};
use crate::writeback::start_writeback;

/// How many blocks a staging fetches at once.
pub const FETCH_PARALLEL: usize = 4;

/// Fetch and parse the manifest of collection `id` (a PDH or a UUID).
pub fn read_manifest(api: &dyn ApiStore, id: &str) -> Result<Manifest, CollectionError> {
    let text = api
        .get_collection_manifest(id)
        .map_err(|source| CollectionError::Fetch {
            id: id.to_string(),
            source,
        })?;
    Manifest::parse(&text).map_err(|source| CollectionError::Manifest {
        id: id.to_string(),
        source,
    })
}

/// Reads collections: manifests from the API, blocks from the block store.
#[derive(Clone, Copy)]
pub struct CollectionReader<'a> {
    api: &'a dyn ApiStore,
    blocks: &'a dyn BlockStore,
}

/// What [`CollectionReader::write_selection`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The host path of each file, in the order of the selection's files.
    pub hosts: Vec<PathBuf>,
    /// Distinct blocks fetched.
    pub blocks: usize,
}

impl<'a> CollectionReader<'a> {
    pub fn new(api: &'a dyn ApiStore, blocks: &'a dyn BlockStore) -> CollectionReader<'a> {
        CollectionReader { api, blocks }
    }

    /// The part `sub` of collection `id` (see [`select`]); an error if it names nothing.
    pub fn select(&self, id: &str, sub: Option<&str>) -> Result<Selection, CollectionError> {
        let manifest = read_manifest(self.api, id)?;
        select(&manifest, sub).ok_or_else(|| CollectionError::NotFound {
            id: id.to_string(),
            path: sub.unwrap_or("").to_string(),
        })
    }

    /// Create the selection's directories and files under `dest` (or at `dest`, for a
    /// single file), then fill them from the block store. Files are created with the
    /// process umask; setting modes is the caller's. A path that could lead out of `dest`
    /// or that no host file can have (see [`host_path`]) is refused before anything is
    /// written.
    pub fn write_selection(
        &self,
        sel: &Selection,
        dest: &Path,
    ) -> Result<Written, CollectionError> {
        self.write_selection_counted(sel, dest, None)
    }

    /// [`write_selection`](Self::write_selection), fetching up to `FETCH_PARALLEL` blocks
    /// at once and counting the bytes in `progress`.
    pub fn write_selection_counted(
        &self,
        sel: &Selection,
        dest: &Path,
        progress: Option<&Progress>,
    ) -> Result<Written, CollectionError> {
        let dirs = sel
            .dirs
            .iter()
            .map(|dir| host_path(dest, dir))
            .collect::<Result<Vec<_>, _>>()?;
        let mut hosts = Vec::with_capacity(sel.files.len());
        for file in &sel.files {
            hosts.push(match file.path.is_empty() {
                true => dest.to_path_buf(),
                false => host_path(dest, &file.path)?,
            });
        }
        if !sel.is_file {
            create_dirs(dest)?;
        }
        for dir in &dirs {
            create_dirs(dir)?;
        }
        for host in &hosts {
            if let Some(parent) = host.parent() {
                create_dirs(parent)?;
            }
            File::create(host).map_err(io_err(format!("create {}", host.display())))?;
        }
        let jobs = block_jobs(&sel.files)?;
        self.fetch_blocks(&jobs, &hosts, progress)?;
        Ok(Written {
            hosts,
            blocks: jobs.len(),
        })
    }

    /// Fetch every block, `FETCH_PARALLEL` at a time; the first error stops the others
    /// from starting another block, and is returned.
    fn fetch_blocks(
        &self,
        jobs: &[BlockJob],
        hosts: &[PathBuf],
        progress: Option<&Progress>,
    ) -> Result<(), CollectionError> {
        let next = AtomicUsize::new(0);
        let failed: Mutex<Option<CollectionError>> = Mutex::new(None);
        let work = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { return };
                if let Err(e) = self.fetch_block(job, hosts, progress) {
                    next.store(jobs.len(), Ordering::Relaxed);
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                    return;
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..FETCH_PARALLEL.min(jobs.len()) {
                s.spawn(work);
            }
            work();
        });
        match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Fetch one block once and write each of its pieces into its file.
    fn fetch_block(
        &self,
        job: &BlockJob,
        hosts: &[PathBuf],
        progress: Option<&Progress>,
    ) -> Result<(), CollectionError> {
        let mut files: HashMap<usize, File> = HashMap::new();
        for piece in &job.pieces {
            if let Entry::Vacant(slot) = files.entry(piece.file) {
                let host = &hosts[piece.file];
                let f = OpenOptions::new()
                    .write(true)
                    .open(host)
                    .map_err(io_err(format!("open {}", host.display())))?;
                slot.insert(f);
            }
        }
        let mut out = FanOut {
            pieces: &job.pieces,
            files: &files,
            pos: 0,
            progress,
        };
        self.blocks
            .get_block(&job.token, &mut out)
            .map_err(|source| CollectionError::Block {
                block: job.portable(),
                source,
            })?;
        // The store checked the md5 (a second hash here cost a CPU-second per GB).
        if out.pos != job.size {
            return Err(CollectionError::BadBlock {
                block: job.portable(),
                bytes: out.pos,
            });
        }
        // Staged copies would otherwise stay dirty until the container's teardown syncs them.
        // Only this block's ranges: the rest of a file may be being written by another
        // fetch, whose pages must not go to disk half-written (and be waited for again).
        for piece in job.pieces.iter().filter(|p| p.len > 0) {
            if let Some(f) = files.get(&piece.file) {
                start_writeback(f, piece.file_off, piece.len);
            }
        }
        Ok(())
    }
}

/// Where the collection path `rel` goes under `dest`. The manifest parser already refuses
/// `..`, empty components and names that lead out of the collection; this checks again,
/// here where it matters, and refuses what no host path can hold (a NUL byte, a `.`).
fn host_path(dest: &Path, rel: &[u8]) -> Result<PathBuf, CollectionError> {
    let bad = |reason: &'static str| CollectionError::BadPath {
        path: PathBuf::from(OsStr::from_bytes(rel)),
        reason,
    };
    if rel.contains(&0) {
        return Err(bad("it holds a NUL byte"));
    }
    let mut comps = rel.split(|&b| b == b'/');
    if comps.any(|c| c.is_empty() || c == b"." || c == b"..") {
        return Err(bad("it has an empty, \".\" or \"..\" component"));
    }
    Ok(dest.join(OsStr::from_bytes(rel)))
}

/// Make `path` and its parents (mode 0777 before the umask).
pub fn make_dirs(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o777)
        .create(path)
}

fn create_dirs(path: &Path) -> Result<(), CollectionError> {
    make_dirs(path).map_err(io_err(format!("create {}", path.display())))
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> CollectionError {
    move |source| CollectionError::Io { what, source }
}

/// One distinct block of a selection and where its bytes go.
struct BlockJob {
    /// The locator as written in the manifest (signed), for the fetch.
    token: String,
    hash: String,
    size: u64,
    pieces: Vec<Piece>,
}

impl BlockJob {
    /// `hash+size`: how errors name the block (a signature is a credential).
    fn portable(&self) -> String {
        format!("{}+{}", self.hash, self.size)
    }
}

/// `len` bytes at `block_off` in a block go to `file_off` of file number `file`.
struct Piece {
    file: usize,
    block_off: u64,
    len: u64,
    file_off: u64,
}

/// Group the files' ranges by block (keyed by `hash+size`, so differently signed tokens of
/// one block are still fetched once), in order of first use.
fn block_jobs(files: &[ManifestFile]) -> Result<Vec<BlockJob>, CollectionError> {
    let mut jobs: Vec<BlockJob> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (file_no, file) in files.iter().enumerate() {
        let mut file_off = 0;
        for range in &file.ranges {
            let loc = Locator::parse(&range.locator).map_err(CollectionError::Locator)?;
            let i = *index.entry(loc.portable()).or_insert_with(|| {
                jobs.push(BlockJob {
                    token: range.locator.clone(),
                    hash: loc.hash.clone(),
                    size: loc.size,
                    pieces: Vec::new(),
                });
                jobs.len() - 1
            });
            jobs[i].pieces.push(Piece {
                file: file_no,
                block_off: range.offset,
                len: range.len,
                file_off,
            });
            file_off += range.len;
        }
    }
    Ok(jobs)
}

/// The writer a block is streamed into: each chunk is written, at its place, into every
/// file whose piece overlaps it, and counted.
struct FanOut<'a> {
    pieces: &'a [Piece],
    files: &'a HashMap<usize, File>,
    /// Position in the block of the next byte.
    pos: u64,
    progress: Option<&'a Progress<'a>>,
}

impl Write for FanOut<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let start = self.pos;
        let end = start + buf.len() as u64;
        for piece in self.pieces {
            let from = start.max(piece.block_off);
            let to = end.min(piece.block_off + piece.len);
            if from >= to {
                continue;
            }
            let chunk = &buf[(from - start) as usize..(to - start) as usize];
            if let Some(file) = self.files.get(&piece.file) {
                file.write_all_at(chunk, piece.file_off + (from - piece.block_off))?;
            }
        }
        self.pos = end;
        if let Some(progress) = self.progress {
            progress.advance(buf.len() as u64);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// The parser refuses such names already; `write_selection` checks again where it
    /// matters, before it creates anything.
    #[test]
    fn a_selection_that_leads_out_or_holds_nul_writes_nothing() {
        let store = MemoryStore::new();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let file = |path: &[u8]| ManifestFile {
            path: path.to_vec(),
            size: 0,
            ranges: Vec::new(),
        };
        for (files, dirs) in [
            (vec![file(b"ok"), file(b"../escape")], vec![]),
            (vec![file(b"ok")], vec![b"/abs".to_vec()]),
            (vec![file(b"a/./b")], vec![]),
            (vec![file(b"a\0b")], vec![]),
        ] {
            let sel = Selection {
                files,
                dirs,
                ..Selection::default()
            };
            let reader = CollectionReader::new(&store, &store);
            let err = reader.write_selection(&sel, &dest).unwrap_err();
            assert!(matches!(err, CollectionError::BadPath { .. }), "{err}");
            assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        }
    }

    /// Counts the fetches under way, and the most at once.
    struct Slow {
        inner: MemoryStore,
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl BlockStore for Slow {
        fn put_block(
            &self,
            hash: &str,
            size: u64,
            body: &crate::store::BlockSource<'_>,
        ) -> Result<String, crate::store::StoreError> {
            self.inner.put_block(hash, size, body)
        }

        fn get_block(
            &self,
            locator: &str,
            out: &mut dyn Write,
        ) -> Result<u64, crate::store::StoreError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            let got = self.inner.get_block(locator, out);
            self.now.fetch_sub(1, Ordering::SeqCst);
            got
        }
    }

    #[test]
    fn blocks_are_fetched_four_at_a_time_and_counted() {
        let inner = MemoryStore::new();
        let mut files = Vec::new();
        for i in 0..10u8 {
            let data = vec![i; 1000];
            let loc = inner.put(&data);
            files.push(ManifestFile {
                path: format!("f{i}").into_bytes(),
                size: 1000,
                ranges: vec![crate::arvados::manifest::BlockRange {
                    locator: loc,
                    offset: 0,
                    len: 1000,
                }],
            });
        }
        let sel = Selection {
            files,
            ..Selection::default()
        };
        let slow = Slow {
            inner,
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        };
        let tmp = tempfile::tempdir().unwrap();
        let said = Mutex::new(Vec::new());
        let cadence = crate::progress::Cadence {
            first: std::time::Duration::ZERO,
            every: std::time::Duration::from_secs(3600),
        };
        let progress = Progress::new("staging", Some(10_000), cadence, |l: &str| {
            said.lock().unwrap().push(l.to_string())
        });
        let reader = CollectionReader::new(&slow.inner, &slow);
        let written = reader
            .write_selection_counted(&sel, &tmp.path().join("d"), Some(&progress))
            .unwrap();
        assert_eq!(written.blocks, 10);
        assert_eq!(slow.most.load(Ordering::SeqCst), FETCH_PARALLEL);
        assert_eq!(progress.done(), 10_000);
        assert_eq!(fs::read(tmp.path().join("d/f7")).unwrap(), vec![7u8; 1000]);
        progress.finish();
        drop(progress);
        let said = said.into_inner().unwrap();
        assert!(
            said.last()
                .unwrap()
                .starts_with("staging: 9.8 KiB of 9.8 KiB (100%)"),
            "{said:?}"
        );
    }
}
