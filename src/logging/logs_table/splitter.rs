//! Cutting a timestamped byte stream into logs-table lines, as the bytes arrive.

use crate::rfc3339::TIMESTAMP_LEN;

/// Marks where a long line was cut.
pub(super) const CUT: &[u8] = b"[...]";
/// A line prefix (`<timestamp> `) longer than this is not a timestamp: treat it as text.
const MAX_PREFIX: usize = TIMESTAMP_LEN + 8;

/// What a `LineSplitter` produces.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One logs-table line, without its `\n`.
    Line(&'a [u8]),
    /// This many bytes of the stream were lost before this point.
    Skipped(u64),
}

/// Cuts a timestamped byte stream (`<ts> text\n<ts> text…`) into logs-table lines: a line
/// whose text is longer than `max_line` becomes `<ts> <first max_line>[...]`,
/// `<ts> [...]<next max_line>[...]`, …, `<ts> [...]<rest>`, all with the line's timestamp.
pub struct LineSplitter {
    max_line: usize,
    /// Collecting the `<ts> ` prefix of a line (true at a line start).
    in_prefix: bool,
    prefix: Vec<u8>,
    /// Text of the current segment (at most `max_line` bytes).
    segment: Vec<u8>,
    /// The current segment continues a cut line.
    continued: bool,
    /// Discarding bytes up to the next `\n` (after a gap in the middle of a line).
    resyncing: bool,
    skipped: u64,
    scratch: Vec<u8>,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> LineSplitter {
        let max_line = max_line.max(1);
        LineSplitter {
            max_line,
            in_prefix: true,
            prefix: Vec::with_capacity(MAX_PREFIX + 1),
            segment: Vec::with_capacity(max_line),
            continued: false,
            resyncing: false,
            skipped: 0,
            scratch: Vec::with_capacity(MAX_PREFIX + max_line + 2 * CUT.len()),
        }
    }

    /// Feed the next bytes of the stream; `emit` gets every completed piece.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Piece<'_>)) {
        while !data.is_empty() {
            if self.resyncing {
                match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.skipped += i as u64 + 1;
                        data = &data[i + 1..];
                        self.resyncing = false;
                        self.report_skipped(emit);
                    }
                    None => {
                        self.skipped += data.len() as u64;
                        return;
                    }
                }
            } else if self.in_prefix {
                let window = &data[..data.len().min(MAX_PREFIX + 1 - self.prefix.len())];
                match window.iter().position(|&b| b == b' ' || b == b'\n') {
                    Some(i) if window[i] == b' ' => {
                        self.prefix.extend_from_slice(&window[..=i]);
                        self.in_prefix = false;
                        data = &data[i + 1..];
                    }
                    Some(i) => {
                        self.prefix.extend_from_slice(&window[..i]);
                        self.in_prefix = false;
                        data = &data[i..];
                    }
                    None => {
                        self.prefix.extend_from_slice(window);
                        data = &data[window.len()..];
                        if self.prefix.len() > MAX_PREFIX {
                            // No timestamp here: the bytes are text.
                            self.segment.append(&mut self.prefix);
                            self.in_prefix = false;
                        }
                    }
                }
            } else {
                let newline = data.iter().position(|&b| b == b'\n');
                let (mut text, rest) = match newline {
                    Some(i) => (&data[..i], &data[i + 1..]),
                    None => (data, &data[data.len()..]),
                };
                while !text.is_empty() {
                    if self.segment.len() >= self.max_line {
                        self.emit_segment(true, emit);
                    }
                    let n = text.len().min(self.max_line - self.segment.len());
                    self.segment.extend_from_slice(&text[..n]);
                    text = &text[n..];
                }
                if newline.is_some() {
                    self.end_line(emit);
                }
                data = rest;
            }
        }
    }

    /// Some bytes of the stream were lost (`dropped`) before the next `feed`, which starts
    /// at a line start or not. A line cut short is emitted with a `[...]` mark; bytes up to
    /// the next line start are discarded; the loss is reported as `Piece::Skipped`.
    pub fn gap(&mut self, dropped: u64, at_line_start: bool, emit: &mut dyn FnMut(Piece<'_>)) {
        if !self.at_line_start() {
            self.emit_segment(true, emit);
            self.reset_line();
        }
        self.skipped += dropped;
        self.resyncing = !at_line_start;
        if !self.resyncing {
            self.report_skipped(emit);
        }
    }

    /// The stream ended: emit a last line that had no `\n`, and any loss not yet reported.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Piece<'_>)) {
        if !self.at_line_start() {
            self.end_line(emit);
        }
        self.resyncing = false;
        self.report_skipped(emit);
    }

    /// Drop everything up to the last `\n` of `data` unseen (the caller knows none of it
    /// can be posted): returns how many bytes of `data` that was and how many bytes of
    /// log text (newlines not counted) were dropped, including the unfinished line held.
    /// `None` (nothing done) if `data` has no `\n` or a resync is under way.
    pub fn discard_lines(&mut self, data: &[u8]) -> Option<(usize, u64)> {
        if self.resyncing {
            return None;
        }
        let last = data.iter().rposition(|&b| b == b'\n')?;
        let newlines = count_newlines(&data[..last]) + 1;
        let held = self.prefix.len() + self.segment.len();
        self.segment.clear();
        self.reset_line();
        Some((last + 1, (held + last + 1 - newlines) as u64))
    }

    fn at_line_start(&self) -> bool {
        self.in_prefix && self.prefix.is_empty() && !self.resyncing
    }

    fn report_skipped(&mut self, emit: &mut dyn FnMut(Piece<'_>)) {
        if self.skipped > 0 {
            emit(Piece::Skipped(self.skipped));
            self.skipped = 0;
        }
    }

    fn end_line(&mut self, emit: &mut dyn FnMut(Piece<'_>)) {
        self.emit_segment(false, emit);
        self.reset_line();
    }

    fn reset_line(&mut self) {
        self.prefix.clear();
        self.in_prefix = true;
        self.continued = false;
    }

    /// Emit the current segment; `more` if the line goes on after it.
    fn emit_segment(&mut self, more: bool, emit: &mut dyn FnMut(Piece<'_>)) {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.prefix);
        if self.continued {
            self.scratch.extend_from_slice(CUT);
        }
        self.scratch.extend_from_slice(&self.segment);
        if more {
            self.scratch.extend_from_slice(CUT);
        }
        emit(Piece::Line(&self.scratch));
        self.segment.clear();
        self.continued = more;
    }
}

/// The number of `\n` in `data`, counted in byte-wide lanes (a plain `filter().count()`
/// compiles to a loop that handles two bytes at a time).
fn count_newlines(data: &[u8]) -> usize {
    data.chunks(255)
        .map(|c| usize::from(c.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'))))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::super::tests::TS;
    use super::*;

    /// Split `chunks` and render the pieces as strings (`Skipped(n)` as `<skipped n>`).
    fn split(splitter: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut emit = |p: Piece<'_>| {
            out.push(match p {
                Piece::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Piece::Skipped(n) => format!("<skipped {n}>"),
            })
        };
        for c in chunks {
            splitter.feed(c, &mut emit);
        }
        out
    }

    #[test]
    fn newlines_are_counted_across_lanes() {
        let mut data = vec![b'\n'; 1000];
        data.extend_from_slice(&[b'x'; 300]);
        data.extend_from_slice(b"\n\nab\n");
        assert_eq!(count_newlines(&data), 1003);
        assert_eq!(count_newlines(b""), 0);
    }

    #[test]
    fn splitter_passes_short_lines() {
        let mut s = LineSplitter::new(4096);
        let input = format!("{TS} hello\n{TS} \n{TS} world\n");
        assert_eq!(
            split(&mut s, &[input.as_bytes()]),
            vec![
                format!("{TS} hello"),
                format!("{TS} "),
                format!("{TS} world")
            ]
        );
    }

    #[test]
    fn splitter_cuts_a_10000_byte_line_into_4096_4096_1808() {
        let text: Vec<u8> = (0..10_000).map(|i| b'a' + (i % 26) as u8).collect();
        let mut input = format!("{TS} ").into_bytes();
        input.extend_from_slice(&text);
        input.extend_from_slice(b"\n");
        // Feed in odd-sized chunks: the cut must not depend on how the bytes arrive.
        let chunks: Vec<&[u8]> = input.chunks(777).collect();
        let mut s = LineSplitter::new(4096);
        let pieces = split(&mut s, &chunks);
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            pieces,
            vec![
                format!("{TS} {}[...]", &text[..4096]),
                format!("{TS} [...]{}[...]", &text[4096..8192]),
                format!("{TS} [...]{}", &text[8192..]),
            ]
        );
        assert_eq!(text[8192..].len(), 1808);
    }

    #[test]
    fn splitter_keeps_a_line_of_exactly_max_whole() {
        let mut s = LineSplitter::new(8);
        assert_eq!(
            split(&mut s, &[format!("{TS} 12345678\n").as_bytes()]),
            vec![format!("{TS} 12345678")]
        );
    }

    #[test]
    fn splitter_prefix_may_arrive_in_pieces_and_last_line_needs_no_newline() {
        let mut s = LineSplitter::new(4096);
        let input = format!("{TS} one\n{TS} two");
        let chunks: Vec<&[u8]> = input.as_bytes().chunks(3).collect();
        let mut pieces = split(&mut s, &chunks);
        s.finish(&mut |p| {
            if let Piece::Line(l) = p {
                pieces.push(String::from_utf8_lossy(l).into_owned())
            }
        });
        assert_eq!(pieces, vec![format!("{TS} one"), format!("{TS} two")]);
    }

    #[test]
    fn splitter_gap_in_mid_line_cuts_resyncs_and_counts() {
        let mut s = LineSplitter::new(4096);
        let mut pieces = split(&mut s, &[format!("{TS} partial").as_bytes()]);
        s.gap(100, false, &mut |p| match p {
            Piece::Line(l) => pieces.push(String::from_utf8_lossy(l).into_owned()),
            Piece::Skipped(n) => pieces.push(format!("<skipped {n}>")),
        });
        // The chunk after the gap starts mid-line: "tail\n" (5 bytes) is discarded.
        pieces.extend(split(&mut s, &[format!("tail\n{TS} next\n").as_bytes()]));
        assert_eq!(
            pieces,
            vec![
                format!("{TS} partial[...]"),
                "<skipped 105>".to_string(),
                format!("{TS} next")
            ]
        );
    }
}
