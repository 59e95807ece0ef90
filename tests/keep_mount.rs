// Collection mounts through both paths (issue 9), against the real engine, the real
// arv-mount (arvados-fuse in .venv: `make pyenv`) and the fake API + Keep: the mount cases
// (read-only, subpath, a file, writable under the output path, stdin from a collection
// file, output referencing input blocks) through FUSE and through staging; FUSE reads only
// the blocks the container reads; staging refuses a collection larger than the disk;
// arv-mount dying while the container runs cancels the run. Fails, never skips, without
// an engine, arv-mount or FUSE (`make test` sets them up).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::engine;
use common::harness::{Harness, crate_dir, record, strip_timestamps};
use serde_json::{Value, json};

fn uuid(n: u32) -> String {
    format!("zzzzz-dz642-km{n:013}")
}

fn venv_bin() -> PathBuf {
    let bin = crate_dir().join(".venv/bin");
    assert!(
        bin.join("arv-mount").is_file(),
        "no arv-mount in {} (run `make pyenv`)",
        bin.display()
    );
    bin
}

struct Case {
    h: Harness,
    uuid: String,
}

impl Case {
    fn new(n: u32, command: &[&str]) -> Case {
        engine::require_engine();
        let h = Harness::new(common::fake_arvados::FakeArvados::start(), false);
        let image = engine::shared_image();
        let pdh = h.fake.add_collection(&[(&image.tar_name(), &image.tar)]);
        let uuid = uuid(n);
        engine::force_remove(&uuid);
        h.fake.add_container(record(&uuid, &pdh, command));
        Case { h, uuid }
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut rec = self.h.fake.container(&self.uuid);
        f(&mut rec);
        self.h.fake.add_container(rec);
    }

    /// Mounts: a tmp at /tmp and the collection `input` at /in.
    fn mount_input(&self, input: &str) {
        self.edit(|r| {
            r["mounts"] = json!({
                "/tmp": {"kind": "tmp"},
                "/in": {"kind": "collection", "portable_data_hash": input},
            });
        });
    }

    /// Run with `--keep-mount=how`, arv-mount on PATH.
    fn run(&self, how: &str) -> Value {
        let mut cmd = self.h.command(&self.uuid);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.arg(format!("--keep-mount={how}"))
            .env("PATH", format!("{}:{path}", venv_bin().display()));
        let out = cmd.output().expect("run crunch-run");
        eprintln!(
            "--- crunch-run exited {}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "crunch-run exited {}", out.status);
        assert!(engine::containers_named(&self.uuid).is_empty());
        let spool = self.h.spool_dir().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&spool),
            "a mount left under {spool}:\n{mounts}"
        );
        self.h.fake.container(&self.uuid)
    }

    fn crunch_log(&self) -> String {
        strip_timestamps(&self.h.log_text(&self.uuid, "crunch-run.txt"))
    }

    /// Keep GETs of the blocks of `locators` (hash+size…).
    fn gets_of(&self, locators: &[&str]) -> usize {
        self.h
            .fake
            .keep_requests()
            .iter()
            .filter(|r| r.method == "GET")
            .filter(|r| locators.iter().any(|l| r.path.contains(&l[..32])))
            .count()
    }
}

/// Every mount case, through `how`.
fn mount_cases(n: u32, how: &str) {
    let c = Case::new(
        n,
        &[
            "sh",
            "-c",
            "cat /in/a.txt /in/dir/b.txt > /out/cat && cat /sub/b.txt > /out/sub && \
             cat /one.txt > /out/one && cat > /out/stdin && \
             ! touch /in/nope 2>/dev/null && ! touch /out/ref/nope 2>/dev/null && \
             echo more >> /out/w/a.txt",
        ],
    );
    let input = c.h.fake.add_collection(&[
        ("a.txt", b"alpha\n".as_slice()),
        ("dir/b.txt", b"bravo\n".as_slice()),
    ]);
    let refd =
        c.h.fake
            .add_collection(&[("r.txt", b"referenced input\n".as_slice())]);
    c.edit(|r| {
        r["output_path"] = json!("/out");
        r["mounts"] = json!({
            "/out": {"kind": "tmp"},
            "/in": {"kind": "collection", "portable_data_hash": input},
            "/sub": {"kind": "collection", "portable_data_hash": format!("{input}/dir")},
            "/one.txt": {"kind": "collection", "portable_data_hash": input, "path": "a.txt"},
            "/out/ref": {"kind": "collection", "portable_data_hash": refd},
            "/out/w": {"kind": "collection", "portable_data_hash": input, "writable": true},
            "stdin": {"kind": "collection", "portable_data_hash": input, "path": "dir/b.txt"},
        });
    });
    if how == "fuse" {
        c.edit(|r| r["runtime_constraints"]["keep_cache_disk"] = json!(64 << 20));
    }
    let puts_before = c.h.fake.keep_puts();
    let rec = c.run(how);
    let log = c.crunch_log();
    assert_eq!(rec["state"], "Complete", "{log}");
    assert_eq!(rec["exit_code"], 0, "{log}");
    let out = rec["output"].as_str().unwrap();
    let fake = &c.h.fake;
    let file = |p: &str| String::from_utf8(fake.read_file(out, p).unwrap_or_default()).unwrap();
    assert_eq!(file("cat"), "alpha\nbravo\n");
    assert_eq!(file("sub"), "bravo\n");
    assert_eq!(file("one"), "alpha\n");
    assert_eq!(file("stdin"), "bravo\n");
    assert_eq!(file("ref/r.txt"), "referenced input\n");
    assert_eq!(file("w/a.txt"), "alpha\nmore\n");
    assert_eq!(file("w/dir/b.txt"), "bravo\n");
    // The referenced input is in the output by its block, never uploaded again.
    let manifest = fake.collection_manifest(out).unwrap();
    let ref_block = fake.collection_manifest(&refd).unwrap();
    let ref_block = ref_block.split(' ').nth(1).unwrap();
    assert!(manifest.contains(&ref_block[..32]), "{manifest}");
    let uploaded: Vec<_> = fake
        .keep_requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert!(
        !uploaded.iter().any(|r| r.path.contains(&ref_block[..32])),
        "the referenced input was uploaded again"
    );
    assert!(fake.keep_puts() > puts_before);
    match how {
        "fuse" => {
            assert!(log.contains("Collection mounts: FUSE through "), "{log}");
            assert!(log.contains("through arv-mount"), "{log}");
            assert!(log.contains(" --disk-cache --disk-cache-dir "), "{log}");
            assert!(log.contains(" --file-cache 67108864 "), "{log}");
            let arv = c.h.log_text(&c.uuid, "arv-mount.txt");
            common::harness::assert_timestamped(&arv);
        }
        _ => {
            assert!(
                log.contains("Collection mounts: staging (--keep-mount=stage)"),
                "{log}"
            );
            assert!(log.contains("mount /in: copied 2 files"), "{log}");
        }
    }
}

#[test]
fn mount_cases_through_fuse() {
    mount_cases(1, "fuse");
}

#[test]
fn mount_cases_through_staging() {
    mount_cases(2, "stage");
}

#[test]
fn fuse_fetches_only_the_blocks_the_container_reads() {
    let c = Case::new(3, &["cat", "/in/small.txt"]);
    // 8 MiB of big file in several blocks beside one small file in a stream of its own.
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    let input = c.h.fake.add_collection(&[
        ("big/data.bin", big.as_slice()),
        ("small.txt", b"just this\n".as_slice()),
    ]);
    let manifest = c.h.fake.collection_manifest(&input).unwrap();
    let big_blocks: Vec<&str> = manifest
        .lines()
        .find(|l| l.starts_with("./big "))
        .unwrap()
        .split(' ')
        .filter(|w| w.len() > 33 && w.as_bytes()[32] == b'+')
        .collect();
    assert!(!big_blocks.is_empty(), "{manifest}");
    c.mount_input(&input);
    let rec = c.run("fuse");
    assert_eq!(rec["state"], "Complete", "{}", c.crunch_log());
    let stdout = strip_timestamps(&c.h.log_text(&c.uuid, "stdout.txt"));
    assert_eq!(stdout, "just this\n");
    assert_eq!(
        c.gets_of(&big_blocks),
        0,
        "the big file's blocks were fetched"
    );
}

#[test]
fn staging_refuses_a_collection_larger_than_the_disk() {
    let c = Case::new(4, &["true"]);
    // More than the spool disk holds, in blocks that do not exist: nothing may be fetched.
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(c.h.spool_dir())
        .output()
        .unwrap();
    let free: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let count = free / (64 << 20) + 2;
    let size = count * (64 << 20);
    let block = format!("{}+{}", "a".repeat(32), 64u64 << 20);
    let blocks = vec![block.as_str(); count as usize].join(" ");
    let huge =
        c.h.fake
            .add_manifest_unchecked(&format!(". {blocks} 0:{size}:huge.bin\n"));
    c.edit(|r| {
        r["mounts"] = json!({
            "/tmp": {"kind": "tmp"},
            "/in": {"kind": "collection", "portable_data_hash": huge},
        });
    });
    let rec = c.run("stage");
    let log = c.crunch_log();
    assert_eq!(rec["state"], "Cancelled", "{log}");
    assert!(log.contains(&format!("needs {size} bytes (")), "{log}");
    assert!(log.contains("on the staging disk but only"), "{log}");
    assert_eq!(c.gets_of(&[&block]), 0);
}

#[test]
fn arv_mount_dying_while_the_container_runs_cancels_it() {
    let c = Case::new(5, &["sh", "-c", "cat /in/a.txt; sleep 60"]);
    let input = c.h.fake.add_collection(&[("a.txt", b"alpha\n".as_slice())]);
    c.mount_input(&input);
    let spool = c.h.spool_dir().display().to_string();
    let killer = std::thread::spawn(move || {
        // arv-mount's argv ends with its mount point, under this test's spool directory.
        for _ in 0..600 {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(pid) = arv_mount_under(&spool)
                && engine::containers_named(&uuid(5)).len() == 1
            {
                std::thread::sleep(Duration::from_millis(500));
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
        }
        false
    });
    let started = std::time::Instant::now();
    let rec = c.run("fuse");
    assert!(killer.join().unwrap(), "arv-mount never seen");
    let log = c.crunch_log();
    assert_eq!(rec["state"], "Cancelled", "{log}");
    assert!(
        log.contains(
            "arv-mount exited while the container was running (killed by signal 9 (SIGKILL))"
        ),
        "{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );
}

/// The pid of an arv-mount whose mount point is under `dir`.
fn arv_mount_under(dir: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.ends_with("arv-mount")) && args.iter().any(|a| a.starts_with(dir))
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_known_arv_mount_warning_reaches_runtime_status() {
    let c = Case::new(6, &["sh", "-c", "cat /in/gone.txt; true"]);
    // A block Keep does not have.
    let gone = format!("{}+5", "b".repeat(32));
    let input = c.h.fake.add_manifest(&format!(". {gone} 0:5:gone.txt\n"));
    c.mount_input(&input);
    let rec = c.run("fuse");
    assert_eq!(rec["state"], "Complete", "{}", c.crunch_log());
    let warned =
        c.h.fake
            .container_updates(&c.uuid)
            .into_iter()
            .find(|u| u["runtime_status"]["warning"].is_string())
            .unwrap_or_else(|| {
                panic!(
                    "no warning; arv-mount.txt:\n{}",
                    c.h.log_text(&c.uuid, "arv-mount.txt")
                )
            });
    assert_eq!(
        warned["runtime_status"]["warning"],
        "arv-mount: Block not found error"
    );
    assert!(
        warned["runtime_status"]["warningDetail"]
            .as_str()
            .unwrap()
            .contains("Block not found error"),
        "{warned}"
    );
}

/// Slurm's SIGKILL of a job kills crunch-run and arv-mount alike, and leaves the mount
/// point dead; the Epilog (contrib/slurm-epilog.sh) unmounts it.
#[test]
fn the_slurm_epilog_unmounts_what_a_killed_run_left() {
    let c = Case::new(7, &["sh", "-c", "cat /in/a.txt; sleep 60"]);
    let input = c.h.fake.add_collection(&[("a.txt", b"alpha\n".as_slice())]);
    c.mount_input(&input);
    let mut cmd = c.h.command(&c.uuid);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.arg("--keep-mount=fuse")
        .env("PATH", format!("{}:{path}", venv_bin().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut crunch_run = cmd.spawn().unwrap();
    let spool = c.h.spool_dir().display().to_string();
    let uuid = c.uuid.clone();
    let seen = common::harness::wait_for(60, || {
        arv_mount_under(&spool).is_some() && engine::containers_named(&uuid).len() == 1
    });
    assert!(seen, "the container never ran");
    let arv = arv_mount_under(&spool).unwrap();
    unsafe {
        libc::kill(crunch_run.id() as i32, libc::SIGKILL);
        libc::kill(arv, libc::SIGKILL);
    }
    crunch_run.wait().unwrap();
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&spool)
    };
    assert!(common::harness::wait_for(5, || !arv_mount_alive(arv)));
    assert!(
        mounted(),
        "the killed arv-mount left no mount: nothing to show"
    );
    let out = std::process::Command::new("sh")
        .arg(crate_dir().join("contrib/slurm-epilog.sh"))
        .env("SLURM_JOB_ID", "1")
        .env("SLURM_JOB_NAME", &c.uuid)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!mounted(), "the epilog left the dead mount under {spool}");
    engine::force_remove(&c.uuid);
}

fn arv_mount_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split(' ').nth(2).is_none_or(|st| st != "Z"))
}

#[test]
fn a_collection_named_by_uuid_through_fuse() {
    let c = Case::new(8, &["cat", "/in/a.txt", "/one.txt"]);
    let pdh = c.h.fake.add_collection(&[("a.txt", b"alpha\n".as_slice())]);
    let uuid = c.h.fake.collection(&pdh).unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    c.edit(|r| {
        r["mounts"] = json!({
            "/tmp": {"kind": "tmp"},
            "/in": {"kind": "collection", "uuid": uuid},
            "/one.txt": {"kind": "collection", "uuid": uuid, "path": "a.txt"},
        });
        r["runtime_constraints"]["keep_cache_ram"] = json!(32 << 20);
    });
    let rec = c.run("fuse");
    let log = c.crunch_log();
    assert_eq!(rec["state"], "Complete", "{log}");
    let stdout = strip_timestamps(&c.h.log_text(&c.uuid, "stdout.txt"));
    assert_eq!(stdout, "alpha\nalpha\n");
    assert!(
        log.contains(&format!("collection {uuid} through arv-mount")),
        "{log}"
    );
    assert!(
        log.contains(" --ram-cache --file-cache 33554432 --mount-by-id by_id "),
        "{log}"
    );
}

// ----- arv-mount's failures, with a stub arv-mount and the fake docker of binstubs/ -----

const STUB_IMAGE: &str = "sha256:d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";

/// A fake-docker harness whose PATH has an `arv-mount` running `script`, and a record
/// with a collection mount.
fn with_stub_arv_mount(script: &str) -> (Harness, tempfile::TempDir) {
    let h = Harness::with_fake_docker();
    let tar: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let pdh = h
        .fake
        .add_collection(&[(&format!("{STUB_IMAGE}.tar"), &tar)]);
    let input = h.fake.add_collection(&[("a.txt", b"alpha\n".as_slice())]);
    let mut rec = record(common::harness::UUID, &pdh, &["true"]);
    rec["mounts"] = json!({
        "/tmp": {"kind": "tmp"},
        "/in": {"kind": "collection", "portable_data_hash": input},
    });
    h.fake.add_container(rec);
    let bin = tempfile::tempdir().unwrap();
    let stub = bin.path().join("arv-mount");
    std::fs::write(&stub, format!("#!/bin/sh\n{script}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    (h, bin)
}

fn stub_command(h: &Harness, bin: &tempfile::TempDir) -> std::process::Command {
    let mut cmd = h.command(common::harness::UUID);
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.arg("--keep-mount=auto")
        .env("FAKE_DOCKER_LOAD_ID", STUB_IMAGE)
        .env(
            "PATH",
            format!(
                "{}:{}:{path}",
                crate_dir().join("binstubs").display(),
                bin.path().display()
            ),
        );
    cmd
}

#[test]
fn an_arv_mount_that_exits_at_start_fails_the_run_with_its_output_logged() {
    let (h, bin) = with_stub_arv_mount("echo 'fuse: device not found, boom' >&2; exit 3");
    let out = stub_command(&h, &bin).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = h.fake.container(common::harness::UUID);
    let log = strip_timestamps(&h.log_text(common::harness::UUID, "crunch-run.txt"));
    assert_eq!(rec["state"], "Cancelled", "{log}");
    assert!(
        log.contains("While setting up mounts: arv-mount exited before its mount was ready (exit status 3); see arv-mount.txt"),
        "{log}"
    );
    let arv = h.log_text(common::harness::UUID, "arv-mount.txt");
    assert!(arv.contains("fuse: device not found, boom"), "{arv}");
    assert!(!h.docker_calls().iter().any(|c| c.starts_with("run")));
}

#[test]
fn a_cancel_while_arv_mount_starts_ends_the_run_at_once_and_kills_it() {
    let (h, bin) = with_stub_arv_mount("echo $$ > \"$0.pid\"; exec sleep 600");
    let mut child = stub_command(&h, &bin)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = bin.path().join("arv-mount.pid");
    assert!(
        common::harness::wait_for(30, || pid_file.exists()),
        "arv-mount never started"
    );
    std::thread::sleep(Duration::from_millis(300));
    let asked = std::time::Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let rec = h.fake.container(common::harness::UUID);
    assert_eq!(rec["state"], "Cancelled");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        common::harness::wait_for(5, || !arv_mount_alive(pid)),
        "the stub arv-mount outlived the run"
    );
}
