//! arv-mount in the run: choosing FUSE or staging for the collection mounts
//! (`--keep-mount`, said in crunch-run.txt), starting the one arv-mount of the run before
//! staging (its stderr into arv-mount.txt, its resident set into hoststat), the supervisor
//! helper that cancels the run if arv-mount dies while the container runs, and the stop
//! (unmount, reap) once the output is captured, or at the wrap-up whatever happened.
//! How arv-mount is started and stopped is mounts/arv_mount.rs's.

use std::path::PathBuf;

use serde_json::json;

use crate::arvados::container::Container;
use crate::config::Backend;
use crate::logging::pipeline::LogPipeline;
use crate::mounts::arv_mount::{self, ArvMount, Choice, FuseHost, Settings, WarningScan};
use crate::mounts::{MountKind, MountPlan};

use super::outcome::Outcome;
use super::supervisor::Supervisor;
use super::{ContainerRun, Step};

/// Whether the plan has anything arv-mount would serve (read-only collections, a stdin
/// collection file), and whether any of them is named by UUID.
fn collections_in(plan: &MountPlan) -> (bool, bool) {
    let mut any = false;
    let mut by_uuid = false;
    for m in plan.mounts.iter().chain(plan.stdin.iter()) {
        if let MountKind::Collection {
            uuid,
            writable: false,
            ..
        } = &m.kind
        {
            any = true;
            by_uuid |= uuid.is_some();
        }
    }
    (any, by_uuid)
}

impl ContainerRun<'_> {
    /// The arv-mount this plan's collections are served from, started and ready; `None`
    /// for staging (and when nothing needs it). Says which and why.
    pub(super) fn start_keep_mount(
        &mut self,
        container: &Container,
        plan: &MountPlan,
        pipeline: &LogPipeline,
    ) -> Step<Option<PathBuf>> {
        let (any, by_uuid) = collections_in(plan);
        if !any {
            return Ok(None);
        }
        let path = self
            .config
            .docker
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let local = matches!(self.config.backend, Backend::Local(_));
        let host = FuseHost::this_host();
        let (choice, why) = arv_mount::choose(self.config.keep_mount, local, path, &host)
            .map_err(|e| Outcome::failed(format!("While setting up mounts: {e}")))?;
        self.say(&format!("Collection mounts: {why}"));
        let Choice::Fuse(program) = choice else {
            return Ok(None);
        };
        let settings = self.arv_mount_settings(program, container, !by_uuid)?;
        let report = self.warning_reporter();
        let output = |stderr| {
            let scanned = Box::new(WarningScan::new(stderr, report));
            if let Err(e) = pipeline.spawn_copier("arv-mount", scanned) {
                self.say(&format!("Warning: arv-mount's output is not logged: {e}"));
            }
        };
        let mount_point = self.run_dir.join("keep");
        let argv: Vec<String> = settings
            .argv(&mount_point)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.say(&format!("Starting arv-mount {}", argv.join(" ")));
        let cancel = self.cancel.clone();
        let cancelled = move || cancel.reason();
        let started = ArvMount::start(
            &settings,
            &mount_point,
            output,
            arv_mount::READY_TIMEOUT,
            &cancelled,
        );
        let mount = started.map_err(|e| match self.cancel.reason() {
            Some(reason) => Outcome::Cancelled {
                reason,
                exit_code: None,
            },
            None => Outcome::failed(format!("While setting up mounts: {e}")),
        })?;
        self.say(&format!("arv-mount is ready at {}", mount_point.display()));
        self.report_process("arv-mount", mount.pid());
        self.arv_mount = Some(mount);
        Ok(Some(mount_point))
    }

    /// What records arv-mount's first known warning in `runtime_status`.
    fn warning_reporter(&self) -> impl FnOnce(&str, &str) + Send + 'static {
        let (api, uuid, say) = (self.api.clone(), self.uuid.clone(), self.sayer());
        // On a thread of its own: the copier must keep draining arv-mount's stderr (a full
        // pipe would stall arv-mount, and the container's reads with it) while the API
        // retries.
        move |pattern: &str, line: &str| {
            let status = json!({"warning": format!("arv-mount: {pattern}"), "warningDetail": line});
            let mut fields = serde_json::Map::new();
            fields.insert("runtime_status".into(), status);
            let update = move || {
                if let Err(e) = api.update_container(&uuid, &fields) {
                    say(&format!(
                        "Warning: cannot record arv-mount's warning in runtime_status: {e}"
                    ));
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("arv-mount-warning".into())
                .spawn(update)
            {
                eprintln!("crunch-run: cannot record arv-mount's warning: {e}");
            }
        }
    }

    fn arv_mount_settings(
        &self,
        program: PathBuf,
        container: &Container,
        pdh_only: bool,
    ) -> Step<Settings> {
        let Backend::Arvados(env) = &self.config.backend else {
            return Err(Outcome::failed("arv-mount cannot serve a local store"));
        };
        let token = match &self.access {
            Some(access) => access.token.clone(),
            None => env.token.clone(),
        };
        let rc = &container.runtime_constraints;
        Ok(Settings {
            program,
            base_env: self.config.docker.env.clone(),
            api_host: env.host.clone(),
            token,
            insecure: env.insecure,
            ca_file: env.ca_file.clone(),
            keep_cache_ram: rc.keep_cache_ram,
            keep_cache_disk: rc
                .keep_cache_disk
                .map(|bytes| (bytes, self.run_dir.join("keepcache"))),
            crunchstat_interval: self.config.crunchstat_interval,
            storage_classes: Vec::new(),
            pdh_only,
        })
    }

    /// The helper that cancels the run when arv-mount exits while the container runs.
    pub(super) fn watch_arv_mount(&self, supervisor: &mut Supervisor) {
        let Some(mount) = &self.arv_mount else {
            return;
        };
        let (exited, cancel) = (mount.exited(), self.cancel.clone());
        let status = mount.status_handle();
        supervisor.spawn("arv-mount", move |stop| {
            crossbeam_channel::select! {
                recv(stop.channel()) -> _ => {}
                recv(exited) -> _ => {
                    cancel.cancel(&format!(
                        "arv-mount exited while the container was running ({})",
                        status.describe()
                    ));
                }
            }
        });
    }

    /// Unmount and reap arv-mount, if there is one; what went wrong goes to crunch-run.txt.
    pub(super) fn stop_arv_mount(&self) {
        if let Some(mount) = &self.arv_mount {
            for problem in mount.stop() {
                self.say(&format!("Warning: {problem}"));
            }
        }
    }
}
