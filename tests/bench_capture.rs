// `make bench`, section (f): capturing many small output files. crunch-run (fake docker
// of binstubs/, whose container copies a prepared directory into the output) and arv-put
// (the Python SDK in .venv) store the same directory in the same fake API + Keep over
// HTTPS (tests/common/fake_arvados.rs, two Keep services). Printed: the time, the Keep
// PUTs and the blocks of each. Figures are printed, never asserted beyond "it worked": the
// machines are shared and noisy.
//
// Ignored in `cargo test`; bench/bench.py runs it in release mode:
//   cargo test --release --test bench_capture -- --ignored --nocapture
// BENCH_CAPTURE_FILES (default 10000) and BENCH_CAPTURE_BYTES (default 1024) set the tree.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use common::fake_arvados::FakeArvados;
use common::harness::{Harness, UUID, record};
use serde_json::json;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `files` files of `bytes` bytes each (different contents) in 10 directories under `dir`.
fn make_tree(dir: &Path, files: usize, bytes: usize) {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&sub).unwrap();
        // Its number first, so that no two files are alike.
        let mut data = format!("{i:08}\n").into_bytes();
        data.extend((data.len()..bytes).map(|j| (j * 7 % 251) as u8));
        data.truncate(bytes);
        std::fs::write(sub.join(format!("f{i:05}")), data).unwrap();
    }
}

/// Seconds of the day of a crunch-run.txt line's RFC 3339 timestamp.
fn seconds_of(line: &str) -> f64 {
    let time = &line[11..line.find('Z').unwrap()];
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}

/// The distinct block hashes of a manifest.
fn block_hashes(manifest: &str) -> HashSet<String> {
    manifest
        .split([' ', '\n'])
        .filter(|t| t.len() > 33 && t.as_bytes()[32] == b'+')
        .map(|t| t[..32].to_string())
        .collect()
}

fn keep_puts(fake: &FakeArvados) -> usize {
    let puts = fake.keep_requests().into_iter();
    puts.filter(|r| r.method == "PUT").count()
}

/// crunch-run capturing a copy of `tree`: (capture seconds from its own log, whole run
/// seconds, Keep PUTs of the output's blocks, output blocks).
fn crunch_run_captures(tree: &Path) -> (f64, f64, usize, usize) {
    let h = Harness::with_fake_docker();
    let image = format!("sha256:{}", "ab".repeat(32));
    let pdh = h
        .fake
        .add_collection(&[(&format!("{image}.tar"), b"not a tar".as_slice())]);
    let mut rec = record(UUID, &pdh, &["true"]);
    rec["output_path"] = json!("/out");
    rec["mounts"] = json!({"/out": {"kind": "tmp"}});
    h.fake.add_container(rec);
    let copy = format!("cp -a '{}/.' \"$(host_of /out)/\"", tree.display());
    let start = Instant::now();
    let out = h.run(
        UUID,
        &[
            ("FAKE_DOCKER_IMAGES", image.as_str()),
            ("FAKE_DOCKER_RUN_SH", copy.as_str()),
        ],
    );
    let whole = start.elapsed().as_secs_f64();
    let rec = h.fake.container(UUID);
    let crunch = h.log_text(UUID, "crunch-run.txt");
    assert!(
        out.status.success() && rec["state"] == "Complete",
        "{rec}\n{crunch}"
    );
    let at = |what: &str| seconds_of(crunch.lines().find(|l| l.contains(what)).unwrap());
    let capture = at("Saving the output collection") - at("Capturing the output");
    let manifest = h.fake.collection_manifest(rec["output"].as_str().unwrap());
    let blocks = block_hashes(&manifest.unwrap());
    let puts = h.fake.keep_requests().into_iter();
    let puts = puts
        .filter(|r| r.method == "PUT" && blocks.iter().any(|b| r.path.contains(b.as_str())))
        .count();
    (capture, whole, puts, blocks.len())
}

/// arv-put of `tree` into `fake`: (seconds, Keep PUTs, blocks of its collection).
fn arv_put(fake: &FakeArvados, tree: &Path) -> (f64, usize, usize) {
    let arv_put = common::harness::crate_dir().join(".venv/bin/arv-put");
    let home = tempfile::tempdir().unwrap();
    let before = keep_puts(fake);
    let start = Instant::now();
    let out = common::sdk_command(fake, &arv_put, home.path())
        .args(["--no-resume", "--no-cache", "--name", "bench"])
        .arg(tree)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", arv_put.display()));
    let seconds = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "arv-put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let manifest = fake.collection_manifest(&uuid).unwrap_or_default();
    (
        seconds,
        keep_puts(fake) - before,
        block_hashes(&manifest).len(),
    )
}

#[test]
#[ignore = "a benchmark: bench/bench.py runs it (make bench)"]
fn capture_many_small_files() {
    let files = env_number("BENCH_CAPTURE_FILES", 10_000);
    let bytes = env_number("BENCH_CAPTURE_BYTES", 1024);
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, files, bytes);
    let one = tmp.path().join("one");
    make_tree(&one, 1, bytes);

    let (capture, whole, puts, blocks) = crunch_run_captures(&tree);
    let (_, base, _, _) = crunch_run_captures(&one);
    let fake = FakeArvados::start();
    let (put_time, put_puts, put_blocks) = arv_put(&fake, &tree);
    let (put_base, _, _) = arv_put(&fake, &one);
    println!(
        "(f) capturing {files} files of {bytes} bytes in 10 directories (fake API + 2 Keep services, HTTPS):"
    );
    println!(
        "    crunch-run: capture {capture:.2} s (its log: \"Capturing the output\" to \"Saving the output collection\"); whole run {whole:.2} s, {:.2} s over a one-file run; {puts} Keep PUTs, {blocks} blocks",
        whole - base
    );
    println!(
        "    arv-put:    {put_time:.2} s, {:.2} s over a one-file arv-put ({put_base:.2} s); {put_puts} Keep PUTs, {put_blocks} blocks",
        put_time - put_base
    );
}
