// The real `crunchstat-summary` (PyPI crunchstat-summary, in .venv: `make pyenv`), run on a
// crunchstat.txt, and the rows of its text report.
//
// crunchstat-summary builds an API client even for `--log-file` (it fetches the discovery
// document and nothing else), so the fake Arvados server stands in for a cluster.

use std::path::{Path, PathBuf};

use super::fake_arvados::FakeArvados;

fn summary_script() -> PathBuf {
    let python = super::test_python();
    let script = python.with_file_name("crunchstat-summary");
    assert!(
        script.exists(),
        "no {} — install it with `make pyenv` (pip install crunchstat-summary)",
        script.display()
    );
    script
}

/// `crunchstat-summary --log-file <log_file> --format text`: its report. Panics if it fails
/// or complains about a line it could not parse.
pub fn run_summary(fake: &FakeArvados, log_file: &Path) -> String {
    let home = tempfile::tempdir().unwrap();
    let out = super::sdk_command(fake, &super::test_python(), home.path())
        .arg(summary_script())
        .args(["--log-file".as_ref(), log_file.as_os_str()])
        .args(["--format", "text"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "crunchstat-summary failed: {stderr}");
    // it warns about lines it could not parse
    assert!(!stderr.contains("Error parsing"), "{stderr}");
    assert!(!stderr.contains("log contains message"), "{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The row `category\tmetric\ttask_max\ttask_max_rate\tjob_total` of the report's table.
pub fn row<'a>(report: &'a str, category: &str, metric: &str) -> Vec<&'a str> {
    report
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.len() == 5 && f[0] == category && f[1] == metric)
        .unwrap_or_else(|| panic!("no {category} {metric} row in:\n{report}"))
}
