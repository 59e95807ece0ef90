//! The one timestamp format crunch-run writes: RFC 3339 in UTC with always nine digits of
//! nanoseconds, `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (Go's fixed-width `RFC3339Nano`).
//!
//! It is a wire format, not a logging detail: log lines start with it, and the stores send
//! it as `trash_at`/`created_at`. So it lives in a leaf that both can import. Parsing is
//! left to the servers that read it.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of a formatted timestamp, without the space that follows it in a log line.
pub const TIMESTAMP_LEN: usize = 30;

/// The latest instant the format can show (9999-12-31T23:59:59.999999999Z).
const MAX_FORMATTABLE_SECS: u64 = 253_402_300_799;

/// Format `t` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` into a fixed buffer, without allocating.
/// Times before 1970 or after 9999 are clamped to the nearest representable instant.
pub fn format_timestamp_into(t: SystemTime, buf: &mut [u8; TIMESTAMP_LEN]) {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let max = Duration::new(MAX_FORMATTABLE_SECS, 999_999_999);
    let t = UNIX_EPOCH + since_epoch.min(max);
    let mut cursor: &mut [u8] = &mut buf[..];
    // Cannot fail once clamped: the output is exactly TIMESTAMP_LEN bytes.
    let _ = write!(cursor, "{}", humantime::format_rfc3339_nanos(t));
}

/// Format `t` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC, always nine fractional digits).
pub fn format_timestamp(t: SystemTime) -> String {
    let mut buf = *b"1970-01-01T00:00:00.000000000Z";
    format_timestamp_into(t, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    // 2015-12-29T15:51:45Z, the instant of the Go logging tests.
    const T0: u64 = 1_451_404_305;

    #[test]
    fn format_is_fixed_width_nanoseconds() {
        assert_eq!(
            format_timestamp(at(T0, 1)),
            "2015-12-29T15:51:45.000000001Z"
        );
        assert_eq!(
            format_timestamp(at(T0, 0)),
            "2015-12-29T15:51:45.000000000Z"
        );
        assert_eq!(
            format_timestamp(at(T0, 999_999_999)),
            "2015-12-29T15:51:45.999999999Z"
        );
        assert_eq!(
            format_timestamp(at(T0, 120_000_000)),
            "2015-12-29T15:51:45.120000000Z"
        );
        for t in [at(0, 0), at(T0, 0), at(T0, 5), at(4_102_444_800, 1)] {
            assert_eq!(format_timestamp(t).len(), TIMESTAMP_LEN);
        }
    }

    #[test]
    fn format_clamps_instead_of_panicking() {
        let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            format_timestamp(before_epoch),
            "1970-01-01T00:00:00.000000000Z"
        );
        let far_future = UNIX_EPOCH + Duration::from_secs(MAX_FORMATTABLE_SECS + 1000);
        assert_eq!(
            format_timestamp(far_future),
            "9999-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn the_buffer_form_writes_the_same_bytes() {
        let mut buf = [b'x'; TIMESTAMP_LEN];
        format_timestamp_into(at(T0, 42), &mut buf);
        assert_eq!(&buf[..], format_timestamp(at(T0, 42)).as_bytes());
    }
}
