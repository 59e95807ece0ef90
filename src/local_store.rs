//! A store in a local directory, for local runs and the demo: the same run, no servers.
//!
//! Layout under the store directory:
//! - `containers/<uuid>.json`: container records; updates follow the API's state rules;
//! - `keep/<md5>+<size>`: blocks, named by their locator (their md5 is checked on the way
//!   in, except for blocks copied from our own spool files, which computed it already);
//! - `collections/<uuid>.json`: `{uuid, name, portable_data_hash, manifest_text}`;
//! - `logs.jsonl`: the logs table, one JSON object per line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use crate::arvados::container::State;
use crate::arvados::ids::is_pdh;
use crate::arvados::manifest::hex;
use crate::arvados::manifest::portable_data_hash;
use crate::rfc3339::format_timestamp;
use crate::store::{ApiStore, BlockSource, BlockStore, SavedCollection, StoreError};
use crate::writeback::start_writeback;

pub struct LocalStore {
    dir: PathBuf,
    /// Serialises read-modify-write of records and appends to logs.jsonl.
    lock: Mutex<()>,
}

impl LocalStore {
    /// Open (and create the sub-directories of) a store directory.
    pub fn open(dir: &Path) -> Result<LocalStore, StoreError> {
        for sub in ["containers", "keep", "collections"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| StoreError::Io {
                what: format!("create {}", path.display()),
                source,
            })?;
        }
        Ok(LocalStore {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    fn container_path(&self, uuid: &str) -> PathBuf {
        self.dir.join("containers").join(format!("{uuid}.json"))
    }

    fn collection_path(&self, uuid: &str) -> PathBuf {
        self.dir.join("collections").join(format!("{uuid}.json"))
    }

    fn block_path(&self, hash: &str, size: u64) -> PathBuf {
        self.dir.join("keep").join(format!("{hash}+{size}"))
    }

    fn read_json(&self, path: &Path) -> Result<Value, StoreError> {
        let what = format!("read {}", path.display());
        let text = fs::read_to_string(path).map_err(not_found_or_io(&what))?;
        serde_json::from_str(&text).map_err(|e| StoreError::Invalid {
            what,
            message: e.to_string(),
        })
    }

    fn write_json(&self, path: &Path, value: &Value) -> Result<(), StoreError> {
        let text = serde_json::to_string_pretty(value).map_err(|e| StoreError::Invalid {
            what: format!("encode {}", path.display()),
            message: e.to_string(),
        })?;
        write_atomically(path, text.as_bytes())
    }

    fn now() -> String {
        format_timestamp(SystemTime::now())
    }
}

/// A missing file is NotFound (the store has no such thing); other errors are Io.
fn not_found_or_io(what: &str) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound {
                what: what.to_string(),
            }
        } else {
            StoreError::Io {
                what: what.to_string(),
                source,
            }
        }
    }
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// Write to a temporary file beside `path`, then rename, so readers never see half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("rename to {}", path.display())))
}

/// The API's state machine (reference §2.5), plus Queued→Running for the 2016 API.
fn transition_allowed(from: State, to: State) -> bool {
    use State::*;
    from == to
        || matches!(
            (from, to),
            (Queued, Locked | Cancelled | Running)
                | (Locked, Queued | Running | Cancelled)
                | (Running, Complete | Cancelled)
                | (Complete, Cancelled)
        )
}

impl ApiStore for LocalStore {
    fn get_container(&self, uuid: &str) -> Result<Value, StoreError> {
        self.read_json(&self.container_path(uuid))
    }

    fn update_container(&self, uuid: &str, fields: &Map<String, Value>) -> Result<(), StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.container_path(uuid);
        let mut record = self.read_json(&path)?;
        let what = format!("update container {uuid}");
        let old = record
            .get("state")
            .and_then(Value::as_str)
            .and_then(State::parse);
        if let Some(new) = fields.get("state") {
            let new = new.as_str().and_then(State::parse);
            match (old, new) {
                (Some(old), Some(new)) if transition_allowed(old, new) => {
                    if old != new && new == State::Running {
                        record["started_at"] = json!(Self::now());
                    }
                    if old != new && matches!(new, State::Complete | State::Cancelled) {
                        record["finished_at"] = json!(Self::now());
                    }
                }
                (old, new) => {
                    return Err(StoreError::Rejected {
                        what,
                        status: 422,
                        message: format!("cannot change from {old:?} to {new:?}"),
                    });
                }
            }
        }
        if let Some(obj) = record.as_object_mut() {
            for (k, v) in fields {
                obj.insert(k.clone(), v.clone());
            }
            obj.insert("modified_at".into(), json!(Self::now()));
        }
        self.write_json(&path, &record)
    }

    fn get_collection_manifest(&self, pdh_or_uuid: &str) -> Result<String, StoreError> {
        let what = format!("get collection {pdh_or_uuid}");
        let record = if is_pdh(pdh_or_uuid) {
            self.find_collection_by_pdh(pdh_or_uuid)?
                .ok_or(StoreError::NotFound { what: what.clone() })?
        } else {
            self.read_json(&self.collection_path(pdh_or_uuid))?
        };
        record
            .get("manifest_text")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(StoreError::Invalid {
                what,
                message: "manifest_text missing".into(),
            })
    }

    fn create_collection(
        &self,
        name: &str,
        manifest_text: &str,
    ) -> Result<SavedCollection, StoreError> {
        self.new_collection(name, manifest_text, None)
    }

    /// The local store keeps everything: `trash_at` is only recorded.
    fn create_interim_collection(
        &self,
        name: &str,
        manifest_text: &str,
        trash_at: SystemTime,
    ) -> Result<SavedCollection, StoreError> {
        self.new_collection(name, manifest_text, Some(trash_at))
    }

    fn update_collection(
        &self,
        uuid: &str,
        manifest_text: &str,
        trash_at: Option<SystemTime>,
    ) -> Result<SavedCollection, StoreError> {
        let path = self.collection_path(uuid);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.read_json(&path)?;
        let pdh = portable_data_hash(manifest_text);
        let at = trash_at.map(format_timestamp);
        if let Some(fields) = record.as_object_mut() {
            fields.insert("manifest_text".into(), json!(manifest_text));
            fields.insert("portable_data_hash".into(), json!(pdh));
            fields.insert("trash_at".into(), json!(at));
            fields.insert("modified_at".into(), json!(Self::now()));
        }
        self.write_json(&path, &record)?;
        Ok(SavedCollection {
            uuid: uuid.to_string(),
            portable_data_hash: pdh,
        })
    }

    fn create_log(
        &self,
        object_uuid: &str,
        event_type: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let line = json!({
            "object_uuid": object_uuid,
            "event_type": event_type,
            "properties": {"text": text},
            "created_at": Self::now(),
        });
        let path = self.dir.join("logs.jsonl");
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        // One write per entry: an O_APPEND write lands whole, even with other crunch-runs
        // appending to the same file (formatting straight into the file writes each JSON
        // token on its own).
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(io_err(format!("append to {}", path.display())))
    }
}

impl LocalStore {
    /// Write block `hash+size` through a temporary file: `fill` writes it, `check` says
    /// what is wrong with what `fill` reported, if anything. The block is handed to
    /// writeback and renamed into place when all is well; the temporary file goes otherwise.
    fn write_block<T>(
        &self,
        hash: &str,
        size: u64,
        what: String,
        fill: impl FnOnce(&mut File) -> io::Result<T>,
        check: impl FnOnce(T) -> Option<String>,
    ) -> Result<String, StoreError> {
        let path = self.block_path(hash, size);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let filled = File::create(&tmp).and_then(|mut file| {
            let filled = fill(&mut file)?;
            start_writeback(&file, 0, 0);
            Ok(filled)
        });
        let checked = match filled {
            Err(source) => Err(StoreError::Io {
                what: what.clone(),
                source,
            }),
            Ok(filled) => match check(filled) {
                Some(message) => Err(StoreError::Invalid {
                    what: what.clone(),
                    message,
                }),
                None => Ok(()),
            },
        };
        if let Err(e) = checked {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &path).map_err(io_err(what))?;
        Ok(format!("{hash}+{size}"))
    }

    /// Save a new collection record under the next free number (`trash_at` only recorded).
    fn new_collection(
        &self,
        name: &str,
        manifest_text: &str,
        trash_at: Option<SystemTime>,
    ) -> Result<SavedCollection, StoreError> {
        let pdh = portable_data_hash(manifest_text);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let count = fs::read_dir(self.dir.join("collections"))
            .map(|d| d.count())
            .unwrap_or(0);
        // Reserve the next free number with an exclusive create: other crunch-runs may be
        // saving collections into the same store.
        let mut n = count + 1;
        let (uuid, path) = loop {
            let uuid = format!("local-4zz18-{n:015x}");
            let path = self.collection_path(&uuid);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => break (uuid, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
            }
        };
        let record = json!({
            "uuid": uuid,
            "name": name,
            "portable_data_hash": pdh,
            "manifest_text": manifest_text,
            "created_at": Self::now(),
            "trash_at": trash_at.map(format_timestamp),
        });
        self.write_json(&path, &record)?;
        Ok(SavedCollection {
            uuid,
            portable_data_hash: pdh,
        })
    }

    fn find_collection_by_pdh(&self, pdh: &str) -> Result<Option<Value>, StoreError> {
        let dir = self.dir.join("collections");
        let entries = fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))?;
        for entry in entries.flatten() {
            if let Ok(record) = self.read_json(&entry.path())
                && record.get("portable_data_hash").and_then(Value::as_str) == Some(pdh)
            {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }
}

impl BlockStore for LocalStore {
    fn put_block(
        &self,
        hash: &str,
        size: u64,
        body: &BlockSource<'_>,
    ) -> Result<String, StoreError> {
        let what = format!("store block {hash}+{size}");
        let mut reader = body().map_err(io_err(what.clone()))?;
        self.write_block(
            hash,
            size,
            what,
            |file| copy_with_md5(&mut reader, file),
            |(got, total)| (got != hash || total != size).then(|| format!("data is {got}+{total}")),
        )
    }

    /// Trusts `hash` (our own spool computed it while writing the file) and copies the
    /// bytes inside the kernel (`io::copy` between files uses `copy_file_range`).
    fn put_block_from_file(
        &self,
        hash: &str,
        size: u64,
        src: &Path,
        offset: u64,
    ) -> Result<String, StoreError> {
        let what = format!("store block {hash}+{size} from {}", src.display());
        self.write_block(
            hash,
            size,
            what,
            |file| {
                let mut from = File::open(src)?;
                from.seek(SeekFrom::Start(offset))?;
                io::copy(&mut from.take(size), file)
            },
            |copied| (copied != size).then(|| format!("the file has only {copied} bytes there")),
        )
    }

    fn get_block(&self, locator: &str, out: &mut dyn Write) -> Result<u64, StoreError> {
        let mut parts = locator.split('+');
        let hash = parts.next().unwrap_or_default();
        let size: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let what = format!("read block {hash}+{size}");
        if size == 0 {
            return Ok(0);
        }
        let path = self.block_path(hash, size);
        let mut file = File::open(&path).map_err(not_found_or_io(&what))?;
        let (got, total) = copy_with_md5(&mut file, out).map_err(io_err(what.clone()))?;
        if got != hash || total != size {
            return Err(StoreError::Invalid {
                what,
                message: "block content does not match its locator".into(),
            });
        }
        Ok(total)
    }
}

/// Copy everything from `from` to `to`, returning the md5 (hex) and length of it.
fn copy_with_md5(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<(String, u64)> {
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok((hex(&md5.finalize()), total)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        md5.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn log_lines_from_several_writers_stay_whole() {
        let (dir, _) = store();
        // Separate stores, as separate crunch-run processes would have.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = LocalStore::open(dir.path()).unwrap();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let text = format!("writer {w} line {i} {}\n", "x".repeat(300));
                        store
                            .create_log("zzzzz-dz642-000000000000000", "stdout", &text)
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = fs::read_to_string(dir.path().join("logs.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 800);
        for line in lines {
            let entry: Value = serde_json::from_str(line).unwrap();
            assert!(
                entry["properties"]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("writer ")
            );
        }
    }

    #[test]
    fn collections_saved_by_several_writers_get_their_own_uuids() {
        let (dir, _) = store();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = LocalStore::open(dir.path()).unwrap();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            let manifest =
                                format!(". d41d8cd98f00b204e9800998ecf8427e+0 0:0:w{w}-{i}\n");
                            (
                                store.create_collection("c", &manifest).unwrap().uuid,
                                manifest,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let saved: Vec<(String, String)> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        let reader = LocalStore::open(dir.path()).unwrap();
        let uuids: std::collections::HashSet<&String> = saved.iter().map(|(u, _)| u).collect();
        assert_eq!(uuids.len(), 100);
        for (uuid, manifest) in &saved {
            assert_eq!(&reader.get_collection_manifest(uuid).unwrap(), manifest);
        }
    }

    #[test]
    fn blocks_round_trip_and_are_checked() {
        let (_d, s) = store();
        let body = |data: &'static [u8]| {
            move || -> io::Result<Box<dyn Read + Send>> { Ok(Box::new(data)) }
        };
        let loc = s
            .put_block("acbd18db4cc2f85cedef654fccc4a4d8", 3, &body(b"foo"))
            .unwrap();
        assert_eq!(loc, "acbd18db4cc2f85cedef654fccc4a4d8+3");
        let mut out = Vec::new();
        s.get_block(&loc, &mut out).unwrap();
        assert_eq!(out, b"foo");
        assert!(matches!(
            s.put_block("acbd18db4cc2f85cedef654fccc4a4d8", 3, &body(b"bar")),
            Err(StoreError::Invalid { .. })
        ));
    }

    #[test]
    fn blocks_from_a_file_region_are_copied_under_the_given_hash() {
        let (d, s) = store();
        let src = d.path().join("spool.txt");
        fs::write(&src, b"xxfooyy").unwrap();
        let loc = s
            .put_block_from_file("acbd18db4cc2f85cedef654fccc4a4d8", 3, &src, 2)
            .unwrap();
        assert_eq!(loc, "acbd18db4cc2f85cedef654fccc4a4d8+3");
        let mut out = Vec::new();
        s.get_block(&loc, &mut out).unwrap();
        assert_eq!(out, b"foo");
        // A region past the end of the file is refused and leaves nothing behind.
        assert!(matches!(
            s.put_block_from_file("acbd18db4cc2f85cedef654fccc4a4d8", 3, &src, 5),
            Err(StoreError::Invalid { .. })
        ));
        let names: Vec<_> = fs::read_dir(d.path().join("keep")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn container_updates_follow_the_state_rules() {
        let (_d, s) = store();
        let uuid = "zzzzz-dz642-0123456789abcde";
        s.write_json(
            &s.container_path(uuid),
            &json!({"uuid": uuid, "state": "Locked"}),
        )
        .unwrap();
        let mut f = Map::new();
        f.insert("state".into(), json!("Complete"));
        assert!(matches!(
            s.update_container(uuid, &f),
            Err(StoreError::Rejected { .. })
        ));
        f.insert("state".into(), json!("Running"));
        s.update_container(uuid, &f).unwrap();
        let r = s.get_container(uuid).unwrap();
        assert_eq!(r["state"], "Running");
        assert!(r["started_at"].is_string());
    }

    #[test]
    fn collections_are_found_by_pdh_and_uuid() {
        let (_d, s) = store();
        let m = ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n";
        let saved = s.create_collection("x", m).unwrap();
        assert_eq!(
            saved.portable_data_hash,
            "1f4b0bc7583c2a7f9102c395f4ffc5e3+45"
        );
        assert_eq!(
            s.get_collection_manifest(&saved.portable_data_hash)
                .unwrap(),
            m
        );
        assert_eq!(s.get_collection_manifest(&saved.uuid).unwrap(), m);
    }
}
