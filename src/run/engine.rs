//! What the lifecycle asks of a container engine, and nothing more: the Go crunch-run's
//! `containerExecutor`, cut to the calls run/ makes. `Docker` (the docker CLI) is the one
//! production engine; `StubEngine` (tests only, run/stub_engine.rs) scripts one, so the
//! whole lifecycle can be unit-tested without a process.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;

use crate::docker::{
    Attached, ContainerSpec, ContainerState, Docker, DockerError, Guard, LoadOutput,
};
use crate::process::ChildKiller;

/// A container engine, shared by the threads of one run.
pub trait Engine: Send + Sync {
    /// The engine's version (asked only to diagnose a failure).
    fn server_version(&self) -> Result<String, DockerError>;
    /// The id of `image` if the engine has it.
    fn image_id(&self, image: &str) -> Result<Option<String>, DockerError>;
    /// The ids of every image the engine has, if it can list them (else `image_id` is
    /// asked).
    fn image_ids(&self) -> Option<Vec<String>> {
        None
    }
    /// Load an image tar, which `feed` writes. `started` is given what kills the client,
    /// once there is one.
    fn load_image(
        &self,
        feed: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
        started: &dyn Fn(KillClient),
    ) -> Result<LoadOutput, DockerError>;
    /// Create the container of `spec`, not started. Scratch files (an env file) may go
    /// into `scratch_dir`, and are gone when this returns. `started` is given what kills
    /// the client, once there is one.
    fn create(
        &self,
        spec: &ContainerSpec,
        scratch_dir: &Path,
        started: &dyn Fn(KillClient),
    ) -> Result<(), DockerError>;
    /// Start the created container `name`, attached: its streams come through the returned
    /// client, its stdin too when `stdin` (it was created with one).
    fn start_attached(&self, name: &str, stdin: bool) -> Result<Box<dyn Client>, DockerError>;
    /// The container's state.
    fn inspect_state(&self, name: &str) -> Result<ContainerState, DockerError>;
    /// The host PID of the container's first process while it runs; `None` while it does
    /// not (not created yet, created, exited, gone).
    fn container_pid(&self, name: &str) -> Result<Option<u32>, DockerError>;
    /// Wait for the container to stop; its exit code.
    fn wait(&self, name: &str) -> Result<i64, DockerError>;
    /// Kill and remove the container; one that is gone already is success.
    fn remove(&self, name: &str) -> Result<(), DockerError>;
    /// The engine's cgroup driver (`cgroupfs`, `systemd`): what a cgroup parent may be.
    fn cgroup_driver(&self) -> Result<String, DockerError>;
    /// Start what removes the container `name` (and, inside a Slurm job, the cgroups made
    /// for its `cgroup_parent`) if crunch-run dies; `None` for an engine that needs none.
    fn guard(&self, name: &str, cgroup_parent: Option<&str>) -> io::Result<Option<Guard>>;
}

/// The attached client of a running container. Its exit status is the client's: the
/// container's is the engine's to tell (`Engine::inspect_state`).
pub trait Client: Send {
    /// The container's stdin, when the spec asked for one. Drop it to send EOF.
    fn take_stdin(&mut self) -> Option<Box<dyn Write + Send>>;
    /// The container's stdout. `None` after the first call.
    fn take_stdout(&mut self) -> Option<Box<dyn Read + Send>>;
    /// The container's stderr, then the client's own errors. `None` after the first call.
    fn take_stderr(&mut self) -> Option<Box<dyn Read + Send>>;
    /// Wait for the client to exit.
    fn wait(&mut self) -> Result<ExitStatus, DockerError>;
    /// What kills the client (never the container) from another thread while one waits;
    /// once the client has exited, it does nothing.
    fn killer(&self) -> KillClient;
}

/// Kills one client; see [`Client::killer`].
pub type KillClient = Arc<dyn Fn() + Send + Sync>;

impl Engine for Docker {
    fn server_version(&self) -> Result<String, DockerError> {
        Docker::server_version(self)
    }

    fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        Docker::image_id(self, image)
    }

    fn image_ids(&self) -> Option<Vec<String>> {
        Docker::image_ids(self).ok()
    }

    fn load_image(
        &self,
        feed: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
        started: &dyn Fn(KillClient),
    ) -> Result<LoadOutput, DockerError> {
        Docker::load_image(self, feed, &|killer| started(client_killer(killer)))
    }

    fn create(
        &self,
        spec: &ContainerSpec,
        scratch_dir: &Path,
        started: &dyn Fn(KillClient),
    ) -> Result<(), DockerError> {
        Docker::create(self, spec, scratch_dir, &|killer| {
            started(client_killer(killer))
        })
    }

    fn start_attached(&self, name: &str, stdin: bool) -> Result<Box<dyn Client>, DockerError> {
        Ok(Box::new(Docker::start_attached(self, name, stdin)?))
    }

    fn inspect_state(&self, name: &str) -> Result<ContainerState, DockerError> {
        Docker::inspect_state(self, name)
    }

    fn container_pid(&self, name: &str) -> Result<Option<u32>, DockerError> {
        Docker::container_pid(self, name)
    }

    fn wait(&self, name: &str) -> Result<i64, DockerError> {
        Docker::wait(self, name)
    }

    fn remove(&self, name: &str) -> Result<(), DockerError> {
        Docker::remove(self, name)
    }

    fn cgroup_driver(&self) -> Result<String, DockerError> {
        Docker::cgroup_driver(self)
    }

    fn guard(&self, name: &str, cgroup_parent: Option<&str>) -> io::Result<Option<Guard>> {
        let exe = std::env::current_exe()?;
        Guard::spawn(&exe, name, cgroup_parent, self).map(Some)
    }
}

fn client_killer(killer: ChildKiller) -> KillClient {
    Arc::new(move || killer.kill())
}

impl Client for Attached {
    fn take_stdin(&mut self) -> Option<Box<dyn Write + Send>> {
        Attached::take_stdin(self).map(|w| Box::new(w) as _)
    }

    fn take_stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        Attached::take_stdout(self).map(|r| Box::new(r) as _)
    }

    fn take_stderr(&mut self) -> Option<Box<dyn Read + Send>> {
        Attached::take_stderr(self).map(|r| Box::new(r) as _)
    }

    fn wait(&mut self) -> Result<ExitStatus, DockerError> {
        Attached::wait(self)
    }

    fn killer(&self) -> KillClient {
        client_killer(Attached::killer(self))
    }
}
