//! Names in manifests: the `\NNN` octal escapes of stream and file names, and how a name,
//! which is any bytes (as on a Unix filesystem), is shown in messages.
//!
//! The escaping rule, and why (issue 10: one non-UTF-8 file name cost a whole output):
//! - every byte in `[\000-\040:\\]` (which covers all ASCII whitespace) is escaped, as the Go
//!   SDK's `manifestEscape` and the Python SDK's `escape` do;
//! - a name that is valid UTF-8 is otherwise written as it is, so both SDKs read it as
//!   the same text;
//! - a name that is *not* valid UTF-8 has every byte ≥ 0x80 escaped as well. The manifest
//!   travels as JSON, which cannot carry those bytes raw. The Go SDK unescapes `\NNN` to the
//!   byte NNN, and gets the exact bytes back. The Python SDK unescapes `\NNN` to the code
//!   point NNN. So it gets a `str` whose Latin-1 encoding is the exact bytes, and opens the
//!   file by that `str`. Escaping only the invalid bytes would leave the valid multibyte
//!   sequences of a mixed name raw: Python would read those as other code points, and no
//!   single encoding would give the bytes back.
//! - a UTF-8 name holding a non-ASCII whitespace character (U+00A0 no-break space, U+2000
//!   en quad, U+3000 ideographic space…) is escaped the same way, every byte ≥ 0x80. The
//!   Python SDK splits manifest lines on `\s`, which matches those characters: one raw in a
//!   name made it refuse the whole collection. `char::is_whitespace` matches exactly the
//!   non-ASCII characters Python's `\s` does (U+0085, U+00A0, U+1680, U+2000-U+200A,
//!   U+2028, U+2029, U+202F, U+205F, U+3000).
//!
//! Splitting names into path components, and what they mean, is the parser's and the
//! writer's job.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::ManifestError;

/// Escape one stream or file name component for a manifest (see the module header).
pub fn escape_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    let octal = |out: &mut String, b: u8| out.push_str(&format!("\\{b:03o}"));
    match std::str::from_utf8(name) {
        Ok(text) if !text.chars().any(|c| !c.is_ascii() && c.is_whitespace()) => {
            for ch in text.chars() {
                match u8::try_from(ch) {
                    Ok(b) if needs_escape(b) => octal(&mut out, b),
                    _ => out.push(ch),
                }
            }
        }
        _ => {
            for &b in name {
                if b.is_ascii() && !needs_escape(b) {
                    out.push(char::from(b));
                } else {
                    octal(&mut out, b);
                }
            }
        }
    }
    out
}

/// The bytes every writer escapes: `[\000-\040:\\]`.
fn needs_escape(b: u8) -> bool {
    b <= b' ' || b == b':' || b == b'\\'
}

/// Undo [`escape_name`]: `\NNN` (three octal digits) is that byte, `\\` is a backslash. Any
/// other backslash is an error. The result is any bytes, UTF-8 or not.
pub fn unescape_name(escaped: &str) -> Result<Vec<u8>, ManifestError> {
    let b = escaped.as_bytes();
    if !b.contains(&b'\\') {
        return Ok(b.to_vec());
    }
    let bad = |reason: &str| ManifestError::BadEscape {
        name: escaped.to_string(),
        reason: reason.to_string(),
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let digits = b
                .get(i + 1..i + 4)
                .ok_or_else(|| bad("backslash not followed by three octal digits (name ends)"))?;
            if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                return Err(bad("backslash not followed by three octal digits"));
            }
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            let byte = u8::try_from(value).map_err(|_| bad("octal escape above \\377"))?;
            out.push(byte);
            i += 4;
        }
    }
    Ok(out)
}

/// A name or path of a collection as messages show it: `{:?}` of the result prints it
/// quoted, as text, with the bytes that are not UTF-8 as `\xNN`.
pub fn shown(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_whitespace_is_escaped_byte_by_byte() {
        assert_eq!(escape_name("a\u{a0}b".as_bytes()), "a\\302\\240b");
        assert_eq!(
            escape_name("café\u{3000}x".as_bytes()),
            "caf\\303\\251\\343\\200\\200x"
        );
        assert_eq!(escape_name("café".as_bytes()), "café");
        for ws in [
            0x85, 0xa0, 0x1680, 0x2000, 0x2005, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
        ] {
            let name = format!("x{}y", char::from_u32(ws).unwrap());
            let escaped = escape_name(name.as_bytes());
            assert!(escaped.is_ascii(), "{ws:#x}: {escaped}");
            assert_eq!(unescape_name(&escaped).unwrap(), name.as_bytes());
        }
        // Not whitespace to Python either: kept as they are.
        for other in ['\u{200b}', '\u{180e}', '\u{feff}', 'é'] {
            let name = format!("x{other}y");
            assert_eq!(escape_name(name.as_bytes()), name);
        }
    }

    #[test]
    fn escapes_round_trip() {
        assert_eq!(escape_name(b"a b"), "a\\040b");
        assert_eq!(escape_name(b"x:y"), "x\\072y");
        assert_eq!(escape_name(b"back\\slash"), "back\\134slash");
        assert_eq!(escape_name(b"tab\tnl\ncr\r"), "tab\\011nl\\012cr\\015");
        assert_eq!(escape_name(b"\0"), "\\000");
        assert_eq!(
            escape_name("plain-Ünïcode.txt".as_bytes()),
            "plain-Ünïcode.txt"
        );
        for name in [
            "a b",
            "x:y\\z",
            "all\t\n\r\x0b\x0c \x01:",
            "ünï cödé",
            ".",
            "",
        ] {
            assert_eq!(
                unescape_name(&escape_name(name.as_bytes())).unwrap(),
                name.as_bytes()
            );
        }
        assert_eq!(unescape_name("a\\\\b").unwrap(), b"a\\b");
        assert_eq!(unescape_name("\\056").unwrap(), b".");
        assert_eq!(unescape_name("\\303\\274").unwrap(), "ü".as_bytes());
        for bad in ["a\\", "a\\04", "a\\09x", "a\\400"] {
            assert!(unescape_name(bad).is_err(), "{bad:?}");
        }
    }

    /// Issue 10: a name that is not UTF-8 (`printf '\377\376'`) was refused, and with it the
    /// whole output. It round-trips, every byte ≥ 0x80 escaped so that the Python SDK's
    /// code-point reading of `\NNN` gives the bytes back as Latin-1.
    #[test]
    fn names_that_are_not_utf8_round_trip_with_every_high_byte_escaped() {
        assert_eq!(unescape_name("\\377\\376").unwrap(), b"\xff\xfe");
        for (name, escaped) in [
            (b"\xff\xfe".as_slice(), "\\377\\376"),
            // é (c3 a9) is escaped too: the name as a whole is not UTF-8.
            (b"\xc3\xa9 \xff:x", "\\303\\251\\040\\377\\072x"),
            (b"ok\x80", "ok\\200"),
        ] {
            assert_eq!(escape_name(name), escaped);
            assert_eq!(unescape_name(escaped).unwrap(), name);
            let latin1: String = name.iter().map(|&b| char::from(b)).collect();
            let python_sees: String = python_unescape(escaped);
            assert_eq!(python_sees, latin1, "{escaped}");
        }
        assert_eq!(format!("{:?}", shown(b"d/\xff\xfe")), "\"d/\\xFF\\xFE\"");
    }

    /// What the Python SDK's `_unescape_manifest_path` does: `\NNN` → `chr(NNN)`.
    fn python_unescape(escaped: &str) -> String {
        let mut out = String::new();
        let mut chars = escaped.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' {
                let digits: String = chars.by_ref().take(3).collect();
                let code = u32::from_str_radix(&digits, 8).unwrap();
                out.push(char::from_u32(code).unwrap());
            } else {
                out.push(c);
            }
        }
        out
    }
}
