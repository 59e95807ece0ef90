// Helpers for the fake Arvados server (tests/common/fake_arvados.rs): hashing
// (md5, SHA-1, HMAC-SHA1 for Keep permission signatures), URL/form decoding,
// manifest validation, signature stripping and the portable data hash rule of
// docs/arvados-reference.md §3.  Kept separate so the server file stays about
// HTTP and API state; everything here is pure and deterministic.
//
// SHA-1 is implemented by hand because no SHA-1 crate is a dependency; it is
// only used for the fake's own block signatures and is checked against the
// RFC 2202 HMAC-SHA1 vectors in tests/fake_server_selftest.rs.

use md5::{Digest, Md5};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// md5 of `data` as 32 lower-case hex digits.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// SHA-1 digest (FIPS 180-4).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | ((!b) & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let temp = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = temp;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

/// HMAC-SHA1 (RFC 2104) of `data` under `key`.
pub fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&sha1(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    inner.extend_from_slice(data);
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&sha1(&inner));
    sha1(&outer)
}

/// Blob signature TTL used by the fake (Arvados default, 2 weeks).
pub const BLOB_SIGNATURE_TTL: u64 = 1_209_600;

/// The token a Keep signature is bound to: the secret part of a v2 token
/// (`v2/<uuid>/<secret>[/...]`), otherwise the token itself — as the Go SDK's
/// `SignLocator` does.
pub fn signing_token(token: &str) -> &str {
    if let Some(rest) = token.strip_prefix("v2/") {
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() >= 2 {
            return parts[1];
        }
    }
    token
}

/// `hex(HMAC-SHA1(key, hash "@" token "@" expiryHex "@" ttlHex))`
/// (docs/arvados-reference.md §2.3 "Signature").
pub fn permission_signature(key: &[u8], hash: &str, token: &str, expiry_hex: &str) -> String {
    let msg = format!(
        "{hash}@{}@{expiry_hex}@{:x}",
        signing_token(token),
        BLOB_SIGNATURE_TTL
    );
    hex(&hmac_sha1(key, msg.as_bytes()))
}

/// `<hash>+<size>+A<sig>@<expiry>` valid for `token` until `expiry` (unix s).
pub fn sign_locator(key: &[u8], hash: &str, size: u64, token: &str, expiry: u64) -> String {
    let expiry_hex = format!("{expiry:08x}");
    let sig = permission_signature(key, hash, token, &expiry_hex);
    format!("{hash}+{size}+A{sig}@{expiry_hex}")
}

/// Why a locator's signature is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureProblem {
    Missing,
    Malformed,
    Expired,
    Invalid,
}

/// Check the `+A` hint of `locator` for `token` at time `now` (unix s).
pub fn check_signature(
    key: &[u8],
    locator: &Locator,
    token: &str,
    now: u64,
) -> Result<(), SignatureProblem> {
    let hint = locator
        .hints
        .iter()
        .find(|h| h.starts_with('A'))
        .ok_or(SignatureProblem::Missing)?;
    let (sig, expiry_hex) = hint[1..]
        .split_once('@')
        .ok_or(SignatureProblem::Malformed)?;
    if sig.len() != 40
        || !is_lower_hex(sig)
        || expiry_hex.len() != 8
        || !expiry_hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(SignatureProblem::Malformed);
    }
    let expiry = u64::from_str_radix(expiry_hex, 16).map_err(|_| SignatureProblem::Malformed)?;
    if expiry < now {
        return Err(SignatureProblem::Expired);
    }
    if permission_signature(key, &locator.hash, token, expiry_hex) != sig {
        return Err(SignatureProblem::Invalid);
    }
    Ok(())
}

pub fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A parsed block locator `hash+size(+hint)*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    pub hash: String,
    pub size: u64,
    pub hints: Vec<String>,
}

impl Locator {
    /// Parse per `^([0-9a-f]{32})\+([0-9]+)(\+[A-Z][-A-Za-z0-9@_]*)*$`.
    pub fn parse(tok: &str) -> Option<Locator> {
        let mut parts = tok.split('+');
        let hash = parts.next()?;
        if hash.len() != 32 || !is_lower_hex(hash) {
            return None;
        }
        let size = parts.next()?;
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let size: u64 = size.parse().ok()?;
        let mut hints = Vec::new();
        for h in parts {
            let mut chars = h.chars();
            let first = chars.next()?;
            if !first.is_ascii_uppercase() {
                return None;
            }
            if !chars.all(|c| c.is_ascii_alphanumeric() || "-@_".contains(c)) {
                return None;
            }
            hints.push(h.to_string());
        }
        Some(Locator {
            hash: hash.to_string(),
            size,
            hints,
        })
    }

    /// `hash+size` without hints.
    pub fn bare(&self) -> String {
        format!("{}+{}", self.hash, self.size)
    }
}

/// The md5 of zero bytes: Arvados never stores or fetches this block.
pub const EMPTY_BLOCK_HASH: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// One stream line of a manifest.
#[derive(Debug, Clone)]
pub struct Stream {
    pub name: String,
    pub locators: Vec<Locator>,
    /// (position, size, unescaped file name)
    pub files: Vec<(u64, u64, String)>,
}

/// Decode `\NNN` octal escapes and `\\` in a manifest token (lossy where not UTF-8).
pub fn unescape(tok: &str) -> Result<String, String> {
    let b = tok.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if i + 1 < b.len() && b[i + 1] == b'\\' {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (b[i + 1] - b'0') as u32 * 64
                    + (b[i + 2] - b'0') as u32 * 8
                    + (b[i + 3] - b'0') as u32;
                if v > 255 {
                    return Err(format!("bad escape in {tok:?}"));
                }
                out.push(v as u8);
                i += 4;
                continue;
            }
            return Err(format!("bad escape in {tok:?}"));
        }
        out.push(b[i]);
        i += 1;
    }
    // The API server takes any escaped bytes (file names are bytes); the fake keeps the
    // name as text, with U+FFFD for the bytes that are not UTF-8.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Parse and validate a manifest (docs/arvados-reference.md §3.1). The empty
/// manifest is valid. Every line must end in "\n", have a stream name
/// starting with ".", at least one locator, at least one file segment, and
/// every segment must lie inside the stream's blocks.
pub fn parse_manifest(text: &str) -> Result<Vec<Stream>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if !text.ends_with('\n') {
        return Err("manifest does not end with a newline".into());
    }
    let mut streams = Vec::new();
    for (lineno, line) in text[..text.len() - 1].split('\n').enumerate() {
        let lineno = lineno + 1;
        if line.is_empty() {
            return Err(format!("line {lineno}: empty line"));
        }
        if line.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(format!("line {lineno}: control character"));
        }
        let toks: Vec<&str> = line.split(' ').collect();
        if toks.iter().any(|t| t.is_empty()) {
            return Err(format!(
                "line {lineno}: empty token (double or trailing space)"
            ));
        }
        let name = unescape(toks[0]).map_err(|e| format!("line {lineno}: {e}"))?;
        if !(name == "." || name.starts_with("./"))
            || name.ends_with('/')
            || name.contains("//")
            || name.split('/').skip(1).any(|c| c == "." || c == "..")
        {
            return Err(format!("line {lineno}: invalid stream name {:?}", toks[0]));
        }
        let mut i = 1;
        let mut locators = Vec::new();
        while i < toks.len() {
            match Locator::parse(toks[i]) {
                Some(l) => locators.push(l),
                None => break,
            }
            i += 1;
        }
        if locators.is_empty() {
            return Err(format!("line {lineno}: no block locator"));
        }
        let total: u64 = locators.iter().map(|l| l.size).sum();
        let mut files = Vec::new();
        for tok in &toks[i..] {
            let mut parts = tok.splitn(3, ':');
            let (p, s, n) = match (parts.next(), parts.next(), parts.next()) {
                (Some(p), Some(s), Some(n)) => (p, s, n),
                _ => return Err(format!("line {lineno}: invalid token {tok:?}")),
            };
            let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
            if !digits(p) || !digits(s) || n.is_empty() {
                return Err(format!("line {lineno}: invalid file segment {tok:?}"));
            }
            let (p, s): (u64, u64) = match (p.parse(), s.parse()) {
                (Ok(p), Ok(s)) => (p, s),
                _ => return Err(format!("line {lineno}: invalid file segment {tok:?}")),
            };
            if p.checked_add(s).is_none_or(|end| end > total) {
                return Err(format!(
                    "line {lineno}: segment {tok:?} exceeds stream size {total}"
                ));
            }
            let fname = unescape(n).map_err(|e| format!("line {lineno}: {e}"))?;
            if fname.starts_with('/')
                || fname.ends_with('/')
                || fname.contains("//")
                || (fname.split('/').any(|c| c == "..")
                    || (fname != "." && fname.split('/').any(|c| c == ".")))
            {
                return Err(format!("line {lineno}: invalid file name {n:?}"));
            }
            files.push((p, s, fname));
        }
        if files.is_empty() {
            return Err(format!("line {lineno}: no file segments"));
        }
        streams.push(Stream {
            name,
            locators,
            files,
        });
    }
    Ok(streams)
}

/// Apply `f` to every locator token of every line (tokens after the stream
/// name that parse as locators), rebuilding lines with single spaces.
fn map_locators(text: &str, f: impl Fn(&Locator) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line).trim_end();
        let mut first = true;
        let mut in_locators = true;
        for tok in body.split(' ').filter(|t| !t.is_empty()) {
            if !first {
                out.push(' ');
            }
            if !first && in_locators {
                if let Some(l) = Locator::parse(tok) {
                    out.push_str(&f(&l));
                    continue;
                }
                in_locators = false;
            }
            first = false;
            out.push_str(tok);
        }
        out.push('\n');
    }
    out
}

/// Remove `+A` permission hints (Ruby `strip_signatures`): the form the API
/// stores.
pub fn strip_signatures(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    map_locators(text, |l| {
        let mut s = l.bare();
        for h in l.hints.iter().filter(|h| !h.starts_with('A')) {
            s.push('+');
            s.push_str(h);
        }
        s
    })
}

/// Every locator reduced to `hash+size` (Ruby `portable_manifest_text`).
pub fn portable_manifest(text: &str) -> String {
    if text.is_empty() {
        return String::new();
    }
    map_locators(text, |l| l.bare())
}

/// `md5(portable) + "+" + len(portable)` (docs/arvados-reference.md §3.2).
pub fn portable_data_hash(text: &str) -> String {
    let p = portable_manifest(text);
    format!("{}+{}", md5_hex(p.as_bytes()), p.len())
}

/// Is `s` shaped like a portable data hash (`<md5>+<size>`)?
pub fn looks_like_pdh(s: &str) -> bool {
    match s.split_once('+') {
        Some((h, n)) => {
            h.len() == 32
                && is_lower_hex(h)
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Sign every locator in `text` (which may or may not carry hints) for
/// `token`; existing `+A` hints are replaced. Empty-block locators are left
/// unsigned, as the API does not need them signed.
pub fn sign_manifest(key: &[u8], text: &str, token: &str, expiry: u64) -> String {
    if text.is_empty() {
        return String::new();
    }
    map_locators(text, |l| {
        let mut s = if l.hash == EMPTY_BLOCK_HASH && l.size == 0 {
            l.bare()
        } else {
            sign_locator(key, &l.hash, l.size, token, expiry)
        };
        for h in l.hints.iter().filter(|h| !h.starts_with('A')) {
            s.push('+');
            s.push_str(h);
        }
        s
    })
}

/// Percent-decoding for query strings and form bodies (`+` means space).
pub fn url_decode(s: &str) -> String {
    percent_decode(s, true)
}

/// Percent-decoding for URL paths (`+` stays `+`, as in a PDH).
pub fn path_decode(s: &str) -> String {
    percent_decode(s, false)
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(v);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode a path segment / query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parse `a=1&b=%22x%22` into (key, value) pairs.
pub fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

/// Ruby `inspect` of a JSON value, for whitelist error messages:
/// `nil`, `"str"`, `0`, `true`, `{"k"=>"v"}`, `["a"]`.
pub fn ruby_inspect(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(ruby_inspect).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{k:?}=>{}", ruby_inspect(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Parse an RFC 3339 timestamp (`2024-05-15T09:39:29.123456789-04:00`,
/// `...Z`) to unix seconds (fraction dropped). Go's time.Time JSON and
/// Ruby both produce this shape.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let v = oh * 3600 + om * 60;
            if rest.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    // days from civil (Howard Hinnant)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se - offset)
}
