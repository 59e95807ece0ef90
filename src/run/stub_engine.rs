//! A scripted container engine for the lifecycle's unit tests, as the Go crunch-run's
//! `stubExecutor`: images present or not, what `load` does, the container's stdout and
//! stderr (through real OS pipes), how it ends (exit code, OOM, never started), a
//! container that runs until removed, a client that hangs on, an engine that is down.
//! Every call is recorded, and so is every spec it was asked to run.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::docker::{ContainerSpec, ContainerState, DockerError, Guard, LoadOutput};

use super::engine::{Client, Engine, KillClient};

const ENGINE_DOWN: &str = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?";
const STARTED_AT: &str = "2026-11-28T16:58:17.2Z";
const NEVER: &str = "0001-01-01T00:00:00Z";

/// What the engine does; set before the run.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Images the engine has.
    pub images: Vec<String>,
    /// `docker load`: the id it loads, or why it fails.
    pub load: Option<Result<String, String>>,
    /// Every command fails as with a stopped daemon.
    pub engine_down: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// `docker create` fails with this engine error text.
    pub create_error: Option<String>,
    /// The command could not start: the engine's error text (the client exits 127).
    pub start_error: Option<String>,
    /// The container runs until it is removed (then it counts as killed, 137).
    pub runs_until_removed: bool,
    /// The client hangs on after its container stopped, until killed.
    pub client_hangs: bool,
    /// The container runs this long after its output (less if removed).
    pub lives: Option<Duration>,
    /// The host PID the engine gives for the running container.
    pub pid: Option<u32>,
    /// Asking for the PID hangs until the container is removed.
    pub pid_hangs: bool,
    /// The cgroup driver the engine reports (`cgroupfs` when empty).
    pub cgroup_driver: String,
}

#[derive(Default)]
struct World {
    script: Script,
    images: BTreeSet<String>,
    calls: Vec<String>,
    specs: Vec<ContainerSpec>,
    /// Containers by name; gone once removed.
    containers: HashMap<String, ContainerState>,
    removed: BTreeSet<String>,
    /// Bytes the container read on its stdin.
    stdin: Vec<u8>,
    /// The exit status of each client, once it exited (by name).
    clients: HashMap<String, ExitStatus>,
    /// Bytes `load` was fed.
    loaded_bytes: usize,
}

/// A scripted engine. Clones share one world.
#[derive(Clone, Default)]
pub struct StubEngine(Arc<(Mutex<World>, Condvar)>);

impl StubEngine {
    pub fn new(script: Script) -> StubEngine {
        let engine = StubEngine::default();
        {
            let mut world = engine.world();
            world.images = script.images.iter().cloned().collect();
            world.script = script;
        }
        engine
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.0.1.notify_all();
    }

    /// Wait until `done` holds for the world.
    fn wait_for(&self, mut done: impl FnMut(&World) -> bool) {
        let mut world = self.world();
        while !done(&world) {
            world = self.0.1.wait(world).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Wait until `done` holds for the world, or `deadline` passes.
    fn wait_until(&self, deadline: Instant, mut done: impl FnMut(&World) -> bool) {
        let mut world = self.world();
        while !done(&world) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            world = match self.0.1.wait_timeout(world, left) {
                Ok((world, _)) => world,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Every call, in order: `image_id <image>`, `load`, `create <name>`, `start <name>`,
    /// `inspect <name>`,
    /// `pid <name>`, `wait <name>`, `remove <name>`, `version`, `kill-client <name>`,
    /// `cgroup_driver`.
    pub fn calls(&self) -> Vec<String> {
        self.world().calls.clone()
    }

    /// The specs `create` was given.
    pub fn specs(&self) -> Vec<ContainerSpec> {
        self.world().specs.clone()
    }

    /// What the container read on its stdin.
    pub fn stdin(&self) -> Vec<u8> {
        self.world().stdin.clone()
    }

    pub fn loaded_bytes(&self) -> usize {
        self.world().loaded_bytes
    }

    fn call(&self, call: String) -> Result<(), DockerError> {
        let mut world = self.world();
        world.calls.push(call);
        match world.script.engine_down {
            true => Err(DockerError::Failed {
                op: "stub",
                status: "exit status 1".into(),
                stderr: ENGINE_DOWN.into(),
            }),
            false => Ok(()),
        }
    }

    /// The container's life, on a thread of its own: write its output, then end as
    /// scripted.
    fn live(&self, name: String, stdout: io::PipeWriter, stderr: io::PipeWriter) {
        let script = self.world().script.clone();
        let (mut out, mut err) = (stdout, stderr);
        let _ = out.write_all(&script.stdout);
        let _ = err.write_all(&script.stderr);
        let code = if let Some(error) = &script.start_error {
            let _ = writeln!(err, "docker: Error response from daemon: {error}");
            127
        } else if script.runs_until_removed {
            self.wait_for(|w| w.removed.contains(&name));
            137
        } else if let Some(life) = script.lives {
            self.wait_until(Instant::now() + life, |w| w.removed.contains(&name));
            match self.world().removed.contains(&name) {
                true => 137,
                false => script.exit_code,
            }
        } else {
            script.exit_code
        };
        drop((out, err));
        let mut world = self.world();
        if let Some(state) = world.containers.get_mut(&name) {
            state.running = false;
            state.status = "exited".into();
            state.exit_code = code;
        }
        if !script.client_hangs {
            world
                .clients
                .entry(name)
                .or_insert(ExitStatus::from_raw((code as i32 & 0xff) << 8));
        }
        drop(world);
        self.changed();
    }
}

impl Engine for StubEngine {
    fn server_version(&self) -> Result<String, DockerError> {
        self.call("version".into())?;
        Ok("28.0.0-stub".into())
    }

    fn image_id(&self, image: &str) -> Result<Option<String>, DockerError> {
        self.call(format!("image_id {image}"))?;
        Ok(self
            .world()
            .images
            .contains(image)
            .then(|| image.to_string()))
    }

    fn load_image(
        &self,
        feed: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
        _started: &dyn Fn(KillClient),
    ) -> Result<LoadOutput, DockerError> {
        self.call("load".into())?;
        let mut tar = Vec::new();
        feed(&mut tar).map_err(|source| DockerError::Feed { source })?;
        let mut world = self.world();
        world.loaded_bytes = tar.len();
        match world.script.load.clone() {
            Some(Ok(id)) => {
                world.images.insert(id.clone());
                Ok(LoadOutput {
                    output: format!("Loaded image ID: {id}"),
                })
            }
            Some(Err(text)) => Err(DockerError::Failed {
                op: "load",
                status: "exit status 1".into(),
                stderr: text,
            }),
            None => Err(DockerError::Unexpected {
                op: "load",
                detail: "the stub has no load scripted".into(),
            }),
        }
    }

    fn create(
        &self,
        spec: &ContainerSpec,
        _scratch_dir: &Path,
        _started: &dyn Fn(KillClient),
    ) -> Result<(), DockerError> {
        self.call(format!("create {}", spec.name))?;
        let mut world = self.world();
        let failed = |stderr: String| DockerError::Failed {
            op: "create",
            status: "exit status 1".into(),
            stderr,
        };
        if let Some(error) = &world.script.create_error {
            return Err(failed(format!("Error response from daemon: {error}")));
        }
        if world.containers.contains_key(&spec.name) {
            return Err(failed(format!(
                "Error response from daemon: Conflict. The container name \"/{}\" is already in use by container \"0123\"",
                spec.name
            )));
        }
        world.specs.push(spec.clone());
        let state = ContainerState {
            status: "created".into(),
            oom_killed: world.script.oom_killed,
            started_at: NEVER.into(),
            ..Default::default()
        };
        world.containers.insert(spec.name.clone(), state);
        Ok(())
    }

    fn start_attached(&self, name: &str, stdin: bool) -> Result<Box<dyn Client>, DockerError> {
        self.call(format!("start {name}"))?;
        let io_error = |source| DockerError::Io {
            op: "start",
            source,
        };
        let (out_r, out_w) = io::pipe().map_err(io_error)?;
        let (err_r, err_w) = io::pipe().map_err(io_error)?;
        let stdin = match stdin {
            true => Some(self.feed_stdin().map_err(io_error)?),
            false => None,
        };
        {
            let mut world = self.world();
            let start_error = world.script.start_error.clone();
            let Some(state) = world.containers.get_mut(name) else {
                return Err(no_such_container("start", name));
            };
            match start_error {
                Some(error) => state.error = error,
                None => {
                    state.status = "running".into();
                    state.running = true;
                    state.started_at = STARTED_AT.into();
                }
            }
        }
        let (engine, owned) = (self.clone(), name.to_string());
        std::thread::spawn(move || engine.live(owned, out_w, err_w));
        Ok(Box::new(StubClient {
            engine: self.clone(),
            name: name.to_string(),
            stdin,
            stdout: Some(out_r),
            stderr: Some(err_r),
        }))
    }

    fn inspect_state(&self, name: &str) -> Result<ContainerState, DockerError> {
        self.call(format!("inspect {name}"))?;
        self.world()
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| no_such_container("container inspect", name))
    }

    fn container_pid(&self, name: &str) -> Result<Option<u32>, DockerError> {
        self.call(format!("pid {name}"))?;
        if self.world().script.pid_hangs {
            self.wait_for(|w| w.removed.contains(name));
        }
        let world = self.world();
        let running = world.containers.get(name).is_some_and(|c| c.running);
        Ok(world.script.pid.filter(|_| running))
    }

    fn wait(&self, name: &str) -> Result<i64, DockerError> {
        self.call(format!("wait {name}"))?;
        self.wait_for(|w| w.containers.get(name).is_none_or(|c| !c.running));
        self.world()
            .containers
            .get(name)
            .map(|c| c.exit_code)
            .ok_or_else(|| no_such_container("wait", name))
    }

    fn remove(&self, name: &str) -> Result<(), DockerError> {
        self.call(format!("remove {name}"))?;
        let mut world = self.world();
        world.containers.remove(name);
        world.removed.insert(name.to_string());
        drop(world);
        self.changed();
        Ok(())
    }

    fn cgroup_driver(&self) -> Result<String, DockerError> {
        self.call("cgroup_driver".into())?;
        let driver = &self.world().script.cgroup_driver;
        Ok(match driver.is_empty() {
            true => "cgroupfs".into(),
            false => driver.clone(),
        })
    }

    fn guard(&self, _name: &str, _cgroup_parent: Option<&str>) -> io::Result<Option<Guard>> {
        Ok(None)
    }
}

impl StubEngine {
    /// A pipe into the container's stdin; what comes through lands in `World::stdin`.
    fn feed_stdin(&self) -> io::Result<Box<dyn Write + Send>> {
        let (mut r, w) = io::pipe()?;
        let engine = self.clone();
        std::thread::spawn(move || {
            let mut read = Vec::new();
            let _ = r.read_to_end(&mut read);
            engine.world().stdin = read;
        });
        Ok(Box::new(w))
    }
}

fn no_such_container(op: &'static str, name: &str) -> DockerError {
    DockerError::Failed {
        op,
        status: "exit status 1".into(),
        stderr: format!("Error: No such container: {name}"),
    }
}

struct StubClient {
    engine: StubEngine,
    name: String,
    stdin: Option<Box<dyn Write + Send>>,
    stdout: Option<io::PipeReader>,
    stderr: Option<io::PipeReader>,
}

impl Client for StubClient {
    fn take_stdin(&mut self) -> Option<Box<dyn Write + Send>> {
        self.stdin.take()
    }

    fn take_stdout(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stdout.take().map(|r| Box::new(r) as _)
    }

    fn take_stderr(&mut self) -> Option<Box<dyn Read + Send>> {
        self.stderr.take().map(|r| Box::new(r) as _)
    }

    fn wait(&mut self) -> Result<ExitStatus, DockerError> {
        let name = self.name.clone();
        self.engine.wait_for(|w| w.clients.contains_key(&name));
        Ok(self.engine.world().clients[&name])
    }

    fn killer(&self) -> KillClient {
        let (engine, name) = (self.engine.clone(), self.name.clone());
        Arc::new(move || {
            let mut world = engine.world();
            world.calls.push(format!("kill-client {name}"));
            world
                .clients
                .entry(name.clone())
                .or_insert(ExitStatus::from_raw(libc::SIGKILL));
            drop(world);
            engine.changed();
        })
    }
}
