//! Telling the dispatcher this node cannot run containers, as Go's crunch-run does
//! (reference §5.2): after an engine error on the broken-node list
//! (`docker::suggests_broken_node`), run the `-broken-node-hook` program if one was given
//! (its output goes into crunch-run.txt), else create `crunch-run-broken` in the lock
//! directory; `--list` then prints `broken` while that file exists, and
//! arvados-dispatch-cloud drains the node.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::config::NodeSetup;

/// Mark the node broken, saying each step through `say`.
pub fn mark_broken(node: &NodeSetup, say: &dyn Fn(&str)) {
    let Some(hook) = &node.broken_node_hook else {
        let mark = node.broken_mark();
        say(&format!(
            "Writing {} to mark node as broken",
            mark.display()
        ));
        let created = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&mark);
        if let Err(e) = created {
            say(&format!("Error writing {}: {e}", mark.display()));
        }
        return;
    };
    say(&format!("Running broken node hook {}", hook.display()));
    let child = Command::new(hook)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return say(&format!("Error running broken node hook: {e}")),
    };
    // The hook's stderr is read on a thread of its own, so that neither pipe fills.
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        })
    });
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    for line in out.lines().chain(err.lines()) {
        say(&format!("broken node hook: {line}"));
    }
    match child.wait() {
        Ok(status) if status.success() => {}
        Ok(status) => say(&format!("Error running broken node hook: {status}")),
        Err(e) => say(&format!("Error running broken node hook: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn mark(node: &NodeSetup) -> Vec<String> {
        let said = Mutex::new(Vec::new());
        mark_broken(node, &|line| said.lock().unwrap().push(line.to_string()));
        said.into_inner().unwrap()
    }

    #[test]
    fn without_a_hook_the_broken_file_is_created_in_the_lock_dir() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeSetup {
            lock_dir: dir.path().to_path_buf(),
            ..NodeSetup::default()
        };
        let said = mark(&node);
        assert!(node.broken_mark().exists());
        assert!(said[0].starts_with("Writing "), "{said:?}");
        let gone = NodeSetup {
            lock_dir: dir.path().join("missing"),
            ..NodeSetup::default()
        };
        assert!(mark(&gone)[1].starts_with("Error writing "));
    }

    #[test]
    fn a_hook_runs_instead_and_its_output_and_failure_are_said() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "#!/bin/sh\necho drained\necho oops >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let node = NodeSetup {
            lock_dir: dir.path().to_path_buf(),
            broken_node_hook: Some(hook),
            ..NodeSetup::default()
        };
        let said = mark(&node);
        assert!(!node.broken_mark().exists());
        assert_eq!(
            said[1..3],
            ["broken node hook: drained", "broken node hook: oops"]
        );
        assert!(said[3].contains("exit status: 3"), "{said:?}");
    }
}
