//! Property tests: no JSON value panics the record decoder (`Container::from_json`,
//! `raw_state`); an `Err` is fine. Also the JSON generators the mount decoder's property
//! tests share: arbitrary values (nesting up to serde_json's parse limit, extreme numbers,
//! strings with multi-byte characters, empty and large arrays) and near-valid records.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value, json};

use super::{Container, raw_state};

/// Few enough cases to keep `cargo test` fast, enough to matter; no regression files
/// (a failure found becomes a plain test beside the fix).
pub(crate) fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Characters the decoders look at, and some that are more than one byte long.
const CHARS: &[char] = &[
    'a', 'f', '0', '9', 'z', 'Z', '-', '+', '/', '.', '=', ' ', '\0', '\n', 'é', '€', '𝄞',
];

/// Strings of any characters, or of the interesting ones, up to 70 characters.
pub(crate) fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        prop::collection::vec(prop::sample::select(CHARS), 0..70).prop_map(String::from_iter),
    ]
}

fn any_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<u64>().prop_map(Number::from),
        any::<i64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
        prop::sample::select(vec![0.0, -0.0, 0.5, 1e308, -1e308, f64::MIN_POSITIVE])
            .prop_filter_map("finite", Number::from_f64),
        prop::sample::select(vec![u64::MAX, u64::MAX - 1, u32::MAX as u64 + 1, 0])
            .prop_map(Number::from),
    ]
}

fn any_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any_number().prop_map(Value::Number),
        any_string().prop_map(Value::String),
    ]
}

/// Object keys: the names the decoders read, or anything.
fn any_key(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(names).prop_map(str::to_string),
        any_string(),
    ]
}

/// `leaf` inside `depth` arrays or objects.
fn nest(leaf: Value, depth: usize, objects: bool) -> Value {
    (0..depth).fold(leaf, |inner, _| {
        if objects {
            json!({ "state": inner })
        } else {
            json!([inner])
        }
    })
}

/// Field names of a container record and of its parts.
pub(crate) const RECORD_FIELDS: &[&str] = &[
    "uuid",
    "state",
    "command",
    "container_image",
    "cwd",
    "environment",
    "output_path",
    "runtime_constraints",
    "mounts",
    "output_glob",
    "scheduling_parameters",
    "API",
    "ram",
    "vcpus",
    "gpu",
    "cuda",
    "device_count",
    "max_run_time",
    "kind",
    "content",
    "path",
    "portable_data_hash",
    "writable",
    "capacity",
    "exclude_from_output",
];

/// Any JSON value: mostly small random trees whose keys are often the fields the decoders
/// read; sometimes one value nested up to 127 levels (the deepest serde_json parses) or a
/// large array.
pub(crate) fn any_json() -> impl Strategy<Value = Value> {
    let tree = any_leaf().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any_key(RECORD_FIELDS), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        8 => tree,
        1 => (any_leaf(), 0..127usize, any::<bool>())
            .prop_map(|(leaf, depth, objects)| nest(leaf, depth, objects)),
        1 => (any_leaf(), 0..5_000usize).prop_map(|(leaf, n)| Value::Array(vec![leaf; n])),
    ]
}

/// Set `path` in `value` to `new`, making objects on the way (an array index past the end
/// appends). Replaces whatever is in the way.
pub(crate) fn set_path(value: &mut Value, path: &[&str], new: Value) {
    let Some((first, rest)) = path.split_first() else {
        *value = new;
        return;
    };
    if let (Value::Array(items), Ok(i)) = (&mut *value, first.parse::<usize>()) {
        if i >= items.len() {
            items.push(Value::Null);
        }
        let last = items.len() - 1;
        return set_path(&mut items[i.min(last)], rest, new);
    }
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    if let Value::Object(map) = value {
        set_path(map.entry(*first).or_insert(Value::Null), rest, new);
    }
}

/// Remove the last key of `path` from the object it leads to, if any.
pub(crate) fn remove_path(value: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let parent = parents.iter().try_fold(&mut *value, |v, key| match v {
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        Value::Object(map) => map.get_mut(*key),
        _ => None,
    });
    if let Some(Value::Object(map)) = parent {
        map.remove(*last);
    }
}

/// A record `Container::from_json` accepts, reaching every field it reads.
pub(crate) fn valid_record() -> Value {
    json!({
        "uuid": "zzzzz-dz642-0123456789abcde",
        "state": "Locked",
        "command": ["echo", "hello world"],
        "container_image": "d740a57097711e08eb9b2a93518f20ab+174",
        "cwd": "/tmp",
        "environment": {"FROBIZ": "bilbo", "EMPTY": ""},
        "output_path": "/tmp",
        "runtime_constraints": {
            "API": true, "ram": 12000000000u64, "vcpus": 4,
            "gpu": {"stack": "cuda", "device_count": 1}, "cuda": {"device_count": 2}
        },
        "mounts": {"/tmp": {"kind": "tmp", "capacity": 1000000}},
        "output_glob": ["*.txt"],
        "scheduling_parameters": {"max_run_time": 3600}
    })
}

/// Where a near-valid record differs from `valid_record`; `*` stands for any key.
const RECORD_PATHS: &[&[&str]] = &[
    &["uuid"],
    &["state"],
    &["command"],
    &["command", "0"],
    &["command", "2"],
    &["container_image"],
    &["cwd"],
    &["environment"],
    &["environment", "FROBIZ"],
    &["environment", "*"],
    &["output_path"],
    &["runtime_constraints"],
    &["runtime_constraints", "*"],
    &["runtime_constraints", "API"],
    &["runtime_constraints", "ram"],
    &["runtime_constraints", "vcpus"],
    &["runtime_constraints", "gpu"],
    &["runtime_constraints", "gpu", "device_count"],
    &["runtime_constraints", "cuda", "device_count"],
    &["mounts"],
    &["mounts", "*"],
    &["output_glob"],
    &["output_glob", "0"],
    &["output_glob", "1"],
    &["scheduling_parameters"],
    &["scheduling_parameters", "max_run_time"],
];

/// A value to put where a valid one was: anything; an object or array of anything (so a
/// field wanting one gets odd ones often); or a string or list of strings, the shapes most
/// fields want, so the decoder goes on to look inside.
pub(crate) fn any_replacement() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => any_json(),
        1 => prop::collection::btree_map(any_key(RECORD_FIELDS), any_json(), 1..6)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => prop::collection::vec(any_json(), 1..6).prop_map(Value::Array),
        2 => any_string().prop_map(Value::String),
        1 => prop::collection::vec(any_string(), 0..4).prop_map(|v| json!(v)),
    ]
}

/// One change to a valid value: the path (with `*` made a key), and the new value or
/// `None` to remove it.
pub(crate) fn change(
    paths: &'static [&'static [&'static str]],
) -> impl Strategy<Value = (Vec<String>, Option<Value>)> {
    (
        prop::sample::select(paths),
        any_string(),
        prop::option::weighted(0.9, any_replacement()),
    )
        .prop_map(|(path, key, new)| {
            let path = path
                .iter()
                .map(|p| {
                    if *p == "*" {
                        key.clone()
                    } else {
                        p.to_string()
                    }
                })
                .collect();
            (path, new)
        })
}

/// `value` with the change made.
pub(crate) fn changed(mut value: Value, (path, new): (Vec<String>, Option<Value>)) -> Value {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match new {
        Some(v) => set_path(&mut value, &path, v),
        None => remove_path(&mut value, &path),
    }
    value
}

/// `valid_record` with one field set to another value, or removed.
fn near_valid_record() -> impl Strategy<Value = Value> {
    change(RECORD_PATHS).prop_map(|c| changed(valid_record(), c))
}

fn decode(record: &Value) {
    let _ = raw_state(record);
    let _ = Container::from_json(record);
}

#[test]
fn the_base_record_is_valid() {
    let c = Container::from_json(&valid_record()).unwrap();
    assert_eq!(c.runtime_constraints.gpu_count, 1);
    assert_eq!(c.max_run_time, Some(std::time::Duration::from_secs(3600)));
}

/// Strings of every length up to `max_len` characters with a 2- or 4-byte character at
/// every position, the rest ASCII: ids are checked on bytes, and a character straddling a
/// byte index a check looks at must not panic it.
pub(crate) fn multi_byte_strings(max_len: usize) -> impl Iterator<Item = String> {
    (1..=max_len).flat_map(|len| {
        (0..len).flat_map(move |pos| {
            ['é', '𝄞'].map(|ch| (0..len).map(|i| if i == pos { ch } else { 'a' }).collect())
        })
    })
}

#[test]
fn multi_byte_strings_of_every_length_in_every_string_field() {
    let paths: &[&[&str]] = &[
        &["uuid"],
        &["state"],
        &["container_image"],
        &["cwd"],
        &["output_path"],
        &["command", "0"],
        &["environment", "FROBIZ"],
        &["output_glob", "0"],
    ];
    // 70: past the longest id checked (a 64-digit image id with "sha256:").
    for s in multi_byte_strings(70) {
        for path in paths {
            let mut record = valid_record();
            set_path(&mut record, path, json!(s));
            decode(&record);
        }
        let mut record = valid_record();
        set_path(&mut record, &["environment", &s], json!("v"));
        decode(&record);
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn no_json_value_panics_the_record_decoder(record in any_json()) {
        decode(&record);
    }

    #[test]
    fn no_near_valid_record_panics_the_record_decoder(record in near_valid_record()) {
        decode(&record);
    }
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn no_object_of_record_fields_panics_the_record_decoder(
        fields in prop::collection::btree_map(any_key(RECORD_FIELDS), any_json(), 0..10)
    ) {
        decode(&Value::Object(fields.into_iter().collect()));
    }
}
