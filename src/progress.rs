//! Progress lines for steps that move many bytes (image load, input staging, output
//! capture, log saves): how far they are, how fast, and how long is left.
//!
//! A step that ends before the first line is due prints nothing. Otherwise the first line
//! comes after `first` (5 s), then one every `every` (30 s), and one when the step ends:
//! `Loading the image: 1.2 GiB of 4.8 GiB (25%), 118 MiB/s, about 31 s left`.
//! Bytes may be counted from several threads at once (parallel block fetches); the line
//! itself goes to whatever `say` the step was given (crunch-run.txt, in practice).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::{BlockSource, BlockStore, StoreError};

/// When progress lines are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Quiet for this long: short steps print nothing.
    pub first: Duration,
    /// Then a line this often.
    pub every: Duration,
}

impl Default for Cadence {
    fn default() -> Cadence {
        Cadence {
            first: Duration::from_secs(5),
            every: Duration::from_secs(30),
        }
    }
}

/// `Progress::total` while the size is unknown.
const NO_TOTAL: u64 = u64::MAX;

/// Where "now" comes from, so that tests need not sleep.
pub type Now = Box<dyn Fn() -> Instant + Send + Sync>;

/// Counts the bytes of one step and says how far it is when a line is due.
pub struct Progress<'a> {
    what: String,
    /// The step's size; `NO_TOTAL` until known (`set_total`).
    total: AtomicU64,
    cadence: Cadence,
    done: AtomicU64,
    started: Instant,
    /// When the next line is due, and whether any line was printed.
    next: Mutex<(Instant, bool)>,
    now: Now,
    say: Box<dyn Fn(&str) + Send + Sync + 'a>,
}

impl<'a> Progress<'a> {
    /// Start counting a step of `total` bytes (if known), reporting through `say`.
    pub fn new(
        what: &str,
        total: Option<u64>,
        cadence: Cadence,
        say: impl Fn(&str) + Send + Sync + 'a,
    ) -> Progress<'a> {
        Progress::with_clock(what, total, cadence, Box::new(Instant::now), say)
    }

    pub fn with_clock(
        what: &str,
        total: Option<u64>,
        cadence: Cadence,
        now: Now,
        say: impl Fn(&str) + Send + Sync + 'a,
    ) -> Progress<'a> {
        let started = now();
        Progress {
            what: what.to_string(),
            total: AtomicU64::new(total.unwrap_or(NO_TOTAL)),
            cadence,
            done: AtomicU64::new(0),
            started,
            next: Mutex::new((started + cadence.first, false)),
            now,
            say: Box::new(say),
        }
    }

    /// Count `n` more bytes done; prints a line if one is due.
    pub fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let now = (self.now)();
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if now < next.0 {
            return;
        }
        *next = (now + self.cadence.every, true);
        drop(next);
        (self.say)(&self.line(done, now, false));
    }

    /// The step is over: a last line, if any was printed before.
    pub fn finish(&self) {
        let printed = self.next.lock().unwrap_or_else(|e| e.into_inner()).1;
        if printed {
            let done = self.done.load(Ordering::Relaxed);
            (self.say)(&self.line(done, (self.now)(), true));
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The step's size, once known (after a walk of what it moves).
    pub fn set_total(&self, total: u64) {
        self.total.store(total.min(NO_TOTAL - 1), Ordering::Relaxed);
    }

    fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|&t| t != NO_TOTAL)
    }

    fn line(&self, done: u64, now: Instant, finished: bool) -> String {
        let elapsed = now.saturating_duration_since(self.started);
        let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
        let mut line = format!("{}: {}", self.what, format_bytes(done));
        if let Some(total) = self.total() {
            let percent = (done as f64 * 100.0 / total.max(1) as f64).min(100.0);
            line.push_str(&format!(" of {} ({percent:.0}%)", format_bytes(total)));
        }
        line.push_str(&format!(", {}/s", format_bytes(rate as u64)));
        match (finished, self.total()) {
            (true, _) => line.push_str(&format!(", done in {}", format_duration(elapsed))),
            (false, Some(total)) if rate >= 1.0 && total > done => {
                // Never "about 0 s left" while bytes are left.
                let left = Duration::from_secs_f64((total - done) as f64 / rate)
                    .max(Duration::from_secs(1));
                line.push_str(&format!(", about {} left", format_duration(left)));
            }
            _ => {}
        }
        line
    }
}

/// A byte count in plain binary units: `512 bytes`, `9.5 KiB`, `118 MiB`, `1.2 GiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// A duration rounded for a person: `31 s`, `5 min 10 s`, `2 h 10 min`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 if secs.is_multiple_of(60) => format!("{} min", secs / 60),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// A writer that counts what passes through it.
pub struct CountingWriter<'p, 'a, W> {
    inner: W,
    progress: &'p Progress<'a>,
}

impl<'p, 'a, W: Write> CountingWriter<'p, 'a, W> {
    pub fn new(inner: W, progress: &'p Progress<'a>) -> Self {
        CountingWriter { inner, progress }
    }
}

impl<W: Write> Write for CountingWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that counts what passes through it.
pub struct CountingReader<'p, 'a, R> {
    inner: R,
    progress: &'p Progress<'a>,
}

impl<'p, 'a, R: Read> CountingReader<'p, 'a, R> {
    pub fn new(inner: R, progress: &'p Progress<'a>) -> Self {
        CountingReader { inner, progress }
    }
}

impl<R: Read> Read for CountingReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// A block store that counts the bytes of the blocks it stores and fetches.
pub struct CountingBlocks<'p, 'a> {
    inner: &'p dyn BlockStore,
    progress: &'p Progress<'a>,
}

impl<'p, 'a> CountingBlocks<'p, 'a> {
    pub fn new(inner: &'p dyn BlockStore, progress: &'p Progress<'a>) -> Self {
        CountingBlocks { inner, progress }
    }
}

impl BlockStore for CountingBlocks<'_, '_> {
    fn put_block(
        &self,
        hash: &str,
        size: u64,
        body: &BlockSource<'_>,
    ) -> Result<String, StoreError> {
        let stored = self.inner.put_block(hash, size, body)?;
        self.progress.advance(size);
        Ok(stored)
    }

    fn put_block_from_file(
        &self,
        hash: &str,
        size: u64,
        path: &Path,
        offset: u64,
    ) -> Result<String, StoreError> {
        let stored = self.inner.put_block_from_file(hash, size, path, offset)?;
        self.progress.advance(size);
        Ok(stored)
    }

    fn get_block(&self, locator: &str, out: &mut dyn Write) -> Result<u64, StoreError> {
        let n = self.inner.get_block(locator, out)?;
        self.progress.advance(n);
        Ok(n)
    }

    fn ready(&self) -> Result<(), StoreError> {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Clock = Arc<Mutex<Instant>>;
    type Lines = Arc<Mutex<Vec<String>>>;

    /// A clock moved by hand, and the lines said.
    fn setup(total: Option<u64>) -> (Clock, Lines, Progress<'static>) {
        let t = Arc::new(Mutex::new(Instant::now()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (clock, said) = (t.clone(), lines.clone());
        let progress = Progress::with_clock(
            "Loading the image",
            total,
            Cadence::default(),
            Box::new(move || *clock.lock().unwrap()),
            move |line: &str| said.lock().unwrap().push(line.to_string()),
        );
        (t, lines, progress)
    }

    fn wait(t: &Mutex<Instant>, secs: u64) {
        *t.lock().unwrap() += Duration::from_secs(secs);
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_step_that_ends_before_the_first_line_is_due_prints_nothing() {
        let (t, lines, p) = setup(Some(100 * MIB));
        p.advance(50 * MIB);
        wait(&t, 4);
        p.advance(50 * MIB);
        p.finish();
        assert!(lines.lock().unwrap().is_empty());
    }

    #[test]
    fn lines_come_after_five_seconds_then_every_thirty_and_at_the_end() {
        let (t, lines, p) = setup(Some(4800 * MIB));
        wait(&t, 5);
        p.advance(600 * MIB); // 600 MiB in 5 s: 120 MiB/s, 4200 MiB left: 35 s
        wait(&t, 10);
        p.advance(600 * MIB); // not due: 15 s < 5 + 30
        wait(&t, 20);
        p.advance(600 * MIB); // due at 35 s
        wait(&t, 5);
        p.advance(3000 * MIB);
        p.finish();
        let lines = lines.lock().unwrap();
        assert_eq!(
            *lines,
            [
                "Loading the image: 600 MiB of 4.7 GiB (12%), 120 MiB/s, about 35 s left",
                "Loading the image: 1.8 GiB of 4.7 GiB (38%), 51 MiB/s, about 58 s left",
                "Loading the image: 4.7 GiB of 4.7 GiB (100%), 120 MiB/s, done in 40 s",
            ]
        );
    }

    #[test]
    fn without_a_total_it_says_bytes_and_rate_only() {
        let (t, lines, p) = setup(None);
        wait(&t, 6);
        p.advance(3 * MIB);
        assert_eq!(
            lines.lock().unwrap()[0],
            "Loading the image: 3.0 MiB, 512 KiB/s"
        );
    }

    #[test]
    fn counting_writer_and_reader_count_every_byte() {
        let (_t, _lines, p) = setup(None);
        let mut sink = Vec::new();
        let mut w = CountingWriter::new(&mut sink, &p);
        w.write_all(&[0; 1000]).unwrap();
        let mut r = CountingReader::new(&[0u8; 24][..], &p);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(p.done(), 1024);
    }

    #[test]
    fn a_total_known_later_is_used_and_counting_blocks_count_what_is_stored() {
        let (t, lines, p) = setup(None);
        p.set_total(8 * MIB);
        let store = crate::store::memory::MemoryStore::new();
        let counted = CountingBlocks::new(&store, &p);
        let data = vec![7u8; (2 * MIB) as usize];
        let hash = crate::arvados::manifest::md5_hex(&data);
        let open = || -> io::Result<Box<dyn Read + Send>> { Ok(Box::new(&data[..])) };
        wait(&t, 5);
        let loc = counted.put_block(&hash, data.len() as u64, &open).unwrap();
        counted.get_block(&loc, &mut io::sink()).unwrap();
        assert_eq!(p.done(), 4 * MIB);
        assert_eq!(
            lines.lock().unwrap()[0],
            "Loading the image: 2.0 MiB of 8.0 MiB (25%), 410 KiB/s, about 15 s left"
        );
    }

    #[test]
    fn sizes_and_durations_read_plainly() {
        assert_eq!(format_bytes(0), "0 bytes");
        assert_eq!(format_bytes(1023), "1023 bytes");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(118 * MIB + 1), "118 MiB");
        assert_eq!(format_bytes(1288490189), "1.2 GiB");
        assert_eq!(format_bytes(u64::MAX), "16384 PiB");
        assert_eq!(format_duration(Duration::from_millis(31_400)), "31 s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5 min");
        assert_eq!(format_duration(Duration::from_secs(310)), "5 min 10 s");
        assert_eq!(format_duration(Duration::from_secs(7800)), "2 h 10 min");
    }
}
