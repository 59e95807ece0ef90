//! Everything before the record goes Running: check the record, get the container's token,
//! plan the mounts, find the image (and load it when the engine lacks it), stage the mounts
//! on the host. A failure here ends the run before any user code ran, with its reason.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use serde_json::{Value, json};

use crate::arvados::container::{Container, State, raw_state};
use crate::image::{ImageTar, find_image_tar, stream_image};
use crate::logging::pipeline::LogPipeline;
use crate::mounts::{self, MountPlan};
use crate::progress::CountingWriter;
use crate::redact::Secrets;
use crate::store::{ApiStore, BlockStore, ContainerAccess, StoreError};

use super::cancel::killed_by_cancel;
use super::engine::Engine;
use super::outcome::Outcome;
use super::spec::usable_cgroup_parent;
use super::{ContainerRun, Step};

/// What the record check found.
pub(super) enum Fetched {
    /// A record crunch-run may run, and its state.
    Run(Value, State),
    /// A record in a state crunch-run may run that it cannot read (issue 10, point 6):
    /// closed as a failure before Running, with the reason.
    Close(State, String),
    /// Nothing crunch-run may touch; why was said on stderr.
    Leave,
}

/// The record and its state, if crunch-run may run it; else says why on stderr.
pub(super) fn fetch_record(api: &dyn ApiStore, uuid: &str, secrets: &Secrets) -> Fetched {
    let record = match api.get_container(uuid) {
        Ok(r) => r,
        Err(e) => {
            let why = secrets.redact(&e.to_string());
            eprintln!("crunch-run: {uuid}: cannot fetch the container record: {why}");
            return match unreadable_state(&e) {
                Some(state) => Fetched::Close(
                    state,
                    format!("crunch-run cannot read the container record: {why}"),
                ),
                None => Fetched::Leave,
            };
        }
    };
    match raw_state(&record) {
        Ok(s @ (State::Locked | State::Queued)) => Fetched::Run(record, s),
        Ok(other) => {
            eprintln!(
                "crunch-run: {uuid}: container is {other}; crunch-run runs only Locked (or, with the 2016 API, Queued) containers. Nothing was changed."
            );
            Fetched::Leave
        }
        Err(e) => {
            eprintln!("crunch-run: {uuid}: {e}; nothing was changed.");
            Fetched::Leave
        }
    }
}

/// The state of a record that came back but cannot be decoded, when that state is one
/// crunch-run may run (and so close).
fn unreadable_state(err: &StoreError) -> Option<State> {
    let StoreError::Undecodable {
        state: Some(state), ..
    } = err
    else {
        return None;
    };
    match raw_state(&json!({ "state": &**state })) {
        Ok(s @ (State::Locked | State::Queued)) => Some(s),
        _ => None,
    }
}

/// The container's token, then its secret mounts, fetched on a thread of their own. They
/// need only the container's UUID, so `run` starts them beside the record's fetch: the
/// record, the token, and then the secret mounts beside the image collection, cost two
/// round trips rather than four. Nothing is said or used until the record was checked
/// (`join`): a record crunch-run does not run leaves the answers unread.
pub(super) struct AccessFetch {
    thread: Option<JoinHandle<AccessAnswers>>,
    /// Where to ask again if no thread could be started.
    api: Arc<dyn ApiStore>,
    uuid: String,
}

type AccessAnswers = (
    Result<Option<ContainerAccess>, StoreError>,
    Option<Result<Value, StoreError>>,
);

impl AccessFetch {
    pub(super) fn start(api: Arc<dyn ApiStore>, uuid: &str) -> AccessFetch {
        let (asker, id) = (api.clone(), uuid.to_string());
        let thread = std::thread::Builder::new()
            .name("container-token".into())
            .spawn(move || fetch_access(&*asker, &id))
            .ok();
        AccessFetch {
            thread,
            api,
            uuid: uuid.to_string(),
        }
    }

    /// The token and the secret mounts. The 2016 API (a Queued record, `legacy`) had no
    /// container tokens, whatever the request answered; without a token (that, or the
    /// local store) there are no secret mounts.
    fn join(self, legacy: bool) -> Step<(Option<ContainerAccess>, Value)> {
        if legacy {
            return Ok((None, json!({})));
        }
        let answers = match self.thread.map(JoinHandle::join) {
            Some(Ok(answers)) => answers,
            Some(Err(_)) => {
                return Err(Outcome::failed(
                    "getting the container's token failed unexpectedly",
                ));
            }
            None => fetch_access(&*self.api, &self.uuid),
        };
        let access = answers
            .0
            .map_err(|e| Outcome::failed(format!("cannot get the container's token: {e}")))?;
        let secret_mounts = match answers.1 {
            Some(answer) => answer
                .map_err(|e| Outcome::failed(format!("cannot fetch the secret mounts: {e}")))?,
            None => json!({}),
        };
        Ok((access, secret_mounts))
    }
}

/// The container's token, then (with one) its secret mounts, read as the container.
fn fetch_access(api: &dyn ApiStore, uuid: &str) -> AccessAnswers {
    let access = api.container_access(uuid);
    let secret_mounts = match &access {
        Ok(Some(access)) => Some(access.api.secret_mounts(uuid)),
        _ => None,
    };
    (access, secret_mounts)
}

/// The engine's list of images, asked for on a thread of its own.
pub(super) type ImageList = JoinHandle<Option<Vec<String>>>;

/// Ask the engine for its images at once, once the record is known to be one to run:
/// nothing before the image check needs the engine, and with a fast API (or the local
/// store) the list would otherwise be the one thing the image check waits for. `None`
/// when no thread can be started.
pub(super) fn list_images(engine: Arc<dyn Engine>) -> Option<ImageList> {
    std::thread::Builder::new()
        .name("image-list".into())
        .spawn(move || engine.image_ids())
        .ok()
}

/// What the run goes on with once prepared.
pub(super) struct Prepared {
    pub container: Container,
    /// The image's id, as the engine knows it.
    pub image: String,
}

/// What the requests that need only the record brought back (and the container's own
/// token and stores, kept in the run's `access`).
struct Gathered {
    /// Read with the container's token; an empty object without one.
    secret_mounts: Value,
    /// The image tar, and whether the engine has it already.
    image: Step<(ImageTar, bool)>,
}

impl ContainerRun<'_> {
    /// The steps before Running, in order: check the record; gather what it names (token,
    /// secret mounts, image); plan the mounts; get the image into the engine; stage the
    /// mounts. A cancel is looked for between the steps that take long.
    pub(super) fn prepare(&mut self, record: &Value, pipeline: &LogPipeline) -> Step<Prepared> {
        let container = Container::from_json(record).map_err(|e| Outcome::failed(e.to_string()))?;
        let gathered = self.gather(&container)?;
        let plan = self.plan_mounts(&container, &gathered.secret_mounts)?;
        let (tar, present) = gathered.image?;
        self.check_cancel()?;
        if present {
            self.say("Docker image is available");
        } else {
            self.load_image(&tar)?;
        }
        self.check_cancel()?;
        if let Some(plan) = plan {
            let fuse = self.start_keep_mount(&container, &plan, pipeline)?;
            self.stage_mounts(&plan, fuse.as_deref())?;
        }
        self.check_cancel()?;
        // Keep must work before the record goes Running: the logs are saved there.
        self.blocks
            .ready()
            .map_err(|e| Outcome::failed(format!("cannot reach Keep: {e}")))?;
        Ok(Prepared {
            container,
            image: tar.id,
        })
    }

    /// The requests that need only the record, side by side: the container's token and
    /// then its secret mounts (API calls, begun beside the record's fetch: `AccessFetch`),
    /// the engine's cgroup driver when a cgroup parent is wanted on another, the image (its
    /// collection, then the engine's list begun in `run_with`) on this one. The token's
    /// failure is reported first, the image's only after the mount plan's (by `prepare`).
    fn gather(&mut self, container: &Container) -> Step<Gathered> {
        let parent = self.config.container.cgroup_parent.as_deref();
        let early = self.early_access.take();
        let legacy = self.progress.legacy_api;
        let (access, image, driver) = std::thread::scope(|s| {
            let access = s.spawn(|| match early {
                Some(fetch) => fetch.join(legacy),
                None => AccessFetch::start(self.api.clone(), &self.uuid).join(legacy),
            });
            let driver = parent.map(|_| s.spawn(|| self.engine.cgroup_driver()));
            // Without the early list (no thread for it), `find_image` asks the engine
            // about the one image instead.
            let listed = self.early_images.take();
            let image = self.find_image(&container.container_image, || {
                listed.and_then(|list| list.join().ok().flatten())
            });
            (access.join(), image, driver.map(|d| d.join()))
        });
        if let (Some(parent), Some(driver)) = (parent, driver) {
            let driver = match driver {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err("the question failed unexpectedly".into()),
            };
            let (usable, warning) = usable_cgroup_parent(parent, driver);
            if let Some(warning) = warning {
                self.say(&warning);
            }
            self.cgroup_parent = usable;
        }
        let (access, secret_mounts) = access.unwrap_or_else(|_| {
            Err(Outcome::failed(
                "getting the container's token failed unexpectedly",
            ))
        })?;
        if let Some(a) = &access {
            self.secrets.add(&a.token);
        }
        self.access = access;
        Ok(Gathered {
            secret_mounts,
            image,
        })
    }

    /// Check the record's mounts and secret mounts. A record without any mounts (as in
    /// the 2016 API's tests) runs without an output directory.
    fn plan_mounts(&self, container: &Container, secret_mounts: &Value) -> Step<Option<MountPlan>> {
        let no_mounts = container.mounts.as_object().is_none_or(|m| m.is_empty());
        let no_secrets = secret_mounts.as_object().is_none_or(|m| m.is_empty());
        if no_mounts && no_secrets {
            self.say("The record has no mounts: the output will not be captured");
            return Ok(None);
        }
        mounts::parse_mounts(&container.mounts, secret_mounts, &container.output_path)
            .map(Some)
            .map_err(|e| Outcome::failed(format!("While setting up mounts: {e}")))
    }

    /// Lay the planned mounts out on the host, read as the container.
    /// Read-only collections come from the arv-mount at `fuse`, if there is one.
    fn stage_mounts(&mut self, plan: &MountPlan, fuse: Option<&Path>) -> Step<()> {
        let (api, blocks) = self.container_stores();
        let say = self.sayer();
        let staged = mounts::stage_with(plan, &*api, &*blocks, &self.mounts_dir(), fuse, &say)
            .map_err(|e| Outcome::failed(format!("While setting up mounts: {e}")))?;
        for secret in &staged.secrets {
            self.secrets.add(secret);
        }
        self.staged = Some(staged);
        Ok(())
    }

    /// The stores that act as the container (its token), or ours when there is none.
    pub(super) fn container_stores(&self) -> (Arc<dyn ApiStore>, Arc<dyn BlockStore>) {
        match &self.access {
            Some(a) => (a.api.clone(), a.blocks.clone()),
            None => (self.api.clone(), self.blocks.clone()),
        }
    }

    pub(super) fn mounts_dir(&self) -> PathBuf {
        self.run_dir.join("mounts")
    }

    /// The image tar of the record's image collection, and whether the engine has it: in
    /// the engine's list of images (`listed`, asked beside the collection), or else as
    /// `docker image inspect` answers.
    fn find_image(
        &self,
        pdh: &str,
        listed: impl FnOnce() -> Option<Vec<String>>,
    ) -> Step<(ImageTar, bool)> {
        self.say(&format!("Fetching Docker image from collection '{pdh}'"));
        self.engine_asked.store(true, Ordering::Relaxed);
        let tar = find_image_tar(&*self.api, pdh).map_err(|e| Outcome::failed(e.to_string()));
        let listed = listed();
        let tar = tar?;
        self.say(&format!("Using Docker image id '{}'", tar.id));
        let bare = |id: &str| id.trim_start_matches("sha256:").to_string();
        if listed.is_some_and(|ids| ids.iter().any(|id| bare(id) == bare(&tar.id))) {
            return Ok((tar, true));
        }
        match self.engine.image_id(&tar.id) {
            Ok(found) => Ok((tar, found.is_some())),
            Err(e) if e.is_engine_down() => {
                Err(self.engine_failure("docker engine is unreachable", &e))
            }
            Err(e) => {
                let what = format!("cannot inspect docker image {}", tar.id);
                Err(self.engine_failure(&what, &e))
            }
        }
    }

    fn load_image(&self, tar: &ImageTar) -> Step<()> {
        self.say(&format!(
            "Loading Docker image from keep ({} bytes)",
            tar.file.size
        ));
        let cancel = self.cancel.clone();
        let keep_going = move || match cancel.reason() {
            Some(reason) => Err(io::Error::other(format!("cancelled: {reason}"))),
            None => Ok(()),
        };
        let blocks = self.blocks.clone();
        let progress = self.progress_of("Loading the image", Some(tar.file.size));
        let mut feed = |stdin: &mut dyn Write| {
            let mut counted = CountingWriter::new(stdin, &progress);
            stream_image(&*blocks, tar, &mut counted, &keep_going)
        };
        let loaded = killed_by_cancel(&self.cancel, |started| {
            self.engine.load_image(&mut feed, started)
        });
        progress.finish();
        let loaded = loaded.map_err(|e| match self.cancel.reason() {
            Some(reason) => self.cancelled(reason),
            None => self.engine_failure("failed to load container image", &e),
        })?;
        for line in loaded.output.lines() {
            self.say(&format!("docker load: {line}"));
        }
        match self.engine.image_id(&tar.id) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(Outcome::failed(format!(
                "docker load finished but image {} is not in the engine: the tar holds a different image",
                tar.id
            ))),
            Err(e) => Err(Outcome::failed(format!(
                "cannot inspect docker image {} after loading: {e}",
                tar.id
            ))),
        }
    }
}
