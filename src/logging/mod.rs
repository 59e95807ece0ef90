//! The log pipeline: timestamp every line, spool it to the log collection in Keep, and
//! feed the live logs table.
//!
//! Small pieces, composed by `pipeline`: `timestamp` (clock, format, line stamping),
//! `spool` (a collection file written to local disk and uploaded to the block store block
//! by block), `logs_table` (the batched, split, throttled live view in the API logs table),
//! and `updates` (the log collection saved now and then while the container runs).

pub mod logs_table;
pub mod pipeline;
pub mod spool;
pub mod timestamp;
pub mod updates;

/// In-memory stores for the tests of this module.
#[cfg(test)]
pub(crate) mod fakes {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use serde_json::{Map, Value};

    pub use crate::arvados::manifest::md5_hex;
    use crate::store::{ApiStore, BlockSource, BlockStore, SavedCollection, StoreError};

    /// Blocks in a map; `fail_next(n)` makes the next n puts fail.
    #[derive(Default)]
    pub struct MemBlocks {
        pub blocks: Mutex<HashMap<String, Vec<u8>>>,
        pub fail_next: AtomicUsize,
        pub puts: AtomicUsize,
    }

    impl MemBlocks {
        pub fn get(&self, locator: &str) -> Vec<u8> {
            let hash = locator.split('+').next().unwrap();
            self.blocks.lock().unwrap()[hash].clone()
        }
        /// The bytes of a file, block after block.
        pub fn file(&self, locators: &[String]) -> Vec<u8> {
            locators.iter().flat_map(|l| self.get(l)).collect()
        }
    }

    impl BlockStore for MemBlocks {
        fn put_block(
            &self,
            hash: &str,
            size: u64,
            body: &BlockSource<'_>,
        ) -> Result<String, StoreError> {
            let what = format!("PUT {hash}");
            // Decide the failure before counting the put, so that a test that waits for
            // a count can arm failures for the puts after it only.
            let fail = self
                .fail_next
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
            self.blocks.lock().unwrap().insert(hash.to_string(), data);
            Ok(format!("{hash}+{size}+Asignature@00000000"))
        }

        fn get_block(&self, locator: &str, out: &mut dyn Write) -> Result<u64, StoreError> {
            let data = self.get(locator);
            out.write_all(&data).unwrap();
            Ok(data.len() as u64)
        }
    }

    /// Records logs-table entries; can fail them, or hang them for a while.
    #[derive(Default)]
    pub struct MemApi {
        pub logs: Mutex<Vec<(String, String, String)>>,
        pub fail: bool,
        pub hang: Option<Duration>,
    }

    impl MemApi {
        pub fn texts(&self, event_type: &str) -> Vec<String> {
            let logs = self.logs.lock().unwrap();
            logs.iter()
                .filter(|(_, e, _)| e == event_type)
                .map(|(_, _, t)| t.clone())
                .collect()
        }
    }

    fn unsupported(what: &str) -> StoreError {
        StoreError::NotFound { what: what.into() }
    }

    impl ApiStore for MemApi {
        fn get_container(&self, _: &str) -> Result<Value, StoreError> {
            Err(unsupported("get_container"))
        }
        fn update_container(&self, _: &str, _: &Map<String, Value>) -> Result<(), StoreError> {
            Err(unsupported("update_container"))
        }
        fn get_collection_manifest(&self, _: &str) -> Result<String, StoreError> {
            Err(unsupported("get_collection_manifest"))
        }
        fn create_collection(&self, _: &str, _: &str) -> Result<SavedCollection, StoreError> {
            Err(unsupported("create_collection"))
        }
        fn create_log(&self, uuid: &str, event_type: &str, text: &str) -> Result<(), StoreError> {
            if let Some(d) = self.hang {
                std::thread::sleep(d);
            }
            if self.fail {
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
    }
}
