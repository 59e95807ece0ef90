// What a worker in a cluster needs of a run, end to end with the real binary, the fake
// docker CLI (binstubs/) and the fake Arvados API: a failure that is not the container's
// fault before Running puts it back in the queue (the API's unlock) and says why; a node
// that cannot run containers is marked broken and `--list` says so; the container's own
// faults still end Cancelled; node-info.txt, container.json and node.json are in the log
// collection; the final update carries the cost; SIGUSR1 saves the logs at once and SIGUSR2
// reloads the prices.

mod common;

use common::fake_arvados::Times;
use common::harness::{Harness, UUID, record, strip_timestamps, wait_for};
use serde_json::Value;

const IMAGE_ID: &str = "sha256:d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";

/// A harness whose container runs `command` in an image the engine must load from a tar.
fn harness(command: &[&str]) -> Harness {
    let h = Harness::with_fake_docker();
    let tar: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let pdh = h.fake.add_collection(&[(&format!("{IMAGE_ID}.tar"), &tar)]);
    h.fake.add_container(record(UUID, &pdh, command));
    h
}

fn run(h: &Harness, env: &[(&str, &str)]) -> std::process::Output {
    let mut all = vec![("FAKE_DOCKER_LOAD_ID", IMAGE_ID)];
    all.extend_from_slice(env);
    h.run(UUID, &all)
}

/// The file `name` of the last log collection saved (a requeued record names none).
fn last_log(h: &Harness, name: &str) -> String {
    let saved: Vec<Value> = h
        .fake
        .collections_created()
        .into_iter()
        .chain(h.fake.collections_updated())
        .filter(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("logs for "))
        })
        .collect();
    let manifest = saved.last().expect("a log collection")["manifest_text"]
        .as_str()
        .expect("its manifest")
        .to_string();
    let bytes = h.fake.read_manifest_file(&manifest, name).expect(name);
    strip_timestamps(&String::from_utf8_lossy(&bytes))
}

fn unlocked(h: &Harness) -> bool {
    let path = format!("/arvados/v1/containers/{UUID}/unlock");
    h.fake
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path == path && r.status == 200)
}

fn list(h: &Harness) -> String {
    let out = std::process::Command::new(common::harness::crunch_run_bin())
        .arg("--list")
        .env("CRUNCH_RUN_LOCK_DIR", h.tmp.path().join("locks"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a case that must end back in the queue; returns crunch-run.txt.
fn requeued(h: &Harness, env: &[(&str, &str)]) -> String {
    let out = run(h, env);
    assert!(out.status.success(), "the unlock is the final step");
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Queued", "{rec}");
    assert!(unlocked(h), "through the API's unlock");
    assert!(
        !h.fake
            .container_updates(UUID)
            .iter()
            .any(|u| u["state"] == "Running" || u["state"] == "Cancelled"),
        "{:?}",
        h.fake.container_updates(UUID)
    );
    assert!(!h.docker_calls().iter().any(|c| c.starts_with("start ")));
    let crunch = last_log(h, "crunch-run.txt");
    assert!(
        crunch.contains("This is not the container's fault: it goes back to the queue"),
        "{crunch}"
    );
    assert!(crunch.ends_with("Queued\n"), "{crunch}");
    crunch
}

#[test]
fn an_engine_that_cannot_be_reached_requeues_and_marks_the_node_broken() {
    let h = harness(&["true"]);
    assert_eq!(list(&h), "");
    let crunch = requeued(&h, &[("FAKE_DOCKER_ENGINE_DOWN", "1")]);
    assert!(
        crunch.contains("Error suggests node is unable to run containers: "),
        "{crunch}"
    );
    assert!(
        crunch.contains("Cannot connect to the Docker daemon"),
        "{crunch}"
    );
    assert!(crunch.contains("to mark node as broken"), "{crunch}");
    assert_eq!(list(&h), "broken\n", "as arvados-dispatch-cloud reads it");
}

#[test]
fn a_broken_node_hook_runs_instead_of_the_mark() {
    let h = harness(&["true"]);
    let hook = h.tmp.path().join("hook");
    let touched = h.tmp.path().join("hook-ran");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho draining this node\ntouch {}\n",
            touched.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hook_flag = format!("-broken-node-hook={}", hook.display());
    let mut cmd = h.command(UUID);
    cmd.arg(&hook_flag)
        .env("FAKE_DOCKER_LOAD_ID", IMAGE_ID)
        .env(
            "FAKE_DOCKER_LOAD_ERROR",
            "write /var/lib/docker/tmp/x: no space left on device",
        );
    assert!(cmd.output().unwrap().status.success());
    assert_eq!(h.fake.container(UUID)["state"], "Queued");
    let crunch = last_log(&h, "crunch-run.txt");
    assert!(crunch.contains("no space left on device"), "{crunch}");
    assert!(
        crunch.contains("broken node hook: draining this node"),
        "{crunch}"
    );
    assert!(touched.exists(), "the hook ran");
    assert_eq!(list(&h), "", "the hook, not the mark");
}

#[test]
fn no_docker_cli_on_the_path_requeues() {
    let h = harness(&["true"]);
    let empty = h.tmp.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let crunch = requeued(&h, &[("PATH", empty.to_str().unwrap())]);
    assert!(crunch.contains("could not run"), "{crunch}");
    assert_eq!(list(&h), "broken\n");
}

/// Issue 8, point 2: `docker create` failing for a host reason sends the container back to
/// the queue (it is created before Running); one on the broken-node list marks the node.
#[test]
fn a_container_the_host_cannot_create_goes_back_to_the_queue() {
    let h = harness(&["true"]);
    let error = "invalid mount config for type \"bind\": bind source path does not exist";
    let crunch = requeued(&h, &[("FAKE_DOCKER_CREATE_FAIL", error)]);
    assert!(crunch.contains("cannot create the container: "), "{crunch}");
    assert!(crunch.contains(error), "{crunch}");
    assert_eq!(list(&h), "", "not a broken node");

    let h = harness(&["true"]);
    let error = "mkdir /var/lib/docker/overlay2/0123-init: no space left on device";
    let crunch = requeued(&h, &[("FAKE_DOCKER_CREATE_FAIL", error)]);
    assert!(
        crunch.contains("Error suggests node is unable to run containers: "),
        "{crunch}"
    );
    assert_eq!(list(&h), "broken\n");
}

#[test]
fn a_failed_running_update_requeues_without_marking_the_node() {
    let h = harness(&["true"]);
    let path = format!("/arvados/v1/containers/{UUID}");
    h.fake.fail_api("PUT", &path, 422, Times::Always);
    let out = run(&h, &[]);
    assert!(out.status.success());
    assert_eq!(h.fake.container(UUID)["state"], "Queued");
    assert!(unlocked(&h));
    let crunch = last_log(&h, "crunch-run.txt");
    assert!(
        crunch.contains("cannot set the container record to Running"),
        "{crunch}"
    );
    assert_eq!(list(&h), "");
}

#[test]
fn a_signal_before_running_requeues() {
    let h = harness(&["true"]);
    // The image collection answers late: the signal comes while it is asked for.
    h.fake
        .delay_api("/arvados/v1/collections", std::time::Duration::from_secs(2));
    let mut child = h.spawn(UUID, &[("FAKE_DOCKER_LOAD_ID", IMAGE_ID)]);
    std::thread::sleep(std::time::Duration::from_millis(800));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert_eq!(h.fake.container(UUID)["state"], "Queued");
    let crunch = last_log(&h, "crunch-run.txt");
    assert!(crunch.contains("caught signal SIGTERM"), "{crunch}");
    assert!(crunch.ends_with("Queued\n"), "{crunch}");
}

#[test]
fn the_container_s_own_faults_still_cancel() {
    // A tar that is not an image: the container's image is bad, not the node.
    let h = harness(&["true"]);
    let out = run(&h, &[("FAKE_DOCKER_LOAD_FAIL", "1")]);
    assert!(out.status.success());
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Cancelled", "{rec}");
    assert!(!unlocked(&h));
    assert_eq!(list(&h), "");
    // A command that does not exist.
    let h = harness(&["/no/such/command"]);
    let msg = "exec: \"/no/such/command\": stat /no/such/command: no such file or directory";
    assert!(run(&h, &[("FAKE_DOCKER_START_FAIL", msg)]).status.success());
    assert_eq!(h.fake.container(UUID)["state"], "Cancelled");
    assert_eq!(list(&h), "", "a missing command is not the node's fault");
}

#[test]
fn node_files_are_in_the_log_collection_and_the_cost_in_the_final_update() {
    let h = harness(&["true"]);
    let instance_type = r#"{"Name":"m5.large","Price":36000,"VCPUs":2}"#;
    let out = run(&h, &[("InstanceType", instance_type)]);
    assert!(out.status.success());
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Complete", "{rec}");
    let info = strip_timestamps(&h.log_text(UUID, "node-info.txt"));
    for heading in [
        "Host Information\nLinux ",
        "\nCPU Information\n",
        "\nMemory Information\nMemTotal:",
        "\nDisk Space\n",
        "\nDisk INodes\n",
    ] {
        assert!(info.contains(heading), "{heading:?} in {info}");
    }
    let container: Value = serde_json::from_str(&h.log_text(UUID, "container.json")).unwrap();
    assert_eq!(container["uuid"], UUID);
    assert_eq!(container["state"], "Locked", "the record as fetched");
    assert!(
        h.log_text(UUID, "container.json")
            .contains("\n    \"uuid\": ")
    );
    assert_eq!(h.log_text(UUID, "node.json"), instance_type);
    // 36000 an hour is 10 a second: a run of a fraction of a second to a few seconds.
    let cost = rec["cost"].as_f64().unwrap();
    assert!(cost > 0.0 && cost < 100.0, "{cost}");
}

#[test]
fn kept_prices_give_the_cost_and_sigusr2_reloads_them() {
    let h = harness(&["sleep", "3"]);
    let locks = h.tmp.path().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let tell = |prices: &str| {
        let mut list = std::process::Command::new(common::harness::crunch_run_bin())
            .args(["--list", "--stdin-prices"])
            .env("CRUNCH_RUN_LOCK_DIR", &locks)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = list.stdin.take().unwrap();
        stdin.write_all(prices.as_bytes()).unwrap();
        drop(stdin);
        list.wait_with_output().unwrap()
    };
    let price = |at: std::time::SystemTime, price: u32| {
        let at = humantime::format_rfc3339_seconds(at);
        format!(r#"[{{"StartTime":"{at}","Price":{price}}}]"#)
    };
    let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
    assert!(tell(&price(long_ago, 3600)).status.success());
    let mut child = h.spawn(
        UUID,
        &[
            ("FAKE_DOCKER_LOAD_ID", IMAGE_ID),
            ("FAKE_DOCKER_SLEEP", "3"),
        ],
    );
    assert!(wait_for(20, || h.fake.container(UUID)["state"] == "Running"));
    // A new price from now on, as arvados-dispatch-cloud's probe hands it over: `--list`
    // keeps it and sends the run SIGUSR2.
    let said = tell(&price(std::time::SystemTime::now(), 7200));
    assert!(said.status.success());
    assert_eq!(String::from_utf8_lossy(&said.stdout), format!("{UUID}\n"));
    assert!(child.wait().unwrap().success());
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Complete", "SIGUSR2 did not kill it: {rec}");
    let crunch = strip_timestamps(&h.log_text(UUID, "crunch-run.txt"));
    assert!(
        crunch.contains("Instance price changed to 3.60e+03"),
        "{crunch}"
    );
    assert!(
        crunch.contains("Instance price changed to 7.20e+03"),
        "{crunch}"
    );
    // About 3 s at 1 a second and then 2 a second.
    let cost = rec["cost"].as_f64().unwrap();
    assert!(cost > 2.0 && cost < 60.0, "{cost}");
}

#[test]
fn sigusr1_saves_the_logs_so_far_at_once() {
    let h = harness(&["sleep", "30"]);
    let mut child = h.spawn(
        UUID,
        &[
            ("FAKE_DOCKER_LOAD_ID", IMAGE_ID),
            ("FAKE_DOCKER_SLEEP", "30"),
            ("FAKE_DOCKER_STDOUT", "hello\\n"),
        ],
    );
    assert!(wait_for(20, || h.fake.container(UUID)["state"] == "Running"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        h.fake.manifests_saved_with_trash_date().is_empty(),
        "not before"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    assert!(
        wait_for(10, || !h.fake.manifests_saved_with_trash_date().is_empty()),
        "an interim save at once"
    );
    assert!(wait_for(5, || h.fake.container(UUID)["log"].is_string()));
    assert_eq!(h.fake.container(UUID)["state"], "Running");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert_eq!(h.fake.container(UUID)["state"], "Cancelled");
}

#[test]
fn logs_that_cannot_start_requeue() {
    let h = harness(&["true"]);
    let mut cmd = h.command(UUID);
    // Not a directory anyone can create: the log pipeline cannot start.
    cmd.arg("--spool-dir=/proc/no-such-spool");
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    assert_eq!(h.fake.container(UUID)["state"], "Queued");
    assert!(unlocked(&h));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot create spool directory"), "{said}");
    assert!(said.contains("goes back to the queue"), "{said}");
}
