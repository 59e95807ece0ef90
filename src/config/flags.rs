//! The dispatcher flags that shape the container beyond its record (network, memory limit,
//! cgroup parent), and the flags of Go's crunch-run accepted only so that a dispatcher
//! passing them still works. Both are flattened into `Args`; what they mean for the docker
//! command is run/spec.rs's and docker/argv.rs's to say.

use clap::{ArgAction, Args as FlagGroup};

use crate::cgroup::{Roots, own_cgroup_path};

use super::UsageError;

/// `-container-enable-networking`, `-container-network-mode`, `-enable-memory-limit`,
/// `-cgroup-parent-subsystem`, as Go's crunch-run reads them.
#[derive(Debug, Clone, FlagGroup)]
pub struct ContainerFlags {
    /// "default": a container gets a network only when its record asks for API access;
    /// "always": every container gets one.
    #[arg(long, default_value = "default", value_name = "WHEN", value_parser = ["default", "always"])]
    pub container_enable_networking: String,

    /// The docker network mode (`docker create --network`) of a container that has a network,
    /// e.g. "host" or the name of a docker network.
    #[arg(long, default_value = "default", value_name = "MODE")]
    pub container_network_mode: String,

    /// "false": no docker memory limit; `runtime_constraints.ram` then only reaches the
    /// scheduler. Give a value with "=" (`-enable-memory-limit=false`), as in Go.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_memory_limit: bool,

    /// Put the container under crunch-run's own cgroup for this subsystem (e.g. "memory";
    /// on a cgroup v2 host, any value means the unified cgroup), so a scheduler's limits on
    /// crunch-run's cgroup (Slurm's --mem and cpuset) hold for the container too.
    #[arg(long, value_name = "SUBSYSTEM")]
    pub cgroup_parent_subsystem: Option<String>,
}

/// Flags of Go's crunch-run that mean nothing here: accepted, and ignored.
#[derive(Debug, Clone, FlagGroup)]
#[command(next_help_heading = "Accepted for compatibility with Go's crunch-run, and ignored")]
pub struct IgnoredFlags {
    /// Ignored (Go ignores it too).
    #[arg(long, value_name = "NAME")]
    pub cgroup_parent: Option<String>,
    /// Ignored (obsolete in Go too).
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<String>,
    /// Ignored (obsolete in Go too).
    #[arg(long, value_name = "DURATION")]
    pub check_containerd: Option<String>,
    /// Ignored (Go: the cluster configuration, for a local keepstore; not supported).
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// Ignored (Go: a delay before starting, for its tests).
    #[arg(long, value_name = "DURATION")]
    pub sleep: Option<String>,
    /// Ignored (Go: where to write a memory profile).
    #[arg(long, value_name = "FILE")]
    pub memprofile: Option<String>,
}

/// How the container is set up beyond what its record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSetup {
    /// Every container gets a network, not only those with API access.
    pub network_always: bool,
    /// The docker network mode of a container that has a network.
    pub network_mode: String,
    /// `runtime_constraints.ram` becomes docker's memory limit.
    pub memory_limit: bool,
    /// The container's cgroup parent: crunch-run's own cgroup for the subsystem the
    /// dispatcher named, found at start-up ([`ContainerSetup::resolve_cgroup_parent`]).
    pub cgroup_parent: Option<String>,
}

impl Default for ContainerSetup {
    /// Go's defaults: a network only with API access, mode "default"; the memory limit on;
    /// no cgroup parent.
    fn default() -> ContainerSetup {
        ContainerSetup {
            network_always: false,
            network_mode: "default".into(),
            memory_limit: true,
            cgroup_parent: None,
        }
    }
}

impl ContainerSetup {
    /// The setup the flags ask for; the cgroup parent is left for
    /// [`ContainerSetup::resolve_cgroup_parent`].
    pub fn from_flags(flags: &ContainerFlags) -> Result<ContainerSetup, UsageError> {
        if flags.container_network_mode.trim().is_empty() {
            return Err(UsageError(
                "-container-network-mode must name a docker network mode".into(),
            ));
        }
        Ok(ContainerSetup {
            network_always: flags.container_enable_networking == "always",
            network_mode: flags.container_network_mode.clone(),
            memory_limit: flags.enable_memory_limit,
            cgroup_parent: None,
        })
    }

    /// Find crunch-run's own cgroup for `-cgroup-parent-subsystem`, as Go's crunch-run does
    /// at start-up (and, like it, refuse to run without one).
    pub fn resolve_cgroup_parent(
        &mut self,
        flags: &ContainerFlags,
        roots: &Roots,
    ) -> Result<(), UsageError> {
        let Some(subsystem) = &flags.cgroup_parent_subsystem else {
            return Ok(());
        };
        let path = own_cgroup_path(roots, subsystem)
            .map_err(|e| UsageError(format!("-cgroup-parent-subsystem={subsystem}: {e}")))?;
        self.cgroup_parent = Some(path);
        Ok(())
    }
}

/// `--keep-mount`: how collection mounts reach the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeepMount {
    Auto,
    Fuse,
    Stage,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::tests::write_tree;
    use crate::config::{Args, normalize_go_flags};
    use clap::Parser;

    fn flags(argv: &[&str]) -> Result<Args, clap::Error> {
        let raw = ["crunch-run"].iter().chain(argv).map(|a| a.into());
        Args::try_parse_from(normalize_go_flags(raw))
    }

    fn setup(argv: &[&str]) -> ContainerSetup {
        ContainerSetup::from_flags(&flags(argv).unwrap().container).unwrap()
    }

    #[test]
    fn defaults_are_gos() {
        assert_eq!(setup(&[]), ContainerSetup::default());
    }

    #[test]
    fn networking_and_memory_limit_take_gos_spellings() {
        let s = setup(&[
            "-container-enable-networking=always",
            "-container-network-mode=host",
            "-enable-memory-limit=false",
        ]);
        assert!(s.network_always && !s.memory_limit);
        assert_eq!(s.network_mode, "host");
        assert!(setup(&["--enable-memory-limit"]).memory_limit);
        assert!(setup(&["-enable-memory-limit=1"]).memory_limit);
        assert!(!setup(&["-enable-memory-limit=0"]).memory_limit);
        for bad in [
            &["-container-enable-networking=never"][..],
            &["-enable-memory-limit=maybe"],
        ] {
            assert!(flags(bad).is_err(), "{bad:?}");
        }
        let blank = flags(&["-container-network-mode="]).unwrap();
        assert!(ContainerSetup::from_flags(&blank.container).is_err());
    }

    #[test]
    fn ignored_flags_are_accepted_with_their_values() {
        let a = flags(&[
            "-cgroup-parent=docker",
            "-cgroup-root=/sys/fs/cgroup",
            "-check-containerd=0s",
            "-config=/etc/arvados/config.yml",
            "-sleep=1s",
            "-memprofile=/tmp/m",
            "zzzzz-dz642-0123456789abcde",
        ])
        .unwrap();
        assert_eq!(a.ignored.cgroup_parent.as_deref(), Some("docker"));
        assert_eq!(a.ignored.sleep.as_deref(), Some("1s"));
    }

    #[test]
    fn the_cgroup_parent_is_our_own_cgroup_for_the_subsystem() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots::under(tmp.path());
        write_tree(
            tmp.path(),
            &[(
                "proc/self/cgroup",
                "4:memory:/slurm/uid_0/job_3/step_batch/task_0\n3:cpuset:/slurm/uid_0/job_3\n0::/\n",
            )],
        );
        let a = flags(&["-cgroup-parent-subsystem=memory"]).unwrap();
        let mut s = setup(&[]);
        s.resolve_cgroup_parent(&a.container, &roots).unwrap();
        assert_eq!(
            s.cgroup_parent.as_deref(),
            Some("/slurm/uid_0/job_3/step_batch/task_0")
        );
        let mut none = setup(&[]);
        none.resolve_cgroup_parent(&flags(&[]).unwrap().container, &roots)
            .unwrap();
        assert_eq!(none.cgroup_parent, None);
        std::fs::remove_file(tmp.path().join("proc/self/cgroup")).unwrap();
        let e = s.resolve_cgroup_parent(&a.container, &roots).unwrap_err();
        assert!(
            e.0.starts_with("-cgroup-parent-subsystem=memory: cannot read "),
            "{e}"
        );
    }
}
