// The real Docker engine for the real-engine tests: a tiny busybox image built at test time
// (tests/scripts/make-test-image.sh, from Debian's busybox-static), saved with `docker save`
// so that the fake Keep can serve it. No engine is a test failure, never a skip.

use std::process::Command;
use std::sync::OnceLock;

use super::harness::crate_dir;

/// A test image: its id and its `docker save` tar.
pub struct TestImage {
    pub id: String,
    pub tar: Vec<u8>,
}

impl TestImage {
    /// The file name the image collection holds it under.
    pub fn tar_name(&self) -> String {
        format!("{}.tar", self.id)
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

/// Panics, with the way out, unless a Docker engine answers.
pub fn require_engine() {
    let out = docker(&["info", "--format", "{{.ServerVersion}}"]);
    assert!(
        out.status.success(),
        "the real-engine tests need a Docker engine (run `make engine` or tests/scripts/ensure-docker.sh as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build an image with a distinct id (`note` makes it distinct) and save it.
pub fn build_image(tag: &str, note: &str) -> TestImage {
    require_engine();
    let script = crate_dir().join("tests/scripts/make-test-image.sh");
    let out = Command::new("sh")
        .arg(&script)
        .args([tag, note])
        .output()
        .expect("run make-test-image.sh");
    assert!(
        out.status.success(),
        "make-test-image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let save = docker(&["save", &id]);
    assert!(save.status.success(), "docker save {id} failed");
    TestImage {
        id,
        tar: save.stdout,
    }
}

/// One image shared by the tests of this process, already in the engine.
pub fn shared_image() -> &'static TestImage {
    static IMAGE: OnceLock<TestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let note = format!("crunch-run shared test image {}", std::process::id());
        build_image("crunch-run-test:shared", &note)
    })
}

/// An image the engine has never seen (built, saved, then removed from the engine).
pub fn fresh_image(label: &str) -> TestImage {
    let note = format!("crunch-run fresh image {label} {}", std::process::id());
    let tag = format!("crunch-run-test:{label}");
    let image = build_image(&tag, &note);
    remove_image(&image.id);
    image
}

pub fn remove_image(id: &str) {
    let _ = docker(&["rmi", "-f", id]);
}

pub fn image_exists(id: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", id])
        .status
        .success()
}

/// Docker containers (any state) named `name`.
pub fn containers_named(name: &str) -> Vec<String> {
    let out = docker(&["ps", "-a", "--quiet", "--filter", &format!("name=^{name}$")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Remove a leftover container, e.g. after a failed test.
pub fn force_remove(name: &str) {
    let _ = docker(&["rm", "-f", name]);
}
