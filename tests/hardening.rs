// Issue 10 (hardening), component tests: the real crunch-run binary against the fake
// docker CLI in binstubs/ and the fake Arvados API + Keep. Records crunch-run cannot read,
// and the wrap-up when the API is gone.

mod common;

use std::time::{Duration, Instant};

use common::harness::{Harness, UUID, wait_for};

/// A record nested deeper than serde_json reads is still closed: Cancelled, the reason in
/// runtime_status, exit 0; nothing is run.
#[test]
fn a_record_too_deep_to_read_is_cancelled_with_the_reason() {
    let h = Harness::with_fake_docker();
    h.fake.add_deeply_nested_container(UUID, 200);
    let out = h.run(UUID, &[]);
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Cancelled", "{rec}");
    let error = rec["runtime_status"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot read the container record")
            && error.contains("nested more than 127 levels deep"),
        "{rec}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nested more than 127 levels deep"),
        "{stderr}"
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        !h.docker_calls().iter().any(|c| c.starts_with("run")),
        "{:?}",
        h.docker_calls()
    );
}

/// A record that is not JSON at all (or whose state cannot be read) is left as it is:
/// nothing tells crunch-run it may change it.
#[test]
fn a_record_whose_state_cannot_be_read_is_left_alone() {
    let h = Harness::with_fake_docker();
    h.fake.add_deeply_nested_container(UUID, 200);
    h.fake
        .set_container_fields(UUID, serde_json::json!({"state": "Running"}));
    let out = h.run(UUID, &[]);
    assert!(!out.status.success());
    assert_eq!(h.fake.container(UUID)["state"], "Running");
    assert!(h.fake.container_updates(UUID).is_empty());
}

const IMAGE_ID: &str = "sha256:d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";

/// A Locked record for `command` whose image collection holds a fake image tar the fake
/// docker loads as IMAGE_ID.
fn add_record(h: &Harness, command: &[&str]) {
    let tar: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let pdh = h.fake.add_collection(&[(&format!("{IMAGE_ID}.tar"), &tar)]);
    let mut rec = common::harness::record(UUID, &pdh, command);
    rec["mounts"] = serde_json::json!({"/tmp": {"kind": "tmp", "capacity": 1_000_000}});
    h.fake.add_container(rec);
}

/// crunch-run with `args`, the container sleeping `secs` seconds, started; the API goes
/// down once the record is Running.
fn spawn_then_api_down(h: &Harness, args: &[&str], secs: &str) -> std::process::Child {
    let mut cmd = h.command(UUID);
    cmd.args(args)
        .env("FAKE_DOCKER_LOAD_ID", IMAGE_ID)
        .env("FAKE_DOCKER_SLEEP", secs)
        .env("FAKE_DOCKER_STDOUT", "hello\n")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn crunch-run");
    assert!(
        wait_for(30, || h.fake.container(UUID)["state"] == "Running"),
        "the record did not go Running"
    );
    h.fake.set_api_down(true);
    child
}

/// The spool directory named in `stderr` as where the logs are kept.
fn kept_logs(stderr: &str) -> std::path::PathBuf {
    let at = stderr
        .find("kept on this host in ")
        .unwrap_or_else(|| panic!("no kept logs named:\n{stderr}"));
    let rest = &stderr[at + "kept on this host in ".len()..];
    let path = rest.split_whitespace().next().unwrap_or_default();
    std::path::PathBuf::from(path.trim_end_matches(['.', ',']))
}

/// Issue 10, point 5: with the API gone once the container exited, the whole wrap-up ends
/// by one deadline (not one per step), says on stderr and in crunch-run.txt what fails
/// and for how long it is retried, exits non-zero and keeps the logs, naming where.
#[test]
fn with_the_api_gone_the_wrap_up_ends_by_one_deadline() {
    let h = Harness::with_fake_docker();
    add_record(&h, &["echo", "hello"]);
    let child = spawn_then_api_down(&h, &["--wrap-up-deadline=5s"], "1");
    let t0 = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- crunch-run stderr:\n{stderr}");
    assert!(!out.status.success());
    // 1 s of container, 5 s of wrap-up, start-up and the last attempts; each of the
    // wrap-up's steps retrying for its own 4 s (--api-retry-deadline) would take 20 s+.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(
        stderr.contains("failed (") && stderr.contains("retrying for up to"),
        "{stderr}"
    );
    let kept = kept_logs(&stderr);
    let crunch = std::fs::read_to_string(kept.join("crunch-run.txt")).unwrap();
    assert!(crunch.contains("retrying for up to"), "{crunch}");
    assert_eq!(
        std::fs::read_to_string(kept.join("stdout.txt"))
            .unwrap()
            .get(31..),
        Some("hello\n")
    );
    h.fake.set_api_down(false);
    assert_eq!(h.fake.container(UUID)["state"], "Running");
}

/// Issue 10, point 5: a signal during a wrap-up that retries cuts it to the grace period;
/// the run exits non-zero, keeping the logs and naming where.
#[test]
fn a_signal_during_the_wrap_up_cuts_the_retries_short() {
    let h = Harness::with_fake_docker();
    add_record(&h, &["echo", "hello"]);
    let child = spawn_then_api_down(&h, &["--wrap-up-deadline=10m", "--wrap-up-grace=1s"], "1");
    std::thread::sleep(Duration::from_secs(4));
    let t0 = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- crunch-run stderr:\n{stderr}");
    assert!(!out.status.success());
    // The grace (1 s) and the last attempts; each step retrying for its own 4 s would
    // take 8 s and more.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(stderr.contains("Caught a signal"), "{stderr}");
    let kept = kept_logs(&stderr);
    assert!(kept.join("crunch-run.txt").exists(), "{}", kept.display());
}

/// Issue 10, point 7: a file name with a raw no-break space (U+00A0) or another Unicode
/// whitespace character made the Python SDK refuse the whole output collection (it splits
/// manifest lines on `\s`). Such names are escaped byte by byte, and the real Python SDK
/// reads every file back.
#[test]
fn unicode_whitespace_in_a_name_leaves_the_output_readable_by_python() {
    use std::os::unix::ffi::OsStrExt;
    let h = Harness::with_fake_docker();
    add_record(&h, &["true"]);
    let script = "o=$(host_of /tmp); printf nbsp > \"$o/a$(printf '\\302\\240')b\"; \
                  printf ideo > \"$o/c$(printf '\\343\\200\\200')d\"; echo plain > \"$o/plain\"";
    let out = h.run(
        UUID,
        &[
            ("FAKE_DOCKER_LOAD_ID", IMAGE_ID),
            ("FAKE_DOCKER_RUN_SH", script),
        ],
    );
    assert!(out.status.success());
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Complete", "{rec}");
    let output = rec["output"].as_str().unwrap();
    let manifest = h.fake.collection_manifest(output).unwrap();
    assert!(
        manifest.contains(":a\\302\\240b ") && manifest.contains(":c\\343\\200\\200d"),
        "{manifest}"
    );
    assert!(manifest.is_ascii(), "{manifest}");
    let read = |name: &[u8]| {
        common::python_reads_collection(&h.fake, output, std::ffi::OsStr::from_bytes(name))
    };
    assert_eq!(read("a\u{a0}b".as_bytes()), b"nbsp");
    assert_eq!(read("c\u{3000}d".as_bytes()), b"ideo");
    assert_eq!(read(b"plain"), b"plain\n");
}

/// Issue 10, point 7, the hostile collections the input-manifest test
/// (component.rs) does not cover: a collection mount whose `path` climbs out of it, and
/// hostile names in a mount inside the output directory (whose files go into the output
/// manifest). Each run ends Cancelled before the container runs, and nothing is written
/// outside the run's directory.
#[test]
fn hostile_mount_paths_and_names_inside_the_output_are_refused() {
    let escape = "crunch-run-hostile-i10";
    let outside = std::env::temp_dir().join(escape);
    let _ = std::fs::remove_dir_all(&outside);
    for label in [
        "../../../../../../tmp",
        "a/../../../../../../tmp",
        "/../../../../../../tmp",
    ] {
        let extra = serde_json::json!({ "path": label });
        let h = Harness::with_fake_docker();
        add_record(&h, &["true"]);
        let foo = h.fake.add_block(b"foo");
        let input = h
            .fake
            .add_manifest_unchecked(&format!(". {foo} 0:3:{escape}\n"));
        let mut rec = h.fake.container(UUID);
        let mut mount = serde_json::json!({"kind": "collection", "portable_data_hash": input});
        mount
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        rec["mounts"]["/in"] = mount;
        h.fake.add_container(rec);
        h.run(UUID, &[("FAKE_DOCKER_LOAD_ID", IMAGE_ID)]);
        let rec = h.fake.container(UUID);
        assert_eq!(rec["state"], "Cancelled", "{label}: {rec}");
        let reason = rec["runtime_status"]["error"].as_str().unwrap_or_default();
        assert!(
            reason.contains("While setting up mounts"),
            "{label}: {reason}"
        );
        eprintln!("{label}: {reason}");
        assert!(!outside.exists(), "{label}: wrote {}", outside.display());
        assert!(
            h.docker_calls().iter().all(|c| !c.starts_with("create ")),
            "{label}"
        );
    }
    // Hostile names in a collection mounted inside the output directory.
    for name in [
        "\\056\\056\\057x",
        "a\\057\\056\\056\\057\\056\\056\\057x",
        "\\056\\056",
    ] {
        let h = Harness::with_fake_docker();
        add_record(&h, &["true"]);
        let foo = h.fake.add_block(b"foo");
        let input = h
            .fake
            .add_manifest_unchecked(&format!(". {foo} 0:3:{name}\n"));
        let mut rec = h.fake.container(UUID);
        rec["mounts"]["/tmp/in"] =
            serde_json::json!({"kind": "collection", "portable_data_hash": input});
        h.fake.add_container(rec);
        h.run(UUID, &[("FAKE_DOCKER_LOAD_ID", IMAGE_ID)]);
        let rec = h.fake.container(UUID);
        assert_eq!(rec["state"], "Cancelled", "{name}: {rec}");
        let reason = rec["runtime_status"]["error"].as_str().unwrap_or_default();
        assert!(
            reason.contains("While setting up mounts"),
            "{name}: {reason}"
        );
        eprintln!("{name}: {reason}");
        assert!(rec["output"].is_null(), "{name}: {rec}");
        assert!(
            h.docker_calls().iter().all(|c| !c.starts_with("create ")),
            "{name}"
        );
    }
}

/// Issue 10, point 5: retries said after crunch-run.txt closed (saving the log collection
/// itself, the final update) reach the kept copy of crunch-run.txt too, before the line
/// that says the save failed.
#[test]
fn retries_of_the_log_save_are_in_the_kept_crunch_run_txt() {
    let h = Harness::with_fake_docker();
    add_record(&h, &["echo", "hello"]);
    let mut rec = h.fake.container(UUID);
    rec["mounts"] = serde_json::json!({});
    h.fake.add_container(rec);
    let child = spawn_then_api_down(&h, &["--wrap-up-deadline=5s"], "1");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let kept = kept_logs(&stderr);
    let crunch = std::fs::read_to_string(kept.join("crunch-run.txt")).unwrap();
    let retry = crunch
        .find("; retrying for up to")
        .unwrap_or_else(|| panic!("no retry in the kept crunch-run.txt:\n{crunch}"));
    let failed = crunch.find("Saving the log collection failed").unwrap();
    assert!(retry < failed, "{crunch}");
    common::harness::assert_timestamped(&crunch);
}
