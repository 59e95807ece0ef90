//! The Arvados side, wire formats and clients: the REST API client and its retry policy,
//! the Container record, Keep, manifests, and `store::ArvadosStore`, which implements the
//! store seam over the API and Keep. Nothing here knows about the run that uses it.

pub mod client;
pub mod container;
pub(crate) mod decode;
pub mod ids;
pub mod keep;
pub mod manifest;
pub mod retry;
pub mod retry_limit;
pub mod store;
pub(crate) mod tls;
