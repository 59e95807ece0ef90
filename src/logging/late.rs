//! crunch-run's own lines once the pipeline has closed: its last line, and anything it has
//! to say after that.
//!
//! The last line of crunch-run.txt (the final state) must be in the saved log collection,
//! so it is spooled before the save; but whether it is true is known only after the save
//! (a failed save changes the state). So `LogPipeline::finish_with_last_line` spools it
//! without echoing it or posting it, and hands back a [`LastLine`]: `confirm` says it on
//! stderr and in the logs table; `correct` replaces it in the spooled crunch-run.txt (the
//! copy kept on disk when the save failed) with the true lines, and says those instead.
//! No place then shows a line the run took back.
//!
//! After that, [`LateLog`] says lines on stderr and in the logs table only (crunch-run.txt
//! is saved or kept by then), with the echo's format and the pipeline's logs-table
//! setting: with `--no-logs-table`, nothing is posted.

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use std::time::Duration;

use super::files::{Echo, stamp_lines};
use super::logs_table::{Chunk, ClosingSink, LogsTableReport};
use super::pipeline::logs_table_shortfall;
use super::timestamp::Clock;

/// crunch-run's lines after the pipeline closed: to stderr (if the pipeline echoed) and to
/// the logs table (if it had one). The logs table's thread posts them, after what the
/// streams left, never throttled; nothing here waits for it until `close`.
pub struct LateLog {
    echo: Option<Echo>,
    logs_table: Option<LateTable>,
    clock: Arc<dyn Clock>,
}

/// The logs table as the streams closed: its thread, how long the close may take in
/// all, and what it lacked then (already said in crunch-run.txt).
pub(super) struct LateTable {
    pub sink: ClosingSink,
    pub waited: Duration,
    pub said: LogsTableReport,
}

impl LateLog {
    pub(super) fn new(
        echo: Option<Echo>,
        logs_table: Option<LateTable>,
        clock: Arc<dyn Clock>,
    ) -> LateLog {
        LateLog {
            echo,
            logs_table,
            clock,
        }
    }

    /// Say `text`, each line timestamped now. Never fails, never waits for the logs table.
    pub fn line(&mut self, text: &str) {
        let mut stamped = Vec::new();
        stamp_lines(self.clock.now(), text, &mut stamped);
        self.say(&stamped);
    }

    /// Say lines already stamped.
    fn say(&mut self, stamped: &[u8]) {
        self.echo(stamped);
        if let Some(table) = &self.logs_table {
            table.sink.send_kept(Chunk {
                event_type: "crunch-run",
                data: stamped.to_vec(),
                dropped_before: 0,
                at_line_start: true,
            });
        }
    }

    /// Wait (until the logs table's deadline) for the lines to be posted; say on stderr
    /// what the logs table lacks beyond what crunch-run.txt already said.
    pub fn close(mut self) {
        let Some(table) = self.logs_table.take() else {
            return;
        };
        let mut report = table.sink.wait();
        report.unposted_bytes = report
            .unposted_bytes
            .saturating_sub(table.said.unposted_bytes);
        report.failed_posts = report.failed_posts.saturating_sub(table.said.failed_posts);
        if let Some(note) = logs_table_shortfall(0, &report, table.waited) {
            let mut stamped = Vec::new();
            stamp_lines(self.clock.now(), &note, &mut stamped);
            self.echo(&stamped);
        }
    }

    fn echo(&mut self, stamped: &[u8]) {
        if let Some((w, prefixer, buf)) = &mut self.echo {
            buf.clear();
            prefixer.prefix(stamped, buf);
            let _ = w.write_all(buf).and_then(|()| w.flush());
        }
    }
}

/// The last line of crunch-run.txt, spooled but not yet said anywhere else.
pub struct LastLine {
    late: LateLog,
    /// The spooled crunch-run.txt, and where the line starts in it.
    file: PathBuf,
    offset: u64,
    stamped: Vec<u8>,
}

impl LastLine {
    pub(super) fn new(late: LateLog, file: PathBuf, offset: u64, stamped: Vec<u8>) -> LastLine {
        LastLine {
            late,
            file,
            offset,
            stamped,
        }
    }

    /// The line was true: say it. Returns the late log for what comes after.
    pub fn confirm(mut self) -> LateLog {
        self.late.say(&self.stamped);
        self.late
    }

    /// The line was not true: replace it in the spooled crunch-run.txt with `text` (its
    /// lines timestamped now), and say `text` instead. A failure to rewrite the file is
    /// said too. Returns the late log for what comes after.
    pub fn correct(self, text: &str) -> LateLog {
        self.correct_after(&[], text)
    }

    /// As `correct`, with `before` written into the spooled crunch-run.txt ahead of `text`:
    /// lines already said elsewhere after the pipeline closed (such as retries of the log
    /// save), each stamped with when it was said, and not said again.
    pub fn correct_after(mut self, before: &[(SystemTime, String)], text: &str) -> LateLog {
        let mut kept = Vec::new();
        for (when, line) in before {
            stamp_lines(*when, line, &mut kept);
        }
        let mut stamped = Vec::new();
        stamp_lines(self.late.clock.now(), text, &mut stamped);
        kept.extend_from_slice(&stamped);
        if let Err(e) = self.rewrite(&kept) {
            let file = self.file.display();
            stamped.clear();
            let msg = format!("{text}\nWarning: cannot correct the last line of {file}: {e}");
            stamp_lines(self.late.clock.now(), &msg, &mut stamped);
        }
        self.late.say(&stamped);
        self.late
    }

    fn rewrite(&self, stamped: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(&self.file)?;
        file.set_len(self.offset)?;
        file.seek(SeekFrom::Start(self.offset))?;
        file.write_all(stamped)
    }
}
