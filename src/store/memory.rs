//! One in-memory `ApiStore` + `BlockStore` for unit tests: records, collections, blocks
//! and logs-table entries in maps, with every call counted and faults that a test arms.
//!
//! It keeps the API's state rules out on purpose (the fake server in tests/ enforces
//! them); what it offers is a place to look after the fact and a way to make a call fail.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::arvados::manifest::{md5_hex, portable_data_hash};
use crate::store::{ApiStore, BlockSource, BlockStore, SavedCollection, StoreError};

/// A signature the store appends to every locator it hands out.
pub const SIGNATURE: &str = "+A0123456789abcdef0123456789abcdef01234567@12345678";

/// A saved collection: what `create_*`/`update_collection` were given.
#[derive(Debug, Clone, PartialEq)]
pub struct MemCollection {
    pub name: String,
    pub manifest_text: String,
    pub trash_at: Option<SystemTime>,
    /// Saved with `create_output_collection`.
    pub output: bool,
}

#[derive(Default)]
pub struct MemoryStore {
    /// Container records by UUID; `update_container` merges fields into them.
    pub containers: Mutex<HashMap<String, Value>>,
    /// Every `update_container` call, in order.
    pub updates: Mutex<Vec<(String, Map<String, Value>)>>,
    /// Collections by UUID (and, for `get_collection_manifest`, by PDH).
    pub collections: Mutex<BTreeMap<String, MemCollection>>,
    /// Blocks by md5.
    pub blocks: Mutex<HashMap<String, Vec<u8>>>,
    /// `(object_uuid, event_type, text)` of every logs-table entry.
    pub logs: Mutex<Vec<(String, String, String)>>,
    /// Number of block puts and gets, failed ones included.
    pub puts: AtomicUsize,
    pub gets: AtomicUsize,
    /// The next n block puts fail.
    pub fail_next_puts: AtomicUsize,
    /// Every logs-table post fails.
    pub fail_logs: bool,
    /// Every logs-table post first sleeps this long.
    pub hang_logs: Option<Duration>,
    /// Block gets hand out these bytes instead of the block's, without complaint: a store
    /// that breaks `BlockStore::get_block`'s promise to check the md5 (staging then catches
    /// only a wrong size).
    pub lie: Mutex<Option<Vec<u8>>>,
    /// Every block put and get first sleeps this long (a store far away).
    pub block_delay: Mutex<Option<Duration>>,
    /// Saving a collection whose name starts with one of these fails.
    pub fail_collections: Mutex<Vec<String>>,
    /// A container update to one of these states fails.
    pub fail_container_states: Mutex<Vec<String>>,
    next_uuid: AtomicUsize,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Store a block; returns its signed locator.
    pub fn put(&self, data: &[u8]) -> String {
        let hash = md5_hex(data);
        self.blocks
            .lock()
            .unwrap()
            .insert(hash.clone(), data.to_vec());
        format!("{hash}+{}{SIGNATURE}", data.len())
    }

    /// The bytes of the block a locator names (panics if there is none).
    pub fn block(&self, locator: &str) -> Vec<u8> {
        let hash = &locator[..32];
        self.blocks.lock().unwrap()[hash].clone()
    }

    /// The bytes of a file, block after block.
    pub fn file(&self, locators: &[String]) -> Vec<u8> {
        locators.iter().flat_map(|l| self.block(l)).collect()
    }

    /// Add a collection readable by `id` (a PDH or a UUID).
    pub fn add_collection(&self, id: &str, manifest_text: &str) {
        self.collections.lock().unwrap().insert(
            id.to_string(),
            MemCollection {
                name: String::new(),
                manifest_text: manifest_text.to_string(),
                trash_at: None,
                output: false,
            },
        );
    }

    pub fn collection(&self, uuid: &str) -> Option<MemCollection> {
        self.collections.lock().unwrap().get(uuid).cloned()
    }

    pub fn add_container(&self, uuid: &str, record: Value) {
        self.containers
            .lock()
            .unwrap()
            .insert(uuid.to_string(), record);
    }

    /// The texts posted to the logs table for one event type.
    pub fn texts(&self, event_type: &str) -> Vec<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter(|(_, e, _)| e == event_type)
            .map(|(_, _, t)| t.clone())
            .collect()
    }

    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    /// Make every container update to `state` fail.
    pub fn fail_container_updates_to(&self, state: &str) {
        self.fail_container_states
            .lock()
            .unwrap()
            .push(state.into());
    }

    /// The injected failure for saving collection `name`, if armed.
    fn refuse(&self, name: &str) -> Result<(), StoreError> {
        let fail = self.fail_collections.lock().unwrap();
        match fail.iter().any(|prefix| name.starts_with(prefix.as_str())) {
            true => Err(StoreError::Rejected {
                what: format!("save collection {name:?}"),
                status: 500,
                message: "injected".into(),
            }),
            false => Ok(()),
        }
    }

    fn save(&self, collection: MemCollection) -> Result<SavedCollection, StoreError> {
        self.refuse(&collection.name)?;
        let n = self.next_uuid.fetch_add(1, Ordering::SeqCst);
        let uuid = format!("zzzzz-4zz18-{n:015}");
        let pdh = portable_data_hash(&collection.manifest_text);
        self.collections
            .lock()
            .unwrap()
            .insert(uuid.clone(), collection);
        Ok(SavedCollection {
            uuid,
            portable_data_hash: pdh,
        })
    }
}

fn not_found(what: String) -> StoreError {
    StoreError::NotFound { what }
}

impl ApiStore for MemoryStore {
    fn get_container(&self, uuid: &str) -> Result<Value, StoreError> {
        self.containers
            .lock()
            .unwrap()
            .get(uuid)
            .cloned()
            .ok_or_else(|| not_found(format!("GET containers/{uuid}")))
    }

    fn update_container(&self, uuid: &str, fields: &Map<String, Value>) -> Result<(), StoreError> {
        let refused = self.fail_container_states.lock().unwrap();
        if let Some(state) = fields.get("state").and_then(Value::as_str)
            && refused.iter().any(|s| s == state)
        {
            return Err(StoreError::Rejected {
                what: format!("PUT containers/{uuid}"),
                status: 500,
                message: "injected".into(),
            });
        }
        drop(refused);
        self.updates
            .lock()
            .unwrap()
            .push((uuid.to_string(), fields.clone()));
        let mut containers = self.containers.lock().unwrap();
        let record = containers
            .get_mut(uuid)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| not_found(format!("PUT containers/{uuid}")))?;
        for (k, v) in fields {
            record.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    fn get_collection_manifest(&self, id: &str) -> Result<String, StoreError> {
        let collections = self.collections.lock().unwrap();
        collections
            .get(id)
            .or_else(|| {
                collections
                    .values()
                    .find(|c| portable_data_hash(&c.manifest_text) == id)
            })
            .map(|c| c.manifest_text.clone())
            .ok_or_else(|| not_found(format!("GET collections/{id}")))
    }

    fn create_collection(
        &self,
        name: &str,
        manifest_text: &str,
    ) -> Result<SavedCollection, StoreError> {
        self.save(MemCollection {
            name: name.to_string(),
            manifest_text: manifest_text.to_string(),
            trash_at: None,
            output: false,
        })
    }

    fn create_log(&self, uuid: &str, event_type: &str, text: &str) -> Result<(), StoreError> {
        if let Some(d) = self.hang_logs {
            std::thread::sleep(d);
        }
        if self.fail_logs {
            return Err(StoreError::Rejected {
                what: "POST logs".into(),
                status: 500,
                message: "injected".into(),
            });
        }
        self.logs
            .lock()
            .unwrap()
            .push((uuid.into(), event_type.into(), text.into()));
        Ok(())
    }

    fn create_interim_collection(
        &self,
        name: &str,
        manifest_text: &str,
        trash_at: SystemTime,
    ) -> Result<SavedCollection, StoreError> {
        self.save(MemCollection {
            name: name.to_string(),
            manifest_text: manifest_text.to_string(),
            trash_at: Some(trash_at),
            output: false,
        })
    }

    fn update_collection(
        &self,
        uuid: &str,
        manifest_text: &str,
        trash_at: Option<SystemTime>,
    ) -> Result<SavedCollection, StoreError> {
        let mut collections = self.collections.lock().unwrap();
        let c = collections
            .get_mut(uuid)
            .ok_or_else(|| not_found(format!("PUT collections/{uuid}")))?;
        self.refuse(&c.name)?;
        c.manifest_text = manifest_text.to_string();
        c.trash_at = trash_at;
        Ok(SavedCollection {
            uuid: uuid.to_string(),
            portable_data_hash: portable_data_hash(manifest_text),
        })
    }

    fn create_output_collection(
        &self,
        name: &str,
        manifest_text: &str,
    ) -> Result<SavedCollection, StoreError> {
        self.save(MemCollection {
            name: name.to_string(),
            manifest_text: manifest_text.to_string(),
            trash_at: None,
            output: true,
        })
    }
}

impl BlockStore for MemoryStore {
    fn put_block(
        &self,
        hash: &str,
        size: u64,
        body: &BlockSource<'_>,
    ) -> Result<String, StoreError> {
        let what = format!("PUT {hash}");
        let delay = *self.block_delay.lock().unwrap();
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        // Decide the failure before counting the put, so that a test that waits for a
        // count can arm failures for the puts after it only.
        let fail = self
            .fail_next_puts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        self.puts.fetch_add(1, Ordering::SeqCst);
        if fail {
            return Err(StoreError::Unavailable {
                what,
                message: "injected failure".into(),
            });
        }
        let mut data = Vec::new();
        body()
            .and_then(|mut r| r.read_to_end(&mut data))
            .map_err(|source| StoreError::Io {
                what: what.clone(),
                source,
            })?;
        if data.len() as u64 != size || md5_hex(&data) != hash {
            return Err(StoreError::Invalid {
                what,
                message: "size or md5 mismatch".into(),
            });
        }
        Ok(self.put(&data))
    }

    fn get_block(&self, locator: &str, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let delay = *self.block_delay.lock().unwrap();
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let data = match self.lie.lock().unwrap().clone() {
            Some(lie) => lie,
            None => self
                .blocks
                .lock()
                .unwrap()
                .get(locator.get(..32).unwrap_or(locator))
                .cloned()
                .ok_or_else(|| not_found(format!("GET {locator}")))?,
        };
        out.write_all(&data).map_err(|source| StoreError::Io {
            what: format!("GET {locator}"),
            source,
        })?;
        Ok(data.len() as u64)
    }
}

#[test]
fn a_collection_saved_can_be_read_back_by_pdh_and_uuid() {
    let store = MemoryStore::new();
    let loc = store.put(b"foo");
    let manifest = format!(". {loc} 0:3:foo\n");
    let saved = store.create_collection("c", &manifest).unwrap();
    assert_eq!(
        saved.portable_data_hash,
        "1f4b0bc7583c2a7f9102c395f4ffc5e3+45"
    );
    assert_eq!(
        store.get_collection_manifest(&saved.uuid).unwrap(),
        manifest
    );
    assert_eq!(
        store
            .get_collection_manifest(&saved.portable_data_hash)
            .unwrap(),
        manifest
    );
    let mut out = Vec::new();
    store.get_block(&loc, &mut out).unwrap();
    assert_eq!(out, b"foo");
    assert_eq!(store.gets(), 1);
}

#[test]
fn container_updates_are_recorded_and_merged() {
    let store = MemoryStore::new();
    store.add_container("u", json!({"state": "Locked"}));
    let fields = Map::from_iter([("state".to_string(), json!("Running"))]);
    store.update_container("u", &fields).unwrap();
    assert_eq!(store.get_container("u").unwrap()["state"], "Running");
    assert_eq!(store.updates.lock().unwrap().len(), 1);
}
