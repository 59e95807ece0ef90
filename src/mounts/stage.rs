//! Laying a [`MountPlan`] out on the host: one numbered directory per mount under the run
//! directory (`tmp1`, `coll2`, `json3`, `secret4`, …), the binds for docker, the output
//! directory, the stdio files, and what output capture must know ([`OutputRef`]).
//!
//! Collections: where a read-only collection mount's content comes from is decided in one
//! place, `Stager::collection_host_path`: with an arv-mount ([`stage_with`]'s `fuse`), a
//! path in its mount (`by_id/<id>/<path>`); without one, a copy from Keep onto the host
//! (`collection::fetch`, 4 blocks at a time, with progress lines), made read-only, after
//! checking that it fits on the disk. Writable collections are copied into the output
//! directory either way (checked the same), or are empty scratch directories.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::files::{free_bytes, make_dirs, set_mode, set_tree_mode, write_file};
use super::{
    Bind, Mount, MountError, MountKind, MountPlan, OutputRef, StagedMounts, at_or_below, below,
    in_mount, invalid, io_err, title,
};
use crate::collection::select::join_rel;
use crate::collection::{CollectionReader, Selection};
use crate::progress::{Cadence, Progress};
use crate::store::{ApiStore, BlockStore};

/// Lay the plan out under `run_dir` (created if missing; expected to be fresh for this
/// run): one numbered sub-directory per mount (`tmp1`, `coll2`, `json3`, `secret4`, …).
/// `say` gets one line per staged collection. On error, whatever was staged so far is
/// left in `run_dir` for the caller to remove.
pub fn stage(
    plan: &MountPlan,
    api: &dyn ApiStore,
    blocks: &dyn BlockStore,
    run_dir: &Path,
    say: &(dyn Fn(&str) + Sync),
) -> Result<StagedMounts, MountError> {
    stage_with(plan, api, blocks, run_dir, None, say)
}

/// [`stage`], with read-only collections (and a stdin collection file) served from the
/// arv-mount at `fuse` (its `by_id/<id>/<path>`) instead of copied.
pub fn stage_with(
    plan: &MountPlan,
    api: &dyn ApiStore,
    blocks: &dyn BlockStore,
    run_dir: &Path,
    fuse: Option<&Path>,
    say: &(dyn Fn(&str) + Sync),
) -> Result<StagedMounts, MountError> {
    fs::create_dir_all(run_dir).map_err(io_err(format!("create {}", run_dir.display())))?;
    let free = free_bytes(run_dir).map_err(io_err(format!(
        "free space of the filesystem of {}",
        run_dir.display()
    )))?;
    let mut stager = Stager {
        reader: CollectionReader::new(api, blocks),
        run_dir,
        fuse,
        say,
        counter: 0,
        free,
        reserved: 0,
        output_dir: None,
        binds: Vec::new(),
        output_refs: Vec::new(),
        secrets: Vec::new(),
        warnings: Vec::new(),
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
        warnings: stager.warnings,
    })
}

struct Stager<'a> {
    reader: CollectionReader<'a>,
    run_dir: &'a Path,
    /// The arv-mount serving read-only collections, if any.
    fuse: Option<&'a Path>,
    say: &'a (dyn Fn(&str) + Sync),
    counter: usize,
    free: u64,
    /// Capacity promised to tmp mounts, and bytes of collections copied, so far.
    reserved: u64,
    output_dir: Option<PathBuf>,
    binds: Vec<Bind>,
    output_refs: Vec<OutputRef>,
    secrets: Vec<String>,
    warnings: Vec<String>,
}

/// Bytes in GiB/MiB, for the numbers of a staging refusal.
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
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
                rel: join_rel(rel.as_bytes(), &file.path),
                size: file.size,
                mtime,
                ranges: file.ranges.clone(),
            });
        }
        Ok(())
    }

    /// A read-only collection (or one file or directory of it), bound read-only.
    fn stage_read_only(
        &mut self,
        m: &Mount,
        id: &str,
        sub: Option<&str>,
        rel: Option<&str>,
    ) -> Result<(), MountError> {
        let sel = self.select(&m.target, id, sub)?;
        let host = self.collection_host_path(&m.target, "coll", id, sub, &sel)?;
        self.bind(host, &m.target, true);
        let output_ref = match rel {
            Some(r) if m.exclude_from_output => OutputRef::Excluded { rel: r.to_string() },
            _ => OutputRef::Collection {
                target: m.target.clone(),
                rel: rel.map(str::to_string),
                selection: sel,
            },
        };
        self.output_refs.push(output_ref);
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
                self.collection_host_path("stdin", "stdin", id, Some(p), &sel)
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

    /// Where the content of a read-only collection mount is on the host: a read-only path
    /// (a directory, or a file for a one-file selection) holding `sel`, the part `sub` of
    /// collection `id`. This is the one seam between staging and where collection content
    /// comes from. Today it is copied from Keep into a fresh directory (`prefix`N); an
    /// arv-mount (FUSE) path will answer here with a path inside its mount instead.
    fn collection_host_path(
        &mut self,
        target: &str,
        prefix: &str,
        id: &str,
        sub: Option<&str>,
        sel: &Selection,
    ) -> Result<PathBuf, MountError> {
        if let Some(fuse) = self.fuse {
            let mut host = fuse.join("by_id").join(id);
            if let Some(p) = sub.filter(|p| !p.is_empty() && *p != ".") {
                host.push(p);
            }
            (self.say)(&format!(
                "mount {target}: collection {id} through arv-mount ({} files, {} bytes)",
                sel.files.len(),
                sel.bytes()
            ));
            return Ok(host);
        }
        let root = self.new_dir(prefix)?;
        let dest = match (sel.is_file, sub) {
            (true, Some(p)) => root.join(p.rsplit('/').next().unwrap_or(p)),
            _ => root.clone(),
        };
        self.write_selection(target, id, sel, &dest)?;
        set_tree_mode(&dest, 0o444, 0o555)?;
        set_mode(&root, 0o555)?;
        Ok(dest)
    }

    /// Fetch a collection's manifest and pick the part `sub` names.
    fn select(&self, target: &str, id: &str, sub: Option<&str>) -> Result<Selection, MountError> {
        self.reader.select(id, sub).map_err(in_mount(target))
    }

    /// Write the selection at `dest` from Keep, and say so, with what it leaves out.
    /// Returns the host path of each file, in the order of `sel.files`.
    fn write_selection(
        &mut self,
        target: &str,
        id: &str,
        sel: &Selection,
        dest: &Path,
    ) -> Result<Vec<PathBuf>, MountError> {
        let need = sel.bytes();
        let left = self.free.saturating_sub(self.reserved);
        if need > left {
            return Err(invalid(format!(
                "mount {target:?}: collection {id} needs {need} bytes ({}) on the staging disk but only {left} bytes ({}) are free on the filesystem of {}",
                human(need),
                human(left),
                self.run_dir.display()
            )));
        }
        self.reserved += need;
        let say = self.say;
        let progress = Progress::new(
            &format!("mount {target}: staging"),
            Some(need),
            Cadence::default(),
            say,
        );
        let written = self
            .reader
            .write_selection_counted(sel, dest, Some(&progress))
            .map_err(in_mount(target))?;
        progress.finish();
        (self.say)(&format!(
            "mount {target}: copied {} files, {} bytes in {} blocks from collection {id}",
            sel.files.len(),
            sel.bytes(),
            written.blocks
        ));
        for line in sel.left_out(&format!("mount {target}: collection {id}")) {
            (self.say)(&line);
            self.warnings.push(line);
        }
        Ok(written.hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arvados::manifest::md5_hex;
    use crate::mounts::{parse_mounts, remove_staged};
    use crate::store::memory::MemoryStore;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
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

    /// Why staging `mounts` fails.
    fn stage_err(store: &MemoryStore, mounts: Value, output_path: &str) -> String {
        let (_dir, staged) = run_stage(store, mounts, output_path);
        staged.unwrap_err().to_string()
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
        // Outside the output path: kept for symlinks from the output that lead into it.
        assert!(matches!(
            &s.output_refs[..],
            [OutputRef::Collection { target, rel: None, selection }]
                if target == "/keepinp" && selection.files.len() == 5
        ));
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
        assert_eq!(
            stage_err(
                &store,
                json!({"/out": {"kind": "tmp"}, "/f": {"kind": "collection", "portable_data_hash": PDH, "path": "nope"}}),
                "/out"
            ),
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
                } => (std::str::from_utf8(rel).unwrap(), *size, ranges.len()),
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
        assert!(matches!(&s.output_refs[0], OutputRef::Copied { rel, .. } if rel == b"foo"));
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
        let OutputRef::Collection {
            target,
            rel,
            selection,
        } = &s.output_refs[0]
        else {
            panic!("{:?}", s.output_refs[0]);
        };
        assert_eq!((target.as_str(), rel.as_deref()), ("/tmp/foo", Some("foo")));
        let files = &selection.files;
        let paths: Vec<(&[u8], u64)> = files.iter().map(|f| (f.path.as_slice(), f.size)).collect();
        assert_eq!(paths, [(b"baz".as_slice(), 3), (b"big", 16)]);
        assert_eq!(files[1].ranges.len(), 2);
        assert_eq!(selection.dirs, [b"deep"]);
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

        assert_eq!(
            stage_err(
                &store,
                json!({"/tmp": {"kind": "tmp"}, "stdin": {"kind": "collection", "portable_data_hash": PDH, "path": "sub"}}),
                "/tmp"
            ),
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
        let err = stage_err(
            &store,
            json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}}),
            "/tmp",
        );
        assert!(
            err.starts_with("mount \"/in\": fetching block 5d41402abc4b2a76b9719d911017c592+5: ")
                && err.ends_with(": not found"),
            "{err}"
        );
    }

    #[test]
    fn a_block_of_the_wrong_size_from_a_careless_store_is_caught() {
        let store = MemoryStore::new();
        let loc = store.put(b"hello");
        store.add_collection(PDH, &format!(". {loc} 0:5:hello.txt\n"));
        *store.lie.lock().unwrap() = Some(b"hello!".to_vec());
        assert_eq!(
            stage_err(
                &store,
                json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}}),
                "/tmp"
            ),
            "mount \"/in\": block 5d41402abc4b2a76b9719d911017c592+5 from Keep does not match its locator (got 6 bytes)"
        );
    }

    /// The real Keep client as the block store (ArvadosStore's, without its API).
    struct Keep(crate::arvados::keep::KeepClient);

    impl BlockStore for Keep {
        fn put_block(
            &self,
            _: &str,
            _: u64,
            _: &crate::store::BlockSource<'_>,
        ) -> Result<String, crate::store::StoreError> {
            unreachable!("staging stores nothing")
        }

        fn get_block(
            &self,
            locator: &str,
            out: &mut dyn std::io::Write,
        ) -> Result<u64, crate::store::StoreError> {
            self.0.get_block(locator, out)
        }
    }

    /// Staging hashes each block once, in the Keep client: a block whose bytes Keep
    /// corrupted (same size, other md5) is still refused, and the container never starts.
    #[test]
    fn a_corrupted_block_from_keep_is_refused() {
        use crate::arvados::client::testserver::{response, start};
        use crate::arvados::keep::{KeepClient, KeepService};
        const HELLO: &str = "5d41402abc4b2a76b9719d911017c592+5";
        let store = MemoryStore::new();
        let loc = store.put(b"hello");
        store.add_collection(PDH, &format!(". {loc} 0:5:hello.txt\n"));
        let server = start(|_, _| response(200, &[], b"jello"));
        let service = KeepService {
            uuid: "zzzzz-bi6l4-000000000000000".into(),
            root: server.url.clone(),
            read_only: false,
            disk: true,
        };
        let keep = Keep(KeepClient::new(
            ureq::Agent::new_with_defaults(),
            "token",
            vec![service],
            Default::default(),
        ));
        let dir = RunDir(tempfile::tempdir().unwrap());
        let mounts = json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}});
        let plan = parse_mounts(&mounts, &Value::Null, "/tmp").unwrap();
        let err = stage(&plan, &store, &keep, &dir.path().join("run"), &|_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "mount \"/in\": fetching block {HELLO}: GET Keep block {HELLO}: data received has md5 {}",
                md5_hex(b"jello")
            )
        );
        assert_eq!(server.requests.lock().unwrap().len(), 1, "not retried");
    }

    #[test]
    fn missing_collection_is_an_error() {
        let store = MemoryStore::new();
        assert_eq!(
            stage_err(
                &store,
                json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde"}}),
                "/tmp"
            ),
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

    // ----- hostile and odd collections (issue 10) -----

    /// Every path under `dir`, relative to it.
    fn tree(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
                out.push(entry.path().strip_prefix(dir).unwrap().to_path_buf());
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(entry.path());
                }
            }
        }
        out
    }

    /// Point 7 of issue 10 (this held already; the test keeps it held): manifests whose
    /// names lead out of the staging directory, or that no host file can have, are
    /// refused however the collection is mounted, and nothing is written for them.
    #[test]
    fn hostile_manifests_are_refused_and_nothing_is_written() {
        let escape = "tmp/crunch-run-hostile-unit";
        let up = "\\056\\056/".repeat(12);
        let hostile = [
            format!("./{}{escape} FOO 0:3:x\n", "../".repeat(12)),
            format!(". FOO 0:3:{up}{}\n", escape.replace('/', "\\057")),
            ". FOO 0:3:\\056\\056\\057x\n".to_string(),
            format!(". FOO 0:3:\\057{}\n", escape.replace('/', "\\057")),
            "./\\056\\056 FOO 0:3:x\n".to_string(),
            "./a/\\056\\056/\\056\\056 FOO 0:3:x\n".to_string(),
            ". FOO 0:3:a\\000b\n".to_string(),
            "./a\\000 FOO 0:3:b\n".to_string(),
        ];
        let store = MemoryStore::new();
        let foo = store.put(b"foo");
        for manifest in hostile {
            store.add_collection(PDH, &manifest.replace("FOO", &foo));
            for mounts in [
                json!({"/out": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}}),
                json!({"/out": {"kind": "tmp"}, "/out/in": {"kind": "collection", "portable_data_hash": PDH}}),
                json!({"/out": {"kind": "collection", "portable_data_hash": PDH, "writable": true}}),
                json!({"/out": {"kind": "tmp"}, "/out/w": {"kind": "collection", "portable_data_hash": PDH, "writable": true}}),
            ] {
                let (dir, staged) = run_stage(&store, mounts.clone(), "/out");
                let err = staged.unwrap_err().to_string();
                assert!(err.starts_with("mount \"/"), "{manifest}: {err}");
                let files: Vec<PathBuf> = tree(dir.path())
                    .into_iter()
                    .filter(|p| dir.path().join(p).is_file())
                    .collect();
                assert!(files.is_empty(), "{manifest} {mounts}: {files:?}");
                assert!(!Path::new("/").join(escape).exists(), "{manifest}");
            }
        }
    }

    /// Issue 10: bytes named `.` (which no file can hold) were dropped from a staged copy
    /// without a word; staging says so.
    #[test]
    fn data_named_dot_is_left_out_of_a_staged_copy_and_said() {
        let store = MemoryStore::new();
        let foo = store.put(b"foo");
        store.add_collection(
            PDH,
            &format!(". {foo} 0:3:\\056 0:3:foo\n./d {foo} 1:2:\\056\n"),
        );
        let dir = RunDir(tempfile::tempdir().unwrap());
        let mounts = json!({"/out": {"kind": "tmp"}, "/in": {"kind": "collection", "portable_data_hash": PDH}});
        let plan = parse_mounts(&mounts, &Value::Null, "/out").unwrap();
        let said = Mutex::new(Vec::new());
        let say = |l: &str| said.lock().unwrap().push(l.to_string());
        let staged = stage(&plan, &store, &store, &dir.path().join("run"), &say).unwrap();
        let host = &bind_of(&staged, "/in").host;
        assert_eq!(read(&host.join("foo")), "foo");
        assert!(host.join("d").is_dir());
        let said = said.into_inner().unwrap();
        assert_eq!(staged.warnings.len(), 2);
        assert!(staged.warnings.iter().all(|w| said.contains(w)));
        for line in [
            format!(
                "mount /in: collection {PDH}: left out 3 bytes at \".\" (no file can be named \".\")"
            ),
            format!(
                "mount /in: collection {PDH}: left out 2 bytes at \"d/.\" (no file can be named \".\")"
            ),
        ] {
            assert!(said.contains(&line), "{line:?} not in {said:?}");
        }
    }
}
