//! The Arvados logs-table throttle of one stream: its limits and its exact messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::LogsTableConfig;
use super::splitter::CUT;
use crate::rfc3339::{TIMESTAMP_LEN, format_timestamp_into};

const COMPLETE_LOG: &str =
    " A complete log is still being written to Keep, and will be available when the job finishes.";

/// The Arvados logs-table throttle for one stream (same rules and messages as the Go
/// crunch-run before the logs table was retired).
pub struct Throttle {
    cfg: LogsTableConfig,
    bytes_logged: u64,
    reset_time: SystemTime,
    lines_so_far: u64,
    bytes_so_far: u64,
    skipped: u64,
    open: bool,
    partial_next_at: SystemTime,
    first_partial: bool,
}

fn push_message(out: &mut Vec<u8>, now: SystemTime, text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut ts = [b'0'; TIMESTAMP_LEN];
    format_timestamp_into(now, &mut ts);
    out.extend_from_slice(&ts);
    out.push(b' ');
    let _ = out.write_fmt(text);
    out.push(b'\n');
}

/// `(a - b)` in whole seconds, 0 if negative.
fn secs_between(a: SystemTime, b: SystemTime) -> u64 {
    a.duration_since(b).map(|d| d.as_secs()).unwrap_or(0)
}

impl Throttle {
    pub fn new(cfg: LogsTableConfig) -> Throttle {
        Throttle {
            cfg,
            bytes_logged: 0,
            reset_time: UNIX_EPOCH,
            lines_so_far: 0,
            bytes_so_far: 0,
            skipped: 0,
            open: false,
            partial_next_at: UNIX_EPOCH,
            first_partial: true,
        }
    }

    /// Start a new throttle period if the current one is over, reporting what it skipped.
    fn check_reset(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if now > self.reset_time {
            self.report_skipped(now, out);
            self.reset_time = now + self.cfg.throttle_period;
            self.bytes_so_far = 0;
            self.lines_so_far = 0;
            self.open = true;
        }
    }

    /// True if a line arriving at `now` would be skipped.
    pub fn is_silenced(&self, now: SystemTime) -> bool {
        !self.open && now <= self.reset_time
    }

    /// Count bytes skipped without looking at them (see `LineSplitter::discard_lines`).
    pub fn add_skipped(&mut self, bytes: u64) {
        self.skipped += bytes;
    }

    /// Report the skipped bytes now (at a period reset, or when the stream closes).
    pub fn report_skipped(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if self.skipped > 0 {
            push_message(
                out,
                now,
                format_args!("Skipped {} bytes of log", self.skipped),
            );
            self.skipped = 0;
        }
    }

    /// Bytes lost before reaching the throttle: reported at once if the stream is not
    /// silenced, otherwise with the bytes the throttle skipped at the end of the period.
    pub fn lost(&mut self, bytes: u64, now: SystemTime, out: &mut Vec<u8>) {
        self.check_reset(now, out);
        self.skipped += bytes;
        if self.open {
            self.report_skipped(now, out);
        }
    }

    /// Decide about one logs-table line (`<ts> text`, without `\n`) and append to `out`
    /// what goes to the logs table: the line, a throttle message instead, or nothing.
    pub fn admit(&mut self, line: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        self.check_reset(now, out);
        let size = line.len() as u64;
        if !self.open || !self.admit_segment(line, now, out) {
            self.skipped += size;
            return;
        }
        self.bytes_logged += size;
        self.bytes_so_far += size;
        self.lines_so_far += 1;
        if self.crossed_limit(now, out) {
            // The line that crossed a limit is replaced by the message.
            self.skipped += size;
        } else {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }

    /// The rule for the middle segments of long lines (`[...]text[...]`): one per
    /// `partial_line_period`, and the first one is replaced by a message saying so. False
    /// if `line` is a middle segment to skip.
    fn admit_segment(&mut self, line: &[u8], now: SystemTime, out: &mut Vec<u8>) -> bool {
        let text = match line.iter().position(|&b| b == b' ') {
            Some(i) => &line[i + 1..],
            None => &line[line.len()..],
        };
        let middle = text.starts_with(CUT) && text.ends_with(CUT) && text.len() >= 2 * CUT.len();
        if !middle {
            self.partial_next_at = UNIX_EPOCH;
            self.first_partial = true;
            return true;
        }
        if self.first_partial {
            self.first_partial = false;
            self.partial_next_at = now + self.cfg.partial_line_period;
            push_message(
                out,
                now,
                format_args!(
                    "Rate-limiting partial segments of long lines to one every {} seconds.",
                    self.cfg.partial_line_period.as_secs()
                ),
            );
            return false;
        }
        if now > self.partial_next_at {
            self.partial_next_at = now + self.cfg.partial_line_period;
            return true;
        }
        false
    }

    /// After a line was counted: if it crossed a limit, silence the stream and say why
    /// (returns true).
    fn crossed_limit(&mut self, now: SystemTime, out: &mut Vec<u8>) -> bool {
        let period = self.cfg.throttle_period.as_secs();
        if self.bytes_logged > self.cfg.limit_bytes_per_job {
            self.reset_time = now + Duration::from_secs(365 * 24 * 3600);
            self.open = false;
            push_message(
                out,
                now,
                format_args!(
                    "Exceeded log limit {} bytes (crunch_limit_log_bytes_per_job). Log will be truncated.{COMPLETE_LOG}",
                    self.cfg.limit_bytes_per_job
                ),
            );
        } else if self.bytes_so_far > self.cfg.throttle_bytes {
            self.open = false;
            push_message(
                out,
                now,
                format_args!(
                    "Exceeded rate {} bytes per {period} seconds (crunch_log_throttle_bytes). Logging will be silenced for the next {} seconds.{COMPLETE_LOG}",
                    self.cfg.throttle_bytes,
                    secs_between(self.reset_time, now)
                ),
            );
        } else if self.lines_so_far > self.cfg.throttle_lines {
            self.open = false;
            push_message(
                out,
                now,
                format_args!(
                    "Exceeded rate {} lines per {period} seconds (crunch_log_throttle_lines), logging will be silenced for the next {} seconds.{COMPLETE_LOG}",
                    self.cfg.throttle_lines,
                    secs_between(self.reset_time, now)
                ),
            );
        } else {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TS, t};
    use super::*;
    use crate::rfc3339::format_timestamp;

    fn admit_all(th: &mut Throttle, lines: &[String], now: SystemTime) -> String {
        let mut out = Vec::new();
        for l in lines {
            th.admit(l.as_bytes(), now, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    const COMPLETE: &str = " A complete log is still being written to Keep, and will be available when the job finishes.";

    #[test]
    fn throttle_lines_per_period_then_skipped_report() {
        let mut th = Throttle::new(LogsTableConfig::default());
        let lines: Vec<String> = (0..1030).map(|i| format!("{TS} l{i}")).collect();
        let out = admit_all(&mut th, &lines, t(0));
        let out_lines: Vec<&str> = out.lines().collect();
        assert_eq!(out_lines.len(), 1025);
        assert_eq!(out_lines[1023], format!("{TS} l1023"));
        assert_eq!(
            out_lines[1024],
            format!(
                "{} Exceeded rate 1024 lines per 60 seconds (crunch_log_throttle_lines), logging will be silenced for the next 60 seconds.{COMPLETE}",
                format_timestamp(t(0))
            )
        );
        // Still silenced 59 s later.
        assert_eq!(admit_all(&mut th, &lines[..1], t(59)), "");
        // After the period: what was skipped is reported, then lines pass again.
        let skipped: usize = lines[1024..].iter().map(|l| l.len()).sum::<usize>() + lines[0].len();
        let out = admit_all(&mut th, &[format!("{TS} back")], t(61));
        assert_eq!(
            out,
            format!(
                "{} Skipped {skipped} bytes of log\n{TS} back\n",
                format_timestamp(t(61))
            )
        );
    }

    #[test]
    fn throttle_bytes_per_period_says_how_long_it_is_silenced() {
        let cfg = LogsTableConfig {
            throttle_bytes: 100,
            ..LogsTableConfig::default()
        };
        let mut th = Throttle::new(cfg);
        let line = format!("{TS} {}", "x".repeat(40)); // 71 bytes
        let mut out = admit_all(&mut th, std::slice::from_ref(&line), t(0));
        out += &admit_all(&mut th, std::slice::from_ref(&line), t(15));
        assert_eq!(
            out,
            format!(
                "{line}\n{} Exceeded rate 100 bytes per 60 seconds (crunch_log_throttle_bytes). Logging will be silenced for the next 45 seconds.{COMPLETE}\n",
                format_timestamp(t(15))
            )
        );
    }

    #[test]
    fn throttle_job_limit_is_final() {
        let cfg = LogsTableConfig {
            limit_bytes_per_job: 50,
            ..LogsTableConfig::default()
        };
        let mut th = Throttle::new(cfg);
        let line = format!("{TS} {}", "y".repeat(30)); // 61 bytes
        let out = admit_all(&mut th, std::slice::from_ref(&line), t(0));
        assert_eq!(
            out,
            format!(
                "{} Exceeded log limit 50 bytes (crunch_limit_log_bytes_per_job). Log will be truncated.{COMPLETE}\n",
                format_timestamp(t(0))
            )
        );
        // A year of silence, not a period.
        assert_eq!(admit_all(&mut th, std::slice::from_ref(&line), t(3600)), "");
        let mut out = Vec::new();
        th.report_skipped(t(3600), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{} Skipped 122 bytes of log\n", format_timestamp(t(3600)))
        );
    }

    #[test]
    fn throttle_middle_segments_of_long_lines() {
        let mut th = Throttle::new(LogsTableConfig::default());
        let long_line = |n: usize| {
            vec![
                format!("{TS} first{n}[...]"),
                format!("{TS} [...]middle{n}a[...]"),
                format!("{TS} [...]middle{n}b[...]"),
                format!("{TS} [...]last{n}"),
            ]
        };
        let out = admit_all(&mut th, &long_line(1), t(0));
        assert_eq!(
            out,
            format!(
                "{TS} first1[...]\n{} Rate-limiting partial segments of long lines to one every 5 seconds.\n{TS} [...]last1\n",
                format_timestamp(t(0))
            )
        );
    }
}
