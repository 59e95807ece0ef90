// Shared helpers for crunch-run's integration tests: the fake Arvados
// API + Keep servers (fake_arvados.rs, with pure helpers in
// fake_support.rs), an HTTPS client that trusts the fake's CA, and a check
// that the real Arvados Python SDK can read back a collection
// (tests/python/read_collection.py).
//
// Each test binary uses a different subset of these helpers, hence the
// dead_code allowance.
#![allow(dead_code)]

pub mod fake_arvados;
pub mod fake_support;
pub mod fake_timing;
pub mod http_server;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use fake_arvados::FakeArvados;

/// A ureq agent that trusts only the fake's CA and reports HTTP error
/// statuses as responses (not `Err`), so tests can assert on them.
pub fn https_agent(fake: &FakeArvados) -> ureq::Agent {
    let pem = fake.ca_pem();
    let cert = ureq::tls::Certificate::from_pem(&pem).expect("CA PEM");
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// The Python interpreter with arvados-python-client installed:
/// `$CRUNCH_RUN_TEST_PYTHON`, default `<crate>/.venv/bin/python`.
pub fn test_python() -> PathBuf {
    match std::env::var_os("CRUNCH_RUN_TEST_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    }
}

/// `program` (a Python SDK tool or the interpreter) set to talk to `fake` as a user
/// would: its host, token and CA, `home` as HOME, nothing from this machine's Arvados
/// configuration or caches.
pub fn sdk_command(fake: &FakeArvados, program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("ARVADOS_API_HOST", fake.api_host())
        .env("ARVADOS_API_TOKEN", fake.token())
        .env("SSL_CERT_FILE", fake.ca_file())
        .env("HOME", home)
        .env_remove("ARVADOS_API_HOST_INSECURE")
        .env_remove("ARVADOS_KEEP_SERVICES")
        .env_remove("ARVADOS_KEEP_PROXY")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_CACHE_HOME");
    cmd
}

/// Read file `path` (its exact bytes) of collection `pdh` from `fake` with the
/// real Arvados Python SDK (tests/python/read_collection.py) and return its
/// bytes. Panics with the script's stderr if it fails.
pub fn python_reads_collection(fake: &FakeArvados, pdh: &str, path: impl AsRef<OsStr>) -> Vec<u8> {
    let path = path.as_ref();
    let python = test_python();
    assert!(
        python.exists(),
        "no Python interpreter at {} — create a venv with arvados-python-client \
         (python3 -m venv .venv && .venv/bin/pip install arvados-python-client) \
         or set CRUNCH_RUN_TEST_PYTHON",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_collection.py");
    let home = tempfile::tempdir().expect("tempdir for HOME");
    let out = sdk_command(fake, &python, home.path())
        .arg(&script)
        .arg(pdh)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    if !out.status.success() {
        panic!(
            "read_collection.py {pdh} {path:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.stdout
}
pub mod engine;
pub mod harness;
pub mod slurm;
pub mod summary;
