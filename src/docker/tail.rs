//! A reader that passes everything through and keeps the last few bytes: the docker
//! client writes its own errors to the same stderr as the container, so the tail is what
//! explains a `docker run` that failed before the container ran.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// The shared end: read the tail after the reader is done.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    /// The kept bytes, lossily decoded and trimmed.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

pub struct TailReader<R> {
    inner: R,
    tail: Tail,
    keep: usize,
}

impl<R: Read> TailReader<R> {
    /// Wrap `inner`, keeping its last `keep` bytes in the returned `Tail`.
    pub fn new(inner: R, keep: usize) -> (TailReader<R>, Tail) {
        let tail = Tail::default();
        (
            TailReader {
                inner,
                tail: tail.clone(),
                keep,
            },
            tail,
        )
    }
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let fresh = &buf[..n];
        let mut kept = self.tail.0.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.len() >= self.keep {
            kept.clear();
            kept.extend_from_slice(&fresh[fresh.len() - self.keep..]);
        } else {
            let overflow = (kept.len() + fresh.len()).saturating_sub(self.keep);
            let drop = overflow.min(kept.len());
            kept.drain(..drop);
            kept.extend_from_slice(fresh);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_bytes_and_passes_all_through() {
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
        assert_eq!(tail.0.lock().unwrap().as_slice(), &data[data.len() - 100..]);
    }

    #[test]
    fn text_is_trimmed() {
        let (mut reader, tail) =
            TailReader::new(io::Cursor::new(b"docker: Error: x\n".to_vec()), 64);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(tail.text(), "docker: Error: x");
    }
}
