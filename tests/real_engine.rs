// Real-engine tests: the crunch-run binary against a real Docker daemon, with a busybox
// image built at test time and served from the fake Keep. The same cases as the component
// tests, plus what only a real engine can show: the image really loads, exit codes and
// OOM kills come from the engine, the network is off, and nothing is left running when
// crunch-run is cancelled or killed outright.

mod common;

use std::time::{Duration, Instant};

use common::engine::{self, TestImage};
use common::harness::{Harness, assert_timestamped, record, strip_timestamps, wait_for};
use serde_json::{Value, json};

/// Each test has its own container UUID, so that parallel tests never share a name.
fn uuid(n: u32) -> String {
    format!("zzzzz-dz642-rt{n:013}")
}

struct Case {
    h: Harness,
    uuid: String,
}

impl Case {
    /// A fake Arvados holding `image`, and a Locked record for `command`.
    fn new(n: u32, image: &TestImage, command: &[&str]) -> Case {
        engine::require_engine();
        let h = Harness::new(common::fake_arvados::FakeArvados::start(), false);
        let pdh = h.fake.add_collection(&[(&image.tar_name(), &image.tar)]);
        let uuid = uuid(n);
        engine::force_remove(&uuid);
        h.fake.add_container(record(&uuid, &pdh, command));
        Case { h, uuid }
    }

    fn with_shared_image(n: u32, command: &[&str]) -> Case {
        Case::new(n, engine::shared_image(), command)
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let mut rec = self.h.fake.container(&self.uuid);
        f(&mut rec);
        self.h.fake.add_container(rec);
    }

    fn run(&self) -> Value {
        let out = self.h.run(&self.uuid, &[]);
        assert!(out.status.success(), "crunch-run exited {}", out.status);
        assert!(
            engine::containers_named(&self.uuid).is_empty(),
            "docker container {} left behind",
            self.uuid
        );
        self.h.fake.container(&self.uuid)
    }

    fn stdout(&self) -> String {
        strip_timestamps(&self.h.log_text(&self.uuid, "stdout.txt"))
    }

    fn crunch_log(&self) -> String {
        self.h.log_text(&self.uuid, "crunch-run.txt")
    }
}

#[test]
fn hello_world_loads_the_image_from_keep_and_completes() {
    let image = engine::fresh_image("hello");
    let c = Case::new(1, &image, &["echo", "hello world"]);
    let rec = c.run();
    assert_eq!(rec["state"], "Complete");
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(c.h.fake.container_updates(&c.uuid)[0]["state"], "Running");
    assert_eq!(c.stdout(), "hello world\n");
    assert_timestamped(&c.h.log_text(&c.uuid, "stdout.txt"));
    let crunch = c.crunch_log();
    assert!(
        crunch.contains("Loading Docker image from keep"),
        "{crunch}"
    );
    assert!(engine::image_exists(&image.id), "image was not loaded");
    assert!(c.h.logs_table("stdout").contains(" hello world\n"));
    let pdh = rec["log"].as_str().unwrap();
    let via_python = common::python_reads_collection(&c.h.fake, pdh, "stdout.txt");
    assert_eq!(via_python, c.h.log_file(&c.uuid, "stdout.txt"));
    engine::remove_image(&image.id);
}

#[test]
fn exit_codes_come_from_the_engine() {
    let cases: [(&[&str], i64); 4] = [
        (&["false"], 1),
        (&["sh", "-c", "exit 125"], 125),
        (&["sh", "-c", "exit 127"], 127),
        // PID 1 ignores its own SIGKILL; a child killed by SIGKILL exits 137 through it.
        (&["sh", "-c", "sh -c 'kill -9 $$'; exit $?"], 137),
    ];
    for (i, (command, code)) in cases.into_iter().enumerate() {
        let c = Case::with_shared_image(10 + i as u32, command);
        let rec = c.run();
        assert_eq!(rec["state"], "Complete", "{command:?}");
        assert_eq!(rec["exit_code"], code, "{command:?}");
        assert!(
            c.crunch_log()
                .contains(&format!("Container exited with status code {code}"))
        );
    }
}

#[test]
fn pwd_with_cwd_dot_and_with_a_set_cwd() {
    let c = Case::with_shared_image(20, &["pwd"]);
    c.run();
    assert_eq!(c.stdout(), "/root\n", "the image's WORKDIR");

    let c = Case::with_shared_image(21, &["pwd"]);
    c.edit(|r| r["cwd"] = json!("/bin"));
    c.run();
    assert_eq!(c.stdout(), "/bin\n");
}

#[test]
fn stdout_stderr_and_environment() {
    let c = Case::with_shared_image(
        30,
        &["sh", "-c", "echo hello $FROBIZ; echo world >&2; exit 1"],
    );
    c.edit(|r| r["environment"] = json!({"FROBIZ": "bilbo"}));
    let rec = c.run();
    assert_eq!(rec["exit_code"], 1);
    assert_eq!(c.stdout(), "hello bilbo\n");
    assert_eq!(
        strip_timestamps(&c.h.log_text(&c.uuid, "stderr.txt")),
        "world\n"
    );
}

#[test]
fn no_network_unless_the_api_is_asked_for() {
    let c = Case::with_shared_image(40, &["ls", "/sys/class/net"]);
    c.run();
    assert_eq!(c.stdout(), "lo\n");
}

#[test]
fn output_arrives_byte_exact() {
    // 2^20 + 1 bytes of 11-byte lines, the last one cut short (docker/cli#4338 shape).
    let c = Case::with_shared_image(50, &["sh", "-c", "yes abcdefghij | head -c 1048577"]);
    c.run();
    let want: String = "abcdefghij\n".repeat(1048577 / 11 + 1)[..1048577].to_string();
    let got = c.stdout();
    // strip_timestamps adds a newline after the unterminated last line.
    assert_eq!(got.len(), want.len() + 1);
    assert_eq!(&got[..want.len()], want);
}

#[test]
fn a_command_that_cannot_start_is_cancelled_with_the_reason() {
    let c = Case::with_shared_image(60, &["/no/such/command"]);
    let rec = c.run();
    assert_eq!(rec["state"], "Cancelled");
    assert!(rec["exit_code"].is_null());
    let crunch = c.crunch_log();
    assert!(crunch.contains("could not start container"), "{crunch}");
    assert!(
        rec["runtime_status"]["error"]
            .as_str()
            .unwrap()
            .contains("could not start container")
    );
}

#[test]
fn a_garbage_image_tar_is_a_clear_error() {
    let garbage = TestImage {
        id: format!("sha256:{}", "7".repeat(64)),
        tar: b"this is not a tar file at all".repeat(100),
    };
    let c = Case::new(70, &garbage, &["true"]);
    let rec = c.run();
    assert_eq!(rec["state"], "Cancelled");
    let crunch = c.crunch_log();
    assert!(
        crunch.contains("failed to load container image"),
        "{crunch}"
    );
}

#[test]
fn out_of_memory_kills_are_reported() {
    let c = Case::with_shared_image(
        80,
        &["sh", "-c", "a=0123456789; while true; do a=$a$a; done"],
    );
    c.edit(|r| r["runtime_constraints"] = json!({"ram": 32 << 20, "vcpus": 1}));
    let rec = c.run();
    assert_eq!(rec["state"], "Complete");
    assert_eq!(rec["exit_code"], 137);
    let crunch = c.crunch_log();
    assert!(crunch.contains("--memory 33554432"), "{crunch}");
    assert!(crunch.contains("out-of-memory"), "{crunch}");
}

#[test]
fn sigterm_removes_the_container_and_cancels() {
    let c = Case::with_shared_image(90, &["sh", "-c", "echo started; sleep 60"]);
    let mut child = c.h.spawn(&c.uuid, &[]);
    assert!(wait_for(60, || c
        .h
        .logs_table("stdout")
        .contains("started")));
    let t0 = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(status.success());
    assert!(engine::containers_named(&c.uuid).is_empty());
    let rec = c.h.fake.container(&c.uuid);
    assert_eq!(rec["state"], "Cancelled");
    assert_eq!(c.stdout(), "started\n");
}

#[test]
fn sigkill_of_crunch_run_does_not_leave_the_container_running() {
    let c = Case::with_shared_image(91, &["sh", "-c", "echo started; sleep 120"]);
    let mut child = c.h.spawn(&c.uuid, &[]);
    assert!(wait_for(60, || c
        .h
        .logs_table("stdout")
        .contains("started")));
    assert_eq!(engine::containers_named(&c.uuid).len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(15, || engine::containers_named(&c.uuid).is_empty()),
        "the guard did not remove the container"
    );
}

/// The manifest of collection `pdh` with signatures stripped, as the fake stores it.
fn manifest_of(c: &Case, pdh: &str) -> String {
    c.h.fake
        .collection_manifest(pdh)
        .unwrap_or_else(|| panic!("no collection {pdh}"))
}

/// The paths of the files of `manifest`, in order.
fn paths_of(manifest: &str) -> Vec<Vec<u8>> {
    let parsed = crunch_run::arvados::manifest::Manifest::parse(manifest).unwrap();
    parsed.files().into_iter().map(|f| f.path).collect()
}

#[test]
fn inputs_are_mounted_read_only_and_the_output_is_captured() {
    let c = Case::with_shared_image(
        100,
        &[
            "sh",
            "-c",
            "cat /mnt/in/inputfile >/mnt/out/inputfile && cat /mnt/json >/mnt/out/json && \
             cat /mnt/text.txt >/mnt/out/text && ! touch /mnt/in/shouldbereadonly && \
             mkdir /mnt/out/emptydir",
        ],
    );
    let input =
        c.h.fake
            .add_collection(&[("inputfile", b"inputdata".as_slice())]);
    c.edit(|r| {
        r["output_path"] = json!("/mnt/out");
        r["mounts"] = json!({
            "/mnt/in": {"kind": "collection", "portable_data_hash": input},
            "/mnt/json": {"kind": "json", "content": ["foo", {"foo": "bar"}, null]},
            "/mnt/text.txt": {"kind": "text", "content": "hello text"},
            "/mnt/out": {"kind": "tmp", "capacity": 1_000_000},
        });
    });
    let rec = c.run();
    assert_eq!(rec["state"], "Complete", "{}", c.crunch_log());
    assert_eq!(rec["exit_code"], 0, "{}", c.crunch_log());
    let output = rec["output"].as_str().expect("output set");
    let fake = &c.h.fake;
    assert_eq!(fake.read_file(output, "inputfile").unwrap(), b"inputdata");
    assert_eq!(
        fake.read_file(output, "json").unwrap(),
        br#"["foo",{"foo":"bar"},null]"#
    );
    assert_eq!(fake.read_file(output, "text").unwrap(), b"hello text");
    assert_eq!(fake.read_file(output, "emptydir/.keep").unwrap(), b"");
    // Exactly those files, and the PDH by Arvados' rule.
    let manifest = manifest_of(&c, output);
    let files = paths_of(&manifest);
    assert_eq!(
        files,
        [&b"inputfile"[..], b"json", b"text", b"emptydir/.keep"]
    );
    assert_eq!(
        crunch_run::arvados::manifest::portable_data_hash(&manifest),
        output
    );
    let created = fake.collections_created();
    let out = created
        .iter()
        .find(|c| c["portable_data_hash"] == output)
        .unwrap();
    assert_eq!(out["name"], format!("output for {}", c.uuid));
    assert_eq!(
        common::python_reads_collection(fake, output, "inputfile"),
        b"inputdata"
    );
}

#[test]
fn stdout_mount_sends_stdout_to_the_output_not_the_log() {
    let c = Case::with_shared_image(101, &["echo", "bilbo"]);
    c.edit(|r| {
        r["output_path"] = json!("/tmp");
        r["mounts"] = json!({
            "/tmp": {"kind": "tmp"},
            "stdout": {"kind": "file", "path": "/tmp/a/b/c.out"},
        });
    });
    let rec = c.run();
    assert_eq!(rec["state"], "Complete", "{}", c.crunch_log());
    let output = rec["output"].as_str().unwrap();
    assert_eq!(
        manifest_of(&c, output),
        "./a/b 307372fa8fd5c146b22ae7a45b49bc31+6 0:6:c.out\n"
    );
    assert_eq!(c.h.log_text(&c.uuid, "stdout.txt"), "");
    assert!(c.crunch_log().contains("stdout is written as is to"));
}

/// Issue 10: one file whose name is not UTF-8 (`printf '\377\376'`) made the run
/// Cancelled with no output. Every file is kept, and the Python SDK reads the odd one back
/// by its exact bytes.
#[test]
fn a_file_name_that_is_not_utf8_keeps_the_whole_output() {
    use std::os::unix::ffi::OsStrExt;
    let c = Case::with_shared_image(
        1010,
        &[
            "sh",
            "-c",
            "cd /tmp && printf odd > \"$(printf '\\377\\376')\" && echo one > one.txt \
             && mkdir sub && echo two > sub/two.txt",
        ],
    );
    c.edit(|r| {
        r["output_path"] = json!("/tmp");
        r["mounts"] = json!({"/tmp": {"kind": "tmp"}});
    });
    let rec = c.run();
    assert_eq!(rec["state"], "Complete", "{}", c.crunch_log());
    let output = rec["output"].as_str().unwrap();
    let manifest = manifest_of(&c, output);
    let paths = paths_of(&manifest);
    assert_eq!(
        paths,
        [&b"one.txt"[..], b"\xff\xfe", b"sub/two.txt"],
        "{manifest}"
    );
    let fake = &c.h.fake;
    let odd = std::ffi::OsStr::from_bytes(b"\xff\xfe");
    assert_eq!(common::python_reads_collection(fake, output, odd), b"odd");
    assert_eq!(
        common::python_reads_collection(fake, output, "one.txt"),
        b"one\n"
    );
    assert_eq!(
        common::python_reads_collection(fake, output, "sub/two.txt"),
        b"two\n"
    );
}

#[test]
fn a_ram_constraint_is_the_containers_memory_limit() {
    let c = Case::with_shared_image(
        102,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ],
    );
    c.edit(|r| r["runtime_constraints"] = json!({"ram": 64 << 20, "vcpus": 1}));
    let rec = c.run();
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(c.stdout(), format!("{}\n", 64 << 20));
}

#[test]
fn stdin_secrets_globs_and_writable_collections() {
    let c = Case::with_shared_image(
        103,
        &[
            "sh",
            "-c",
            "cat > /out/from-stdin && cat /etc/secret.conf > /dev/null && \
             echo changed >> /out/in/changed.txt && echo dropped > /out/dropped.log",
        ],
    );
    let input = c.h.fake.add_collection(&[
        ("same.txt", b"unchanged\n".as_slice()),
        ("changed.txt", b"before\n".as_slice()),
    ]);
    c.edit(|r| {
        r["output_path"] = json!("/out");
        r["output_glob"] = json!(["from-stdin", "in/**"]);
        r["mounts"] = json!({
            "/out": {"kind": "tmp"},
            "/out/in": {"kind": "collection", "portable_data_hash": input, "writable": true},
            "stdin": {"kind": "json", "content": {"a": 1}},
        });
    });
    c.h.fake.set_secret_mounts(
        &c.uuid,
        json!({"/etc/secret.conf": {"kind": "text", "content": "mypassword-is-long"}}),
    );
    let puts_before = c.h.fake.keep_puts();
    let rec = c.run();
    assert_eq!(rec["state"], "Complete", "{}", c.crunch_log());
    let output = rec["output"].as_str().unwrap();
    let fake = &c.h.fake;
    assert_eq!(fake.read_file(output, "from-stdin").unwrap(), br#"{"a":1}"#);
    assert_eq!(
        fake.read_file(output, "in/same.txt").unwrap(),
        b"unchanged\n"
    );
    assert_eq!(
        fake.read_file(output, "in/changed.txt").unwrap(),
        b"before\nchanged\n"
    );
    assert!(
        fake.read_file(output, "dropped.log").is_none(),
        "output_glob ignored"
    );
    // The unchanged file's block was reused, not uploaded again; the secret is nowhere.
    let manifest = manifest_of(&c, output);
    let input_block = manifest_of(&c, &input)
        .split(' ')
        .nth(1)
        .map(|l| l[..32].to_string())
        .unwrap();
    assert!(manifest.contains(&input_block), "{manifest}");
    assert!(!manifest.contains("secret"));
    for name in ["crunch-run.txt", "stdout.txt", "stderr.txt"] {
        assert!(!c.h.log_text(&c.uuid, name).contains("mypassword-is-long"));
    }
    assert!(fake.keep_puts() > puts_before);
}

#[test]
fn an_output_symlink_pointing_outside_cancels() {
    let c = Case::with_shared_image(104, &["ln", "-s", "/etc/hosts", "/tmp/hosts"]);
    c.edit(|r| r["mounts"] = json!({"/tmp": {"kind": "tmp"}}));
    let rec = c.run();
    assert_eq!(rec["state"], "Cancelled");
    assert_eq!(rec["exit_code"], 0, "the exit code is kept");
    assert!(rec["output"].is_null());
    assert!(c.crunch_log().contains("capturing the output failed"));
}

#[test]
fn a_leftover_container_with_our_name_is_removed_first() {
    let c = Case::with_shared_image(105, &["echo", "second run"]);
    let image = &engine::shared_image().id;
    let made = std::process::Command::new("docker")
        .args(["create", "--name", &c.uuid, image, "sleep", "600"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let rec = c.run();
    assert_eq!(rec["state"], "Complete", "{}", c.crunch_log());
    assert_eq!(c.stdout(), "second run\n");
    assert!(
        c.crunch_log()
            .contains("Removing leftover docker container")
    );
}

#[test]
fn docker_inspect_shows_the_memory_limit_while_it_runs() {
    let c = Case::with_shared_image(106, &["sh", "-c", "echo up; sleep 60"]);
    c.edit(|r| r["runtime_constraints"] = json!({"ram": 48 << 20, "vcpus": 1}));
    let mut child = c.h.spawn(&c.uuid, &[]);
    assert!(wait_for(60, || c.h.logs_table("stdout").contains("up")));
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}}",
            &c.uuid,
        ])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let limit = 48u64 << 20;
    assert_eq!(seen, format!("{limit} {limit} 1000000000"));
    assert_eq!(c.h.fake.container(&c.uuid)["state"], "Cancelled");
}

#[test]
fn the_logs_so_far_reach_the_record_while_the_container_runs() {
    let c = Case::with_shared_image(107, &["sh", "-c", "echo first; sleep 4; echo second"]);
    let mut cmd = c.h.command(&c.uuid);
    cmd.arg("--log-update-period=1s");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "crunch-run exited {}", out.status);
    assert!(engine::containers_named(&c.uuid).is_empty());
    let rec = c.h.fake.container(&c.uuid);
    assert_eq!(rec["state"], "Complete");
    // While Running the record's log was pointed at the logs so far, and one of those
    // interim saves (trash date set) held the first line alone.
    let updates = c.h.fake.container_updates(&c.uuid);
    assert!(
        updates
            .iter()
            .any(|u| u.get("state").is_none() && u.get("log").is_some()),
        "{updates:?}"
    );
    let fake = &c.h.fake;
    let interim = fake.manifests_saved_with_trash_date();
    assert!(
        interim.iter().any(|m| {
            let early = fake.read_manifest_file(m, "stdout.txt").unwrap_or_default();
            strip_timestamps(&String::from_utf8_lossy(&early)) == "first\n"
        }),
        "{interim:?}"
    );
    assert_eq!(c.stdout(), "first\nsecond\n");
}

/// crunchstat on a real container's cgroup (found from its PID as `docker inspect` gives
/// it): the figures are those of what the container did, and sampling ends by itself when
/// the engine removes the cgroup.
#[test]
fn crunchstat_samples_a_real_containers_cgroup() {
    use crunch_run::cgroup::{Pid, ProcessCgroup, Roots};
    use crunch_run::crunchstat::{Sampler, SamplerConfig, Thresholds};
    use std::process::Command;
    use std::sync::{Arc, Mutex};

    engine::require_engine();
    let image = engine::shared_image();
    let name = "crunch-run-test-crunchstat";
    engine::force_remove(name);
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // burn CPU for 2 s, then hold a 64 MiB string for 2 s
    let script = "timeout 2 sh -c 'while :; do :; done'; \
                  x=$(head -c 67108864 /dev/zero | tr '\\000' a); sleep 2; echo ${#x}";
    docker(&["run", "-d", "--name", name, &image.id, "sh", "-c", script]);
    let pid: u32 = docker(&["inspect", "--format", "{{.State.Pid}}", name])
        .parse()
        .unwrap();
    let cgroup = ProcessCgroup::find(&Roots::host(), Pid::Of(pid)).unwrap();
    let mut config = SamplerConfig::new(cgroup, Roots::host(), Duration::from_millis(500));
    let ram = 100 << 20;
    config.thresholds = Thresholds::percentages(ram, &[50, 99]);
    let (lines, alerts) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (l, a) = (Arc::clone(&lines), Arc::clone(&alerts));
    let sampler = Sampler::start(
        config,
        // A report is one call of several lines, as a log stream takes it.
        move |s: &str| l.lock().unwrap().extend(s.split('\n').map(String::from)),
        move |s: &str| a.lock().unwrap().push(s.to_string()),
    )
    .unwrap();
    assert_eq!(docker(&["wait", name]), "0");
    assert_eq!(docker(&["logs", name]), "67108864");
    engine::force_remove(name);
    let totals = sampler.stop();

    let lines = lines.lock().unwrap();
    let (cpu, cpus) = totals.cpu.unwrap();
    // at most 2 s of one busy thread (less when the host is busy), and some for `tr`
    assert!(
        cpu.user + cpu.sys > 0.2 && cpu.user + cpu.sys < 3.0,
        "{cpu:?}"
    );
    assert!(cpus >= 1.0, "{cpus}");
    let rss = totals.max_memory.get("rss").unwrap();
    assert!((64 << 20..200 << 20).contains(&rss), "max rss {rss}");
    let warned = alerts.lock().unwrap();
    assert!(
        warned[0].starts_with("Container using over 50% of memory (rss "),
        "{warned:?}"
    );
    let deltas = lines
        .iter()
        .filter(|l| l.starts_with("cpu ") && l.contains(" -- interval "));
    assert!(deltas.count() >= 4, "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("mem ")), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("net:eth0 ")),
        "{lines:?}"
    );
}

/// What busybox `times` printed (`0m1.220s 0m0.140s`, the shell's user and system time,
/// then its children's): the container's CPU seconds as it counted them itself.
fn cpu_counted_by_times(said: &str) -> f64 {
    let seconds = |t: &str| -> f64 {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap();
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    };
    let times = said.lines().take(2).flat_map(|l| l.split_whitespace());
    times.map(seconds).sum()
}

/// Issue 8: a container burns a fixed amount of work (about 2 s of CPU here) and holds
/// 64 MiB while crunch-run samples it every second; the real crunchstat-summary, reading
/// our crunchstat.txt, reports the CPU time the container counted itself (`times`), and a
/// memory maximum between the 64 MiB it held and its shell's own peak (VmHWM: building the
/// string briefly takes twice as much).
#[test]
fn crunchstat_summary_reads_what_a_real_container_did() {
    use common::summary::{row, run_summary};
    const MIB: f64 = 1048576.0;
    let script = "i=0; while [ $i -lt 1500000 ]; do i=$((i+1)); done; \
                  x=$(head -c 67108864 /dev/zero | tr '\\000' a); sleep 3; \
                  times; grep VmHWM /proc/$$/status; echo ${#x}";
    let c = Case::with_shared_image(840, &["sh", "-c", script]);
    let out =
        c.h.command(&c.uuid)
            .arg("--crunchstat-interval=1s")
            .output()
            .unwrap();
    assert!(out.status.success(), "crunch-run exited {}", out.status);
    assert_eq!(c.h.fake.container(&c.uuid)["state"], "Complete");
    assert!(engine::containers_named(&c.uuid).is_empty());
    let said = c.stdout();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 4, "{said}");
    assert_eq!(lines[3], "67108864");
    let counted = cpu_counted_by_times(&said);
    let hwm_kib: f64 = lines[2].split_whitespace().nth(1).unwrap().parse().unwrap();
    let peak = hwm_kib * 1024.0;

    let stats = c.h.log_file(&c.uuid, "crunchstat.txt");
    assert_timestamped(&String::from_utf8_lossy(&stats));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crunchstat.txt");
    std::fs::write(&path, &stats).unwrap();
    let report = run_summary(&c.h.fake, &path);
    let cpu: f64 = row(&report, "cpu", "user+sys")[4].parse().unwrap();
    let rss: f64 = row(&report, "mem", "rss")[2].parse().unwrap();
    eprintln!(
        "crunchstat-summary: CPU {cpu:.2} s (the container counted {counted:.2} s), \
         max rss {:.1} MiB (held 64 MiB, shell peak {:.1} MiB)",
        rss / MIB,
        peak / MIB
    );
    assert!(counted > 1.0, "the loop took {counted} s of CPU");
    assert!(
        (cpu - counted).abs() <= 0.2 + 0.1 * counted,
        "crunchstat-summary says {cpu} s of CPU, the container counted {counted} s"
    );
    assert!(
        rss >= 64.0 * MIB && rss <= peak + 16.0 * MIB,
        "crunchstat-summary says {} MiB at most, the container held 64 MiB (peak {} MiB)",
        rss / MIB,
        peak / MIB
    );
    // and crunch-run.txt's totals say the same as crunchstat-summary
    let crunch = c.crunch_log();
    let total = crunch
        .lines()
        .find_map(|l| l.split_once("Total CPU usage was "))
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_else(|| panic!("no CPU total in {crunch}"));
    let words: Vec<&str> = total.split_whitespace().collect();
    let ours = words[0].parse::<f64>().unwrap() + words[3].parse::<f64>().unwrap();
    assert!((ours - cpu).abs() < 0.02, "{total} against {cpu}");
    // ours sees every 1 s reading, crunchstat-summary the reported ones: at least as much
    let ours = crunch
        .lines()
        .find_map(|l| l.split_once("Maximum container memory rss usage was "))
        .and_then(|(_, rest)| rest.split_once(", ")?.1.split_once('/'))
        .map(|(bytes, _)| bytes.parse::<f64>().unwrap())
        .unwrap_or_else(|| panic!("no rss maximum in {crunch}"));
    assert!(
        ours >= rss && ours <= peak + 16.0 * MIB,
        "{ours} against {rss}"
    );
}
