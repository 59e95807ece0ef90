//! Checking a record's `mounts` and `secret_mounts` into a [`MountPlan`], without I/O:
//! one function per mount kind, every refusal worded as the Go crunch-run words it where it
//! has a word for it. Laying the plan out on the host is stage.rs's job.

use serde_json::{Map, Value};

use super::{Mount, MountError, MountKind, MountPlan, at_or_below, below, invalid, title};
use crate::arvados::container::kind_of;
use crate::arvados::ids::{is_collection_uuid, is_pdh};

const STDIO: [&str; 3] = ["stdin", "stdout", "stderr"];

/// Validate `mounts` and `secret_mounts` (JSON objects, or null) against `output_path`.
/// No I/O.
pub fn parse_mounts(
    mounts: &Value,
    secret_mounts: &Value,
    output_path: &str,
) -> Result<MountPlan, MountError> {
    let regular = as_object(mounts, "mounts")?;
    let secrets = as_object(secret_mounts, "secret_mounts")?;

    let mut entries: Vec<(&String, &Value, bool)> = Vec::new();
    for (target, value) in regular.iter() {
        entries.push((target, value, false));
    }
    for (target, value) in secrets.iter() {
        if regular.contains_key(target) {
            return Err(invalid(format!(
                "secret mount {target:?} conflicts with regular mount"
            )));
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "json" && kind != "text" {
            return Err(invalid(format!(
                "secret mount {target:?} type is {kind:?} but only 'json' and 'text' are permitted"
            )));
        }
        if !is_clean_abs(target) {
            return Err(invalid(format!(
                "secret mount {target:?} must be an absolute path without empty, \".\" or \"..\" components"
            )));
        }
        entries.push((target, value, true));
    }
    // Same order as the Go code, so the same record reports the same first error.
    entries.sort_by(|a, b| a.0.cmp(b.0));

    let mut plan = MountPlan {
        output_path: output_path.to_string(),
        mounts: Vec::new(),
        stdin: None,
        stdout: None,
        stderr: None,
    };
    for (target, value, secret) in entries {
        let mount = parse_one(target, value, secret, output_path)?;
        match target.as_str() {
            "stdin" => plan.stdin = Some(mount),
            "stdout" => plan.stdout = Some(mount),
            "stderr" => plan.stderr = Some(mount),
            _ => plan.mounts.push(mount),
        }
    }
    check_output_mount(&plan)?;
    plan.mounts.sort_by(|a, b| {
        let ka: Vec<&str> = a.target.split('/').collect();
        let kb: Vec<&str> = b.target.split('/').collect();
        ka.cmp(&kb)
    });
    Ok(plan)
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, MountError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match v {
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        Value::Object(m) => Ok(m),
        other => Err(invalid(format!(
            "{what} must be a JSON object, got {}",
            kind_of(other)
        ))),
    }
}

/// `/a/b`: absolute, at least one component, no empty, `.` or `..` component.
fn is_clean_abs(p: &str) -> bool {
    match p.strip_prefix('/') {
        Some(rest) => is_clean_rel(rest),
        None => false,
    }
}

/// `a/b`: at least one component, no empty, `.` or `..` component.
fn is_clean_rel(p: &str) -> bool {
    !p.is_empty() && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn parse_one(
    target: &str,
    value: &Value,
    secret: bool,
    output_path: &str,
) -> Result<Mount, MountError> {
    if !STDIO.contains(&target) && !is_clean_abs(target) {
        return Err(invalid(format!(
            "mount point {target:?} must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components"
        )));
    }
    let Value::Object(obj) = value else {
        return Err(invalid(format!(
            "mount {target:?} must be a JSON object, got {}",
            kind_of(value)
        )));
    };
    let fields = Fields { target, obj };
    let kind = fields
        .string("kind")?
        .ok_or_else(|| invalid(format!("mount {target:?} has no kind")))?;
    let (kind, exclude_from_output) = match target {
        "stdout" | "stderr" => (parse_stdio_file(&fields, &kind, output_path)?, false),
        _ => {
            check_kind_fits_target(target, &kind, output_path)?;
            let parsed = parse_kind(&fields, &kind, output_path)?;
            (parsed, fields.bool("exclude_from_output")?)
        }
    };
    Ok(Mount {
        target: target.to_string(),
        kind,
        exclude_from_output,
        secret,
    })
}

/// `stdout`/`stderr`: only a `file` under the output path.
fn parse_stdio_file(
    fields: &Fields<'_>,
    kind: &str,
    output_path: &str,
) -> Result<MountKind, MountError> {
    let target = fields.target;
    if kind != "file" {
        return Err(invalid(format!(
            "unsupported mount kind '{kind}' for {target}: only 'file' is supported"
        )));
    }
    let path = fields.string("path")?.unwrap_or_default();
    let prefix = if output_path.ends_with('/') {
        output_path.to_string()
    } else {
        format!("{output_path}/")
    };
    if !path.starts_with(&prefix) {
        return Err(invalid(format!(
            "{} path does not start with OutputPath: {path}, {prefix}",
            title(target)
        )));
    }
    if !is_clean_abs(&path) {
        return Err(invalid(format!(
            "{} path {path:?} must not contain empty, \".\" or \"..\" components",
            title(target)
        )));
    }
    Ok(MountKind::File { path })
}

/// `stdin` takes a collection (one file of it) or json; below the output path, only what
/// can become part of the output: a collection, text or json.
fn check_kind_fits_target(target: &str, kind: &str, output_path: &str) -> Result<(), MountError> {
    if target == "stdin" && kind != "collection" && kind != "json" {
        return Err(invalid(format!(
            "unsupported mount kind '{kind}' for stdin: only 'collection' and 'json' are supported"
        )));
    }
    let under_output = below(target, output_path).is_some();
    if under_output && !matches!(kind, "collection" | "text" | "json") {
        return Err(invalid(format!(
            "only mount points of kind 'collection', 'text' or 'json' are supported underneath the output_path for {target:?}, was {kind:?}"
        )));
    }
    Ok(())
}

/// A mount of a path (or stdin), by kind.
fn parse_kind(fields: &Fields<'_>, kind: &str, output_path: &str) -> Result<MountKind, MountError> {
    let target = fields.target;
    match kind {
        "tmp" => Ok(MountKind::Tmp {
            capacity: fields.u64("capacity")?.filter(|c| *c > 0),
        }),
        "collection" => {
            let kind = parse_collection(fields, output_path)?;
            if target == "stdin" && !matches!(kind, MountKind::Collection { path: Some(_), .. }) {
                return Err(invalid(
                    "stdin mount of kind 'collection' needs a portable_data_hash or uuid and the path of a file in it",
                ));
            }
            Ok(kind)
        }
        "json" => Ok(MountKind::Json(
            fields.obj.get("content").cloned().unwrap_or(Value::Null),
        )),
        "text" => match fields.obj.get("content") {
            Some(Value::String(s)) => Ok(MountKind::Text(s.clone())),
            _ => Err(invalid(format!(
                "content for mount {target:?} must be a string"
            ))),
        },
        "file" => Err(invalid(format!(
            "mount {target:?}: kind 'file' is only supported for stdout and stderr"
        ))),
        // Documented by Arvados (all of Keep under the mount point) but never implemented:
        // the Go crunch-run silently skips it, leaving an empty directory the container
        // did not expect. Without FUSE we cannot offer it either, so say so up front.
        "keep" => Err(invalid(format!(
            "mount {target:?}: kind 'keep' is not supported"
        ))),
        other => Err(invalid(format!(
            "mount {target:?}: unknown mount kind {other:?}"
        ))),
    }
}

/// Typed access to one mount's fields; JSON null counts as absent (Go's zero value).
struct Fields<'a> {
    target: &'a str,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, want: &str, got: &Value) -> MountError {
        invalid(format!(
            "mount {:?}: {name} must be {want}, got {}",
            self.target,
            kind_of(got)
        ))
    }

    /// A string field; `""` counts as absent.
    fn string(&self, name: &str) -> Result<Option<String>, MountError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(name, "a string", other)),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, MountError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.wrong(name, "a boolean", other)),
        }
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, MountError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n)),
                None => Err(self.wrong(name, "a non-negative integer", v)),
            },
        }
    }
}

fn parse_collection(fields: &Fields<'_>, output_path: &str) -> Result<MountKind, MountError> {
    let target = fields.target;
    let writable = fields.bool("writable")?;
    let uuid = fields.string("uuid")?;
    let mut pdh = fields.string("portable_data_hash")?;
    let mut path = fields.string("path")?;
    if uuid.is_some() && pdh.is_some() {
        return Err(invalid(
            "cannot specify both 'uuid' and 'portable_data_hash' for a collection mount",
        ));
    }
    if let Some(u) = &uuid {
        if writable {
            return Err(invalid(
                "writing to existing collections currently not permitted",
            ));
        }
        if !is_collection_uuid(u) {
            return Err(invalid(format!(
                "mount {target:?}: uuid {u:?} is not a collection UUID"
            )));
        }
    }
    if let Some(p) = pdh.take() {
        // "pdh/sub/dir" form: the part after the first "/" replaces `path`.
        let (hash, sub) = match p.split_once('/') {
            Some((h, s)) => (h.to_string(), Some(s.to_string())),
            None => (p.clone(), None),
        };
        if !is_pdh(&hash) {
            return Err(invalid(format!(
                "mount {target:?}: portable_data_hash {p:?} is not a portable data hash"
            )));
        }
        if writable && at_or_below(target, output_path).is_none() {
            return Err(invalid(
                "can never write to a collection specified by portable data hash",
            ));
        }
        if sub.is_some() {
            path = sub;
        }
        pdh = Some(hash);
    }
    let path = match path {
        Some(p) => clean_collection_path(target, &p)?,
        None => None,
    };
    if !writable && pdh.is_none() && uuid.is_none() {
        return Err(invalid(format!(
            "mount {target:?}: a read-only collection mount needs a portable_data_hash or uuid"
        )));
    }
    if path.is_some() && pdh.is_none() && uuid.is_none() {
        return Err(invalid(format!(
            "mount {target:?}: path given without a portable_data_hash or uuid"
        )));
    }
    Ok(MountKind::Collection {
        pdh,
        uuid,
        path,
        writable,
    })
}

/// A path inside a collection: a leading `/` or `./` and a trailing `/` are dropped; `.`
/// or empty is the whole collection (None).
fn clean_collection_path(target: &str, p: &str) -> Result<Option<String>, MountError> {
    let p = p
        .strip_prefix("./")
        .or_else(|| p.strip_prefix('/'))
        .unwrap_or(p);
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "." {
        return Ok(None);
    }
    if !is_clean_rel(p) {
        return Err(invalid(format!(
            "mount {target:?}: path {p:?} must not contain empty, \".\" or \"..\" components"
        )));
    }
    Ok(Some(p.to_string()))
}

fn check_output_mount(plan: &MountPlan) -> Result<(), MountError> {
    let writable = plan.mounts.iter().any(|m| {
        m.target == plan.output_path
            && matches!(
                m.kind,
                MountKind::Tmp { .. } | MountKind::Collection { writable: true, .. }
            )
    });
    if writable {
        Ok(())
    } else {
        Err(invalid(
            "output path does not correspond to a writable mount point",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PDH: &str = "59389a8f9ee9d399be35462a0f92541c+53";

    fn parse_err(mounts: Value, secret: Value, output_path: &str) -> String {
        parse_mounts(&mounts, &secret, output_path)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let tmp = json!({"kind": "tmp"});
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "mounts must be a JSON object, got an array"),
            (
                json!({"/tmp": tmp, "/x": "tmp"}),
                "mount \"/x\" must be a JSON object, got a string",
            ),
            (json!({"/tmp": tmp, "/x": {}}), "mount \"/x\" has no kind"),
            (
                json!({"/tmp": tmp, "/x": {"kind": 3}}),
                "mount \"/x\": kind must be a string, got a number",
            ),
            (
                json!({"/tmp": tmp, "/x": {"kind": "git_tree"}}),
                "mount \"/x\": unknown mount kind \"git_tree\"",
            ),
            (
                json!({"/tmp": tmp, "/keep": {"kind": "keep"}}),
                "mount \"/keep\": kind 'keep' is not supported",
            ),
            (
                json!({"/tmp": tmp, "/x": {"kind": "file", "path": "/tmp/x"}}),
                "mount \"/x\": kind 'file' is only supported for stdout and stderr",
            ),
            (
                json!({"/tmp": tmp, "tmp2": tmp}),
                "mount point \"tmp2\" must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/a/../etc": tmp}),
                "mount point \"/a/../etc\" must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/a/": tmp}),
                "mount point \"/a/\" must be \"stdin\", \"stdout\", \"stderr\" or an absolute path without empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/mnt/test.txt": {"kind": "text", "content": null}}),
                "content for mount \"/mnt/test.txt\" must be a string",
            ),
            (
                json!({"/tmp": tmp, "/mnt/test.txt": {"kind": "text", "content": {"foo": 123456789123456789u64}}}),
                "content for mount \"/mnt/test.txt\" must be a string",
            ),
            (
                json!({"/tmp": tmp, "/tmp/foo": tmp}),
                "only mount points of kind 'collection', 'text' or 'json' are supported underneath the output_path for \"/tmp/foo\", was \"tmp\"",
            ),
            (
                json!({"/tmp": tmp, "stdin": tmp}),
                "unsupported mount kind 'tmp' for stdin: only 'collection' and 'json' are supported",
            ),
            (
                json!({"/tmp": tmp, "stdin": {"kind": "collection", "portable_data_hash": PDH}}),
                "stdin mount of kind 'collection' needs a portable_data_hash or uuid and the path of a file in it",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "file", "path": "/tmpa.out"}}),
                "Stdout path does not start with OutputPath: /tmpa.out, /tmp/",
            ),
            (
                json!({"/tmp": tmp, "stderr": {"kind": "file", "path": "/etc/err"}}),
                "Stderr path does not start with OutputPath: /etc/err, /tmp/",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "file", "path": "/tmp/../etc/x"}}),
                "Stdout path \"/tmp/../etc/x\" must not contain empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "tmp", "path": "/tmp/a.out"}}),
                "unsupported mount kind 'tmp' for stdout: only 'file' is supported",
            ),
            (
                json!({"/tmp": tmp, "stdout": {"kind": "collection", "path": "/tmp/a.out"}}),
                "unsupported mount kind 'collection' for stdout: only 'file' is supported",
            ),
            (
                json!({"/in": {"kind": "tmp"}}),
                "output path does not correspond to a writable mount point",
            ),
            (
                json!({"/tmp": {"kind": "collection", "portable_data_hash": PDH}}),
                "output path does not correspond to a writable mount point",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde", "writable": true}}),
                "writing to existing collections currently not permitted",
            ),
            (
                json!({"/tmp": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde", "writable": true}}),
                "writing to existing collections currently not permitted",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "uuid": "zzzzz-4zz18-0123456789abcde", "portable_data_hash": PDH}}),
                "cannot specify both 'uuid' and 'portable_data_hash' for a collection mount",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": PDH, "writable": true}}),
                "can never write to a collection specified by portable data hash",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection"}}),
                "mount \"/c\": a read-only collection mount needs a portable_data_hash or uuid",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": "foo+3"}}),
                "mount \"/c\": portable_data_hash \"foo+3\" is not a portable data hash",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "uuid": "zzzzz-j7d0g-0123456789abcde"}}),
                "mount \"/c\": uuid \"zzzzz-j7d0g-0123456789abcde\" is not a collection UUID",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": PDH, "path": "a/../../b"}}),
                "mount \"/c\": path \"a/../../b\" must not contain empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": format!("{PDH}/a/../b")}}),
                "mount \"/c\": path \"a/../b\" must not contain empty, \".\" or \"..\" components",
            ),
            (
                json!({"/tmp": tmp, "/c": {"kind": "collection", "portable_data_hash": PDH, "writable": "yes"}}),
                "mount \"/c\": writable must be a boolean, got a string",
            ),
            (
                json!({"/tmp": {"kind": "tmp", "capacity": -1}}),
                "mount \"/tmp\": capacity must be a non-negative integer, got a number",
            ),
        ];
        for (mounts, want) in cases {
            assert_eq!(
                parse_err(mounts.clone(), Value::Null, "/tmp"),
                want,
                "{mounts}"
            );
        }
    }

    /// Issue 7: a 27-byte uuid with a multi-byte character across byte 5 panicked the
    /// validator (a `str` sliced off a char boundary) instead of being refused.
    #[test]
    fn a_uuid_with_a_multi_byte_character_is_refused_not_a_panic() {
        let uuid = "zzzz\u{e9}4zz18-0123456789abcde";
        assert_eq!(uuid.len(), 27);
        assert_eq!(
            parse_err(
                json!({"/tmp": {"kind": "tmp"}, "/c": {"kind": "collection", "uuid": uuid}}),
                Value::Null,
                "/tmp"
            ),
            format!("mount \"/c\": uuid {uuid:?} is not a collection UUID")
        );
    }

    #[test]
    fn secret_mount_errors() {
        let mounts = json!({"/tmp": {"kind": "tmp"}, "/etc/x": {"kind": "text", "content": "a"}});
        assert_eq!(
            parse_err(
                mounts.clone(),
                json!({"/etc/x": {"kind": "text", "content": "b"}}),
                "/tmp"
            ),
            "secret mount \"/etc/x\" conflicts with regular mount"
        );
        assert_eq!(
            parse_err(
                mounts.clone(),
                json!({"/etc/y": {"kind": "collection", "portable_data_hash": PDH}}),
                "/tmp"
            ),
            "secret mount \"/etc/y\" type is \"collection\" but only 'json' and 'text' are permitted"
        );
        assert_eq!(
            parse_err(
                mounts,
                json!({"stdin": {"kind": "json", "content": 1}}),
                "/tmp"
            ),
            "secret mount \"stdin\" must be an absolute path without empty, \".\" or \"..\" components"
        );
    }

    #[test]
    fn plan_orders_parents_first_and_splits_pdh_paths() {
        let plan = parse_mounts(
            &json!({
                "/tmp/b": {"kind": "collection", "portable_data_hash": format!("{PDH}/sub/baz"), "exclude_from_output": true},
                "/tmp": {"kind": "tmp", "capacity": 0},
                "/tmp-x": {"kind": "tmp"},
                "/tmp/a": {"kind": "json", "content": [1]},
                "stdout": {"kind": "file", "path": "/tmp/out.txt"},
                "stdin": {"kind": "json", "content": "in"},
            }),
            &Value::Null,
            "/tmp",
        )
        .unwrap();
        let targets: Vec<&str> = plan.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/tmp", "/tmp/a", "/tmp/b", "/tmp-x"]);
        assert_eq!(plan.mounts[0].kind, MountKind::Tmp { capacity: None });
        assert_eq!(
            plan.mounts[2].kind,
            MountKind::Collection {
                pdh: Some(PDH.into()),
                uuid: None,
                path: Some("sub/baz".into()),
                writable: false
            }
        );
        assert!(plan.mounts[2].exclude_from_output);
        assert_eq!(
            plan.stdout.unwrap().kind,
            MountKind::File {
                path: "/tmp/out.txt".into()
            }
        );
        assert_eq!(plan.stdin.unwrap().kind, MountKind::Json(json!("in")));
    }
}

#[cfg(test)]
mod props;
