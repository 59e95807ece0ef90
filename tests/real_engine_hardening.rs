// Issue 10 (hardening) on the real Docker engine: what other local users can reach of a
// running container's run directory, and ten runs at once on one engine. Run under the
// shared real-engine lock (see the README).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::engine;
use common::harness::{Harness, record, strip_timestamps, wait_for};
use serde_json::json;

fn uuid(n: u32) -> String {
    format!("zzzzz-dz642-rh{n:013}")
}

/// A harness whose scratch directory other users may traverse, as /tmp is: only the run
/// directory crunch-run makes inside it may keep them out.
fn open_harness() -> Harness {
    engine::require_engine();
    let h = Harness::new(common::fake_arvados::FakeArvados::start(), false);
    let open = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    open(h.tmp.path(), 0o755).unwrap();
    open(&h.spool_dir(), 0o1777).unwrap();
    h
}

/// `script` run by `sh` as the unprivileged user 65534 (nobody), its arguments `args`.
fn as_nobody(script: &str, args: &[&Path]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script)
        .arg("nobody")
        .args(args)
        .output()
        .expect("run setpriv")
}

/// The run directory of `uuid` under the harness's spool directory.
fn run_dir(h: &Harness, uuid: &str) -> PathBuf {
    let prefix = format!("crunch-run-{uuid}-");
    std::fs::read_dir(h.spool_dir())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("no run directory for {uuid}"))
}

/// The directory under `dir` that holds a file named `name`.
fn dir_holding(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = dir_holding(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(dir.to_path_buf());
        }
    }
    None
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Issue 10, point 1: while the container runs, another local user can neither write into
/// its output (add a file, replace one) nor read its spooled logs; the container itself,
/// also as a non-root user, still writes its output.
#[test]
fn other_local_users_cannot_forge_the_output_or_read_the_logs() {
    let h = open_harness();
    let uuid = uuid(1);
    engine::force_remove(&uuid);
    let pdh = h.fake.add_collection(&[(
        &engine::shared_image().tar_name(),
        &engine::shared_image().tar,
    )]);
    let script = "echo 'nobody:x:65534:65534::/:/bin/sh' >>/etc/passwd && \
                  su nobody -c 'echo theirs >/tmp/by-nobody' && echo mine >/tmp/mine && \
                  echo started && sleep 6";
    let mut rec = record(&uuid, &pdh, &["sh", "-c", script]);
    rec["mounts"] = json!({"/tmp": {"kind": "tmp", "capacity": 1_000_000}});
    h.fake.add_container(rec);
    let mut child = h.spawn(&uuid, &[]);
    assert!(
        wait_for(60, || h.logs_table("stdout").contains("started")),
        "the container did not start"
    );
    let run = run_dir(&h, &uuid);
    let output = dir_holding(&run, "mine").expect("the output directory");
    let spool = run.join("logs");
    let write_new = as_nobody("echo forged >\"$1/forged\"", &[&output]);
    let replace = as_nobody("echo forged >\"$1/mine\"", &[&output]);
    let read_log = as_nobody("cat \"$1/stdout.txt\"", &[&spool]);
    let list = as_nobody("ls \"$1\"", &[&run]);
    let modes = (mode(&run), mode(&spool), mode(&spool.join("stdout.txt")));
    let status = child.wait().unwrap();

    assert!(
        !write_new.status.success(),
        "nobody wrote a new output file"
    );
    assert!(!replace.status.success(), "nobody replaced an output file");
    assert!(
        !read_log.status.success() && read_log.stdout.is_empty(),
        "nobody read the log: {:?}",
        String::from_utf8_lossy(&read_log.stdout)
    );
    assert!(!list.status.success(), "nobody listed the run directory");
    assert_eq!(modes, (0o700, 0o700, 0o600));
    assert!(status.success(), "crunch-run exited {status}");
    let rec = h.fake.container(&uuid);
    assert_eq!(rec["state"], "Complete", "{rec}");
    let out = rec["output"].as_str().unwrap();
    assert_eq!(h.fake.read_file(out, "mine").unwrap(), b"mine\n");
    assert_eq!(h.fake.read_file(out, "by-nobody").unwrap(), b"theirs\n");
    assert_eq!(h.fake.read_file(out, "forged"), None);
    assert!(engine::containers_named(&uuid).is_empty());
}

/// Issue 10, point 7: ten runs at once on one engine and one API, each log exact (every
/// line of its own, none of another's), each record Complete, nothing left behind.
#[test]
fn ten_runs_at_once_keep_their_logs_apart() {
    let h = open_harness();
    let image = engine::shared_image();
    let pdh = h.fake.add_collection(&[(&image.tar_name(), &image.tar)]);
    let runs: Vec<String> = (10..20).map(uuid).collect();
    for (n, uuid) in runs.iter().enumerate() {
        engine::force_remove(uuid);
        let script = format!(
            "i=0; while [ $i -lt 300 ]; do echo \"run {n} line $i\"; i=$((i+1)); done; \
             echo \"run {n} err\" >&2"
        );
        h.fake
            .add_container(record(uuid, &pdh, &["sh", "-c", &script]));
    }
    let children: Vec<_> = runs.iter().map(|u| h.spawn(u, &[])).collect();
    for (uuid, child) in runs.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{uuid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (n, uuid) in runs.iter().enumerate() {
        let rec = h.fake.container(uuid);
        assert_eq!(rec["state"], "Complete", "{uuid}: {rec}");
        let want: String = (0..300).map(|i| format!("run {n} line {i}\n")).collect();
        let stdout = strip_timestamps(&h.log_text(uuid, "stdout.txt"));
        assert!(stdout == want, "{uuid}: stdout differs:\n{stdout}");
        let stderr = strip_timestamps(&h.log_text(uuid, "stderr.txt"));
        assert_eq!(stderr, format!("run {n} err\n"), "{uuid}");
        let crunch = h.log_text(uuid, "crunch-run.txt");
        assert!(
            runs.iter()
                .filter(|u| *u != uuid)
                .all(|u| !crunch.contains(u.as_str())),
            "{uuid}: another run's name in crunch-run.txt:\n{crunch}"
        );
        assert!(engine::containers_named(uuid).is_empty(), "{uuid} left");
    }
    assert!(
        std::fs::read_dir(h.spool_dir()).unwrap().count() == 0,
        "spool left behind"
    );
}
