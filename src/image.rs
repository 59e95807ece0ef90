//! The container image: find the one `<image id>.tar` in the image collection, and stream
//! its bytes from the block store (Keep) straight into `docker load`, never holding the
//! tar in memory or in a temporary file.

use std::io::{self, Write};

use crate::arvados::ids::is_image_id;
use crate::arvados::manifest::{Manifest, ManifestFile};
use crate::collection::{CollectionError, stream_file};
use crate::store::{ApiStore, BlockStore, StoreError};

/// The image tar of an image collection.
#[derive(Debug, Clone)]
pub struct ImageTar {
    /// The image id the tar is named after: `sha256:<hex>` or bare hex.
    pub id: String,
    pub file: ManifestFile,
}

/// Find the single `<image id>.tar` at the top of collection `pdh`. The error is worded
/// for crunch-run.txt.
pub fn find_image_tar(api: &dyn ApiStore, pdh: &str) -> Result<ImageTar, String> {
    let manifest_text = api.get_collection_manifest(pdh).map_err(|e| match e {
        StoreError::NotFound { .. } => format!("image collection {pdh} was not found"),
        other => format!("cannot fetch image collection {pdh}: {other}"),
    })?;
    let manifest = Manifest::parse(&manifest_text)
        .map_err(|e| format!("image collection {pdh} has a bad manifest: {e}"))?;
    let mut tars: Vec<ManifestFile> = manifest
        .files()
        .into_iter()
        .filter(|f| !f.path.contains('/') && f.path.ends_with(".tar"))
        .collect();
    let file = match tars.len() {
        1 => tars.remove(0),
        0 => {
            return Err(format!(
                "image collection {pdh} does not include a .tar image file"
            ));
        }
        _ => {
            let names: Vec<&str> = tars.iter().map(|f| f.path.as_str()).collect();
            return Err(format!(
                "cannot choose from multiple tar files in image collection {pdh}: {}",
                names.join(", ")
            ));
        }
    };
    let id = file.path.trim_end_matches(".tar").to_string();
    if !is_image_id(&id) {
        return Err(format!(
            "image file {:?} in collection {pdh} is not named <image id>.tar",
            file.path
        ));
    }
    Ok(ImageTar { id, file })
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
