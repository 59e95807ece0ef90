//! crunchstat and hoststat in the lifecycle: the container's PID from the engine, its cgroup
//! (and crunch-run's own) from a fixture tree, the lines in the log collection and the logs
//! table, the warnings and totals in crunch-run.txt; and the run's end never held up.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::crunchstat::files::tests::v1_tree;

/// The fixture's container process (its cgroup files: 1187840 bytes of rss, 0.01 s sys).
const CONTAINER_PID: u32 = 2523;
const RAM: u64 = 1_250_000;
const PAGES: i64 = 1000;

/// A v1 host under `dir` where the container's process and crunch-run itself (hoststat)
/// are in the same cgroups, and crunch-run's resident set is `PAGES` pages.
fn host_tree(dir: &Path) -> Roots {
    let roots = v1_tree(dir);
    let proc = dir.join("proc");
    fs::create_dir_all(proc.join("self")).unwrap();
    fs::copy(proc.join("2523/cgroup"), proc.join("self/cgroup")).unwrap();
    let own = proc.join(std::process::id().to_string());
    fs::create_dir_all(&own).unwrap();
    let stat = format!("1 (crunch run) S{} {PAGES} 0 0\n", " 0".repeat(20));
    fs::write(own.join("stat"), stat).unwrap();
    roots
}

/// A run of a container that lives `life`, sampled every 50 ms.
fn sampled(script: Script, life: Duration, tree: &Path) -> Fixture {
    let mut f = Fixture::new(Script {
        lives: Some(life),
        ..script
    });
    f.config.crunchstat_interval = Some(Duration::from_millis(50));
    f.cgroups = host_tree(tree);
    f.record(|r| r["runtime_constraints"] = json!({"ram": RAM}));
    f
}

/// crunch-run.txt says nothing about crunchstat or hoststat: neither failed, neither was
/// waited for.
fn assert_quiet(crunch: &str) {
    let said = crunch
        .lines()
        .find(|l| l.contains("crunchstat") || l.contains("hoststat"));
    assert_eq!(said, None, "{crunch}");
}

fn page_size() -> i64 {
    // SAFETY: sysconf(3) only reads its integer argument.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }
}

#[test]
fn crunchstat_and_hoststat_reach_the_log_collection_and_crunch_run_txt() {
    let tree = tempfile::tempdir().unwrap();
    let script = Script {
        pid: Some(CONTAINER_PID),
        ..Script::default()
    };
    let f = sampled(script, Duration::from_millis(500), tree.path());
    assert_eq!(f.run(), 0);
    assert_eq!(f.final_update()["state"], "Complete");
    assert!(f.engine.calls().contains(&format!("pid {UUID}")));

    let pdh = f.final_update()["log"].as_str().unwrap().to_string();
    for name in ["crunchstat.txt", "hoststat.txt"] {
        let raw = f.collection_file(&pdh, name).unwrap();
        let stamped = raw.lines().all(|l| strip_timestamps(l) != l);
        assert!(stamped && !raw.is_empty(), "{name}: {raw}");
    }
    let stats = f.log("crunchstat.txt");
    let mem = "mem 4096 cache 0 swap 3 pgmajfault 1187840 rss";
    assert!(stats.lines().any(|l| l == mem), "{stats}");
    assert!(
        stats.contains("\ncpu 0.0000 user 0.0100 sys 20.00 cpus\n"),
        "{stats}"
    );
    assert!(stats.contains(" -- interval "), "{stats}");
    assert!(stats.contains("\nstatfs "), "{stats}");
    assert!(stats.contains("notice: monitoring temp dir "), "{stats}");
    let host = f.log("hoststat.txt");
    assert!(host.lines().any(|l| l == mem), "{host}");
    let rss = PAGES * page_size();
    assert!(
        host.contains(&format!("\nprocmem {rss} crunch-run\n")),
        "{host}"
    );
    assert!(f.logs_table("crunchstat").contains(mem));
    assert!(f.logs_table("hoststat").contains(mem));

    let crunch = f.log("crunch-run.txt");
    let said: Vec<&str> = crunch.lines().collect();
    let warned = |n| format!("Container using over {n}% of memory (rss 1187840/{RAM} bytes)");
    assert_eq!(count_lines(&crunch, &warned(90)), 1, "{crunch}");
    assert_eq!(count_lines(&crunch, &warned(95)), 1, "{crunch}");
    assert_eq!(count_lines(&crunch, &warned(99)), 0, "{crunch}");
    // the totals, after the exit code, in Go's wording
    let exited = said
        .iter()
        .position(|l| *l == "Container exited with status code 0");
    let cpu = "Total CPU usage was 0.000000 user and 0.010000 sys on 20.00 CPUs";
    let total = said.iter().position(|l| *l == cpu);
    assert!(exited.is_some() && total > exited, "{crunch}");
    let max = format!("Maximum container memory rss usage was 95%, 1187840/{RAM} bytes");
    assert_eq!(count_lines(&crunch, &max), 1, "{crunch}");
    let own = format!("Maximum crunch-run memory rss usage was {rss} bytes");
    assert_eq!(count_lines(&crunch, &own), 1, "{crunch}");
    assert_quiet(&crunch);
}

#[test]
fn an_interval_of_zero_samples_nothing() {
    let tree = tempfile::tempdir().unwrap();
    let script = Script {
        pid: Some(CONTAINER_PID),
        ..Script::default()
    };
    let mut f = sampled(script, Duration::from_millis(300), tree.path());
    f.config.crunchstat_interval = None;
    assert_eq!(f.run(), 0);
    let pdh = f.final_update()["log"].as_str().unwrap().to_string();
    assert_eq!(f.collection_file(&pdh, "crunchstat.txt"), None);
    assert_eq!(f.collection_file(&pdh, "hoststat.txt"), None);
    assert!(!f.engine.calls().iter().any(|c| c.starts_with("pid ")));
    assert!(!f.log("crunch-run.txt").contains("Maximum"));
}

/// The engine never answers the PID question (it answers once the container is removed,
/// at the cleanup): the run ends all the same, at once, and says nothing about it.
#[test]
fn a_pid_lookup_that_hangs_does_not_hold_up_the_end() {
    let tree = tempfile::tempdir().unwrap();
    let script = Script {
        pid: Some(CONTAINER_PID),
        pid_hangs: true,
        ..Script::default()
    };
    let f = sampled(script, Duration::from_millis(300), tree.path());
    let started = Instant::now();
    assert_eq!(f.run(), 0);
    // well under the supervisor's 10 s patience, which would say the helper did not stop
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let crunch = f.log("crunch-run.txt");
    assert_quiet(&crunch);
    assert!(!crunch.contains("Total CPU"), "{crunch}");
    let stats = f.log("crunchstat.txt");
    assert_eq!(
        stats,
        "notice: the container ended before its process was found\n"
    );
}

/// The container's process is gone (no /proc entry) by the time it is looked at: no
/// figures and no complaint. A container too short for the first ask is the same.
#[test]
fn a_process_gone_or_never_seen_is_fine() {
    for (pid, life) in [(999_999, 400), (CONTAINER_PID, 0)] {
        let tree = tempfile::tempdir().unwrap();
        let script = Script {
            pid: Some(pid),
            ..Script::default()
        };
        let f = sampled(script, Duration::from_millis(life), tree.path());
        assert_eq!(f.run(), 0);
        assert_eq!(f.final_update()["state"], "Complete");
        let crunch = f.log("crunch-run.txt");
        assert_quiet(&crunch);
        assert!(!crunch.contains("Total CPU"), "{crunch}");
        assert!(crunch.contains("Maximum crunch-run memory"), "{crunch}");
        assert!(!f.log("crunchstat.txt").contains("mem "));
    }
}
