//! The docker CLI, and nothing else talks to it.

pub mod argv;
pub mod cli;
pub mod guard;
pub mod tail;
pub mod watchdog;
