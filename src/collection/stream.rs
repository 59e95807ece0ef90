//! One file of a collection into a stream (`docker load`'s stdin, `arv-local get`): its
//! blocks are fetched in order on a thread of their own, which runs up to `AHEAD` chunks
//! ahead of the writer. So the network, TLS and md5 of the next bytes (and the request for
//! the next block) overlap the pipe write of these, rather than taking turns with it.
//!
//! Each block's size and md5 are checked by the block store as it streams; what the stream
//! feeds is the caller's.

use std::io::{self, Write};
use std::mem;
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use super::CollectionError;
use crate::arvados::manifest::{Locator, ManifestFile};
use crate::store::{BlockStore, StoreError};

/// Bytes handed from the fetching thread to the writer at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks the fetching thread may have ready before it waits for the writer: with the
/// chunk being written and the one being filled, `(AHEAD + 2) * CHUNK` bytes in memory.
const AHEAD: usize = 16;

/// Write the bytes of `file` to `out`, block by block, each block checked by the store.
/// `keep_going` is asked before each block's bytes are written: its error (a cancel) stops
/// the stream. An error writing to `out` is returned as the current block's
/// `StoreError::Io`, whose source is the write's error (`BrokenPipe` when the reader left).
pub fn stream_file(
    blocks: &dyn BlockStore,
    file: &ManifestFile,
    out: &mut dyn Write,
    keep_going: &dyn Fn() -> io::Result<()>,
) -> Result<(), CollectionError> {
    let (tx, rx) = crossbeam_channel::bounded::<Piece>(AHEAD);
    thread::scope(|scope| {
        let spawned = thread::Builder::new()
            .name("stream-fetch".into())
            .spawn_scoped(scope, move || fetch_ahead(blocks, file, tx));
        match spawned {
            // When the writer stops early, dropping `rx` stops the fetching thread at its
            // next chunk.
            Ok(_) => write_pieces(rx, out, keep_going),
            // No thread to spare: fetch and write in turn.
            Err(_) => fetch_ranges(blocks, file, &mut Direct { out, keep_going }),
        }
    })
}

/// What the fetching thread hands the writer, in order.
enum Piece {
    /// The next bytes come from this block (`hash+size`).
    Block(String),
    Bytes(Vec<u8>),
    /// The whole file was fetched.
    Done,
    Failed(CollectionError),
}

/// Where `fetch_ranges` puts the bytes, told where each block starts.
trait Stream: Write {
    fn next_block(&mut self, block: &str) -> Result<(), CollectionError>;
}

/// The bytes of each of `file`'s ranges, in order, into `stream`.
fn fetch_ranges(
    blocks: &dyn BlockStore,
    file: &ManifestFile,
    stream: &mut dyn Stream,
) -> Result<(), CollectionError> {
    for range in &file.ranges {
        let block = portable(&range.locator);
        stream.next_block(&block)?;
        let mut window = RangeWriter::new(stream, range.offset, range.len);
        blocks
            .get_block(&range.locator, &mut window)
            .map_err(|source| CollectionError::Block {
                block: block.clone(),
                source,
            })?;
        if window.left > 0 {
            return Err(CollectionError::ShortBlock {
                block,
                missing: window.left,
            });
        }
    }
    Ok(())
}

/// The fetching thread: the file's bytes in chunks on `tx`, then Done or Failed.
fn fetch_ahead(blocks: &dyn BlockStore, file: &ManifestFile, tx: Sender<Piece>) {
    let mut chunks = Chunks {
        tx: &tx,
        buf: Vec::with_capacity(CHUNK),
    };
    let fetched = fetch_ranges(blocks, file, &mut chunks).and_then(|()| {
        chunks.flush().map_err(|source| CollectionError::Io {
            what: "handing on the last bytes".to_string(),
            source,
        })
    });
    // Nobody listens if the writer stopped first: it has its own error.
    let _ = tx.send(match fetched {
        Ok(()) => Piece::Done,
        Err(e) => Piece::Failed(e),
    });
}

/// Write the pieces to `out` as they come, asking `keep_going` at each block.
fn write_pieces(
    rx: Receiver<Piece>,
    out: &mut dyn Write,
    keep_going: &dyn Fn() -> io::Result<()>,
) -> Result<(), CollectionError> {
    let mut block = String::new();
    for piece in rx {
        match piece {
            Piece::Block(next) => {
                keep_going().map_err(CollectionError::Stopped)?;
                block = next;
            }
            Piece::Bytes(bytes) => {
                out.write_all(&bytes)
                    .map_err(|source| CollectionError::Block {
                        block: block.clone(),
                        source: StoreError::Io {
                            what: format!("writing block {block}'s data"),
                            source,
                        },
                    })?
            }
            Piece::Done => return Ok(()),
            Piece::Failed(e) => return Err(e),
        }
    }
    Err(CollectionError::Io {
        what: "fetching the file's blocks".to_string(),
        source: io::Error::other("the fetching thread ended without a word"),
    })
}

/// The fetching thread's side: bytes gathered into chunks and sent.
struct Chunks<'a> {
    tx: &'a Sender<Piece>,
    buf: Vec<u8>,
}

impl Chunks<'_> {
    fn send(&self, piece: Piece) -> io::Result<()> {
        self.tx
            .send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the writer stopped"))
    }
}

impl Write for Chunks<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.send(Piece::Bytes(full))?;
        }
        Ok(())
    }
}

impl Stream for Chunks<'_> {
    fn next_block(&mut self, block: &str) -> Result<(), CollectionError> {
        let handed = self
            .flush()
            .and_then(|()| self.send(Piece::Block(block.into())));
        handed.map_err(|source| CollectionError::Io {
            what: format!("handing on block {block}"),
            source,
        })
    }
}

/// Fetching and writing in turn, on the caller's thread.
struct Direct<'a> {
    out: &'a mut dyn Write,
    keep_going: &'a dyn Fn() -> io::Result<()>,
}

impl Write for Direct<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.out.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Stream for Direct<'_> {
    fn next_block(&mut self, _: &str) -> Result<(), CollectionError> {
        (self.keep_going)().map_err(CollectionError::Stopped)
    }
}

/// `hash+size` of a locator token, hints (and so signatures) left out.
fn portable(locator: &str) -> String {
    Locator::parse(locator)
        .map(|l| l.portable())
        .unwrap_or_else(|_| locator.split('+').take(2).collect::<Vec<_>>().join("+"))
}

/// Passes on only bytes `[offset, offset+len)` of what is written through it: one file's
/// part of a block.
struct RangeWriter<'a> {
    out: &'a mut dyn Write,
    skip: u64,
    /// Bytes of the range not passed on yet.
    left: u64,
}

impl<'a> RangeWriter<'a> {
    fn new(out: &'a mut dyn Write, offset: u64, len: u64) -> Self {
        RangeWriter {
            out,
            skip: offset,
            left: len,
        }
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
    use crate::arvados::manifest::Manifest;
    use crate::store::memory::MemoryStore;

    #[test]
    fn range_writer_passes_only_the_range() {
        let mut out = Vec::new();
        let mut w = RangeWriter::new(&mut out, 3, 4);
        w.write_all(b"ab").unwrap();
        w.write_all(b"cdefghij").unwrap();
        assert_eq!(w.left, 0);
        assert_eq!(out, b"defg");
        let mut out = Vec::new();
        let mut w = RangeWriter::new(&mut out, 0, 5);
        w.write_all(b"abc").unwrap();
        assert_eq!(w.left, 2);
    }

    fn two_block_file(store: &MemoryStore) -> ManifestFile {
        let a = store.put(b"xxheadpart");
        let b = store.put(b"tail-yy");
        let manifest = format!(". {a} {b} 2:13:sha256:{}.tar\n", "ab".repeat(32));
        Manifest::parse(&manifest).unwrap().files().remove(0)
    }

    #[test]
    fn a_file_spanning_blocks_streams_in_order() {
        let store = MemoryStore::new();
        let file = two_block_file(&store);
        let mut out = Vec::new();
        stream_file(&store, &file, &mut out, &|| Ok(())).unwrap();
        assert_eq!(out, b"headparttail-");
        let stop = || Err(io::Error::other("cancelled"));
        let err = stream_file(&store, &file, &mut Vec::new(), &stop).unwrap_err();
        assert_eq!(err.to_string(), "cancelled");
    }

    #[test]
    fn a_short_or_missing_block_is_an_error_that_names_it() {
        let store = MemoryStore::new();
        let file = two_block_file(&store);
        *store.lie.lock().unwrap() = Some(b"xx".to_vec());
        let err = stream_file(&store, &file, &mut Vec::new(), &|| Ok(())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "block {}+10 ended 8 bytes before the end of the file range",
                crate::arvados::manifest::md5_hex(b"xxheadpart")
            )
        );
        *store.lie.lock().unwrap() = None;
        store.blocks.lock().unwrap().clear();
        let err = stream_file(&store, &file, &mut Vec::new(), &|| Ok(())).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("fetching block "), "{text}");
        assert!(text.ends_with(": not found"), "{text}");
    }

    /// A writer that takes its time over every write, as docker load's stdin.
    struct SlowWriter(Vec<u8>, std::time::Duration);

    impl Write for SlowWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.1);
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_next_block_is_fetched_while_this_one_is_written() {
        let pause = std::time::Duration::from_millis(100);
        let store = MemoryStore::new();
        *store.block_delay.lock().unwrap() = Some(pause);
        let parts: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 100_000]).collect();
        let locators: Vec<String> = parts.iter().map(|p| store.put(p)).collect();
        let manifest = format!(". {} 0:400000:image.tar\n", locators.join(" "));
        let file = Manifest::parse(&manifest).unwrap().files().remove(0);
        let mut out = SlowWriter(Vec::new(), pause);
        let t = std::time::Instant::now();
        stream_file(&store, &file, &mut out, &|| Ok(())).unwrap();
        let took = t.elapsed();
        assert_eq!(out.0, parts.concat());
        // In turn: 4 fetches and 4 writes, 800 ms; overlapped: one fetch, then the writes.
        assert!(took < pause * 7, "{took:?}");
    }
}
