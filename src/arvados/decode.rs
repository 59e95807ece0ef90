//! Decoding the JSON of an API server's answer, and what can still be read of one that
//! does not decode.
//!
//! serde_json refuses a document nested deeper than its recursion limit (127 levels of
//! arrays and objects), and any answer that is not JSON. Such an answer becomes
//! `StoreError::Undecodable` with a plain reason and, when it can still be read, the
//! top-level `"state"` string: reading that one field skips every other value without
//! recursing, so no depth stops it. With it, the run can move a container record it cannot
//! read to Cancelled, giving the reason, instead of leaving it Locked. What to do with it
//! is the lifecycle's call.

use serde::Deserialize;
use serde_json::Value;

use crate::arvados::client::error_message;
use crate::store::StoreError;

/// The answer `bytes` of the call `what` as JSON, or Undecodable saying why.
pub(crate) fn answer(bytes: &[u8], what: &str) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Undecodable {
        what: what.to_string(),
        message: reason(&e, bytes),
        state: top_level_state(bytes).map(String::into_boxed_str),
    })
}

fn reason(err: &serde_json::Error, bytes: &[u8]) -> String {
    // serde_json has no public error code for it; its message is stable.
    if err.to_string().starts_with("recursion limit exceeded") {
        format!(
            "the answer is nested more than 127 levels deep, deeper than crunch-run can read \
             (line {}, column {})",
            err.line(),
            err.column()
        )
    } else {
        format!("the answer is not JSON ({err}): {}", error_message(bytes))
    }
}

/// Only the top-level `state`; serde skips the other fields with `IgnoredAny`, which
/// serde_json walks without recursion or depth limit.
#[derive(Deserialize)]
struct StateOnly {
    state: Option<String>,
}

/// The top-level `"state"` string of a JSON object, however deep its other fields go;
/// `None` if the text is not such an object or has no (or more than one) string `state`.
fn top_level_state(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<StateOnly>(bytes).ok()?.state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"state":"Locked","mounts":{"/deep":{"content":[[…]]}}}`: `levels` levels in all.
    fn nested_record(levels: usize) -> String {
        let arrays = levels - 3;
        format!(
            r#"{{"uuid":"zzzzz-dz642-0123456789abcde","mounts":{{"/deep":{{"content":{}{}}}}},"state":"Locked"}}"#,
            "[".repeat(arrays),
            "]".repeat(arrays)
        )
    }

    #[test]
    fn a_record_nested_too_deep_still_tells_its_state() {
        assert!(answer(nested_record(127).as_bytes(), "GET x").is_ok());
        for levels in [128, 129, 100_000] {
            let err = answer(nested_record(levels).as_bytes(), "GET x").unwrap_err();
            let StoreError::Undecodable {
                what,
                message,
                state,
            } = err
            else {
                panic!("{err:?}");
            };
            assert_eq!(what, "GET x");
            assert_eq!(state.as_deref(), Some("Locked"));
            assert!(
                message.starts_with(
                    "the answer is nested more than 127 levels deep, deeper than crunch-run can read (line 1, column "
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn no_state_unless_it_is_one_top_level_string() {
        for text in [
            "<html>",
            r#"[{"state":"Locked"}]"#,
            r#"{"state":["Locked"],"x":[[]]}"#,
            r#"{"state":"Locked","state":"Running"}"#,
            r#"{"nested":{"state":"Locked"}}"#,
            r#"{"state":"Locked""#,
        ] {
            assert_eq!(top_level_state(text.as_bytes()), None, "{text}");
        }
        let err = answer(b"<html>", "GET x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "GET x: the answer is not JSON (expected value at line 1 column 1): <html>"
        );
    }
}
