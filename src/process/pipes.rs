//! Reading a child's pipes: draining one to its end while keeping a head or a tail of it,
//! passing a stream through while keeping its tail, reading on after read errors, and
//! widening a pipe. What the bytes are for is the caller's business.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// Room in a widened pipe. The default 64 KiB makes a writer stop whenever our reader is
/// busy with a chunk; with 1 MiB (the usual unprivileged maximum) it can write ahead, and we
/// read more per wake-up (measured in b54fa12).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Enlarge a pipe to 1 MiB if the system allows; it is only a speed-up.
pub fn widen_pipe(pipe: &impl AsRawFd) {
    // SAFETY: fcntl on a descriptor the caller owns; F_SETPIPE_SZ changes nothing if it fails.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
    }
}

/// Read errors in a row after which [`read_on`] gives a pipe up. On a pipe, an error other
/// than EINTR does not go away (EBADF, EFAULT): reading on would only spin.
pub const MAX_READ_ERRORS: u32 = 8;

/// What went wrong reading a pipe, for [`read_on`]'s caller to say.
#[derive(Debug)]
pub enum ReadTrouble<'a> {
    /// The first read error: reading goes on.
    First(&'a io::Error),
    /// `MAX_READ_ERRORS` in a row: reading stops here.
    GaveUp(&'a io::Error),
}

impl ReadTrouble<'_> {
    /// The line that says it, for the pipe `what` (e.g. "container stdout").
    pub fn describe(&self, what: &str) -> String {
        match self {
            ReadTrouble::First(e) => format!("error reading {what}: {e}; reading on"),
            ReadTrouble::GaveUp(e) => {
                format!("stopped reading {what} after {MAX_READ_ERRORS} errors in a row: {e}")
            }
        }
    }
}

/// Read `reader` to its end in pieces of up to `buf.len()` bytes, handing each to `take`.
/// A read error does not end it: reading goes on, so that what comes after is kept and the
/// writer never blocks on a pipe nobody reads. The first error, and giving up after
/// `MAX_READ_ERRORS` in a row, go to `trouble` (once each). Returns the bytes read.
pub fn read_on(
    reader: &mut dyn Read,
    buf: &mut [u8],
    mut take: impl FnMut(&[u8]),
    mut trouble: impl FnMut(ReadTrouble),
) -> u64 {
    let (mut total, mut errors, mut in_a_row) = (0u64, 0u32, 0u32);
    loop {
        match reader.read(buf) {
            Ok(0) => return total,
            Ok(n) => {
                in_a_row = 0;
                total += n as u64;
                take(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                (errors, in_a_row) = (errors + 1, in_a_row + 1);
                if errors == 1 {
                    trouble(ReadTrouble::First(&e));
                }
                if in_a_row >= MAX_READ_ERRORS {
                    trouble(ReadTrouble::GaveUp(&e));
                    return total;
                }
            }
        }
    }
}

/// Which part of a stream to keep while draining all of it.
#[derive(Clone, Copy)]
pub(super) enum Keep {
    Head(usize),
    Tail(usize),
}

/// Read `r` to EOF on a new thread, keeping only the part `keep` says.
pub(super) fn drain<R: Read + Send + 'static>(
    mut r: R,
    keep: Keep,
) -> io::Result<JoinHandle<Vec<u8>>> {
    thread::Builder::new()
        .name("child-pipe".into())
        .spawn(move || {
            let mut head = Vec::new();
            let mut tail = TailBuffer::new(match keep {
                Keep::Tail(limit) => limit,
                Keep::Head(_) => 0,
            });
            let mut buf = [0u8; 8192];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                match keep {
                    Keep::Head(limit) => {
                        let room = limit.saturating_sub(head.len());
                        head.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Keep::Tail(_) => tail.push(&buf[..n]),
                }
            }
            match keep {
                Keep::Head(_) => head,
                Keep::Tail(_) => tail.bytes().to_vec(),
            }
        })
}

/// The last `limit` bytes of a stream, kept while all of it goes by.
#[derive(Debug, Default)]
struct TailBuffer {
    kept: Vec<u8>,
    limit: usize,
}

impl TailBuffer {
    fn new(limit: usize) -> TailBuffer {
        TailBuffer {
            kept: Vec::new(),
            limit,
        }
    }

    fn push(&mut self, fresh: &[u8]) {
        self.kept.extend_from_slice(fresh);
        // Trim only now and then, so the cost stays linear.
        if self.kept.len() > 2 * self.limit {
            self.kept.drain(..self.kept.len() - self.limit);
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.kept[self.kept.len().saturating_sub(self.limit)..]
    }
}

/// The shared end of a [`TailReader`]: read the tail after the reader is done.
#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<TailBuffer>>);

impl Tail {
    /// The kept bytes, lossily decoded and trimmed.
    pub fn text(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(|e| e.into_inner());
        trimmed_text(tail.bytes())
    }
}

/// A reader that passes everything through and keeps the last few bytes, e.g. of a stream
/// where a child's own error messages follow what it relayed.
pub struct TailReader<R> {
    inner: R,
    tail: Tail,
}

impl<R: Read> TailReader<R> {
    /// Wrap `inner`, keeping its last `keep` bytes in the returned `Tail`.
    pub fn new(inner: R, keep: usize) -> (TailReader<R>, Tail) {
        let tail = Tail(Arc::new(Mutex::new(TailBuffer::new(keep))));
        let reader = TailReader {
            inner,
            tail: tail.clone(),
        };
        (reader, tail)
    }
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut tail = self.tail.0.lock().unwrap_or_else(|e| e.into_inner());
        tail.push(&buf[..n]);
        Ok(n)
    }
}

pub(super) fn trimmed_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_keeps_head_or_tail() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let head = drain(io::Cursor::new(data.clone()), Keep::Head(10))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(head, data[..10]);
        let tail = drain(io::Cursor::new(data.clone()), Keep::Tail(4096))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(tail, data[data.len() - 4096..]);
    }

    #[test]
    fn tail_reader_keeps_only_the_last_bytes_and_passes_all_through() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let (mut reader, tail) = TailReader::new(io::Cursor::new(data.clone()), 100);
        let mut out = Vec::new();
        let mut small = [0u8; 7];
        loop {
            let n = reader.read(&mut small).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&small[..n]);
        }
        assert_eq!(out, data);
        let kept = tail.0.lock().unwrap().bytes().to_vec();
        assert_eq!(kept, &data[data.len() - 100..]);
    }

    #[test]
    fn tail_text_is_trimmed() {
        let (mut reader, tail) =
            TailReader::new(io::Cursor::new(b"docker: Error: x\n".to_vec()), 64);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(tail.text(), "docker: Error: x");
    }
}
