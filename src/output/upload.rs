//! Uploading host files to the block store, packed into shared blocks as arv-put and Go's
//! collection filesystem do: files are concatenated into the current block, and a file
//! larger than what is left of it continues in the next one. Ten thousand small files are
//! one PUT, not ten thousand.
//!
//! No block is held in memory: a block is a list of file regions, md5'd from the files as
//! they are added, then streamed to the store from the same regions when it is full (or
//! at the end). Memory is one read buffer and a few words per region.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Take};
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
    let mut packer = Packer::new(blocks, DEFAULT_BLOCK_SIZE);
    packer.add(path, path.as_os_str().as_bytes(), size)?;
    Ok(packer.finish()?.pop().unwrap_or_default())
}

/// One piece of a block: `len` bytes of the host file `path` from `offset`, which are
/// bytes `block_offset..` of the block and belong to file number `file` of the packer.
struct Region<'p> {
    path: &'p Path,
    offset: u64,
    len: u64,
    file: usize,
    block_offset: u64,
}

/// Packs host files into blocks of at most `block_size` bytes and stores them; see the
/// module header. Files are numbered in the order they are added.
pub(super) struct Packer<'a, 'p> {
    blocks: &'a dyn BlockStore,
    block_size: u64,
    buf: Vec<u8>,
    /// The block being filled: its regions, their total length and their md5 so far.
    regions: Vec<Region<'p>>,
    len: u64,
    md5: Md5,
    /// Each file's name in the output (for errors) and its block ranges so far.
    files: Vec<(&'p [u8], Vec<BlockRange>)>,
}

impl<'a, 'p> Packer<'a, 'p> {
    pub(super) fn new(blocks: &'a dyn BlockStore, block_size: u64) -> Self {
        Packer {
            blocks,
            block_size: block_size.max(1),
            buf: vec![0u8; READ_BUFFER],
            regions: Vec::new(),
            len: 0,
            md5: Md5::new(),
            files: Vec::new(),
        }
    }

    /// Add the first `size` bytes of the host file `path`, which goes into the output as
    /// `dest`; store each block it fills. Its number is the count of files added before.
    pub(super) fn add(
        &mut self,
        path: &'p Path,
        dest: &'p [u8],
        size: u64,
    ) -> Result<(), OutputError> {
        let file = self.files.len();
        self.files.push((dest, Vec::new()));
        let mut reader = File::open(path).map_err(|e| io_err("open", path, e))?;
        let mut offset = 0;
        while offset < size {
            let len = (self.block_size - self.len).min(size - offset);
            let whole = hash_region(&mut reader, len, &mut self.md5, &mut self.buf)
                .map_err(|e| io_err("read", path, e))?;
            if !whole {
                return Err(OutputError::Changed {
                    path: path_buf(dest),
                    detail: format!("file shrank below {size} bytes while it was being captured"),
                });
            }
            self.regions.push(Region {
                path,
                offset,
                len,
                file,
                block_offset: self.len,
            });
            self.len += len;
            offset += len;
            if self.len == self.block_size {
                self.store_block()?;
            }
        }
        Ok(())
    }

    /// Store what is left in the current block; each file's block ranges, by number.
    pub(super) fn finish(mut self) -> Result<Vec<Vec<BlockRange>>, OutputError> {
        self.store_block()?;
        Ok(self.files.into_iter().map(|(_, ranges)| ranges).collect())
    }

    /// Store the current block (if it holds anything) and give its regions their ranges.
    fn store_block(&mut self) -> Result<(), OutputError> {
        let Some(first) = self.regions.first() else {
            return Ok(());
        };
        let hash = hex(&std::mem::take(&mut self.md5).finalize());
        let regions = &self.regions;
        let open = || -> io::Result<Box<dyn Read + Send + '_>> {
            Ok(Box::new(RegionsReader {
                regions,
                next: 0,
                current: None,
            }))
        };
        let locator = self
            .blocks
            .put_block(&hash, self.len, &open)
            .map_err(|source| OutputError::Store {
                path: path_buf(self.files[first.file].0),
                others: self.files.len() - first.file - 1,
                source,
            })?;
        for r in self.regions.drain(..) {
            self.files[r.file].1.push(BlockRange {
                locator: locator.clone(),
                offset: r.block_offset,
                len: r.len,
            });
        }
        self.len = 0;
        Ok(())
    }
}

/// Feed the next `len` bytes of `file` to `md5`; false if the file ends first.
fn hash_region(file: &mut File, len: u64, md5: &mut Md5, buf: &mut [u8]) -> io::Result<bool> {
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(false);
        }
        md5.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(true)
}

/// The bytes of a block, read from its regions one file at a time (one open file at most).
struct RegionsReader<'r, 'p> {
    regions: &'r [Region<'p>],
    next: usize,
    current: Option<Take<File>>,
}

impl Read for RegionsReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(file) = &mut self.current {
                let n = file.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            let Some(region) = self.regions.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            let mut file = File::open(region.path)?;
            file.seek(SeekFrom::Start(region.offset))?;
            self.current = Some(file.take(region.len));
        }
    }
}
