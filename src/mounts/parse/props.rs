//! Property tests: no `mounts`, `secret_mounts` or output path panics the mount decoder
//! (`parse_mounts`); an `Err` is fine. Arbitrary values, and near-valid mount sets (a valid
//! one with one field, mount, mount point or the output path changed).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::parse_mounts;
use crate::arvados::container::props::{
    any_json, any_string, change, changed, config, multi_byte_strings, set_path,
};

const PDH: &str = "59389a8f9ee9d399be35462a0f92541c+53";

/// Every kind, stdio and a writable output collection: `parse_mounts` accepts it.
fn valid_mounts() -> Value {
    json!({
        "/tmp": {"kind": "tmp", "capacity": 1000000},
        "/keep/in": {"kind": "collection", "portable_data_hash": PDH, "path": "sub/file"},
        "/keep/by-uuid": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde"},
        "/tmp/out": {"kind": "collection", "writable": true},
        "/tmp/cfg.json": {"kind": "json", "content": {"a": [1, 2]}},
        "/etc/msg": {"kind": "text", "content": "hi", "exclude_from_output": true},
        "stdin": {"kind": "collection", "portable_data_hash": format!("{PDH}/in.txt")},
        "stdout": {"kind": "file", "path": "/tmp/stdout.txt"},
        "stderr": {"kind": "file", "path": "/tmp/logs/stderr.txt"},
    })
}

fn valid_secret_mounts() -> Value {
    json!({
        "/secret/token": {"kind": "text", "content": "s3cr3t"},
        "/secret/conf.json": {"kind": "json", "content": {"k": "v"}},
    })
}

/// Where near-valid mounts differ from `valid_mounts`; `*` stands for any key.
const MOUNT_PATHS: &[&[&str]] = &[
    &["*"],
    &["/tmp"],
    &["/tmp", "kind"],
    &["/tmp", "capacity"],
    &["/keep/in", "portable_data_hash"],
    &["/keep/in", "path"],
    &["/keep/in", "uuid"],
    &["/keep/in", "writable"],
    &["/keep/by-uuid", "uuid"],
    &["/tmp/out", "writable"],
    &["/tmp/out", "portable_data_hash"],
    &["/tmp/cfg.json", "content"],
    &["/tmp/cfg.json", "kind"],
    &["/etc/msg", "content"],
    &["/etc/msg", "exclude_from_output"],
    &["stdin", "portable_data_hash"],
    &["stdin", "path"],
    &["stdin", "kind"],
    &["stdout", "path"],
    &["stdout", "kind"],
    &["stderr"],
    &["*", "kind"],
];

/// Where near-valid secret mounts differ from `valid_secret_mounts`.
const SECRET_PATHS: &[&[&str]] = &[
    &["*"],
    &["*", "kind"],
    &["/secret/token"],
    &["/secret/token", "kind"],
    &["/secret/token", "content"],
    &["/secret/conf.json", "content"],
];

/// The output path: any string, or one near "/tmp".
fn any_output_path() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("/tmp".to_string()),
        1 => any_string(),
        1 => any_string().prop_map(|s| format!("/tmp{s}")),
        1 => prop::sample::select(vec!["", "/", "/tmp/", "/tm", "/tmp/out", "tmp", "/tmp//"])
            .prop_map(str::to_string),
    ]
}

/// A valid mount set with one change, and the output path.
fn near_valid() -> impl Strategy<Value = (Value, Value, String)> {
    prop_oneof![
        3 => (change(MOUNT_PATHS), any_output_path()).prop_map(|(c, out)| {
            (changed(valid_mounts(), c), valid_secret_mounts(), out)
        }),
        1 => change(SECRET_PATHS).prop_map(|c| {
            (valid_mounts(), changed(valid_secret_mounts(), c), "/tmp".to_string())
        }),
        // A mount point renamed to any string.
        1 => (prop::sample::select(vec!["/tmp", "/keep/in", "stdout", "/tmp/out"]), any_string())
            .prop_map(|(from, to)| {
                let mut mounts = valid_mounts();
                if let Some(m) = mounts.as_object_mut()
                    && let Some(v) = m.remove(from)
                {
                    m.insert(to, v);
                }
                (mounts, valid_secret_mounts(), "/tmp".to_string())
            }),
    ]
}

#[test]
fn the_base_mounts_are_valid() {
    let plan = parse_mounts(&valid_mounts(), &valid_secret_mounts(), "/tmp").unwrap();
    assert_eq!(plan.mounts.len(), 8);
    assert!(plan.stdin.is_some() && plan.stdout.is_some() && plan.stderr.is_some());
}

#[test]
fn multi_byte_strings_of_every_length_in_every_string_field() {
    let paths: &[&[&str]] = &[
        &["/keep/in", "portable_data_hash"],
        &["/keep/in", "path"],
        &["/keep/by-uuid", "uuid"],
        &["/etc/msg", "content"],
        &["stdin", "portable_data_hash"],
        &["stdout", "path"],
        &["/tmp", "kind"],
    ];
    let (mounts, secrets) = (valid_mounts(), valid_secret_mounts());
    // 40: past the longest id checked here (a portable data hash of a small collection).
    for s in multi_byte_strings(40) {
        for path in paths {
            let mut changed = mounts.clone();
            set_path(&mut changed, path, json!(s));
            let _ = parse_mounts(&changed, &secrets, "/tmp");
        }
        // As a mount point, under the output path, as a secret mount point, as the output
        // path itself and below it.
        for target in [s.clone(), format!("/{s}"), format!("/tmp/{s}")] {
            let text = json!({"kind": "text", "content": "x"});
            let mut changed = mounts.clone();
            set_path(&mut changed, &[&target], text.clone());
            let _ = parse_mounts(&changed, &secrets, "/tmp");
            let mut changed = secrets.clone();
            set_path(&mut changed, &[&target], text);
            let _ = parse_mounts(&mounts, &changed, "/tmp");
            let _ = parse_mounts(&mounts, &secrets, &target);
        }
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn no_values_panic_the_mount_decoder(
        mounts in any_json(),
        secret_mounts in any_json(),
        output_path in any_output_path(),
    ) {
        let _ = parse_mounts(&mounts, &secret_mounts, &output_path);
    }

    #[test]
    fn no_near_valid_mounts_panic_the_mount_decoder(
        (mounts, secret_mounts, output_path) in near_valid()
    ) {
        let _ = parse_mounts(&mounts, &secret_mounts, &output_path);
    }
}
