//! Uploading a host file to the block store in blocks: each region md5'd from the file,
//! then streamed to the store from the same region, so no block is held in memory.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use md5::{Digest, Md5};

use super::paths::path_buf;
use super::{OutputError, READ_BUFFER, io_err};
use crate::arvados::manifest::{BlockRange, hex};
use crate::logging::spool::DEFAULT_BLOCK_SIZE;
use crate::store::BlockStore;

/// Store the whole file at `path` in 64 MiB blocks (as output capture does): its block
/// ranges, in order.
pub fn store_file(blocks: &dyn BlockStore, path: &Path) -> Result<Vec<BlockRange>, OutputError> {
    let size = fs::metadata(path)
        .map_err(|e| io_err("stat", path, e))?
        .len();
    let mut buf = vec![0u8; READ_BUFFER];
    let dest = path.as_os_str().as_bytes();
    upload_file(blocks, path, dest, size, DEFAULT_BLOCK_SIZE, &mut buf)
}

/// Upload the first `size` bytes of the file at `path` in blocks of `block_size`: md5
/// each region from the file, then let the store stream it again from the same region.
pub(super) fn upload_file(
    blocks: &dyn BlockStore,
    path: &Path,
    dest: &[u8],
    size: u64,
    block_size: u64,
    buf: &mut [u8],
) -> Result<Vec<BlockRange>, OutputError> {
    let mut file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut ranges = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = block_size.min(size - offset);
        let hash = md5_region(&mut file, len, buf).map_err(|e| io_err("read", path, e))?;
        let Some(hash) = hash else {
            return Err(OutputError::Changed {
                path: path_buf(dest),
                detail: format!("file shrank below {size} bytes while it was being captured"),
            });
        };
        let open = || -> io::Result<Box<dyn Read + Send>> {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(offset))?;
            Ok(Box::new(f.take(len)))
        };
        let locator = blocks
            .put_block(&hash, len, &open)
            .map_err(|source| OutputError::Store {
                path: path_buf(dest),
                source,
            })?;
        ranges.push(BlockRange {
            locator,
            offset: 0,
            len,
        });
        offset += len;
    }
    Ok(ranges)
}

/// md5 of the next `len` bytes of `file`; `None` if the file ends first.
fn md5_region(file: &mut File, len: u64, buf: &mut [u8]) -> io::Result<Option<String>> {
    let mut md5 = Md5::new();
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(None);
        }
        md5.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(Some(hex(&md5.finalize())))
}
