//! The whole lifecycle, one scenario per test: what the record goes through, what the log
//! collection, the logs table and stderr say, and what the engine was asked.

use crate::store::ApiStore;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::stub_engine::Script;
use super::{Fixture, IMAGE_ID, UUID, count_lines, eventually, keys, running};

#[test]
fn exit_0_completes_with_stdout_and_stderr_in_the_log_collection() {
    let f = Fixture::new(Script {
        stdout: b"hello\n".to_vec(),
        stderr: b"a warning\nno newline".to_vec(),
        ..Default::default()
    });
    assert_eq!(f.run(), 0);
    let updates = f.updates();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert_eq!(updates[0], running());
    let last = &updates[1];
    assert_eq!(keys(last), ["exit_code", "log", "state"]);
    assert_eq!(last["state"], "Complete");
    assert_eq!(last["exit_code"], 0);
    assert_eq!(f.log("stdout.txt"), "hello\n");
    assert_eq!(f.log("stderr.txt"), "a warning\nno newline");
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains("Container exited with status code 0\n"),
        "{crunch}"
    );
    assert!(crunch.ends_with("Complete\n"), "{crunch}");
    // Created, then started: Running comes between (one update before the final one).
    let at = |text: &str| {
        crunch
            .find(text)
            .unwrap_or_else(|| panic!("{text}: {crunch}"))
    };
    assert!(at("Creating: docker create --name ") < at("Starting the container\n"));
    let calls = f.engine.calls();
    let call = |c: String| calls.iter().position(|x| *x == c).unwrap();
    assert!(call(format!("create {UUID}")) < call(format!("start {UUID}")));
    assert_eq!(f.logs_table("stdout"), "hello\n");
    assert_eq!(count_lines(&crunch, "Complete"), 1, "{crunch}");
    assert!(f.logs_table("crunch-run").ends_with("\nComplete\n"));
    assert!(f.stderr().ends_with("\nComplete\n"), "{}", f.stderr());
    assert!(
        f.stderr()
            .contains("Executing container: zzzzz-dz642-000000000000001")
    );
    // Nothing of the run is left in the spool directory (the test's lock directory is
    // there too).
    let left = std::fs::read_dir(f.spool.path()).unwrap().flatten();
    assert_eq!(left.filter(|e| e.file_name() != "locks").count(), 0);
}

#[test]
fn exit_1_is_data_the_run_still_completes() {
    let f = Fixture::new(Script {
        exit_code: 1,
        stderr: b"failed\n".to_vec(),
        ..Default::default()
    });
    assert_eq!(f.run(), 0);
    let last = f.final_update();
    assert_eq!(last["state"], "Complete");
    assert_eq!(last["exit_code"], 1);
    assert!(!last.contains_key("runtime_status"));
    assert_eq!(f.log("stderr.txt"), "failed\n");
    assert!(
        f.log("crunch-run.txt")
            .contains("Container exited with status code 1\n")
    );
    let calls = f.engine.calls();
    assert!(calls.contains(&format!("inspect {UUID}")), "{calls:?}");
}

#[test]
fn an_image_the_engine_lacks_is_loaded_from_keep() {
    let f = Fixture::new(Script::default());
    assert_eq!(f.run(), 0);
    let calls = f.engine.calls();
    assert_eq!(
        calls[..3],
        [
            format!("image_id {IMAGE_ID}"),
            "load".to_string(),
            format!("image_id {IMAGE_ID}")
        ],
        "{calls:?}"
    );
    assert_eq!(f.engine.loaded_bytes(), b"a docker image tar".len());
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains("Loading Docker image from keep (18 bytes)\n"),
        "{crunch}"
    );
    assert!(crunch.contains(&format!("docker load: Loaded image ID: {IMAGE_ID}\n")));
    assert_eq!(f.engine.specs()[0].image, IMAGE_ID);
}

#[test]
fn an_image_the_engine_has_is_not_loaded() {
    let f = Fixture::new(Script {
        images: vec![IMAGE_ID.into()],
        ..Default::default()
    });
    assert_eq!(f.run(), 0);
    assert!(!f.engine.calls().contains(&"load".to_string()));
    assert_eq!(f.store.gets(), 0, "the image tar was not read from Keep");
    assert!(
        f.log("crunch-run.txt")
            .contains("Docker image is available\n")
    );
}

#[test]
fn a_cancel_before_running_requeues_the_container() {
    let f = Fixture::new(Script::default());
    f.cancel.cancel("caught signal SIGTERM");
    assert_eq!(f.run(), 0);
    let updates = f.updates();
    assert_eq!(updates.len(), 1, "only the unlock: {updates:?}");
    assert_eq!(keys(&updates[0]), ["state"], "the unlock carries nothing");
    assert_eq!(f.store.get_container(UUID).unwrap()["state"], "Queued");
    assert!(!f.engine.calls().iter().any(|c| c.starts_with("create ")));
    assert!(f.log("crunch-run.txt").ends_with(
        "caught signal SIGTERM\nThis is not the container's fault: it goes back to the queue, for another worker to run\nQueued\n"
    ));
}

#[test]
fn a_cancel_while_running_removes_the_container_and_cancels() {
    let f = Fixture::new(Script {
        stdout: b"started\n".to_vec(),
        runs_until_removed: true,
        ..Default::default()
    });
    std::thread::scope(|s| {
        let run = s.spawn(|| f.run());
        eventually(|| f.logs_table("stdout") == "started\n");
        f.cancel.cancel("caught signal SIGTERM");
        assert_eq!(run.join().unwrap(), 0);
    });
    let last = f.final_update();
    assert_eq!(last["state"], "Cancelled");
    assert_eq!(last["exit_code"], Value::Null);
    assert_eq!(last["runtime_status"]["warning"], "caught signal SIGTERM");
    assert!(f.engine.calls().contains(&format!("remove {UUID}")));
    assert_eq!(f.log("stdout.txt"), "started\n");
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains("caught signal SIGTERM: removing the docker container\n"),
        "{crunch}"
    );
}

#[test]
fn max_run_time_stops_the_container_and_cancels() {
    let f = Fixture::new(Script {
        runs_until_removed: true,
        ..Default::default()
    });
    f.record(|r| r["scheduling_parameters"] = json!({"max_run_time": 1}));
    let started = Instant::now();
    assert_eq!(f.run(), 0);
    assert!(started.elapsed() < Duration::from_secs(15));
    let last = f.final_update();
    assert_eq!(last["state"], "Cancelled");
    assert_eq!(
        last["runtime_status"]["warning"],
        "maximum run time exceeded (1s)"
    );
    assert!(f.engine.calls().contains(&format!("remove {UUID}")));
}

#[test]
fn oom_is_an_exit_code_with_the_reason_in_the_log() {
    let f = Fixture::new(Script {
        exit_code: 137,
        oom_killed: true,
        ..Default::default()
    });
    f.record(|r| r["runtime_constraints"] = json!({"ram": 1 << 30}));
    assert_eq!(f.run(), 0);
    let last = f.final_update();
    assert_eq!(last["state"], "Complete");
    assert_eq!(last["exit_code"], 137);
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains(
            "Container exited with status code 137 (signal 9, SIGKILL)\n\
             Container was killed by the out-of-memory killer (memory limit 1073741824 bytes)\n"
        ),
        "{crunch}"
    );
    assert_eq!(f.engine.specs()[0].memory_bytes, Some(1 << 30));
}

#[test]
fn a_command_that_never_started_cancels_with_advice() {
    let f = Fixture::new(Script {
        start_error: Some("exec: \"nope\": executable file not found in $PATH".into()),
        ..Default::default()
    });
    assert_eq!(f.run(), 0);
    let last = f.final_update();
    assert_eq!(last["state"], "Cancelled");
    assert_eq!(last["exit_code"], Value::Null);
    assert_eq!(
        last["runtime_status"]["error"],
        "could not start container: exec: \"nope\": executable file not found in $PATH"
    );
    let detail = last["runtime_status"]["errorDetail"].as_str().unwrap();
    assert!(detail.contains("\nPossible causes:"), "{detail}");
    assert!(f.log("crunch-run.txt").contains("Possible causes:"));
}

#[test]
fn an_engine_down_at_image_inspect_requeues_and_marks_the_node_broken() {
    let f = Fixture::new(Script {
        engine_down: true,
        ..Default::default()
    });
    assert_eq!(f.run(), 0);
    let updates = f.updates();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(keys(&updates[0]), ["state"]);
    assert_eq!(f.store.get_container(UUID).unwrap()["state"], "Queued");
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains("Error suggests node is unable to run containers: "),
        "{crunch}"
    );
    assert!(crunch.contains("docker engine is unreachable"), "{crunch}");
    assert!(
        f.config.node.broken_mark().exists(),
        "the node is marked broken"
    );
    // Asked for its version, to diagnose: that fails too, and says so.
    assert!(crunch.contains("\nQueued\n"), "{crunch}");
}

#[test]
fn a_failed_running_update_requeues() {
    let f = Fixture::new(Script::default());
    f.store.fail_container_updates_to("Running");
    assert_eq!(f.run(), 0);
    assert_eq!(f.store.get_container(UUID).unwrap()["state"], "Queued");
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains("cannot set the container record to Running"),
        "{crunch}"
    );
    assert!(
        !f.config.node.broken_mark().exists(),
        "the node is not broken"
    );
    // Created before Running, never started, and removed.
    let calls = f.engine.calls();
    assert!(calls.contains(&format!("create {UUID}")), "{calls:?}");
    assert!(!calls.contains(&format!("start {UUID}")), "{calls:?}");
    assert!(calls.contains(&format!("remove {UUID}")), "{calls:?}");
}

/// Issue 8, point 2: `docker create` failing is the host's trouble; the record is not
/// Running yet, so it goes back to the queue. On the broken-node list, the node is marked.
#[test]
fn a_container_the_host_cannot_create_goes_back_to_the_queue() {
    let cases = [
        (
            "invalid mount config for type \"bind\": bind source path does not exist: /tmp/gone",
            false,
        ),
        (
            "mkdir /var/lib/docker/overlay2/0123-init: no space left on device",
            true,
        ),
    ];
    for (error, broken) in cases {
        let f = Fixture::new(Script {
            create_error: Some(error.into()),
            ..Default::default()
        });
        assert_eq!(f.run(), 0);
        let updates = f.updates();
        assert_eq!(updates.len(), 1, "only the unlock: {updates:?}");
        assert_eq!(f.store.get_container(UUID).unwrap()["state"], "Queued");
        let crunch = f.log("crunch-run.txt");
        assert!(
            crunch.contains("cannot create the container: ") && crunch.contains(error),
            "{crunch}"
        );
        assert!(
            crunch.contains("This is not the container's fault: it goes back to the queue"),
            "{crunch}"
        );
        assert_eq!(f.config.node.broken_mark().exists(), broken, "{error}");
        assert!(!f.engine.calls().contains(&format!("start {UUID}")));
    }
}

#[test]
fn a_queued_record_of_the_2016_api_runs_with_its_narrower_rules() {
    let f = Fixture::new(Script {
        stdout: b"old\n".to_vec(),
        ..Default::default()
    });
    f.record(|r| r["state"] = json!("Queued"));
    f.record(|r| r["mounts"] = json!({"/out": {"kind": "tmp"}}));
    assert_eq!(f.run(), 0);
    let updates = f.updates();
    assert_eq!(updates.len(), 2, "no early exit code: {updates:?}");
    assert_eq!(updates[0], running());
    assert_eq!(keys(&updates[1]), ["exit_code", "log", "output", "state"]);
    assert_eq!(updates[1]["state"], "Complete");
    assert_eq!(f.log("stdout.txt"), "old\n");
}

#[test]
fn a_stuck_engine_is_given_up_by_the_watchdog() {
    let mut f = Fixture::new(Script {
        client_hangs: true,
        ..Default::default()
    });
    f.config.docker_watchdog_interval = Some(Duration::from_millis(20));
    assert_eq!(f.run(), 0);
    let last = f.final_update();
    assert_eq!(last["state"], "Cancelled");
    let error = last["runtime_status"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "docker watchdog: the container is exited but docker start has not returned"
        ),
        "{error}"
    );
    assert!(f.engine.calls().contains(&format!("kill-client {UUID}")));
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains("the docker watchdog gave up on docker start: killing the docker client\n"),
        "{crunch}"
    );
}

#[test]
fn a_bad_record_cancels_before_running_with_the_first_problem_found() {
    let f = Fixture::new(Script::default());
    f.record(|r| {
        r["container_image"] = json!("acbd18db4cc2f85cedef654fccc4a4d8+3");
        r["mounts"] = json!({"/out": {"kind": "no-such-kind"}});
    });
    assert_eq!(f.run(), 0);
    let updates = f.updates();
    assert_eq!(updates.len(), 1, "no Running: {updates:?}");
    let error = updates[0]["runtime_status"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("While setting up mounts: "),
        "the mounts first: {error}"
    );
    f.record(|r| r["mounts"] = json!({}));
    f.store.updates.lock().unwrap().clear();
    f.record(|r| r["state"] = json!("Locked"));
    assert_eq!(f.run(), 0);
    assert_eq!(
        f.final_update()["runtime_status"]["error"],
        "image collection acbd18db4cc2f85cedef654fccc4a4d8+3 was not found"
    );
    assert!(!f.engine.calls().iter().any(|c| c.starts_with("create ")));
}

#[test]
fn the_engine_is_asked_its_cgroup_driver_only_for_a_cgroup_parent() {
    let parent = "/slurm_vm/uid_0/job_1/step_batch/task_0";
    let f = Fixture::new(Script::default());
    assert_eq!(f.run(), 0);
    assert!(!f.engine.calls().iter().any(|c| c == "cgroup_driver"));
    assert_eq!(f.engine.specs()[0].cgroup_parent, None);

    let mut f = Fixture::new(Script::default());
    f.config.container.cgroup_parent = Some(parent.into());
    assert_eq!(f.run(), 0);
    assert!(f.engine.calls().iter().any(|c| c == "cgroup_driver"));
    assert_eq!(f.engine.specs()[0].cgroup_parent.as_deref(), Some(parent));
}

#[test]
fn on_the_systemd_cgroup_driver_the_container_runs_without_the_parent_and_says_so() {
    let mut f = Fixture::new(Script {
        cgroup_driver: "systemd".into(),
        ..Default::default()
    });
    f.config.container.cgroup_parent = Some("/slurm_vm/uid_0/job_1/step_batch/task_0".into());
    assert_eq!(f.run(), 0);
    assert_eq!(f.final_update()["state"], "Complete");
    assert_eq!(f.engine.specs()[0].cgroup_parent, None);
    let crunch = f.log("crunch-run.txt");
    assert!(
        crunch.contains(
            "Warning: -cgroup-parent-subsystem ignored: docker uses the systemd cgroup driver"
        ),
        "{crunch}"
    );
}
