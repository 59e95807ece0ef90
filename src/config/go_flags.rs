//! Go-style single-dash long flags (`-runtime-engine=docker`), as dispatchers pass them,
//! rewritten to the double-dash form clap reads.

use std::ffi::OsString;

/// Rewrite Go-style `-long-flag[=v]` into `--long-flag[=v]`. Single letters (`-h`, `-V`)
/// and anything after `--` are left alone.
pub fn normalize_go_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest_positional = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            Some("--") => {
                rest_positional = true;
                None
            }
            Some(s) if !rest_positional && is_go_long_flag(s) => {
                Some(OsString::from(format!("-{s}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

fn is_go_long_flag(s: &str) -> bool {
    let name = s.strip_prefix('-').unwrap_or("");
    !s.starts_with("--")
        && name.len() >= 2
        && name
            .split('=')
            .next()
            .is_some_and(|n| n.len() >= 2 && n.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
}
