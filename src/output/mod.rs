//! Output capture: after the container exits, turn the host output directory into the
//! manifest of the output collection, uploading file data to the block store.
//!
//! What goes in (Arvados' copier rules, reference §5.2 "Output capture"):
//! - every regular file under the output directory, uploaded block by block, each block
//!   md5'd from the file and then streamed to the store from the same file region (no
//!   block is ever held in memory; one file per block sequence, no packing of small files);
//! - an empty directory as `dir/.keep` (an empty file); a directory whose entries were all
//!   skipped as an empty directory (`\056` marker);
//! - read-only collection mounts under the output path ([`RefMount`]), by locator, without
//!   copying data; files pre-copied from writable collection mounts ([`CopiedFile`]) by
//!   their old locators when their size and mtime are unchanged;
//! - symlinks followed (at most [`MAX_SYMLINK_HOPS`] along any path): into the output
//!   directory (content captured under the link's name) or into a mounted collection (by
//!   reference).
//!
//! What stays out: fifos, sockets and devices (with a warning), `exclude_from_output`
//! paths, secret mounts, and whatever `output_glob` does not select ([`OutputGlobs`]).
//! A symlink to a secret, to a missing target, to anything outside the output directory
//! and the mounted collections, or a symlink cycle fails the whole capture.
//!
//! Memory: only per-file metadata (paths, sizes, block ranges) is kept, never file data.

mod glob;

pub use glob::{OutputGlobs, glob_match};

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use md5::{Digest, Md5};

use crate::arvados::manifest::{BlockRange, Manifest, ManifestFile, hex, normalized_manifest};
use crate::logging::spool::DEFAULT_BLOCK_SIZE;
use crate::store::{BlockStore, StoreError};

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
    /// The mounted files, paths relative to the mount point. A mount of a single file has
    /// one entry whose path is `""`. No entries: an empty directory.
    pub files: Vec<ManifestFile>,
}

impl RefMount {
    /// The mount at `path` of `sub_path` (`""`, `"dir"`, `"/dir/file.txt"`) of a collection.
    pub fn from_manifest(
        path: &str,
        manifest: &Manifest,
        sub_path: &str,
    ) -> Result<RefMount, OutputError> {
        let sub = sub_path.trim_matches('/');
        let mut files = Vec::new();
        for mut f in manifest.files() {
            if sub.is_empty() {
                files.push(f);
            } else if f.path == sub {
                f.path = String::new();
                files.push(f);
            } else if let Some(rest) = f.path.strip_prefix(sub).and_then(|r| r.strip_prefix('/')) {
                f.path = rest.to_string();
                files.push(f);
            }
        }
        if files.is_empty() && !sub.is_empty() {
            return Err(OutputError::NotInCollection {
                mount: path.to_string(),
                sub: sub.to_string(),
            });
        }
        Ok(RefMount {
            path: path.to_string(),
            files,
        })
    }
}

/// A file copied into the output directory from a writable collection mount before the
/// container started. If it still has this size and mtime, its old block ranges are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedFile {
    /// Relative to the output directory.
    pub rel_path: String,
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
/// symlink targets are container paths.
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
    TooManySymlinks { path: String },
    #[error("cannot output {path:?}: symlink target {target:?} does not exist")]
    MissingTarget { path: String, target: String },
    #[error(
        "cannot output {path:?}: symlink target {target:?} is not in the output directory or a mounted collection"
    )]
    NotMounted { path: String, target: String },
    #[error("cannot output {path}: file name is not valid UTF-8")]
    NonUtf8Name { path: PathBuf },
    #[error("cannot output {path:?}: {detail}")]
    Changed { path: String, detail: String },
    #[error("cannot output {path:?}: storing its data: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("collection mount at {mount:?}: {sub:?} is not in the collection")]
    NotInCollection { mount: String, sub: String },
}

/// Capture the output directory: upload what needs uploading and return the normalized
/// manifest text (`""` for an empty output). `say` gets progress and warnings.
pub fn capture_output(
    spec: &OutputSpec,
    blocks: &dyn BlockStore,
    say: &dyn Fn(&str),
) -> Result<String, OutputError> {
    capture_with_block_size(spec, blocks, say, DEFAULT_BLOCK_SIZE)
}

/// [`capture_output`] with a chosen block size (tests use tiny ones).
fn capture_with_block_size(
    spec: &OutputSpec,
    blocks: &dyn BlockStore,
    say: &dyn Fn(&str),
    block_size: u64,
) -> Result<String, OutputError> {
    let mut walker = Walker::new(spec, say);
    walker.walk_dir("", "", MAX_SYMLINK_HOPS, true)?;
    let Walker {
        files, dirs, globs, ..
    } = walker;
    let (dirs, mut files) = apply_globs(&globs, dirs.into_iter().collect(), files, |p| &p.dest);
    files.sort_by(|a, b| a.dest.cmp(&b.dest));

    let mut buf = vec![0u8; READ_BUFFER];
    let mut stored: Vec<(String, Vec<BlockRange>)> = Vec::with_capacity(files.len());
    for file in files {
        let ranges = match file.source {
            Source::Stored(ranges) => ranges,
            Source::Host { path, size } => {
                say(&format!("copying {:?} ({size} bytes)", file.dest));
                upload_file(blocks, &path, &file.dest, size, block_size.max(1), &mut buf)?
            }
        };
        stored.push((file.dest, ranges));
    }
    Ok(normalized_manifest(&stored, &dirs))
}

/// Keep only the files the globs select, and the directories they select or that hold
/// something kept (Go's `applyGlobsToFilesAndDirs`). Returns sorted directories.
fn apply_globs<T>(
    globs: &OutputGlobs,
    dirs: Vec<String>,
    files: Vec<T>,
    path_of: impl Fn(&T) -> &str,
) -> (Vec<String>, Vec<T>) {
    if globs.is_empty() {
        let mut dirs = dirs;
        dirs.sort();
        return (dirs, files);
    }
    let mut keep: HashSet<String> = HashSet::new();
    for d in dirs.iter().filter(|d| globs.matches(d, true)) {
        add_with_ancestors(d, &mut keep);
        keep.insert(d.clone());
    }
    let files: Vec<T> = files
        .into_iter()
        .filter(|f| globs.matches(path_of(f), false))
        .collect();
    for f in &files {
        add_with_ancestors(path_of(f), &mut keep);
    }
    let mut dirs: Vec<String> = keep.into_iter().collect();
    dirs.sort();
    (dirs, files)
}

fn add_with_ancestors(path: &str, keep: &mut HashSet<String>) {
    for (i, c) in path.char_indices() {
        if i > 0 && c == '/' {
            keep.insert(path[..i].to_string());
        }
    }
}

/// Where a planned output file's data comes from.
#[derive(Debug)]
enum Source {
    /// Upload this host file's first `size` bytes.
    Host { path: PathBuf, size: u64 },
    /// Already in the store (mounted collection, unchanged copy, empty file).
    Stored(Vec<BlockRange>),
}

#[derive(Debug)]
struct Planned {
    /// Path in the output collection.
    dest: String,
    source: Source,
}

/// What a symlink leads to.
enum Target<'a> {
    /// A file or directory in the output directory, with its (not followed) metadata.
    Host { rel: String, meta: Metadata },
    /// Inside a mounted collection.
    Ref { mount: &'a RefMount, sub: String },
    /// Inside an excluded path: leave out silently.
    Excluded,
    /// A secret: left out, and said so (a secret never reaches the output).
    Secret(String),
}

/// The walk of the output directory, collecting what to capture.
struct Walker<'a> {
    spec: &'a OutputSpec,
    say: &'a dyn Fn(&str),
    globs: OutputGlobs,
    /// The container output path, cleaned (`"/tmp"`, or `""` for `/`).
    ctr_root: String,
    /// `by_reference` mounts by cleaned relative path.
    refs: HashMap<String, &'a RefMount>,
    /// `link_targets` by cleaned absolute container path.
    outside: Vec<(String, &'a RefMount)>,
    /// Secrets as cleaned absolute container paths.
    secrets: Vec<String>,
    excluded: Vec<String>,
    candidates: HashMap<&'a str, &'a CopiedFile>,
    files: Vec<Planned>,
    dirs: HashSet<String>,
}

impl<'a> Walker<'a> {
    fn new(spec: &'a OutputSpec, say: &'a dyn Fn(&str)) -> Walker<'a> {
        let ctr_root = clean_abs(&spec.ctr_output_path);
        let secrets = spec
            .secret_paths
            .iter()
            .map(|p| match p.strip_prefix(&spec.output_dir) {
                Ok(rel) => ctr_join(&ctr_root, &rel.to_string_lossy()),
                Err(_) => clean_abs(&p.to_string_lossy()),
            })
            .collect();
        Walker {
            spec,
            say,
            globs: OutputGlobs::new(&spec.globs),
            refs: spec
                .by_reference
                .iter()
                .map(|m| (clean_rel(&m.path), m))
                .collect(),
            outside: spec
                .link_targets
                .iter()
                .map(|m| (clean_abs(&m.path), m))
                .collect(),
            secrets,
            excluded: spec.excluded.iter().map(|e| clean_rel(e)).collect(),
            candidates: spec
                .unchanged_candidates
                .iter()
                .map(|c| (c.rel_path.trim_matches('/'), c))
                .collect(),
            ctr_root,
            files: Vec::new(),
            dirs: HashSet::new(),
        }
    }

    fn host(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.spec.output_dir.clone()
        } else {
            self.spec.output_dir.join(rel)
        }
    }

    fn is_secret(&self, ctr_path: &str) -> bool {
        self.secrets.iter().any(|s| under(ctr_path, s))
    }

    fn is_excluded(&self, rel: &str) -> bool {
        self.excluded.iter().any(|e| !e.is_empty() && under(rel, e))
    }

    /// Capture the directory `src` (relative to the output dir) as `dest`. With
    /// `include_mounts` (the root, or a directory reached through a symlink), the
    /// collection mounts under `src` are added at the same place under `dest`.
    fn walk_dir(
        &mut self,
        dest: &str,
        src: &str,
        hops: u32,
        include_mounts: bool,
    ) -> Result<(), OutputError> {
        if include_mounts {
            self.add_mounts_below(dest, src)?;
        }
        if !dest.is_empty() {
            self.dirs.insert(dest.to_string());
        }
        let host = self.host(src);
        let mut names = Vec::new();
        let entries = fs::read_dir(&host).map_err(|e| io_err("read directory", &host, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("read directory", &host, e))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| OutputError::NonUtf8Name { path: entry.path() })?;
            names.push(name);
        }
        if names.is_empty() && !dest.is_empty() {
            self.files.push(Planned {
                dest: format!("{dest}/.keep"),
                source: Source::Stored(Vec::new()),
            });
            return Ok(());
        }
        names.sort();
        for name in names {
            let child_src = join(src, &name);
            if self.is_secret(&ctr_join(&self.ctr_root, &child_src))
                || self.is_excluded(&child_src)
                || self.refs.contains_key(&child_src)
            {
                continue;
            }
            self.walk_entry(&join(dest, &name), &child_src, hops)?;
        }
        Ok(())
    }

    /// Capture one directory entry `src` as `dest`, following it if it is a symlink.
    fn walk_entry(&mut self, dest: &str, src: &str, hops: u32) -> Result<(), OutputError> {
        let host = self.host(src);
        let meta = fs::symlink_metadata(&host).map_err(|e| io_err("lstat", &host, e))?;
        if !meta.file_type().is_symlink() {
            return self.add_host(dest, src, &meta, hops, false);
        }
        let mut hops = hops;
        let start = self.follow(dest, src, &mut hops)?;
        match self.resolve(dest, start, &mut hops)? {
            Target::Excluded => Ok(()),
            Target::Secret(target) => {
                (self.say)(&format!(
                    "not copying {dest:?}: it is a symlink to the secret mount {target:?}"
                ));
                Ok(())
            }
            Target::Ref { mount, sub } => self.add_ref(dest, mount, &sub),
            Target::Host { rel, meta } => self.add_host(dest, &rel, &meta, hops, true),
        }
    }

    /// Read the symlink at `src` (relative) and return its target as a container path,
    /// spending one hop.
    fn follow(&self, dest: &str, src: &str, hops: &mut u32) -> Result<String, OutputError> {
        if *hops == 0 {
            return Err(OutputError::TooManySymlinks {
                path: dest.to_string(),
            });
        }
        *hops -= 1;
        let host = self.host(src);
        let target = fs::read_link(&host).map_err(|e| io_err("readlink", &host, e))?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|_| OutputError::NonUtf8Name { path: host.clone() })?;
        if target.starts_with('/') {
            return Ok(target);
        }
        let parent = src.rsplit_once('/').map_or("", |(p, _)| p);
        Ok(format!("{}/{}", ctr_join(&self.ctr_root, parent), target))
    }

    /// Find what the container path `path` (a symlink's target, seen from the output
    /// entry `dest`) is, following symlinks in any of its components.
    fn resolve(&self, dest: &str, path: String, hops: &mut u32) -> Result<Target<'a>, OutputError> {
        let mut path = path;
        'restart: loop {
            let abs = clean_abs(&path);
            if self.is_secret(&abs) {
                return Ok(Target::Secret(abs));
            }
            let Some(rel) = strip_dir(&abs, &self.ctr_root) else {
                return self.resolve_outside(dest, abs);
            };
            let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
            // The output dir itself, then each longer prefix of the path.
            let mut i = 0;
            loop {
                let prefix = comps[..i].join("/");
                if i > 0 && self.is_excluded(&prefix) {
                    return Ok(Target::Excluded);
                }
                if let Some(mount) = self.refs.get(&prefix) {
                    let sub = comps[i..].join("/");
                    return Ok(Target::Ref { mount, sub });
                }
                let host = self.host(&prefix);
                let meta = if i == 0 {
                    fs::metadata(&host)
                } else {
                    fs::symlink_metadata(&host)
                };
                let meta = match meta {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(OutputError::MissingTarget {
                            path: dest.to_string(),
                            target: abs,
                        });
                    }
                    Err(e) => return Err(io_err("lstat", &host, e)),
                };
                if meta.file_type().is_symlink() {
                    let target = self.follow(dest, &prefix, hops)?;
                    path = format!("{target}/{}", comps[i..].join("/"));
                    continue 'restart;
                }
                if i == comps.len() {
                    return Ok(Target::Host { rel: prefix, meta });
                }
                if !meta.is_dir() {
                    return Err(OutputError::MissingTarget {
                        path: dest.to_string(),
                        target: abs,
                    });
                }
                i += 1;
            }
        }
    }

    /// A symlink target outside the output directory: only mounted collections will do.
    fn resolve_outside(&self, dest: &str, abs: String) -> Result<Target<'a>, OutputError> {
        for (root, mount) in &self.outside {
            if let Some(sub) = strip_dir(&abs, root) {
                return Ok(Target::Ref {
                    mount,
                    sub: sub.to_string(),
                });
            }
        }
        Err(OutputError::NotMounted {
            path: dest.to_string(),
            target: abs,
        })
    }

    /// A file or directory of the output dir (`src`) captured as `dest`.
    fn add_host(
        &mut self,
        dest: &str,
        src: &str,
        meta: &Metadata,
        hops: u32,
        via_link: bool,
    ) -> Result<(), OutputError> {
        if meta.is_dir() {
            if !self.globs.matches(dest, true) && !self.globs.subtree_could_match(dest) {
                return Ok(());
            }
            return self.walk_dir(dest, src, hops, via_link);
        }
        if meta.is_file() {
            self.add_host_file(dest, src, meta);
            return Ok(());
        }
        (self.say)(&format!(
            "skipping unsupported file type ({}) in output dir: {:?}",
            file_kind(meta),
            ctr_join(&self.ctr_root, src)
        ));
        Ok(())
    }

    fn add_host_file(&mut self, dest: &str, src: &str, meta: &Metadata) {
        let size = meta.len();
        let unchanged = self
            .candidates
            .get(src)
            .filter(|c| c.size == size && meta.modified().ok() == Some(c.mtime));
        let source = match unchanged {
            Some(c) => Source::Stored(c.ranges.clone()),
            None if size == 0 => Source::Stored(Vec::new()),
            None => Source::Host {
                path: self.host(src),
                size,
            },
        };
        self.files.push(Planned {
            dest: dest.to_string(),
            source,
        });
    }

    /// The `by_reference` mounts strictly under `src`, added at the same place under `dest`.
    fn add_mounts_below(&mut self, dest: &str, src: &str) -> Result<(), OutputError> {
        let mut below: Vec<(String, &'a RefMount)> = self
            .refs
            .iter()
            .filter_map(|(path, m)| {
                let rest = if src.is_empty() {
                    Some(path.as_str())
                } else {
                    path.strip_prefix(src).and_then(|r| r.strip_prefix('/'))
                };
                rest.filter(|r| !r.is_empty()).map(|r| (join(dest, r), *m))
            })
            .collect();
        below.sort_by(|a, b| a.0.cmp(&b.0));
        for (mount_dest, mount) in below {
            let mount_src = clean_rel(&mount.path);
            if self.is_excluded(&mount_src) || self.is_secret(&ctr_join(&self.ctr_root, &mount_src))
            {
                continue;
            }
            if !self.globs.matches(&mount_dest, true)
                && !self.globs.subtree_could_match(&mount_dest)
            {
                (self.say)(&format!(
                    "not copying {mount_dest:?} because contents cannot match output globs"
                ));
                continue;
            }
            self.add_ref(&mount_dest, mount, "")?;
        }
        Ok(())
    }

    /// The part `sub` of a mounted collection, captured as `dest` by reference.
    fn add_ref(&mut self, dest: &str, mount: &RefMount, sub: &str) -> Result<(), OutputError> {
        // Files of an output mount hidden by another output mount nested inside it.
        let mount_rel = clean_rel(&mount.path);
        let is_output_mount = self
            .refs
            .get(&mount_rel)
            .is_some_and(|m| std::ptr::eq(*m, mount));
        let nested: Vec<String> = if is_output_mount {
            self.refs
                .keys()
                .filter_map(|other| strip_dir(other, &mount_rel))
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let mut found = false;
        for f in &mount.files {
            let rest = if sub.is_empty() {
                Some(f.path.as_str())
            } else if f.path == sub {
                Some("")
            } else {
                f.path.strip_prefix(sub).and_then(|r| r.strip_prefix('/'))
            };
            let Some(rest) = rest else { continue };
            found = true;
            if nested.iter().any(|n| under(&f.path, n)) {
                continue;
            }
            let file_dest = join(dest, rest);
            self.add_ancestor_dirs(dest, &file_dest);
            self.files.push(Planned {
                dest: file_dest,
                source: Source::Stored(f.ranges.clone()),
            });
        }
        if !found {
            if !sub.is_empty() {
                return Err(OutputError::MissingTarget {
                    path: dest.to_string(),
                    target: format!("{}/{sub}", mount.path.trim_end_matches('/')),
                });
            }
            self.dirs.insert(dest.to_string());
        }
        Ok(())
    }

    /// With globs, the directories inside a mounted collection are candidates too (a glob
    /// may select one that has no selected file).
    fn add_ancestor_dirs(&mut self, top: &str, file_dest: &str) {
        if self.globs.is_empty() || file_dest == top {
            return;
        }
        let mut dir = file_dest;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if parent.len() < top.len() {
                break;
            }
            if !self.dirs.insert(parent.to_string()) {
                break;
            }
            dir = parent;
        }
    }
}

/// Store the whole file at `path` in 64 MiB blocks (as output capture does): its block
/// ranges, in order.
pub fn store_file(blocks: &dyn BlockStore, path: &Path) -> Result<Vec<BlockRange>, OutputError> {
    let size = fs::metadata(path)
        .map_err(|e| io_err("stat", path, e))?
        .len();
    let mut buf = vec![0u8; READ_BUFFER];
    let dest = path.display().to_string();
    upload_file(blocks, path, &dest, size, DEFAULT_BLOCK_SIZE, &mut buf)
}

/// Upload the first `size` bytes of the file at `path` in blocks of `block_size`: md5
/// each region from the file, then let the store stream it again from the same region.
fn upload_file(
    blocks: &dyn BlockStore,
    path: &Path,
    dest: &str,
    size: u64,
    block_size: u64,
    buf: &mut [u8],
) -> Result<Vec<BlockRange>, OutputError> {
    let mut file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut ranges = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = block_size.min(size - offset);
        let hash = md5_region(&mut file, len, buf).map_err(|e| io_err("read", path, e))?;
        let Some(hash) = hash else {
            return Err(OutputError::Changed {
                path: dest.to_string(),
                detail: format!("file shrank below {size} bytes while it was being captured"),
            });
        };
        let open = || -> io::Result<Box<dyn Read + Send>> {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(offset))?;
            Ok(Box::new(f.take(len)))
        };
        let locator = blocks
            .put_block(&hash, len, &open)
            .map_err(|source| OutputError::Store {
                path: dest.to_string(),
                source,
            })?;
        ranges.push(BlockRange {
            locator,
            offset: 0,
            len,
        });
        offset += len;
    }
    Ok(ranges)
}

/// md5 of the next `len` bytes of `file`; `None` if the file ends first.
fn md5_region(file: &mut File, len: u64, buf: &mut [u8]) -> io::Result<Option<String>> {
    let mut md5 = Md5::new();
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(None);
        }
        md5.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(Some(hex(&md5.finalize())))
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> OutputError {
    OutputError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn file_kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "unknown"
    }
}

/// Whether `path` is `dir` or inside it (both cleaned, same kind: relative or absolute).
fn under(path: &str, dir: &str) -> bool {
    strip_dir(path, dir).is_some()
}

/// `path` relative to `dir` (`""` if equal), or `None` if it is not inside. `dir` may be
/// `""` (the root, for cleaned absolute paths written `"/a/b"`, or the output root for
/// relative paths).
fn strip_dir<'p>(path: &'p str, dir: &str) -> Option<&'p str> {
    if dir.is_empty() {
        return Some(path.trim_start_matches('/'));
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Lexically clean a container path: `"/a/./b/../c/"` → `"/a/c"`; the root is `""`.
fn clean_abs(path: &str) -> String {
    let mut comps: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    comps.iter().map(|c| format!("/{c}")).collect()
}

/// A relative path without leading, trailing or doubled slashes, nor `.` components.
fn clean_rel(path: &str) -> String {
    clean_abs(path).trim_start_matches('/').to_string()
}

/// The container path of `rel` under the cleaned container directory `root`.
fn ctr_join(root: &str, rel: &str) -> String {
    clean_abs(&format!("{root}/{rel}"))
}

fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (false, true) => dir.to_string(),
        (false, false) => format!("{dir}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::sync::Mutex;

    use super::*;
    use crate::arvados::manifest::{EMPTY_BLOCK_LOCATOR, md5_hex, portable_manifest_text};
    use crate::store::BlockSource;

    const CTR: &str = "/ctr/outdir";
    const SIG: &str = "+Afeedfacefeedfacefeedfacefeedfacefeedface@569fa8c3";

    /// Blocks in memory; records every put. Signs locators unless `unsigned`.
    #[derive(Default)]
    struct Recorder {
        puts: Mutex<Vec<String>>,
        data: Mutex<HashMap<String, Vec<u8>>>,
        unsigned: bool,
        fail: bool,
    }

    impl Recorder {
        fn puts(&self) -> usize {
            self.puts.lock().unwrap().len()
        }
        fn bytes(&self, ranges: &[BlockRange]) -> Vec<u8> {
            let data = self.data.lock().unwrap();
            let mut out = Vec::new();
            for r in ranges {
                let block = &data[&r.locator[..32]];
                out.extend_from_slice(&block[r.offset as usize..(r.offset + r.len) as usize]);
            }
            out
        }
    }

    impl BlockStore for Recorder {
        fn put_block(
            &self,
            hash: &str,
            size: u64,
            body: &BlockSource<'_>,
        ) -> Result<String, StoreError> {
            if self.fail {
                return Err(StoreError::Unavailable {
                    what: format!("PUT {hash}"),
                    message: "injected failure".into(),
                });
            }
            let mut data = Vec::new();
            body().unwrap().read_to_end(&mut data).unwrap();
            assert_eq!(data.len() as u64, size);
            assert_eq!(md5_hex(&data), hash);
            self.puts.lock().unwrap().push(format!("{hash}+{size}"));
            self.data.lock().unwrap().insert(hash.to_string(), data);
            Ok(if self.unsigned {
                format!("{hash}+{size}")
            } else {
                format!("{hash}+{size}{SIG}")
            })
        }

        fn get_block(&self, _: &str, _: &mut dyn std::io::Write) -> Result<u64, StoreError> {
            unimplemented!()
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
    fn capture(spec: &OutputSpec, store: &Recorder) -> Result<String, OutputError> {
        capture_small(spec, store, DEFAULT_BLOCK_SIZE, &mut Vec::new())
    }

    fn capture_small(
        spec: &OutputSpec,
        store: &Recorder,
        block_size: u64,
        said: &mut Vec<String>,
    ) -> Result<String, OutputError> {
        let log = Mutex::new(Vec::new());
        let say = |s: &str| log.lock().unwrap().push(s.to_string());
        let result = capture_with_block_size(spec, store, &say, block_size);
        said.extend(log.into_inner().unwrap());
        if let Ok(text) = &result {
            Manifest::parse(text).unwrap();
        }
        result
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
            .map(|f| (f.path, f.size))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn stdout_vector() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a/b/c.out", "bilbo\n");
        let store = Recorder::default();
        let text = capture(&spec(tmp.path()), &store).unwrap();
        assert!(text.contains(SIG), "{text}");
        assert_eq!(
            portable(&text),
            "./a/b 307372fa8fd5c146b22ae7a45b49bc31+6 0:6:c.out\n"
        );
        assert_eq!(store.puts(), 1);
    }

    #[test]
    fn stderr_mount_vector() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a/out.txt", "hello\n");
        write(tmp.path(), "b/err.txt", "oops\n");
        let text = capture(&spec(tmp.path()), &Recorder::default()).unwrap();
        assert_eq!(
            portable(&text),
            "./a b1946ac92492d2347c6235b4d2611184+6 0:6:out.txt\n./b 38af5c54926b620264ab1501150cf189+5 0:5:err.txt\n"
        );
    }

    #[test]
    fn secret_text_vector_and_secret_in_output_dir() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "secret.conf", "mypassword");
        let mut s = spec(tmp.path());
        let text = capture(&s, &Recorder::default()).unwrap();
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
            let store = Recorder::default();
            assert_eq!(capture(&s, &store).unwrap(), "");
            assert_eq!(store.puts(), 0);
        }
    }

    #[test]
    fn empty_output_is_empty_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Recorder::default();
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
        let store = Recorder::default();
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

    #[test]
    fn nested_dirs_and_escaped_names() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "top", "foo");
        write(tmp.path(), "a b/c:d/e\\f", "bar");
        write(tmp.path(), "a/x/y/z", "foo");
        let text = capture(&spec(tmp.path()), &Recorder::default()).unwrap();
        assert_eq!(
            portable(&text),
            ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:top\n\
             ./a/x/y acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:z\n\
             ./a\\040b/c\\072d 37b51d194a7513e45b56f6524f2d51f2+3 0:3:e\\134f\n"
        );
    }

    #[test]
    fn large_files_are_uploaded_in_blocks_from_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let body: String = (0..40).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        write(tmp.path(), "big", &body);
        write(tmp.path(), "two", &body[..32]);
        let store = Recorder::default();
        let text = capture_small(&spec(tmp.path()), &store, 16, &mut Vec::new()).unwrap();
        let files = Manifest::parse(&text).unwrap().files();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "big");
        let lens: Vec<u64> = files[0].ranges.iter().map(|r| r.len).collect();
        assert_eq!(lens, vec![16, 16, 8]);
        assert_eq!(store.bytes(&files[0].ranges), body.as_bytes());
        assert_eq!(files[1].ranges.len(), 2);
        assert_eq!(store.bytes(&files[1].ranges), &body.as_bytes()[..32]);
        // Blocks of "two" are the first two of "big": listed once in the stream.
        let locators = Manifest::parse(&text).unwrap().locators().count();
        assert_eq!(locators, 3);
        assert_eq!(store.puts(), 5);
    }

    #[test]
    fn blocks_larger_than_the_read_buffer() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 5 * READ_BUFFER + 3;
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        fs::write(tmp.path().join("big"), &body).unwrap();
        let store = Recorder::default();
        let block = 2 * READ_BUFFER as u64 + 1;
        let text = capture_small(&spec(tmp.path()), &store, block, &mut Vec::new()).unwrap();
        let files = Manifest::parse(&text).unwrap().files();
        let lens: Vec<u64> = files[0].ranges.iter().map(|r| r.len).collect();
        assert_eq!(lens, vec![block, block, size as u64 - 2 * block]);
        assert!(store.bytes(&files[0].ranges) == body);
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
        let text = capture(&spec(d), &Recorder::default()).unwrap();
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
            let err = capture(&spec(tmp.path()), &Recorder::default()).unwrap_err();
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
            let result = capture(&spec(tmp.path()), &Recorder::default());
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
        let manifest = capture_output(&s, &Recorder::default(), &say).unwrap();
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
        assert_eq!(capture(&s, &Recorder::default()).unwrap(), "");
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
            s.by_reference
                .push(RefMount::from_manifest(at, &m, sub).unwrap());
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
                ("foo/bar", "/file2_in_main.txt", false),
                ("foo/sub1", "/subdir1", true),
                ("foo/sub1file2", "/subdir1/file2_in_subdir1.txt", false),
                (
                    "foo/baz/sub2file2",
                    "/subdir1/subdir2/file2_in_subdir2.txt",
                    false,
                ),
            ],
        );
        let store = Recorder {
            unsigned: true,
            ..Recorder::default()
        };
        let text = capture(&s, &store).unwrap();
        assert_eq!(
            text,
            format!(
                "./a/b 307372fa8fd5c146b22ae7a45b49bc31+6 0:6:c.out\n\
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
            &[("foo/bar", "/subdir1/file2_in_subdir1.txt", false)],
        );
        let store = Recorder {
            unsigned: true,
            ..Recorder::default()
        };
        assert_eq!(
            capture(&s, &store).unwrap(),
            format!("./a/b 307372fa8fd5c146b22ae7a45b49bc31+6 0:6:c.out\n./foo {L1} 10:17:bar\n")
        );
    }

    #[test]
    fn ref_mount_from_manifest_paths() {
        let m = Manifest::parse(NORMALIZED_WITH_SUBDIRS).unwrap();
        let whole = RefMount::from_manifest("all", &m, "").unwrap();
        assert_eq!(whole.files.len(), 7);
        let dir = RefMount::from_manifest("d", &m, "subdir1/").unwrap();
        let paths: Vec<&str> = dir.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "file1_in_subdir1.txt",
                "file2_in_subdir1.txt",
                "subdir2/file1_in_subdir2.txt",
                "subdir2/file2_in_subdir2.txt"
            ]
        );
        let file = RefMount::from_manifest("f", &m, "/file1_in_main.txt").unwrap();
        assert_eq!(file.files.len(), 1);
        assert_eq!(file.files[0].path, "");
        let err = RefMount::from_manifest("x", &m, "/nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            "collection mount at \"x\": \"nope\" is not in the collection"
        );
        // "subdir" is not a prefix directory of "subdir1".
        assert!(RefMount::from_manifest("x", &m, "subdir").is_err());
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
        s.link_targets = vec![RefMount::from_manifest("/mnt", &foo, "").unwrap()];
        s.by_reference = vec![RefMount::from_manifest("in/sub", &subdirs, "subdir1").unwrap()];
        mkdir(d, "in/sub");
        link(d, "l_dir", "../../mnt");
        link(d, "l_file", "/mnt/foo");
        link(d, "l_mount_file", "in/sub/subdir2/file1_in_subdir2.txt");
        link(d, "l_in", "in");
        let store = Recorder::default();
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

    #[test]
    fn nested_output_mounts_hide_what_they_cover() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manifest::parse(NORMALIZED_WITH_SUBDIRS).unwrap();
        let mut s = spec(tmp.path());
        s.by_reference = vec![
            RefMount::from_manifest("m", &m, "").unwrap(),
            RefMount::from_manifest("m/subdir1", &m, "file1_in_main.txt").unwrap(),
        ];
        let text = capture(&s, &Recorder::default()).unwrap();
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
            rel_path: rel.to_string(),
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
        let store = Recorder::default();
        let text = capture(&s, &store).unwrap();
        assert!(
            text.contains("acbd18db4cc2f85cedef654fccc4a4d8+3+Aold@00000001"),
            "{text}"
        );
        assert!(
            !text.contains("37b51d194a7513e45b56f6524f2d51f2+3+Aold"),
            "{text}"
        );
        // Uploaded, in path order: the grown file and the touched one.
        assert_eq!(
            store.puts.lock().unwrap().clone(),
            [
                format!("{}+4", md5_hex(b"food")),
                "37b51d194a7513e45b56f6524f2d51f2+3".to_string()
            ]
        );
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
        s.by_reference = vec![RefMount::from_manifest("mnt", &m, "").unwrap()];
        s.excluded = vec!["ex".to_string(), "/mnt/".to_string()];
        let store = Recorder::default();
        let text = capture(&s, &store).unwrap();
        assert_eq!(
            portable(&text),
            ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:keep\n"
        );
        assert_eq!(store.puts(), 1);
    }

    #[test]
    fn store_errors_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "d/f", "foo");
        let store = Recorder {
            fail: true,
            ..Recorder::default()
        };
        let err = capture(&spec(tmp.path()), &store).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot output \"d/f\": storing its data: PUT acbd18db4cc2f85cedef654fccc4a4d8: injected failure"
        );
    }

    /// Go's TestApplyGlobsToFilesAndDirs.
    #[test]
    fn apply_globs_to_files_and_dirs() {
        let dirs = ["dir1", "dir1/dir11", "dir1/dir12", "dir2"];
        let files = ["dir1/file11", "dir1/dir11/file111", "dir2/file2"];
        let trials: &[(&[&str], &[&str], &[&str])] = &[
            (&[], &dirs, &files),
            (&["**"], &dirs, &files),
            (
                &["**/file111"],
                &["dir1", "dir1/dir11"],
                &["dir1/dir11/file111"],
            ),
            (&["nothing"], &[], &[]),
            (&["**/dir12"], &["dir1", "dir1/dir12"], &[]),
            (&["**/file*"], &["dir1", "dir1/dir11", "dir2"], &files),
            (&["**/dir1[12]"], &["dir1", "dir1/dir11", "dir1/dir12"], &[]),
            (&["**/dir1[^2]"], &["dir1", "dir1/dir11"], &[]),
            (
                &["dir1/**"],
                &["dir1", "dir1/dir11", "dir1/dir12"],
                &["dir1/file11", "dir1/dir11/file111"],
            ),
        ];
        for (globs, want_dirs, want_files) in trials {
            let g = OutputGlobs::new(&globs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            let (got_dirs, got_files) = apply_globs(
                &g,
                dirs.iter().map(|s| s.to_string()).collect(),
                files.iter().map(|s| s.to_string()).collect(),
                |f: &String| f.as_str(),
            );
            assert_eq!(&got_dirs, want_dirs, "{globs:?}");
            assert_eq!(&got_files, want_files, "{globs:?}");
        }
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
            let store = Recorder::default();
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
            s.by_reference
                .push(RefMount::from_manifest(at, &m, "").unwrap());
        }
        s.globs = vec!["?ncl*/*r/*".to_string(), "*/?ncl*/**".to_string()];
        let mut said = Vec::new();
        let text = capture_small(&s, &Recorder::default(), 1 << 20, &mut said).unwrap();
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
        let text = capture(&s, &Recorder::default()).unwrap();
        assert_eq!(
            text,
            format!("./include/includer/subdir1 {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n")
        );
    }
}
