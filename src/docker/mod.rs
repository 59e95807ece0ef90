//! The docker CLI, and nothing else talks to it. This is the facade the rest of crunch-run
//! uses; the submodules split it by job:
//!
//! - `argv`: pure builders of `docker create` words from a [`ContainerSpec`] (no env values);
//! - `cli`: [`Docker`], one method per docker command crunch-run runs;
//! - `attached`: [`Attached`], the handle of an attached `docker start` client;
//! - `error`: [`DockerError`] and what a failure suggests (engine down, broken node, advice);
//! - `exit`: how a container ended ([`ContainerState`], [`ContainerExit`]);
//! - `guard`: the process that removes the container if crunch-run dies;
//! - `watchdog`: the periodic check that the engine still runs the container.
//!
//! Owning child processes (waits, kills, pipes) is process.rs's job, not docker's.

// Visible to the crate while mounts.rs still names `docker::argv::Bind`.
pub(crate) mod argv;
mod attached;
mod cli;
mod error;
mod exit;
mod guard;
mod watchdog;

pub use argv::{
    ArgvError, Bind, ContainerSpec, CreateArgs, Gpus, MIN_MEMORY_BYTES, create_argv, display_argv,
};
pub use attached::Attached;
pub use cli::{DEFAULT_TIMEOUT, Docker, LoadOutput};
pub use error::{DockerError, classify_start_error, suggests_broken_node};
pub use exit::{ContainerExit, ContainerState};
pub use guard::{GUARD_CGROUP_PARENT_FLAG, GUARD_DOCKER_ENV, GUARD_FLAG, Guard, run_guard};
pub use watchdog::watch;
