//! The Container record: the fields crunch-run acts on, read from the raw JSON with every
//! shape check in one place, so a malformed record becomes one clear error instead of a
//! surprise later in the run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::arvados::ids::is_pdh;

/// Container states of the Arvados API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Queued,
    Locked,
    Running,
    Complete,
    Cancelled,
}

impl State {
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "Queued" => State::Queued,
            "Locked" => State::Locked,
            "Running" => State::Running,
            "Complete" => State::Complete,
            "Cancelled" => State::Cancelled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "Queued",
            State::Locked => "Locked",
            State::Running => "Running",
            State::Complete => "Complete",
            State::Cancelled => "Cancelled",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `runtime_constraints` as far as this crunch-run honours them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConstraints {
    pub api: bool,
    pub ram: Option<u64>,
    pub vcpus: Option<f64>,
    /// GPUs asked for: `gpu.device_count`, or the legacy `cuda.device_count`.
    pub gpu_count: u32,
    /// arv-mount's block cache in RAM (`--ram-cache --file-cache`), bytes.
    pub keep_cache_ram: Option<u64>,
    /// arv-mount's block cache on disk (`--disk-cache --file-cache`), bytes; wins over RAM.
    pub keep_cache_disk: Option<u64>,
}

/// A validated container record.
#[derive(Debug, Clone)]
pub struct Container {
    pub uuid: String,
    pub state: State,
    pub command: Vec<String>,
    pub container_image: String,
    /// `None` when the record says "." (the image's own working directory).
    pub cwd: Option<String>,
    pub environment: BTreeMap<String, String>,
    pub output_path: String,
    pub runtime_constraints: RuntimeConstraints,
    /// `mounts` as the record has it; `mounts.rs` checks and stages them.
    pub mounts: Value,
    /// `output_glob`: which output files to keep (empty: all).
    pub output_glob: Vec<String>,
    /// `scheduling_parameters.max_run_time`, when set (0 means no limit).
    pub max_run_time: Option<Duration>,
}

/// Why a record cannot be run. The message is written to crunch-run.txt as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed container record: {0}")]
pub struct RecordError(pub String);

/// The `state` of a raw record, read on its own: it decides whether we may touch the
/// record at all, before anything else is checked.
pub fn raw_state(record: &Value) -> Result<State, RecordError> {
    let s = record
        .get("state")
        .and_then(Value::as_str)
        .ok_or_else(|| RecordError("state is missing or not a string".into()))?;
    State::parse(s).ok_or_else(|| RecordError(format!("unknown state {s:?}")))
}

impl Container {
    /// Check every field crunch-run acts on; the first one that is wrong is the error.
    pub fn from_json(record: &Value) -> Result<Container, RecordError> {
        let field = |name: &str| record.get(name).filter(|v| !v.is_null());
        let string = |name: &str| optional_string(name, field(name));

        let uuid = string("uuid")?.ok_or_else(|| RecordError("uuid is missing".into()))?;
        let state = raw_state(record)?;
        let command = command(field("command"))?;

        let container_image = string("container_image")?.unwrap_or_default();
        if !is_pdh(&container_image) {
            return Err(RecordError(format!(
                "container_image {container_image:?} is not a portable data hash"
            )));
        }

        Ok(Container {
            uuid,
            state,
            command,
            container_image,
            cwd: cwd(string("cwd")?)?,
            environment: environment(field("environment"))?,
            output_path: string("output_path")?.unwrap_or_default(),
            runtime_constraints: runtime_constraints(field("runtime_constraints"))?,
            mounts: mounts(field("mounts"))?,
            output_glob: output_glob(field("output_glob"))?,
            max_run_time: max_run_time(field("scheduling_parameters")),
        })
    }
}

/// "`subject` must be `expected`, got a number".
fn must_be(subject: &str, expected: &str, got: &Value) -> RecordError {
    RecordError(format!(
        "{subject} must be {expected}, got {}",
        kind_of(got)
    ))
}

/// A field that is a string when present.
fn optional_string(name: &str, value: Option<&Value>) -> Result<Option<String>, RecordError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(must_be(name, "a string", other)),
    }
}

/// `command`: a non-empty array of strings.
fn command(value: Option<&Value>) -> Result<Vec<String>, RecordError> {
    match value {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(must_be(&format!("command[{i}]"), "a string", other)),
            })
            .collect(),
        Some(Value::Array(_)) | None => Err(RecordError("command is empty".into())),
        Some(other) => Err(must_be("command", "an array of strings", other)),
    }
}

/// `cwd`: "." (or nothing) for the image's own working directory, else an absolute path.
fn cwd(value: Option<String>) -> Result<Option<String>, RecordError> {
    match value {
        None => Ok(None),
        Some(c) if c == "." || c.is_empty() => Ok(None),
        Some(c) if c.starts_with('/') => Ok(Some(c)),
        Some(c) => Err(RecordError(format!(
            "cwd {c:?} must be \".\" or an absolute path"
        ))),
    }
}

/// `environment`: an object of strings, with names and values docker can pass on.
fn environment(value: Option<&Value>) -> Result<BTreeMap<String, String>, RecordError> {
    let map = match value {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(must_be("environment", "an object", other)),
    };
    let mut environment = BTreeMap::new();
    for (k, v) in map {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(RecordError(format!(
                "environment variable name {k:?} is not valid"
            )));
        }
        match v {
            Value::String(s) if !s.contains('\0') => {
                environment.insert(k.clone(), s.clone());
            }
            Value::String(_) => {
                return Err(RecordError(format!(
                    "environment[{k:?}] contains a NUL byte"
                )));
            }
            other => return Err(must_be(&format!("environment[{k:?}]"), "a string", other)),
        }
    }
    Ok(environment)
}

/// `runtime_constraints`: the ones this crunch-run honours.
fn runtime_constraints(value: Option<&Value>) -> Result<RuntimeConstraints, RecordError> {
    let rc = match value {
        None => return Ok(RuntimeConstraints::default()),
        Some(Value::Object(rc)) => rc,
        Some(other) => return Err(must_be("runtime_constraints", "an object", other)),
    };
    Ok(RuntimeConstraints {
        api: rc.get("API").and_then(Value::as_bool).unwrap_or(false),
        ram: rc.get("ram").and_then(Value::as_u64).filter(|r| *r > 0),
        vcpus: rc.get("vcpus").and_then(Value::as_f64).filter(|v| *v > 0.0),
        gpu_count: ["gpu", "cuda"]
            .iter()
            .filter_map(|k| rc.get(*k)?.get("device_count")?.as_u64())
            .find(|n| *n > 0)
            .map_or(0, |n| n.min(u32::MAX as u64) as u32),
        keep_cache_ram: rc
            .get("keep_cache_ram")
            .and_then(Value::as_u64)
            .filter(|b| *b > 0),
        keep_cache_disk: rc
            .get("keep_cache_disk")
            .and_then(Value::as_u64)
            .filter(|b| *b > 0),
    })
}

/// `mounts`: an object, kept as it is for `mounts.rs`.
fn mounts(value: Option<&Value>) -> Result<Value, RecordError> {
    match value {
        None => Ok(Value::Object(Default::default())),
        Some(m @ Value::Object(_)) => Ok(m.clone()),
        Some(other) => Err(must_be("mounts", "an object", other)),
    }
}

/// `output_glob`: an array of strings (none: keep every output file).
fn output_glob(value: Option<&Value>) -> Result<Vec<String>, RecordError> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| must_be("output_glob entries", "strings", v))
            })
            .collect(),
        Some(other) => Err(must_be("output_glob", "an array of strings", other)),
    }
}

/// `scheduling_parameters.max_run_time` in seconds, when set and not 0.
fn max_run_time(scheduling_parameters: Option<&Value>) -> Option<Duration> {
    scheduling_parameters
        .and_then(|sp| sp.get("max_run_time"))
        .and_then(Value::as_u64)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

/// "a string", "an array", …: what a JSON value is, for error messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hello() -> Value {
        json!({
            "uuid": "zzzzz-dz642-0123456789abcde",
            "state": "Locked",
            "command": ["echo", "hello world"],
            "container_image": "d740a57097711e08eb9b2a93518f20ab+174",
            "cwd": ".",
            "environment": {"FROBIZ": "bilbo"},
            "mounts": {},
            "output_path": "/tmp",
            "priority": 1,
            "runtime_constraints": {"ram": 12000000000u64, "vcpus": 4, "API": false}
        })
    }

    #[test]
    fn reads_the_story_record() {
        let c = Container::from_json(&hello()).unwrap();
        assert_eq!(c.command, ["echo", "hello world"]);
        assert_eq!(c.cwd, None);
        assert_eq!(c.state, State::Locked);
        assert_eq!(
            c.environment.get("FROBIZ").map(String::as_str),
            Some("bilbo")
        );
        assert_eq!(c.runtime_constraints.ram, Some(12_000_000_000));
        assert_eq!(c.runtime_constraints.vcpus, Some(4.0));
    }

    #[test]
    fn set_cwd_is_kept() {
        let mut r = hello();
        r["cwd"] = json!("/bin");
        assert_eq!(
            Container::from_json(&r).unwrap().cwd.as_deref(),
            Some("/bin")
        );
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        let cases = [
            ("command", json!([]), "command is empty"),
            (
                "command",
                json!(["echo", 3]),
                "command[1] must be a string, got a number",
            ),
            (
                "command",
                json!("echo"),
                "command must be an array of strings, got a string",
            ),
            (
                "environment",
                json!({"A": 1}),
                "environment[\"A\"] must be a string, got a number",
            ),
            (
                "container_image",
                json!("debian:8"),
                "container_image \"debian:8\" is not a portable data hash",
            ),
            (
                "cwd",
                json!("tmp"),
                "cwd \"tmp\" must be \".\" or an absolute path",
            ),
        ];
        for (field, value, want) in cases {
            let mut r = hello();
            r[field] = value;
            let err = Container::from_json(&r).unwrap_err();
            assert_eq!(err.0, want, "{field}");
        }
    }

    #[test]
    fn gpus_globs_and_max_run_time() {
        let mut r = hello();
        r["runtime_constraints"]["cuda"] = json!({"device_count": 2, "driver_version": "11.0"});
        r["output_glob"] = json!(["*.txt", "**/keep/**"]);
        r["scheduling_parameters"] = json!({"max_run_time": 3600});
        let c = Container::from_json(&r).unwrap();
        assert_eq!(c.runtime_constraints.gpu_count, 2);
        assert_eq!(c.output_glob, ["*.txt", "**/keep/**"]);
        assert_eq!(c.max_run_time, Some(std::time::Duration::from_secs(3600)));
        r["runtime_constraints"]["gpu"] = json!({"stack": "cuda", "device_count": 1});
        assert_eq!(
            Container::from_json(&r)
                .unwrap()
                .runtime_constraints
                .gpu_count,
            1
        );
        r["output_glob"] = json!([1]);
        assert!(Container::from_json(&r).is_err());
    }

    #[test]
    fn state_is_read_before_anything_else() {
        let r = json!({"state": "Complete", "command": 7});
        assert_eq!(raw_state(&r).unwrap(), State::Complete);
    }
}

#[cfg(test)]
pub(crate) mod props;
