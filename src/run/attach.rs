//! Creating and running the container: the spec, `docker create` (from then on the
//! container may exist, and the cleanup removes it), the Running update, then the attached
//! `docker start`, its stdout and stderr wired to the log pipeline (or, for a
//! `stdout`/`stderr` mount, copied as they are into the output), the tail of the client's
//! stderr kept (its own errors land there), its stdin fed from a file, and the wait for the
//! client to exit. The wait sleeps on the client's exit (a pidfd), nothing polls: the
//! supervisor's helpers end it by killing the client when they must. What the client's end
//! means is exit.rs's to judge.
//!
//! Creating before Running is what lets a container the host cannot create go back to the
//! queue (a Running record can only end Cancelled); the engine also copies the environment
//! at create, so the env file is gone before the container starts.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Map, json};

use crate::docker::{ContainerSpec, DockerError, create_argv, display_argv};
use crate::logging::pipeline::LogPipeline;
use crate::process::{Tail, TailReader, read_on};
use crate::slurm::ContainerCgroups;

use super::cancel::killed_by_cancel;
use super::engine::Client;
use super::exit::{ClientEnd, ExitFacts, engine_state, judge_exit};
use super::finish::Cleanup;
use super::outcome::Outcome;
use super::prepare::Prepared;
use super::spec::{self, SpecInputs};
use super::{ContainerRun, Step};

/// How much of the client's stderr is kept for the exit judge: enough for docker's own
/// error message, which comes after the container's output.
const CLIENT_STDERR_TAIL: usize = 2048;

/// Bytes read from a container's stream at a time, for a raw copy.
const RAW_COPY_SIZE: usize = 64 * 1024;

/// A thread copying one of the container's streams; returns the bytes read.
type Copier = JoinHandle<io::Result<u64>>;

impl ContainerRun<'_> {
    /// Build the container's spec and create the container, not started: from here on it
    /// may exist, and the cleanup removes it. The record is not Running yet, so a failure
    /// to create it (the engine's, the host's) sends it back to the queue. A container of
    /// the same name, left by an earlier crunch-run that was killed before its guard could
    /// act, is removed and the creation tried once more.
    pub(super) fn create(&mut self, prepared: &Prepared) -> Step<ContainerSpec> {
        let (spec, warning) = spec::container_spec(
            &prepared.container,
            &SpecInputs {
                config: self.config,
                image: &prepared.image,
                staged: self.staged.as_ref(),
                token: self.access.as_ref().map(|a| a.token.as_str()),
                pid: std::process::id(),
                cgroup_parent: self.cgroup_parent.as_deref(),
            },
        );
        if let Some(warning) = warning {
            self.say(warning);
        }
        let args = create_argv(&spec)
            .map_err(|e| Outcome::failed(format!("cannot build the docker command: {e}")))?;
        self.check_cancel()?;
        self.cleanup = Some(Cleanup {
            engine: self.engine.clone(),
            name: self.uuid.clone(),
            guard: self.guard.take(),
            cgroups: self
                .config
                .slurm_job
                .clone()
                .zip(self.cgroup_parent.as_deref())
                .and_then(|(job, parent)| ContainerCgroups::new(job, parent)),
            limit: self.retry_limit.clone(),
        });
        // Environment values travel in the docker CLI's own environment, never in argv.
        let argv = args.argv(Path::new("<env-file>"));
        self.say(&format!("Creating: docker {}", display_argv(&argv)));
        let created = match self.create_unless_cancelled(&spec) {
            Err(e) if e.to_string().contains("is already in use by container") => {
                self.say(&format!("Removing leftover docker container {}", self.uuid));
                self.engine.remove(&self.uuid).map_err(|e| {
                    self.not_its_fault(format!(
                        "cannot remove leftover container {}: {e}",
                        self.uuid
                    ))
                })?;
                self.create_unless_cancelled(&spec)
            }
            created => created,
        };
        if let Err(e) = created {
            self.check_cancel()?;
            return Err(self.create_failed(&e));
        }
        Ok(spec)
    }

    /// `docker create`, its client killed at once by a cancel: nothing of the container's
    /// is lost (the record is not Running), and the cleanup removes what the engine made
    /// of it.
    fn create_unless_cancelled(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        killed_by_cancel(&self.cancel, |started| {
            self.engine.create(spec, &self.run_dir, started)
        })
    }

    /// Mark the record Running, the last step before the container starts.
    pub(super) fn set_running(&mut self, prepared: &Prepared) -> Step<()> {
        self.check_cancel()?;
        let running = Map::from_iter([("state".to_string(), json!("Running"))]);
        self.api
            .update_container(&self.uuid, &running)
            .map_err(|e| {
                self.not_its_fault(format!("cannot set the container record to Running: {e}"))
            })?;
        self.progress.running = true;
        self.stats.ram = prepared.container.runtime_constraints.ram;
        Ok(())
    }

    /// Start the container attached, its helpers watching, and judge how it ended.
    pub(super) fn attach(
        &self,
        spec: &ContainerSpec,
        max_run_time: Option<Duration>,
        pipeline: &LogPipeline,
    ) -> Outcome {
        let supervisor = self.supervise(max_run_time, pipeline);
        let ran = self.run_once(spec, pipeline);
        supervisor.stop();
        let client = match ran {
            Ok(client) => client,
            Err(outcome) => return outcome,
        };
        let cancel = self.cancel.reason();
        let facts = ExitFacts {
            client: &client,
            cancel: cancel.as_deref(),
            engine_stuck: self.engine_stuck.load(Ordering::Acquire),
            memory_limit: spec.memory_bytes,
        };
        let say = |line: &str| self.say(line);
        let judged = judge_exit(&facts, || {
            engine_state(&*self.engine, &self.uuid, &say).map_err(|e| e.to_string())
        });
        for note in &judged.notes {
            self.say(note);
        }
        if let Outcome::Failed { reason, .. } = &judged.outcome {
            self.check_broken_node(reason);
        }
        self.say_container_totals();
        judged.outcome
    }

    /// One `docker start --attach`, its streams wired and its stdin fed, until the client
    /// exits. Returns how the client ended and the tail of what it wrote to stderr.
    fn run_once(&self, spec: &ContainerSpec, pipeline: &LogPipeline) -> Step<ClientEnd> {
        self.say("Starting the container");
        let started = std::time::Instant::now();
        let mut client = self
            .engine
            .start_attached(&spec.name, spec.stdin)
            .map_err(|e| self.engine_failure("cannot start docker", &e))?;
        let (copiers, client_tail) = self.wire_output(&mut *client, pipeline);
        let feeder = self.feed_stdin(&mut *client);
        self.client.set(client.killer());
        let waited = client.wait();
        self.client.clear();
        let (succeeded, text) = match waited {
            Ok(status) => (status.success(), format!("docker start exited {status}")),
            Err(e) => (false, format!("docker start failed: {e}")),
        };
        let ran_for = started.elapsed();
        let mut wrote_output = false;
        for (name, copier) in copiers {
            match copier.join() {
                Ok(Ok(bytes)) => wrote_output |= name == "stdout" && bytes > 0,
                Ok(Err(e)) => self.say(&format!("error reading container output: {e}")),
                Err(_) => self.say("error reading container output: reader thread panicked"),
            }
        }
        if let Some(Ok(Err(e))) = feeder.map(JoinHandle::join) {
            self.say(&format!("error feeding the container's stdin: {e}"));
        }
        Ok(ClientEnd {
            succeeded,
            text,
            said: client_tail.map(|t| t.text()).unwrap_or_default(),
            ran_for,
            wrote_output,
        })
    }

    /// Start copying the container's stdout and stderr: into the log pipeline, or as they
    /// are into the file of a `stdout`/`stderr` mount. Returns the copiers, and the tail of
    /// the client's stderr.
    fn wire_output(
        &self,
        client: &mut dyn Client,
        pipeline: &LogPipeline,
    ) -> (Vec<(&'static str, Copier)>, Option<Tail>) {
        let (stderr, client_tail) = match client.take_stderr() {
            Some(r) => {
                let (reader, tail) = TailReader::new(r, CLIENT_STDERR_TAIL);
                (Some(Box::new(reader) as Box<dyn Read + Send>), Some(tail))
            }
            None => (None, None),
        };
        let staged = self.staged.as_ref();
        let streams = [
            (
                "stdout",
                client.take_stdout(),
                staged.and_then(|m| m.stdout.clone()),
            ),
            ("stderr", stderr, staged.and_then(|m| m.stderr.clone())),
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
                    spawn_raw_copy(name, reader, path, self.sayer())
                }
                None => pipeline.spawn_copier(name, reader),
            };
            match spawned {
                Ok(handle) => copiers.push((name, handle)),
                Err(e) => self.say(&format!("cannot start the {name} reader: {e}")),
            }
        }
        (copiers, client_tail)
    }

    /// Start feeding the stdin mount's file to the container, if it has one.
    fn feed_stdin(&self, client: &mut dyn Client) -> Option<Copier> {
        // Taken in any case: dropping it gives the container EOF.
        let stdin = client.take_stdin()?;
        let path = self.staged.as_ref()?.stdin.clone()?;
        match spawn_stdin_feed(path, stdin) {
            Ok(feeder) => Some(feeder),
            Err(e) => {
                self.say(&format!("cannot start feeding the container's stdin: {e}"));
                None
            }
        }
    }
}

/// Copy the container's stream `name` as it is into `path` (a `stdout`/`stderr` mount),
/// on a thread of its own. Read errors are `read_on`'s: the first is said and reading goes
/// on. A file that cannot be written is said once, and the rest is read and dropped, so
/// the container never blocks.
fn spawn_raw_copy(
    name: &'static str,
    mut reader: Box<dyn Read + Send>,
    path: PathBuf,
    say: impl Fn(&str) + Send + 'static,
) -> io::Result<Copier> {
    std::thread::Builder::new()
        .name(format!("raw-copy-{name}"))
        .spawn(move || {
            let cannot_write =
                |e: io::Error| say(&format!("cannot write {name} to {}: {e}", path.display()));
            let mut file = std::fs::File::create(&path).map_err(cannot_write).ok();
            let mut buf = vec![0u8; RAW_COPY_SIZE];
            let take = |data: &[u8]| {
                if let Some(Err(e)) = file.as_mut().map(|f| f.write_all(data)) {
                    cannot_write(e);
                    file = None;
                }
            };
            let what = format!("container {name}");
            Ok(read_on(&mut *reader, &mut buf, take, |trouble| {
                say(&trouble.describe(&what))
            }))
        })
}

/// Feed a file to the container's stdin, then close it. The container may stop reading
/// early: a broken pipe is not an error.
fn spawn_stdin_feed(path: PathBuf, mut stdin: Box<dyn Write + Send>) -> io::Result<Copier> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_io::Scripted;
    use std::sync::{Arc, Mutex};

    fn copy(script: Vec<Result<&'static [u8], &'static str>>, path: PathBuf) -> (u64, Vec<String>) {
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = said.clone();
        let say = move |line: &str| log.lock().unwrap().push(line.to_string());
        let reader = Box::new(Scripted::new(script));
        let copied = spawn_raw_copy("stdout", reader, path, say)
            .unwrap()
            .join()
            .unwrap();
        let said = said.lock().unwrap().clone();
        (copied.unwrap(), said)
    }

    #[test]
    fn a_raw_copy_reads_on_after_a_read_error_and_says_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let script = vec![
            Ok(&b"before "[..]),
            Err("pipe broke"),
            Ok(b"after"),
            Err("again"),
            Ok(b"!"),
        ];
        let (copied, said) = copy(script, path.clone());
        assert_eq!(copied, 13);
        assert_eq!(std::fs::read(&path).unwrap(), b"before after!");
        assert_eq!(
            said,
            ["error reading container stdout: pipe broke; reading on"]
        );
    }

    #[test]
    fn a_raw_copy_into_a_file_it_cannot_write_drains_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/out.txt");
        let (copied, said) = copy(vec![Ok(&b"lost"[..]), Ok(b" too")], path.clone());
        assert_eq!(copied, 8, "read to the end all the same");
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].starts_with(&format!("cannot write stdout to {}: ", path.display())));
    }
}
