//! Which part of a collection a path names: the whole of it, one file, or one directory with
//! everything under it, empty directories included.
//!
//! Mounts select what to stage (`"path"` of a collection mount), output capture what a
//! symlink into a mounted collection leads to. This module only looks at a parsed manifest;
//! fetching it and its blocks is [`super::fetch`]'s job.

use crate::arvados::manifest::{Manifest, ManifestFile, shown};

/// Part of a collection. Paths are relative to the selected directory, and are bytes, as
/// in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The path named one file: `files` holds just it, with path `""`, and `dirs` is empty.
    pub is_file: bool,
    pub files: Vec<ManifestFile>,
    /// Every directory under the selected one, empty ones included.
    pub dirs: Vec<Vec<u8>>,
    /// Data no file can hold: segments named `.` that carry bytes, as `(directory, bytes)`
    /// (see [`Manifest::data_named_dot`]). Left out of `files`; whoever copies the
    /// selection says so.
    pub data_named_dot: Vec<(Vec<u8>, u64)>,
}

impl Selection {
    /// The whole collection.
    pub fn whole(manifest: &Manifest) -> Selection {
        Selection {
            is_file: false,
            files: manifest.files(),
            dirs: manifest.dirs(),
            data_named_dot: manifest.data_named_dot(),
        }
    }

    /// The part `sub` (a clean relative path; `""` is all of it) names of this selection:
    /// one file, or one directory. None if it names nothing here.
    pub fn part(&self, sub: &[u8]) -> Option<Selection> {
        if sub.is_empty() {
            return Some(self.clone());
        }
        if let Some(file) = self.files.iter().find(|f| f.path == sub) {
            return Some(Selection {
                is_file: true,
                files: vec![ManifestFile {
                    path: Vec::new(),
                    ..file.clone()
                }],
                ..Selection::default()
            });
        }
        let files: Vec<ManifestFile> = self
            .files
            .iter()
            .filter_map(|f| {
                below(&f.path, sub).map(|path| ManifestFile {
                    path: path.to_vec(),
                    ..f.clone()
                })
            })
            .collect();
        let dirs: Vec<Vec<u8>> = self
            .dirs
            .iter()
            .filter_map(|d| below(d, sub).map(<[u8]>::to_vec))
            .collect();
        let is_dir = self.dirs.iter().any(|d| d == sub);
        if files.is_empty() && dirs.is_empty() && !is_dir {
            return None;
        }
        let data_named_dot = self
            .data_named_dot
            .iter()
            .filter_map(|(dir, bytes)| {
                let rel = if dir == sub {
                    Some(&[][..])
                } else {
                    below(dir, sub)
                };
                rel.map(|rel| (rel.to_vec(), *bytes))
            })
            .collect();
        Some(Selection {
            is_file: false,
            files,
            dirs,
            data_named_dot,
        })
    }

    /// Total size of the selected files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// One line per piece of [`Selection::data_named_dot`], saying it is left out. `whose`
    /// names what the selection is (`mount /in: collection …`).
    pub fn left_out(&self, whose: &str) -> Vec<String> {
        self.data_named_dot
            .iter()
            .map(|(dir, bytes)| left_out_line(whose, dir, *bytes))
            .collect()
    }
}

/// What to say of `bytes` bytes named `.` in the directory `dir` that are left out.
pub fn left_out_line(whose: &str, dir: &[u8], bytes: u64) -> String {
    format!(
        "{whose}: left out {bytes} bytes at {:?} (no file can be named \".\")",
        shown(&join_rel(dir, b"."))
    )
}

/// The part of a collection `sub` names (a clean relative path): everything (None), one
/// file, or one directory. None if `sub` names nothing in it.
pub fn select(manifest: &Manifest, sub: Option<&str>) -> Option<Selection> {
    let whole = Selection::whole(manifest);
    match sub {
        None => Some(whole),
        Some(sub) => whole.part(sub.as_bytes()),
    }
}

/// `path` relative to `dir` if strictly below it (both relative, clean).
fn below<'a>(path: &'a [u8], dir: &[u8]) -> Option<&'a [u8]> {
    path.strip_prefix(dir)
        .and_then(|rest| rest.strip_prefix(b"/"))
        .filter(|rest| !rest.is_empty())
}

/// `rel` inside `base`, both relative, `""` being the base itself.
pub fn join_rel(base: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if !base.is_empty() && !rel.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(rel);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NORMALIZED_WITH_SUBDIRS: &str = ". 3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0abcdefgh11234567890@569fa8c3 0:9:file1_in_main.txt 9:18:file2_in_main.txt 0:27:zzzzz-8i9sb-bcdefghijkdhvnk.log.txt\n./subdir1 3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396cabcdefghij6419876543234@569fa8c4 0:9:file1_in_subdir1.txt 9:18:file2_in_subdir1.txt\n./subdir1/subdir2 3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0bcdefghijk544332211@569fa8c5 0:9:file1_in_subdir2.txt 9:18:file2_in_subdir2.txt\n./subdir1/empty d41d8cd98f00b204e9800998ecf8427e+0 0:0:\\056\n";

    fn manifest() -> Manifest {
        Manifest::parse(NORMALIZED_WITH_SUBDIRS).unwrap()
    }

    fn texts(paths: &[Vec<u8>]) -> Vec<&str> {
        paths
            .iter()
            .map(|p| std::str::from_utf8(p).unwrap())
            .collect()
    }

    fn paths(sel: &Selection) -> Vec<&str> {
        sel.files
            .iter()
            .map(|f| std::str::from_utf8(&f.path).unwrap())
            .collect()
    }

    #[test]
    fn the_whole_collection() {
        let all = select(&manifest(), None).unwrap();
        assert!(!all.is_file);
        assert_eq!(all.files.len(), 7);
        assert_eq!(
            texts(&all.dirs),
            ["subdir1", "subdir1/empty", "subdir1/subdir2"]
        );
        assert_eq!(all.bytes(), 9 + 18 + 27 + 2 * (9 + 18));
        assert_eq!(all.part(b""), Some(all.clone()));
    }

    #[test]
    fn a_directory_with_what_is_under_it() {
        let dir = select(&manifest(), Some("subdir1")).unwrap();
        assert!(!dir.is_file);
        assert_eq!(
            paths(&dir),
            [
                "file1_in_subdir1.txt",
                "file2_in_subdir1.txt",
                "subdir2/file1_in_subdir2.txt",
                "subdir2/file2_in_subdir2.txt"
            ]
        );
        assert_eq!(texts(&dir.dirs), ["empty", "subdir2"]);
        // Its ranges are the file's: a part keeps where the bytes are.
        assert_eq!(dir.files[1].ranges[0].offset, 9);
        assert_eq!(dir.files[1].size, 18);
    }

    #[test]
    fn one_file() {
        let file = select(&manifest(), Some("subdir1/file2_in_subdir1.txt")).unwrap();
        assert!(file.is_file);
        assert_eq!(paths(&file), [""]);
        assert_eq!(file.files[0].size, 18);
        assert!(file.dirs.is_empty());
    }

    #[test]
    fn an_empty_directory_is_found_and_empty() {
        let empty = select(&manifest(), Some("subdir1/empty")).unwrap();
        assert!(!empty.is_file && empty.files.is_empty() && empty.dirs.is_empty());
    }

    #[test]
    fn what_is_not_there_selects_nothing() {
        let m = manifest();
        assert_eq!(select(&m, Some("nope")), None);
        // "subdir" is not a prefix directory of "subdir1", nor a file a directory.
        assert_eq!(select(&m, Some("subdir")), None);
        assert_eq!(select(&m, Some("file1_in_main.txt/x")), None);
    }

    #[test]
    fn a_part_of_a_part() {
        let dir = select(&manifest(), Some("subdir1")).unwrap();
        let deeper = dir.part(b"subdir2").unwrap();
        assert_eq!(
            paths(&deeper),
            ["file1_in_subdir2.txt", "file2_in_subdir2.txt"]
        );
        assert!(dir.part(b"subdir2/file1_in_subdir2.txt").unwrap().is_file);
        assert_eq!(dir.part(b"subdir1"), None);
    }

    #[test]
    fn manifest_dirs_are_streams_markers_file_dirs_and_their_parents() {
        let e = "d41d8cd98f00b204e9800998ecf8427e+0";
        let text = format!(
            ". {e} 0:0:a/b/\\056 0:0:f 0:0:x/./y/z\n./s\\040t {e} 0:0:\\056\n./p/q {e} 0:0:r\n"
        );
        let dirs = Manifest::parse(&text).unwrap().dirs();
        assert_eq!(texts(&dirs), ["a", "a/b", "p", "p/q", "s t", "x", "x/y"]);
        assert!(Manifest::parse("").unwrap().dirs().is_empty());
    }

    #[test]
    fn joined_relative_paths() {
        assert_eq!(join_rel(b"", b"a"), b"a");
        assert_eq!(join_rel(b"a", b""), b"a");
        assert_eq!(join_rel(b"a/b", b"c"), b"a/b/c");
        assert_eq!(join_rel(b"", b""), b"");
    }

    #[test]
    fn data_named_dot_goes_with_the_part_that_holds_it() {
        let e = "d41d8cd98f00b204e9800998ecf8427e+0";
        let foo = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        let m = Manifest::parse(&format!(
            ". {foo} 0:3:\\056 0:3:f\n./a {foo} 0:2:\\056\n./a/b {foo} 0:1:\\056 0:0:g\n./c {e} 0:0:\\056\n"
        ))
        .unwrap();
        let all = select(&m, None).unwrap();
        assert_eq!(
            all.data_named_dot,
            [(b"".to_vec(), 3), (b"a".to_vec(), 2), (b"a/b".to_vec(), 1)]
        );
        let a = all.part(b"a").unwrap();
        assert_eq!(a.data_named_dot, [(b"".to_vec(), 2), (b"b".to_vec(), 1)]);
        assert!(all.part(b"c").unwrap().data_named_dot.is_empty());
        assert_eq!(
            a.left_out("mount /in"),
            [
                "mount /in: left out 2 bytes at \".\" (no file can be named \".\")",
                "mount /in: left out 1 bytes at \"b/.\" (no file can be named \".\")"
            ]
        );
    }
}
