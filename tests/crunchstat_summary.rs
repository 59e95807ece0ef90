// The real `crunchstat-summary` (PyPI crunchstat-summary, in .venv: `make pyenv`) reads a
// crunchstat.txt written by our formatter, timestamped as the log pipeline writes it, and
// reports the CPU time and the memory maximum of the synthetic run that made it (the
// real-engine test does the same for a real container's crunchstat.txt).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::fake_arvados::FakeArvados;
use common::summary::{row, run_summary};
use crunch_run::crunchstat::parse::{CpuTimes, IoCount, Memory};
use crunch_run::crunchstat::{DiskSpace, Reporter, Sample};
use crunch_run::rfc3339::format_timestamp;

const MIB: i64 = 1 << 20;

/// A minute of a container, sampled every 10 s: CPU climbs to 2.0 s user + 0.5 s sys, the
/// resident set peaks at 64 MiB at the third sample.
fn synthetic_run() -> (Vec<String>, Reporter) {
    let start = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let t0 = Instant::now();
    let cpu = [
        (0.0, 0.0),
        (0.5, 0.1),
        (1.2, 0.3),
        (2.0, 0.5),
        (2.0, 0.5),
        (2.0, 0.5),
        (2.0, 0.5),
    ];
    let rss = [4, 40, 64, 30, 30, 30, 30];
    let mut reporter = Reporter::default();
    let mut log = vec![
        "using /sys/fs/cgroup/memory/docker/abc/memory.stat".to_string(),
        "notice: monitoring temp dir /tmp/crunch-run.1".to_string(),
    ];
    for (i, ((user, sys), rss)) in cpu.into_iter().zip(rss).enumerate() {
        let offset = Duration::from_secs(10 * i as u64);
        let sample = Sample {
            memory: Memory([Some(8 * MIB), Some(0), Some(2), Some(rss * MIB)]),
            cpu: Some(CpuTimes { user, sys }),
            cpus: Some(2.0),
            blkio: BTreeMap::from([(
                "8:0".into(),
                IoCount {
                    tx: 4096 * i as i64,
                    rx: 0,
                },
            )]),
            net: vec![(
                "eth0".into(),
                IoCount {
                    tx: 100,
                    rx: 1000 * i as i64,
                },
            )],
        };
        let disk = DiskSpace {
            available: 1 << 30,
            used: 1 << 20,
            total: (1 << 30) + (1 << 20),
        };
        reporter.observe(&sample);
        let stamp = format_timestamp(start + offset + Duration::from_micros(137));
        for line in reporter.report(t0 + offset, &sample, &[], Some(disk)) {
            log.push(format!("{stamp} {line}"));
        }
    }
    // the notices are stamped too
    let first = format_timestamp(start);
    log[0] = format!("{first} {}", log[0]);
    log[1] = format!("{first} {}", log[1]);
    (log, reporter)
}

#[test]
fn crunchstat_summary_reads_our_crunchstat_txt() {
    let (log, reporter) = synthetic_run();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crunchstat.txt");
    std::fs::write(&path, log.join("\n") + "\n").unwrap();

    let fake = FakeArvados::start();
    let report = run_summary(&fake, &path);

    // CPU time: 2.0 user + 0.5 sys, the last cumulative figure
    assert_eq!(
        row(&report, "cpu", "user+sys")[2..],
        ["2.50", "0.10", "2.50"]
    );
    assert_eq!(row(&report, "cpu", "user")[4], "2.00");
    assert_eq!(row(&report, "cpu", "sys")[4], "0.50");
    assert_eq!(row(&report, "cpu", "cpus")[2], "2.00");
    // memory: the peak, not the last figure
    assert_eq!(row(&report, "mem", "rss")[2], (64 * MIB).to_string());
    assert!(report.contains("# Max memory used: 64.00MB\n"), "{report}");
    // the other figures were understood too
    assert_eq!(row(&report, "time", "elapsed")[2], "60");
    assert!(report.contains("# Overall CPU usage: 4.17%\n"), "{report}");
    assert_eq!(
        row(&report, "net:eth0", "rx")[2..],
        ["6000", "100.00", "6000"]
    );
    assert_eq!(row(&report, "blkio:8:0", "write")[2], "24576");
    assert_eq!(row(&report, "statfs", "used")[2], "1048576");

    // and our own end-of-run totals say the same
    let maxima = reporter.totals().maxima_lines(Some(128 * MIB));
    assert_eq!(
        maxima[0],
        "Total CPU usage was 2.000000 user and 0.500000 sys on 2.00 CPUs"
    );
    let rss = format!(
        "Maximum container memory rss usage was 50%, {}/{} bytes",
        64 * MIB,
        128 * MIB
    );
    assert!(maxima.contains(&rss), "{maxima:?}");
}
