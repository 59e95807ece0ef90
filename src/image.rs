//! The container image: find the one `<image id>.tar` in the image collection, and stream
//! its bytes from the block store (Keep) straight into `docker load`, never holding the
//! tar in memory or in a temporary file.

use std::io::{self, Write};

use crate::arvados::ids::is_image_id;
use crate::arvados::manifest::{Manifest, ManifestFile};
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

/// Write the bytes of `file` to `out`, block by block, each block md5-checked by the
/// store. `keep_going` is asked before each block (a cancel stops the stream).
pub fn stream_file(
    blocks: &dyn BlockStore,
    file: &ManifestFile,
    out: &mut dyn Write,
    keep_going: &dyn Fn() -> io::Result<()>,
) -> io::Result<()> {
    for range in &file.ranges {
        keep_going()?;
        let mut window = RangeWriter::new(out, range.offset, range.len);
        blocks
            .get_block(&range.locator, &mut window)
            .map_err(|e| match e {
                // The reader (docker load) gave up: let it tell why.
                StoreError::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe => {
                    source
                }
                other => io::Error::other(format!("reading image from Keep: {other}")),
            })?;
        window.finish()?;
    }
    Ok(())
}

/// Passes on only bytes `[offset, offset+len)` of what is written through it: one file's
/// part of a Keep block.
pub struct RangeWriter<'a> {
    out: &'a mut dyn Write,
    skip: u64,
    left: u64,
}

impl<'a> RangeWriter<'a> {
    pub fn new(out: &'a mut dyn Write, offset: u64, len: u64) -> Self {
        RangeWriter {
            out,
            skip: offset,
            left: len,
        }
    }

    /// Error if the block was shorter than the range promised.
    pub fn finish(self) -> io::Result<()> {
        if self.left > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "block ended {} bytes before the end of the file range",
                    self.left
                ),
            ));
        }
        Ok(())
    }
}

impl Write for RangeWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        let skip = (self.skip as usize).min(rest.len());
        rest = &rest[skip..];
        self.skip -= skip as u64;
        let take = (self.left as usize).min(rest.len());
        if take > 0 {
            self.out.write_all(&rest[..take])?;
            self.left -= take as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_writer_passes_only_the_range() {
        let mut out = Vec::new();
        let mut w = RangeWriter::new(&mut out, 3, 4);
        w.write_all(b"ab").unwrap();
        w.write_all(b"cdefghij").unwrap();
        w.finish().unwrap();
        assert_eq!(out, b"defg");
        let mut out = Vec::new();
        let mut w = RangeWriter::new(&mut out, 0, 5);
        w.write_all(b"abc").unwrap();
        assert!(w.finish().is_err());
    }

    #[test]
    fn a_file_spanning_blocks_streams_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::local::LocalStore::open(dir.path()).unwrap();
        let put = |data: &'static [u8]| {
            let hash = crate::arvados::manifest::md5_hex(data);
            let open = move || -> io::Result<Box<dyn io::Read + Send>> { Ok(Box::new(data)) };
            store.put_block(&hash, data.len() as u64, &open).unwrap()
        };
        let a = put(b"xxheadpart");
        let b = put(b"tail-yy");
        let manifest = format!(". {a} {b} 2:13:sha256:{}.tar\n", "ab".repeat(32));
        let file = &Manifest::parse(&manifest).unwrap().files()[0];
        let mut out = Vec::new();
        stream_file(&store, file, &mut out, &|| Ok(())).unwrap();
        assert_eq!(out, b"headparttail-");
        let stop = || Err(io::Error::other("cancelled"));
        assert!(stream_file(&store, file, &mut Vec::new(), &stop).is_err());
    }
}
