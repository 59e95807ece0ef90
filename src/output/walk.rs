//! The walk of the output directory: what to capture, and where each file's data comes
//! from (a host file to upload, or blocks already stored), following symlinks within the
//! output directory and into mounted collections, leaving out what must stay out. No data
//! is read here; uploading is upload.rs's job and writing the manifest mod.rs's.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use super::glob::apply_globs;
use super::paths::{clean_abs, clean_rel, components, ctr_join, path_buf, strip_dir, under};
use super::{CopiedFile, MAX_SYMLINK_HOPS, OutputError, OutputGlobs, OutputSpec, RefMount, io_err};
use crate::arvados::manifest::{BlockRange, shown};
use crate::collection::select::{join_rel, left_out_line};

/// What to capture: the directories to keep and the files, sorted by their path in the
/// output, with `output_glob` applied; and what was left out that the user must hear of.
pub(super) struct Plan {
    pub(super) dirs: Vec<Vec<u8>>,
    pub(super) files: Vec<Planned>,
    pub(super) warnings: Vec<String>,
}

/// Walk the output directory into a [`Plan`].
pub(super) fn plan(spec: &OutputSpec, say: &dyn Fn(&str)) -> Result<Plan, OutputError> {
    let mut walker = Walker::new(spec, say);
    walker.walk_dir(b"", b"", MAX_SYMLINK_HOPS, true)?;
    let Walker {
        files,
        dirs,
        globs,
        warnings,
        ..
    } = walker;
    let (dirs, mut files) = apply_globs(&globs, dirs.into_iter().collect(), files, |p| &p.dest);
    files.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok(Plan {
        dirs,
        files,
        warnings,
    })
}

/// Where a planned output file's data comes from.
#[derive(Debug)]
pub(super) enum Source {
    /// Upload this host file's first `size` bytes.
    Host { path: PathBuf, size: u64 },
    /// Already in the store (mounted collection, unchanged copy, empty file).
    Stored(Vec<BlockRange>),
}

#[derive(Debug)]
pub(super) struct Planned {
    /// Path in the output collection.
    pub(super) dest: Vec<u8>,
    pub(super) source: Source,
}

/// What a symlink leads to.
enum Target<'a> {
    /// A file or directory in the output directory, with its (not followed) metadata.
    Host { rel: Vec<u8>, meta: Metadata },
    /// Inside a mounted collection.
    Ref { mount: &'a RefMount, sub: Vec<u8> },
    /// Inside an excluded path: leave out silently.
    Excluded,
    /// A secret: left out, and said so (a secret never reaches the output).
    Secret(Vec<u8>),
}

/// The walk of the output directory, collecting what to capture.
struct Walker<'a> {
    spec: &'a OutputSpec,
    say: &'a dyn Fn(&str),
    globs: OutputGlobs,
    /// The container output path, cleaned (`/tmp`, or `""` for `/`).
    ctr_root: Vec<u8>,
    /// `by_reference` mounts by cleaned relative path.
    refs: HashMap<Vec<u8>, &'a RefMount>,
    /// `link_targets` by cleaned absolute container path.
    outside: Vec<(Vec<u8>, &'a RefMount)>,
    /// Secrets as cleaned absolute container paths.
    secrets: Vec<Vec<u8>>,
    excluded: Vec<Vec<u8>>,
    candidates: HashMap<&'a [u8], &'a CopiedFile>,
    files: Vec<Planned>,
    dirs: HashSet<Vec<u8>>,
    /// Said, and returned for the record's `runtime_status`.
    warnings: Vec<String>,
}

impl<'a> Walker<'a> {
    fn new(spec: &'a OutputSpec, say: &'a dyn Fn(&str)) -> Walker<'a> {
        let ctr_root = clean_abs(spec.ctr_output_path.as_bytes());
        let secrets = spec
            .secret_paths
            .iter()
            .map(|p| match p.strip_prefix(&spec.output_dir) {
                Ok(rel) => ctr_join(&ctr_root, rel.as_os_str().as_bytes()),
                Err(_) => clean_abs(p.as_os_str().as_bytes()),
            })
            .collect();
        Walker {
            spec,
            say,
            globs: OutputGlobs::new(&spec.globs),
            refs: spec
                .by_reference
                .iter()
                .map(|m| (clean_rel(m.path.as_bytes()), m))
                .collect(),
            outside: spec
                .link_targets
                .iter()
                .map(|m| (clean_abs(m.path.as_bytes()), m))
                .collect(),
            secrets,
            excluded: spec
                .excluded
                .iter()
                .map(|e| clean_rel(e.as_bytes()))
                .collect(),
            candidates: spec
                .unchanged_candidates
                .iter()
                .map(|c| (c.rel_path.as_slice(), c))
                .collect(),
            ctr_root,
            files: Vec::new(),
            dirs: HashSet::new(),
            warnings: Vec::new(),
        }
    }

    fn host(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.spec.output_dir.clone()
        } else {
            self.spec.output_dir.join(OsStr::from_bytes(rel))
        }
    }

    fn is_secret(&self, ctr_path: &[u8]) -> bool {
        self.secrets.iter().any(|s| under(ctr_path, s))
    }

    fn is_excluded(&self, rel: &[u8]) -> bool {
        self.excluded.iter().any(|e| !e.is_empty() && under(rel, e))
    }

    /// Say `line`, and keep it for the record's `runtime_status`.
    fn warn(&mut self, line: String) {
        (self.say)(&line);
        self.warnings.push(line);
    }

    /// Capture the directory `src` (relative to the output dir) as `dest`. With
    /// `include_mounts` (the root, or a directory reached through a symlink), the
    /// collection mounts under `src` are added at the same place under `dest`.
    fn walk_dir(
        &mut self,
        dest: &[u8],
        src: &[u8],
        hops: u32,
        include_mounts: bool,
    ) -> Result<(), OutputError> {
        if include_mounts {
            self.add_mounts_below(dest, src)?;
        }
        if !dest.is_empty() {
            self.dirs.insert(dest.to_vec());
        }
        let host = self.host(src);
        let mut names = Vec::new();
        let entries = fs::read_dir(&host).map_err(|e| io_err("read directory", &host, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("read directory", &host, e))?;
            names.push(entry.file_name().into_vec());
        }
        if names.is_empty() && !dest.is_empty() {
            self.files.push(Planned {
                dest: join_rel(dest, b".keep"),
                source: Source::Stored(Vec::new()),
            });
            return Ok(());
        }
        names.sort();
        for name in names {
            let child_src = join_rel(src, &name);
            if self.is_secret(&ctr_join(&self.ctr_root, &child_src))
                || self.is_excluded(&child_src)
                || self.refs.contains_key(&child_src)
            {
                continue;
            }
            self.walk_entry(&join_rel(dest, &name), &child_src, hops)?;
        }
        Ok(())
    }

    /// Capture one directory entry `src` as `dest`, following it if it is a symlink.
    fn walk_entry(&mut self, dest: &[u8], src: &[u8], hops: u32) -> Result<(), OutputError> {
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
                    "not copying {:?}: it is a symlink to the secret mount {:?}",
                    shown(dest),
                    shown(&target)
                ));
                Ok(())
            }
            Target::Ref { mount, sub } => self.add_ref(dest, mount, &sub),
            Target::Host { rel, meta } => self.add_host(dest, &rel, &meta, hops, true),
        }
    }

    /// Read the symlink at `src` (relative) and return its target as a container path,
    /// spending one hop.
    fn follow(&self, dest: &[u8], src: &[u8], hops: &mut u32) -> Result<Vec<u8>, OutputError> {
        if *hops == 0 {
            return Err(OutputError::TooManySymlinks {
                path: path_buf(dest),
            });
        }
        *hops -= 1;
        let host = self.host(src);
        let target = fs::read_link(&host).map_err(|e| io_err("readlink", &host, e))?;
        let target = target.into_os_string().into_vec();
        if target.starts_with(b"/") {
            return Ok(target);
        }
        let parent = src
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(&[][..], |end| &src[..end]);
        let mut path = ctr_join(&self.ctr_root, parent);
        path.push(b'/');
        path.extend_from_slice(&target);
        Ok(path)
    }

    /// Find what the container path `path` (a symlink's target, seen from the output
    /// entry `dest`) is, following symlinks in any of its components.
    fn resolve(
        &self,
        dest: &[u8],
        path: Vec<u8>,
        hops: &mut u32,
    ) -> Result<Target<'a>, OutputError> {
        let mut path = path;
        'restart: loop {
            let abs = clean_abs(&path);
            if self.is_secret(&abs) {
                return Ok(Target::Secret(abs));
            }
            let Some(rel) = strip_dir(&abs, &self.ctr_root) else {
                return self.resolve_outside(dest, abs);
            };
            let comps: Vec<&[u8]> = components(rel).filter(|c| !c.is_empty()).collect();
            // The output dir itself, then each longer prefix of the path.
            let mut i = 0;
            loop {
                let prefix = comps[..i].join(&b'/');
                if i > 0 && self.is_excluded(&prefix) {
                    return Ok(Target::Excluded);
                }
                if let Some(mount) = self.refs.get(&prefix) {
                    let sub = comps[i..].join(&b'/');
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
                        return Err(missing(dest, &abs));
                    }
                    Err(e) => return Err(io_err("lstat", &host, e)),
                };
                if meta.file_type().is_symlink() {
                    path = self.follow(dest, &prefix, hops)?;
                    path.push(b'/');
                    path.extend_from_slice(&comps[i..].join(&b'/'));
                    continue 'restart;
                }
                if i == comps.len() {
                    return Ok(Target::Host { rel: prefix, meta });
                }
                if !meta.is_dir() {
                    return Err(missing(dest, &abs));
                }
                i += 1;
            }
        }
    }

    /// A symlink target outside the output directory: only mounted collections will do,
    /// the deepest mount holding it (a mount hides what it is mounted over).
    fn resolve_outside(&self, dest: &[u8], abs: Vec<u8>) -> Result<Target<'a>, OutputError> {
        let deepest = self
            .outside
            .iter()
            .filter_map(|(root, mount)| strip_dir(&abs, root).map(|sub| (root.len(), *mount, sub)))
            .max_by_key(|(depth, ..)| *depth);
        match deepest {
            Some((_, mount, sub)) => Ok(Target::Ref {
                mount,
                sub: sub.to_vec(),
            }),
            None => Err(OutputError::NotMounted {
                path: path_buf(dest),
                target: path_buf(&abs),
            }),
        }
    }

    /// A file or directory of the output dir (`src`) captured as `dest`.
    fn add_host(
        &mut self,
        dest: &[u8],
        src: &[u8],
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
            shown(&ctr_join(&self.ctr_root, src))
        ));
        Ok(())
    }

    fn add_host_file(&mut self, dest: &[u8], src: &[u8], meta: &Metadata) {
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
            dest: dest.to_vec(),
            source,
        });
    }

    /// The `by_reference` mounts strictly under `src`, added at the same place under `dest`.
    fn add_mounts_below(&mut self, dest: &[u8], src: &[u8]) -> Result<(), OutputError> {
        let mut below: Vec<(Vec<u8>, &'a RefMount)> = self
            .refs
            .iter()
            .filter_map(|(path, m)| {
                strip_dir(path, src)
                    .filter(|r| !r.is_empty())
                    .map(|r| (join_rel(dest, r), *m))
            })
            .collect();
        below.sort_by(|a, b| a.0.cmp(&b.0));
        for (mount_dest, mount) in below {
            let mount_src = clean_rel(mount.path.as_bytes());
            if self.is_excluded(&mount_src) || self.is_secret(&ctr_join(&self.ctr_root, &mount_src))
            {
                continue;
            }
            if !self.globs.matches(&mount_dest, true)
                && !self.globs.subtree_could_match(&mount_dest)
            {
                (self.say)(&format!(
                    "not copying {:?} because contents cannot match output globs",
                    shown(&mount_dest)
                ));
                continue;
            }
            self.add_ref(&mount_dest, mount, b"")?;
        }
        Ok(())
    }

    /// The part `sub` of a mounted collection, captured as `dest` by reference: its files,
    /// and its directories (empty ones stay empty directories; with globs, any of them may
    /// be selected on its own).
    fn add_ref(&mut self, dest: &[u8], mount: &RefMount, sub: &[u8]) -> Result<(), OutputError> {
        let part = match sub {
            b"" => Cow::Borrowed(&mount.selection),
            _ => match mount.selection.part(sub) {
                Some(part) => Cow::Owned(part),
                None => {
                    let target = join_rel(mount.path.trim_end_matches('/').as_bytes(), sub);
                    return Err(missing(dest, &target));
                }
            },
        };
        let nested = self.nested_mounts(mount);
        let hidden = |rest: &[u8]| {
            let in_mount = join_rel(sub, rest);
            nested.iter().any(|n| under(&in_mount, n))
        };
        if !part.is_file {
            self.dirs.insert(dest.to_vec());
        }
        for dir in part.dirs.iter().filter(|d| !hidden(d)) {
            self.dirs.insert(join_rel(dest, dir));
        }
        for f in part.files.iter().filter(|f| !hidden(&f.path)) {
            self.files.push(Planned {
                dest: join_rel(dest, &f.path),
                source: Source::Stored(f.ranges.clone()),
            });
        }
        for (dir, bytes) in part.data_named_dot.iter().filter(|(d, _)| !hidden(d)) {
            self.warn(left_out_line("output", &join_rel(dest, dir), *bytes));
        }
        Ok(())
    }

    /// For an output mount, the output mounts nested inside it (relative to it): what they
    /// cover is theirs.
    fn nested_mounts(&self, mount: &RefMount) -> Vec<Vec<u8>> {
        let mount_rel = clean_rel(mount.path.as_bytes());
        let is_output_mount = self
            .refs
            .get(&mount_rel)
            .is_some_and(|m| std::ptr::eq(*m, mount));
        if !is_output_mount {
            return Vec::new();
        }
        self.refs
            .keys()
            .filter_map(|other| strip_dir(other, &mount_rel))
            .filter(|r| !r.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }
}

fn missing(dest: &[u8], target: &[u8]) -> OutputError {
    OutputError::MissingTarget {
        path: path_buf(dest),
        target: path_buf(target),
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
