//! Output capture: after the container exits, turn the host output directory into the
//! manifest of the output collection, uploading file data to the block store.
//!
//! What goes in (Arvados' copier rules, reference §5.2 "Output capture"):
//! - every regular file under the output directory, packed with the others into shared
//!   blocks of up to 64 MiB in the order of their paths (as arv-put does; upload.rs): each
//!   block md5'd from the files, then streamed to the store from the same file regions, so
//!   no block is ever held in memory;
//! - an empty directory as `dir/.keep` (an empty file); a directory whose entries were all
//!   skipped as an empty directory (`\056` marker);
//! - read-only collection mounts under the output path ([`RefMount`]), by locator, without
//!   copying data, their empty directories as empty directories (as the Go crunch-run
//!   keeps them); files pre-copied from writable collection mounts ([`CopiedFile`]) by
//!   their old locators when their size and mtime are unchanged;
//! - symlinks followed (at most [`MAX_SYMLINK_HOPS`] along any path): into the output
//!   directory (content captured under the link's name) or into a mounted collection (by
//!   reference).
//!
//! Names are bytes, as on the filesystem: a name that is not UTF-8 is kept like any other
//! (how it is escaped in the manifest, and why, is in arvados/manifest/names.rs).
//!
//! What stays out: fifos, sockets and devices (with a warning), `exclude_from_output`
//! paths, secret mounts, and whatever `output_glob` does not select ([`OutputGlobs`]).
//! Bytes a mounted collection names `.` (no file can have that name) are left out with a
//! warning that [`capture`] also returns, for the record's `runtime_status.warning`.
//! A symlink to a secret, to a missing target, to anything outside the output directory
//! and the mounted collections, or a symlink cycle fails the whole capture.
//!
//! Memory: only per-file metadata (paths, sizes, block ranges) is kept, never file data.
//!
//! Here: what capture is given ([`OutputSpec`], built from the staged mounts by
//! [`OutputSpec::from_staged`] in spec.rs) and the capture itself. The walk of the output
//! directory is walk.rs's, packing and uploading upload.rs's, `output_glob` glob.rs's.

mod glob;
mod paths;
mod spec;
mod upload;
mod walk;

pub use glob::OutputGlobs;
pub use upload::store_file;

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::arvados::manifest::{BlockRange, normalized_manifest, shown};
use crate::collection::Selection;
use crate::logging::spool::DEFAULT_BLOCK_SIZE;
use crate::progress::{CountingBlocks, Progress};
use crate::store::{BlockStore, StoreError};
use upload::Packer;
use walk::Source;

/// How many symlinks may be followed along any one path, as in Go's copier.
pub const MAX_SYMLINK_HOPS: u32 = 10;

/// Buffer for md5'ing file regions (the only data buffer; one per capture).
const READ_BUFFER: usize = 1 << 20;

/// A read-only collection mounted in the container, captured by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefMount {
    /// In [`OutputSpec::by_reference`]: the mount point relative to the output directory
    /// (`"foo/bar"`). In [`OutputSpec::link_targets`]: the absolute mount point in the
    /// container (`"/keep/in"`).
    pub path: String,
    /// What is mounted, paths relative to the mount point: files and directories, or one
    /// file whose path is `""`.
    pub selection: Selection,
}

/// A file copied into the output directory from a writable collection mount before the
/// container started. If it still has this size and mtime, its old block ranges are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedFile {
    /// Relative to the output directory (bytes, as the collection's names are).
    pub rel_path: Vec<u8>,
    pub size: u64,
    pub mtime: SystemTime,
    pub ranges: Vec<BlockRange>,
}

/// Everything capture needs to know about the output directory and the mounts around it.
#[derive(Debug, Clone, Default)]
pub struct OutputSpec {
    /// The host directory that was bound at the container's output path.
    pub output_dir: PathBuf,
    /// The container's output path (e.g. `"/tmp"`), to resolve absolute symlinks.
    pub ctr_output_path: String,
    /// Read-only collection mounts under the output path (paths relative to it).
    pub by_reference: Vec<RefMount>,
    /// Read-only collection mounts elsewhere in the container (absolute paths) that
    /// symlinks in the output may point into; captured by reference through the links.
    pub link_targets: Vec<RefMount>,
    /// Files pre-copied from writable collection mounts.
    pub unchanged_candidates: Vec<CopiedFile>,
    /// Paths relative to the output directory (`exclude_from_output` mounts) to leave out,
    /// with everything under them.
    pub excluded: Vec<String>,
    /// Secret files that must never be captured: host paths under `output_dir`, or
    /// absolute container paths. A symlink to one is an error.
    pub secret_paths: Vec<PathBuf>,
    /// `output_glob`; empty keeps everything.
    pub globs: Vec<String>,
}

/// Why the output could not be captured. Paths are relative to the output directory,
/// symlink targets are container paths; both are any bytes, shown as text with the bytes
/// that are not UTF-8 as `\xNN`.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot output {path:?}: too many symlinks, or symlink cycle")]
    TooManySymlinks { path: PathBuf },
    #[error("cannot output {path:?}: symlink target {target:?} does not exist")]
    MissingTarget { path: PathBuf, target: PathBuf },
    #[error(
        "cannot output {path:?}: symlink target {target:?} is not in the output directory or a mounted collection"
    )]
    NotMounted { path: PathBuf, target: PathBuf },
    #[error("cannot output {path:?}: {detail}")]
    Changed { path: PathBuf, detail: String },
    /// A block could not be stored: `path` is its first file, `others` how many files
    /// after it share the block.
    #[error("cannot output {}: {source}", storing(.path, *.others))]
    Store {
        path: PathBuf,
        others: usize,
        #[source]
        source: StoreError,
    },
}

/// A captured output: its manifest, and what was left out of it that the user must hear of
/// (each line already said; for the record's `runtime_status.warning`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Normalized, signed where the store signs; `""` for an empty output.
    pub manifest_text: String,
    pub warnings: Vec<String>,
}

/// Capture the output directory: upload what needs uploading and return the normalized
/// manifest text (`""` for an empty output). `say` gets progress and warnings. What
/// [`capture`] returns as warnings is only said here.
pub fn capture_output(
    spec: &OutputSpec,
    blocks: &dyn BlockStore,
    say: &dyn Fn(&str),
) -> Result<String, OutputError> {
    capture(spec, blocks, say).map(|c| c.manifest_text)
}

/// Capture the output directory: upload what needs uploading; the normalized manifest,
/// and the warnings about what was left out. `say` gets progress and warnings.
pub fn capture(
    spec: &OutputSpec,
    blocks: &dyn BlockStore,
    say: &dyn Fn(&str),
) -> Result<Captured, OutputError> {
    capture_with_block_size(spec, blocks, say, DEFAULT_BLOCK_SIZE)
}

/// [`capture_output`], counting the bytes uploaded in `progress` (its total: the host
/// files' sizes, once the walk found them).
pub fn capture_output_with_progress(
    spec: &OutputSpec,
    blocks: &dyn BlockStore,
    say: &dyn Fn(&str),
    progress: &Progress<'_>,
) -> Result<String, OutputError> {
    capture_counted(spec, blocks, say, DEFAULT_BLOCK_SIZE, Some(progress)).map(|c| c.manifest_text)
}

/// [`capture`] with a chosen block size (tests use tiny ones).
fn capture_with_block_size(
    spec: &OutputSpec,
    blocks: &dyn BlockStore,
    say: &dyn Fn(&str),
    block_size: u64,
) -> Result<Captured, OutputError> {
    capture_counted(spec, blocks, say, block_size, None)
}

fn capture_counted(
    spec: &OutputSpec,
    blocks: &dyn BlockStore,
    say: &dyn Fn(&str),
    block_size: u64,
    progress: Option<&Progress<'_>>,
) -> Result<Captured, OutputError> {
    let plan = walk::plan(spec, say)?;
    let counted;
    let blocks = match progress {
        Some(progress) => {
            let host = |f: &walk::Planned| match f.source {
                Source::Host { size, .. } => size,
                Source::Stored(_) => 0,
            };
            progress.set_total(plan.files.iter().map(host).sum());
            counted = CountingBlocks::new(blocks, progress);
            &counted as &dyn BlockStore
        }
        None => blocks,
    };
    // Host files go through the packer, in order; their ranges come back by number.
    let mut packer = Packer::new(blocks, block_size);
    for file in &plan.files {
        if let Source::Host { path, size } = &file.source {
            say(&format!("copying {:?} ({size} bytes)", shown(&file.dest)));
            packer.add(path, &file.dest, *size)?;
        }
    }
    let mut uploaded = packer.finish()?.into_iter();
    let stored: Vec<(Vec<u8>, Vec<BlockRange>)> = plan
        .files
        .into_iter()
        .map(|file| {
            let ranges = match file.source {
                Source::Stored(ranges) => ranges,
                Source::Host { .. } => uploaded.next().unwrap_or_default(),
            };
            (file.dest, ranges)
        })
        .collect();
    Ok(Captured {
        manifest_text: normalized_manifest(&stored, &plan.dirs),
        warnings: plan.warnings,
    })
}

/// `"a": storing its data`, or `"a" and 2 other files: storing their data`.
fn storing(path: &Path, others: usize) -> String {
    match others {
        0 => format!("{path:?}: storing its data"),
        1 => format!("{path:?} and 1 other file: storing their data"),
        n => format!("{path:?} and {n} other files: storing their data"),
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> OutputError {
    OutputError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    use std::sync::Mutex;

    use super::*;
    use crate::arvados::manifest::{
        EMPTY_BLOCK_LOCATOR, Manifest, md5_hex, portable_manifest_text,
    };
    use crate::collection::select;
    use crate::store::memory::{MemoryStore, SIGNATURE};
    use spec::tests::{Staged, stage_parts};

    const CTR: &str = "/ctr/outdir";
    const SIG: &str = "+Afeedfacefeedfacefeedfacefeedfacefeedface@569fa8c3";

    /// The bytes the store holds for `ranges`.
    fn bytes(store: &MemoryStore, ranges: &[BlockRange]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in ranges {
            let block = store.block(&r.locator);
            out.extend_from_slice(&block[r.offset as usize..(r.offset + r.len) as usize]);
        }
        out
    }

    /// The collection mount at `at` (relative to the output directory) of part `sub` of
    /// the collection `m` (`""`: all of it).
    fn ref_mount(at: &str, m: &Manifest, sub: &str) -> RefMount {
        let sub = (!sub.is_empty()).then_some(sub);
        RefMount {
            path: at.to_string(),
            selection: select(m, sub).unwrap(),
        }
    }

    fn spec(dir: &Path) -> OutputSpec {
        OutputSpec {
            output_dir: dir.to_path_buf(),
            ctr_output_path: CTR.to_string(),
            ..OutputSpec::default()
        }
    }

    fn write(dir: &Path, rel: &str, data: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = File::create(path).unwrap();
        f.write_all(data.as_bytes()).unwrap();
    }

    fn mkdir(dir: &Path, rel: &str) {
        fs::create_dir_all(dir.join(rel)).unwrap();
    }

    fn link(dir: &Path, rel: &str, target: &str) {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    /// Capture with the default block size; the manifest must be valid.
    fn capture(spec: &OutputSpec, store: &MemoryStore) -> Result<String, OutputError> {
        capture_small(spec, store, DEFAULT_BLOCK_SIZE, &mut Vec::new())
    }

    fn capture_small(
        spec: &OutputSpec,
        store: &MemoryStore,
        block_size: u64,
        said: &mut Vec<String>,
    ) -> Result<String, OutputError> {
        let log = Mutex::new(Vec::new());
        let say = |s: &str| log.lock().unwrap().push(s.to_string());
        let result = capture_with_block_size(spec, store, &say, block_size);
        said.extend(log.into_inner().unwrap());
        if let Ok(captured) = &result {
            Manifest::parse(&captured.manifest_text).unwrap();
            for warning in &captured.warnings {
                assert!(said.contains(warning), "{warning:?} was not said");
            }
        }
        result.map(|c| c.manifest_text)
    }

    fn portable(text: &str) -> String {
        portable_manifest_text(text)
    }

    /// (path, size) of every file of a manifest, sorted.
    fn listing(text: &str) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = Manifest::parse(text)
            .unwrap()
            .files()
            .into_iter()
            .map(|f| (String::from_utf8_lossy(&f.path).into_owned(), f.size))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn stdout_vector() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a/b/c.out", "bilbo\n");
        let store = MemoryStore::new();
        let text = capture(&spec(tmp.path()), &store).unwrap();
        assert!(text.contains(SIGNATURE), "{text}");
        assert_eq!(
            portable(&text),
            "./a/b 307372fa8fd5c146b22ae7a45b49bc31+6 0:6:c.out\n"
        );
        assert_eq!(store.puts(), 1);
    }

    /// Go's TestStderrMount gives `./a b1946…+6 0:6:out.txt` and `./b 38af…+5
    /// 0:5:err.txt`: the Go collection filesystem packs small files per directory. We
    /// pack across directories, as arv-put does: one block for both.
    #[test]
    fn stderr_mount_vector() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a/out.txt", "hello\n");
        write(tmp.path(), "b/err.txt", "oops\n");
        let store = MemoryStore::new();
        let text = capture(&spec(tmp.path()), &store).unwrap();
        let block = format!("{}+11", md5_hex(b"hello\noops\n"));
        assert_eq!(
            portable(&text),
            format!("./a {block} 0:6:out.txt\n./b {block} 6:5:err.txt\n")
        );
        assert_eq!(store.puts(), 1);
    }

    #[test]
    fn secret_text_vector_and_secret_in_output_dir() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "secret.conf", "mypassword");
        let mut s = spec(tmp.path());
        let text = capture(&s, &MemoryStore::new()).unwrap();
        assert_eq!(
            portable(&text),
            ". 34819d7beeabb9260a5c854bc85b3e44+10 0:10:secret.conf\n"
        );
        // The same file as a secret mount: never captured (by host path or container path).
        for secret in [
            tmp.path().join("secret.conf"),
            PathBuf::from("/ctr/outdir/secret.conf"),
        ] {
            s.secret_paths = vec![secret];
            let store = MemoryStore::new();
            assert_eq!(capture(&s, &store).unwrap(), "");
            assert_eq!(store.puts(), 0);
        }
    }

    #[test]
    fn empty_output_is_empty_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        assert_eq!(capture(&spec(tmp.path()), &store).unwrap(), "");
        assert_eq!(store.puts(), 0);
    }

    #[test]
    fn regular_files_empty_dirs_and_fifo() {
        // Go's TestRegularFilesAndDirs, plus an empty file and a directory whose only
        // entry is skipped.
        let tmp = tempfile::tempdir().unwrap();
        mkdir(tmp.path(), "dir1/dir2/dir3");
        write(tmp.path(), "dir1/foo", "foo");
        write(tmp.path(), "dir1/empty", "");
        mkdir(tmp.path(), "onlyfifo");
        for fifo in ["dir1/fifo", "onlyfifo/f"] {
            let c = std::ffi::CString::new(tmp.path().join(fifo).to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        }
        let store = MemoryStore::new();
        let mut said = Vec::new();
        let text = capture_small(&spec(tmp.path()), &store, 1 << 20, &mut said).unwrap();
        let e = EMPTY_BLOCK_LOCATOR;
        assert_eq!(
            portable(&text),
            format!(
                "./dir1 acbd18db4cc2f85cedef654fccc4a4d8+3 0:0:empty 0:3:foo\n\
                 ./dir1/dir2/dir3 {e} 0:0:.keep\n\
                 ./onlyfifo {e} 0:0:\\056\n"
            )
        );
        assert_eq!(store.puts(), 1);
        assert!(
            said.iter().any(|l| l
                == "skipping unsupported file type (fifo) in output dir: \"/ctr/outdir/dir1/fifo\""),
            "{said:?}"
        );
        assert!(
            said.iter().any(|l| l == "copying \"dir1/foo\" (3 bytes)"),
            "{said:?}"
        );
    }

    /// Issue 10: one file whose name is not UTF-8 (`printf '\377\376'`) failed the whole
    /// capture ("file name is not valid UTF-8"), and every other file was lost with it.
    #[test]
    fn names_that_are_not_utf8_are_kept_with_every_other_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let at = |name: &[u8]| d.join(std::ffi::OsStr::from_bytes(name));
        fs::write(at(b"\xff\xfe"), "foo").unwrap();
        fs::create_dir(at(b"d\xe9")).unwrap();
        fs::write(at(b"d\xe9/caf\xc3\xa9 \xff"), "bar").unwrap();
        write(d, "ok.txt", "ok");
        symlink(std::ffi::OsStr::from_bytes(b"\xff\xfe"), at(b"l\xfd")).unwrap();
        let store = MemoryStore::new();
        let text = capture(&spec(d), &store).unwrap();
        let files: Vec<(Vec<u8>, Vec<u8>)> = Manifest::parse(&text)
            .unwrap()
            .files()
            .into_iter()
            .map(|f| (f.path, bytes(&store, &f.ranges)))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [
            (&b"l\xfd"[..], &b"foo"[..]),
            (b"ok.txt", b"ok"),
            (b"\xff\xfe", b"foo"),
            (b"d\xe9/caf\xc3\xa9 \xff", b"bar"),
        ]
        .iter()
        .map(|(p, b)| (p.to_vec(), b.to_vec()))
        .collect();
        assert_eq!(files, want, "{text}");
        // Every byte >= 0x80 of those names escaped (the module header of
        // manifest/names.rs says why), the UTF-8 name left as it is.
        for escaped in [
            ":3:\\377\\376\n",
            ":3:l\\375 ",
            "./d\\351 ",
            ":caf\\303\\251\\040\\377\n",
        ] {
            assert!(text.contains(escaped), "{escaped} not in {text}");
        }
    }

    /// Issue 10: data named `.` in a collection mounted under the output was dropped
    /// without a word; it is left out (no file can have that name) and said, and the
    /// warning is returned for the record's `runtime_status`.
    #[test]
    fn data_named_dot_in_a_mounted_collection_is_left_out_with_a_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manifest::parse(&format!(
            ". acbd18db4cc2f85cedef654fccc4a4d8+3{SIG} 0:3:foo\n./d acbd18db4cc2f85cedef654fccc4a4d8+3{SIG} 0:3:\\056 0:3:bar\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut s = spec(tmp.path());
        mkdir(tmp.path(), "in");
        s.by_reference = vec![ref_mount("in", &m, "")];
        let log = Mutex::new(Vec::new());
        let say = |l: &str| log.lock().unwrap().push(l.to_string());
        let captured = capture_with_block_size(&s, &MemoryStore::new(), &say, 1 << 20).unwrap();
        assert_eq!(
            listing(&captured.manifest_text),
            [("in/d/bar".to_string(), 3), ("in/foo".to_string(), 3)]
        );
        let warning = "output: left out 3 bytes at \"in/d/.\" (no file can be named \".\")";
        assert_eq!(captured.warnings, [warning]);
        assert!(log.lock().unwrap().iter().any(|l| l == warning));
    }

    #[test]
    fn nested_dirs_and_escaped_names() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "top", "foo");
        write(tmp.path(), "a b/c:d/e\\f", "bar");
        write(tmp.path(), "a/x/y/z", "foo");
        let text = capture(&spec(tmp.path()), &MemoryStore::new()).unwrap();
        // Packed in the order of the paths: "a b/…", "a/x/y/z", "top".
        let block = format!("{}+9", md5_hex(b"barfoofoo"));
        assert_eq!(
            portable(&text),
            format!(
                ". {block} 6:3:top\n\
                 ./a/x/y {block} 3:3:z\n\
                 ./a\\040b/c\\072d {block} 0:3:e\\134f\n"
            )
        );
    }

    #[test]
    fn a_file_larger_than_what_is_left_continues_in_the_next_block() {
        let tmp = tempfile::tempdir().unwrap();
        let body: String = (0..40).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        write(tmp.path(), "big", &body);
        write(tmp.path(), "two", &body[..32]);
        let store = MemoryStore::new();
        let text = capture_small(&spec(tmp.path()), &store, 16, &mut Vec::new()).unwrap();
        let files = Manifest::parse(&text).unwrap().files();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, b"big");
        let pieces = |i: usize| -> Vec<(u64, u64)> {
            files[i].ranges.iter().map(|r| (r.offset, r.len)).collect()
        };
        assert_eq!(pieces(0), [(0, 16), (0, 16), (0, 8)]);
        assert_eq!(bytes(&store, &files[0].ranges), body.as_bytes());
        // "two" starts in the rest of big's last block, then fills the next two.
        assert_eq!(pieces(1), [(8, 8), (0, 16), (0, 8)]);
        assert_eq!(bytes(&store, &files[1].ranges), &body.as_bytes()[..32]);
        assert_eq!(files[0].ranges[2].locator, files[1].ranges[0].locator);
        assert_eq!(store.puts(), 5);
        assert_eq!(Manifest::parse(&text).unwrap().locators().count(), 5);
    }

    #[test]
    fn blocks_larger_than_the_read_buffer() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 5 * READ_BUFFER + 3;
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        fs::write(tmp.path().join("big"), &body).unwrap();
        let store = MemoryStore::new();
        let block = 2 * READ_BUFFER as u64 + 1;
        let text = capture_small(&spec(tmp.path()), &store, block, &mut Vec::new()).unwrap();
        let files = Manifest::parse(&text).unwrap().files();
        let lens: Vec<u64> = files[0].ranges.iter().map(|r| r.len).collect();
        assert_eq!(lens, vec![block, block, size as u64 - 2 * block]);
        assert!(bytes(&store, &files[0].ranges) == body);
    }

    #[test]
    fn symlinks_inside_output_are_followed() {
        // Go's TestSymlink.
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        mkdir(d, "dir1/dir2/dir3");
        write(d, "dir1/file", "file");
        link(d, "l_abs_file", "/ctr/outdir/dir1/file");
        link(d, "l_abs_dir2", "/ctr/outdir/dir1/dir2");
        link(d, "dir1/dir2/l_rel_file", "../../dir1/file");
        link(d, "l_rel_file", "dir1/file");
        link(d, "morelinks/l_rel_dir2", "../dir1/dir2");
        link(d, "l_rel_dir3", "dir1/dir2/dir3");
        link(d, "morelinks/l_rel_l_rel_file", "../dir1/dir2/l_rel_file");
        let text = capture(&spec(d), &MemoryStore::new()).unwrap();
        let want: Vec<(String, u64)> = [
            ("dir1/dir2/dir3/.keep", 0),
            ("dir1/dir2/l_rel_file", 4),
            ("dir1/file", 4),
            ("l_abs_dir2/dir3/.keep", 0),
            ("l_abs_dir2/l_rel_file", 4),
            ("l_abs_file", 4),
            ("l_rel_dir3/.keep", 0),
            ("l_rel_file", 4),
            ("morelinks/l_rel_dir2/dir3/.keep", 0),
            ("morelinks/l_rel_dir2/l_rel_file", 4),
            ("morelinks/l_rel_l_rel_file", 4),
        ]
        .iter()
        .map(|(p, s)| (p.to_string(), *s))
        .collect();
        assert_eq!(listing(&text), want);
    }

    #[test]
    fn symlink_errors_fail_the_capture() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            // Go's TestSymlinkCycle.
            (
                vec![("dir1/l_dir2", "../dir2"), ("dir2/l_dir1", "../dir1")],
                "cannot output \"dir1/l_dir2/l_dir1/l_dir2/l_dir1/l_dir2/l_dir1/l_dir2/l_dir1/l_dir2/l_dir1/l_dir2\": too many symlinks, or symlink cycle",
            ),
            (
                vec![("self", "self")],
                "too many symlinks, or symlink cycle",
            ),
            (
                vec![("up", "/ctr/outdir")],
                "too many symlinks, or symlink cycle",
            ),
            // Go's TestSymlinkTargetMissing / TestSymlinkTargetNotMounted / TestOutputError.
            (
                vec![("symlink", "./missing")],
                "cannot output \"symlink\": symlink target \"/ctr/outdir/missing\" does not exist",
            ),
            (
                vec![("symlink", "./dir1/x/y")],
                "symlink target \"/ctr/outdir/dir1/x/y\" does not exist",
            ),
            (
                vec![("symlink", "../boop")],
                "cannot output \"symlink\": symlink target \"/ctr/boop\" is not in the output directory or a mounted collection",
            ),
            (
                vec![("baz", "/etc/hosts")],
                "\"/etc/hosts\" is not in the output",
            ),
            // A file used as a directory.
            (vec![("f", "dir1/x/y")], "does not exist"),
        ];
        for (links, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            mkdir(tmp.path(), "dir1");
            mkdir(tmp.path(), "dir2");
            write(tmp.path(), "dir1/x", "x");
            for (at, target) in &links {
                link(tmp.path(), at, target);
            }
            let err = capture(&spec(tmp.path()), &MemoryStore::new()).unwrap_err();
            assert!(err.to_string().contains(want), "{links:?}: {err}");
        }
    }

    #[test]
    fn symlink_hop_limit_is_ten() {
        for (chain, ok) in [(10, true), (11, false)] {
            let tmp = tempfile::tempdir().unwrap();
            write(tmp.path(), "file", "foo");
            for i in 0..chain {
                let target = if i + 1 == chain {
                    "file".to_string()
                } else {
                    format!("l{}", i + 1)
                };
                link(tmp.path(), &format!("l{i}"), &target);
            }
            // l0 -> l1 -> ... -> file: l0 needs `chain` hops (the other links fewer).
            let result = capture(&spec(tmp.path()), &MemoryStore::new());
            assert_eq!(result.is_ok(), ok, "chain of {chain}: {result:?}");
        }
    }

    #[test]
    fn symlinks_to_secrets_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "secret.conf", "mypassword");
        write(tmp.path(), "kept.txt", "kept");
        link(tmp.path(), "l", "secret.conf");
        let mut s = spec(tmp.path());
        s.secret_paths = vec![tmp.path().join("secret.conf")];
        let said = std::cell::RefCell::new(Vec::new());
        let say = |line: &str| said.borrow_mut().push(line.to_string());
        let manifest = capture_output(&s, &MemoryStore::new(), &say).unwrap();
        assert!(manifest.contains(":kept.txt"), "{manifest}");
        assert!(
            !manifest.contains(":l") && !manifest.contains("secret"),
            "{manifest}"
        );
        assert!(
            said.borrow()
                .iter()
                .any(|l| l.contains("symlink to the secret mount"))
        );

        // Go's TestSymlinkToSecret: a secret mounted elsewhere in the container.
        let tmp = tempfile::tempdir().unwrap();
        link(tmp.path(), "symlink", "/secret_text");
        let mut s = spec(tmp.path());
        s.secret_paths = vec![PathBuf::from("/secret_text")];
        assert_eq!(capture(&s, &MemoryStore::new()).unwrap(), "");
    }

    const NORMALIZED_WITH_SUBDIRS: &str = ". 3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0abcdefgh11234567890@569fa8c3 0:9:file1_in_main.txt 9:18:file2_in_main.txt 0:27:zzzzz-8i9sb-bcdefghijkdhvnk.log.txt\n./subdir1 3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396cabcdefghij6419876543234@569fa8c4 0:9:file1_in_subdir1.txt 9:18:file2_in_subdir1.txt\n./subdir1/subdir2 3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0bcdefghijk544332211@569fa8c5 0:9:file1_in_subdir2.txt 9:18:file2_in_subdir2.txt\n";
    const DENORMALIZED_WITH_SUBDIRS: &str = ". 3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0abcdefgh11234567890@569fa8c3 0:9:file1_in_main.txt 9:18:file2_in_main.txt 0:27:zzzzz-8i9sb-bcdefghijkdhvnk.log.txt 0:10:subdir1/file1_in_subdir1.txt 10:17:subdir1/file2_in_subdir1.txt\n";
    const L1: &str =
        "3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0abcdefgh11234567890@569fa8c3";
    const L2: &str =
        "3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396cabcdefghij6419876543234@569fa8c4";
    const L3: &str =
        "3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0bcdefghijk544332211@569fa8c5";

    /// Output dir with stdout at a/b/c.out and docker's stubs for the given mounts.
    fn stdout_and_mounts(dir: &Path, manifest: &str, mounts: &[(&str, &str, bool)]) -> OutputSpec {
        write(dir, "a/b/c.out", "bilbo\n");
        let m = Manifest::parse(manifest).unwrap();
        let mut s = spec(dir);
        for (at, sub, is_dir) in mounts {
            if *is_dir {
                mkdir(dir, at);
            } else {
                write(dir, at, "");
            }
            s.by_reference.push(ref_mount(at, &m, sub));
        }
        s
    }

    #[test]
    fn mounts_under_output_dir_vector() {
        // TestStdoutWithMultipleMountPointsUnderOutputDir.
        let tmp = tempfile::tempdir().unwrap();
        let s = stdout_and_mounts(
            tmp.path(),
            NORMALIZED_WITH_SUBDIRS,
            &[
                ("foo/bar", "file2_in_main.txt", false),
                ("foo/sub1", "subdir1", true),
                ("foo/sub1file2", "subdir1/file2_in_subdir1.txt", false),
                (
                    "foo/baz/sub2file2",
                    "subdir1/subdir2/file2_in_subdir2.txt",
                    false,
                ),
            ],
        );
        let store = MemoryStore::new();
        let text = capture(&s, &store).unwrap();
        assert_eq!(
            text,
            format!(
                "./a/b 307372fa8fd5c146b22ae7a45b49bc31+6{SIGNATURE} 0:6:c.out\n\
                 ./foo {L1} {L2} 9:18:bar 36:18:sub1file2\n\
                 ./foo/baz {L3} 9:18:sub2file2\n\
                 ./foo/sub1 {L2} 0:9:file1_in_subdir1.txt 9:18:file2_in_subdir1.txt\n\
                 ./foo/sub1/subdir2 {L3} 0:9:file1_in_subdir2.txt 9:18:file2_in_subdir2.txt\n"
            )
        );
        assert_eq!(store.puts(), 1, "only c.out is uploaded");
    }

    #[test]
    fn mount_from_denormalized_manifest_vector() {
        // TestStdoutWithMountPointsUnderOutputDirDenormalizedManifest.
        let tmp = tempfile::tempdir().unwrap();
        let s = stdout_and_mounts(
            tmp.path(),
            DENORMALIZED_WITH_SUBDIRS,
            &[("foo/bar", "subdir1/file2_in_subdir1.txt", false)],
        );
        let store = MemoryStore::new();
        assert_eq!(
            capture(&s, &store).unwrap(),
            format!(
                "./a/b 307372fa8fd5c146b22ae7a45b49bc31+6{SIGNATURE} 0:6:c.out\n./foo {L1} 10:17:bar\n"
            )
        );
    }

    #[test]
    fn symlinks_to_mounted_collections_are_captured_by_reference() {
        // Go's TestSymlinkToMountedCollection, plus links into an output mount.
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let foo = Manifest::parse(&format!(
            ". acbd18db4cc2f85cedef654fccc4a4d8+3{SIG} 0:3:foo\n"
        ))
        .unwrap();
        let subdirs = Manifest::parse(NORMALIZED_WITH_SUBDIRS).unwrap();
        let mut s = spec(d);
        s.link_targets = vec![ref_mount("/mnt", &foo, "")];
        s.by_reference = vec![ref_mount("in/sub", &subdirs, "subdir1")];
        mkdir(d, "in/sub");
        link(d, "l_dir", "../../mnt");
        link(d, "l_file", "/mnt/foo");
        link(d, "l_mount_file", "in/sub/subdir2/file1_in_subdir2.txt");
        link(d, "l_in", "in");
        let store = MemoryStore::new();
        let text = capture(&s, &store).unwrap();
        let files: Vec<(String, u64)> = [
            ("in/sub/file1_in_subdir1.txt", 9),
            ("in/sub/file2_in_subdir1.txt", 18),
            ("in/sub/subdir2/file1_in_subdir2.txt", 9),
            ("in/sub/subdir2/file2_in_subdir2.txt", 18),
            ("l_dir/foo", 3),
            ("l_file", 3),
            ("l_in/sub/file1_in_subdir1.txt", 9),
            ("l_in/sub/file2_in_subdir1.txt", 18),
            ("l_in/sub/subdir2/file1_in_subdir2.txt", 9),
            ("l_in/sub/subdir2/file2_in_subdir2.txt", 18),
            ("l_mount_file", 9),
        ]
        .iter()
        .map(|(p, n)| (p.to_string(), *n))
        .collect();
        assert_eq!(listing(&text), files);
        assert_eq!(store.puts(), 0);
        assert!(text.contains(&format!("acbd18db4cc2f85cedef654fccc4a4d8+3{SIG}")));

        // A link to a path that is not in the mounted collection.
        link(d, "l_bad", "/mnt/nope");
        let err = capture(&s, &store).unwrap_err();
        assert!(
            err.to_string().contains("\"/mnt/nope\" does not exist"),
            "{err}"
        );
    }

    /// The capture of staged mounts (output path `/out`), as the lifecycle does it.
    fn capture_staged(staged: &Staged, store: &MemoryStore) -> String {
        let spec = OutputSpec::from_staged(&staged.mounts, "/out", &[]);
        capture(&spec, store).unwrap()
    }

    /// Issue 7: the production path (staging, then `from_staged`) gave capture no link
    /// targets, so this failed with "is not in the output directory or a mounted
    /// collection".
    #[test]
    fn a_symlink_into_a_collection_mounted_elsewhere_is_kept_by_reference() {
        let store = MemoryStore::new();
        // /in/sub is mounted over /in's sub directory: a link there leads into it.
        let staged = stage_parts(&store, &[("/in", ""), ("/in/sub", "foo")]);
        let out = &staged.mounts.output_dir;
        link(out, "l_foo", "/in/foo");
        link(out, "d/l_nested", "../../in/sub");
        write(out, "made.txt", "made");
        let puts = store.puts();
        let text = capture_staged(&staged, &store);
        let want: Vec<(String, u64)> = [("d/l_nested", 3), ("l_foo", 3), ("made.txt", 4)]
            .iter()
            .map(|(p, n)| (p.to_string(), *n))
            .collect();
        assert_eq!(listing(&text), want);
        assert_eq!(store.puts() - puts, 1, "only made.txt is uploaded");
    }

    /// Issue 7: staging computed the empty directories of a read-only collection mounted
    /// under the output path, and they were dropped on the way to capture; the Go
    /// crunch-run keeps them in the output collection.
    #[test]
    fn empty_directories_of_a_collection_mounted_under_the_output_are_kept() {
        let store = MemoryStore::new();
        let staged = stage_parts(&store, &[("/out/in", ""), ("/out/part", "sub")]);
        let text = portable(&capture_staged(&staged, &store));
        let foo = md5_hex(b"foo");
        assert_eq!(
            text,
            format!(
                "./in {foo}+3 0:3:foo\n\
                 ./in/sub {foo}+3 0:3:bar\n\
                 ./in/sub/empty {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n\
                 ./part {foo}+3 0:3:bar\n\
                 ./part/empty {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n"
            )
        );
    }

    /// A symlink to an empty directory of a mounted collection is an empty directory too,
    /// not a missing target.
    #[test]
    fn a_symlink_to_an_empty_directory_of_a_mounted_collection_is_kept() {
        let store = MemoryStore::new();
        let staged = stage_parts(&store, &[("/in", "")]);
        link(&staged.mounts.output_dir, "l_empty", "/in/sub/empty");
        link(&staged.mounts.output_dir, "l_sub", "/in/sub");
        let text = portable(&capture_staged(&staged, &store));
        assert_eq!(
            text,
            format!(
                "./l_empty {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n\
                 ./l_sub {}+3 0:3:bar\n\
                 ./l_sub/empty {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n",
                md5_hex(b"foo")
            )
        );
    }

    #[test]
    fn nested_output_mounts_hide_what_they_cover() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manifest::parse(NORMALIZED_WITH_SUBDIRS).unwrap();
        let mut s = spec(tmp.path());
        s.by_reference = vec![
            ref_mount("m", &m, ""),
            ref_mount("m/subdir1", &m, "file1_in_main.txt"),
        ];
        let text = capture(&s, &MemoryStore::new()).unwrap();
        let paths: Vec<String> = listing(&text).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "m/file1_in_main.txt",
                "m/file2_in_main.txt",
                "m/subdir1",
                "m/zzzzz-8i9sb-bcdefghijkdhvnk.log.txt"
            ]
        );
    }

    #[test]
    fn unchanged_copies_reuse_their_blocks() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "w/same", "foo");
        write(tmp.path(), "w/grown", "food");
        write(tmp.path(), "w/touched", "bar");
        let mtime = |rel: &str| {
            fs::metadata(tmp.path().join(rel))
                .unwrap()
                .modified()
                .unwrap()
        };
        let old = |rel: &str, size, mtime, hash: &str| CopiedFile {
            rel_path: rel.into(),
            size,
            mtime,
            ranges: vec![BlockRange {
                locator: format!("{hash}+{size}+Aold@00000001"),
                offset: 0,
                len: size,
            }],
        };
        let mut s = spec(tmp.path());
        s.unchanged_candidates = vec![
            old(
                "w/same",
                3,
                mtime("w/same"),
                "acbd18db4cc2f85cedef654fccc4a4d8",
            ),
            old(
                "w/grown",
                3,
                mtime("w/grown"),
                "acbd18db4cc2f85cedef654fccc4a4d8",
            ),
            old(
                "w/touched",
                3,
                mtime("w/touched") - std::time::Duration::from_secs(5),
                "37b51d194a7513e45b56f6524f2d51f2",
            ),
        ];
        let store = MemoryStore::new();
        let text = capture(&s, &store).unwrap();
        assert!(
            text.contains("acbd18db4cc2f85cedef654fccc4a4d8+3+Aold@00000001"),
            "{text}"
        );
        assert!(
            !text.contains("37b51d194a7513e45b56f6524f2d51f2+3+Aold"),
            "{text}"
        );
        // Uploaded: the grown file and the touched one, nothing else, in one block.
        assert_eq!(store.puts(), 1);
        let blocks = store.blocks.lock().unwrap();
        assert!(blocks.contains_key(&md5_hex(b"foodbar")));
    }

    #[test]
    fn excluded_paths_are_left_out() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let m = Manifest::parse(NORMALIZED_WITH_SUBDIRS).unwrap();
        write(d, "keep", "foo");
        write(d, "ex/dir/file", "bar");
        mkdir(d, "mnt");
        link(d, "l_ex", "ex/dir/file");
        let mut s = spec(d);
        s.by_reference = vec![ref_mount("mnt", &m, "")];
        s.excluded = vec!["ex".to_string(), "/mnt/".to_string()];
        let store = MemoryStore::new();
        let text = capture(&s, &store).unwrap();
        assert_eq!(
            portable(&text),
            ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:keep\n"
        );
        assert_eq!(store.puts(), 1);
    }

    /// Issue 10: eight small files were eight PUTs and eight blocks. They are packed into
    /// one shared block, in the order of their paths, across directories.
    #[test]
    fn small_files_share_one_block() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..8 {
            write(
                tmp.path(),
                &format!("d{}/f{i}", i % 2),
                &format!("file {i}\n"),
            );
        }
        let store = MemoryStore::new();
        let text = capture(&spec(tmp.path()), &store).unwrap();
        assert_eq!(store.puts(), 1);
        let data: String = [0, 2, 4, 6, 1, 3, 5, 7]
            .iter()
            .map(|i| format!("file {i}\n"))
            .collect();
        let block = format!("{}+{}", md5_hex(data.as_bytes()), data.len());
        assert_eq!(
            portable(&text),
            format!(
                "./d0 {block} 0:7:f0 7:7:f2 14:7:f4 21:7:f6\n\
                 ./d1 {block} 28:7:f1 35:7:f3 42:7:f5 49:7:f7\n"
            )
        );
    }

    /// Empty files, unchanged copies and mounted collections keep their blocks; only the
    /// rest is packed.
    #[test]
    fn only_new_data_is_packed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "a", "new1");
        write(d, "b", "");
        write(d, "c", "same");
        write(d, "e", "new2");
        let mtime = fs::metadata(d.join("c")).unwrap().modified().unwrap();
        let mut s = spec(d);
        s.unchanged_candidates = vec![CopiedFile {
            rel_path: b"c".to_vec(),
            size: 4,
            mtime,
            ranges: vec![BlockRange {
                locator: format!("{}+4+Aold@00000001", md5_hex(b"same")),
                offset: 0,
                len: 4,
            }],
        }];
        let store = MemoryStore::new();
        let text = capture(&s, &store).unwrap();
        assert_eq!(store.puts(), 1);
        let packed = format!("{}+8", md5_hex(b"new1new2"));
        let old = format!("{}+4", md5_hex(b"same"));
        assert_eq!(
            portable(&text),
            format!(". {packed} {old} 0:4:a 0:0:b 8:4:c 4:4:e\n")
        );
    }

    /// A block is a list of file regions, streamed from the files when it is stored, never
    /// a copy in memory: a file changed after it was hashed makes the store see other
    /// bytes than the hash (and refuse them), whichever block the change is in.
    #[test]
    fn blocks_are_streamed_from_the_files_when_stored() {
        struct Meddling<'a> {
            store: &'a MemoryStore,
            file: PathBuf,
        }
        impl BlockStore for Meddling<'_> {
            fn put_block(
                &self,
                hash: &str,
                size: u64,
                body: &crate::store::BlockSource<'_>,
            ) -> Result<String, StoreError> {
                let mut data = fs::read(&self.file).unwrap();
                data.iter_mut().for_each(|b| *b = b.wrapping_add(1));
                fs::write(&self.file, data).unwrap();
                self.store.put_block(hash, size, body)
            }
            fn get_block(&self, l: &str, out: &mut dyn io::Write) -> Result<u64, StoreError> {
                self.store.get_block(l, out)
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..100u8).collect();
        fs::write(tmp.path().join("big"), &body).unwrap();
        write(tmp.path(), "small", "x");
        let store = MemoryStore::new();
        let meddling = Meddling {
            store: &store,
            file: tmp.path().join("big"),
        };
        let say = |_: &str| {};
        let err = capture_with_block_size(&spec(tmp.path()), &meddling, &say, 64).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot output \"big\": storing its data: PUT "),
            "{err}"
        );
        // Untouched, the same file spans two blocks, the second shared with "small".
        fs::write(tmp.path().join("big"), &body).unwrap();
        let text = capture_small(&spec(tmp.path()), &store, 64, &mut Vec::new()).unwrap();
        let files = Manifest::parse(&text).unwrap().files();
        assert_eq!(bytes(&store, &files[0].ranges), body);
        assert_eq!(files[1].ranges[0].offset, 36);
        let err = capture_with_block_size(
            &spec(tmp.path()),
            &Meddling {
                store: &store,
                file: tmp.path().join("small"),
            },
            &say,
            64,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot output \"big\" and 1 other file: storing their data: PUT "),
            "{err}"
        );
    }

    #[test]
    fn store_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "d/f", "foo");
        let store = MemoryStore::new();
        store
            .fail_next_puts
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        let err = capture(&spec(tmp.path()), &store).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot output \"d/f\": storing its data: PUT acbd18db4cc2f85cedef654fccc4a4d8: injected failure"
        );
    }

    #[test]
    fn globs_select_files_before_upload_and_prune_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "dir1/file11", "foo");
        write(d, "dir1/dir11/file111", "bar");
        write(d, "dir2/file2", "baz");
        mkdir(d, "dir1/dir12");
        let mut s = spec(d);
        let e = EMPTY_BLOCK_LOCATOR;
        let trials: &[(&str, String, usize)] = &[
            (
                "**/file111",
                "./dir1/dir11 37b51d194a7513e45b56f6524f2d51f2+3 0:3:file111\n".to_string(),
                1,
            ),
            ("**/dir12", format!("./dir1/dir12 {e} 0:0:\\056\n"), 0),
            ("**/dir12/*", format!("./dir1/dir12 {e} 0:0:.keep\n"), 0),
            ("nothing", String::new(), 0),
        ];
        for (glob, want, puts) in trials {
            s.globs = vec![glob.to_string()];
            let store = MemoryStore::new();
            let text = capture(&s, &store).unwrap();
            assert_eq!(&portable(&text), want, "{glob}");
            assert_eq!(store.puts(), *puts, "{glob}");
        }
    }

    #[test]
    fn globs_apply_to_mounted_collections() {
        // After Go's TestMountBelowExcludedByGlob and TestApplyGlobsToCollectionFS.
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let m = Manifest::parse(NORMALIZED_WITH_SUBDIRS).unwrap();
        let mut s = spec(d);
        for at in ["include/includer", "exclude/excluder"] {
            mkdir(d, at);
            s.by_reference.push(ref_mount(at, &m, ""));
        }
        s.globs = vec!["?ncl*/*r/*".to_string(), "*/?ncl*/**".to_string()];
        let mut said = Vec::new();
        let text = capture_small(&s, &MemoryStore::new(), 1 << 20, &mut said).unwrap();
        let paths: Vec<String> = listing(&text).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "include/includer/file1_in_main.txt",
                "include/includer/file2_in_main.txt",
                "include/includer/subdir1/file1_in_subdir1.txt",
                "include/includer/subdir1/file2_in_subdir1.txt",
                "include/includer/subdir1/subdir2/file1_in_subdir2.txt",
                "include/includer/subdir1/subdir2/file2_in_subdir2.txt",
                "include/includer/zzzzz-8i9sb-bcdefghijkdhvnk.log.txt",
            ]
        );
        assert!(
            said.iter().any(|l| l
                == "not copying \"exclude/excluder\" because contents cannot match output globs"),
            "{said:?}"
        );

        // A directory of a mounted collection selected by a glob but with no selected file
        // is kept as an empty directory.
        s.globs = vec!["include/includer/subdir1".to_string()];
        let text = capture(&s, &MemoryStore::new()).unwrap();
        assert_eq!(
            text,
            format!("./include/includer/subdir1 {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n")
        );
    }
}
