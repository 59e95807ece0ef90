//! Manifests and portable data hashes: parse, build (normalized), and hash, following
//! Arvados' own rules (reference §3). TO BE WRITTEN (helper A).
//!
//! Public interface (fixed):
//! - `pub struct Locator { pub hash: String, pub size: u64, pub hints: Vec<String> }`
//!   with `Locator::parse(&str) -> Result<Locator, ManifestError>` and `Display` (hash+size+hints).
//! - `pub fn portable_data_hash(manifest_text: &str) -> String`
//! - uses `crate::store::FileBlocks`
//! - `pub fn single_stream_manifest(files: &[FileBlocks]) -> String` — one "." stream,
//!   files sorted by name, escaped names; empty files fine.
//! - `pub struct Manifest` from `Manifest::parse(&str) -> Result<Manifest, ManifestError>`
//!   with `files(&self) -> Vec<ManifestFile>`; `ManifestFile { path: String, size: u64,
//!   ranges: Vec<BlockRange> }`, `BlockRange { locator: String, offset: u64, len: u64 }`.
