//! `node-info.txt`, as Go's crunch-run writes it into the log collection (reference §5.2):
//! what the node is, under Go's headings: `Host Information` (`uname -a`), `CPU
//! Information` (/proc/cpuinfo), `Memory Information` (/proc/meminfo), `Disk Space`
//! (`df -m` of / and the temporary directory) and `Disk INodes` (`df -i` of the same). A
//! part that cannot be had says why in its place; the rest is still written.

use std::path::Path;
use std::process::{Command, Stdio};

/// The lines of node-info.txt, for a run whose temporary directory is `tmp_dir`.
pub fn node_info(tmp_dir: &Path) -> Vec<String> {
    let tmp = tmp_dir.to_string_lossy();
    let parts = [
        ("Host Information", command(&["uname", "-a"])),
        ("CPU Information", file("/proc/cpuinfo")),
        ("Memory Information", file("/proc/meminfo")),
        ("Disk Space", command(&["df", "-m", "/", &tmp])),
        ("Disk INodes", command(&["df", "-i", "/", &tmp])),
    ];
    let mut lines = Vec::new();
    for (label, got) in parts {
        lines.push(label.to_string());
        match got {
            Ok(text) => lines.extend(text.lines().map(str::to_string)),
            Err(why) => lines.push(why),
        }
    }
    lines
}

fn file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("While reading {path}: {e}"))
}

fn command(argv: &[&str]) -> Result<String, String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("While running command {argv:?}: {e}"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        text.push_str(&format!("While running command {argv:?}: {}", out.status));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sections_are_go_s_and_say_what_the_node_is() {
        let dir = tempfile::tempdir().unwrap();
        let lines = node_info(dir.path());
        let at = |label: &str| lines.iter().position(|l| l == label).unwrap();
        let order = [
            "Host Information",
            "CPU Information",
            "Memory Information",
            "Disk Space",
            "Disk INodes",
        ]
        .map(at);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert!(lines[order[0] + 1].starts_with("Linux "), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("MemTotal:")));
        assert!(lines.iter().any(|l| l.starts_with("processor")));
        assert!(lines[order[3] + 1].contains("1M-blocks"), "{lines:?}");
        assert!(lines[order[4] + 1].contains("Inodes"), "{lines:?}");
    }

    #[test]
    fn a_part_that_cannot_be_had_says_why() {
        assert!(
            file("/no/such/file")
                .unwrap_err()
                .starts_with("While reading /no/such/file: ")
        );
        assert!(command(&["no-such-command-here"]).is_err());
        let failed = command(&["df", "-m", "/no/such/dir"]).unwrap();
        assert!(failed.contains("While running command"), "{failed}");
    }
}
