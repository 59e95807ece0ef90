//! crunch-run: runs one Arvados container on a worker host through the `docker` CLI.
//!
//! The binary in `main.rs` is glue; everything it does lives here, one module per job:
//! `config` turns flags and environment into a `Config`, `store` is the seam between the
//! run and where records and blocks live (the Arvados API and Keep, or a local directory),
//! `docker` drives the docker CLI, `logging` timestamps and fans out every log line,
//! `collection` reads collections (which part a path names, their blocks from Keep),
//! `image` gets the image from Keep into the engine, `mounts` checks the record's mounts
//! and lays them out on the host, `output` turns the output directory into the output
//! collection's manifest, `process` owns child processes and their pipes, and `run` is the
//! lifecycle of one container and decides its final state; `slurm` keeps a Slurm job's kill
//! from leaving the container behind; `writeback` keeps the data we write from piling up
//! dirty in the page cache. docs/architecture.md is the map.

pub mod arvados;
pub mod broken_node;
pub mod cgroup;
pub mod collection;
pub mod config;
pub mod crunchstat;
pub mod detach;
pub mod docker;
pub mod image;
pub mod local_store;
pub mod logging;
pub mod mounts;
pub mod node_info;
pub mod output;
pub mod prices;
pub mod process;
pub mod progress;
pub mod redact;
pub mod rfc3339;
pub mod run;
pub mod slurm;
pub mod store;
#[cfg(test)]
pub(crate) mod test_io;
pub mod writeback;
