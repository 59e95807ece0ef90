//! The container's log collection. While the container runs, now and then (see
//! `LogUpdates`) the logs so far are saved to it and the record's `log` is pointed at it:
//! they then survive crunch-run or its host dying, and the API shows them meanwhile. As in
//! Go crunch-run, these interim saves carry a trash date two weeks ahead, so a run that dies
//! leaves nothing for good; the final save (`save_final_logs`) clears it. Lines crunch-run
//! has to say after the pipeline closed are late.rs's.
//!
//! It reports what happened to the logs; what that means for the run's outcome is for the
//! lifecycle to decide.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Receiver;
use serde_json::{Map, json};

use super::pipeline::{LogSnapshots, LogsFinished};
use crate::arvados::manifest::single_stream_manifest;
use crate::config::LogUpdates;
use crate::redact::Secrets;
use crate::store::{ApiStore, FileBlocks, SavedCollection, StoreError};

/// How long an interim log collection outlives a crunch-run that never finished it.
const INTERIM_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);
/// How long a snapshot waits for the log blocks it sealed to be stored.
const PATIENCE: Duration = Duration::from_secs(10);

/// The container's log collection: created by the first save, updated by the next ones.
pub struct LogCollection {
    api: Arc<dyn ApiStore>,
    container_uuid: String,
    uuid: Mutex<Option<String>>,
}

impl LogCollection {
    pub fn new(api: Arc<dyn ApiStore>, container_uuid: &str) -> LogCollection {
        LogCollection {
            api,
            container_uuid: container_uuid.to_string(),
            uuid: Mutex::new(None),
        }
    }

    /// Save `files` as the logs so far and point the record's `log` at them.
    pub fn save_interim(&self, files: &[FileBlocks]) -> Result<SavedCollection, StoreError> {
        let saved = self.save(files, Some(SystemTime::now() + INTERIM_LIFETIME))?;
        let fields = Map::from_iter([("log".to_string(), json!(saved.portable_data_hash))]);
        self.api.update_container(&self.container_uuid, &fields)?;
        Ok(saved)
    }

    /// Save `files` as the complete logs, kept for good.
    fn save_final(&self, files: &[FileBlocks]) -> Result<SavedCollection, StoreError> {
        self.save(files, None)
    }

    /// Save what the finished pipeline left as the complete logs. If that fails (a log file
    /// could not be spooled or stored, or the collection not saved), returns why, naming
    /// where the files are kept, for the caller to say. The spool directory is left alone
    /// either way: removing it is the caller's call.
    pub fn save_final_logs(
        &self,
        finished: &LogsFinished,
        secrets: &Secrets,
    ) -> Result<SavedCollection, String> {
        let saved = if finished.errors.is_empty() {
            self.save_final(&finished.files)
                .map_err(|e| secrets.redact(&e.to_string()))
        } else {
            Err(finished.errors.join("; "))
        };
        saved.map_err(|e| {
            format!(
                "Saving the log collection failed: {e}. The log files are kept on this host in {}",
                finished.spool_dir.display()
            )
        })
    }

    fn save(
        &self,
        files: &[FileBlocks],
        trash_at: Option<SystemTime>,
    ) -> Result<SavedCollection, StoreError> {
        let manifest = single_stream_manifest(files);
        let mut uuid = self.uuid.lock().unwrap_or_else(|e| e.into_inner());
        let updated = uuid
            .as_deref()
            .map(|existing| self.api.update_collection(existing, &manifest, trash_at));
        let saved = match (updated, trash_at) {
            (Some(Ok(saved)), _) => saved,
            // None yet, or the one we had cannot be updated (gone?): a new one.
            (_, Some(at)) => self
                .api
                .create_interim_collection(&self.name(), &manifest, at)?,
            (_, None) => self.api.create_collection(&self.name(), &manifest)?,
        };
        *uuid = Some(saved.uuid.clone());
        Ok(saved)
    }

    fn name(&self) -> String {
        format!("logs for {}", self.container_uuid)
    }
}

/// Make the interim saves, until `stop` disconnects (the lifecycle runs this on a helper
/// thread of its own): save when `updates.bytes` more were logged since the last save, or
/// `updates.period` passed and anything was, or at once when `save_now` says so (SIGUSR1,
/// as in Go) and anything was. A failure is said once (through `say`), and so is the
/// recovery; the next save is tried at the next such point.
pub fn save_while_running(
    updates: LogUpdates,
    snapshots: &LogSnapshots,
    collection: &LogCollection,
    say: impl Fn(&str),
    stop: &Receiver<()>,
    save_now: &Receiver<()>,
) {
    // As often as Go crunch-run looks (period / 360), within reason.
    let look = (updates.period / 360).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let (mut saved_at, mut saved_bytes) = (Instant::now(), 0);
    let mut failing = false;
    let mut save_now = save_now.clone();
    loop {
        let asked = crossbeam_channel::select! {
            recv(stop) -> _ => break,
            recv(save_now) -> msg => Some(msg.is_ok()),
            default(look) => None,
        };
        if asked == Some(false) {
            // No one can ask any more: stop listening, so that the select does not spin.
            save_now = crossbeam_channel::never();
            continue;
        }
        let asked = asked == Some(true);
        let bytes = snapshots.bytes();
        let grown = bytes.saturating_sub(saved_bytes);
        let due = grown > 0
            && (asked
                || (updates.bytes > 0 && grown >= updates.bytes)
                || (!updates.period.is_zero() && saved_at.elapsed() >= updates.period));
        if !due {
            continue;
        }
        (saved_at, saved_bytes) = (Instant::now(), bytes);
        let saved = match snapshots.take(PATIENCE) {
            Some(files) => collection.save_interim(&files).map_err(|e| e.to_string()),
            None => Err("the log blocks were not all stored in time".to_string()),
        };
        match saved {
            Ok(_) if failing => {
                say("Saving the logs so far works again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) if !failing => {
                say(&format!("Warning: cannot save the logs so far: {e}"));
                failing = true;
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const UUID: &str = "zzzzz-dz642-000000000000001";

    fn setup() -> (Arc<MemoryStore>, LogCollection) {
        let store = Arc::new(MemoryStore::new());
        store.add_container(UUID, json!({"uuid": UUID, "state": "Running"}));
        let collection = LogCollection::new(store.clone(), UUID);
        (store, collection)
    }

    fn files(names: &[&str]) -> Vec<FileBlocks> {
        names
            .iter()
            .map(|n| FileBlocks {
                name: n.to_string(),
                locators: vec![],
                size: 0,
            })
            .collect()
    }

    #[test]
    fn interim_saves_update_one_collection_that_the_final_save_keeps() {
        let (store, collection) = setup();
        let first = collection
            .save_interim(&files(&["crunch-run.txt"]))
            .unwrap();
        assert_eq!(
            store.get_container(UUID).unwrap()["log"],
            json!(first.portable_data_hash)
        );
        assert!(store.collection(&first.uuid).unwrap().trash_at.is_some());
        let second = collection
            .save_interim(&files(&["crunch-run.txt", "stdout.txt"]))
            .unwrap();
        assert_eq!(second.uuid, first.uuid);
        assert_ne!(second.portable_data_hash, first.portable_data_hash);
        assert_eq!(
            store.get_container(UUID).unwrap()["log"],
            json!(second.portable_data_hash)
        );
        let last = collection
            .save_final(&files(&["crunch-run.txt", "stderr.txt", "stdout.txt"]))
            .unwrap();
        assert_eq!(last.uuid, first.uuid);
        let record = store.collection(&last.uuid).unwrap();
        assert_eq!(record.trash_at, None);
        assert_eq!(record.name, format!("logs for {UUID}"));
    }

    fn finished(errors: &[&str]) -> LogsFinished {
        LogsFinished {
            files: files(&["crunch-run.txt", "stderr.txt", "stdout.txt"]),
            errors: errors.iter().map(|e| e.to_string()).collect(),
            spool_dir: "/spool/logs".into(),
        }
    }

    #[test]
    fn the_final_save_gives_the_collection_and_posts_nothing() {
        let (store, collection) = setup();
        let saved = collection
            .save_final_logs(&finished(&[]), &Secrets::new())
            .unwrap();
        let record = store.collection(&saved.uuid).unwrap();
        assert_eq!(
            record.manifest_text,
            single_stream_manifest(&finished(&[]).files)
        );
        assert_eq!(record.trash_at, None);
        assert!(store.logs.lock().unwrap().is_empty());
    }

    #[test]
    fn a_failed_final_save_says_why_and_where_the_files_are() {
        let (store, collection) = setup();
        let err = collection
            .save_final_logs(&finished(&["stdout.txt: disk full", "x"]), &Secrets::new())
            .unwrap_err();
        assert_eq!(
            err,
            "Saving the log collection failed: stdout.txt: disk full; x. \
             The log files are kept on this host in /spool/logs"
        );
        assert!(
            store.collections.lock().unwrap().is_empty(),
            "nothing saved"
        );
        assert!(
            store.logs.lock().unwrap().is_empty(),
            "saying it is the caller's"
        );
    }

    #[test]
    fn the_final_logs_go_to_a_new_collection_if_the_interim_one_is_gone() {
        let (store, collection) = setup();
        let first = collection
            .save_interim(&files(&["crunch-run.txt"]))
            .unwrap();
        store.collections.lock().unwrap().remove(&first.uuid);
        let final_files = files(&["crunch-run.txt", "stdout.txt"]);
        let last = collection.save_final(&final_files).unwrap();
        assert_ne!(last.uuid, first.uuid);
        let record = store.collection(&last.uuid).unwrap();
        assert_eq!(record.manifest_text, single_stream_manifest(&final_files));
        assert_eq!(record.trash_at, None);
    }
}
