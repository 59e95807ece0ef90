//! Everything before the record goes Running: check the record, get the container's token,
//! plan the mounts, find the image (and load it when the engine lacks it), stage the mounts
//! on the host. A failure here ends the run before any user code ran, with its reason.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::arvados::container::Container;
use crate::image::{ImageTar, find_image_tar, stream_image};
use crate::mounts::{self, MountPlan};
use crate::store::{ApiStore, BlockStore};

use super::outcome::Outcome;
use super::{ContainerRun, Step};

/// What the run goes on with once prepared.
pub(super) struct Prepared {
    pub container: Container,
    /// The image's id, as the engine knows it.
    pub image: String,
}

impl ContainerRun<'_> {
    /// Validate the record, check the engine, get the image into it, stage the mounts.
    pub(super) fn prepare(&mut self, record: &Value) -> Step<Prepared> {
        let container = Container::from_json(record).map_err(|e| Outcome::failed(e.to_string()))?;
        // The container's token (an API call) while docker is asked about the image.
        let (access, image) = std::thread::scope(|s| {
            // The 2016 API (a Queued record) had no container tokens.
            let access = s.spawn(|| match self.progress.legacy_api {
                true => Ok(None),
                false => self.api.container_access(&self.uuid),
            });
            let image = self.find_image(&container.container_image);
            (access.join(), image)
        });
        match access {
            Ok(Ok(access)) => {
                if let Some(a) = &access {
                    self.secrets.add(&a.token);
                }
                self.access = access;
            }
            Ok(Err(e)) => {
                return Err(Outcome::failed(format!(
                    "cannot get the container's token: {e}"
                )));
            }
            Err(_) => {
                return Err(Outcome::failed(
                    "getting the container's token failed unexpectedly",
                ));
            }
        }
        let mount_plan = self.plan_mounts(&container)?;
        let (tar, present) = image?;
        self.check_cancel()?;
        if present {
            self.say("Docker image is available");
        } else {
            self.load_image(&tar)?;
        }
        self.check_cancel()?;
        if let Some(plan) = &mount_plan {
            let (api, blocks) = self.container_stores();
            let say = |line: &str| self.say(line);
            let staged = mounts::stage(plan, &*api, &*blocks, &self.mounts_dir(), &say)
                .map_err(|e| Outcome::failed(format!("While setting up mounts: {e}")))?;
            for secret in &staged.secrets {
                self.secrets.add(secret);
            }
            self.staged = Some(staged);
        }
        self.check_cancel()?;
        Ok(Prepared {
            container,
            image: tar.id,
        })
    }

    /// Check the record's mounts and secret mounts. A record without any mounts (as in
    /// the 2016 API's tests) runs without an output directory.
    fn plan_mounts(&self, container: &Container) -> Step<Option<MountPlan>> {
        // Secret mounts are read with the container's token; without one (the local
        // store, the 2016 API) there are none.
        let secret_mounts = match &self.access {
            Some(access) => access
                .api
                .secret_mounts(&self.uuid)
                .map_err(|e| Outcome::failed(format!("cannot fetch the secret mounts: {e}")))?,
            None => json!({}),
        };
        let no_mounts = container.mounts.as_object().is_none_or(|m| m.is_empty());
        let no_secrets = secret_mounts.as_object().is_none_or(|m| m.is_empty());
        if no_mounts && no_secrets {
            self.say("The record has no mounts: the output will not be captured");
            return Ok(None);
        }
        mounts::parse_mounts(&container.mounts, &secret_mounts, &container.output_path)
            .map(Some)
            .map_err(|e| Outcome::failed(format!("While setting up mounts: {e}")))
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

    /// The image tar of the record's image collection, and whether the engine has it.
    fn find_image(&self, pdh: &str) -> Step<(ImageTar, bool)> {
        self.say(&format!("Fetching Docker image from collection '{pdh}'"));
        let tar = find_image_tar(&*self.api, pdh).map_err(|e| Outcome::failed(e.to_string()))?;
        self.say(&format!("Using Docker image id '{}'", tar.id));
        self.engine_asked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        match self.engine.image_id(&tar.id) {
            Ok(found) => Ok((tar, found.is_some())),
            Err(e) if e.is_engine_down() => Err(Outcome::failed(format!(
                "docker engine is unreachable: {e}"
            ))),
            Err(e) => Err(Outcome::failed(format!(
                "cannot inspect docker image {}: {e}",
                tar.id
            ))),
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
        let mut feed = |stdin: &mut dyn Write| stream_image(&*blocks, tar, stdin, &keep_going);
        let loaded = self.engine.load_image(&mut feed).map_err(|e| {
            if let Some(reason) = self.cancel.reason() {
                Outcome::Cancelled {
                    reason,
                    exit_code: None,
                }
            } else {
                Outcome::failed(format!("failed to load container image: {e}"))
            }
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
