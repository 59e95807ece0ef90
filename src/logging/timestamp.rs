//! Timestamps for log lines: the clock they come from, their fixed-width format, and the
//! `Timestamper` that puts one in front of every line of a byte stream.
//!
//! Every line of every log file starts with `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ ` (UTC, always nine
//! digits of nanoseconds, then one space). The bytes of the line itself pass through
//! untouched: binary output and invalid UTF-8 stay byte-exact.

use std::io::BufRead;
use std::sync::Arc;
use std::time::SystemTime;

/// Where "now" comes from. Injected so tests of timestamps and throttling need not sleep.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

use crate::rfc3339::{TIMESTAMP_LEN, format_timestamp_into};

/// Copies `chunk` to `out`, calling `prefix(out)` at every line start: at the very start if
/// `at_line_start`, and after every `\n` that is followed by more bytes. Updates
/// `at_line_start` for the next chunk. The building block of `Timestamper` and `LinePrefixer`.
pub fn prefix_lines(
    at_line_start: &mut bool,
    chunk: &[u8],
    out: &mut Vec<u8>,
    mut prefix: impl FnMut(&mut Vec<u8>),
) {
    let mut rest = chunk;
    while !rest.is_empty() {
        if *at_line_start {
            prefix(out);
        }
        // Copies up to and including the next `\n`, or all that is left (std finds the
        // `\n` a word at a time). Reading from a slice cannot fail.
        let _ = rest.read_until(b'\n', out);
        *at_line_start = out.last() == Some(&b'\n');
    }
}

/// Inserts `<timestamp> ` at every line start of a byte stream fed in arbitrary chunks.
///
/// A line gets the time at which its first byte arrived; a line continued over many chunks
/// gets one timestamp. The clock is read at most once per chunk: the lines that start in one
/// chunk arrived together. A final line without `\n` is passed on as it is.
pub struct Timestamper {
    clock: Arc<dyn Clock>,
    at_line_start: bool,
}

impl Timestamper {
    pub fn new(clock: Arc<dyn Clock>) -> Timestamper {
        Timestamper {
            clock,
            at_line_start: true,
        }
    }

    /// True if the next byte fed in starts a new line.
    pub fn at_line_start(&self) -> bool {
        self.at_line_start
    }

    /// Append `chunk` to `out` with a timestamp inserted at every line start.
    pub fn stamp(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let clock = &self.clock;
        let mut stamp: Option<[u8; TIMESTAMP_LEN]> = None;
        prefix_lines(&mut self.at_line_start, chunk, out, |out| {
            let ts = stamp.get_or_insert_with(|| {
                let mut buf = [b'0'; TIMESTAMP_LEN];
                format_timestamp_into(clock.now(), &mut buf);
                buf
            });
            out.extend_from_slice(ts);
            out.push(b' ');
        });
    }
}

/// Inserts a fixed prefix (e.g. `<container uuid> `) at every line start of a byte stream.
pub struct LinePrefixer {
    prefix: Vec<u8>,
    at_line_start: bool,
}

impl LinePrefixer {
    pub fn new(prefix: impl Into<Vec<u8>>) -> LinePrefixer {
        LinePrefixer {
            prefix: prefix.into(),
            at_line_start: true,
        }
    }

    /// Append `chunk` to `out` with the prefix inserted at every line start.
    pub fn prefix(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let prefix = &self.prefix;
        prefix_lines(&mut self.at_line_start, chunk, out, |out| {
            out.extend_from_slice(prefix)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::test_clock::TestClock;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::new(secs, nanos)
    }

    // 2015-12-29T15:51:45Z, the instant of the Go logging tests.
    const T0: u64 = 1_451_404_305;

    fn stamper(step_ns: u64) -> Timestamper {
        Timestamper::new(Arc::new(TestClock::with_step(
            at(T0, 1),
            Duration::from_nanos(step_ns),
        )))
    }

    fn stamp_all(ts: &mut Timestamper, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            ts.stamp(c, &mut out);
        }
        out
    }

    #[test]
    fn every_line_gets_a_timestamp() {
        let mut ts = stamper(1);
        let out = stamp_all(&mut ts, &[b"Hello world!\n", b"Goodbye\n"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2015-12-29T15:51:45.000000001Z Hello world!\n\
             2015-12-29T15:51:45.000000002Z Goodbye\n"
        );
        assert!(ts.at_line_start());
    }

    #[test]
    fn line_split_over_chunks_gets_one_timestamp() {
        let mut ts = stamper(1);
        let out = stamp_all(
            &mut ts,
            &[b"hel", b"lo", b" world\nsecond", b"\n", b"third"],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2015-12-29T15:51:45.000000001Z hello world\n\
             2015-12-29T15:51:45.000000002Z second\n\
             2015-12-29T15:51:45.000000003Z third"
        );
        assert!(!ts.at_line_start());
    }

    #[test]
    fn lines_starting_in_one_chunk_share_one_clock_reading() {
        let mut ts = stamper(1);
        let out = stamp_all(&mut ts, &[b"a\nb\n\n"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2015-12-29T15:51:45.000000001Z a\n\
             2015-12-29T15:51:45.000000001Z b\n\
             2015-12-29T15:51:45.000000001Z \n"
        );
    }

    #[test]
    fn binary_and_invalid_utf8_pass_through_byte_exact() {
        let mut ts = stamper(0);
        let data: &[u8] = b"\xff\xfe\x00bin\r\n\x80\x81";
        let out = stamp_all(&mut ts, &[data]);
        let mut want = b"2015-12-29T15:51:45.000000001Z \xff\xfe\x00bin\r\n".to_vec();
        want.extend_from_slice(b"2015-12-29T15:51:45.000000001Z \x80\x81");
        assert_eq!(out, want);
    }

    #[test]
    fn empty_chunk_adds_nothing() {
        let mut ts = stamper(1);
        assert!(stamp_all(&mut ts, &[b""]).is_empty());
        assert!(ts.at_line_start());
    }

    #[test]
    fn line_prefixer_prefixes_each_line_once() {
        let mut p = LinePrefixer::new("zzzzz-dz642-000000000000000 ");
        let mut out = Vec::new();
        p.prefix(b"one\ntw", &mut out);
        p.prefix(b"o\n", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "zzzzz-dz642-000000000000000 one\nzzzzz-dz642-000000000000000 two\n"
        );
    }
}
