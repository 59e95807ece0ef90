//! The fake Arvados API + Keep of the integration tests (tests/common/fake_arvados.rs), as
//! a process of its own for `make bench`, which cannot link Rust test code: bench.py runs
//! crunch-run against it over HTTPS, with a latency, and reads its request log back.
//!
//! An example rather than a `[[bin]]`: it needs the dev-dependencies (tiny_http, rcgen),
//! which must stay out of the crunch-run build, and `cargo test` and
//! `cargo clippy --all-targets` still build it, so it cannot rot.
//!
//! Start: `cargo run --release --example fake_arvados`. The first line on stdout is JSON:
//! `{"api_host", "ca_file", "token", "keep_services"}`. Then each line on stdin is one JSON
//! command, answered by one JSON line on stdout (`{"error": …}` if it failed):
//!
//!   {"op": "latency", "ms": 30}                    every request waits this long first
//!   {"op": "add_collection", "files": [[name, host path], …]}   → {"pdh": …}
//!   {"op": "add_container", "record": {…}}         (defaults as the tests')
//!   {"op": "container", "uuid": …}                 → the record
//!   {"op": "read_file", "id": pdh, "path": …}      → {"text": …} (lossy UTF-8)
//!   {"op": "blocks", "id": pdh}   → {"locators": […]}, the collection's distinct blocks in
//!                          order, signed for the token (for a plain client's GETs)
//!   {"op": "timeline"}   → the requests since the last one, with their times, the
//!                          connections, the critical path (fake_timing.rs); then forgets
//!
//! End of stdin stops it.

#![allow(dead_code)]

#[path = "../tests/common/fake_arvados.rs"]
mod fake_arvados;
#[path = "../tests/common/fake_support.rs"]
mod fake_support;
#[path = "../tests/common/fake_timing.rs"]
mod fake_timing;
#[path = "../tests/common/http_server.rs"]
mod http_server;

use std::io::{self, BufRead, Write};
use std::time::Duration;

use serde_json::{Value, json};

use fake_arvados::FakeArvados;

fn main() -> io::Result<()> {
    let fake = FakeArvados::start();
    let mut out = io::stdout().lock();
    let hello = json!({
        "api_host": fake.api_host(),
        "ca_file": fake.ca_file(),
        "token": fake.token(),
        "keep_services": fake.keep_services_env(),
    });
    writeln!(out, "{hello}")?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(command) => run(&fake, &command).unwrap_or_else(|e| json!({"error": e})),
            Err(e) => json!({"error": format!("not JSON: {e}")}),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

fn run(fake: &FakeArvados, command: &Value) -> Result<Value, String> {
    match command["op"].as_str().unwrap_or_default() {
        "latency" => {
            let ms = command["ms"].as_f64().ok_or("latency needs ms")?;
            fake.set_latency(Duration::from_secs_f64(ms / 1000.0));
            Ok(json!({}))
        }
        "add_collection" => {
            let mut files = Vec::new();
            for pair in command["files"].as_array().ok_or("files: [[name, path]]")? {
                let (Some(name), Some(path)) = (pair[0].as_str(), pair[1].as_str()) else {
                    return Err("files: [[name, path]]".into());
                };
                let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
                files.push((name.to_string(), data));
            }
            let refs: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            Ok(json!({"pdh": fake.add_collection(&refs)}))
        }
        "add_container" => {
            if !command["record"]["uuid"].is_string() {
                return Err("record needs a uuid".into());
            }
            fake.add_container(command["record"].clone());
            Ok(json!({}))
        }
        "container" => {
            let uuid = command["uuid"].as_str().ok_or("container needs uuid")?;
            Ok(fake.container(uuid))
        }
        "read_file" => {
            let (Some(id), Some(path)) = (command["id"].as_str(), command["path"].as_str()) else {
                return Err("read_file needs id and path".into());
            };
            let data = fake
                .read_file(id, path)
                .ok_or(format!("no {path} in {id}"))?;
            Ok(json!({"text": String::from_utf8_lossy(&data)}))
        }
        "blocks" => {
            let id = command["id"].as_str().ok_or("blocks needs id")?;
            let manifest = fake
                .collection_manifest(id)
                .ok_or(format!("no collection {id}"))?;
            Ok(json!({"locators": signed_blocks(fake, &manifest)}))
        }
        "timeline" => {
            let log = fake.timeline();
            let answer = fake_timing::timeline_json(&log, &fake.connections());
            fake.reset_timing();
            Ok(answer)
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

/// The distinct `hash+size` blocks of a manifest, in order, each signed for the fake's token.
fn signed_blocks(fake: &FakeArvados, manifest: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for word in manifest.lines().flat_map(|l| l.split(' ').skip(1)) {
        let mut parts = word.split('+');
        let (Some(hash), Some(size)) = (parts.next(), parts.next()) else {
            continue;
        };
        let bare = format!("{hash}+{size}");
        let is_block = hash.len() == 32 && size.parse::<u64>().is_ok() && !word.contains(':');
        if is_block && seen.insert(bare.clone()) {
            out.push(fake.sign_locator(&bare, fake.token()));
        }
    }
    out
}
