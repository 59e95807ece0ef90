//! Paths as output capture sees them: relative to the output directory (`a/b`, `""` the
//! directory itself) or absolute in the container (`/a/b`, `""` the root), cleaned
//! lexically, never resolved on the host. They are bytes, as file names on Unix are: a
//! name that is not UTF-8 is as good as any other.

use std::path::PathBuf;

use crate::arvados::manifest::shown;

/// Whether `path` is `dir` or inside it (both cleaned, same kind: relative or absolute).
pub(super) fn under(path: &[u8], dir: &[u8]) -> bool {
    strip_dir(path, dir).is_some()
}

/// `path` relative to `dir` (`""` if equal), or `None` if it is not inside. `dir` may be
/// `""` (the root, for cleaned absolute paths written `/a/b`, or the output root for
/// relative paths).
pub(super) fn strip_dir<'p>(path: &'p [u8], dir: &[u8]) -> Option<&'p [u8]> {
    if dir.is_empty() {
        return Some(trim_slashes_start(path));
    }
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix(b"/")
    }
}

fn trim_slashes_start(path: &[u8]) -> &[u8] {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    &path[start..]
}

/// The `/`-separated components of a path, empty ones included.
pub(super) fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
}

/// Lexically clean a container path: `/a/./b/../c/` → `/a/c`; the root is `""`.
pub(super) fn clean_abs(path: &[u8]) -> Vec<u8> {
    let mut comps: Vec<&[u8]> = Vec::new();
    for c in components(path) {
        match c {
            b"" | b"." => {}
            b".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for c in comps {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

/// A relative path without leading, trailing or doubled slashes, nor `.` components.
pub(super) fn clean_rel(path: &[u8]) -> Vec<u8> {
    let mut abs = clean_abs(path);
    if !abs.is_empty() {
        abs.remove(0);
    }
    abs
}

/// The container path of `rel` under the cleaned container directory `root`.
pub(super) fn ctr_join(root: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut path = root.to_vec();
    path.push(b'/');
    path.extend_from_slice(rel);
    clean_abs(&path)
}

/// A path as errors carry it (shown as text, bytes that are not UTF-8 as `\xNN`).
pub(super) fn path_buf(path: &[u8]) -> PathBuf {
    PathBuf::from(shown(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_and_joining_work_on_bytes() {
        assert_eq!(clean_abs(b"/a/./b/../c/"), b"/a/c");
        assert_eq!(clean_abs(b"/../.."), b"");
        assert_eq!(clean_rel(b"a//\xff/./"), b"a/\xff");
        assert_eq!(ctr_join(b"/tmp", b"x/../\xfe"), b"/tmp/\xfe");
        assert_eq!(strip_dir(b"/tmp/x", b"/tmp"), Some(b"x".as_slice()));
        assert_eq!(strip_dir(b"/tmpx", b"/tmp"), None);
        assert_eq!(strip_dir(b"/a", b""), Some(b"a".as_slice()));
        assert!(under(b"a/b", b"a") && !under(b"ab", b"a"));
    }
}
