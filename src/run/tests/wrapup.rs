//! The wrap-up, one scenario per test: the output (saved, failing, fed by mounts), the log
//! collection (saved while running, failing at the end) and what each place reports.

use serde_json::json;

use super::super::stub_engine::Script;
use super::{Fixture, UUID, count_lines, eventually, running};

#[test]
fn a_failed_output_save_cancels_with_the_exit_code_kept() {
    let f = Fixture::new(Script {
        stdout: b"out\n".to_vec(),
        ..Default::default()
    });
    f.record(|r| r["mounts"] = json!({"/out": {"kind": "tmp"}}));
    f.fail_collections("output for");
    assert_eq!(f.run(), 0);
    let updates = f.updates();
    assert_eq!(updates[0], running());
    assert_eq!(
        updates[1],
        serde_json::Map::from_iter([("exit_code".to_string(), json!(0))]),
        "the exit code is recorded early"
    );
    let last = &updates[2];
    assert_eq!(last["state"], "Cancelled");
    assert_eq!(last["exit_code"], 0);
    assert!(!last.contains_key("output"));
    let error = last["runtime_status"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("saving the output collection failed: "),
        "{error}"
    );
    assert_eq!(f.log("stdout.txt"), "out\n");
}

#[test]
fn the_output_directory_is_saved_and_named_in_the_final_update() {
    let f = Fixture::new(Script::default());
    f.record(|r| r["mounts"] = json!({"/out": {"kind": "tmp"}}));
    assert_eq!(f.run(), 0);
    let last = f.final_update();
    assert_eq!(last["state"], "Complete");
    let output = last["output"].as_str().unwrap();
    let saved = f.store.collections.lock().unwrap();
    let collection = saved.values().find(|c| c.output).unwrap();
    assert_eq!(collection.name, format!("output for {UUID}"));
    assert_eq!(
        crate::arvados::manifest::portable_data_hash(&collection.manifest_text),
        output
    );
}

#[test]
fn a_stdin_mount_is_fed_to_the_container() {
    let f = Fixture::new(Script::default());
    f.record(|r| {
        r["mounts"] = json!({
            "/out": {"kind": "tmp"},
            "stdin": {"kind": "json", "content": {"a": [1, 2]}},
        })
    });
    assert_eq!(f.run(), 0);
    assert!(f.engine.specs()[0].stdin);
    assert_eq!(f.engine.stdin(), br#"{"a":[1,2]}"#);
    assert_eq!(f.final_update()["state"], "Complete");
}

/// Regression (issue 7): finish logged "Complete" (to crunch-run.txt, stderr and the logs
/// table) before a failed log save turned the outcome into Cancelled.
#[test]
fn a_failed_log_save_reports_nowhere_a_state_the_record_does_not_end_in() {
    let f = Fixture::new(Script {
        stdout: b"hello\n".to_vec(),
        ..Default::default()
    });
    f.fail_collections("logs for");
    assert_eq!(f.run(), 0);
    let last = f.final_update();
    assert_eq!(last["state"], "Cancelled");
    assert_eq!(last["exit_code"], 0, "the exit code is still recorded");
    assert!(
        !last.contains_key("log"),
        "no log that was not saved: {last:?}"
    );
    let status = &last["runtime_status"];
    let error = (status["errorDetail"].as_str())
        .or(status["error"].as_str())
        .unwrap();
    assert!(
        error.starts_with("Saving the log collection failed: "),
        "{error}"
    );

    let kept = f.kept_run_dir().join("logs");
    let crunch =
        super::strip_timestamps(&std::fs::read_to_string(kept.join("crunch-run.txt")).unwrap());
    let stderr = f.stderr();
    let table = f.logs_table("crunch-run");
    for (place, text) in [
        ("crunch-run.txt", &crunch),
        ("stderr", &stderr),
        ("logs table", &table),
    ] {
        assert_eq!(
            count_lines(text, "Complete"),
            0,
            "{place} says Complete:\n{text}"
        );
        assert_eq!(count_lines(text, "Cancelled"), 1, "{place}:\n{text}");
        assert!(text.ends_with("Cancelled\n"), "{place}:\n{text}");
        assert!(text.contains(error), "{place} says why ({error}):\n{text}");
        assert!(
            text.contains(&kept.display().to_string()),
            "{place}:\n{text}"
        );
    }
    let stdout = std::fs::read_to_string(kept.join("stdout.txt")).unwrap();
    assert_eq!(super::strip_timestamps(&stdout), "hello\n");
}

#[test]
fn the_logs_so_far_are_saved_while_it_runs() {
    let mut f = Fixture::new(Script {
        stdout: b"early\n".to_vec(),
        runs_until_removed: true,
        ..Default::default()
    });
    f.config.log_updates.bytes = 1;
    std::thread::scope(|s| {
        let run = s.spawn(|| f.run());
        // A save while Running: the record's log, no state.
        eventually(|| {
            f.updates()
                .iter()
                .any(|u| !u.contains_key("state") && u.contains_key("log"))
        });
        f.cancel.cancel("caught signal SIGTERM");
        assert_eq!(run.join().unwrap(), 0);
    });
    let updates = f.updates();
    let interim = updates.iter().find(|u| u.contains_key("log")).unwrap();
    // One log collection: saved with a trash date while running, kept for good at the end.
    let collections = f.store.collections.lock().unwrap().clone();
    let logs: Vec<_> = collections
        .values()
        .filter(|c| c.name == format!("logs for {UUID}"))
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].trash_at, None);
    let last = updates.last().unwrap();
    assert_eq!(last["state"], "Cancelled");
    assert_ne!(last["log"], interim["log"], "the final save has more");
    assert_eq!(f.log("stdout.txt"), "early\n");
}

#[test]
fn a_stdout_mount_gets_the_raw_bytes_in_the_output_and_not_the_log() {
    let f = Fixture::new(Script {
        stdout: b"raw\x00bytes, no newline".to_vec(),
        ..Default::default()
    });
    f.record(|r| {
        r["mounts"] = json!({
            "/out": {"kind": "tmp"},
            "stdout": {"kind": "file", "path": "/out/result.txt"},
        })
    });
    assert_eq!(f.run(), 0);
    let last = f.final_update();
    assert_eq!(last["state"], "Complete");
    let output = last["output"].as_str().unwrap();
    assert_eq!(
        f.collection_file(output, "result.txt").unwrap(),
        "raw\u{0}bytes, no newline"
    );
    assert_eq!(f.log("stdout.txt"), "");
}

#[test]
fn with_no_logs_table_nothing_is_posted_even_after_the_logs_closed() {
    let mut f = Fixture::new(Script {
        stdout: b"hello\n".to_vec(),
        ..Default::default()
    });
    f.config.logs_table = false;
    f.fail_collections("logs for");
    assert_eq!(f.run(), 0);
    assert_eq!(f.final_update()["state"], "Cancelled");
    assert!(f.stderr().contains("Saving the log collection failed"));
    assert!(f.store.logs.lock().unwrap().is_empty());
}
