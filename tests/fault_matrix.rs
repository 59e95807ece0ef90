// Issue 10, point 7: the fault matrix of docs/faults.md. One row per call of the lifecycle,
// one column per fault; each cell runs the real crunch-run binary against the fake docker
// (binstubs/) and the fake Arvados with that one fault injected, and checks the final
// state and what is said. The table in docs/faults.md is this file's `expected`.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::fake_arvados::Times;
use common::harness::{Harness, UUID, record, wait_for};
use serde_json::{Value, json};

const IMAGE_ID: &str = "sha256:d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Row {
    RecordGet,
    ImageCollectionGet,
    KeepGets,
    RunningUpdate,
    LogsPosts,
    BlockPuts,
    CollectionCreate,
    FinalUpdate,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Two 503 answers, then normal ones.
    Burst503,
    /// Two connections dropped unanswered, then normal answers.
    Reset,
    /// Every answer 1.5 s late.
    Slow,
    /// No answer, ever: every connection dropped.
    Down,
}

const FAULTS: [Fault; 4] = [Fault::Burst503, Fault::Reset, Fault::Slow, Fault::Down];
const SLOW: Duration = Duration::from_millis(1500);

/// What the cell must end with: the record's state, crunch-run's exit status, and a piece
/// of text that must be in the record's runtime_status (or, for a record left unfinished,
/// in crunch-run's stderr).
struct Expect {
    state: &'static str,
    exit_ok: bool,
    says: &'static str,
}

const fn done() -> Expect {
    Expect {
        state: "Complete",
        exit_ok: true,
        says: "",
    }
}

/// docs/faults.md, cell by cell.
fn expected(row: Row, fault: Fault) -> Expect {
    if fault != Fault::Down {
        return done();
    }
    let (state, exit_ok, says) = match row {
        Row::RecordGet => ("Locked", false, "cannot fetch the container record"),
        Row::ImageCollectionGet => ("Cancelled", true, "image"),
        Row::KeepGets => ("Cancelled", true, "image"),
        // Not the container's fault (issue 8): back to the queue through the unlock, which
        // is another endpoint than the failing PUT.
        Row::RunningUpdate => ("Queued", true, "cannot set the container record to Running"),
        Row::LogsPosts => ("Complete", true, ""),
        Row::BlockPuts => ("Cancelled", true, "capturing the output failed"),
        Row::CollectionCreate => ("Cancelled", true, "saving the output collection failed"),
        Row::FinalUpdate => (
            "Running",
            false,
            "final update of the container record failed",
        ),
    };
    Expect {
        state,
        exit_ok,
        says,
    }
}

/// Where the fault goes in: the method and path of the call.
fn inject(h: &Harness, row: Row, fault: Fault) {
    let container = format!("/arvados/v1/containers/{UUID}");
    let (method, prefix) = match row {
        Row::RecordGet => ("GET", container.as_str()),
        Row::ImageCollectionGet => ("GET", "/arvados/v1/collections/"),
        Row::RunningUpdate | Row::FinalUpdate => ("PUT", container.as_str()),
        Row::LogsPosts => ("POST", "/arvados/v1/logs"),
        Row::CollectionCreate => ("POST", "/arvados/v1/collections"),
        Row::KeepGets => return inject_keep(h, "GET", fault),
        Row::BlockPuts => return inject_keep(h, "PUT", fault),
    };
    let f = &h.fake;
    match fault {
        Fault::Burst503 => f.fail_api(method, prefix, 503, Times::Next(2)),
        Fault::Reset => f.reset_api(method, prefix, Times::Next(2)),
        Fault::Slow => f.slow_api(method, prefix, SLOW, Times::Always),
        Fault::Down => f.reset_api(method, prefix, Times::Always),
    }
}

fn inject_keep(h: &Harness, method: &str, fault: Fault) {
    let f = &h.fake;
    match fault {
        Fault::Burst503 => f.fail_keep(method, &[0, 1], 503, Times::Next(2)),
        Fault::Reset => f.reset_keep(method, Times::Next(2)),
        Fault::Slow => f.slow_keep(method, SLOW, Times::Always),
        Fault::Down => f.reset_keep(method, Times::Always),
    }
}

/// One cell: a container that writes one output file and one line of stdout, the fault
/// injected (for the final update, once the record is Running).
fn run_cell(row: Row, fault: Fault) -> (Harness, Output) {
    let h = Harness::with_fake_docker();
    let tar: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let pdh = h.fake.add_collection(&[(&format!("{IMAGE_ID}.tar"), &tar)]);
    let mut rec = record(UUID, &pdh, &["true"]);
    rec["mounts"] = json!({"/tmp": {"kind": "tmp", "capacity": 1_000_000}});
    h.fake.add_container(rec);
    if row != Row::FinalUpdate {
        inject(&h, row, fault);
    }
    let mut cmd = h.command(UUID);
    cmd.arg("--wrap-up-deadline=8s")
        .env("FAKE_DOCKER_LOAD_ID", IMAGE_ID)
        .env("FAKE_DOCKER_STDOUT", "hello\n")
        .env(
            "FAKE_DOCKER_RUN_SH",
            "echo out > \"$(host_of /tmp)/out.txt\"",
        )
        .env("FAKE_DOCKER_SLEEP", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn crunch-run");
    if row == Row::FinalUpdate {
        assert!(wait_for(30, || h.fake.container(UUID)["state"] == "Running"));
        inject(&h, row, fault);
    }
    let out = child.wait_with_output().expect("wait for crunch-run");
    (h, out)
}

/// Run every cell of `row` and check it; all failures of the row are reported together.
fn check_row(row: Row) {
    let mut wrong = Vec::new();
    for fault in FAULTS {
        let (h, out) = run_cell(row, fault);
        let want = expected(row, fault);
        let rec = h.fake.container(UUID);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let status = rec["runtime_status"].to_string();
        let said = format!("{status}\n{stderr}");
        // A burst or a reset is retried, and the first failure said so.
        let retried =
            matches!(fault, Fault::Slow | Fault::Down) || stderr.contains("; retrying for up to");
        let ok = rec["state"] == want.state
            && out.status.success() == want.exit_ok
            && said.contains(want.says)
            && retried
            && complete_means_everything(&h, &rec);
        if !ok {
            wrong.push(format!(
                "{row:?} × {fault:?}: want {} (exit ok {}, saying {:?}); got {} (exit {}), \
                 runtime_status {status}\nstderr:\n{stderr}",
                want.state, want.exit_ok, want.says, rec["state"], out.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// A Complete record has its output (with the file) and its log (with stdout).
fn complete_means_everything(h: &Harness, rec: &Value) -> bool {
    if rec["state"] != "Complete" {
        return true;
    }
    let output = rec["output"].as_str().unwrap_or_default();
    let log = rec["log"].as_str().unwrap_or_default();
    h.fake.read_file(output, "out.txt").as_deref() == Some(b"out\n".as_slice())
        && h.fake
            .read_file(log, "stdout.txt")
            .is_some_and(|s| s.ends_with(b" hello\n"))
}

#[test]
fn record_get() {
    check_row(Row::RecordGet);
}

#[test]
fn image_collection_get() {
    check_row(Row::ImageCollectionGet);
}

#[test]
fn keep_gets() {
    check_row(Row::KeepGets);
}

#[test]
fn running_update() {
    check_row(Row::RunningUpdate);
}

#[test]
fn logs_posts() {
    check_row(Row::LogsPosts);
}

#[test]
fn block_puts() {
    check_row(Row::BlockPuts);
}

#[test]
fn collection_create() {
    check_row(Row::CollectionCreate);
}

#[test]
fn final_update() {
    check_row(Row::FinalUpdate);
}
