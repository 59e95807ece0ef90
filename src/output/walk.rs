//! The walk of the output directory: what to capture, and where each file's data comes
//! from (a host file to upload, or blocks already stored), following symlinks within the
//! output directory and into mounted collections, leaving out what must stay out. No data
//! is read here; uploading is upload.rs's job and writing the manifest mod.rs's.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, Metadata};
use std::io;
use std::path::PathBuf;

use super::glob::apply_globs;
use super::paths::{clean_abs, clean_rel, ctr_join, strip_dir, under};
use super::{CopiedFile, MAX_SYMLINK_HOPS, OutputError, OutputGlobs, OutputSpec, RefMount, io_err};
use crate::arvados::manifest::BlockRange;
use crate::collection::select::join_rel;

/// Walk the output directory: the directories to keep and the files to capture, sorted by
/// their path in the output, with `output_glob` applied.
pub(super) fn plan(
    spec: &OutputSpec,
    say: &dyn Fn(&str),
) -> Result<(Vec<String>, Vec<Planned>), OutputError> {
    let mut walker = Walker::new(spec, say);
    walker.walk_dir("", "", MAX_SYMLINK_HOPS, true)?;
    let Walker {
        files, dirs, globs, ..
    } = walker;
    let (dirs, mut files) = apply_globs(&globs, dirs.into_iter().collect(), files, |p| &p.dest);
    files.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok((dirs, files))
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
    pub(super) dest: String,
    pub(super) source: Source,
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

    /// A symlink target outside the output directory: only mounted collections will do,
    /// the deepest mount holding it (a mount hides what it is mounted over).
    fn resolve_outside(&self, dest: &str, abs: String) -> Result<Target<'a>, OutputError> {
        let deepest = self
            .outside
            .iter()
            .filter_map(|(root, mount)| strip_dir(&abs, root).map(|sub| (root.len(), *mount, sub)))
            .max_by_key(|(depth, ..)| *depth);
        match deepest {
            Some((_, mount, sub)) => Ok(Target::Ref {
                mount,
                sub: sub.to_string(),
            }),
            None => Err(OutputError::NotMounted {
                path: dest.to_string(),
                target: abs,
            }),
        }
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
                rest.filter(|r| !r.is_empty())
                    .map(|r| (join_rel(dest, r), *m))
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

    /// The part `sub` of a mounted collection, captured as `dest` by reference: its files,
    /// and its directories (empty ones stay empty directories; with globs, any of them may
    /// be selected on its own).
    fn add_ref(&mut self, dest: &str, mount: &RefMount, sub: &str) -> Result<(), OutputError> {
        let part = match sub {
            "" => Cow::Borrowed(&mount.selection),
            _ => match mount.selection.part(sub) {
                Some(part) => Cow::Owned(part),
                None => {
                    return Err(OutputError::MissingTarget {
                        path: dest.to_string(),
                        target: format!("{}/{sub}", mount.path.trim_end_matches('/')),
                    });
                }
            },
        };
        let nested = self.nested_mounts(mount);
        let hidden = |rest: &str| {
            let in_mount = join_rel(sub, rest);
            nested.iter().any(|n| under(&in_mount, n))
        };
        if !part.is_file {
            self.dirs.insert(dest.to_string());
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
        Ok(())
    }

    /// For an output mount, the output mounts nested inside it (relative to it): what they
    /// cover is theirs.
    fn nested_mounts(&self, mount: &RefMount) -> Vec<String> {
        let mount_rel = clean_rel(&mount.path);
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
            .map(str::to_string)
            .collect()
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
