//! The Arvados side: the REST API client, the Container record, Keep, and manifests.

pub mod client;
pub mod container;
pub mod ids;
pub mod keep;
pub mod manifest;
