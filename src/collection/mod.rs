//! The read side of a collection, shared by mounts (staging), image (`docker load`) and
//! output (capture by reference): which part of a collection a path names (`select.rs`), and
//! getting its bytes out of the block store ([`fetch`]).
//!
//! Writing collections is output capture's and the log pipeline's job. With arv-mount (FUSE,
//! mounts/arv_mount.rs) the same selections are served from its mount, not copied.

pub mod fetch;
pub mod select;
pub mod stream;

use std::io;
use std::path::PathBuf;

use crate::arvados::manifest::ManifestError;
use crate::store::StoreError;

pub use fetch::{CollectionReader, Written, read_manifest};
pub use select::{Selection, select};
pub use stream::stream_file;

/// Why a collection, or part of it, could not be read. Blocks are named `hash+size`, never
/// with their signature.
#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    /// The API would not give the manifest.
    #[error("fetching collection {id}: {source}")]
    Fetch {
        id: String,
        #[source]
        source: StoreError,
    },
    /// The manifest does not parse.
    #[error("collection {id}: {source}")]
    Manifest {
        id: String,
        #[source]
        source: ManifestError,
    },
    /// A locator of a parsed manifest does not parse (the parser checks them: not expected).
    #[error("{0}")]
    Locator(#[source] ManifestError),
    /// The path names nothing in the collection.
    #[error("path {path:?} not found in collection {id}")]
    NotFound { id: String, path: String },
    /// The block store would not give a block.
    #[error("fetching block {block}: {source}")]
    Block {
        block: String,
        #[source]
        source: StoreError,
    },
    /// The block store gave another number of bytes than the locator names (a store
    /// checks the md5 itself: see `BlockStore::get_block`).
    #[error("block {block} from Keep does not match its locator (got {bytes} bytes)")]
    BadBlock { block: String, bytes: u64 },
    /// A block ended before the file's range in it did.
    #[error("block {block} ended {missing} bytes before the end of the file range")]
    ShortBlock { block: String, missing: u64 },
    /// The caller asked to stop (a cancel) between blocks.
    #[error("{0}")]
    Stopped(#[source] io::Error),
    /// A path of the collection cannot be written on the host.
    #[error("path {path:?} of the collection cannot be written here: {reason}")]
    BadPath { path: PathBuf, reason: &'static str },
    /// A host file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}
