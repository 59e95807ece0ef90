// Slurm tests: the crunch-run binary submitted to a real one-node Slurm (slurmctld + slurmd +
// munge, proctrack/cgroup, started by tests/scripts/ensure-slurm.sh) the way
// crunch-dispatch-slurm submits it — `sbatch --job-name=<uuid> --no-requeue --mem=…
// --cpus-per-task=…` with a `#!/bin/sh` + `exec crunch-run … <uuid>` script on stdin — against
// the fake Arvados and the real Docker engine. What only a real cluster shows: the record ends
// as it should when Slurm ends the job, no container outlives a job whose every process Slurm
// killed, and Slurm's limits reach the container through the cgroup parent.
//
// The tests run one at a time (the node has few CPUs and the timings matter), and fail, not
// skip, when Slurm or Docker is not up.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::engine;
use common::harness::{Harness, record, strip_timestamps, wait_for};
use common::slurm::{self, Job};

/// How long a container may outlive a job whose every process was SIGKILLed.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

fn uuid(n: u32) -> String {
    format!("zzzzz-dz642-sl{n:013}")
}

struct Case {
    h: Harness,
    uuid: String,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Case {
    /// A fake Arvados holding the shared test image, and a Locked record for `command`.
    fn new(n: u32, command: &[&str]) -> Case {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        slurm::require_slurm();
        engine::require_engine();
        let image = engine::shared_image();
        let h = Harness::new(common::fake_arvados::FakeArvados::start(), false);
        let pdh = h.fake.add_collection(&[(&image.tar_name(), &image.tar)]);
        let uuid = uuid(n);
        engine::force_remove(&uuid);
        h.fake.add_container(record(&uuid, &pdh, command));
        Case {
            h,
            uuid,
            _one_at_a_time: lock,
        }
    }

    /// A container that prints "started" and sleeps, submitted with `crunch_run_flags` and
    /// seen running.
    fn started(n: u32, crunch_run_flags: &[&str]) -> (Case, Job) {
        let c = Case::new(n, &["sh", "-c", "echo started; sleep 300"]);
        let job = c.submit(crunch_run_flags, 256);
        c.wait_started(&job);
        (c, job)
    }

    fn submit(&self, crunch_run_flags: &[&str], mem_mb: u64) -> Job {
        Job::submit(&self.h, &self.uuid, crunch_run_flags, mem_mb)
    }

    /// Wait until the container printed "started" (so it runs, and crunch-run is Running).
    fn wait_started(&self, job: &Job) {
        assert!(
            wait_for(120, || self.h.logs_table("stdout").contains("started")),
            "the container did not start; job {} is {}; its output:\n{}",
            job.id,
            job.state(),
            job.output_text()
        );
    }

    /// Wait for the job to end; the final record, which must be Complete.
    fn complete_record(&self, job: &Job) -> serde_json::Value {
        let state = job.wait_finished(120);
        let rec = self.h.fake.container(&self.uuid);
        assert_eq!(
            rec["state"],
            "Complete",
            "job {state}; its output:\n{}",
            job.output_text()
        );
        rec
    }

    fn state(&self) -> String {
        self.h.fake.container(&self.uuid)["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn container_running(&self) -> bool {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{.State.Running}}", &self.uuid])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        engine::force_remove(&self.uuid);
    }
}

/// SIGKILL every process Slurm counts as the job's, as Slurm itself does at the end of
/// KillWait, on a time or memory limit, or when the node is drained; then wait for the
/// job's container to go.
fn sigkill_every_job_process_and_expect_no_container(c: &Case, job: &Job) {
    let pids = job.pids();
    assert!(
        !pids.is_empty(),
        "scontrol listpids {} listed nothing",
        job.id
    );
    for pid in &pids {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let t0 = Instant::now();
    job.wait_finished(60);
    let gone = wait_for(ORPHAN_GRACE.as_secs(), || !c.container_running());
    assert!(
        gone,
        "container {} still running {:?} after every process of job {} (pids {pids:?}) was \
         SIGKILLed; job output:\n{}",
        c.uuid,
        t0.elapsed(),
        job.id,
        job.output_text()
    );
    eprintln!("container gone {:?} after the SIGKILLs", t0.elapsed());
}

#[test]
fn a_run_under_slurm_completes_and_saves_its_logs() {
    let c = Case::new(1, &["sh", "-c", "echo hello from slurm"]);
    let job = c.submit(&[], 256);
    let rec = c.complete_record(&job);
    assert_eq!(job.state(), "COMPLETED");
    assert_eq!(rec["exit_code"], 0);
    assert_eq!(
        strip_timestamps(&c.h.log_text(&c.uuid, "stdout.txt")),
        "hello from slurm\n"
    );
    let crunch = c.h.log_text(&c.uuid, "crunch-run.txt");
    assert!(
        crunch.contains("Container exited with status code 0"),
        "{crunch}"
    );
    // Run as root, the guard left the job's cgroups (else crunch-run.txt says why not).
    assert!(
        crunch.contains(&format!(
            "The guard process left Slurm job {}'s cgroups",
            job.id
        )),
        "{crunch}"
    );
    assert!(engine::containers_named(&c.uuid).is_empty());
}

/// Start a long container under Slurm, cancel its job with `scancel --name=<uuid>
/// <scancel_flags>`, and expect the record Cancelled and the container gone; how long the
/// job took to end.
fn scancel_and_expect_cancelled(n: u32, scancel_flags: &[&str]) -> Duration {
    let (c, job) = Case::started(n, &[]);
    let t0 = Instant::now();
    let out = std::process::Command::new("scancel")
        .arg(format!("--name={}", c.uuid))
        .args(scancel_flags)
        .output()
        .expect("scancel");
    assert!(out.status.success(), "{out:?}");
    job.wait_finished(60);
    let took = t0.elapsed();
    eprintln!("job ended {took:?} after scancel");
    assert!(engine::containers_named(&c.uuid).is_empty());
    assert_eq!(c.state(), "Cancelled", "job output:\n{}", job.output_text());
    took
}

#[test]
fn scancel_by_name_cancels_the_record_and_removes_the_container() {
    // SIGTERM to the job's processes; SIGKILL for what is left after KillWait (10 s).
    let took = scancel_and_expect_cancelled(2, &[]);
    assert!(
        took < Duration::from_secs(10),
        "the job took {took:?}: Slurm's SIGKILL after KillWait ended crunch-run"
    );
}

#[test]
fn the_dispatchers_own_scancel_cancels_the_record_and_removes_the_container() {
    // crunch-dispatch-slurm's Cancel for a running job: SIGTERM to the batch script only,
    // no SIGKILL after it.
    scancel_and_expect_cancelled(3, &["--batch", "--signal=TERM", "--state=running"]);
}

#[test]
fn sigkill_of_every_job_process_leaves_no_container_running() {
    let (c, job) = Case::started(4, &[]);
    sigkill_every_job_process_and_expect_no_container(&c, &job);
}

#[test]
fn sigkill_of_every_job_process_leaves_no_container_running_with_the_cgroup_parent() {
    let (c, job) = Case::started(5, &["-cgroup-parent-subsystem=memory"]);
    sigkill_every_job_process_and_expect_no_container(&c, &job);
}

/// The memory cgroup of a process, from /proc/<pid>/cgroup (v1 `N:memory:/path`, else the
/// v2 `0::/path` line).
fn memory_cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.split_once(':')
                    .and_then(|(_, rest)| rest.strip_prefix(prefix))
            })
            .map(str::to_string)
    };
    line("memory:")
        .or_else(|| line(":"))
        .unwrap_or_else(|| panic!("no memory cgroup in /proc/{pid}/cgroup: {text}"))
}

#[test]
fn with_cgroup_parent_memory_the_container_sits_in_the_jobs_memory_cgroup() {
    let (c, job) = Case::started(6, &["-cgroup-parent-subsystem=memory"]);
    let job_cgroup = memory_cgroup_of(job.pids()[0]);
    assert!(
        job_cgroup.contains(&format!("/job_{}/", job.id)),
        "{job_cgroup}"
    );
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.CgroupParent}}",
            &c.uuid,
        ])
        .output()
        .expect("docker inspect");
    let parent = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = std::process::Command::new("scancel")
        .arg(format!("--name={}", c.uuid))
        .output();
    job.wait_finished(60);
    assert_eq!(parent, job_cgroup, "the container's --cgroup-parent");
}

/// Wait a little for the job's cgroup directories to go, and say which are left.
fn job_cgroup_dirs_left(job: &Job) -> Vec<std::path::PathBuf> {
    wait_for(5, || slurm::job_cgroup_dirs(&job.id).is_empty());
    slurm::job_cgroup_dirs(&job.id)
}

#[test]
fn a_cgroup_parent_run_leaves_no_cgroup_directories_behind() {
    // docker creates the parent path in every hierarchy, and neither it nor Slurm removes
    // what it created: thousands of jobs would leave thousands of empty cgroups.
    let c = Case::new(10, &["true"]);
    let job = c.submit(&["-cgroup-parent-subsystem=memory"], 256);
    c.complete_record(&job);
    let left = job_cgroup_dirs_left(&job);
    assert!(left.is_empty(), "cgroup directories left: {left:?}");
}

#[test]
fn a_killed_cgroup_parent_run_leaves_no_cgroup_directories_behind() {
    let (c, job) = Case::started(11, &["-cgroup-parent-subsystem=memory"]);
    sigkill_every_job_process_and_expect_no_container(&c, &job);
    let left = job_cgroup_dirs_left(&job);
    assert!(left.is_empty(), "cgroup directories left: {left:?}");
}

/// Run a container that holds 100 MiB (docker's own limit, the record's `ram`, is 256 MiB)
/// in a job given only `--mem=64`, as when Slurm's --mem is what binds; its final record,
/// and crunch-run.txt.
fn hold_100_mib_in_a_64_mib_job(n: u32, crunch_run_flags: &[&str]) -> (serde_json::Value, String) {
    let c = Case::new(
        n,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
    );
    let job = c.submit(crunch_run_flags, 64);
    let rec = c.complete_record(&job);
    (rec, c.h.log_text(&c.uuid, "crunch-run.txt"))
}

#[test]
fn with_cgroup_parent_memory_slurms_memory_limit_kills_the_container() {
    // Only the job's memory cgroup, as the container's parent, can stop it.
    let (rec, crunch) = hold_100_mib_in_a_64_mib_job(7, &["-cgroup-parent-subsystem=memory"]);
    assert_eq!(
        rec["exit_code"], 137,
        "the container was not held to the job's --mem=64; crunch-run.txt:\n{crunch}"
    );
}

#[test]
fn without_cgroup_parent_slurms_memory_limit_does_not_reach_the_container() {
    // The control for the test above: the same container passes under docker's own limit.
    let (rec, crunch) = hold_100_mib_in_a_64_mib_job(8, &[]);
    assert_eq!(rec["exit_code"], 0, "crunch-run.txt:\n{crunch}");
}

#[test]
fn the_operator_epilog_removes_a_container_its_job_left_and_the_jobs_cgroups() {
    // A job that leaves a crunch-run-labelled container behind (under the job's cgroup, as
    // with -cgroup-parent-subsystem) and is SIGKILLed; then contrib/slurm-epilog.sh
    // run as slurmd runs an Epilog: as root, SLURM_JOB_ID set, no SLURM_JOB_NAME (22.05).
    let c = Case::new(9, &["true"]); // only its UUID, fake and lock are used
    let image = &engine::shared_image().id;
    let script = format!(
        "#!/bin/sh\n\
         cg=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)\n\
         docker run -d --name {uuid} --label org.arvados.container_uuid={uuid} \
         --cgroup-parent=\"$cg\" {image} sleep 300\n\
         exec sleep 300\n",
        uuid = c.uuid
    );
    let job = slurm::submit_script(&c.h, &c.uuid, &script, 64);
    assert!(
        wait_for(60, || c.container_running()),
        "job output:\n{}",
        job.output_text()
    );
    for pid in job.pids() {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    job.wait_finished(60);
    assert!(c.container_running(), "Slurm itself stopped the container");
    let epilog = common::harness::crate_dir().join("contrib/slurm-epilog.sh");
    let out = std::process::Command::new("sh")
        .arg(&epilog)
        .env_clear()
        .env("SLURM_JOB_ID", &job.id)
        .output()
        .expect("run the epilog");
    assert!(out.status.success(), "{out:?}");
    assert!(engine::containers_named(&c.uuid).is_empty());
    let left = slurm::job_cgroup_dirs(&job.id);
    assert!(left.is_empty(), "job cgroup directories left: {left:?}");
}
