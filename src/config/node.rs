//! What the node tells a run beyond the container: the broken-node hook, where the node's
//! marks live (the lock directory: `crunch-run-broken`, `crunch-run-prices.json`), and the
//! `InstanceType` arvados-dispatch-cloud passes in the stdin config's Env (a JSON string, as
//! Go's dispatcher sets it). Acting on them is broken_node.rs's, run/node_files.rs's and
//! prices.rs's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args as FlagGroup;

/// `-broken-node-hook`, `-stdin-prices`, as Go's crunch-run reads them.
#[derive(Debug, Clone, FlagGroup)]
pub struct NodeFlags {
    /// A program to run when an engine error means this node cannot run containers (e.g.
    /// the Docker daemon is down, the disk is full). Without it, crunch-run creates
    /// crunch-run-broken in the lock directory, and --list then prints "broken".
    #[arg(long, value_name = "PROGRAM")]
    pub broken_node_hook: Option<PathBuf>,

    /// With --list: read the instance's price history from stdin (Go's JSON, e.g.
    /// [{"StartTime":"2026-01-02T03:04:05Z","Price":0.25}]), keep it for the runs on this
    /// host, and tell them (SIGUSR2). --list reads stdin this way whenever it is not a
    /// terminal, as Go's does.
    #[arg(long)]
    pub stdin_prices: bool,
}

/// The node's side of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSetup {
    pub broken_node_hook: Option<PathBuf>,
    /// Where crunch-run-broken and crunch-run-prices.json live (the run locks' directory).
    pub lock_dir: PathBuf,
    /// The `InstanceType` record, as arvados-dispatch-cloud passed it (JSON text).
    pub instance_type: Option<String>,
}

impl NodeSetup {
    pub fn from_flags(flags: &NodeFlags, env: &BTreeMap<String, String>) -> NodeSetup {
        NodeSetup {
            broken_node_hook: flags.broken_node_hook.clone(),
            lock_dir: super::lock_dir(env),
            instance_type: env.get("InstanceType").filter(|v| !v.is_empty()).cloned(),
        }
    }

    /// The mark that tells `--list` (and so arvados-dispatch-cloud) this node is broken.
    pub fn broken_mark(&self) -> PathBuf {
        self.lock_dir.join(BROKEN_FILE)
    }

    /// The price history `--list` keeps for the runs.
    pub fn prices_file(&self) -> PathBuf {
        self.lock_dir.join(PRICES_FILE)
    }
}

/// Go's names, in the lock directory.
pub const BROKEN_FILE: &str = "crunch-run-broken";
pub const PRICES_FILE: &str = "crunch-run-prices.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marks_live_in_the_lock_dir_and_the_instance_type_comes_from_env() {
        let env = BTreeMap::from([
            ("CRUNCH_RUN_LOCK_DIR".to_string(), "/run/x".to_string()),
            ("InstanceType".to_string(), r#"{"Price":0.5}"#.to_string()),
        ]);
        let flags = NodeFlags {
            broken_node_hook: Some("/bin/hook".into()),
            stdin_prices: false,
        };
        let node = NodeSetup::from_flags(&flags, &env);
        assert_eq!(
            node.broken_mark(),
            PathBuf::from("/run/x/crunch-run-broken")
        );
        assert_eq!(
            node.prices_file(),
            PathBuf::from("/run/x/crunch-run-prices.json")
        );
        assert_eq!(node.instance_type.as_deref(), Some(r#"{"Price":0.5}"#));
        assert_eq!(node.broken_node_hook, Some(PathBuf::from("/bin/hook")));
        let bare = NodeSetup::from_flags(&flags, &BTreeMap::new());
        assert_eq!(bare.lock_dir, PathBuf::from("/var/lock"));
        assert_eq!(bare.instance_type, None);
    }
}
