// Component tests: the real crunch-run binary against the fake docker CLI in binstubs/ and
// a fake Arvados API + Keep over HTTPS. Each test asserts on what the servers received and
// on the final record, as the story's test cases (Arvados #7816) ask.

mod common;

use common::harness::{Harness, UUID, assert_timestamped, record, strip_timestamps, wait_for};
use serde_json::{Value, json};
use std::process::ExitStatus;

const IMAGE_HEX: &str = "d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";

fn image_id() -> String {
    format!("sha256:{IMAGE_HEX}")
}

/// A harness with an image collection holding one fake `<id>.tar`; returns its PDH.
fn setup() -> (Harness, String) {
    setup_on(Harness::with_fake_docker())
}

/// `setup()` on a harness of the caller's choosing.
fn setup_on(h: Harness) -> (Harness, String) {
    let tar: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let pdh = h
        .fake
        .add_collection(&[(&format!("{}.tar", image_id()), &tar)]);
    (h, pdh)
}

fn load_env() -> Vec<(&'static str, String)> {
    vec![("FAKE_DOCKER_LOAD_ID", image_id())]
}

fn run_with(h: &Harness, extra: &[(&str, &str)]) -> std::process::Output {
    let mut env: Vec<(&str, String)> = load_env();
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.run(UUID, &env)
}

fn final_record(h: &Harness) -> Value {
    h.fake.container(UUID)
}

/// The API refused no write (a 404 on a GET is an expected answer, not a refusal).
fn assert_no_rejections(h: &Harness) {
    let rejected: Vec<_> = h
        .fake
        .rejected()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(rejected.is_empty(), "the API refused: {rejected:?}");
}

#[test]
fn hello_world_runs_to_complete_with_logs_everywhere() {
    let (h, pdh) = setup();
    h.fake
        .add_container(record(UUID, &pdh, &["echo", "hello world"]));
    let out = run_with(&h, &[("FAKE_DOCKER_STDOUT", "hello world\n")]);
    assert!(out.status.success());

    let rec = final_record(&h);
    assert_eq!(rec["state"], "Complete");
    assert_eq!(rec["exit_code"], 0);
    let updates = h.fake.container_updates(UUID);
    assert_eq!(
        updates.first().map(|u| u["state"].clone()),
        Some(json!("Running"))
    );
    assert_eq!(
        updates.len(),
        2,
        "Running, then one final update: {updates:?}"
    );
    assert_no_rejections(&h);

    // The image was not in the engine, so it was loaded from Keep.
    let calls = h.docker_calls();
    assert!(calls.iter().any(|c| c.starts_with("load")), "{calls:?}");
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with(&format!("create --name {UUID} "))),
        "{calls:?}"
    );
    assert!(
        calls.contains(&format!("start --attach -- {UUID}")),
        "{calls:?}"
    );

    // "hello world" in the logs table and in stdout.txt of the log collection.
    assert!(h.logs_table("stdout").contains(" hello world\n"));
    let stdout = h.log_text(UUID, "stdout.txt");
    assert_timestamped(&stdout);
    assert_eq!(strip_timestamps(&stdout), "hello world\n");
    let crunch = h.log_text(UUID, "crunch-run.txt");
    assert_timestamped(&crunch);
    assert!(
        crunch.contains("Loading Docker image from keep"),
        "{crunch}"
    );
    assert!(
        crunch.contains("Container exited with status code 0"),
        "{crunch}"
    );
    assert!(crunch.trim_end().ends_with("Complete"), "{crunch}");
    assert_logs_table_complete(&h);
    assert_eq!(h.log_text(UUID, "stderr.txt"), "");

    // The log collection was named for the container, and the real Python SDK reads it.
    let created = h.fake.collections_created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["name"], format!("logs for {UUID}"));
    let pdh = rec["log"].as_str().unwrap();
    assert_eq!(
        common::python_reads_collection(&h.fake, pdh, "stdout.txt"),
        h.log_file(UUID, "stdout.txt")
    );
    // The spool was removed once the collection was saved.
    assert_eq!(std::fs::read_dir(h.spool_dir()).unwrap().count(), 0);
}

#[test]
fn queued_record_of_the_2016_api_runs_too() {
    let h = Harness::new(common::fake_arvados::FakeArvados::start_2016(), true);
    let tar = b"not really a tar".to_vec();
    let pdh = h
        .fake
        .add_collection(&[(&format!("{}.tar", image_id()), &tar)]);
    let mut rec = record(UUID, &pdh, &["echo", "hi"]);
    rec["state"] = json!("Queued");
    h.fake.add_container(rec);
    let out = run_with(&h, &[("FAKE_DOCKER_STDOUT", "hi\n")]);
    assert!(out.status.success());
    assert_eq!(final_record(&h)["state"], "Complete");
    assert_no_rejections(&h);
}

#[test]
fn false_records_exit_code_1() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["false"]));
    let out = run_with(&h, &[("FAKE_DOCKER_EXIT", "1")]);
    assert!(out.status.success());
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Complete");
    assert_eq!(rec["exit_code"], 1);
}

#[test]
fn the_containers_own_125_126_127_and_137_are_data() {
    for code in ["125", "126", "127", "137"] {
        let (h, pdh) = setup();
        h.fake
            .add_container(record(UUID, &pdh, &["sh", "-c", "exit $X"]));
        let out = run_with(&h, &[("FAKE_DOCKER_EXIT", code)]);
        assert!(out.status.success());
        let rec = final_record(&h);
        assert_eq!(rec["state"], "Complete", "exit {code}");
        assert_eq!(rec["exit_code"].to_string(), code);
        let crunch = h.log_text(UUID, "crunch-run.txt");
        assert!(
            crunch.contains(&format!("Container exited with status code {code}")),
            "{crunch}"
        );
        if code == "137" {
            assert!(crunch.contains("(signal 9, SIGKILL)"), "{crunch}");
        }
    }
}

#[test]
fn cwd_dot_means_the_image_default_and_a_set_cwd_is_passed() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["pwd"]));
    run_with(&h, &[]);
    let args = h.removed_container_file(UUID, "args");
    assert!(
        !args.lines().any(|a| a == "-w" || a == "--workdir"),
        "{args}"
    );

    let (h, pdh) = setup();
    let mut rec = record(UUID, &pdh, &["pwd"]);
    rec["cwd"] = json!("/bin");
    h.fake.add_container(rec);
    run_with(&h, &[]);
    let args = h.removed_container_file(UUID, "args");
    assert!(args.contains("-w\n/bin\n"), "{args}");
}

/// Regression: hoststat's first report, a chunk a line, overflowed the logs table's queue
/// at the start of most runs ("the logs table lacks … it was too slow to keep up").
fn assert_logs_table_complete(h: &Harness) {
    let crunch = h.log_text(UUID, "crunch-run.txt");
    assert!(!crunch.contains("the logs table lacks"), "{crunch}");
}

#[test]
fn stdout_and_stderr_are_kept_apart() {
    let (h, pdh) = setup();
    h.fake.add_container(record(
        UUID,
        &pdh,
        &["sh", "-c", "echo hello; echo world >&2"],
    ));
    run_with(
        &h,
        &[
            ("FAKE_DOCKER_STDOUT", "hello\n"),
            ("FAKE_DOCKER_STDERR", "world\n"),
            ("FAKE_DOCKER_EXIT", "1"),
        ],
    );
    assert_eq!(final_record(&h)["exit_code"], 1);
    assert_eq!(strip_timestamps(&h.log_text(UUID, "stdout.txt")), "hello\n");
    assert_eq!(strip_timestamps(&h.log_text(UUID, "stderr.txt")), "world\n");
    assert!(h.logs_table("stderr").contains(" world\n"));
    assert_logs_table_complete(&h);
}

#[test]
fn binary_output_and_a_last_line_without_newline_are_kept_byte_exact() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["cat", "blob"]));
    run_with(
        &h,
        &[("FAKE_DOCKER_STDOUT", "\\0001\\0377\\0376bin\\0000ary\nlast")],
    );
    let raw = h.log_file(UUID, "stdout.txt");
    // Two lines, each timestamped; the bytes after the timestamps are unchanged.
    let newline = raw.iter().position(|&b| b == b'\n').unwrap();
    let (first, second) = raw.split_at(newline + 1);
    assert_eq!(&first[31..], b"\x01\xff\xfebin\x00ary\n");
    assert_eq!(&second[31..], b"last");
    assert_timestamped(&String::from_utf8_lossy(&raw));
    assert_logs_table_complete(&h);
}

#[test]
fn environment_values_never_appear_in_argv() {
    let (h, pdh) = setup();
    let mut rec = record(UUID, &pdh, &["env"]);
    rec["environment"] = json!({"FROBIZ": "bilbo", "HOME": "/home/x"});
    h.fake.add_container(rec);
    run_with(&h, &[]);
    let calls = h.docker_calls();
    let create = calls.iter().find(|c| c.starts_with("create")).unwrap();
    assert!(
        !create.contains("bilbo") && !create.contains("/home/x"),
        "{create}"
    );
    assert!(
        h.removed_container_file(UUID, "env")
            .contains("FROBIZ=bilbo")
    );
    assert!(
        h.removed_container_file(UUID, "env-file")
            .contains("HOME=/home/x")
    );
}

#[test]
fn the_api_token_appears_nowhere() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["echo", "x"]));
    let out = run_with(&h, &[("FAKE_DOCKER_STDOUT", "x\n")]);
    let token = h.fake.token().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(&token));
    for name in ["crunch-run.txt", "stdout.txt", "stderr.txt"] {
        assert!(!h.log_text(UUID, name).contains(&token), "{name}");
    }
    for l in h.fake.logs() {
        assert!(!l.text.contains(&token));
    }
    let calls = h.docker_calls().join("\n");
    assert!(!calls.contains(&token));
    // docker children never even receive our ARVADOS_* variables.
    let leaked =
        std::fs::read_to_string(h.docker_state().join("arvados-env.log")).unwrap_or_default();
    assert_eq!(leaked, "", "docker saw {leaked}");
}

#[test]
fn an_image_already_in_the_engine_is_not_fetched_from_keep() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let image = image_id();
    let out = run_with(&h, &[("FAKE_DOCKER_IMAGES", &image)]);
    assert!(out.status.success());
    assert!(!h.docker_calls().iter().any(|c| c.starts_with("load")));
    let gets: Vec<_> = h
        .fake
        .keep_requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(gets.is_empty(), "{gets:?}");
    assert!(
        h.log_text(UUID, "crunch-run.txt")
            .contains("Docker image is available")
    );
}

/// Runs a broken case and returns (final record, crunch-run.txt).
fn cancelled_case(h: &Harness, extra: &[(&str, &str)]) -> (Value, String) {
    let out = run_with(h, extra);
    let rec = final_record(h);
    assert!(
        out.status.success(),
        "the record should still reach its final state"
    );
    assert_eq!(rec["state"], "Cancelled", "{rec}");
    assert_no_rejections(h);
    (rec.clone(), h.log_text(UUID, "crunch-run.txt"))
}

#[test]
fn missing_image_collection_is_logged_and_cancels() {
    let h = Harness::with_fake_docker();
    h.fake.add_container(record(
        UUID,
        "acbd18db4cc2f85cedef654fccc4a4d8+99",
        &["true"],
    ));
    let (rec, crunch) = cancelled_case(&h, &[]);
    assert!(
        crunch.contains("image collection acbd18db4cc2f85cedef654fccc4a4d8+99 was not found"),
        "{crunch}"
    );
    assert!(
        rec["runtime_status"]["error"]
            .as_str()
            .unwrap()
            .contains("was not found")
    );
    assert!(h.logs_table("crunch-run").contains("was not found"));
    assert!(!h.docker_calls().iter().any(|c| c.starts_with("create")));
}

#[test]
fn image_collection_without_a_tar_or_with_two_is_an_error() {
    let h = Harness::with_fake_docker();
    let pdh = h.fake.add_collection(&[("md5sum.txt", b"x".as_slice())]);
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let (_, crunch) = cancelled_case(&h, &[]);
    assert!(
        crunch.contains("does not include a .tar image file"),
        "{crunch}"
    );

    let h = Harness::with_fake_docker();
    let pdh = h
        .fake
        .add_collection(&[("a.tar", b"x".as_slice()), ("b.tar", b"y".as_slice())]);
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let (_, crunch) = cancelled_case(&h, &[]);
    assert!(
        crunch.contains("cannot choose from multiple tar files"),
        "{crunch}"
    );
    assert!(crunch.contains("a.tar, b.tar"), "{crunch}");
}

#[test]
fn keep_failure_while_fetching_the_image_is_logged() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    h.fake
        .fail_keep("GET", &[0, 1], 404, common::fake_arvados::Times::Always);
    let (_, crunch) = cancelled_case(&h, &[]);
    assert!(
        crunch.contains("failed to load container image"),
        "{crunch}"
    );
    assert!(crunch.contains("reading image from Keep"), "{crunch}");
}

#[test]
fn docker_load_failure_and_wrong_image_are_logged() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let (_, crunch) = cancelled_case(&h, &[("FAKE_DOCKER_LOAD_FAIL", "1")]);
    assert!(
        crunch.contains("failed to load container image"),
        "{crunch}"
    );
    assert!(crunch.contains("invalid tar header"), "{crunch}");

    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let other = format!("sha256:{}", "1".repeat(64));
    let (_, crunch) = cancelled_case(&h, &[("FAKE_DOCKER_LOAD_ID", &other)]);
    assert!(crunch.contains("holds a different image"), "{crunch}");
}

#[test]
fn engine_down_is_logged_and_requeues() {
    // Not the container's fault: back to the queue (tests/cluster_node.rs has the rest).
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let out = run_with(&h, &[("FAKE_DOCKER_ENGINE_DOWN", "1")]);
    assert!(out.status.success());
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Queued", "{rec}");
    assert!(rec["exit_code"].is_null());
    assert_no_rejections(&h);
    let crunch = h.logs_table("crunch-run");
    assert!(crunch.contains("docker engine is unreachable"), "{crunch}");
    assert!(
        crunch.contains("Cannot connect to the Docker daemon"),
        "{crunch}"
    );
}

#[test]
fn a_command_that_cannot_start_is_logged_with_advice() {
    let (h, pdh) = setup();
    h.fake
        .add_container(record(UUID, &pdh, &["/no/such/command"]));
    let msg = "failed to create task for container: exec: \"/no/such/command\": stat /no/such/command: no such file or directory: unknown";
    let (rec, crunch) = cancelled_case(&h, &[("FAKE_DOCKER_START_FAIL", msg)]);
    assert!(crunch.contains("could not start container"), "{crunch}");
    assert!(crunch.contains("no such file or directory"), "{crunch}");
    assert!(
        rec["runtime_status"]["error"]
            .as_str()
            .unwrap()
            .starts_with("could not start container")
    );
    // It had been set Running; the docker CLI's status was not taken for the container's.
    assert_eq!(h.fake.container_updates(UUID)[0]["state"], "Running");
    assert!(rec["exit_code"].is_null());
}

#[test]
fn malformed_records_are_cancelled_with_the_reason() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("command", json!([]), "command is empty"),
        ("command", json!(["echo", 1]), "command[1] must be a string"),
        (
            "environment",
            json!({"A": false}),
            "environment[\"A\"] must be a string",
        ),
        (
            "container_image",
            json!("debian:8"),
            "is not a portable data hash",
        ),
    ];
    for (field, value, want) in cases {
        let h = Harness::with_fake_docker();
        let mut rec = record(UUID, "acbd18db4cc2f85cedef654fccc4a4d8+3", &["true"]);
        rec[field] = value;
        h.fake.add_container(rec);
        let (_, crunch) = cancelled_case(&h, &[]);
        assert!(crunch.contains(want), "{field}: {crunch}");
        // The engine may have been asked for its image list, nothing more.
        let calls = h.docker_calls();
        assert!(calls.iter().all(|c| c.starts_with("image ls")), "{calls:?}");
    }
}

#[test]
fn records_in_other_states_are_left_alone() {
    for state in ["Running", "Complete", "Cancelled"] {
        let (h, pdh) = setup();
        let mut rec = record(UUID, &pdh, &["true"]);
        rec["state"] = json!(state);
        h.fake.add_container(rec);
        let out = run_with(&h, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("container is {state}")));
        assert!(h.fake.container_updates(UUID).is_empty());
        assert!(h.docker_calls().is_empty());
    }
}

#[test]
fn log_collection_failure_is_logged_and_the_logs_table_left_alone() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["echo", "hello"]));
    h.fake.fail_api(
        "POST",
        "/arvados/v1/collections",
        500,
        common::fake_arvados::Times::Always,
    );
    let out = run_with(&h, &[("FAKE_DOCKER_STDOUT", "hello\n")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Saving the log collection failed"),
        "{stderr}"
    );
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Cancelled");
    // Issue 7: nothing says Complete, for a record that ends Cancelled.
    for said in [&*stderr, &h.logs_table("crunch-run")] {
        assert!(!said.lines().any(|l| l.ends_with(" Complete")), "{said}");
        assert!(said.lines().any(|l| l.ends_with(" Cancelled")), "{said}");
    }
    assert!(rec["log"].is_null(), "no bogus log PDH: {rec}");
    assert_eq!(rec["exit_code"], 0, "the exit code is still recorded");
    // The logs table still has everything, and says what went wrong.
    assert!(h.logs_table("stdout").contains(" hello\n"));
    assert!(
        h.logs_table("crunch-run")
            .contains("Saving the log collection failed")
    );
    // The local copy is where the message says.
    let kept = std::fs::read_dir(h.spool_dir())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stdout = std::fs::read_to_string(kept.join("logs/stdout.txt")).unwrap();
    assert_eq!(strip_timestamps(&stdout), "hello\n");
    assert!(stderr.contains(&kept.display().to_string()), "{stderr}");
}

#[test]
fn keep_down_while_saving_logs_keeps_the_local_copy() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["echo", "hello"]));
    h.fake
        .fail_keep("PUT", &[0, 1], 503, common::fake_arvados::Times::Always);
    let out = run_with(&h, &[("FAKE_DOCKER_STDOUT", "hello\n")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Saving the log collection failed"));
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Cancelled");
    assert!(rec["log"].is_null());
    assert_eq!(h.fake.collections_created().len(), 0);
}

#[test]
fn transient_api_errors_are_retried() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    h.fake.fail_api(
        "GET",
        &format!("/arvados/v1/containers/{UUID}"),
        503,
        common::fake_arvados::Times::Next(2),
    );
    h.fake.fail_api(
        "PUT",
        &format!("/arvados/v1/containers/{UUID}"),
        502,
        common::fake_arvados::Times::Next(1),
    );
    let out = run_with(&h, &[]);
    assert!(out.status.success());
    assert_eq!(final_record(&h)["state"], "Complete");
}

#[test]
fn cancel_by_signal_removes_the_container_and_keeps_the_logs() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
        let (h, pdh) = setup();
        h.fake
            .add_container(record(UUID, &pdh, &["sh", "-c", "echo foo; sleep 60"]));
        let image = image_id();
        let mut child = h.spawn(
            UUID,
            &[
                ("FAKE_DOCKER_LOAD_ID", &image),
                ("FAKE_DOCKER_STDOUT", "foo\n"),
                ("FAKE_DOCKER_SLEEP", "60"),
            ],
        );
        assert!(wait_for(20, || h.fake.container(UUID)["state"] == "Running"));
        assert!(wait_for(10, || h.logs_table("stdout").contains("foo")));
        let started = std::time::Instant::now();
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(status.success());
        let rec = final_record(&h);
        assert_eq!(rec["state"], "Cancelled");
        assert_eq!(strip_timestamps(&h.log_text(UUID, "stdout.txt")), "foo\n");
        let crunch = h.log_text(UUID, "crunch-run.txt");
        assert!(crunch.contains("caught signal"), "{crunch}");
        assert!(h.docker_calls().iter().any(|c| c.starts_with("rm -f")));
        assert!(!h.docker_state().join("containers").join(UUID).exists());
        assert_no_rejections(&h);
    }
}

#[test]
fn logs_table_can_be_turned_off() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["echo", "hi"]));
    let mut cmd = h.command(UUID);
    cmd.arg("--no-logs-table")
        .env("FAKE_DOCKER_LOAD_ID", image_id())
        .env("FAKE_DOCKER_STDOUT", "hi\n");
    assert!(cmd.output().unwrap().status.success());
    assert!(h.fake.logs().is_empty());
    assert_eq!(strip_timestamps(&h.log_text(UUID, "stdout.txt")), "hi\n");
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let h = Harness::with_fake_docker();
    let out = h.command("not-a-uuid").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a container UUID"));

    let mut cmd = h.command(UUID);
    cmd.env_remove("ARVADOS_API_TOKEN");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ARVADOS_API_TOKEN"));

    let mut cmd = h.command(UUID);
    cmd.arg("-runtime-engine=singularity");
    assert_eq!(cmd.output().unwrap().status.code(), Some(2));
}

#[test]
fn a_log_flood_reaches_keep_whole_while_the_logs_table_is_throttled() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["yes"]));
    let out = run_with(&h, &[("FAKE_DOCKER_FLOOD_BYTES", "3000000")]);
    assert!(out.status.success());
    let stdout = h.log_file(UUID, "stdout.txt");
    // 1.5 M lines of "y\n", each with a 31-byte prefix.
    assert_eq!(stdout.len(), 3_000_000 + 1_500_000 * 31);
    let table = h.logs_table("stdout");
    assert!(
        table.len() < 200_000,
        "logs table got {} bytes",
        table.len()
    );
    assert!(table.contains("Exceeded rate"), "throttle message missing");
}

#[test]
fn api_access_gives_the_container_its_own_token_and_a_network() {
    let (h, pdh) = setup();
    let mut rec = record(UUID, &pdh, &["env"]);
    rec["runtime_constraints"]["API"] = json!(true);
    h.fake.add_container(rec);
    run_with(&h, &[]);
    assert_eq!(final_record(&h)["state"], "Complete");
    let env = h.removed_container_file(UUID, "env");
    let container_token = h.fake.container_token(UUID);
    assert!(
        env.contains(&format!("ARVADOS_API_TOKEN={container_token}\n")),
        "{env}"
    );
    assert!(!env.contains(h.fake.token()), "our own token leaked: {env}");
    assert!(env.contains(&format!("ARVADOS_API_HOST={}\n", h.fake.api_host())));
    let args = h.removed_container_file(UUID, "args");
    assert!(args.contains("--network\ndefault\n"), "{args}");
    // The container token is a secret like ours: not in any log.
    for name in ["crunch-run.txt", "stdout.txt", "stderr.txt"] {
        assert!(!h.log_text(UUID, name).contains(&container_token));
    }
}

#[test]
fn ram_vcpus_and_gpus_become_docker_limits() {
    let (h, pdh) = setup();
    let mut rec = record(UUID, &pdh, &["true"]);
    rec["runtime_constraints"] = json!({"ram": 1000, "vcpus": 2, "cuda": {"device_count": 2}});
    h.fake.add_container(rec);
    run_with(&h, &[]);
    let args = h.removed_container_file(UUID, "args");
    // Below docker's floor: raised to 16 MiB, and no swap.
    assert!(
        args.contains("--memory\n16777216\n--memory-swap\n16777216\n"),
        "{args}"
    );
    assert!(args.contains("--cpus\n2\n"), "{args}");
    assert!(args.contains("--gpus\n2\n"), "{args}");

    let (h, pdh) = setup();
    let mut rec = record(UUID, &pdh, &["true"]);
    rec["runtime_constraints"]["gpu"] = json!({"stack": "cuda", "device_count": 2});
    h.fake.add_container(rec);
    run_with(&h, &[("CUDA_VISIBLE_DEVICES", "1,3")]);
    let args = h.removed_container_file(UUID, "args");
    assert!(args.contains("--gpus\n\"device=1,3\"\n"), "{args}");
}

#[test]
fn max_run_time_stops_the_container_and_cancels() {
    let (h, pdh) = setup();
    let mut rec = record(UUID, &pdh, &["sleep", "60"]);
    rec["scheduling_parameters"] = json!({"max_run_time": 1});
    h.fake.add_container(rec);
    let t0 = std::time::Instant::now();
    let out = run_with(&h, &[("FAKE_DOCKER_SLEEP", "60")]);
    assert!(out.status.success());
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Cancelled");
    let crunch = h.log_text(UUID, "crunch-run.txt");
    assert!(crunch.contains("maximum run time exceeded"), "{crunch}");
    assert_no_rejections(&h);
}

#[test]
fn bad_mounts_cancel_before_anything_starts() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"/tmp": {"kind": "tmp"}, "/x": {"kind": "magic"}}),
            "/tmp",
            "magic",
        ),
        (
            json!({"/tmp": {"kind": "tmp"}, "/tmp/x": {"kind": "tmp"}}),
            "/tmp",
            "/tmp/x",
        ),
        (
            json!({"/tmp": {"kind": "tmp"}, "stdin": {"kind": "tmp"}}),
            "/tmp",
            "unsupported mount kind 'tmp' for stdin",
        ),
        (
            json!({"/tmp": {"kind": "tmp"}, "x": {"kind": "tmp"}}),
            "/tmp",
            "\"x\"",
        ),
        (
            json!({"/tmp": {"kind": "tmp"}, "/tmp/../etc": {"kind": "tmp"}}),
            "/tmp",
            "..",
        ),
        (
            json!({"/tmp": {"kind": "tmp"}, "/t.txt": {"kind": "text", "content": 3}}),
            "/tmp",
            "must be a string",
        ),
        (
            json!({"/tmp": {"kind": "tmp"}, "stdout": {"kind": "file", "path": "/etc/out"}}),
            "/tmp",
            "/etc/out",
        ),
        (
            json!({"/mnt": {"kind": "tmp"}}),
            "/tmp",
            "output path does not correspond to a writable mount point",
        ),
    ];
    for (mounts, output_path, want) in cases {
        let (h, pdh) = setup();
        let mut rec = record(UUID, &pdh, &["true"]);
        rec["mounts"] = mounts.clone();
        rec["output_path"] = json!(output_path);
        h.fake.add_container(rec);
        let (rec, crunch) = cancelled_case(&h, &[]);
        assert!(
            crunch.contains("While setting up mounts"),
            "{mounts}: {crunch}"
        );
        assert!(crunch.contains(want), "{mounts}: want {want:?} in {crunch}");
        assert!(rec["runtime_status"]["error"].is_string());
        let calls = h.docker_calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("run") || c.starts_with("load")),
            "{calls:?}"
        );
    }
}

/// Issue 7: a mount `uuid` of 27 bytes with a multi-byte character across byte 5 panicked
/// crunch-run (exit 101) and left the record Locked. Run, as it was found, on the local
/// store: the record must end Cancelled with the reason, and crunch-run exit 0.
#[test]
fn a_mount_uuid_with_a_multi_byte_character_cancels_the_record_on_the_local_store() {
    use crunch_run::local_store::LocalStore;
    use crunch_run::store::{ApiStore, BlockStore};

    let h = Harness::with_fake_docker();
    let dir = h.tmp.path().join("store");
    let store = LocalStore::open(&dir).unwrap();
    let tar = b"not much of a tar";
    let open = || -> std::io::Result<Box<dyn std::io::Read + Send>> { Ok(Box::new(&tar[..])) };
    let hash = crunch_run::arvados::manifest::md5_hex(tar);
    let loc = store.put_block(&hash, tar.len() as u64, &open).unwrap();
    let manifest = format!(". {loc} 0:{}:{}.tar\n", tar.len(), image_id());
    let image = store.create_collection("image", &manifest).unwrap();

    let uuid = "zzzz\u{e9}4zz18-0123456789abcde";
    assert_eq!(uuid.len(), 27);
    let mut rec = record(UUID, &image.portable_data_hash, &["true"]);
    rec["mounts"] = json!({"/tmp": {"kind": "tmp"}, "/in": {"kind": "collection", "uuid": uuid}});
    std::fs::write(
        dir.join("containers").join(format!("{UUID}.json")),
        rec.to_string(),
    )
    .unwrap();

    let out = h
        .command(UUID)
        .arg("--local-store")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let rec = store.get_container(UUID).unwrap();
    assert_eq!(rec["state"], "Cancelled", "{rec}");
    let error = rec["runtime_status"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("is not a collection UUID"), "{rec}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The file the fake docker copied from the bind mount at `target` when the container
/// started.
fn seen_in_container(h: &Harness, target: &str) -> Vec<u8> {
    let dir = h.docker_state().join("removed");
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(UUID))
        .expect("a removed container");
    std::fs::read(entry.path().join(format!("mnt{target}")))
        .unwrap_or_else(|e| panic!("{target} not seen in the container: {e}"))
}

#[test]
fn every_mount_kind_is_staged_and_the_output_saved() {
    let (h, pdh) = setup();
    let input = h.fake.add_collection(&[
        ("a.txt", b"first file\n".as_slice()),
        ("b.txt", b"second file\n".as_slice()),
    ]);
    let mut rec = record(UUID, &pdh, &["sh", "-c", "..."]);
    rec["output_path"] = json!("/out");
    rec["mounts"] = json!({
        "/out": {"kind": "tmp"},
        "/in": {"kind": "collection", "portable_data_hash": input},
        "/in-b": {"kind": "collection", "portable_data_hash": format!("{input}/b.txt")},
        "/etc/j.json": {"kind": "json", "content": {"n": 123456789123456789u64, "s": "x"}},
        "/etc/t.txt": {"kind": "text", "content": "some text"},
        "stdin": {"kind": "json", "content": ["to", "stdin"]},
        "stdout": {"kind": "file", "path": "/out/log/stdout.txt"},
    });
    h.fake.add_container(rec);
    h.fake.set_secret_mounts(
        UUID,
        json!({"/etc/secret.conf": {"kind": "text", "content": "very-secret-value"}}),
    );
    let stdin_copy = h.tmp.path().join("stdin-seen");
    let out = run_with(
        &h,
        &[
            ("FAKE_DOCKER_STDOUT", "to stdout\n"),
            ("FAKE_DOCKER_STDIN_TO", stdin_copy.to_str().unwrap()),
            (
                "FAKE_DOCKER_RUN_SH",
                "echo made > \"$(host_of /out)/made.txt\"; mkdir \"$(host_of /out)/emptydir\"; \
                 ln -s /in/a.txt \"$(host_of /out)/link.txt\"",
            ),
        ],
    );
    assert!(out.status.success());
    let rec = final_record(&h);
    assert_eq!(
        rec["state"],
        "Complete",
        "{}",
        h.log_text(UUID, "crunch-run.txt")
    );
    assert_no_rejections(&h);
    // The exit code was recorded while the output was captured, before the final update.
    let updates = h.fake.container_updates(UUID);
    assert_eq!(updates.len(), 3, "{updates:?}");
    assert_eq!(updates[1], json!({"exit_code": 0}));
    assert_eq!(updates[2]["state"], "Complete");

    // What the container saw.
    assert_eq!(seen_in_container(&h, "/in/a.txt"), b"first file\n");
    assert_eq!(seen_in_container(&h, "/in/b.txt"), b"second file\n");
    assert_eq!(seen_in_container(&h, "/in-b"), b"second file\n");
    assert_eq!(
        seen_in_container(&h, "/etc/j.json"),
        br#"{"n":123456789123456789,"s":"x"}"#
    );
    assert_eq!(seen_in_container(&h, "/etc/t.txt"), b"some text");
    assert_eq!(
        seen_in_container(&h, "/etc/secret.conf"),
        b"very-secret-value"
    );
    assert_eq!(std::fs::read(&stdin_copy).unwrap(), br#"["to","stdin"]"#);
    let args = h.removed_container_file(UUID, "args");
    assert!(args.contains("target=/in,readonly\n"), "{args}");
    assert!(args.contains("target=/out\n"), "{args}");
    assert!(args.lines().any(|a| a == "-i"), "{args}");

    // The two files share one Keep block: fetched once per mount, not once per file.
    let input_block = h.fake.collection_manifest(&input).unwrap()[2..34].to_string();
    let gets = h
        .fake
        .keep_requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&input_block))
        .count();
    assert_eq!(gets, 2, "one GET per collection mount, not per file");

    // The output: what the container made, its stdout, no secret.
    let output = rec["output"].as_str().unwrap();
    assert_eq!(h.fake.read_file(output, "made.txt").unwrap(), b"made\n");
    assert_eq!(h.fake.read_file(output, "emptydir/.keep").unwrap(), b"");
    // A symlink into a collection mounted elsewhere is kept, by reference.
    assert_eq!(
        h.fake.read_file(output, "link.txt").unwrap(),
        b"first file\n"
    );
    assert_eq!(
        h.fake.read_file(output, "log/stdout.txt").unwrap(),
        b"to stdout\n"
    );
    assert_eq!(h.log_text(UUID, "stdout.txt"), "");
    let created = h.fake.collections_created();
    let out_coll = created
        .iter()
        .find(|c| c["portable_data_hash"] == output)
        .unwrap();
    assert_eq!(out_coll["name"], format!("output for {UUID}"));
    assert_eq!(out_coll["is_trashed"], true);
    // Written as the container: the output's blocks carry the container token's signature.
    let uploads: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/arvados/v1/collections")
        .collect();
    let container_token = h.fake.container_token(UUID);
    assert!(
        uploads
            .iter()
            .any(|r| r.token.as_deref() == Some(container_token.as_str()))
    );
    for name in ["crunch-run.txt", "stdout.txt", "stderr.txt"] {
        assert!(!h.log_text(UUID, name).contains("very-secret-value"));
    }
    assert!(
        !h.fake
            .collection_manifest(output)
            .unwrap()
            .contains("secret")
    );
}

#[test]
fn detach_list_and_kill_as_the_cloud_dispatcher_uses_them() {
    let (h, pdh) = setup();
    h.fake
        .add_container(record(UUID, &pdh, &["sh", "-c", "echo foo; sleep 60"]));
    let image = image_id();
    let mut cmd = h.command(UUID);
    cmd.arg("--detach")
        .env("FAKE_DOCKER_LOAD_ID", &image)
        .env("FAKE_DOCKER_STDOUT", "foo\n")
        .env("FAKE_DOCKER_SLEEP", "60");
    let t0 = std::time::Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(15));
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["UUID"], UUID);
    assert!(said["PID"].as_u64().unwrap() > 0);
    assert!(wait_for(20, || h.fake.container(UUID)["state"] == "Running"));

    let crunch_run = |args: &[&str]| {
        let mut c = h.command(UUID);
        c.args(args);
        c
    };
    // `--list` takes no UUID; run it through a command without the positional one.
    let list = || {
        let out = std::process::Command::new(common::harness::crunch_run_bin())
            .arg("--list")
            .env("CRUNCH_RUN_LOCK_DIR", h.tmp.path().join("locks"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(list(), format!("{UUID}\n"));

    let out = crunch_run(&["--kill", "15"]).output().unwrap();
    let detached_log = h.spool_dir().join(format!("crunch-run-{UUID}.log"));
    // crunch-run's own stderr, for its user only (issue 10, point 1).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&detached_log).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{said}\n{}",
        std::fs::read_to_string(&detached_log).unwrap_or_default()
    );
    assert!(
        wait_for(10, || h.fake.container(UUID)["state"] == "Cancelled"),
        "{said}\n{}\n{:?}",
        std::fs::read_to_string(&detached_log).unwrap_or_default(),
        h.fake.container(UUID)
    );
    assert!(wait_for(10, || list().is_empty()));
    assert_eq!(strip_timestamps(&h.log_text(UUID, "stdout.txt")), "foo\n");
    assert_no_rejections(&h);
}

/// A signal while `docker create` runs: the record is not Running yet, so it goes back to
/// the queue, and the container created after the signal is removed all the same.
#[test]
fn a_signal_while_docker_creates_the_container_requeues_and_removes_it() {
    let (h, pdh) = setup();
    h.fake
        .add_container(record(UUID, &pdh, &["sh", "-c", "sleep 60"]));
    let image = image_id();
    let mut child = h.spawn(
        UUID,
        &[
            ("FAKE_DOCKER_LOAD_ID", &image),
            ("FAKE_DOCKER_CREATE_DELAY", "2"),
            ("FAKE_DOCKER_SLEEP", "60"),
        ],
    );
    let creating = || h.docker_calls().iter().any(|c| c.starts_with("create "));
    assert!(wait_for(20, creating));
    std::thread::sleep(std::time::Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Queued", "{rec}");
    assert!(
        !h.fake
            .container_updates(UUID)
            .iter()
            .any(|u| u["state"] == "Running"),
        "never Running"
    );
    assert!(!h.docker_calls().iter().any(|c| c.starts_with("start ")));
    assert!(!h.docker_state().join("containers").join(UUID).exists());
}

/// Run a container whose engine hangs at `command` (e.g. `create`), send SIGTERM once
/// crunch-run has begun it, and return crunch-run's exit status if it ended within 10 s
/// (else it is killed and `None` returned).
fn signal_while_docker_hangs(h: &Harness, pdh: &str, command: &str) -> Option<ExitStatus> {
    h.fake.add_container(record(UUID, pdh, &["true"]));
    let image = image_id();
    let mut child = h.spawn(
        UUID,
        &[
            ("FAKE_DOCKER_LOAD_ID", &image),
            ("FAKE_DOCKER_HANG", command),
        ],
    );
    let begun = || h.docker_calls().iter().any(|c| c.starts_with(command));
    assert!(wait_for(20, begun));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    wait_for(10, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// A hung engine at `docker create` does not keep a cancelled run waiting for the
/// command's timeout (180 s): the client is killed at once, and the record goes back to the
/// queue.
#[test]
fn a_signal_during_a_hung_docker_create_ends_the_run_at_once() {
    let (h, pdh) = setup();
    let status = signal_while_docker_hangs(&h, &pdh, "create");
    assert!(status.expect("ended within 10 s").success());
    assert_eq!(h.fake.container(UUID)["state"], "Queued");
}

/// `docker load` has no time bound (a big image takes minutes): a hung engine's load is
/// ended by a cancel, which kills the client, and the record goes back to the queue.
#[test]
fn a_signal_during_a_hung_docker_load_ends_the_run_at_once() {
    let (h, pdh) = setup();
    let status = signal_while_docker_hangs(&h, &pdh, "load");
    assert!(
        status.is_some(),
        "crunch-run still waits for the hung docker load"
    );
    assert_eq!(h.fake.container(UUID)["state"], "Queued");
}

#[test]
fn a_docker_run_that_hangs_after_its_container_stopped_is_given_up_by_the_watchdog() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["echo", "done"]));
    let mut cmd = h.command(UUID);
    cmd.arg("--docker-watchdog-interval=200ms")
        .env("FAKE_DOCKER_LOAD_ID", image_id())
        .env("FAKE_DOCKER_STDOUT", "done\n")
        .env("FAKE_DOCKER_RUN_HANG", "1");
    let t0 = std::time::Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(30));
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Cancelled", "{rec}");
    let crunch = strip_timestamps(&h.log_text(UUID, "crunch-run.txt"));
    assert!(
        crunch.contains("docker watchdog: the container is exited but docker start has not returned (failed check 1 of 5)"),
        "{crunch}"
    );
    assert!(crunch.contains("5 checks in a row failed"), "{crunch}");
    assert!(
        crunch.contains("the docker watchdog gave up on docker start: killing the docker client"),
        "{crunch}"
    );
    assert!(
        rec["runtime_status"]["error"]
            .as_str()
            .unwrap()
            .starts_with("docker watchdog: the container is exited"),
        "{rec}"
    );
    assert_eq!(strip_timestamps(&h.log_text(UUID, "stdout.txt")), "done\n");
    assert!(!h.docker_state().join("containers").join(UUID).exists());
    assert_no_rejections(&h);
}

#[test]
fn a_docker_run_that_outlives_a_cancel_is_killed_after_a_grace_period() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["sleep", "60"]));
    let mut cmd = h.command(UUID);
    cmd.arg("--docker-watchdog-interval=0s")
        .env("FAKE_DOCKER_LOAD_ID", image_id())
        .env("FAKE_DOCKER_SLEEP", "60")
        .env("FAKE_DOCKER_RUN_HANG", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    assert!(wait_for(20, || h.fake.container(UUID)["state"] == "Running"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(final_record(&h)["state"], "Cancelled");
    let crunch = strip_timestamps(&h.log_text(UUID, "crunch-run.txt"));
    assert!(
        crunch.contains(
            "docker start did not end within 10s of the cancel: killing the docker client"
        ),
        "{crunch}"
    );
    assert!(!crunch.contains("docker watchdog"), "{crunch}");
    assert_no_rejections(&h);
}

#[test]
fn the_logs_so_far_are_saved_while_the_container_runs() {
    let (h, pdh) = setup();
    h.fake
        .add_container(record(UUID, &pdh, &["sh", "-c", "echo early; sleep 3"]));
    let mut cmd = h.command(UUID);
    cmd.arg("--log-update-period=1s")
        .env("FAKE_DOCKER_LOAD_ID", image_id())
        .env("FAKE_DOCKER_STDOUT", "early\n")
        .env("FAKE_DOCKER_SLEEP", "3");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Complete");
    assert_no_rejections(&h);

    // While Running, the record's log was pointed at the logs so far.
    let updates = h.fake.container_updates(UUID);
    let interim: Vec<&Value> = updates
        .iter()
        .filter(|u| u.get("state").is_none() && u.get("log").is_some())
        .collect();
    assert!(!interim.is_empty(), "{updates:?}");
    assert_eq!(updates.last().unwrap()["state"], "Complete");

    // One log collection: created with a trash date, finally kept for good.
    let name = format!("logs for {UUID}");
    let created: Vec<Value> = h
        .fake
        .collections_created()
        .into_iter()
        .filter(|c| c["name"] == name.as_str())
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(created[0]["trash_at"].is_string(), "{}", created[0]);
    assert_eq!(interim[0]["log"], created[0]["portable_data_hash"]);
    // Some interim save (trash date set) held the early line.
    let interim_manifests = h.fake.manifests_saved_with_trash_date();
    assert!(
        interim_manifests.iter().any(|m| {
            let early = h
                .fake
                .read_manifest_file(m, "stdout.txt")
                .unwrap_or_default();
            strip_timestamps(&String::from_utf8_lossy(&early)) == "early\n"
        }),
        "{interim_manifests:?}"
    );
    let last = h.fake.collections_updated().last().cloned().unwrap();
    assert_eq!(last["uuid"], created[0]["uuid"]);
    assert!(
        last["trash_at"].is_null() && last["delete_at"].is_null(),
        "{last}"
    );
    assert_eq!(last["portable_data_hash"], rec["log"]);
    assert_eq!(strip_timestamps(&h.log_text(UUID, "stdout.txt")), "early\n");
}

/// One run of a container that lives 2 s, with these crunch-run flags.
fn run_for_two_seconds(flags: &[&str]) -> Harness {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["sleep", "2"]));
    let out = h
        .command(UUID)
        .args(flags)
        .env("FAKE_DOCKER_LOAD_ID", image_id())
        .env("FAKE_DOCKER_SLEEP", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(final_record(&h)["state"], "Complete", "{stderr}");
    h
}

/// The fake container is the fake `docker start` process itself (it gives its own PID to
/// `docker inspect`), so crunchstat samples a real cgroup: this test's.
#[test]
fn crunchstat_and_hoststat_are_in_the_log_collection_unless_turned_off() {
    let h = run_for_two_seconds(&["-crunchstat-interval=500ms"]);
    let asked = format!("container inspect --format {{{{.State.Pid}}}} -- {UUID}");
    assert!(h.docker_calls().contains(&asked), "{:?}", h.docker_calls());
    let stats = h.log_text(UUID, "crunchstat.txt");
    assert_timestamped(&stats);
    let stats = strip_timestamps(&stats);
    assert!(stats.lines().any(|l| l.starts_with("mem ")), "{stats}");
    let deltas = stats
        .lines()
        .filter(|l| l.starts_with("cpu ") && l.contains(" -- interval "));
    assert!(deltas.count() >= 2, "{stats}");
    let host = h.log_text(UUID, "hoststat.txt");
    assert_timestamped(&host);
    let host = strip_timestamps(&host);
    let procmem = host.lines().find(|l| l.starts_with("procmem "));
    assert!(
        procmem.is_some_and(|l| l.ends_with(" crunch-run")),
        "{host}"
    );
    assert!(h.logs_table("crunchstat").contains(" cpu "));
    assert!(h.logs_table("hoststat").contains(" procmem "));
    let crunch = h.log_text(UUID, "crunch-run.txt");
    for total in [
        "Total CPU usage was ",
        "Maximum container memory rss usage was ",
        "Maximum crunch-run memory rss usage was ",
    ] {
        assert!(crunch.contains(total), "{total}: {crunch}");
    }

    let h = run_for_two_seconds(&["-crunchstat-interval=0"]);
    let log = final_record(&h)["log"].as_str().unwrap().to_string();
    for name in ["crunchstat.txt", "hoststat.txt"] {
        assert_eq!(h.fake.read_file(&log, name), None, "{name}");
    }
    assert!(!h.docker_calls().iter().any(|c| c.contains(".State.Pid")));
    assert!(!h.log_text(UUID, "crunch-run.txt").contains("Total CPU"));
}

// ------------------------------------------------------------ requests and connections

/// Print the fake's request log: what a failed assertion about it needs.
fn show_timeline(h: &Harness) -> common::fake_timing::PathSummary {
    let log = h.fake.timeline();
    for t in &log {
        eprintln!(
            "{:>8.1} {:>8.1} ms  {}#{} {} {}",
            t.start.as_secs_f64() * 1e3,
            t.end.as_secs_f64() * 1e3,
            t.server,
            t.conn,
            t.method,
            t.path
        );
    }
    let summary = common::fake_timing::summarize(&log);
    eprintln!(
        "connections {:?}; critical path {}, longest chain {}",
        h.fake.connections(),
        summary.critical_path,
        summary.longest_chain
    );
    summary
}

/// A run with no mounts, its image in the engine, as `make bench` runs `echo hello`.
fn hello_without_mounts(h: &Harness, pdh: &str, extra: &[(&str, &str)]) {
    h.fake.add_container(record(UUID, pdh, &["echo", "hello"]));
    let mut env = vec![("FAKE_DOCKER_STDOUT", "hello\n")];
    env.extend_from_slice(extra);
    let images = image_id();
    env.push(("FAKE_DOCKER_IMAGES", &images));
    assert!(run_with(h, &env).status.success());
    assert_eq!(final_record(h)["state"], "Complete");
}

/// The fake's latency for the connection checks. Requests in flight together at the
/// client overlap at the fake too unless a thread stalls longer than this: so a long one.
const LATENCY: std::time::Duration = std::time::Duration::from_millis(60);
/// How long before the fake sees a request the client may have taken its connection.
const CHECKOUT: std::time::Duration = std::time::Duration::from_millis(10);

/// No host gets more connections (TLS handshakes) than the requests in flight to it at
/// once: the connections are pooled and reused, whatever the lifecycle runs in parallel.
/// (Without the pool, the API gets 9 connections for its 9 requests.)
fn assert_connections_reused(h: &Harness) {
    let log = h.fake.timeline();
    for (server, n) in h.fake.connections() {
        let peak = common::fake_timing::peak_in_flight(&log, &server, CHECKOUT);
        assert!(
            n as usize <= peak,
            "{n} connections to {server}, at most {peak} requests at once"
        );
    }
}

#[test]
fn a_run_keeps_one_connection_per_host_and_asks_no_keep_discovery_when_given_services() {
    let (h, pdh) = setup();
    h.fake.set_latency(LATENCY);
    hello_without_mounts(&h, &pdh, &[]);
    show_timeline(&h);
    assert!(
        !h.fake
            .timeline()
            .iter()
            .any(|t| t.path.contains("keep_services")),
        "ARVADOS_KEEP_SERVICES is set: no discovery"
    );
    assert_connections_reused(&h);
}

#[test]
fn without_keep_services_given_they_are_discovered_once_and_connections_still_reused() {
    let (h, pdh) = setup();
    h.fake.set_latency(LATENCY);
    // As on a compute node: the services are discovered, keepstores, PUT to in parallel.
    hello_without_mounts(&h, &pdh, &[("ARVADOS_KEEP_SERVICES", "")]);
    show_timeline(&h);
    let discovery: Vec<_> = h
        .fake
        .timeline()
        .into_iter()
        .filter(|t| t.path.ends_with("/keep_services/accessible"))
        .collect();
    assert_eq!(discovery.len(), 1, "{discovery:?}");
    assert_connections_reused(&h);
}

/// The requests a run waits for: every one but the logs-table POSTs, which nothing waits
/// for (the run never does: asserted by the stretches of the whole log staying within
/// the bound too).
fn waited_for(log: &[common::fake_timing::Timed]) -> Vec<common::fake_timing::Timed> {
    let logs_post =
        |t: &&common::fake_timing::Timed| t.method == "POST" && t.path.ends_with("/logs");
    log.iter().filter(|t| !logs_post(t)).cloned().collect()
}

/// Issue 11: a run with no mounts waits for at most 6 requests one after another (the
/// record beside the token and Keep discovery; the image collection beside the secret
/// mounts; Running; the log blocks; the log collection; the final update). Each costs the
/// fake's whole latency, so a chain shows as one stretch per request.
#[test]
fn a_run_without_mounts_waits_for_at_most_six_requests_in_a_row() {
    let (h, pdh) = setup();
    h.fake.set_latency(LATENCY);
    hello_without_mounts(&h, &pdh, &[("ARVADOS_KEEP_SERVICES", "")]);
    let all = show_timeline(&h);
    let waited = common::fake_timing::summarize(&waited_for(&h.fake.timeline()));
    eprintln!("without the logs table: {:#?}", waited.stretches);
    assert!(waited.critical_path <= 6, "{:#?}", waited.stretches);
    assert!(all.critical_path <= 6, "{:#?}", all.stretches);
    // The engine's images were listed beside the image collection: no inspect after it.
    let calls = h.docker_calls();
    assert!(calls.iter().any(|c| c.starts_with("image ls")), "{calls:?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("image inspect")),
        "{calls:?}"
    );
    // The record, the token and the discovery went out together.
    let first = &waited.stretches[0];
    for wanted in ["/containers/", "/auth", "/keep_services/accessible"] {
        assert!(
            first.iter().any(|r| r.contains(wanted)),
            "{wanted}: {first:?}"
        );
    }
    // One pooled connection per host and request in flight: the API gets one per request
    // of its widest moment (the logs table's last batch of each stream, posted at once:
    // 4 here), each keepstore one per log file.
    assert_connections_reused(&h);
    let api = h.fake.connections().into_iter().find(|(s, _)| s == "api");
    assert!(
        api.is_some_and(|(_, n)| n <= 4),
        "{:?}",
        h.fake.connections()
    );
}

/// The API's order rules, seen from the API: the record is Running when the user's
/// command starts (the fake container asks the API itself); the final update is the last
/// request that changes anything, after both the output and the log collection were
/// saved, and names those two.
#[test]
fn running_comes_before_user_code_and_the_final_update_last_naming_saved_collections() {
    let (h, pdh) = setup();
    h.fake.set_latency(std::time::Duration::from_millis(20));
    h.fake.add_container(record_with_output(&pdh, json!({})));
    let seen = h.tmp.path().join("seen-by-the-container.json");
    let ask = format!(
        "curl -s --cacert {} -o {} -H 'Authorization: Bearer {}' https://{}/arvados/v1/containers/{UUID}; \
         echo out > \"$(host_of /out)/result.txt\"",
        h.fake.ca_file().display(),
        seen.display(),
        h.fake.token(),
        h.fake.api_host(),
    );
    let out = run_with(&h, &[("FAKE_DOCKER_RUN_SH", &ask)]);
    assert!(out.status.success());
    let rec = completed(&h);
    let seen: Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(seen["state"], "Running", "what the container saw: {seen}");

    show_timeline(&h);
    let timeline = h.fake.timeline();
    let writes: Vec<_> = timeline
        .iter()
        .filter(|t| t.server == "api" && t.method != "GET" && !t.path.ends_with("/logs"))
        .collect();
    let last = writes.iter().max_by_key(|t| t.start).unwrap();
    assert!(
        last.method == "PUT" && last.path.ends_with(UUID),
        "{last:?}"
    );
    let collections: Vec<_> = writes
        .iter()
        .filter(|t| t.method == "POST" && t.path.ends_with("/collections"))
        .collect();
    assert_eq!(collections.len(), 2, "output and log: {collections:?}");
    for saved in &collections {
        assert!(saved.end <= last.start, "{saved:?} before {last:?}");
    }
    // The output collection is saved beside the log's blocks, not before them.
    let waited = common::fake_timing::summarize(&waited_for(&timeline));
    let beside = waited
        .stretches
        .iter()
        .find(|s| s.iter().any(|r| r == "POST api /arvados/v1/collections"))
        .unwrap();
    assert!(
        beside.iter().any(|r| r.starts_with("PUT keep")),
        "{beside:?}"
    );
    let created = h.fake.collections_created();
    let pdhs: Vec<_> = created
        .iter()
        .map(|c| c["portable_data_hash"].clone())
        .collect();
    assert!(
        pdhs.contains(&rec["log"]) && pdhs.contains(&rec["output"]),
        "{rec} {pdhs:?}"
    );
}

// ------------------------------------------------------------ progress lines (issue 12)

/// The progress lines of `what` in `text` (crunch-run.txt or the logs table), without
/// their timestamps.
fn progress_lines(text: &str, what: &str) -> Vec<String> {
    strip_timestamps(text)
        .lines()
        .filter(|l| l.starts_with(&format!("{what}: ")))
        .map(str::to_string)
        .collect()
}

/// An image collection whose tar is `blocks` blocks of 100 KB: with the fake's latency,
/// each one a round trip. Returns its PDH and the tar's size.
fn image_in_blocks(h: &Harness, blocks: u32) -> (String, u64) {
    let mut locators = Vec::new();
    for n in 0..blocks {
        let data: Vec<u8> = (0..100_000u32).map(|i| ((i + n) % 251) as u8).collect();
        locators.push(h.fake.add_block(&data));
    }
    let size = u64::from(blocks) * 100_000;
    let manifest = format!(". {} 0:{size}:{}.tar\n", locators.join(" "), image_id());
    (h.fake.add_manifest(&manifest), size)
}

/// A slow Keep: the image load says how far it is, first after the first interval, then
/// at each next one, and once at the end, with numbers that add up; every line is in
/// crunch-run.txt and in the logs table.
#[test]
fn a_slow_image_load_says_how_far_it_is() {
    let h = Harness::with_fake_docker();
    let (pdh, size) = image_in_blocks(&h, 16);
    h.fake.set_latency(std::time::Duration::from_millis(100));
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let out = run_with(&h, &[("CRUNCH_RUN_PROGRESS_INTERVALS", "400ms,500ms")]);
    assert!(out.status.success());
    assert_eq!(final_record(&h)["state"], "Complete");
    let crunch = h.log_text(UUID, "crunch-run.txt");
    let lines = progress_lines(&crunch, "Loading the image");
    // 16 round trips of 100 ms at least: lines at about 0.4, 0.9, 1.4 s, and the end.
    assert!(lines.len() >= 3, "{crunch}");
    let total = format!("of {}", crunch_run::progress::format_bytes(size));
    let mut last_percent = 0;
    for line in &lines[..lines.len() - 1] {
        assert!(
            line.contains(&total) && line.contains("/s, about "),
            "{line}"
        );
        let percent: u32 = line
            .split('(')
            .nth(1)
            .unwrap()
            .split('%')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(percent > last_percent && percent < 100, "{lines:?}");
        last_percent = percent;
    }
    let end = lines.last().unwrap();
    assert!(
        end.contains(&format!("{total} (100%)")) && end.contains(", done in "),
        "{end}"
    );
    // The rate is plausible: 1.6 MB in no less than 1.6 s, so at most 1000 KiB/s.
    let rate = end.split(", ").nth(1).unwrap();
    assert!(rate.ends_with("KiB/s"), "{end}");
    let kib: f64 = rate.trim_end_matches(" KiB/s").parse().unwrap();
    assert!((200.0..=1000.0).contains(&kib), "{end}");
    assert_eq!(
        progress_lines(&h.logs_table("crunch-run"), "Loading the image"),
        lines
    );
}

/// A fast step prints no progress line: at the default intervals, an image load of a
/// fraction of a second says only that it loads.
#[test]
fn a_fast_image_load_prints_no_progress_line() {
    let h = Harness::with_fake_docker();
    let (pdh, _) = image_in_blocks(&h, 4);
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    assert!(run_with(&h, &[]).status.success());
    let crunch = h.log_text(UUID, "crunch-run.txt");
    assert!(
        crunch.contains("Loading Docker image from keep"),
        "{crunch}"
    );
    assert!(
        progress_lines(&crunch, "Loading the image").is_empty(),
        "{crunch}"
    );
}

/// The output's capture says how far it is, its total the files to upload; Keep being
/// slow (one 100 KB file, PUT with the fake's latency).
#[test]
fn a_slow_output_capture_says_how_far_it_is() {
    let (h, pdh) = setup();
    h.fake.add_container(record_with_output(&pdh, json!({})));
    h.fake.set_latency(std::time::Duration::from_millis(400));
    let out = run_with(
        &h,
        &[
            ("CRUNCH_RUN_PROGRESS_INTERVALS", "200ms,10s"),
            ("FAKE_DOCKER_IMAGES", &image_id()),
            (
                "FAKE_DOCKER_RUN_SH",
                "head -c 100000 /dev/zero > \"$(host_of /out)/zeros\"",
            ),
        ],
    );
    assert!(out.status.success());
    completed(&h);
    let crunch = h.log_text(UUID, "crunch-run.txt");
    let lines = progress_lines(&crunch, "Capturing the output");
    assert_eq!(lines.len(), 2, "{crunch}");
    assert!(
        lines[0].starts_with("Capturing the output: 98 KiB of 98 KiB (100%), "),
        "{lines:?}"
    );
    assert!(lines[1].contains(", done in "), "{lines:?}");
}

/// The API server's own self-signed certificate (CA:TRUE, as `openssl req -x509` makes it),
/// named by SSL_CERT_FILE, is trusted as curl and Python trust it: a normal run, API and
/// Keep alike (issue 10, point 4).
#[test]
fn a_self_signed_server_certificate_named_by_ssl_cert_file_is_trusted() {
    let (h, pdh) = setup_on(Harness::new(
        common::fake_arvados::FakeArvados::start_self_signed(),
        true,
    ));
    h.fake.add_container(record(UUID, &pdh, &["echo", "hi"]));
    let out = run_with(&h, &[("FAKE_DOCKER_STDOUT", "hi\n")]);
    assert!(out.status.success());
    let rec = final_record(&h);
    assert_eq!(rec["state"], "Complete");
    assert_eq!(strip_timestamps(&h.log_text(UUID, "stdout.txt")), "hi\n");
    assert_no_rejections(&h);
}

/// Another self-signed certificate in SSL_CERT_FILE trusts nothing: crunch-run stops at
/// once with one plain sentence naming the host and both ways out, no Rust debug value.
#[test]
fn an_untrusted_server_certificate_is_one_plain_sentence() {
    let h = Harness::new(common::fake_arvados::FakeArvados::start_self_signed(), true);
    let other = common::fake_arvados::FakeArvados::start_self_signed();
    h.fake
        .add_container(record(UUID, &"0".repeat(32), &["true"]));
    let started = std::time::Instant::now();
    let out = run_with(
        &h,
        &[("SSL_CERT_FILE", &other.ca_file().display().to_string())],
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let host = h.fake.api_host();
    assert!(
        stderr.contains(&format!("the TLS certificate of {host} is not trusted")),
        "{stderr}"
    );
    for name in ["SSL_CERT_FILE", "--ca-certs", "ARVADOS_API_HOST_INSECURE"] {
        assert!(stderr.contains(name), "{name} in {stderr}");
    }
    assert!(!stderr.contains("Other("), "{stderr}");
    assert!(!stderr.contains("Error"), "{stderr}");
    assert_eq!(h.fake.container(UUID)["state"], "Locked");
}

/// A record whose output path is a tmp mount at `/out`, plus `mounts`.
fn record_with_output(pdh: &str, mounts: Value) -> Value {
    let mut rec = record(UUID, pdh, &["sh", "-c", "..."]);
    rec["output_path"] = json!("/out");
    rec["mounts"] = mounts;
    rec["mounts"]["/out"] = json!({"kind": "tmp"});
    rec
}

/// The final record of a run that must reach Complete, with crunch-run.txt on failure.
fn completed(h: &Harness) -> Value {
    let rec = final_record(h);
    assert_eq!(
        rec["state"],
        "Complete",
        "{rec}\n{}",
        h.log_text(UUID, "crunch-run.txt")
    );
    rec
}

/// Run a container (output path a tmp mount at `/out`) whose shell `script` writes into the
/// host output directory `$o`; the harness and the final record, which must be Complete.
fn run_writing_output(script: &str) -> (Harness, Value) {
    let (h, pdh) = setup();
    h.fake.add_container(record_with_output(&pdh, json!({})));
    let script = format!("o=$(host_of /out); {script}");
    run_with(&h, &[("FAKE_DOCKER_RUN_SH", &script)]);
    let rec = completed(&h);
    (h, rec)
}

/// Issue 10: a container that wrote one file whose name is not UTF-8 (`printf '\377\376'`)
/// ended Cancelled with no output ("file name is not valid UTF-8"). Every file is kept,
/// and the real Python SDK reads the odd one back by its exact bytes.
#[test]
fn a_file_name_that_is_not_utf8_keeps_the_whole_output() {
    use std::os::unix::ffi::OsStrExt;
    let (h, rec) = run_writing_output(
        "printf odd > \"$o/$(printf '\\377\\376')\"; \
         echo one > \"$o/one.txt\"; mkdir \"$o/d$(printf '\\351')\"; \
         echo two > \"$o/d$(printf '\\351')/two.txt\"",
    );
    assert_no_rejections(&h);
    let output = rec["output"].as_str().unwrap();
    let manifest = h.fake.collection_manifest(output).unwrap();
    assert!(manifest.contains(":\\377\\376\n"), "{manifest}");
    assert!(manifest.contains("./d\\351 "), "{manifest}");
    let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    assert_eq!(
        common::python_reads_collection(&h.fake, output, odd),
        b"odd"
    );
    let two = std::ffi::OsStr::from_bytes(b"d\xe9/two.txt");
    assert_eq!(
        common::python_reads_collection(&h.fake, output, two),
        b"two\n"
    );
    assert_eq!(
        common::python_reads_collection(&h.fake, output, "one.txt"),
        b"one\n"
    );
}

/// Issue 10: bytes named `.` in an input collection (which no file can hold) were dropped
/// without a word, from the staged copy and from the output alike. They are still left
/// out, and crunch-run.txt says so for each.
#[test]
fn data_named_dot_in_an_input_collection_is_left_out_and_said() {
    let (h, pdh) = setup();
    let foo = h.fake.add_block(b"foo");
    let input = h
        .fake
        .add_manifest(&format!(". {foo} 0:3:foo\n./d {foo} 0:3:\\056 0:3:bar\n"));
    h.fake.add_container(record_with_output(
        &pdh,
        json!({
            "/in": {"kind": "collection", "portable_data_hash": input},
            "/out/in": {"kind": "collection", "portable_data_hash": input},
        }),
    ));
    run_with(&h, &[]);
    let rec = completed(&h);
    let output = rec["output"].as_str().unwrap();
    assert_eq!(h.fake.read_file(output, "in/d/bar").unwrap(), b"foo");
    let crunch = h.log_text(UUID, "crunch-run.txt");
    for said in [
        format!(
            "mount /in: collection {input}: left out 3 bytes at \"d/.\" (no file can be named \".\")"
        ),
        "output: left out 3 bytes at \"in/d/.\" (no file can be named \".\")".to_string(),
    ] {
        assert!(crunch.contains(&said), "{said:?} not in:\n{crunch}");
    }
}

/// Every file and directory under `dir`, relative to it.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            }
        }
    }
    out
}

/// Issue 10, point 7 (this held already; the test keeps it held): input manifests whose
/// names lead out of the staging directory (`..`, `\056\056`, `\057`, absolute paths, a
/// stream name above the root) or that no host file can have (NUL) are refused when
/// staging, the record ends Cancelled with the reason, and nothing is written anywhere.
#[test]
fn hostile_input_manifests_are_refused_and_nothing_is_written() {
    let escape = "tmp/crunch-run-hostile-escape";
    let up = "\\056\\056/".repeat(12);
    let hostile: Vec<(String, &str)> = vec![
        (
            format!("./{} FOO 0:3:x\n", "../".repeat(12) + escape),
            "\"..\"",
        ),
        (
            format!(". FOO 0:3:{up}{}\n", escape.replace('/', "\\057")),
            "\"..\"",
        ),
        (format!(". FOO 0:3:\\056\\056\\057{}\n", "x"), "\"..\""),
        (
            format!(". FOO 0:3:\\057{}\n", escape.replace('/', "\\057")),
            "empty",
        ),
        (format!("./\\056\\056 FOO 0:3:{}\n", "x"), "\"..\""),
        (
            format!("./a/\\056\\056/\\056\\056 FOO 0:3:{}\n", "x"),
            "\"..\"",
        ),
        (". FOO 0:3:a\\000b\n".to_string(), "NUL"),
    ];
    for (manifest, why) in hostile {
        let (h, pdh) = setup();
        let foo = h.fake.add_block(b"foo");
        let input = h
            .fake
            .add_manifest_unchecked(&manifest.replace("FOO", &foo));
        h.fake.add_container(record_with_output(
            &pdh,
            json!({"/in": {"kind": "collection", "portable_data_hash": input}}),
        ));
        let before = tree(h.tmp.path());
        run_with(&h, &[]);
        let rec = final_record(&h);
        assert_eq!(rec["state"], "Cancelled", "{manifest}: {rec}");
        let reason = rec["runtime_status"]["error"].as_str().unwrap_or_default();
        assert!(
            reason.contains("While setting up mounts"),
            "{manifest}: {reason}"
        );
        let crunch = h.log_text(UUID, "crunch-run.txt");
        assert!(crunch.contains(why), "{manifest}: {crunch}");
        let written: Vec<String> = tree(h.tmp.path())
            .into_iter()
            .filter(|p| !before.contains(p) && p.contains("hostile"))
            .collect();
        assert!(written.is_empty(), "{manifest}: {written:?}");
        assert!(
            !std::path::Path::new("/").join(escape).exists(),
            "{manifest}"
        );
        assert!(h.docker_calls().iter().all(|c| !c.starts_with("create ")));
    }
}

/// Issue 10: eight small output files were eight Keep PUTs and eight blocks. They share
/// one block (with the tail of a file larger than a block), the manifest points into it,
/// and the real Python SDK reads every file back.
#[test]
fn small_output_files_are_packed_into_shared_blocks() {
    let (h, rec) = run_writing_output(
        "mkdir \"$o/d\"; \
         for i in 0 1 2 3 4 5 6 7; do echo \"file $i\" > \"$o/d/f$i\"; done; \
         head -c 70000000 /dev/zero | tr '\\0' x > \"$o/big\"",
    );
    let output = rec["output"].as_str().unwrap();
    let manifest = h.fake.collection_manifest(output).unwrap();
    // "big" fills one block and starts the next, which the eight small files share.
    let hashes = |line: &str| -> Vec<String> {
        line.split(' ')
            .filter(|t| t.len() > 33 && t.as_bytes()[32] == b'+')
            .map(|t| t[..32].to_string())
            .collect()
    };
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines.len(), 2, "{manifest}");
    let (root, d) = (hashes(lines[0]), hashes(lines[1]));
    assert_eq!((root.len(), d.len()), (2, 1), "{manifest}");
    assert_eq!(root[1], d[0], "{manifest}");
    assert!(lines[0].ends_with(" 0:70000000:big"), "{manifest}");
    let puts = h
        .fake
        .keep_requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && root.iter().any(|b| r.path.contains(b.as_str())))
        .count();
    assert_eq!(puts, 2 * 2, "two blocks, each on both Keep services");
    assert_eq!(
        h.fake.read_file(output, "big").unwrap(),
        vec![b'x'; 70_000_000]
    );
    for i in 0..8 {
        assert_eq!(
            h.fake.read_file(output, &format!("d/f{i}")).unwrap(),
            format!("file {i}\n").as_bytes()
        );
    }
    for i in [0, 7] {
        assert_eq!(
            common::python_reads_collection(&h.fake, output, format!("d/f{i}")),
            format!("file {i}\n").as_bytes()
        );
    }
}

#[test]
fn networking_always_gives_every_container_the_network_mode_asked_for() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let mut cmd = h.command(UUID);
    cmd.args([
        "-container-enable-networking=always",
        "-container-network-mode=host",
    ]);
    cmd.envs(load_env());
    assert!(cmd.output().unwrap().status.success());
    assert_eq!(final_record(&h)["state"], "Complete");
    let args = h.removed_container_file(UUID, "args");
    assert!(args.contains("--network\nhost\n"), "{args}");
    // A network, but no API access: none of the API variables.
    let env = h.removed_container_file(UUID, "env");
    assert!(!env.contains("ARVADOS_API_TOKEN"), "{env}");
}

#[test]
fn enable_memory_limit_false_gives_docker_no_memory_limit() {
    let (h, pdh) = setup();
    let mut rec = record(UUID, &pdh, &["true"]);
    rec["runtime_constraints"] = json!({"ram": 1 << 30, "vcpus": 1});
    h.fake.add_container(rec);
    let mut cmd = h.command(UUID);
    cmd.arg("-enable-memory-limit=false").envs(load_env());
    assert!(cmd.output().unwrap().status.success());
    let args = h.removed_container_file(UUID, "args");
    assert!(!args.contains("--memory"), "{args}");
    assert!(args.contains("--cpus\n1\n"), "{args}");
}

/// This process's cgroup for `subsystem`, as crunch-run (our child) finds its own.
fn own_cgroup(subsystem: &str) -> String {
    crunch_run::cgroup::own_cgroup_path(&crunch_run::cgroup::Roots::host(), subsystem).unwrap()
}

#[test]
fn cgroup_parent_subsystem_puts_the_container_under_crunch_runs_own_cgroup() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let mut cmd = h.command(UUID);
    cmd.arg("-cgroup-parent-subsystem=memory").envs(load_env());
    assert!(cmd.output().unwrap().status.success());
    let args = h.removed_container_file(UUID, "args");
    let parent = own_cgroup("memory");
    assert!(
        args.contains(&format!("--cgroup-parent\n{parent}\n")),
        "{args}"
    );
    let calls = h.docker_calls();
    assert!(calls.iter().any(|c| c == "info --format {{.CgroupDriver}}"));

    // Without the flag, docker is not asked (`docker info` can be slow).
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    run_with(&h, &[]);
    assert!(
        !h.removed_container_file(UUID, "args")
            .contains("--cgroup-parent")
    );
    assert!(!h.docker_calls().iter().any(|c| c.starts_with("info")));
}

#[test]
fn on_dockers_systemd_cgroup_driver_the_cgroup_parent_is_dropped_with_a_warning() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let mut cmd = h.command(UUID);
    cmd.arg("-cgroup-parent-subsystem=memory")
        .env("FAKE_DOCKER_CGROUP_DRIVER", "systemd")
        .envs(load_env());
    assert!(cmd.output().unwrap().status.success());
    assert_eq!(final_record(&h)["state"], "Complete");
    assert!(
        !h.removed_container_file(UUID, "args")
            .contains("--cgroup-parent")
    );
    let crunch = h.log_text(UUID, "crunch-run.txt");
    assert!(
        crunch.contains("docker uses the systemd cgroup driver")
            && crunch.contains("native.cgroupdriver=cgroupfs"),
        "{crunch}"
    );
}

#[test]
fn gos_ignored_flags_are_accepted() {
    let (h, pdh) = setup();
    h.fake.add_container(record(UUID, &pdh, &["true"]));
    let mut cmd = h.command(UUID);
    cmd.args([
        "-cgroup-parent=docker",
        "-cgroup-root=/sys/fs/cgroup",
        "-check-containerd=60s",
        "-config=/etc/arvados/config.yml",
        "-sleep=0s",
        "-memprofile=/tmp/crunch-run.mem",
    ])
    .envs(load_env());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(final_record(&h)["state"], "Complete");
    assert!(
        !h.removed_container_file(UUID, "args")
            .contains("--cgroup-parent")
    );
}
