// Issue 10 (hardening), component tests: the real crunch-run binary against the fake
// docker CLI in binstubs/ and the fake Arvados API + Keep. Records crunch-run cannot read,
// and the wrap-up when the API is gone.

mod common;

use common::harness::{Harness, UUID};

/// A record nested deeper than serde_json reads is still closed: Cancelled, the reason in
/// runtime_status, exit 0; nothing is run.
#[test]
fn a_record_too_deep_to_read_is_cancelled_with_the_reason() {
    let h = Harness::with_fake_docker();
    h.fake.add_deeply_nested_container(UUID, 200);
    let out = h.run(UUID, &[]);
    let rec = h.fake.container(UUID);
    assert_eq!(rec["state"], "Cancelled", "{rec}");
    let error = rec["runtime_status"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot read the container record")
            && error.contains("nested more than 127 levels deep"),
        "{rec}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nested more than 127 levels deep"),
        "{stderr}"
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        !h.docker_calls().iter().any(|c| c.starts_with("run")),
        "{:?}",
        h.docker_calls()
    );
}

/// A record that is not JSON at all (or whose state cannot be read) is left as it is:
/// nothing tells crunch-run it may change it.
#[test]
fn a_record_whose_state_cannot_be_read_is_left_alone() {
    let h = Harness::with_fake_docker();
    h.fake.add_deeply_nested_container(UUID, 200);
    h.fake
        .set_container_fields(UUID, serde_json::json!({"state": "Running"}));
    let out = h.run(UUID, &[]);
    assert!(!out.status.success());
    assert_eq!(h.fake.container(UUID)["state"], "Running");
    assert!(h.fake.container_updates(UUID).is_empty());
}
