//! Paths as output capture sees them: relative to the output directory (`"a/b"`, `""` the
//! directory itself) or absolute in the container (`"/a/b"`, `""` the root), cleaned
//! lexically, never resolved on the host.

/// Whether `path` is `dir` or inside it (both cleaned, same kind: relative or absolute).
pub(super) fn under(path: &str, dir: &str) -> bool {
    strip_dir(path, dir).is_some()
}

/// `path` relative to `dir` (`""` if equal), or `None` if it is not inside. `dir` may be
/// `""` (the root, for cleaned absolute paths written `"/a/b"`, or the output root for
/// relative paths).
pub(super) fn strip_dir<'p>(path: &'p str, dir: &str) -> Option<&'p str> {
    if dir.is_empty() {
        return Some(path.trim_start_matches('/'));
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Lexically clean a container path: `"/a/./b/../c/"` → `"/a/c"`; the root is `""`.
pub(super) fn clean_abs(path: &str) -> String {
    let mut comps: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    comps.iter().map(|c| format!("/{c}")).collect()
}

/// A relative path without leading, trailing or doubled slashes, nor `.` components.
pub(super) fn clean_rel(path: &str) -> String {
    clean_abs(path).trim_start_matches('/').to_string()
}

/// The container path of `rel` under the cleaned container directory `root`.
pub(super) fn ctr_join(root: &str, rel: &str) -> String {
    clean_abs(&format!("{root}/{rel}"))
}
