//! The log pipeline: timestamp every line, spool it to the log collection in Keep, and
//! feed the live logs table.
//!
//! Small pieces, composed by `pipeline` (which keeps the list of log files and their
//! writers in `files`): `timestamp` (clock, format, line stamping), `spool` (a collection
//! file written to local disk and uploaded to the block store block by block),
//! `logs_table` (the batched, split, throttled live view in the API logs table),
//! `log_collection` (the log collection: saved now and then while the container runs, and
//! for good at the end), and `late` (crunch-run's last line, held back until the save says
//! whether it is true, and the lines said after the pipeline closed).

mod files;
pub mod late;
pub mod log_collection;
pub mod logs_table;
pub mod pipeline;
pub mod spool;
#[cfg(test)]
pub(crate) mod test_clock;
pub mod timestamp;
