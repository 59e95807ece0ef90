//! The container's mounts: read and check the record's `mounts` (and `secret_mounts`), then
//! lay them out on the host so `docker create -v host:container[:ro]` can bind them.
//!
//! Two steps, so that every mistake in a record is reported before anything touches disk:
//!
//! - [`parse_mounts`] validates (no I/O) and returns a [`MountPlan`]: the path mounts in
//!   parent-before-child order, the output mount, and the stdin/stdout/stderr redirects.
//! - [`stage`] makes the plan real under a run directory and returns [`StagedMounts`]: the
//!   bind list, the host output directory, the stdio files, and what output capture needs
//!   to know (collections to include by reference, files copied from Keep, exclusions,
//!   secrets).
//!
//! The real crunch-run exposes collections through a FUSE mount (arv-mount). We have none,
//! so collection mounts are *copied* from Keep onto the host: block by block, each block
//! fetched once and its byte ranges written straight into every file that uses it, never a
//! whole block in memory. Read-only mounts are then made read-only on the host as well.
//!
//! Rules and error texts follow `SetupMounts` in `lib/crunchrun/crunchrun.go` (reference
//! §5.2); where we are stricter (unknown kinds, `keep`, `file` outside stdout/stderr,
//! read-only collections without an id) the message says what is wrong and with which mount.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::arvados::container::kind_of;
use crate::arvados::ids::{is_collection_uuid, is_pdh};
use crate::arvados::manifest::{BlockRange, ManifestFile};
use crate::collection::fetch;
use crate::collection::select::join_rel;
use crate::collection::{CollectionError, CollectionReader, Selection};
use crate::store::{ApiStore, BlockStore};

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

/// What output capture must know about the output directory. Every `rel` is relative to
/// the host output directory (and to the output path in the container), `""` being the
/// directory itself.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputRef {
    /// A read-only collection mounted under the output path: its files go into the output
    /// by reference (their `path`s are already relative to the output directory), and the
    /// host directory at `rel` (docker's empty mount point) must not be walked.
    Collection {
        rel: String,
        files: Vec<ManifestFile>,
        /// Empty directories of the collection, relative to the output directory.
        dirs: Vec<String>,
    },
    /// A file copied into the output directory from a writable collection. If at capture
    /// time it still has this size and mtime, its `ranges` can be reused instead of
    /// uploading it again.
    Copied {
        rel: String,
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

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

const STDIO: [&str; 3] = ["stdin", "stdout", "stderr"];

/// Validate `mounts` and `secret_mounts` (JSON objects, or null) against `output_path`.
/// No I/O.
pub fn parse_mounts(
    mounts: &Value,
    secret_mounts: &Value,
    output_path: &str,
) -> Result<MountPlan, MountError> {
    let regular = as_object(mounts, "mounts")?;
    let secrets = as_object(secret_mounts, "secret_mounts")?;

    let mut entries: Vec<(&String, &Value, bool)> = Vec::new();
    for (target, value) in regular.iter() {
        entries.push((target, value, false));
    }
    for (target, value) in secrets.iter() {
        if regular.contains_key(target) {
            return Err(invalid(format!(
                "secret mount {target:?} conflicts with regular mount"
            )));
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "json" && kind != "text" {
            return Err(invalid(format!(
                "secret mount {target:?} type is {kind:?} but only 'json' and 'text' are permitted"
            )));
        }
        if !is_clean_abs(target) {
            return Err(invalid(format!(
                "secret mount {target:?} must be an absolute path without empty, \".\" or \"..\" components"
            )));
        }
        entries.push((target, value, true));
    }
    // Same order as the Go code, so the same record reports the same first error.
    entries.sort_by(|a, b| a.0.cmp(b.0));

    let mut plan = MountPlan {
        output_path: output_path.to_string(),
        mounts: Vec::new(),
        stdin: None,
        stdout: None,
        stderr: None,
    };
    for (target, value, secret) in entries {
        let mount = parse_one(target, value, secret, output_path)?;
        match target.as_str() {
            "stdin" => plan.stdin = Some(mount),
            "stdout" => plan.stdout = Some(mount),
            "stderr" => plan.stderr = Some(mount),
            _ => plan.mounts.push(mount),
        }
    }
    check_output_mount(&plan)?;
    plan.mounts.sort_by(|a, b| {
        let ka: Vec<&str> = a.target.split('/').collect();
        let kb: Vec<&str> = b.target.split('/').collect();
        ka.cmp(&kb)
    });
    Ok(plan)
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, MountError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match v {
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        Value::Object(m) => Ok(m),
        other => Err(invalid(format!(
            "{what} must be a JSON object, got {}",
            kind_of(other)
        ))),
    }
}

/// `/a/b`: absolute, at least one component, no empty, `.` or `..` component.
fn is_clean_abs(p: &str) -> bool {
    match p.strip_prefix('/') {
        Some(rest) => is_clean_rel(rest),
        None => false,
    }
}

/// `a/b`: at least one component, no empty, `.` or `..` component.
fn is_clean_rel(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
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

fn parse_one(
    target: &str,
    value: &Value,
    secret: bool,
    output_path: &str,
) -> Result<Mount, MountError> {
    let is_stdio = STDIO.contains(&target);
    if !is_stdio && !is_clean_abs(target) {
        return Err(invalid(format!(
            "mount point {target:?} must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components"
        )));
    }
    let Value::Object(obj) = value else {
        return Err(invalid(format!(
            "mount {target:?} must be a JSON object, got {}",
            kind_of(value)
        )));
    };
    let fields = Fields { target, obj };
    let kind = fields
        .string("kind")?
        .ok_or_else(|| invalid(format!("mount {target:?} has no kind")))?;

    if target == "stdout" || target == "stderr" {
        if kind != "file" {
            return Err(invalid(format!(
                "unsupported mount kind '{kind}' for {target}: only 'file' is supported"
            )));
        }
        let path = fields.string("path")?.unwrap_or_default();
        let prefix = if output_path.ends_with('/') {
            output_path.to_string()
        } else {
            format!("{output_path}/")
        };
        if !path.starts_with(&prefix) {
            return Err(invalid(format!(
                "{} path does not start with OutputPath: {path}, {prefix}",
                title(target)
            )));
        }
        if !is_clean_abs(&path) {
            return Err(invalid(format!(
                "{} path {path:?} must not contain empty, \".\" or \"..\" components",
                title(target)
            )));
        }
        return Ok(Mount {
            target: target.to_string(),
            kind: MountKind::File { path },
            exclude_from_output: false,
            secret,
        });
    }
    if target == "stdin" && kind != "collection" && kind != "json" {
        return Err(invalid(format!(
            "unsupported mount kind '{kind}' for stdin: only 'collection' and 'json' are supported"
        )));
    }
    let under_output = below(target, output_path).is_some();
    if under_output && !matches!(kind.as_str(), "collection" | "text" | "json") {
        return Err(invalid(format!(
            "only mount points of kind 'collection', 'text' or 'json' are supported underneath the output_path for {target:?}, was {kind:?}"
        )));
    }

    let kind = match kind.as_str() {
        "tmp" => MountKind::Tmp {
            capacity: fields.u64("capacity")?.filter(|c| *c > 0),
        },
        "collection" => {
            let kind = parse_collection(&fields, output_path)?;
            if target == "stdin" && !matches!(kind, MountKind::Collection { path: Some(_), .. }) {
                return Err(invalid(
                    "stdin mount of kind 'collection' needs a portable_data_hash or uuid and the path of a file in it",
                ));
            }
            kind
        }
        "json" => MountKind::Json(obj.get("content").cloned().unwrap_or(Value::Null)),
        "text" => match obj.get("content") {
            Some(Value::String(s)) => MountKind::Text(s.clone()),
            _ => {
                return Err(invalid(format!(
                    "content for mount {target:?} must be a string"
                )));
            }
        },
        "file" => {
            return Err(invalid(format!(
                "mount {target:?}: kind 'file' is only supported for stdout and stderr"
            )));
        }
        // Documented by Arvados (all of Keep under the mount point) but never implemented:
        // the Go crunch-run silently skips it, leaving an empty directory the container
        // did not expect. Without FUSE we cannot offer it either, so say so up front.
        "keep" => {
            return Err(invalid(format!(
                "mount {target:?}: kind 'keep' is not supported"
            )));
        }
        other => {
            return Err(invalid(format!(
                "mount {target:?}: unknown mount kind {other:?}"
            )));
        }
    };
    Ok(Mount {
        target: target.to_string(),
        kind,
        exclude_from_output: fields.bool("exclude_from_output")?,
        secret,
    })
}

/// "stdout" → "Stdout", as Go's `strings.Title` does in the reference's message.
fn title(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Typed access to one mount's fields; JSON null counts as absent (Go's zero value).
struct Fields<'a> {
    target: &'a str,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, want: &str, got: &Value) -> MountError {
        invalid(format!(
            "mount {:?}: {name} must be {want}, got {}",
            self.target,
            kind_of(got)
        ))
    }

    /// A string field; `""` counts as absent.
    fn string(&self, name: &str) -> Result<Option<String>, MountError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(name, "a string", other)),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, MountError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.wrong(name, "a boolean", other)),
        }
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, MountError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n)),
                None => Err(self.wrong(name, "a non-negative integer", v)),
            },
        }
    }
}

fn parse_collection(fields: &Fields<'_>, output_path: &str) -> Result<MountKind, MountError> {
    let target = fields.target;
    let writable = fields.bool("writable")?;
    let uuid = fields.string("uuid")?;
    let mut pdh = fields.string("portable_data_hash")?;
    let mut path = fields.string("path")?;
    if uuid.is_some() && pdh.is_some() {
        return Err(invalid(
            "cannot specify both 'uuid' and 'portable_data_hash' for a collection mount",
        ));
    }
    if let Some(u) = &uuid {
        if writable {
            return Err(invalid(
                "writing to existing collections currently not permitted",
            ));
        }
        if !is_collection_uuid(u) {
            return Err(invalid(format!(
                "mount {target:?}: uuid {u:?} is not a collection UUID"
            )));
        }
    }
    if let Some(p) = pdh.take() {
        // "pdh/sub/dir" form: the part after the first "/" replaces `path`.
        let (hash, sub) = match p.split_once('/') {
            Some((h, s)) => (h.to_string(), Some(s.to_string())),
            None => (p.clone(), None),
        };
        if !is_pdh(&hash) {
            return Err(invalid(format!(
                "mount {target:?}: portable_data_hash {p:?} is not a portable data hash"
            )));
        }
        if writable && at_or_below(target, output_path).is_none() {
            return Err(invalid(
                "can never write to a collection specified by portable data hash",
            ));
        }
        if sub.is_some() {
            path = sub;
        }
        pdh = Some(hash);
    }
    let path = match path {
        Some(p) => clean_collection_path(target, &p)?,
        None => None,
    };
    if !writable && pdh.is_none() && uuid.is_none() {
        return Err(invalid(format!(
            "mount {target:?}: a read-only collection mount needs a portable_data_hash or uuid"
        )));
    }
    if path.is_some() && pdh.is_none() && uuid.is_none() {
        return Err(invalid(format!(
            "mount {target:?}: path given without a portable_data_hash or uuid"
        )));
    }
    Ok(MountKind::Collection {
        pdh,
        uuid,
        path,
        writable,
    })
}

/// A path inside a collection: a leading `/` or `./` and a trailing `/` are dropped; `.`
/// or empty is the whole collection (None).
fn clean_collection_path(target: &str, p: &str) -> Result<Option<String>, MountError> {
    let p = p
        .strip_prefix("./")
        .or_else(|| p.strip_prefix('/'))
        .unwrap_or(p);
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "." {
        return Ok(None);
    }
    if !is_clean_rel(p) {
        return Err(invalid(format!(
            "mount {target:?}: path {p:?} must not contain empty, \".\" or \"..\" components"
        )));
    }
    Ok(Some(p.to_string()))
}

fn check_output_mount(plan: &MountPlan) -> Result<(), MountError> {
    let writable = plan.mounts.iter().any(|m| {
        m.target == plan.output_path
            && matches!(
                m.kind,
                MountKind::Tmp { .. } | MountKind::Collection { writable: true, .. }
            )
    });
    if writable {
        Ok(())
    } else {
        Err(invalid(
            "output path does not correspond to a writable mount point",
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Staging
// ---------------------------------------------------------------------------------------

/// Lay the plan out under `run_dir` (created if missing; expected to be fresh for this
/// run): one numbered sub-directory per mount (`tmp1`, `coll2`, `json3`, `secret4`, …).
/// `say` gets one line per staged collection. On error, whatever was staged so far is
/// left in `run_dir` for the caller to remove.
pub fn stage(
    plan: &MountPlan,
    api: &dyn ApiStore,
    blocks: &dyn BlockStore,
    run_dir: &Path,
    say: &dyn Fn(&str),
) -> Result<StagedMounts, MountError> {
    fs::create_dir_all(run_dir).map_err(io_err(format!("create {}", run_dir.display())))?;
    let free = free_bytes(run_dir).map_err(io_err(format!(
        "free space of the filesystem of {}",
        run_dir.display()
    )))?;
    let mut stager = Stager {
        reader: CollectionReader::new(api, blocks),
        run_dir,
        say,
        counter: 0,
        free,
        reserved: 0,
        output_dir: None,
        binds: Vec::new(),
        output_refs: Vec::new(),
        secrets: Vec::new(),
    };
    for mount in &plan.mounts {
        stager.stage_mount(mount, &plan.output_path)?;
    }
    let stdin = match &plan.stdin {
        Some(m) => Some(stager.stage_stdin(m)?),
        None => None,
    };
    let stdout = stager.stage_stdio(plan.stdout.as_ref(), &plan.output_path)?;
    let stderr = stager.stage_stdio(plan.stderr.as_ref(), &plan.output_path)?;
    let output_dir = stager
        .output_dir
        .ok_or_else(|| invalid("output path does not correspond to a writable mount point"))?;
    Ok(StagedMounts {
        binds: stager.binds,
        output_dir,
        stdin,
        stdout,
        stderr,
        output_refs: stager.output_refs,
        secrets: stager.secrets,
    })
}

/// Remove everything [`stage`] made under `run_dir` (the output directory included, so
/// capture it first). Staged collections are read-only on the host, which would stop a
/// plain recursive delete by a non-root user, so directories are made writable first.
pub fn remove_staged(run_dir: &Path) -> Result<(), MountError> {
    if fs::symlink_metadata(run_dir).is_err() {
        return Ok(());
    }
    make_dirs_writable(run_dir)?;
    fs::remove_dir_all(run_dir).map_err(io_err(format!("remove {}", run_dir.display())))
}

fn make_dirs_writable(path: &Path) -> Result<(), MountError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    if !meta.is_dir() {
        return Ok(());
    }
    set_mode(path, 0o700)?;
    let entries = fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("list {}", path.display())))?;
        make_dirs_writable(&entry.path())?;
    }
    Ok(())
}

/// Free bytes for an unprivileged user on the filesystem holding `path`.
fn free_bytes(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes into the struct we pass; zeroed is a valid initial value
    // for this plain C struct, and c_path is a NUL-terminated string that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // The field types differ between platforms (u32 on some), hence the casts.
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Ok(free)
}

struct Stager<'a> {
    reader: CollectionReader<'a>,
    run_dir: &'a Path,
    say: &'a dyn Fn(&str),
    counter: usize,
    free: u64,
    /// Capacity promised to tmp mounts so far.
    reserved: u64,
    output_dir: Option<PathBuf>,
    binds: Vec<Bind>,
    output_refs: Vec<OutputRef>,
    secrets: Vec<String>,
}

fn set_mode(path: &Path, mode: u32) -> Result<(), MountError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(format!(
        "chmod {:o} {}",
        mode,
        path.display()
    )))
}

/// Set every file under `path` (or `path` itself if a file) to `file_mode`, every
/// directory to `dir_mode`. Children first, so a read-only directory is done last.
fn set_tree_mode(path: &Path, file_mode: u32, dir_mode: u32) -> Result<(), MountError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("list {}", path.display())))?;
            set_tree_mode(&entry.path(), file_mode, dir_mode)?;
        }
        set_mode(path, dir_mode)
    } else {
        set_mode(path, file_mode)
    }
}

fn make_dirs(path: &Path) -> Result<(), MountError> {
    fetch::make_dirs(path).map_err(io_err(format!("create {}", path.display())))
}

/// Write a new file (parents made) with exactly `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), MountError> {
    if let Some(parent) = path.parent() {
        make_dirs(parent)?;
    }
    fs::write(path, data).map_err(io_err(format!("write {}", path.display())))?;
    set_mode(path, mode)
}

fn serialize_json(target: &str, content: &Value) -> Result<Vec<u8>, MountError> {
    serde_json::to_vec(content)
        .map_err(|e| invalid(format!("mount {target:?}: encoding json data: {e}")))
}

impl Stager<'_> {
    /// A fresh numbered directory under the run directory.
    fn new_dir(&mut self, prefix: &str) -> Result<PathBuf, MountError> {
        self.counter += 1;
        let dir = self.run_dir.join(format!("{prefix}{}", self.counter));
        fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    fn bind(&mut self, host: PathBuf, container: &str, read_only: bool) {
        self.binds.push(Bind {
            host,
            container: container.to_string(),
            read_only,
        });
    }

    /// The host output directory; parse_mounts ordered the output mount before anything
    /// below it, so it exists whenever a mount below the output path asks for it.
    fn output_dir(&self) -> Result<PathBuf, MountError> {
        self.output_dir
            .clone()
            .ok_or_else(|| invalid("output path does not correspond to a writable mount point"))
    }

    fn stage_mount(&mut self, m: &Mount, output_path: &str) -> Result<(), MountError> {
        let rel = at_or_below(&m.target, output_path).map(str::to_string);
        match &m.kind {
            MountKind::Tmp { capacity } => self.stage_tmp(m, *capacity, rel.as_deref()),
            MountKind::Collection {
                pdh,
                uuid,
                path,
                writable,
            } => {
                let id = pdh.as_deref().or(uuid.as_deref());
                if *writable {
                    self.stage_writable(m, id, path.as_deref(), rel.as_deref())
                } else {
                    let id = id.ok_or_else(|| {
                        invalid(format!(
                            "mount {:?}: a read-only collection mount needs a portable_data_hash or uuid",
                            m.target
                        ))
                    })?;
                    self.stage_read_only(m, id, path.as_deref(), rel.as_deref())
                }
            }
            MountKind::Json(content) => {
                let data = serialize_json(&m.target, content)?;
                self.stage_literal(m, "json", &data, rel.as_deref())
            }
            MountKind::Text(text) => self.stage_literal(m, "text", text.as_bytes(), rel.as_deref()),
            MountKind::File { .. } => Err(invalid(format!(
                "mount {:?}: kind 'file' is only supported for stdout and stderr",
                m.target
            ))),
        }
    }

    fn stage_tmp(
        &mut self,
        m: &Mount,
        capacity: Option<u64>,
        rel: Option<&str>,
    ) -> Result<(), MountError> {
        if let Some(cap) = capacity {
            let left = self.free.saturating_sub(self.reserved);
            if cap > left {
                return Err(invalid(format!(
                    "tmp mount {:?} asks for a capacity of {cap} bytes but only {left} bytes are free on the filesystem of {}",
                    m.target,
                    self.run_dir.display()
                )));
            }
            self.reserved += cap;
        }
        let dir = self.new_dir("tmp")?;
        set_mode(&dir, 0o2777)?;
        if rel == Some("") {
            self.output_dir = Some(dir.clone());
        }
        self.bind(dir, &m.target, false);
        Ok(())
    }

    /// A writable collection: at the output path it is the output directory; below it, its
    /// content is copied into the output directory; elsewhere (no id, parse_mounts made
    /// sure) it is an empty scratch directory.
    fn stage_writable(
        &mut self,
        m: &Mount,
        id: Option<&str>,
        sub: Option<&str>,
        rel: Option<&str>,
    ) -> Result<(), MountError> {
        let dest = match rel {
            Some("") => {
                let dir = self.new_dir("output")?;
                self.output_dir = Some(dir.clone());
                self.bind(dir.clone(), &m.target, false);
                dir
            }
            Some(r) => self.output_dir()?.join(r),
            None => {
                let dir = self.new_dir("coll")?;
                self.bind(dir.clone(), &m.target, false);
                dir
            }
        };
        let rel = rel.unwrap_or("");
        if m.exclude_from_output && !rel.is_empty() {
            self.output_refs.push(OutputRef::Excluded {
                rel: rel.to_string(),
            });
        }
        let Some(id) = id else {
            make_dirs(&dest)?;
            return set_mode(&dest, 0o2777);
        };
        let sel = self.select(&m.target, id, sub)?;
        if sel.is_file && rel.is_empty() {
            return Err(invalid(format!(
                "mount {:?}: the output path must be a directory, but path {:?} of collection {id} is a file",
                m.target,
                sub.unwrap_or("")
            )));
        }
        let hosts = self.write_selection(&m.target, id, &sel, &dest)?;
        set_tree_mode(&dest, 0o666, 0o2777)?;
        if m.exclude_from_output {
            return Ok(());
        }
        for (file, host) in sel.files.iter().zip(&hosts) {
            let mtime = fs::metadata(host)
                .and_then(|meta| meta.modified())
                .map_err(io_err(format!("stat {}", host.display())))?;
            self.output_refs.push(OutputRef::Copied {
                rel: join_rel(rel, &file.path),
                size: file.size,
                mtime,
                ranges: file.ranges.clone(),
            });
        }
        Ok(())
    }

    /// A read-only collection (or one file or directory of it), copied from Keep into its
    /// own directory, made read-only, bound read-only.
    fn stage_read_only(
        &mut self,
        m: &Mount,
        id: &str,
        sub: Option<&str>,
        rel: Option<&str>,
    ) -> Result<(), MountError> {
        let sel = self.select(&m.target, id, sub)?;
        let root = self.new_dir("coll")?;
        let dest = match (sel.is_file, sub) {
            (true, Some(p)) => root.join(p.rsplit('/').next().unwrap_or(p)),
            _ => root.clone(),
        };
        self.write_selection(&m.target, id, &sel, &dest)?;
        set_tree_mode(&dest, 0o444, 0o555)?;
        set_mode(&root, 0o555)?;
        self.bind(dest, &m.target, true);
        match rel {
            Some(r) if m.exclude_from_output => {
                self.output_refs
                    .push(OutputRef::Excluded { rel: r.to_string() });
            }
            Some(r) => self.output_refs.push(OutputRef::Collection {
                rel: r.to_string(),
                files: sel
                    .files
                    .into_iter()
                    .map(|f| ManifestFile {
                        path: join_rel(r, &f.path),
                        ..f
                    })
                    .collect(),
                dirs: sel.dirs.iter().map(|d| join_rel(r, d)).collect(),
            }),
            None => {}
        }
        Ok(())
    }

    /// A json or text file. Secrets get their own directory and a bind, wherever they are;
    /// other files below the output path are written into the output directory (they are
    /// output) unless excluded, and the rest are bound read-only.
    fn stage_literal(
        &mut self,
        m: &Mount,
        kind: &str,
        data: &[u8],
        rel: Option<&str>,
    ) -> Result<(), MountError> {
        if m.secret {
            let dir = self.new_dir("secret")?;
            set_mode(&dir, 0o700)?;
            // 0444, not 0400: the container's user is usually not the owner of the file.
            let file = dir.join(format!("mountdata.{kind}"));
            write_file(&file, data, 0o444)?;
            self.secrets
                .push(String::from_utf8_lossy(data).into_owned());
            if let MountKind::Json(Value::String(s)) = &m.kind {
                self.secrets.push(s.clone());
            }
            self.output_refs.push(OutputRef::Secret {
                rel: rel.map(str::to_string),
                host: file.clone(),
            });
            self.bind(file, &m.target, true);
            return Ok(());
        }
        match rel {
            Some(r) if !m.exclude_from_output => {
                let file = self.output_dir()?.join(r);
                write_file(&file, data, 0o666)
            }
            _ => {
                let dir = self.new_dir(kind)?;
                let file = dir.join(format!("mountdata.{kind}"));
                write_file(&file, data, 0o444)?;
                if let Some(r) = rel {
                    self.output_refs
                        .push(OutputRef::Excluded { rel: r.to_string() });
                }
                self.bind(file, &m.target, true);
                Ok(())
            }
        }
    }

    fn stage_stdin(&mut self, m: &Mount) -> Result<PathBuf, MountError> {
        match &m.kind {
            MountKind::Json(content) => {
                let data = serialize_json("stdin", content)?;
                let file = self.new_dir("stdin")?.join("stdin.json");
                write_file(&file, &data, 0o444)?;
                Ok(file)
            }
            MountKind::Collection {
                pdh,
                uuid,
                path: Some(p),
                ..
            } => {
                let id = pdh.as_deref().or(uuid.as_deref()).ok_or_else(|| {
                    invalid("stdin mount: a collection needs a portable_data_hash or uuid")
                })?;
                let sel = self.select("stdin", id, Some(p))?;
                if !sel.is_file {
                    return Err(invalid(format!(
                        "stdin mount: path {p:?} of collection {id} is a directory, not a file"
                    )));
                }
                let file = self
                    .new_dir("stdin")?
                    .join(p.rsplit('/').next().unwrap_or(p));
                self.write_selection("stdin", id, &sel, &file)?;
                set_mode(&file, 0o444)?;
                Ok(file)
            }
            other => Err(invalid(format!(
                "unsupported mount kind '{}' for stdin: only 'collection' (with the path of a file) and 'json' are supported",
                other.name()
            ))),
        }
    }

    /// Create the (empty) host file that will receive stdout or stderr.
    fn stage_stdio(
        &mut self,
        m: Option<&Mount>,
        output_path: &str,
    ) -> Result<Option<PathBuf>, MountError> {
        let Some(m) = m else { return Ok(None) };
        let MountKind::File { path } = &m.kind else {
            return Err(invalid(format!(
                "unsupported mount kind '{}' for {}: only 'file' is supported",
                m.kind.name(),
                m.target
            )));
        };
        let rel = below(path, output_path).ok_or_else(|| {
            invalid(format!(
                "{} path does not start with OutputPath: {path}, {output_path}/",
                title(&m.target)
            ))
        })?;
        let file = self.output_dir()?.join(rel);
        write_file(&file, b"", 0o666)?;
        Ok(Some(file))
    }

    /// Fetch a collection's manifest and pick the part `sub` names.
    fn select(&self, target: &str, id: &str, sub: Option<&str>) -> Result<Selection, MountError> {
        self.reader.select(id, sub).map_err(in_mount(target))
    }

    /// Write the selection at `dest` from Keep, and say so. Returns the host path of each
    /// file, in the order of `sel.files`.
    fn write_selection(
        &self,
        target: &str,
        id: &str,
        sel: &Selection,
        dest: &Path,
    ) -> Result<Vec<PathBuf>, MountError> {
        let written = self
            .reader
            .write_selection(sel, dest)
            .map_err(in_mount(target))?;
        (self.say)(&format!(
            "mount {target}: copied {} files, {} bytes in {} blocks from collection {id}",
            sel.files.len(),
            sel.bytes(),
            written.blocks
        ));
        Ok(written.hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arvados::manifest::md5_hex;
    use crate::store::memory::MemoryStore;
    use serde_json::json;
    use std::sync::Mutex;

    const PDH: &str = "59389a8f9ee9d399be35462a0f92541c+53";
    const PDH2: &str = "59389a8f9ee9d399be35462a0f92541d+53";

    /// A collection with files in the root and in subdirectories, an empty file and an
    /// empty directory; three small files share one block and `big` spans two blocks.
    fn fixture(store: &MemoryStore) {
        let b1 = store.put(b"foobarbaz");
        let b2 = store.put(b"0123456789");
        let b3 = store.put(b"abcdef");
        let manifest = format!(
            ". {b1} 0:3:foo 3:3:bar 0:0:empty\n\
             ./sub {b1} {b2} {b3} 6:3:baz 9:16:big\n\
             ./sub/deep {b1} 0:0:\\056\n"
        );
        store.add_collection(PDH, &manifest);
    }

    /// The temp dir of one staging; removes the read-only staged trees first, so a
    /// non-root test run leaves nothing behind.
    struct RunDir(tempfile::TempDir);

    impl RunDir {
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for RunDir {
        fn drop(&mut self) {
            let _ = remove_staged(&self.0.path().join("run"));
        }
    }

    fn run_stage(
        store: &MemoryStore,
        mounts: Value,
        output_path: &str,
    ) -> (RunDir, Result<StagedMounts, MountError>) {
        run_stage_secret(store, mounts, Value::Null, output_path)
    }

    fn run_stage_secret(
        store: &MemoryStore,
        mounts: Value,
        secret: Value,
        output_path: &str,
    ) -> (RunDir, Result<StagedMounts, MountError>) {
        let dir = RunDir(tempfile::tempdir().unwrap());
        let plan = parse_mounts(&mounts, &secret, output_path).unwrap();
        let staged = stage(&plan, store, store, &dir.path().join("run"), &|_| {});
        (dir, staged)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    fn bind_of<'a>(s: &'a StagedMounts, target: &str) -> &'a Bind {
        s.binds.iter().find(|b| b.container == target).unwrap()
    }

    // ----- parsing -----

    fn parse_err(mounts: Value, secret: Value, output_path: &str) -> String {
        parse_mounts(&mounts, &secret, output_path)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let tmp = json!({"kind": "tmp"});
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "mounts must be a JSON object, got an array"),
            (
                json!({"/tmp": tmp, "/x": "tmp"}),
                "mount \"/x\" must be a JSON object, got a string",
            ),
            (json!({"/tmp": tmp, "/x": {}}), "mount \"/x\" has no kind"),
            (
                json!({"/tmp": tmp, "/x": {"kind": 3}}),
                "mount \"/x\": kind must be a string, got a number",
            ),
            (
                json!({"/tmp": tmp, "/x": {"kind": "git_tree"}}),
                "mount \"/x\": unknown mount kind \"git_tree\"",
            ),
            (
                json!({"/tmp": tmp, "/keep": {"kind": "keep"}}),
                "mount \"/keep\": kind 'keep' is not supported",
            ),
            (
                json!({"/tmp": tmp, "/x": {"kind": "file", "path": "/tmp/x"}}),
                "mount \"/x\": kind 'file' is only supported for stdout and stderr",
            ),
            (
                json!({"/tmp": tmp, "tmp2": tmp}),
                "mount point \"tmp2\" must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/a/../etc": tmp}),
                "mount point \"/a/../etc\" must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/a/": tmp}),
                "mount point \"/a/\" must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/mnt/test.txt": {"kind": "text", "content": null}}),
                "content for mount \"/mnt/test.txt\" must be a string",
            ),
            (
                json!({"/tmp": tmp, "/mnt/test.txt": {"kind": "text", "content": {"foo": 123456789123456789u64}}}),
                "content for mount \"/mnt/test.txt\" must be a string",
            ),
            (
                json!({"/tmp": tmp, "/tmp/foo": tmp}),
                "only mount points of kind 'collection', 'text' or 'json' are supported underneath the output_path for \"/tmp/foo\", was \"tmp\"",
            ),
            (
                json!({"/tmp": tmp, "stdin": tmp}),
                "unsupported mount kind 'tmp' for stdin: only 'collection' and 'json' are supported",
            ),
            (
                json!({"/tmp": tmp, "stdin": {"kind": "collection", "portable_data_hash": PDH}}),
                "stdin mount of kind 'collection' needs a portable_data_hash or uuid and the path of a file in it",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "file", "path": "/tmpa.out"}}),
                "Stdout path does not start with OutputPath: /tmpa.out, /tmp/",
            ),
            (
                json!({"/tmp": tmp, "stderr": {"kind": "file", "path": "/etc/err"}}),
                "Stderr path does not start with OutputPath: /etc/err, /tmp/",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "file", "path": "/tmp/../etc/x"}}),
                "Stdout path \"/tmp/../etc/x\" must not contain empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "tmp", "path": "/tmp/a.out"}}),
                "unsupported mount kind 'tmp' for stdout: only 'file' is supported",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "collection", "path": "/tmp/a.out"}}),
                "unsupported mount kind 'collection' for stdout: only 'file' is supported",
            ),
            (
                json!({"/in": {"kind": "tmp"}}),
                "output path does not correspond to a writable mount point",
            ),
            (
                json!({"/tmp": {"kind": "collection", "portable_data_hash": PDH}}),
                "output path does not correspond to a writable mount point",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde", "writable": true}}),
                "writing to existing collections currently not permitted",
            ),
            (
                json!({"/tmp": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde", "writable": true}}),
                "writing to existing collections currently not permitted",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde", "portable_data_hash": PDH}}),
                "cannot specify both 'uuid' and 'portable_data_hash' for a collection mount",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": PDH, "writable": true}}),
                "can never write to a collection specified by portable data hash",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection"}}),
                "mount \"/c\": a read-only collection mount needs a portable_data_hash or uuid",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": "foo+3"}}),
                "mount \"/c\": portable_data_hash \"foo+3\" is not a portable data hash",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "uuid": "zzzzz-j7d0g-0123456789abcde"}}),
                "mount \"/c\": uuid \"zzzzz-j7d0g-0123456789abcde\" is not a collection UUID",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": PDH, "path": "a/../../b"}}),
                "mount \"/c\": path \"a/../../b\" must not contain empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": format!("{PDH}/a/../b")}}),
                "mount \"/c\": path \"a/../b\" must not contain empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": PDH, "writable": "yes"}}),
                "mount \"/c\": writable must be a boolean, got a string",
            ),
            (
                json!({"/tmp": {"kind": "tmp", "capacity": -1}}),
                "mount \"/tmp\": capacity must be a non-negative integer, got a number",
            ),
        ];
        for (mounts, want) in cases {
            assert_eq!(
                parse_err(mounts.clone(), Value::Null, "/tmp"),
                want,
                "{mounts}"
            );
        }
    }

    /// Issue 7: a 27-byte uuid with a multi-byte character across byte 5 panicked the
    /// validator (a `str` sliced off a char boundary) instead of being refused.
    #[test]
    fn a_uuid_with_a_multi_byte_character_is_refused_not_a_panic() {
        let uuid = "zzzz\u{e9}4zz18-0123456789abcde";
        assert_eq!(uuid.len(), 27);
        assert_eq!(
            parse_err(
                json!({"/tmp": {"kind": "tmp"}, "/c": {"kind": "collection", "uuid": uuid}}),
                Value::Null,
                "/tmp"
            ),
            format!("mount \"/c\": uuid {uuid:?} is not a collection UUID")
        );
    }

    #[test]
    fn secret_mount_errors() {
        let mounts = json!({"/tmp": {"kind": "tmp"}, "/etc/x": {"kind": "text", "content": "a"}});
        assert_eq!(
            parse_err(
                mounts.clone(),
                json!({"/etc/x": {"kind": "text", "content": "b"}}),
                "/tmp"
            ),
            "secret mount \"/etc/x\" conflicts with regular mount"
        );
        assert_eq!(
            parse_err(
                mounts.clone(),
                json!({"/etc/y": {"kind": "collection", "portable_data_hash": PDH}}),
                "/tmp"
            ),
            "secret mount \"/etc/y\" type is \"collection\" but only 'json' and 'text' are permitted"
        );
        assert_eq!(
            parse_err(
                mounts,
                json!({"stdin": {"kind": "json", "content": 1}}),
                "/tmp"
            ),
            "secret mount \"stdin\" must be an absolute path without empty, \".\" or \"..\" components"
        );
    }

    #[test]
    fn plan_orders_parents_first_and_splits_pdh_paths() {
        let plan = parse_mounts(
            &json!({
                "/tmp/b": {"kind": "collection", "portable_data_hash": format!("{PDH}/sub/baz"), "exclude_from_output": true},
                "/tmp": {"kind": "tmp", "capacity": 0},
                "/tmp-x": {"kind": "tmp"},
                "/tmp/a": {"kind": "json", "content": [1]},
                "stdout": {"kind": "file", "path": "/tmp/out.txt"},
                "stdin": {"kind": "json", "content": "in"},
            }),
            &Value::Null,
            "/tmp",
        )
        .unwrap();
        let targets: Vec<&str> = plan.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/tmp", "/tmp/a", "/tmp/b", "/tmp-x"]);
        assert_eq!(plan.mounts[0].kind, MountKind::Tmp { capacity: None });
        assert_eq!(
            plan.mounts[2].kind,
            MountKind::Collection {
                pdh: Some(PDH.into()),
                uuid: None,
                path: Some("sub/baz".into()),
                writable: false
            }
        );
        assert!(plan.mounts[2].exclude_from_output);
        assert_eq!(
            plan.stdout.unwrap().kind,
            MountKind::File {
                path: "/tmp/out.txt".into()
            }
        );
        assert_eq!(plan.stdin.unwrap().kind, MountKind::Json(json!("in")));
    }

    // ----- staging: the TestSetupMounts cases -----

    #[test]
    fn tmp_output_dir() {
        let store = MemoryStore::new();
        let (dir, staged) = run_stage(&store, json!({"/tmp": {"kind": "tmp"}}), "/tmp");
        let s = staged.unwrap();
        let run = dir.path().join("run");
        assert_eq!(
            s.binds,
            [Bind {
                host: run.join("tmp1"),
                container: "/tmp".into(),
                read_only: false
            }]
        );
        assert_eq!(s.output_dir, run.join("tmp1"));
        assert_eq!(mode(&s.output_dir), 0o2777);
        assert!(s.output_refs.is_empty() && s.secrets.is_empty());
        assert_eq!((s.stdin, s.stdout, s.stderr), (None, None, None));
    }

    #[test]
    fn two_tmps() {
        let store = MemoryStore::new();
        let (dir, staged) = run_stage(
            &store,
            json!({"/out": {"kind": "tmp"}, "/tmp": {"kind": "tmp"}}),
            "/out",
        );
        let s = staged.unwrap();
        let run = dir.path().join("run");
        let binds: Vec<(PathBuf, &str, bool)> = s
            .binds
            .iter()
            .map(|b| (b.host.clone(), b.container.as_str(), b.read_only))
            .collect();
        assert_eq!(
            binds,
            [
                (run.join("tmp1"), "/out", false),
                (run.join("tmp2"), "/tmp", false)
            ]
        );
        assert_eq!(s.output_dir, run.join("tmp1"));
    }

    #[test]
    fn read_only_input_and_writable_output_collection() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({
                "/keepinp": {"kind": "collection", "portable_data_hash": PDH},
                "/keepout": {"kind": "collection", "writable": true},
            }),
            "/keepout",
        );
        let s = staged.unwrap();
        let inp = bind_of(&s, "/keepinp");
        assert!(inp.read_only);
        let out = bind_of(&s, "/keepout");
        assert!(!out.read_only);
        assert_eq!(out.host, s.output_dir);
        assert_eq!(fs::read_dir(&s.output_dir).unwrap().count(), 0);

        let h = &inp.host;
        assert_eq!(read(&h.join("foo")), "foo");
        assert_eq!(read(&h.join("bar")), "bar");
        assert_eq!(read(&h.join("empty")), "");
        assert_eq!(read(&h.join("sub/baz")), "baz");
        assert_eq!(read(&h.join("sub/big")), "0123456789abcdef");
        assert!(h.join("sub/deep").is_dir());
        assert_eq!(fs::read_dir(h.join("sub/deep")).unwrap().count(), 0);
        // Read-only on the host too.
        assert_eq!(mode(&h.join("foo")), 0o444);
        assert_eq!(mode(&h.join("sub/big")), 0o444);
        assert_eq!(mode(h), 0o555);
        assert_eq!(mode(&h.join("sub/deep")), 0o555);
    }

    #[test]
    fn shared_block_is_fetched_once() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({
                "/in": {"kind": "collection", "portable_data_hash": PDH},
                "/out": {"kind": "tmp"},
            }),
            "/out",
        );
        staged.unwrap();
        // foo, bar, sub/baz share b1; big spans b2 and b3: three blocks, three fetches.
        assert_eq!(store.gets(), 3);

        let said = Mutex::new(Vec::new());
        let plan = parse_mounts(
            &json!({"/in": {"kind": "collection", "portable_data_hash": PDH}, "/out": {"kind": "tmp"}}),
            &Value::Null,
            "/out",
        )
        .unwrap();
        let dir = RunDir(tempfile::tempdir().unwrap());
        let say = |line: &str| said.lock().unwrap().push(line.to_string());
        stage(&plan, &store, &store, &dir.path().join("run"), &say).unwrap();
        assert_eq!(
            *said.lock().unwrap(),
            [format!(
                "mount /in: copied 5 files, 25 bytes in 3 blocks from collection {PDH}"
            )]
        );
    }

    #[test]
    fn collection_path_to_a_file_and_to_a_dir() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({
                "/out": {"kind": "tmp"},
                "/f": {"kind": "collection", "portable_data_hash": PDH, "path": "sub/big"},
                "/d": {"kind": "collection", "portable_data_hash": PDH, "path": "/sub/"},
                "/g": {"kind": "collection", "portable_data_hash": format!("{PDH}/./foo")},
            }),
            "/out",
        );
        let s = staged.unwrap();
        let f = bind_of(&s, "/f");
        assert!(f.host.is_file() && f.read_only);
        assert_eq!(read(&f.host), "0123456789abcdef");
        assert_eq!(f.host.file_name().unwrap(), "big");
        assert_eq!(read(&bind_of(&s, "/g").host), "foo");
        let d = &bind_of(&s, "/d").host;
        assert_eq!(read(&d.join("baz")), "baz");
        assert!(d.join("deep").is_dir());
        assert!(!d.join("foo").exists());
        // b1 for /g, b1+b2+b3 for /d, b2+b3 for /f: once per mount that needs them.
        assert_eq!(store.gets(), 6);
    }

    #[test]
    fn missing_path_in_collection() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({"/out": {"kind": "tmp"}, "/f": {"kind": "collection", "portable_data_hash": PDH, "path": "nope"}}),
            "/out",
        );
        assert_eq!(
            staged.unwrap_err().to_string(),
            format!("mount \"/f\": path \"nope\" not found in collection {PDH}")
        );
    }

    #[test]
    fn writable_collections_are_copied_into_the_output() {
        let store = MemoryStore::new();
        fixture(&store);
        let quux = store.put(b"bar");
        store.add_collection(PDH2, &format!("./baz {quux} 0:3:quux\n"));
        let (_dir, staged) = run_stage(
            &store,
            json!({
                "/tmp": {"kind": "tmp"},
                "/tmp/foo": {"kind": "collection", "portable_data_hash": PDH, "writable": true},
                "/tmp/bar": {"kind": "collection", "portable_data_hash": PDH2, "path": "baz", "writable": true},
            }),
            "/tmp",
        );
        let s = staged.unwrap();
        assert_eq!(s.binds.len(), 1, "copies need no binds: {:?}", s.binds);
        let out = &s.output_dir;
        assert_eq!(read(&out.join("foo/sub/big")), "0123456789abcdef");
        assert!(out.join("foo/sub/deep").is_dir());
        assert_eq!(read(&out.join("bar/quux")), "bar");
        assert_eq!(mode(&out.join("bar/quux")), 0o666);
        assert_eq!(mode(&out.join("foo/sub")), 0o2777);
        let copied: Vec<(&str, u64, usize)> = s
            .output_refs
            .iter()
            .map(|r| match r {
                OutputRef::Copied {
                    rel, size, ranges, ..
                } => (rel.as_str(), *size, ranges.len()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            copied,
            [
                ("bar/quux", 3, 1),
                ("foo/foo", 3, 1),
                ("foo/bar", 3, 1),
                ("foo/empty", 0, 0),
                ("foo/sub/baz", 3, 1),
                ("foo/sub/big", 16, 2),
            ]
        );
    }

    #[test]
    fn writable_collection_at_the_output_path_is_prepopulated() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({"/out": {"kind": "collection", "portable_data_hash": PDH, "writable": true}}),
            "/out",
        );
        let s = staged.unwrap();
        assert_eq!(bind_of(&s, "/out").host, s.output_dir);
        assert_eq!(read(&s.output_dir.join("sub/baz")), "baz");
        assert_eq!(mode(&s.output_dir), 0o2777);
        assert!(matches!(&s.output_refs[0], OutputRef::Copied { rel, .. } if rel == "foo"));
    }

    #[test]
    fn json_content_vectors() {
        for (content, want) in [
            (json!("foo"), "\"foo\""),
            (Value::Null, "null"),
            (
                json!({"foo": 123456789123456789u64}),
                "{\"foo\":123456789123456789}",
            ),
        ] {
            let store = MemoryStore::new();
            let (dir, staged) = run_stage(
                &store,
                json!({"/tmp": {"kind": "tmp"}, "/mnt/test.json": {"kind": "json", "content": content}}),
                "/tmp",
            );
            let s = staged.unwrap();
            let b = bind_of(&s, "/mnt/test.json");
            assert_eq!(b.host, dir.path().join("run/json1/mountdata.json"));
            assert!(b.read_only);
            assert_eq!(read(&b.host), want);
            assert_eq!(mode(&b.host), 0o444);
        }
    }

    #[test]
    fn json_missing_content_is_null_and_text_is_raw() {
        let store = MemoryStore::new();
        let (_dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "/j": {"kind": "json"}, "/mnt/test.txt": {"kind": "text", "content": "foo"}}),
            "/tmp",
        );
        let s = staged.unwrap();
        assert_eq!(read(&bind_of(&s, "/j").host), "null");
        let t = bind_of(&s, "/mnt/test.txt");
        assert!(t.host.ends_with("mountdata.text"));
        assert_eq!(read(&t.host), "foo");
    }

    #[test]
    fn mounts_under_the_output_path() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({
                "/tmp": {"kind": "tmp"},
                "/tmp/foo": {"kind": "collection", "portable_data_hash": PDH, "path": "sub"},
                "/tmp/skip": {"kind": "collection", "portable_data_hash": PDH, "exclude_from_output": true},
                "/tmp/a.json": {"kind": "json", "content": {"a": 1}},
                "/tmp/x/b.txt": {"kind": "text", "content": "bee", "exclude_from_output": true},
            }),
            "/tmp",
        );
        let s = staged.unwrap();
        let targets: Vec<&str> = s.binds.iter().map(|b| b.container.as_str()).collect();
        assert_eq!(targets, ["/tmp", "/tmp/foo", "/tmp/skip", "/tmp/x/b.txt"]);
        assert!(bind_of(&s, "/tmp/foo").read_only);
        // The json file is output; the excluded text file is bound from elsewhere.
        assert_eq!(read(&s.output_dir.join("a.json")), "{\"a\":1}");
        assert!(!s.output_dir.join("x").exists());
        assert_eq!(read(&bind_of(&s, "/tmp/x/b.txt").host), "bee");

        assert_eq!(s.output_refs.len(), 3, "{:?}", s.output_refs);
        let OutputRef::Collection { rel, files, dirs } = &s.output_refs[0] else {
            panic!("{:?}", s.output_refs[0]);
        };
        assert_eq!(rel, "foo");
        let paths: Vec<(&str, u64)> = files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(paths, [("foo/baz", 3), ("foo/big", 16)]);
        assert_eq!(files[1].ranges.len(), 2);
        assert_eq!(dirs, &["foo/deep"]);
        assert_eq!(s.output_refs[1], OutputRef::Excluded { rel: "skip".into() });
        assert_eq!(
            s.output_refs[2],
            OutputRef::Excluded {
                rel: "x/b.txt".into()
            }
        );
    }

    #[test]
    fn stdio_files() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({
                "/tmp": {"kind": "tmp"},
                "stdout": {"kind": "file", "path": "/tmp/a/b/c.out"},
                "stderr": {"kind": "file", "path": "/tmp/b/err.txt"},
                "stdin": {"kind": "collection", "portable_data_hash": PDH, "path": "sub/big"},
            }),
            "/tmp",
        );
        let s = staged.unwrap();
        let out = s.stdout.unwrap();
        assert_eq!(out, s.output_dir.join("a/b/c.out"));
        assert_eq!(read(&out), "");
        assert_eq!(s.stderr.unwrap(), s.output_dir.join("b/err.txt"));
        assert_eq!(read(&s.stdin.unwrap()), "0123456789abcdef");
        assert_eq!(s.binds.len(), 1);
    }

    #[test]
    fn stdin_json_and_stdin_directory() {
        let store = MemoryStore::new();
        fixture(&store);
        let (_dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "stdin": {"kind": "json", "content": {"x": [1, "y"]}}}),
            "/tmp",
        );
        assert_eq!(read(&staged.unwrap().stdin.unwrap()), "{\"x\":[1,\"y\"]}");

        let (_dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "stdin": {"kind": "collection", "portable_data_hash": PDH, "path": "sub"}}),
            "/tmp",
        );
        assert_eq!(
            staged.unwrap_err().to_string(),
            format!("stdin mount: path \"sub\" of collection {PDH} is a directory, not a file")
        );
    }

    #[test]
    fn secrets_are_bound_separately_and_reported() {
        let store = MemoryStore::new();
        let (_dir, staged) = run_stage_secret(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "/tmp/plain.conf": {"kind": "text", "content": "not secret"}}),
            json!({
                "/tmp/secret.conf": {"kind": "text", "content": "hunter2hunter2"},
                "/etc/token.json": {"kind": "json", "content": "s3cr3t-t0ken"},
            }),
            "/tmp",
        );
        let s = staged.unwrap();
        assert_eq!(read(&s.output_dir.join("plain.conf")), "not secret");
        assert!(!s.output_dir.join("secret.conf").exists());
        let b = bind_of(&s, "/tmp/secret.conf");
        assert!(b.read_only && !b.host.starts_with(&s.output_dir));
        assert_eq!(read(&b.host), "hunter2hunter2");
        assert_eq!(mode(b.host.parent().unwrap()), 0o700);
        assert_eq!(
            read(&bind_of(&s, "/etc/token.json").host),
            "\"s3cr3t-t0ken\""
        );
        assert_eq!(
            s.secrets,
            ["\"s3cr3t-t0ken\"", "s3cr3t-t0ken", "hunter2hunter2"]
        );
        assert_eq!(
            s.output_refs,
            [
                OutputRef::Secret {
                    rel: None,
                    host: bind_of(&s, "/etc/token.json").host.clone()
                },
                OutputRef::Secret {
                    rel: Some("secret.conf".into()),
                    host: b.host.clone()
                },
            ]
        );
    }

    // ----- failures -----

    #[test]
    fn missing_block_in_the_store_is_an_error() {
        let store = MemoryStore::new();
        let loc = store.put(b"hello");
        store.add_collection(PDH, &format!(". {loc} 0:5:hello.txt\n"));
        store.blocks.lock().unwrap().clear();
        let (_dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}}),
            "/tmp",
        );
        let err = staged.unwrap_err().to_string();
        assert!(
            err.starts_with("mount \"/in\": fetching block 5d41402abc4b2a76b9719d911017c592+5: ")
                && err.ends_with(": not found"),
            "{err}"
        );
    }

    #[test]
    fn wrong_bytes_from_a_careless_store_are_caught() {
        let store = MemoryStore::new();
        let loc = store.put(b"hello");
        store.add_collection(PDH, &format!(". {loc} 0:5:hello.txt\n"));
        *store.lie.lock().unwrap() = Some(b"jello".to_vec());
        let (_dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}}),
            "/tmp",
        );
        assert_eq!(
            staged.unwrap_err().to_string(),
            format!(
                "mount \"/in\": block 5d41402abc4b2a76b9719d911017c592+5 from Keep does not match its locator (got 5 bytes with md5 {})",
                md5_hex(b"jello")
            )
        );
    }

    #[test]
    fn missing_collection_is_an_error() {
        let store = MemoryStore::new();
        let (_dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde"}}),
            "/tmp",
        );
        assert_eq!(
            staged.unwrap_err().to_string(),
            "mount \"/in\": fetching collection zzzzz-4zz18-0123456789abcde: GET collections/zzzzz-4zz18-0123456789abcde: not found"
        );
    }

    #[test]
    fn capacity_must_fit_on_the_disk() {
        let store = MemoryStore::new();
        let (_dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp", "capacity": 1000000}}),
            "/tmp",
        );
        staged.unwrap();

        let (dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp", "capacity": u64::MAX / 2}}),
            "/tmp",
        );
        let err = staged.unwrap_err().to_string();
        let want = format!(
            "tmp mount \"/tmp\" asks for a capacity of {} bytes but only ",
            u64::MAX / 2
        );
        assert!(err.starts_with(&want), "{err}");
        assert!(
            err.ends_with(&format!(
                "bytes are free on the filesystem of {}",
                dir.path().join("run").display()
            )),
            "{err}"
        );
    }

    #[test]
    fn remove_staged_removes_read_only_trees() {
        let store = MemoryStore::new();
        fixture(&store);
        let (dir, staged) = run_stage(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}}),
            "/tmp",
        );
        staged.unwrap();
        let run = dir.path().join("run");
        remove_staged(&run).unwrap();
        assert!(!run.exists());
        remove_staged(&run).unwrap();
    }
}
