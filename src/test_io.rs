//! Test doubles for I/O, shared by the unit tests of the modules that read and write
//! streams: a reader that plays a script of reads and errors, and a writer whose bytes a
//! test reads back.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

/// Reads out its script step by step: bytes, or an error with this text.
pub struct Scripted(pub VecDeque<Result<&'static [u8], &'static str>>);

impl Scripted {
    pub fn new(script: impl IntoIterator<Item = Result<&'static [u8], &'static str>>) -> Scripted {
        Scripted(script.into_iter().collect())
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.pop_front() {
            None => Ok(0),
            Some(Ok(bytes)) => {
                buf[..bytes.len()].copy_from_slice(bytes);
                Ok(bytes.len())
            }
            Some(Err(e)) => Err(io::Error::other(e)),
        }
    }
}

/// A writer that keeps what it is given; clones share the bytes.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// What was written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
