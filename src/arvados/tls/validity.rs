//! The validity period (notBefore, notAfter) of an X.509 certificate, read from its DER:
//! just enough of the structure to get there (RFC 5280 §4.1), for the verifier to check a
//! certificate it trusts as itself. Anything unexpected is `None`, never a panic.

use std::time::UNIX_EPOCH;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const EXPLICIT_VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// notBefore and notAfter as seconds since the Unix epoch (0 for times before it).
pub(super) fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (certificate, _) = element(cert, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&EXPLICIT_VERSION) {
        rest = element(rest, EXPLICIT_VERSION)?.1;
    }
    rest = element(rest, INTEGER)?.1; // serialNumber
    rest = element(rest, SEQUENCE)?.1; // signature algorithm
    rest = element(rest, SEQUENCE)?.1; // issuer
    let (period, _) = element(rest, SEQUENCE)?;
    let (not_before, rest) = time(period)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// The contents of the DER element with this tag at the start of `input`, and what follows.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len_byte, rest) = rest.split_first()?;
    let (len, rest) = if len_byte < 0x80 {
        (usize::from(len_byte), rest)
    } else {
        let n = usize::from(len_byte & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (digits, rest) = rest.split_at_checked(n)?;
        let len = digits
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    rest.split_at_checked(len)
}

/// A UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the only
/// forms RFC 5280 allows, as seconds since the epoch (0 for anything before it); and what
/// follows it.
fn time(input: &[u8]) -> Option<(u64, &[u8])> {
    let (year, digits, rest) = match *input.first()? {
        UTC_TIME => {
            let (text, rest) = element(input, UTC_TIME)?;
            let digits = text.strip_suffix(b"Z").filter(|d| d.len() == 12)?;
            let yy = number(&digits[..2])?;
            let year = if yy < 50 { 2000 + yy } else { 1900 + yy };
            (year, &digits[2..], rest)
        }
        GENERALIZED_TIME => {
            let (text, rest) = element(input, GENERALIZED_TIME)?;
            let digits = text.strip_suffix(b"Z").filter(|d| d.len() == 14)?;
            (number(&digits[..4])?, &digits[4..], rest)
        }
        _ => return None,
    };
    number(digits)?;
    if year < 1970 {
        return Some((0, rest));
    }
    let d = std::str::from_utf8(digits).ok()?;
    let text = format!(
        "{year:04}-{}-{}T{}:{}:{}Z",
        &d[0..2],
        &d[2..4],
        &d[4..6],
        &d[6..8],
        &d[8..10]
    );
    let at = humantime::parse_rfc3339(&text).ok()?;
    Some((at.duration_since(UNIX_EPOCH).ok()?.as_secs(), rest))
}

/// ASCII digits as a number.
fn number(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit()
            .then(|| acc.saturating_mul(10).saturating_add(u64::from(b - b'0')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_valid(from: (i32, u8, u8), to: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050, as RFC 5280 says.
        let der = cert_valid((2001, 9, 9), (2100, 3, 1));
        assert_eq!(validity(&der), Some((1_000_000_000 - 6_400, 4_107_542_400)));
        let der = cert_valid((1975, 1, 1), (2049, 12, 31));
        assert_eq!(validity(&der), Some((157_766_400, 2_524_521_600)));
    }

    #[test]
    fn times_before_the_epoch_are_zero_and_leap_seconds_count() {
        let der = cert_valid((1960, 1, 1), (1969, 12, 31));
        assert_eq!(validity(&der), Some((0, 0)));
        assert_eq!(
            time(b"\x18\x0f99991231235960Z").map(|t| t.0),
            Some(253_402_300_799)
        );
    }

    #[test]
    fn anything_else_is_none_never_a_panic() {
        let der = cert_valid((2020, 1, 1), (2030, 1, 1));
        for cut in 0..der.len() {
            // Every prefix whose validity is cut off must fail cleanly.
            let _ = validity(&der[..cut]);
        }
        assert_eq!(validity(&[]), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(validity(&[0x30, 0x89]), None);
        assert_eq!(time(b"\x17\x0d20010112000aZ"), None);
        assert_eq!(time(b"\x17\x0d201301120000Z"), None);
        assert_eq!(time(b"\x17\x0d200230120000Z"), None);
    }
}
