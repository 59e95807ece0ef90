//! The `ContainerSpec` for `docker create`, from the record, the staged mounts and the
//! configuration: a pure function, tested without an engine (as Go's docker_test does).
//! Turning the spec into docker words is docker/argv.rs's job.

use crate::arvados::container::Container;
use crate::config::{ApiEnv, Backend, Config};
use crate::docker::{Bind, ContainerSpec, Gpus};
use crate::mounts::StagedMounts;

/// Where the Arvados SDKs in a container look for the CA bundle.
const CA_BUNDLE_IN_CONTAINER: &str = "/etc/arvados/ca-certificates.crt";

/// What the spec is built from besides the record.
pub(super) struct SpecInputs<'a> {
    pub config: &'a Config,
    /// The image id, as the engine knows it.
    pub image: &'a str,
    pub staged: Option<&'a StagedMounts>,
    /// The container's own token, when the store gave one.
    pub token: Option<&'a str>,
    /// crunch-run's pid, for the container's label.
    pub pid: u32,
    /// The cgroup parent the engine can take ([`usable_cgroup_parent`]).
    pub cgroup_parent: Option<&'a str>,
}

/// The spec, and a warning for crunch-run.txt when the record asks for what this run
/// cannot give.
pub(super) fn container_spec(
    container: &Container,
    inputs: &SpecInputs,
) -> (ContainerSpec, Option<&'static str>) {
    let rc = &container.runtime_constraints;
    let uuid = &inputs.config.container_uuid;
    let mut env: Vec<(String, String)> = container
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let api_env = match &inputs.config.backend {
        Backend::Arvados(env) => Some(env),
        Backend::Local(_) => None,
    };
    let mut warning = None;
    if rc.api {
        match (api_env, inputs.token) {
            (Some(api), Some(token)) => env.extend(api_vars(api, token)),
            _ => warning = Some(NO_API_SERVER),
        }
    }
    let setup = &inputs.config.container;
    let gpus = (rc.gpu_count > 0).then(|| match &inputs.config.gpu_devices {
        Some(ids) => Gpus::Devices(ids.clone()),
        None => Gpus::Count(rc.gpu_count),
    });
    let spec = ContainerSpec {
        name: uuid.clone(),
        image: inputs.image.to_string(),
        command: container.command.clone(),
        cwd: container.cwd.clone(),
        env,
        network: (rc.api || setup.network_always).then(|| setup.network_mode.clone()),
        labels: vec![
            ("org.arvados.container_uuid".into(), uuid.clone()),
            ("org.arvados.crunch-run.pid".into(), inputs.pid.to_string()),
        ],
        memory_bytes: rc.ram.filter(|_| setup.memory_limit),
        cpus: rc.vcpus,
        gpus,
        binds: binds(inputs.staged, api_env.filter(|_| rc.api)),
        stdin: inputs.staged.is_some_and(|m| m.stdin.is_some()),
        cgroup_parent: inputs.cgroup_parent.map(str::to_string),
    };
    (spec, warning)
}

const NO_API_SERVER: &str = "Warning: the container asks for API access, but this run has no API server (local store): none is given";

/// The cgroup parent to give the engine, whose cgroup driver is `driver` (or could not be
/// asked), and a warning for crunch-run.txt when it is not quite `parent`. docker's systemd
/// driver takes only a slice name (`x.slice`), never a path like Slurm's: the parent is
/// then its last part if that is a slice, else none (docker would refuse the container).
pub(super) fn usable_cgroup_parent(
    parent: &str,
    driver: Result<String, String>,
) -> (Option<String>, Option<String>) {
    match driver.as_deref() {
        Ok("systemd") => match parent.rsplit('/').next().filter(|n| n.ends_with(".slice")) {
            Some(slice) => (Some(slice.to_string()), None),
            None => (
                None,
                Some(format!(
                    "Warning: -cgroup-parent-subsystem ignored: docker uses the systemd cgroup \
                     driver, which takes only a slice (\"name.slice\") as a cgroup parent, not \
                     {parent}; the container runs outside this job's cgroup and its limits. \
                     Run dockerd with --exec-opt native.cgroupdriver=cgroupfs"
                )),
            ),
        },
        Ok(_) => (Some(parent.to_string()), None),
        Err(e) => (
            Some(parent.to_string()),
            Some(format!(
                "Warning: cannot ask docker for its cgroup driver ({e}); passing --cgroup-parent {parent} as it is"
            )),
        ),
    }
}

/// The staged mounts, and for API access our CA bundle where the Arvados SDKs look.
fn binds(staged: Option<&StagedMounts>, api: Option<&ApiEnv>) -> Vec<Bind> {
    let mut binds = staged.map(|m| m.binds.clone()).unwrap_or_default();
    if let Some(ca) = api.and_then(|e| e.ca_file.clone()) {
        binds.push(Bind {
            host: ca,
            container: CA_BUNDLE_IN_CONTAINER.into(),
            read_only: true,
        });
    }
    binds
}

/// What a container with `runtime_constraints.API` gets: our API host, its own token
/// (never ours), and our TLS setting.
fn api_vars(api: &ApiEnv, token: &str) -> Vec<(String, String)> {
    let mut vars = vec![
        ("ARVADOS_API_HOST".to_string(), api.host.clone()),
        ("ARVADOS_API_TOKEN".to_string(), token.to_string()),
        (
            "ARVADOS_API_HOST_INSECURE".to_string(),
            if api.insecure { "1" } else { "0" }.to_string(),
        ),
    ];
    if let Some(keep) = &api.keep_services {
        vars.push(("ARVADOS_KEEP_SERVICES".to_string(), keep.clone()));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use super::super::tests::UUID;

    fn record(extra: serde_json::Value) -> Container {
        let mut r = json!({
            "uuid": UUID,
            "state": "Locked",
            "command": ["echo", "hi"],
            "container_image": "d41d8cd98f00b204e9800998ecf8427e+0",
            "cwd": "/tmp",
            "environment": {"FOO": "bar"},
            "output_path": "/out",
            "mounts": {},
            "runtime_constraints": {"ram": 1 << 30, "vcpus": 2},
        });
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        Container::from_json(&r).unwrap()
    }

    fn config(backend: Backend, gpu_devices: Option<Vec<String>>) -> Config {
        Config {
            backend,
            gpu_devices,
            ..super::super::tests::config("/spool".as_ref())
        }
    }

    fn arvados() -> Backend {
        Backend::Arvados(ApiEnv {
            host: "api.example:443".into(),
            token: "v2/dispatcher/token".into(),
            insecure: true,
            ca_file: Some("/etc/ssl/ca.pem".into()),
            keep_services: Some("https://keep.example/".into()),
        })
    }

    fn inputs(config: &Config) -> SpecInputs<'_> {
        SpecInputs {
            config,
            image: "sha256:abc",
            staged: None,
            token: Some("v2/container/token"),
            pid: 42,
            cgroup_parent: None,
        }
    }

    #[test]
    fn the_record_becomes_the_spec() {
        let config = config(arvados(), None);
        let (spec, warning) = container_spec(&record(json!({})), &inputs(&config));
        assert_eq!(warning, None);
        assert_eq!(spec.name, UUID);
        assert_eq!(spec.image, "sha256:abc");
        assert_eq!(spec.command, ["echo", "hi"]);
        assert_eq!(spec.cwd.as_deref(), Some("/tmp"));
        assert_eq!(spec.env, [("FOO".to_string(), "bar".to_string())]);
        assert_eq!(spec.network, None, "no API access: no network");
        assert_eq!(spec.cgroup_parent, None);
        assert_eq!(spec.memory_bytes, Some(1 << 30));
        assert_eq!(spec.cpus, Some(2.0));
        assert_eq!(spec.gpus, None);
        assert!(
            spec.binds.is_empty(),
            "the CA bundle goes only with API access"
        );
        assert!(!spec.stdin);
        assert_eq!(
            spec.labels,
            [
                ("org.arvados.container_uuid".to_string(), UUID.to_string()),
                ("org.arvados.crunch-run.pid".to_string(), "42".to_string()),
            ]
        );
    }

    #[test]
    fn api_access_gives_the_containers_own_token_a_network_and_our_ca_bundle() {
        let config = config(arvados(), None);
        let c = record(json!({"runtime_constraints": {"API": true}}));
        let (spec, warning) = container_spec(&c, &inputs(&config));
        assert_eq!(warning, None);
        assert_eq!(spec.network.as_deref(), Some("default"));
        let env: std::collections::BTreeMap<_, _> = spec.env.into_iter().collect();
        assert_eq!(env["ARVADOS_API_TOKEN"], "v2/container/token");
        assert_eq!(env["ARVADOS_API_HOST"], "api.example:443");
        assert_eq!(env["ARVADOS_API_HOST_INSECURE"], "1");
        assert_eq!(env["ARVADOS_KEEP_SERVICES"], "https://keep.example/");
        assert_eq!(
            spec.binds,
            [Bind {
                host: "/etc/ssl/ca.pem".into(),
                container: CA_BUNDLE_IN_CONTAINER.into(),
                read_only: true,
            }]
        );
    }

    #[test]
    fn api_access_on_the_local_store_is_a_warning_and_no_token() {
        let config = config(Backend::Local("/store".into()), None);
        let c = record(json!({"runtime_constraints": {"API": true}}));
        let (spec, warning) = container_spec(&c, &inputs(&config));
        assert_eq!(warning, Some(NO_API_SERVER));
        assert!(spec.env.iter().all(|(k, _)| !k.starts_with("ARVADOS_")));
    }

    #[test]
    fn gpus_are_the_assigned_devices_or_a_count() {
        let c = record(json!({"runtime_constraints": {"cuda": {"device_count": 2}}}));
        let counted = config(arvados(), None);
        let (spec, _) = container_spec(&c, &inputs(&counted));
        assert_eq!(spec.gpus, Some(Gpus::Count(2)));
        let assigned = config(arvados(), Some(vec!["1".into(), "3".into()]));
        let (spec, _) = container_spec(&c, &inputs(&assigned));
        assert_eq!(spec.gpus, Some(Gpus::Devices(vec!["1".into(), "3".into()])));
    }

    #[test]
    fn networking_always_and_its_mode_and_no_memory_limit() {
        let mut config = config(arvados(), None);
        config.container.network_always = true;
        config.container.network_mode = "host".into();
        config.container.memory_limit = false;
        let (spec, _) = container_spec(&record(json!({})), &inputs(&config));
        assert_eq!(spec.network.as_deref(), Some("host"));
        assert_eq!(spec.memory_bytes, None);
        assert!(spec.env.iter().all(|(k, _)| !k.starts_with("ARVADOS_")));
        let c = record(json!({"runtime_constraints": {"API": true, "ram": 1 << 20}}));
        config.container.network_always = false;
        let (spec, _) = container_spec(&c, &inputs(&config));
        assert_eq!(
            spec.network.as_deref(),
            Some("host"),
            "API access: the mode"
        );
        assert_eq!(spec.memory_bytes, None);
    }

    #[test]
    fn the_cgroup_parent_goes_into_the_spec() {
        let config = config(arvados(), None);
        let parented = SpecInputs {
            cgroup_parent: Some("/slurm/uid_0/job_1/step_batch/task_0"),
            ..inputs(&config)
        };
        let (spec, _) = container_spec(&record(json!({})), &parented);
        assert_eq!(
            spec.cgroup_parent.as_deref(),
            Some("/slurm/uid_0/job_1/step_batch/task_0")
        );
    }

    #[test]
    fn the_systemd_driver_takes_a_slice_or_no_parent() {
        let slurm = "/slurm/uid_0/job_1/step_batch/task_0";
        assert_eq!(
            usable_cgroup_parent(slurm, Ok("cgroupfs".into())),
            (Some(slurm.to_string()), None)
        );
        let (parent, warning) = usable_cgroup_parent(slurm, Ok("systemd".into()));
        assert_eq!(parent, None);
        let warning = warning.unwrap();
        assert!(warning.contains("systemd cgroup driver"), "{warning}");
        assert!(
            warning.contains("native.cgroupdriver=cgroupfs"),
            "{warning}"
        );
        assert_eq!(
            usable_cgroup_parent("/user.slice/user-0.slice", Ok("systemd".into())),
            (Some("user-0.slice".to_string()), None)
        );
        let (parent, warning) = usable_cgroup_parent(slurm, Err("engine down".into()));
        assert_eq!(parent.as_deref(), Some(slurm));
        assert!(warning.unwrap().contains("engine down"));
    }
}
