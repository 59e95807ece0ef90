//! Pure builders for docker CLI argument lists.
//!
//! Nothing here starts a process: `create_argv` turns a [`ContainerSpec`] into the words that
//! follow `docker` for `docker create`, plus the environment the docker CLI child must be given
//! and, when needed, the content of an `--env-file`. `cli.rs` runs them, then starts the
//! created container attached.
//!
//! The invariant kept here: **environment values never appear in argv** (argv is visible to every
//! user of the host through `/proc/*/cmdline`, and we log it). A variable is passed as `-e NAME`
//! with its value in the docker CLI's own environment, which docker copies into the container.
//! That trick fails for names the docker CLI itself reads (`DOCKER_HOST`, `HOME`, `PATH`,
//! proxies, …): setting them would change how the CLI behaves, so those go through a mode-0600
//! env file instead, which cannot carry line breaks.

use std::path::Path;

/// Docker's own lower bound is a few MiB; the Go crunch-run never asks for less than 16 MiB
/// (`minDockerRAM`), and neither do we.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// Everything `docker create` needs to know about one container.
///
/// Later additions (mounts, GPUs, stdin) become new fields here and new words in
/// [`create_argv`]; callers construct it with `..ContainerSpec::default()` to stay compatible.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    /// `--name`; crunch-run uses the container UUID.
    pub name: String,
    /// Image id or name, as given to `docker create`.
    pub image: String,
    /// The command and its arguments (may be empty: the image's default command).
    pub command: Vec<String>,
    /// Working directory inside the container. The caller maps `""` and `"."` to `None`.
    pub cwd: Option<String>,
    /// Environment of the container. Values are secret-ish and never put in argv.
    pub env: Vec<(String, String)>,
    /// `--network <mode>` (e.g. `default`, `host`); `--network none` when `None`.
    pub network: Option<String>,
    /// `--label k=v` each.
    pub labels: Vec<(String, String)>,
    /// `--memory` and `--memory-swap` (same value: no swap), at least [`MIN_MEMORY_BYTES`].
    pub memory_bytes: Option<u64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    /// `--mount type=bind,…` each, in order (parents before children).
    pub binds: Vec<Bind>,
    /// `--gpus`: which GPUs the container gets.
    pub gpus: Option<Gpus>,
    /// `-i`: the container reads a stdin the caller feeds.
    pub stdin: bool,
    /// `--cgroup-parent`: the cgroup the container's goes under (a path, for docker's
    /// cgroupfs driver).
    pub cgroup_parent: Option<String>,
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub host: std::path::PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// GPUs for `--gpus`: a count, or the device ids a scheduler assigned
/// (`CUDA_VISIBLE_DEVICES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    Count(u32),
    Devices(Vec<String>),
}

/// The result of [`create_argv`]: the words after `docker`, and how to hand over the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateArgs {
    /// Options up to (not including) the image.
    options: Vec<String>,
    /// The image and the command words.
    image_and_command: Vec<String>,
    /// Variables to set in the docker CLI child's environment (each has a `-e NAME` in argv).
    pub env: Vec<(String, String)>,
    /// Content of the env file (`NAME=VALUE` lines), if any variable needs one.
    pub env_file: Option<String>,
}

impl CreateArgs {
    /// The full argument list after `docker`. `env_file_path` is where the caller writes
    /// [`CreateArgs::env_file`]; it is only mentioned when there is an env file.
    pub fn argv(&self, env_file_path: &Path) -> Vec<String> {
        let mut argv = self.options.clone();
        if self.env_file.is_some() {
            argv.push("--env-file".to_string());
            argv.push(env_file_path.to_string_lossy().into_owned());
        }
        argv.extend(self.image_and_command.iter().cloned());
        argv
    }
}

/// Why a spec could not be turned into a command line. Never contains an environment value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgvError {
    #[error(
        "mount path {0:?} cannot be passed to docker (it must be absolute and have no newline)"
    )]
    BadMountPath(String),
    #[error("GPU device ids {0:?} are not valid")]
    BadGpuDevices(String),
    #[error(
        "invalid environment variable name {name:?}: it must be non-empty and contain no '=' or NUL"
    )]
    BadEnvName { name: String },
    #[error(
        "the value of environment variable {name} contains a {what}; it must be passed to docker \
         in an env file (the docker CLI reads {name} itself), which cannot carry that"
    )]
    EnvFileValue { name: String, what: &'static str },
    #[error(
        "the value of environment variable {name} contains a NUL byte, which no environment can carry"
    )]
    NulInValue { name: String },
    #[error("invalid CPU limit {0}: it must be a positive number")]
    BadCpus(f64),
    #[error("no image given for container {0:?}")]
    NoImage(String),
    #[error("invalid image {0:?}: it would be read as a docker option")]
    BadImage(String),
}

/// Build `docker create` arguments for `spec`:
///
/// `create --name <name> --label k=v… --log-driver none --network none|<mode>
///  [--memory N --memory-swap N] [--cpus X] [--cgroup-parent P] [-w cwd] -e NAME…
///  [--env-file F] <image> <command…>`
///
/// No `--` goes before the image (older docker CLIs are said to reject it; an image starting
/// with `-` is refused instead); none is needed after it either, because docker stops parsing
/// options at the image, so a command word like `-v` is safe.
pub fn create_argv(spec: &ContainerSpec) -> Result<CreateArgs, ArgvError> {
    if spec.image.is_empty() {
        return Err(ArgvError::NoImage(spec.name.clone()));
    }
    if spec.image.starts_with('-') {
        return Err(ArgvError::BadImage(spec.image.clone()));
    }
    let mut options: Vec<String> = vec!["create".into(), "--name".into(), spec.name.clone()];
    for (k, v) in &spec.labels {
        options.push("--label".into());
        options.push(format!("{k}={v}"));
    }
    options.extend(["--log-driver".into(), "none".into(), "--network".into()]);
    options.push(spec.network.clone().unwrap_or_else(|| "none".into()));
    if let Some(bytes) = spec.memory_bytes {
        let bytes = bytes.max(MIN_MEMORY_BYTES).to_string();
        options.extend([
            "--memory".into(),
            bytes.clone(),
            "--memory-swap".into(),
            bytes,
        ]);
    }
    if let Some(cpus) = spec.cpus {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(ArgvError::BadCpus(cpus));
        }
        options.extend(["--cpus".into(), format!("{cpus}")]);
    }
    if let Some(parent) = &spec.cgroup_parent {
        options.extend(["--cgroup-parent".into(), parent.clone()]);
    }
    if let Some(cwd) = &spec.cwd {
        options.extend(["-w".into(), cwd.clone()]);
    }
    for bind in &spec.binds {
        options.extend(["--mount".into(), mount_option(bind)?]);
    }
    match &spec.gpus {
        None => {}
        Some(Gpus::Count(n)) => options.extend(["--gpus".into(), n.to_string()]),
        Some(Gpus::Devices(ids)) => {
            if ids.iter().any(|id| {
                id.is_empty()
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':')
            }) {
                return Err(ArgvError::BadGpuDevices(ids.join(",")));
            }
            // The CLI parses --gpus as CSV: the list needs quotes to stay one field.
            options.extend(["--gpus".into(), format!("\"device={}\"", ids.join(","))]);
        }
    }
    if spec.stdin {
        options.push("-i".into());
    }

    let (env, env_file) = split_env(&spec.env)?;
    for (name, _) in &env {
        options.extend(["-e".into(), name.clone()]);
    }

    let mut image_and_command = vec![spec.image.clone()];
    image_and_command.extend(spec.command.iter().cloned());
    Ok(CreateArgs {
        options,
        image_and_command,
        env,
        env_file,
    })
}

/// `type=bind,source=…,target=…[,readonly]`. The CLI parses the value as CSV, so a field
/// holding a comma or a quote is quoted (quotes doubled).
fn mount_option(bind: &Bind) -> Result<String, ArgvError> {
    let host = bind
        .host
        .to_str()
        .ok_or_else(|| ArgvError::BadMountPath(bind.host.display().to_string()))?;
    if !bind.container.starts_with('/') || bind.container.contains('\n') || host.contains('\n') {
        return Err(ArgvError::BadMountPath(bind.container.clone()));
    }
    let field = |f: String| {
        if f.contains(',') || f.contains('"') {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f
        }
    };
    let mut option = format!(
        "type=bind,{},{}",
        field(format!("source={host}")),
        field(format!("target={}", bind.container))
    );
    if bind.read_only {
        option.push_str(",readonly");
    }
    Ok(option)
}

type EnvVar = (String, String);

/// Split the container environment into `-e NAME` variables (values for the CLI child's
/// environment) and env-file lines. Later duplicates of a name win, as they would in docker.
fn split_env(vars: &[EnvVar]) -> Result<(Vec<EnvVar>, Option<String>), ArgvError> {
    let mut env: Vec<EnvVar> = Vec::new();
    let mut file: Vec<EnvVar> = Vec::new();
    for (name, value) in vars {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(ArgvError::BadEnvName { name: name.clone() });
        }
        if value.contains('\0') {
            return Err(ArgvError::NulInValue { name: name.clone() });
        }
        env.retain(|(n, _)| n != name);
        file.retain(|(n, _)| n != name);
        if docker_cli_reads(name) {
            if let Some(what) = env_file_trouble(name, value) {
                return Err(ArgvError::EnvFileValue {
                    name: name.clone(),
                    what,
                });
            }
            file.push((name.clone(), value.clone()));
        } else {
            env.push((name.clone(), value.clone()));
        }
    }
    let file = (!file.is_empty()).then(|| file.iter().map(|(n, v)| format!("{n}={v}\n")).collect());
    Ok((env, file))
}

/// What docker's env-file parser would mangle: it splits lines (dropping a trailing CR) and
/// rejects names with whitespace.
fn env_file_trouble(name: &str, value: &str) -> Option<&'static str> {
    if name.chars().any(char::is_whitespace) {
        Some("name with whitespace")
    } else if value.contains('\n') {
        Some("newline")
    } else if value.contains('\r') {
        Some("carriage return")
    } else {
        None
    }
}

/// Names the docker CLI (a Go program) reads from its own environment, so that setting them
/// for `-e NAME` would change where or how the CLI connects.
pub fn docker_cli_reads(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "HOME",
        "PATH",
        "TMPDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    ];
    // DOCKER_* (host, context, config, TLS), XDG_* (config dirs), GO* (Go runtime: GODEBUG,
    // GOMAXPROCS, GOGC…), LD_* (dynamic loader), OTEL_* (the CLI's OpenTelemetry exporter).
    const PREFIXES: &[&str] = &["DOCKER_", "XDG_", "GO", "LD_", "OTEL_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `args` as one line a shell would split back into the same words, for logs.
pub fn display_argv(args: &[String]) -> String {
    args.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "zzzzz-dz642-000000000000000".into(),
            image: "sha256:abc".into(),
            command: vec!["echo".into(), "hello".into()],
            ..ContainerSpec::default()
        }
    }

    fn argv(spec: &ContainerSpec) -> Vec<String> {
        create_argv(spec).unwrap().argv(Path::new("/scratch/env"))
    }

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn minimal_spec_has_no_network_and_no_limits() {
        assert_eq!(
            argv(&spec()),
            words(
                "create --name zzzzz-dz642-000000000000000 --log-driver none --network none \
                 sha256:abc echo hello"
            )
        );
    }

    #[test]
    fn network_labels_limits_and_cwd() {
        let s = ContainerSpec {
            network: Some("default".into()),
            labels: vec![
                (
                    "org.arvados.container_uuid".into(),
                    "zzzzz-dz642-000000000000000".into(),
                ),
                ("a".into(), "b=c".into()),
            ],
            memory_bytes: Some(1 << 30),
            cpus: Some(2.0),
            cwd: Some("/work".into()),
            ..spec()
        };
        assert_eq!(
            argv(&s),
            words(
                "create --name zzzzz-dz642-000000000000000 \
                 --label org.arvados.container_uuid=zzzzz-dz642-000000000000000 --label a=b=c \
                 --log-driver none --network default --memory 1073741824 --memory-swap 1073741824 \
                 --cpus 2 -w /work sha256:abc echo hello"
            )
        );
    }

    #[test]
    fn network_mode_and_cgroup_parent_are_one_word_each() {
        let s = ContainerSpec {
            network: Some("host".into()),
            cpus: Some(1.0),
            cgroup_parent: Some("/slurm_vm/uid_0/job_7/step_batch/task_0".into()),
            ..spec()
        };
        assert_eq!(
            argv(&s),
            words(
                "create --name zzzzz-dz642-000000000000000 --log-driver none --network host \
                 --cpus 1 --cgroup-parent /slurm_vm/uid_0/job_7/step_batch/task_0 \
                 sha256:abc echo hello"
            )
        );
    }

    #[test]
    fn fractional_cpus_and_tiny_ram() {
        let s = ContainerSpec {
            cpus: Some(0.5),
            memory_bytes: Some(1000),
            ..spec()
        };
        let a = argv(&s);
        let joined = a.join(" ");
        assert!(joined.contains("--cpus 0.5"), "{joined}");
        assert!(
            joined.contains("--memory 16777216 --memory-swap 16777216"),
            "{joined}"
        );
    }

    #[test]
    fn bad_cpus_is_an_error() {
        for cpus in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let s = ContainerSpec {
                cpus: Some(cpus),
                ..spec()
            };
            assert!(matches!(create_argv(&s), Err(ArgvError::BadCpus(_))));
        }
    }

    #[test]
    fn env_values_go_to_the_child_environment_not_argv() {
        let s = ContainerSpec {
            env: vec![
                ("ARVADOS_API_TOKEN".into(), "v2/secret-token-value".into()),
                ("MULTI".into(), "line1\nline2".into()),
                ("EMPTY".into(), String::new()),
            ],
            ..spec()
        };
        let args = create_argv(&s).unwrap();
        let a = args.argv(Path::new("/scratch/env"));
        assert!(
            !a.iter()
                .any(|w| w.contains("secret-token-value") || w.contains("line1"))
        );
        let joined = a.join(" ");
        assert!(
            joined.contains("-e ARVADOS_API_TOKEN -e MULTI -e EMPTY sha256:abc"),
            "{joined}"
        );
        assert_eq!(args.env_file, None);
        assert!(!joined.contains("--env-file"));
        assert_eq!(args.env, s.env);
    }

    #[test]
    fn names_the_docker_cli_reads_go_to_the_env_file() {
        let s = ContainerSpec {
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("FOO".into(), "bar".into()),
                ("DOCKER_HOST".into(), "tcp://x".into()),
                ("https_proxy".into(), "http://proxy:3128".into()),
                ("XDG_CONFIG_HOME".into(), "/c".into()),
            ],
            ..spec()
        };
        let args = create_argv(&s).unwrap();
        assert_eq!(args.env, vec![("FOO".to_string(), "bar".to_string())]);
        assert_eq!(
            args.env_file.as_deref(),
            Some(
                "PATH=/usr/bin:/bin\nDOCKER_HOST=tcp://x\nhttps_proxy=http://proxy:3128\nXDG_CONFIG_HOME=/c\n"
            )
        );
        let a = args.argv(Path::new("/scratch/env"));
        assert_eq!(
            a[a.len() - 7..].join(" "),
            "-e FOO --env-file /scratch/env sha256:abc echo hello"
        );
        assert!(!a.iter().any(|w| w.contains("tcp://x")));
    }

    #[test]
    fn newline_in_an_env_file_value_is_an_error_that_hides_the_value() {
        let s = ContainerSpec {
            env: vec![("HOME".into(), "/home/secretvalue\nx".into())],
            ..spec()
        };
        let err = create_argv(&s).unwrap_err();
        assert_eq!(
            err,
            ArgvError::EnvFileValue {
                name: "HOME".into(),
                what: "newline"
            }
        );
        assert!(!err.to_string().contains("secretvalue"));
    }

    #[test]
    fn bad_names_and_nul_values_are_errors() {
        for name in ["", "A=B", "A\0B"] {
            let s = ContainerSpec {
                env: vec![(name.into(), "v".into())],
                ..spec()
            };
            assert!(
                matches!(create_argv(&s), Err(ArgvError::BadEnvName { .. })),
                "{name:?}"
            );
        }
        let s = ContainerSpec {
            env: vec![("A".into(), "x\0y".into())],
            ..spec()
        };
        assert!(matches!(create_argv(&s), Err(ArgvError::NulInValue { .. })));
    }

    #[test]
    fn duplicate_env_names_keep_the_last_value_once() {
        let s = ContainerSpec {
            env: vec![("A".into(), "1".into()), ("A".into(), "2".into())],
            ..spec()
        };
        let args = create_argv(&s).unwrap();
        assert_eq!(args.env, vec![("A".to_string(), "2".to_string())]);
        let a = args.argv(Path::new("/e"));
        assert_eq!(a.iter().filter(|w| *w == "A").count(), 1);
    }

    #[test]
    fn command_words_starting_with_dash_follow_the_image_without_separator() {
        let s = ContainerSpec {
            command: vec!["-v".into(), "--rm".into()],
            ..spec()
        };
        let a = argv(&s);
        assert_eq!(a[a.len() - 3..], ["sha256:abc", "-v", "--rm"]);
        assert!(!a.contains(&"--".to_string()));
    }

    #[test]
    fn empty_image_is_an_error() {
        let s = ContainerSpec {
            image: String::new(),
            ..spec()
        };
        assert!(matches!(create_argv(&s), Err(ArgvError::NoImage(_))));
        let s = ContainerSpec {
            image: "--privileged".into(),
            ..spec()
        };
        assert!(matches!(create_argv(&s), Err(ArgvError::BadImage(_))));
    }

    #[test]
    fn display_quotes_only_what_needs_it() {
        let a: Vec<String> = ["create", "--label", "k=v w", "it's", "", "/a/b:c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            display_argv(&a),
            r#"create --label 'k=v w' 'it'\''s' '' /a/b:c"#
        );
    }

    #[test]
    fn binds_gpus_and_stdin() {
        let spec = ContainerSpec {
            name: "n".into(),
            image: "img".into(),
            binds: vec![
                Bind {
                    host: "/run/x/tmp0".into(),
                    container: "/tmp".into(),
                    read_only: false,
                },
                Bind {
                    host: "/run/x/in".into(),
                    container: "/mnt/a,b \"c\"".into(),
                    read_only: true,
                },
            ],
            gpus: Some(Gpus::Devices(vec!["0".into(), "2".into()])),
            stdin: true,
            ..Default::default()
        };
        let argv = create_argv(&spec).unwrap().argv(Path::new("/e"));
        let joined = argv.join(" ");
        assert!(
            joined.contains("--mount type=bind,source=/run/x/tmp0,target=/tmp --mount"),
            "{joined}"
        );
        assert!(
            argv.contains(
                &"type=bind,source=/run/x/in,\"target=/mnt/a,b \"\"c\"\"\",readonly".to_string()
            ),
            "{argv:?}"
        );
        assert!(joined.contains("--gpus \"device=0,2\" -i img"), "{joined}");
        let count = ContainerSpec {
            gpus: Some(Gpus::Count(2)),
            ..spec.clone()
        };
        assert!(
            create_argv(&count)
                .unwrap()
                .argv(Path::new("/e"))
                .join(" ")
                .contains("--gpus 2")
        );
        let bad = ContainerSpec {
            gpus: Some(Gpus::Devices(vec!["0;rm".into()])),
            ..spec.clone()
        };
        assert!(create_argv(&bad).is_err());
        let relative = ContainerSpec {
            binds: vec![Bind {
                host: "/h".into(),
                container: "tmp".into(),
                read_only: false,
            }],
            ..spec
        };
        assert!(matches!(
            create_argv(&relative),
            Err(ArgvError::BadMountPath(_))
        ));
    }
}
