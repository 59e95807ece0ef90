// Issue 10, point 7, on the real Docker engine: the engine restarted while a container
// runs. dockerd is stopped (SIGTERM, as a restart does) and started again
// (tests/scripts/ensure-docker.sh), so this binary holds this one test alone; run it under
// the shared real-engine lock. The engine is up again after it, pass or fail. The run
// ends Cancelled, saying the container started and the engine lost it, and once the
// engine is back crunch-run removes the container: nothing is left.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::engine;
use common::harness::{Harness, crate_dir, record, wait_for};

/// Starts the engine again when dropped, however the test ended: once the stopped dockerd
/// (`old`) and its containerd are gone, or a new one cannot take their sockets.
struct EngineBack {
    old: i32,
}

impl Drop for EngineBack {
    fn drop(&mut self) {
        let gone = wait_for(90, || {
            !std::path::Path::new(&format!("/proc/{}", self.old)).exists() && !managed_containerd()
        });
        let script = crate_dir().join("tests/scripts/ensure-docker.sh");
        let start = || {
            Command::new("sh")
                .arg(&script)
                .status()
                .is_ok_and(|s| s.success())
        };
        let back = start() || start();
        let fine = back && gone;
        if !fine && !std::thread::panicking() {
            panic!("the engine did not come back (old dockerd gone: {gone})");
        }
    }
}

/// Whether the containerd that dockerd starts for itself runs.
fn managed_containerd() -> bool {
    Command::new("pgrep")
        .args([
            "-f",
            "containerd --config /var/run/docker/containerd/containerd.toml",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The PID of the running dockerd.
fn dockerd_pid() -> i32 {
    let out = Command::new("pgrep")
        .args(["-x", "dockerd"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(pids.len(), 1, "one dockerd expected: {text}");
    pids[0]
}

fn engine_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn an_engine_restart_mid_run_cancels_with_the_reason_and_leaves_nothing() {
    engine::require_engine();
    let image = engine::shared_image();
    let h = Harness::new(common::fake_arvados::FakeArvados::start(), false);
    let pdh = h.fake.add_collection(&[(&image.tar_name(), &image.tar)]);
    let uuid = "zzzzz-dz642-er0000000000001";
    engine::force_remove(uuid);
    h.fake
        .add_container(record(uuid, &pdh, &["sh", "-c", "echo started; sleep 120"]));
    let child = h.spawn(uuid, &[]);
    assert!(
        wait_for(60, || h.logs_table("stdout").contains("started")),
        "the container did not start"
    );
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let pid = dockerd_pid();
    let back = EngineBack { old: pid };
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(wait_for(60, || !engine_answers()), "dockerd did not stop");
    // As a restart does: the engine comes back while crunch-run wraps up (once it has
    // judged the exit, so that the engine down is what it saw).
    let judged = wait_for(60, || {
        h.logs_table("crunch-run").contains("the engine lost it")
    });
    drop(back);
    assert!(engine_answers());
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    assert!(
        judged,
        "crunch-run did not say the engine lost the container"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- crunch-run exited {} after {took:?}:\n{stderr}",
        out.status
    );
    let rec = h.fake.container(uuid);
    assert_eq!(rec["state"], "Cancelled", "{rec}");
    let error = rec["runtime_status"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("the engine lost it"), "{rec}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        wait_for(30, || engine::containers_named(uuid).is_empty()),
        "docker container {uuid} left behind"
    );
    assert_eq!(std::fs::read_dir(h.spool_dir()).unwrap().count(), 0);
}
