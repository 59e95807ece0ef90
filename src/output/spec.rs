//! What output capture is given, made from what staging left behind: the host output
//! directory, the collections to capture by reference, the files pre-copied from Keep, and
//! what must stay out. Staging itself is `mounts`'s job; the capture is mod.rs's.

use super::{CopiedFile, OutputSpec, RefMount};
use crate::arvados::manifest::ManifestFile;
use crate::mounts::{OutputRef, StagedMounts};

impl OutputSpec {
    /// The spec for capturing the output of a container whose mounts were staged as
    /// `staged`. `output_path` and `globs` are the record's `output_path` and `output_glob`.
    pub fn from_staged(staged: &StagedMounts, output_path: &str, globs: &[String]) -> OutputSpec {
        let mut spec = OutputSpec {
            output_dir: staged.output_dir.clone(),
            ctr_output_path: output_path.to_string(),
            globs: globs.to_vec(),
            ..OutputSpec::default()
        };
        for r in &staged.output_refs {
            match r {
                OutputRef::Collection { rel, files, .. } => spec.by_reference.push(RefMount {
                    path: rel.clone(),
                    // Staging names the files from the output directory; capture wants
                    // them from the mount point.
                    files: files
                        .iter()
                        .map(|f| ManifestFile {
                            path: relative_to(&f.path, rel),
                            ..f.clone()
                        })
                        .collect(),
                }),
                OutputRef::Copied {
                    rel,
                    size,
                    mtime,
                    ranges,
                } => spec.unchanged_candidates.push(CopiedFile {
                    rel_path: rel.clone(),
                    size: *size,
                    mtime: *mtime,
                    ranges: ranges.clone(),
                }),
                OutputRef::Excluded { rel } => spec.excluded.push(rel.clone()),
                OutputRef::Secret { rel, host } => {
                    spec.secret_paths.push(host.clone());
                    if let Some(rel) = rel {
                        spec.secret_paths.push(staged.output_dir.join(rel));
                    }
                }
            }
        }
        spec
    }
}

/// `path` (relative to the output directory) as seen from `base` under it.
fn relative_to(path: &str, base: &str) -> String {
    if path == base || base.is_empty() && path.is_empty() {
        return String::new();
    }
    if base.is_empty() {
        return path.to_string();
    }
    path.strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(path)
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::arvados::manifest::BlockRange;

    fn file(path: &str, size: u64) -> ManifestFile {
        ManifestFile {
            path: path.to_string(),
            size,
            ranges: vec![BlockRange {
                locator: format!("acbd18db4cc2f85cedef654fccc4a4d8+{size}"),
                offset: 0,
                len: size,
            }],
        }
    }

    fn staged(output_refs: Vec<OutputRef>) -> StagedMounts {
        StagedMounts {
            binds: Vec::new(),
            output_dir: PathBuf::from("/run/tmp1"),
            stdin: None,
            stdout: None,
            stderr: None,
            output_refs,
            secrets: Vec::new(),
        }
    }

    #[test]
    fn the_output_directory_path_and_globs() {
        let globs = vec!["**/*.txt".to_string()];
        let spec = OutputSpec::from_staged(&staged(Vec::new()), "/out", &globs);
        assert_eq!(spec.output_dir, PathBuf::from("/run/tmp1"));
        assert_eq!(spec.ctr_output_path, "/out");
        assert_eq!(spec.globs, globs);
        assert!(spec.by_reference.is_empty() && spec.link_targets.is_empty());
    }

    #[test]
    fn collections_under_the_output_path_are_named_from_their_mount_point() {
        let refs = vec![
            OutputRef::Collection {
                rel: "in/coll".into(),
                files: vec![file("in/coll/a", 3), file("in/coll/d/b", 4)],
                dirs: vec!["in/coll/d".into()],
            },
            // A mount of one file: the file is the mount point.
            OutputRef::Collection {
                rel: "one.txt".into(),
                files: vec![file("one.txt", 5)],
                dirs: Vec::new(),
            },
        ];
        let spec = OutputSpec::from_staged(&staged(refs), "/out", &[]);
        let seen: Vec<(&str, Vec<&str>)> = spec
            .by_reference
            .iter()
            .map(|m| {
                let files = m.files.iter().map(|f| f.path.as_str()).collect();
                (m.path.as_str(), files)
            })
            .collect();
        assert_eq!(seen, [("in/coll", vec!["a", "d/b"]), ("one.txt", vec![""])]);
        assert_eq!(spec.by_reference[0].files[1].size, 4);
    }

    #[test]
    fn copies_exclusions_and_secrets() {
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let copied = file("w/x", 3);
        let refs = vec![
            OutputRef::Copied {
                rel: "w/x".into(),
                size: 3,
                mtime,
                ranges: copied.ranges.clone(),
            },
            OutputRef::Excluded { rel: "skip".into() },
            OutputRef::Secret {
                rel: Some("secret.conf".into()),
                host: PathBuf::from("/run/secret2/mountdata.text"),
            },
            OutputRef::Secret {
                rel: None,
                host: PathBuf::from("/run/secret3/mountdata.json"),
            },
        ];
        let spec = OutputSpec::from_staged(&staged(refs), "/out", &[]);
        assert_eq!(
            spec.unchanged_candidates,
            [CopiedFile {
                rel_path: "w/x".into(),
                size: 3,
                mtime,
                ranges: copied.ranges
            }]
        );
        assert_eq!(spec.excluded, ["skip"]);
        // A secret under the output path is left out by its mount point too.
        let secrets: Vec<PathBuf> = [
            "/run/secret2/mountdata.text",
            "/run/tmp1/secret.conf",
            "/run/secret3/mountdata.json",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(spec.secret_paths, secrets);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative_to("a/b", "a"), "b");
        assert_eq!(relative_to("a", "a"), "");
        assert_eq!(relative_to("a", ""), "a");
        assert_eq!(relative_to("", ""), "");
    }
}
