//! The container's mounts: read and check the record's `mounts` (and `secret_mounts`), then
//! lay them out on the host so `docker create --mount type=bind,…` can bind them.
//!
//! Two steps, so that every mistake in a record is reported before anything touches disk:
//!
//! - [`parse_mounts`] (parse.rs) validates (no I/O) and returns a [`MountPlan`]: the path
//!   mounts in parent-before-child order, the output mount, and the stdin/stdout/stderr
//!   redirects.
//! - [`stage`] (stage.rs) makes the plan real under a run directory and returns
//!   [`StagedMounts`]: the bind list, the host output directory, the stdio files, and what
//!   output capture needs to know (collections to include by reference, files copied from
//!   Keep, exclusions, secrets).
//!
//! This file holds the types both steps share. Reading collections from Keep is
//! `collection`'s job; turning the output directory into a collection is `output`'s.
//!
//! Rules and error texts follow `SetupMounts` in `lib/crunchrun/crunchrun.go` (reference
//! §5.2); where we are stricter (unknown kinds, `keep`, `file` outside stdout/stderr,
//! read-only collections without an id) the message says what is wrong and with which mount.

pub mod arv_mount;
mod files;
mod parse;
mod stage;

pub use files::remove_staged;
pub use parse::parse_mounts;
pub use stage::{stage, stage_with};

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::Value;

use crate::arvados::manifest::BlockRange;
use crate::collection::{CollectionError, Selection};

/// What a mount is. Only the kinds crunch-run can honour; everything else is refused by
/// [`parse_mounts`].
#[derive(Debug, Clone, PartialEq)]
pub enum MountKind {
    /// An empty writable directory. `capacity` (bytes) is checked against free space.
    Tmp { capacity: Option<u64> },
    /// A collection by PDH or UUID (never both), optionally one file or directory of it
    /// (`path`, relative, already split off a `"pdh/path"` form). A writable collection
    /// without an id is an empty writable directory.
    Collection {
        pdh: Option<String>,
        uuid: Option<String>,
        path: Option<String>,
        writable: bool,
    },
    /// A file holding this value as JSON.
    Json(Value),
    /// A file holding this text.
    Text(String),
    /// Only for `stdout`/`stderr`: the container path (under the output path) that receives
    /// the stream.
    File { path: String },
}

impl MountKind {
    fn name(&self) -> &'static str {
        match self {
            MountKind::Tmp { .. } => "tmp",
            MountKind::Collection { .. } => "collection",
            MountKind::Json(_) => "json",
            MountKind::Text(_) => "text",
            MountKind::File { .. } => "file",
        }
    }
}

/// One validated mount.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// A clean absolute path in the container, or `stdin`/`stdout`/`stderr`.
    pub target: String,
    pub kind: MountKind,
    pub exclude_from_output: bool,
    /// From `secret_mounts`: never written into the output, contents redacted from logs.
    pub secret: bool,
}

/// The validated mounts of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct MountPlan {
    pub output_path: String,
    /// Path mounts (secret ones included), parents before children.
    pub mounts: Vec<Mount>,
    /// `Collection` (one file of it) or `Json`.
    pub stdin: Option<Mount>,
    /// `File { path }` under the output path.
    pub stdout: Option<Mount>,
    pub stderr: Option<Mount>,
}

/// One bind mount for docker (`--mount type=bind,…`).
pub use crate::docker::argv::Bind;

/// What output capture must know about the output directory and the mounts around it.
/// Every `rel` is relative to the host output directory (and to the output path in the
/// container), `""` being the directory itself.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputRef {
    /// A read-only collection mount (not excluded from the output), captured by reference.
    /// Under the output path (`rel`), its content goes into the output and the host
    /// directory at `rel` (docker's empty mount point) must not be walked. Anywhere, a
    /// symlink from the output may lead into it.
    Collection {
        /// The mount point in the container.
        target: String,
        rel: Option<String>,
        /// What is mounted, paths relative to the mount point.
        selection: Selection,
    },
    /// A file copied into the output directory from a writable collection. If at capture
    /// time it still has this size and mtime, its `ranges` can be reused instead of
    /// uploading it again.
    Copied {
        /// Bytes: the rest of the path is the collection's file name.
        rel: Vec<u8>,
        size: u64,
        mtime: SystemTime,
        ranges: Vec<BlockRange>,
    },
    /// A mount under the output path marked `exclude_from_output`: skip `rel`.
    Excluded { rel: String },
    /// A secret file: `host` is where it lives (outside the output directory); `rel` is its
    /// mount point when under the output path (docker leaves an empty file there). Never
    /// captured.
    Secret { rel: Option<String>, host: PathBuf },
}

/// The mounts, laid out on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedMounts {
    /// In mount-target order, parents before children.
    pub binds: Vec<Bind>,
    /// The host directory bound at the output path.
    pub output_dir: PathBuf,
    /// A host file to feed to the container's stdin.
    pub stdin: Option<PathBuf>,
    /// Host files (under `output_dir`) that receive the raw streams.
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub output_refs: Vec<OutputRef>,
    /// Contents of secret mounts, for log redaction.
    pub secrets: Vec<String>,
    /// What staging left out that the user must hear of (each line already said; for the
    /// record's `runtime_status.warning`).
    pub warnings: Vec<String>,
}

/// Why the mounts cannot be set up. Validation messages are the reference's where it has
/// one; every other message names the mount.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The record asks for something we refuse.
    #[error("{0}")]
    Invalid(String),
    /// A host file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A collection of this mount could not be read (the API, Keep, or the host files
    /// it is copied into).
    #[error("mount {target:?}: {source}")]
    Collection {
        target: String,
        #[source]
        source: CollectionError,
    },
}

fn invalid(msg: impl Into<String>) -> MountError {
    MountError::Invalid(msg.into())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    let what = what.into();
    move |source| MountError::Io { what, source }
}

fn in_mount(target: &str) -> impl FnOnce(CollectionError) -> MountError {
    let target = target.to_string();
    move |source| MountError::Collection { target, source }
}

/// `target` relative to `base` if strictly below it.
fn below<'a>(target: &'a str, base: &str) -> Option<&'a str> {
    target
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('/'))
        .filter(|r| !r.is_empty())
}

/// `target` relative to `base` if at (`""`) or below it.
fn at_or_below<'a>(target: &'a str, base: &str) -> Option<&'a str> {
    if target == base {
        Some("")
    } else {
        below(target, base)
    }
}

/// "stdout" → "Stdout", as Go's `strings.Title` does in the reference's messages.
fn title(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
