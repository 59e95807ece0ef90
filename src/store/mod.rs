//! The seam between a run and where its records and data live.
//!
//! `ApiStore` is the record side (containers, collections, the logs table) and `BlockStore`
//! the data side (Keep blocks). The backends live beside what they wrap and import this
//! seam, never the other way round: `arvados::store::ArvadosStore` (the API server and
//! Keep over HTTPS) and `local_store::LocalStore` (a directory, for local runs and the
//! demo). The lifecycle only ever sees these traits; `memory` is the one test double.

#[cfg(test)]
pub mod memory;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

/// What went wrong talking to a store. `what` always names the operation, e.g.
/// "GET containers/zzzzz-dz642-…". Messages never contain a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server or directory has no such thing (HTTP 404, missing file).
    #[error("{what}: not found")]
    NotFound { what: String },
    /// The server answered and said no (4xx other than 404, or 5xx after retries).
    #[error("{what}: HTTP {status}: {message}")]
    Rejected {
        what: String,
        status: u16,
        message: String,
    },
    /// Could not reach the server, after retries up to the deadline.
    #[error("{what}: {message}")]
    Unavailable { what: String, message: String },
    /// The data came back but is wrong (md5 mismatch, short block, a field missing).
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    /// The server answered, but its answer could not be decoded at all: not JSON, or
    /// nested deeper than the decoder's limit. `state` is the answer's top-level "state"
    /// string when that much could still be read: for a container record, enough to close
    /// it (Cancelled, with `message` as the reason) rather than leave it Locked.
    #[error("{what}: {message}")]
    Undecodable {
        what: String,
        message: String,
        /// Boxed to keep StoreError (carried inside other errors) small.
        state: Option<Box<str>>,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A collection as the store saved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCollection {
    pub uuid: String,
    pub portable_data_hash: String,
}

/// Records: containers, collections, and the legacy logs table.
pub trait ApiStore: Send + Sync {
    /// The container record as the server returns it (raw JSON object).
    fn get_container(&self, uuid: &str) -> Result<Value, StoreError>;
    /// Update some fields of the container record (`{"container": fields}` on the wire).
    fn update_container(&self, uuid: &str, fields: &Map<String, Value>) -> Result<(), StoreError>;
    /// The manifest text (signed where the backend signs) of a collection, by PDH or UUID.
    fn get_collection_manifest(&self, pdh_or_uuid: &str) -> Result<String, StoreError>;
    /// Save a new collection with this name and manifest (unique name ensured by the store).
    fn create_collection(
        &self,
        name: &str,
        manifest_text: &str,
    ) -> Result<SavedCollection, StoreError>;
    /// One entry in the logs table: `object_uuid`, `event_type`, `properties.text`.
    fn create_log(&self, object_uuid: &str, event_type: &str, text: &str)
    -> Result<(), StoreError>;

    /// Put a Locked container back in the queue (`POST containers/{uuid}/unlock`), for
    /// another worker to run: what a failure that is not the container's fault ends in.
    fn unlock_container(&self, uuid: &str) -> Result<(), StoreError> {
        let queued = Map::from_iter([("state".to_string(), json!("Queued"))]);
        self.update_container(uuid, &queued)
    }

    /// The container's own token, and the store acting with it: secret mounts and the
    /// output collection are read and written as the container (reference §2.3).
    /// `None` for a store without tokens (the local store).
    fn container_access(&self, _uuid: &str) -> Result<Option<ContainerAccess>, StoreError> {
        Ok(None)
    }

    /// The container's `secret_mounts` (an object; empty when there are none).
    fn secret_mounts(&self, _uuid: &str) -> Result<Value, StoreError> {
        Ok(json!({}))
    }

    /// Save a collection that goes to the trash at `trash_at` unless updated before (a
    /// snapshot of the logs while the container runs: if crunch-run dies, it is cleaned up).
    fn create_interim_collection(
        &self,
        name: &str,
        manifest_text: &str,
        _trash_at: SystemTime,
    ) -> Result<SavedCollection, StoreError> {
        self.create_collection(name, manifest_text)
    }

    /// Replace a collection's manifest. `trash_at`: as for `create_interim_collection`;
    /// `None` keeps the collection for good.
    fn update_collection(
        &self,
        uuid: &str,
        _manifest_text: &str,
        _trash_at: Option<SystemTime>,
    ) -> Result<SavedCollection, StoreError> {
        Err(StoreError::Invalid {
            what: format!("update collection {uuid}"),
            message: "this store cannot update collections".into(),
        })
    }

    /// Save an output collection. The API's container-request finalizer copies it, so
    /// the Arvados store creates it trashed, as the Go crunch-run does.
    fn create_output_collection(
        &self,
        name: &str,
        manifest_text: &str,
    ) -> Result<SavedCollection, StoreError> {
        self.create_collection(name, manifest_text)
    }
}

/// The container's token (a secret: it goes into the container's environment, never into
/// a log) and the stores that act with it.
#[derive(Clone)]
pub struct ContainerAccess {
    pub token: String,
    pub api: Arc<dyn ApiStore>,
    pub blocks: Arc<dyn BlockStore>,
}

/// Opens a fresh reader over one block's bytes; called again for each retry.
pub type BlockSource<'a> = dyn Fn() -> io::Result<Box<dyn Read + Send + 'a>> + 'a;

/// Blocks of data, addressed by `md5hex+size` locators.
pub trait BlockStore: Send + Sync {
    /// Store one block of `size` bytes whose md5 is `hash`, read from a reader that `body`
    /// opens (once per attempt). Returns the locator to put in a manifest (signed by Keep).
    fn put_block(
        &self,
        hash: &str,
        size: u64,
        body: &BlockSource<'_>,
    ) -> Result<String, StoreError>;
    /// Store the `size` bytes of the file at `path` from `offset`, whose md5 `hash` the
    /// caller computed as it wrote them. The default reads them through `put_block`, which
    /// checks the hash as any other body; a store on the same machine may trust it instead.
    fn put_block_from_file(
        &self,
        hash: &str,
        size: u64,
        path: &Path,
        offset: u64,
    ) -> Result<String, StoreError> {
        let open = || -> io::Result<Box<dyn Read + Send>> {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(offset))?;
            Ok(Box::new(f.take(size)))
        };
        self.put_block(hash, size, &open)
    }
    /// Stream one whole block into `out`, checking its size and md5. Returns bytes written.
    /// A failure after some bytes were written is an error (the caller cannot unwrite them).
    fn get_block(&self, locator: &str, out: &mut dyn Write) -> Result<u64, StoreError>;
    /// Wait until blocks can be stored and fetched (the Arvados store may still be finding
    /// its Keep services); an error if they never can.
    fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One file of a collection written block by block: its name and the locators (as the
/// block store returned them, signatures included) of its bytes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBlocks {
    pub name: String,
    pub locators: Vec<String>,
    pub size: u64,
}
