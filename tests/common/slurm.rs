// A real one-node Slurm for the Slurm tests (tests/scripts/ensure-slurm.sh starts it):
// crunch-run submitted the way crunch-dispatch-slurm submits it, and the job watched and
// killed through Slurm's own commands. No Slurm is a test failure, never a skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::harness::Harness;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} {args:?}: {e} (start Slurm with tests/scripts/ensure-slurm.sh as root)"
            )
        })
}

/// Panics, with the way out, unless the Slurm node answers and can take jobs. Asked once per
/// test process: sinfo takes several seconds to give up on a controller that is down.
pub fn require_slurm() {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    let answer = ANSWER.get_or_init(|| {
        let out = run("sinfo", &["--noheader", "--format=%t"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && ["idle", "mix", "alloc"].contains(&state.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "the Slurm tests need a one-node Slurm that takes jobs (run \
                 tests/scripts/ensure-slurm.sh as root); sinfo says {state:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    });
    if let Err(why) = answer {
        panic!("{why}");
    }
}

/// `#!/bin/sh` + `exec` of `args`, each single-quoted: the script crunch-dispatch-slurm
/// writes to sbatch's stdin.
pub fn exec_script(args: &[String]) -> String {
    let mut script = String::from("#!/bin/sh\nexec");
    for arg in args {
        script.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
    }
    script.push('\n');
    script
}

/// A submitted batch job. Dropping it cancels the job if it still runs, so a failed test
/// leaves nothing queued.
pub struct Job {
    pub id: String,
    pub output: PathBuf,
}

impl Job {
    /// Submit crunch-run for `uuid` as crunch-dispatch-slurm does: the harness's crunch-run
    /// command (its environment exported by sbatch), `crunch_run_flags` before the UUID, in
    /// a `#!/bin/sh` + `exec` script, with `sbatch --job-name=<uuid> --nice=10000
    /// --no-requeue --mem=<mem_mb> --cpus-per-task=1 --tmp=0`.
    pub fn submit(h: &Harness, uuid: &str, crunch_run_flags: &[&str], mem_mb: u64) -> Job {
        let crunch_run = h.command(uuid);
        let mut argv = vec![crunch_run.get_program().to_string_lossy().into_owned()];
        let mut args: Vec<String> = crunch_run
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let uuid_arg = args.pop().expect("the harness passes the UUID last");
        argv.extend(args);
        argv.extend(crunch_run_flags.iter().map(|f| f.to_string()));
        argv.push(uuid_arg);
        submit_script(h, uuid, &exec_script(&argv), mem_mb)
    }

    /// `JobState` from `scontrol show job` (e.g. RUNNING, COMPLETED, CANCELLED, FAILED);
    /// empty once slurmctld forgot the job.
    pub fn state(&self) -> String {
        let out = run("scontrol", &["--oneliner", "show", "job", &self.id]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the job has ended (any final state).
    pub fn finished(&self) -> bool {
        !matches!(
            self.state().as_str(),
            "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED"
        )
    }

    /// Wait up to `secs` for the job to end; its final state, or a panic with its output.
    pub fn wait_finished(&self, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.finished() {
                return self.state();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "slurm job {} still {} after {secs} s; its output:\n{}",
            self.id,
            self.state(),
            self.output_text()
        );
    }

    /// The processes Slurm counts as the job's (`scontrol listpids`), i.e. what it signals.
    pub fn pids(&self) -> Vec<i32> {
        let out = run("scontrol", &["listpids", &self.id]);
        let mut pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// What the job wrote to its stdout and stderr (crunch-run's stderr and the guard's).
    pub fn output_text(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

/// Submit `script` as job `name`, with the same sbatch options and exported environment as
/// [`Job::submit`].
pub fn submit_script(h: &Harness, name: &str, script: &str, mem_mb: u64) -> Job {
    let output = h.tmp.path().join(format!("slurm-{name}.out"));
    let mut sbatch = Command::new("sbatch");
    for (key, value) in h.command(name).get_envs() {
        match value {
            Some(v) => sbatch.env(key, v),
            None => sbatch.env_remove(key),
        };
    }
    sbatch
        .arg("--parsable")
        .arg(format!("--job-name={name}"))
        .args(["--nice=10000", "--no-requeue"])
        .arg(format!("--mem={mem_mb}"))
        .args(["--cpus-per-task=1", "--tmp=0"])
        .arg(format!("--output={}", output.display()))
        .arg(format!("--chdir={}", h.tmp.path().display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = sbatch
        .spawn()
        .expect("cannot run sbatch (tests/scripts/ensure-slurm.sh installs it)");
    child
        .stdin
        .take()
        .expect("sbatch stdin")
        .write_all(script.as_bytes())
        .expect("write the job script to sbatch");
    let out = child.wait_with_output().expect("sbatch");
    assert!(
        out.status.success(),
        "sbatch failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "sbatch printed no job id: {out:?}"
    );
    Job { id, output }
}

/// Cgroup directories named `job_<id>` anywhere in /sys/fs/cgroup (Slurm's, and those docker
/// created under a job's cgroup as a container's parent), a few levels deep.
pub fn job_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: u32, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if entry.file_name() == name {
                found.push(entry.path());
            } else if depth > 1 {
                walk(&entry.path(), name, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        Path::new("/sys/fs/cgroup"),
        &format!("job_{id}"),
        5,
        &mut found,
    );
    found
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.finished() {
            let _ = run("scancel", &[&self.id]);
        }
    }
}
