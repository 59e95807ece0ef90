//! The attached `docker run`: its stdout and stderr wired to the log pipeline (or, for a
//! `stdout`/`stderr` mount, copied as they are into the output), its stdin fed from a file,
//! and the wait for the client to exit. What the client's end means is exit.rs's to judge.

use std::io;
use std::path::PathBuf;

use crate::docker::{ContainerSpec, DockerError};

use super::engine::Client;
use crate::logging::pipeline::LogPipeline;
use crate::process::TailReader;

use super::exit::ClientEnd;
use super::outcome::Outcome;
use super::{ContainerRun, Step};

impl ContainerRun<'_> {
    /// One `docker run`, its streams wired to the logs (or to stdout/stderr mounts) and
    /// its stdin fed, until the client exits. Returns how the client ended and the tail of
    /// what it wrote to stderr (its own errors land there, after the container's).
    pub(super) fn run_once(&self, spec: &ContainerSpec, pipeline: &LogPipeline) -> Step<ClientEnd> {
        let mut attached = self
            .engine
            .run_attached(spec, &self.run_dir)
            .map_err(|e| Outcome::failed(format!("cannot run docker: {e}")))?;
        let (stderr, client_tail) = match attached.take_stderr() {
            Some(r) => {
                let (reader, tail) = TailReader::new(r, 2048);
                (
                    Some(Box::new(reader) as Box<dyn io::Read + Send>),
                    Some(tail),
                )
            }
            None => (None, None),
        };
        let (stdout_file, stderr_file, stdin_file) = match &self.staged {
            Some(m) => (m.stdout.clone(), m.stderr.clone(), m.stdin.clone()),
            None => (None, None, None),
        };
        let streams: [Stream; 2] = [
            (
                "stdout",
                attached.take_stdout().map(|r| Box::new(r) as _),
                stdout_file,
            ),
            ("stderr", stderr, stderr_file),
        ];
        let mut copiers = Vec::new();
        for (name, reader, redirect) in streams {
            let Some(reader) = reader else { continue };
            let spawned = match redirect {
                Some(path) => {
                    self.say(&format!(
                        "{name} is written as is to {}, in the output",
                        path.display()
                    ));
                    spawn_raw_copy(reader, path)
                }
                None => pipeline.spawn_copier(name, reader),
            };
            match spawned {
                Ok(handle) => copiers.push(handle),
                Err(e) => self.say(&format!("cannot start the {name} reader: {e}")),
            }
        }
        let feeder = match (attached.take_stdin(), stdin_file) {
            (Some(stdin), Some(path)) => match spawn_stdin_feed(path, stdin) {
                Ok(feeder) => Some(feeder),
                Err(e) => {
                    self.say(&format!("cannot start feeding the container's stdin: {e}"));
                    None
                }
            },
            _ => None,
        };
        let (succeeded, text) = match self.wait_for_client(&mut attached) {
            Ok(status) => (status.success(), format!("docker run exited {status}")),
            Err(e) => (false, format!("docker run failed: {e}")),
        };
        for copier in copiers {
            match copier.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.say(&format!("error reading container output: {e}")),
                Err(_) => self.say("error reading container output: reader thread panicked"),
            }
        }
        if let Some(Ok(Err(e))) = feeder.map(|f| f.join()) {
            self.say(&format!("error feeding the container's stdin: {e}"));
        }
        let said = client_tail.map(|t| t.text()).unwrap_or_default();
        Ok(ClientEnd {
            succeeded,
            text,
            said,
        })
    }

    /// Wait for the docker client, with the watchdog checking on the container meanwhile.
    ///
    /// A cancel removes the container at once (signal thread), but one that comes while
    /// `docker run` is still creating the container finds nothing to remove: so, while the
    /// client lives, a cancelled run keeps removing. A client still there `CLIENT_GRACE`
    /// after a cancel, or one the watchdog gave up on, is killed: the engine is then stuck,
    /// and the container may stay on the host under its name until the engine recovers.
    fn wait_for_client(
        &self,
        attached: &mut Box<dyn Client>,
    ) -> Result<std::process::ExitStatus, DockerError> {
        const TICK: std::time::Duration = std::time::Duration::from_millis(500);
        const CLIENT_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
        let (client_alive, client_gone) = crossbeam_channel::bounded::<()>(0);
        self.start_watchdog(&client_gone);
        // Removal may hang with the engine: on a thread of its own, left to end by itself.
        let (engine, cancel, name) = (self.engine.clone(), self.cancel.clone(), self.uuid.clone());
        let removing = client_gone.clone();
        let spawned = std::thread::Builder::new()
            .name("remove-on-cancel".into())
            .spawn(move || {
                while removing.recv_timeout(TICK)
                    == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    if cancel.reason().is_some() {
                        let _ = engine.remove(&name);
                    }
                }
            });
        if let Err(e) = spawned {
            self.say(&format!(
                "Warning: cannot start the thread that removes a cancelled container: {e}"
            ));
        }
        let mut cancelled_at = None;
        let status = loop {
            if let Some(status) = attached.wait_timeout(TICK)? {
                break status;
            }
            if self.cancel.reason().is_none() {
                continue;
            }
            let since = *cancelled_at.get_or_insert_with(std::time::Instant::now);
            let why = if self.engine_stuck.load(std::sync::atomic::Ordering::Acquire) {
                "the docker watchdog gave up on docker run".to_string()
            } else if since.elapsed() >= CLIENT_GRACE {
                format!(
                    "docker run did not end within {} of the cancel",
                    humantime::format_duration(CLIENT_GRACE)
                )
            } else {
                continue;
            };
            self.say(&format!("{why}: killing the docker client"));
            attached.kill_client();
            break attached.wait()?;
        };
        drop(client_alive);
        Ok(status)
    }

    /// Check on the container every `watchdog_interval` until `stop` disconnects; when the
    /// watchdog gives up, mark the engine stuck and cancel the run with its reason.
    fn start_watchdog(&self, stop: &crossbeam_channel::Receiver<()>) {
        let Some(interval) = self.watchdog_interval else {
            return;
        };
        let (engine, name, log, secrets) = (
            self.engine.clone(),
            self.uuid.clone(),
            self.log.clone(),
            self.secrets.clone(),
        );
        let (stop, stuck, cancel) = (stop.clone(), self.engine_stuck.clone(), self.cancel.clone());
        let spawned = std::thread::Builder::new()
            .name("docker-watchdog".into())
            .spawn(move || {
                let say = |text: &str| log.line(&secrets.redact(text));
                crate::docker::watch(
                    interval,
                    &stop,
                    || engine.inspect_state(&name),
                    say,
                    // The cancel logs the reason.
                    |reason| {
                        stuck.store(true, std::sync::atomic::Ordering::Release);
                        cancel.cancel(&reason);
                    },
                );
            });
        if let Err(e) = spawned {
            self.say(&format!("Warning: cannot start the docker watchdog: {e}"));
        }
    }
}

/// A container stream: its name, the reader, and the file it is redirected to, if any.
type Stream = (
    &'static str,
    Option<Box<dyn io::Read + Send>>,
    Option<PathBuf>,
);

/// Copy a container stream as is into a file (a `stdout`/`stderr` mount).
fn spawn_raw_copy(
    mut reader: Box<dyn io::Read + Send>,
    path: PathBuf,
) -> io::Result<std::thread::JoinHandle<io::Result<u64>>> {
    std::thread::Builder::new()
        .name("raw-copy".into())
        .spawn(move || {
            let copied =
                std::fs::File::create(&path).and_then(|mut file| io::copy(&mut reader, &mut file));
            // Drain the rest even if the file failed, so the container never blocks.
            let _ = io::copy(&mut reader, &mut io::sink());
            copied
        })
}

/// Feed a file to the container's stdin, then close it. The container may stop reading
/// early: a broken pipe is not an error.
fn spawn_stdin_feed(
    path: PathBuf,
    mut stdin: Box<dyn io::Write + Send>,
) -> io::Result<std::thread::JoinHandle<io::Result<u64>>> {
    std::thread::Builder::new()
        .name("stdin-feed".into())
        .spawn(move || {
            let mut file = std::fs::File::open(&path)?;
            match io::copy(&mut file, &mut stdin) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
                other => other,
            }
        })
}
