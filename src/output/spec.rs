//! What output capture is given, made from what staging left behind: the host output
//! directory, the collections to capture by reference, the files pre-copied from Keep, and
//! what must stay out. Staging itself is `mounts`'s job; the capture is mod.rs's.

use super::{CopiedFile, OutputSpec, RefMount};
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
                OutputRef::Collection {
                    target,
                    rel,
                    selection,
                } => {
                    // Under the output path, by its path there; elsewhere, by its mount point,
                    // for the symlinks that lead into it.
                    let (mounts, path) = match rel {
                        Some(rel) => (&mut spec.by_reference, rel),
                        None => (&mut spec.link_targets, target),
                    };
                    mounts.push(RefMount {
                        path: path.clone(),
                        selection: selection.clone(),
                    });
                }
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

#[cfg(test)]
pub(super) mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::arvados::manifest::{BlockRange, ManifestFile};
    use crate::collection::Selection;

    fn file(path: &str, size: u64) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size,
            ranges: vec![BlockRange {
                locator: format!("acbd18db4cc2f85cedef654fccc4a4d8+{size}"),
                offset: 0,
                len: size,
            }],
        }
    }

    fn text(path: &[u8]) -> String {
        String::from_utf8(path.to_vec()).unwrap()
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
            warnings: Vec::new(),
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

    fn mounted(target: &str, rel: Option<&str>, files: Vec<ManifestFile>) -> OutputRef {
        OutputRef::Collection {
            target: target.into(),
            rel: rel.map(str::to_string),
            selection: Selection {
                is_file: files.len() == 1 && files[0].path.is_empty(),
                files,
                ..Selection::default()
            },
        }
    }

    #[test]
    fn collections_by_their_path_under_the_output_and_by_mount_point_elsewhere() {
        let refs = vec![
            mounted(
                "/out/in/coll",
                Some("in/coll"),
                vec![file("a", 3), file("d/b", 4)],
            ),
            // A mount of one file: the file is the mount point.
            mounted("/out/one.txt", Some("one.txt"), vec![file("", 5)]),
            mounted("/keep/in", None, vec![file("c", 6)]),
        ];
        let spec = OutputSpec::from_staged(&staged(refs), "/out", &[]);
        let seen = |mounts: &[RefMount]| -> Vec<(String, Vec<String>)> {
            mounts
                .iter()
                .map(|m| {
                    let files = m.selection.files.iter().map(|f| text(&f.path)).collect();
                    (m.path.clone(), files)
                })
                .collect()
        };
        let owned = |v: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            v.iter()
                .map(|(p, fs)| (p.to_string(), fs.iter().map(|f| f.to_string()).collect()))
                .collect()
        };
        assert_eq!(
            seen(&spec.by_reference),
            owned(&[("in/coll", &["a", "d/b"]), ("one.txt", &[""])])
        );
        assert_eq!(seen(&spec.link_targets), owned(&[("/keep/in", &["c"])]));
        assert_eq!(spec.by_reference[0].selection.files[1].size, 4);
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

    /// A run directory of staged mounts, removed with its read-only trees at the end.
    pub(in crate::output) struct Staged {
        pub dir: tempfile::TempDir,
        pub mounts: StagedMounts,
    }

    impl Drop for Staged {
        fn drop(&mut self) {
            let _ = crate::mounts::remove_staged(&self.dir.path().join("run"));
        }
    }

    pub(in crate::output) const PDH: &str = "59389a8f9ee9d399be35462a0f92541c+53";

    /// `mounts` (output path `/out`) staged from `store`, where collection [`PDH`] holds
    /// `foo`, `sub/bar` and the empty directory `sub/empty`.
    fn stage_with(store: &crate::store::memory::MemoryStore, mounts: serde_json::Value) -> Staged {
        let loc = store.put(b"foo");
        let e = crate::arvados::manifest::EMPTY_BLOCK_LOCATOR;
        store.add_collection(
            PDH,
            &format!(". {loc} 0:3:foo\n./sub {loc} 0:3:bar\n./sub/empty {e} 0:0:\\056\n"),
        );
        let plan = crate::mounts::parse_mounts(&mounts, &serde_json::Value::Null, "/out").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mounts = crate::mounts::stage(&plan, store, store, &dir.path().join("run"), &|_| {});
        Staged {
            dir,
            mounts: mounts.unwrap(),
        }
    }

    /// A tmp output directory at `/out` and, for each `(target, path)`, a read-only mount of
    /// `path` of collection [`PDH`] (`""`: all of it), staged from `store`.
    pub(in crate::output) fn stage_parts(
        store: &crate::store::memory::MemoryStore,
        parts: &[(&str, &str)],
    ) -> Staged {
        let mut mounts = serde_json::json!({"/out": {"kind": "tmp"}});
        for (target, path) in parts {
            mounts[*target] = serde_json::json!(
                {"kind": "collection", "portable_data_hash": PDH, "path": path}
            );
        }
        stage_with(store, mounts)
    }

    /// Issue 7: staging kept nothing of a read-only collection mounted outside the output
    /// path, so `link_targets` stayed empty and a symlink from the output into it failed
    /// the capture, though such links are meant to be kept by reference.
    #[test]
    fn a_read_only_collection_mounted_elsewhere_is_a_link_target() {
        let store = crate::store::memory::MemoryStore::new();
        let staged = stage_parts(&store, &[("/in", ""), ("/in-sub", "sub")]);
        let spec = OutputSpec::from_staged(&staged.mounts, "/out", &[]);
        let targets: Vec<(&str, Vec<String>)> = spec
            .link_targets
            .iter()
            .map(|m| {
                let files = m.selection.files.iter().map(|f| text(&f.path)).collect();
                (m.path.as_str(), files)
            })
            .collect();
        assert_eq!(
            targets,
            [
                ("/in", vec!["foo".to_string(), "sub/bar".into()]),
                ("/in-sub", vec!["bar".into()])
            ]
        );
        assert!(spec.by_reference.is_empty());
    }
}
