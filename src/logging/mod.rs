//! The log pipeline: timestamp every line, spool it to the log collection in Keep, and
//! feed the live logs table.

pub mod logs_table;
pub mod pipeline;
pub mod spool;
pub mod timestamp;
