//! The container image: find the one `<image id>.tar` in the image collection, and stream
//! its bytes from the block store (Keep) straight into `docker load`, never holding the
//! tar in memory or in a temporary file. Reading the collection is `collection`'s job;
//! loading it is the engine's.

use std::io::{self, Write};

use crate::arvados::ids::is_image_id;
use crate::arvados::manifest::{ManifestError, ManifestFile};
use crate::collection::{CollectionError, read_manifest, stream_file};
use crate::store::{ApiStore, BlockStore, StoreError};

/// The image tar of an image collection.
#[derive(Debug, Clone)]
pub struct ImageTar {
    /// The image id the tar is named after: `sha256:<hex>` or bare hex.
    pub id: String,
    pub file: ManifestFile,
}

/// Why the image collection holds no usable image tar. Worded for crunch-run.txt.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image collection {pdh} was not found")]
    NotFound { pdh: String },
    #[error("cannot fetch image collection {pdh}: {source}")]
    Fetch {
        pdh: String,
        #[source]
        source: StoreError,
    },
    #[error("image collection {pdh} has a bad manifest: {source}")]
    BadManifest {
        pdh: String,
        #[source]
        source: ManifestError,
    },
    /// Any other failure to read the collection.
    #[error("cannot read image collection {pdh}: {source}")]
    Read {
        pdh: String,
        #[source]
        source: CollectionError,
    },
    #[error("image collection {pdh} does not include a .tar image file")]
    NoTar { pdh: String },
    #[error("cannot choose from multiple tar files in image collection {pdh}: {}", names.join(", "))]
    SeveralTars { pdh: String, names: Vec<String> },
    #[error("image file {name:?} in collection {pdh} is not named <image id>.tar")]
    NotAnImageId { pdh: String, name: String },
}

/// Find the single `<image id>.tar` at the top of collection `pdh`.
pub fn find_image_tar(api: &dyn ApiStore, pdh: &str) -> Result<ImageTar, ImageError> {
    let manifest = read_manifest(api, pdh).map_err(|e| match e {
        CollectionError::Fetch {
            source: StoreError::NotFound { .. },
            ..
        } => ImageError::NotFound {
            pdh: pdh.to_string(),
        },
        CollectionError::Fetch { source, .. } => ImageError::Fetch {
            pdh: pdh.to_string(),
            source,
        },
        CollectionError::Manifest { source, .. } => ImageError::BadManifest {
            pdh: pdh.to_string(),
            source,
        },
        other => ImageError::Read {
            pdh: pdh.to_string(),
            source: other,
        },
    })?;
    let mut tars: Vec<ManifestFile> = manifest
        .files()
        .into_iter()
        .filter(|f| !f.path.contains(&b'/') && f.path.ends_with(b".tar"))
        .collect();
    let file = match tars.len() {
        1 => tars.remove(0),
        0 => {
            return Err(ImageError::NoTar {
                pdh: pdh.to_string(),
            });
        }
        _ => {
            return Err(ImageError::SeveralTars {
                pdh: pdh.to_string(),
                names: tars.iter().map(|f| lossy(&f.path)).collect(),
            });
        }
    };
    let name = lossy(&file.path);
    let id = name.trim_end_matches(".tar").to_string();
    if !is_image_id(&id) {
        return Err(ImageError::NotAnImageId {
            pdh: pdh.to_string(),
            name,
        });
    }
    Ok(ImageTar { id, file })
}

/// A file name as text (names are bytes; an image id never has a byte that is not UTF-8).
fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Stream the image tar into `out` (`docker load`'s stdin), block by block. `keep_going`
/// is asked before each block (a cancel stops the stream, with its error). A reader that
/// gave up (a broken pipe) is passed on as is: docker load says why.
pub fn stream_image(
    blocks: &dyn BlockStore,
    tar: &ImageTar,
    out: &mut dyn Write,
    keep_going: &dyn Fn() -> io::Result<()>,
) -> io::Result<()> {
    stream_file(blocks, &tar.file, out, keep_going).map_err(|e| match e {
        CollectionError::Stopped(stop) => stop,
        CollectionError::Block {
            source: StoreError::Io { source, .. },
            ..
        } if source.kind() == io::ErrorKind::BrokenPipe => source,
        other => io::Error::other(format!("reading image from Keep: {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arvados::manifest::portable_data_hash;
    use crate::store::memory::MemoryStore;

    const HEX: &str = "d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678";

    /// A collection of `names`, each holding `data`; returns its PDH.
    fn collection(store: &MemoryStore, names: &[&str], data: &[u8]) -> String {
        let loc = store.put(data);
        let files: String = names
            .iter()
            .map(|n| format!(" 0:{}:{n}", data.len()))
            .collect();
        let manifest = format!(". {loc}{files}\n");
        let pdh = portable_data_hash(&manifest);
        store.add_collection(&pdh, &manifest);
        pdh
    }

    fn error(store: &MemoryStore, pdh: &str) -> String {
        find_image_tar(store, pdh).unwrap_err().to_string()
    }

    #[test]
    fn the_one_tar_named_after_its_image() {
        let store = MemoryStore::new();
        let name = format!("sha256:{HEX}.tar");
        let pdh = collection(&store, &[&name, "md5sum.txt"], b"tar");
        let tar = find_image_tar(&store, &pdh).unwrap();
        assert_eq!(tar.id, format!("sha256:{HEX}"));
        assert_eq!(tar.file.size, 3);
    }

    #[test]
    fn collections_without_one_image_tar_are_refused() {
        let store = MemoryStore::new();
        let missing = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        assert_eq!(
            error(&store, missing),
            format!("image collection {missing} was not found")
        );
        let pdh = collection(&store, &["md5sum.txt"], b"x");
        assert_eq!(
            error(&store, &pdh),
            format!("image collection {pdh} does not include a .tar image file")
        );
        let pdh = collection(&store, &["a.tar", "b.tar"], b"x");
        assert_eq!(
            error(&store, &pdh),
            format!(
                "cannot choose from multiple tar files in image collection {pdh}: a.tar, b.tar"
            )
        );
        let pdh = collection(&store, &["busybox.tar"], b"x");
        assert_eq!(
            error(&store, &pdh),
            format!("image file \"busybox.tar\" in collection {pdh} is not named <image id>.tar")
        );
        store.add_collection("bad", ". nope 0:1:x\n");
        assert!(
            error(&store, "bad").starts_with("image collection bad has a bad manifest: "),
            "{}",
            error(&store, "bad")
        );
    }

    /// A writer whose reader went away, as docker load's stdin when it gives up.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn streaming_passes_on_a_broken_pipe_and_a_cancel_and_names_keep_otherwise() {
        let store = MemoryStore::new();
        let pdh = collection(&store, &[&format!("{HEX}.tar")], b"tar bytes");
        let tar = find_image_tar(&store, &pdh).unwrap();
        let go = || Ok(());
        let mut out = Vec::new();
        stream_image(&store, &tar, &mut out, &go).unwrap();
        assert_eq!(out, b"tar bytes");

        let err = stream_image(&store, &tar, &mut Closed, &go).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let stop = || Err(io::Error::other("cancelled: signal"));
        let err = stream_image(&store, &tar, &mut Vec::new(), &stop).unwrap_err();
        assert_eq!(err.to_string(), "cancelled: signal");
        store.blocks.lock().unwrap().clear();
        let err = stream_image(&store, &tar, &mut Vec::new(), &go).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading image from Keep: fetching block "),
            "{err}"
        );
    }
}
