//! Manifests and portable data hashes: parse, build (normalized), and hash, following
//! Arvados' own rules (reference §3).
//!
//! - [`Locator`]: one block locator `md5hex+size(+Hint)*`.
//! - [`portable_data_hash`]: md5 of the manifest with every locator hint stripped, plus its
//!   length (the API server's `compute_pdh`).
//! - [`escape_name`] / [`unescape_name`] (in `names`): the `\NNN` octal escapes of stream and
//!   file names, which are bytes, UTF-8 or not.
//! - [`Manifest`]: a validated parse of a manifest, and its files as ranges of blocks.
//! - [`single_stream_manifest`] / [`normalized_manifest`] (in `write`): the normalized
//!   manifest of files written block by block, or of pieces of blocks (what the SDKs'
//!   `normalize()` would produce for them).

mod names;
mod write;

pub use names::{escape_name, shown, unescape_name};
pub use write::{normalized_manifest, single_stream_manifest};

use std::collections::HashMap;
use std::fmt;

use md5::{Digest, Md5};

/// The locator of the empty block, used wherever a stream has no data.
pub const EMPTY_BLOCK_LOCATOR: &str = "d41d8cd98f00b204e9800998ecf8427e+0";

/// What is wrong with a manifest or locator. Messages name the line (1-based) and token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid locator {token:?}: {reason}")]
    BadLocator { token: String, reason: String },
    #[error("manifest line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("manifest line {line}: token {token:?}: {reason}")]
    BadToken {
        line: usize,
        token: String,
        reason: String,
    },
    #[error("manifest does not end with a newline")]
    NoFinalNewline,
    #[error("bad escape in name {name:?}: {reason}")]
    BadEscape { name: String, reason: String },
}

/// Lowercase hex md5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// Lowercase hex of some bytes (digests).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn is_lower_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A block locator: `hash+size` followed by hints such as `+A<sig>@<expiry>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locator {
    /// 32 lowercase hex digits.
    pub hash: String,
    pub size: u64,
    /// The hints without their leading `+`, e.g. `"Aabc…@5693216f"`, in order.
    pub hints: Vec<String>,
}

impl Locator {
    /// Parse a locator token; the rule is
    /// `^([0-9a-f]{32})\+([0-9]+)(\+[A-Z][-A-Za-z0-9@_]*)*$`.
    pub fn parse(token: &str) -> Result<Locator, ManifestError> {
        let bad = |reason: &str| ManifestError::BadLocator {
            token: token.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = token.split('+');
        let hash = parts.next().unwrap_or_default();
        if !is_lower_hex32(hash) {
            return Err(bad("does not start with 32 lowercase hex digits"));
        }
        let size_text = parts.next().ok_or_else(|| bad("no +size after the hash"))?;
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("size is not a decimal number"));
        }
        let size: u64 = size_text.parse().map_err(|_| bad("size is too large"))?;
        let mut hints = Vec::new();
        for hint in parts {
            let mut bytes = hint.bytes();
            match bytes.next() {
                Some(b'A'..=b'Z') => {}
                _ => return Err(bad("a hint must start with an uppercase letter")),
            }
            if !bytes.all(|b| b.is_ascii_alphanumeric() || b"-@_".contains(&b)) {
                return Err(bad(
                    "a hint may only contain letters, digits, '-', '@', '_'",
                ));
            }
            hints.push(hint.to_string());
        }
        Ok(Locator {
            hash: hash.to_string(),
            size,
            hints,
        })
    }

    /// `hash+size`, without any hints.
    pub fn portable(&self) -> String {
        format!("{}+{}", self.hash, self.size)
    }

    /// Whether this is the empty block `d41d8cd98f00b204e9800998ecf8427e+0`.
    pub fn is_empty_block(&self) -> bool {
        self.size == 0 && self.hash == EMPTY_BLOCK_LOCATOR[..32]
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.hash, self.size)?;
        for hint in &self.hints {
            write!(f, "+{hint}")?;
        }
        Ok(())
    }
}

/// Whether a manifest token (not the first of its line) is a block locator, in the sense of
/// the Go SDK's `PortableDataHash`: 32 chars without `:` then `+`, not starting with `.`.
fn looks_like_locator(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() > 33 && b[32] == b'+' && !b[..32].contains(&b':') && b[0] != b'.'
}

/// The manifest text with every hint removed from every locator (`hash+size` only).
pub fn portable_manifest_text(manifest_text: &str) -> String {
    let mut out = String::with_capacity(manifest_text.len());
    for (i, line) in manifest_text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (j, token) in line.split(' ').enumerate() {
            if j > 0 {
                out.push(' ');
            }
            if j > 0 && looks_like_locator(token) {
                // Keep `hash+size`: cut at the first '+' after the size's '+'.
                let end = token[33..].find('+').map_or(token.len(), |k| 33 + k);
                out.push_str(&token[..end]);
            } else {
                out.push_str(token);
            }
        }
    }
    out
}

/// The portable data hash of a manifest: md5 of the hint-stripped text, `+`, its length.
/// `""` gives `d41d8cd98f00b204e9800998ecf8427e+0`.
pub fn portable_data_hash(manifest_text: &str) -> String {
    let portable = portable_manifest_text(manifest_text);
    format!("{}+{}", md5_hex(portable.as_bytes()), portable.len())
}

/// A byte range inside one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRange {
    /// The locator token as it appears in the manifest (signature included).
    pub locator: String,
    /// Offset of the range within the block.
    pub offset: u64,
    pub len: u64,
}

/// One file of a manifest: its path and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// `name` for files of the `.` stream, `dir/sub/name` otherwise: unescaped, any bytes
    /// but `/` and NUL-free only if the manifest says so (show it with [`shown`]).
    pub path: Vec<u8>,
    pub size: u64,
    /// The file's bytes, in order. Empty for an empty file.
    pub ranges: Vec<BlockRange>,
}

/// One `pos:len:name` token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    pos: u64,
    len: u64,
    /// Unescaped.
    name: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stream {
    /// Unescaped, `.` or `./dir/…`.
    name: Vec<u8>,
    /// Locator tokens as written.
    locators: Vec<String>,
    /// Offset of each block within the stream, and the stream's total length at the end.
    starts: Vec<u64>,
    segments: Vec<Segment>,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    streams: Vec<Stream>,
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Manifest {
    /// Parse and validate manifest text: each line is a stream name (`.` or `./…`), one or
    /// more locators, one or more `pos:len:name` segments within the stream's data, single
    /// spaces, `\n` at the end of every line. `""` is the empty manifest.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.is_empty() {
            return Ok(Manifest { streams: vec![] });
        }
        let Some(body) = text.strip_suffix('\n') else {
            return Err(ManifestError::NoFinalNewline);
        };
        let mut streams = Vec::new();
        for (idx, line) in body.split('\n').enumerate() {
            streams.push(Self::parse_line(idx + 1, line)?);
        }
        Ok(Manifest { streams })
    }

    fn parse_line(line_no: usize, line: &str) -> Result<Stream, ManifestError> {
        let bad_line = |reason: &str| ManifestError::BadLine {
            line: line_no,
            reason: reason.to_string(),
        };
        let bad_token = |token: &str, reason: String| ManifestError::BadToken {
            line: line_no,
            token: token.to_string(),
            reason,
        };
        if line.is_empty() {
            return Err(bad_line("empty line"));
        }
        let mut tokens = line.split(' ');
        let raw_name = tokens.next().unwrap_or_default();
        let mut stream = Stream {
            name: stream_name(raw_name).map_err(|reason| bad_token(raw_name, reason))?,
            locators: Vec::new(),
            starts: vec![0],
            segments: Vec::new(),
        };
        for token in tokens {
            if token.is_empty() {
                return Err(bad_line("empty token (double or trailing space)"));
            }
            let added = if stream.segments.is_empty() && !token.contains(':') {
                stream.push_locator(token)
            } else {
                stream.push_segment(token)
            };
            added.map_err(|reason| bad_token(token, reason))?;
        }
        if stream.locators.is_empty() {
            return Err(bad_line("stream has no locators"));
        }
        if stream.segments.is_empty() {
            return Err(bad_line("stream has no file segments"));
        }
        Ok(stream)
    }

    /// Every file, in order of first appearance, with its byte ranges. Several segments of
    /// the same path (also from different lines with the same stream name) concatenate.
    /// A segment whose name ends in `.` (`\056`, the empty-directory marker) is not a file:
    /// it is left out, and if it carries data, [`Manifest::data_named_dot`] says so.
    pub fn files(&self) -> Vec<ManifestFile> {
        let mut files: Vec<ManifestFile> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        for stream in &self.streams {
            for seg in &stream.segments {
                let Named::File(path) = stream.named(&seg.name) else {
                    continue;
                };
                let i = *index.entry(path.clone()).or_insert_with(|| {
                    files.push(ManifestFile {
                        path,
                        size: 0,
                        ranges: vec![],
                    });
                    files.len() - 1
                });
                let file = &mut files[i];
                file.size += seg.len;
                stream.ranges_into(seg.pos, seg.len, &mut file.ranges);
            }
        }
        files
    }

    /// The segments named `.` that carry data, as `(directory, bytes)`, in order. No SDK
    /// reads them as a file (Python takes them for the empty-directory marker, Go refuses
    /// the collection) and no filesystem can hold a file named `.`: whoever copies such a
    /// collection leaves them out and says so.
    pub fn data_named_dot(&self) -> Vec<(Vec<u8>, u64)> {
        let mut found = Vec::new();
        for stream in &self.streams {
            for seg in stream.segments.iter().filter(|s| s.len > 0) {
                if let Named::Dir(dir) = stream.named(&seg.name) {
                    found.push((dir, seg.len));
                }
            }
        }
        found
    }

    /// All locator tokens, in order, as written (duplicates included).
    pub fn locators(&self) -> impl Iterator<Item = &str> {
        self.streams
            .iter()
            .flat_map(|s| s.locators.iter().map(String::as_str))
    }
}

/// What a segment name means in its stream.
enum Named {
    /// A file at this path (relative to the collection root, `.` components dropped).
    File(Vec<u8>),
    /// The name ends in `.`: the marker that keeps this directory (`""`: the root).
    Dir(Vec<u8>),
}

/// The components of a path or name, split at `/`.
fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/')
}

/// The unescaped name of a stream from its token: `.` or `./a/b`, without empty, `.` or
/// `..` components. `Err` says why not.
fn stream_name(raw: &str) -> Result<Vec<u8>, String> {
    let name = unescape_name(raw).map_err(|e| e.to_string())?;
    if name == b"." {
        return Ok(name);
    }
    let Some(rest) = name.strip_prefix(b"./") else {
        return Err("stream name must be \".\" or start with \"./\"".to_string());
    };
    if components(rest).any(|c| c.is_empty() || c == b"." || c == b"..") {
        return Err("stream name has an empty, \".\" or \"..\" component".to_string());
    }
    Ok(name)
}

impl Stream {
    /// The stream's directory relative to the collection root (`""` for `.`).
    fn dir(&self) -> &[u8] {
        self.name.strip_prefix(b"./").unwrap_or_default()
    }

    /// What the segment name `name` of this stream means.
    fn named(&self, name: &[u8]) -> Named {
        let is_marker = components(name).last() == Some(b".".as_slice());
        let mut path = self.dir().to_vec();
        for c in components(name).filter(|c| *c != b".") {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(c);
        }
        if is_marker {
            Named::Dir(path)
        } else {
            Named::File(path)
        }
    }

    /// The stream's length so far: the end of its last block.
    fn len(&self) -> u64 {
        self.starts[self.starts.len() - 1]
    }

    /// Add one locator token to the stream's blocks. `Err` says what is wrong with it.
    fn push_locator(&mut self, token: &str) -> Result<(), String> {
        let loc = Locator::parse(token).map_err(|e| match e {
            ManifestError::BadLocator { reason, .. } => reason,
            other => other.to_string(),
        })?;
        let end = self
            .len()
            .checked_add(loc.size)
            .ok_or_else(|| "stream too long".to_string())?;
        self.starts.push(end);
        self.locators.push(token.to_string());
        Ok(())
    }

    /// Add one `pos:len:name` token, which must lie within the stream's data and name a
    /// file without empty or `..` components. `Err` says what is wrong with it.
    fn push_segment(&mut self, token: &str) -> Result<(), String> {
        if self.locators.is_empty() {
            return Err("file segment before any locator".to_string());
        }
        let mut parts = token.splitn(3, ':');
        let (Some(p), Some(l), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected a locator or pos:len:name".to_string());
        };
        let (Some(pos), Some(len)) = (parse_decimal(p), parse_decimal(l)) else {
            return Err("segment position and length must be decimal".to_string());
        };
        let total = self.len();
        if pos.checked_add(len).is_none_or(|end| end > total) {
            return Err(format!("segment extends past the stream's {total} bytes"));
        }
        if n.is_empty() {
            return Err("empty file name".to_string());
        }
        let name = unescape_name(n).map_err(|e| e.to_string())?;
        if components(&name).any(|c| c.is_empty() || c == b"..") {
            return Err("file name has an empty or \"..\" path component".to_string());
        }
        self.segments.push(Segment { pos, len, name });
        Ok(())
    }

    /// Append the block ranges covering `[pos, pos+len)` of this stream.
    fn ranges_into(&self, pos: u64, len: u64, out: &mut Vec<BlockRange>) {
        let end = pos + len;
        // First block whose end is beyond pos.
        let mut b = self.starts[1..].partition_point(|&block_end| block_end <= pos);
        let mut at = pos;
        while at < end && b < self.locators.len() {
            let (bstart, bend) = (self.starts[b], self.starts[b + 1]);
            let take_end = end.min(bend);
            if take_end > at {
                // Merge with the previous range if it is the same block and contiguous.
                match out.last_mut() {
                    Some(last)
                        if last.locator == self.locators[b]
                            && last.offset + last.len == at - bstart =>
                    {
                        last.len += take_end - at;
                    }
                    _ => out.push(BlockRange {
                        locator: self.locators[b].clone(),
                        offset: at - bstart,
                        len: take_end - at,
                    }),
                }
                at = take_end;
            }
            b += 1;
        }
    }
}

impl Manifest {
    /// Every directory of the collection, relative to its root, sorted, the root left out:
    /// stream names, the directories in file names, those holding a `.` marker (how an
    /// empty directory is written), and all their parents.
    pub fn dirs(&self) -> Vec<Vec<u8>> {
        let mut dirs = std::collections::BTreeSet::new();
        let mut add_with_parents = |dir: &[u8]| {
            let mut end = dir.len();
            while end > 0 && dirs.insert(dir[..end].to_vec()) {
                end = dir[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
            }
        };
        for stream in &self.streams {
            add_with_parents(stream.dir());
            for seg in &stream.segments {
                match stream.named(&seg.name) {
                    Named::Dir(dir) => add_with_parents(&dir),
                    Named::File(path) => {
                        if let Some(end) = path.iter().rposition(|&b| b == b'/') {
                            add_with_parents(&path[..end]);
                        }
                    }
                }
            }
        }
        dirs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::write::locator_size;
    use super::*;
    use crate::store::FileBlocks;

    const HW_MANIFEST: &str = ". 82ab40c24fc8df01798e57ba66795bb1+841216+Aa124ac75e5168396c73c0a18eda641a4f41791c0@569fa8c3 0:841216:9c31ee32b3d15268a0754e8edc74d4f815ee014b693bc5109058e431dd5caea7.tar\n";

    fn fb(name: &str, locators: &[&str]) -> FileBlocks {
        let size = locators.iter().map(|l| locator_size(l)).sum();
        FileBlocks {
            name: name.to_string(),
            locators: locators.iter().map(|s| s.to_string()).collect(),
            size,
        }
    }

    #[test]
    fn pdh_vectors_from_the_reference() {
        let d8 = "d8309758b8fe2c81034ffc8a10c36460b77db7bc5e7b448c4e5b684f9d95a678.tar";
        let vectors: Vec<(String, &str)> = vec![
            (HW_MANIFEST.to_string(), "a45557269dcb65a6b78f9ac061c0850b+120"),
            (
                ". 68a84f561b1d1708c6baff5e019a9ab3+46+Ae5d0af96944a3690becb1decdf60cc1c937f556d@5693216f 0:46:md5sum.txt\n".to_string(),
                "a3e8f74c6f101eae01fa08bfb4e49b3a+54",
            ),
            (
                ". 744b2e4553123b02fa7b452ec5c18993+123 0:123:crunch-run.txt\n".to_string(),
                "63da7bdacf08c40f604daad80c261e9a+60",
            ),
            (
                ". 37b51d194a7513e45b56f6524f2d51f2+3 0:3:bar\n".to_string(),
                "fa7aeb5140e2848d39b416daeef4ffc5+45",
            ),
            (
                ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n".to_string(),
                "1f4b0bc7583c2a7f9102c395f4ffc5e3+45",
            ),
            (
                format!(". d21353cfe035e3e384563ee55eadbb2f+67108864 5c77a43e329b9838cbec18ff42790e57+55605760 0:122714624:{d8}\n"),
                "fa3c1a9cb6783f85f2ecda037e07b8c3+167",
            ),
            (
                format!(". d21353cfe035e3e384563ee55eadbb2f+67108864 5c77a43e329b9838cbec18ff42790e57+55605760 0:122714624:sha256:{d8}\n"),
                "d740a57097711e08eb9b2a93518f20ab+174",
            ),
            (
                ". 204e43b8a1185621ca55a94839582e6f+67108864+Afake0000000000000000000000000000000000000@5693216f b9677abbac956bd3e86b1deb28dfac03+67108864+K@zzzzz fc15aff2a762b13f521baf042140acec+67108864 323d2a3ce20370c4ca1d3462a344f8fd+25885655 0:227212247:var-GS000016015-ASM.tsv.bz2\n".to_string(),
                "c1bad4b39ca5a924e481008009d94e32+210",
            ),
            (String::new(), "d41d8cd98f00b204e9800998ecf8427e+0"),
        ];
        for (manifest, pdh) in vectors {
            assert_eq!(portable_data_hash(&manifest), pdh, "manifest {manifest:?}");
            // Every vector is also a valid manifest.
            Manifest::parse(&manifest).unwrap();
        }
    }

    #[test]
    fn portable_text_strips_all_hints_only_from_locators() {
        assert_eq!(
            portable_manifest_text(HW_MANIFEST),
            ". 82ab40c24fc8df01798e57ba66795bb1+841216 0:841216:9c31ee32b3d15268a0754e8edc74d4f815ee014b693bc5109058e431dd5caea7.tar\n"
        );
        // A stream named like a locator is not touched (first token), nor are file tokens.
        let m = "./acbd18db4cc2f85cedef654fccc4a4d8+3+Ax acbd18db4cc2f85cedef654fccc4a4d8+3+Ab@c+K@x 0:3:f+Ax\n";
        assert_eq!(
            portable_manifest_text(m),
            "./acbd18db4cc2f85cedef654fccc4a4d8+3+Ax acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:f+Ax\n"
        );
    }

    #[test]
    fn locator_parse_display_portable() {
        let l = Locator::parse(
            "acbd18db4cc2f85cedef654fccc4a4d8+3+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff+K@zzzzz",
        )
        .unwrap();
        assert_eq!(l.hash, "acbd18db4cc2f85cedef654fccc4a4d8");
        assert_eq!(l.size, 3);
        assert_eq!(
            l.hints,
            vec![
                "A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff",
                "K@zzzzz"
            ]
        );
        assert_eq!(
            l.to_string(),
            "acbd18db4cc2f85cedef654fccc4a4d8+3+A89118b78732c33104a4d6231e8b5a5fa1e4301e3@7fffffff+K@zzzzz"
        );
        assert_eq!(l.portable(), "acbd18db4cc2f85cedef654fccc4a4d8+3");
        assert!(!l.is_empty_block());
        assert!(
            Locator::parse(EMPTY_BLOCK_LOCATOR)
                .unwrap()
                .is_empty_block()
        );

        for bad in [
            "",
            "acbd18db4cc2f85cedef654fccc4a4d8",
            "acbd18db4cc2f85cedef654fccc4a4d8+",
            "ACBD18DB4CC2F85CEDEF654FCCC4A4D8+3",
            "acbd18db4cc2f85cedef654fccc4a4d+3",
            "acbd18db4cc2f85cedef654fccc4a4d8+3x",
            "acbd18db4cc2f85cedef654fccc4a4d8+-3",
            "acbd18db4cc2f85cedef654fccc4a4d8+3+",
            "acbd18db4cc2f85cedef654fccc4a4d8+3+a123",
            "acbd18db4cc2f85cedef654fccc4a4d8+3+A1 2",
            "acbd18db4cc2f85cedef654fccc4a4d8+3+A1:2",
            "acbd18db4cc2f85cedef654fccc4a4d8+99999999999999999999999",
        ] {
            let err = Locator::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn single_stream_commit_logs_vector() {
        let m = single_stream_manifest(&[fb(
            "crunch-run.txt",
            &["744b2e4553123b02fa7b452ec5c18993+123"],
        )]);
        assert_eq!(
            m,
            ". 744b2e4553123b02fa7b452ec5c18993+123 0:123:crunch-run.txt\n"
        );
        assert_eq!(
            portable_data_hash(&m),
            "63da7bdacf08c40f604daad80c261e9a+60"
        );
    }

    #[test]
    fn single_stream_write_logs_large_vector() {
        let m = single_stream_manifest(&[fb(
            "crunch-run.txt",
            &[
                "9c2c05d1fae6aaa8af85113ba725716d+67108864",
                "80b821383a07266c2a66a4566835e26e+21780065",
            ],
        )]);
        assert_eq!(
            m,
            ". 9c2c05d1fae6aaa8af85113ba725716d+67108864 80b821383a07266c2a66a4566835e26e+21780065 0:88888929:crunch-run.txt\n"
        );
    }

    #[test]
    fn single_stream_sorts_escapes_and_handles_empty_files() {
        let signed = "408672f5b5325f7d20edfbf899faee42+83+A0000000000000000000000000000000000000000@7fffffff";
        let m = single_stream_manifest(&[
            fb("stdout.txt", &["c556a293010069fa79a6790a931531d5+80"]),
            fb("stderr.txt", &[]),
            fb("crunch-run.txt", &[signed]),
            fb("my file:1", &[EMPTY_BLOCK_LOCATOR]),
        ]);
        assert_eq!(
            m,
            format!(
                ". {signed} c556a293010069fa79a6790a931531d5+80 0:83:crunch-run.txt 0:0:my\\040file\\0721 0:0:stderr.txt 83:80:stdout.txt\n"
            )
        );
        let parsed = Manifest::parse(&m).unwrap();
        let files = parsed.files();
        let names: Vec<&[u8]> = files.iter().map(|f| f.path.as_slice()).collect();
        assert_eq!(
            names,
            [
                b"crunch-run.txt".as_slice(),
                b"my file:1",
                b"stderr.txt",
                b"stdout.txt"
            ]
        );
        assert_eq!(files[1].size, 0);
        assert!(files[1].ranges.is_empty());
        assert_eq!(
            files[3].ranges,
            vec![BlockRange {
                locator: "c556a293010069fa79a6790a931531d5+80".into(),
                offset: 0,
                len: 80
            }]
        );
    }

    #[test]
    fn single_stream_only_empty_files_and_no_files() {
        assert_eq!(single_stream_manifest(&[]), "");
        let m = single_stream_manifest(&[fb("b", &[]), fb("a", &[])]);
        assert_eq!(m, format!(". {EMPTY_BLOCK_LOCATOR} 0:0:a 0:0:b\n"));
        Manifest::parse(&m).unwrap();
    }

    #[test]
    fn single_stream_shares_repeated_blocks_like_python_normalize() {
        let foo = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        let bar = "37b51d194a7513e45b56f6524f2d51f2+3";
        let m = single_stream_manifest(&[fb("x", &[foo, bar, foo]), fb("y", &[bar])]);
        assert_eq!(m, format!(". {foo} {bar} 0:6:x 0:3:x 3:3:y\n"));
        let files = Manifest::parse(&m).unwrap().files();
        assert_eq!(files[0].size, 9);
        assert_eq!(
            files[0]
                .ranges
                .iter()
                .map(|r| (r.locator.as_str(), r.offset, r.len))
                .collect::<Vec<_>>(),
            vec![(foo, 0, 3), (bar, 0, 3), (foo, 0, 3)]
        );
    }

    #[test]
    fn names_with_slashes_go_to_their_directory_streams() {
        let foo = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        let bar = "37b51d194a7513e45b56f6524f2d51f2+3";
        let m = single_stream_manifest(&[
            fb("b/c.out", &[foo]),
            fb("top", &[bar]),
            fb("a b/x", &[bar]),
            fb("a/x/y", &[foo]),
            fb("a/z", &[foo]),
        ]);
        assert_eq!(
            m,
            format!(
                ". {bar} 0:3:top\n./a {foo} 0:3:z\n./a/x {foo} 0:3:y\n./a\\040b {bar} 0:3:x\n./b {foo} 0:3:c.out\n"
            )
        );
        let paths: Vec<Vec<u8>> = Manifest::parse(&m)
            .unwrap()
            .files()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            paths,
            [b"top".as_slice(), b"a/z", b"a/x/y", b"a b/x", b"b/c.out"]
        );
    }

    #[test]
    fn parse_multiple_streams_and_concatenation() {
        // TestWriteMultipleLogs (ORIG): two "." streams, not normalized.
        let m = ". 408672f5b5325f7d20edfbf899faee42+83 0:83:crunch-run.txt\n. c556a293010069fa79a6790a931531d5+80 0:80:stdout.txt\n";
        let files = Manifest::parse(m).unwrap().files();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, b"crunch-run.txt");
        assert_eq!(files[1].path, b"stdout.txt");
        assert_eq!(files[1].size, 80);
        assert_eq!(
            files[1].ranges[0].locator,
            "c556a293010069fa79a6790a931531d5+80"
        );

        // Same path in two lines of the same stream name concatenates.
        let m = "./d acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:f\n./d 37b51d194a7513e45b56f6524f2d51f2+3 1:2:f\n";
        let files = Manifest::parse(m).unwrap().files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, b"d/f");
        assert_eq!(files[0].size, 5);
        assert_eq!(
            files[0].ranges,
            vec![
                BlockRange {
                    locator: "acbd18db4cc2f85cedef654fccc4a4d8+3".into(),
                    offset: 0,
                    len: 3
                },
                BlockRange {
                    locator: "37b51d194a7513e45b56f6524f2d51f2+3".into(),
                    offset: 1,
                    len: 2
                },
            ]
        );
    }

    #[test]
    fn files_ranges_across_blocks() {
        // Denormalized: a file spanning the end of block 1 and the start of block 2, and a
        // file made of two segments, one of them inside a single block.
        let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa+10+A1@2";
        let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb+10";
        let c = "cccccccccccccccccccccccccccccccc+5";
        let m = format!(". {a} {b} {c} 7:6:x 0:2:y 12:8:y 2:0:sub\\040dir/z\\072 2:0:\\056\n");
        let files = Manifest::parse(&m).unwrap().files();
        let r = |l: &str, offset, len| BlockRange {
            locator: l.into(),
            offset,
            len,
        };
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].path, b"x");
        assert_eq!(files[0].size, 6);
        assert_eq!(files[0].ranges, vec![r(a, 7, 3), r(b, 0, 3)]);
        assert_eq!(files[1].path, b"y");
        assert_eq!(files[1].size, 10);
        assert_eq!(files[1].ranges, vec![r(a, 0, 2), r(b, 2, 8)]);
        assert_eq!(files[2].path, b"sub dir/z:");
        assert_eq!(files[2].size, 0);

        // A whole large file over several blocks, as in the docker image fixture.
        let m = ". d21353cfe035e3e384563ee55eadbb2f+67108864 5c77a43e329b9838cbec18ff42790e57+55605760 0:122714624:img.tar\n";
        let files = Manifest::parse(m).unwrap().files();
        assert_eq!(files[0].size, 122714624);
        assert_eq!(
            files[0].ranges,
            vec![
                r("d21353cfe035e3e384563ee55eadbb2f+67108864", 0, 67108864),
                r("5c77a43e329b9838cbec18ff42790e57+55605760", 0, 55605760)
            ]
        );
    }

    #[test]
    fn empty_dir_markers_are_not_files() {
        let m = format!(
            ". acbd18db4cc2f85cedef654fccc4a4d8+3 0:3:foo\n./emptydir {EMPTY_BLOCK_LOCATOR} 0:0:\\056\n"
        );
        let manifest = Manifest::parse(&m).unwrap();
        let files = manifest.files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, b"foo");
        assert_eq!(
            manifest.locators().collect::<Vec<_>>(),
            vec!["acbd18db4cc2f85cedef654fccc4a4d8+3", EMPTY_BLOCK_LOCATOR]
        );
    }

    /// Issue 10: a name that is not UTF-8 once unescaped made the whole manifest invalid,
    /// so an output we wrote for such a file could not be mounted as an input.
    #[test]
    fn names_that_are_not_utf8_parse_and_come_back_as_their_bytes() {
        let foo = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        let m = format!(". {foo} 0:3:\\377\\376\n./d\\351 {foo} 0:3:caf\\303\\251\\040\\377\n");
        let manifest = Manifest::parse(&m).unwrap();
        let paths: Vec<Vec<u8>> = manifest.files().into_iter().map(|f| f.path).collect();
        assert_eq!(paths, [&b"\xff\xfe"[..], b"d\xe9/caf\xc3\xa9 \xff"]);
        assert_eq!(manifest.dirs(), [b"d\xe9"]);
        let files: Vec<(Vec<u8>, Vec<BlockRange>)> = manifest
            .files()
            .into_iter()
            .map(|f| (f.path, f.ranges))
            .collect();
        assert_eq!(normalized_manifest(&files, &[]), m);
    }

    /// Issue 10: a segment named `.` that carries data was dropped without a word (and a
    /// `.` marker at the end of a longer name, `0:0:a/b/\056`, made `a/b` an empty file
    /// as well as a directory).
    #[test]
    fn data_named_dot_is_not_a_file_and_is_reported() {
        let foo = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        let m =
            format!(". {foo} 0:3:\\056 0:0:a/b/\\056 0:3:keep\n./d {foo} 1:2:x/\\056 0:0:\\056\n");
        let manifest = Manifest::parse(&m).unwrap();
        let paths: Vec<Vec<u8>> = manifest.files().into_iter().map(|f| f.path).collect();
        assert_eq!(paths, [b"keep"]);
        assert_eq!(manifest.dirs(), [&b"a"[..], b"a/b", b"d", b"d/x"]);
        assert_eq!(
            manifest.data_named_dot(),
            [(Vec::new(), 3), (b"d/x".to_vec(), 2)]
        );
    }

    #[test]
    fn parse_errors_name_line_and_token() {
        let foo = "acbd18db4cc2f85cedef654fccc4a4d8+3";
        let cases: Vec<(String, &str)> = vec![
            (format!(". {foo} 0:3:foo"), "does not end with a newline"),
            (format!(". {foo} 0:3:foo\n\n"), "line 2: empty line"),
            (format!("x {foo} 0:3:foo\n"), "line 1: token \"x\""),
            (format!("./a/../b {foo} 0:3:foo\n"), "\"..\""),
            (format!(". {foo}  0:3:foo\n"), "double or trailing space"),
            (format!(". {foo} 0:3:foo \n"), "double or trailing space"),
            (". 0:0:foo\n".to_string(), "before any locator"),
            (format!(". {foo}\n"), "no file segments"),
            (". \n".to_string(), "empty token"),
            (".\n".to_string(), "no locators"),
            (format!(". {foo} 0:4:foo\n"), "past the stream's 3 bytes"),
            (format!(". {foo} 2:2:foo\n"), "token \"2:2:foo\""),
            (format!(". {foo} 0:3:\n"), "empty file name"),
            (format!(". {foo} 0:x:foo\n"), "must be decimal"),
            (format!(". {foo} 0:3:foo {foo}\n"), "expected a locator"),
            (format!(". {foo}+a 0:3:foo\n"), "uppercase"),
            (
                ". ACBD18DB4CC2F85CEDEF654FCCC4A4D8+3 0:3:foo\n".to_string(),
                "hex",
            ),
            (format!(". {foo} 0:3:a\\9\n"), "octal"),
            (format!(". {foo} 0:3:../etc\n"), "\"..\""),
            (
                format!(". {foo} 0:3:foo\n. {foo} 0:3:a//b\n"),
                "line 2: token \"0:3:a//b\"",
            ),
        ];
        for (text, want) in cases {
            let err = Manifest::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    fn br(locator: &str, offset: u64, len: u64) -> BlockRange {
        BlockRange {
            locator: locator.to_string(),
            offset,
            len,
        }
    }

    #[test]
    fn normalized_manifest_of_mounted_pieces_matches_go_vector() {
        // TestStdoutWithMultipleMountPointsUnderOutputDir: pieces of one collection
        // spliced into a new tree, signed locators kept.
        let l1 = "3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0abcdefgh11234567890@569fa8c3";
        let l2 = "3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396cabcdefghij6419876543234@569fa8c4";
        let l3 = "3e426d509afffb85e06c4c96a7c15e91+27+Aa124ac75e5168396c73c0bcdefghijk544332211@569fa8c5";
        let files = vec![
            ("foo/sub1file2".into(), vec![br(l2, 9, 18)]),
            ("foo/bar".into(), vec![br(l1, 9, 18)]),
            (
                "a/b/c.out".into(),
                vec![br("307372fa8fd5c146b22ae7a45b49bc31+6", 0, 6)],
            ),
            ("foo/baz/sub2file2".into(), vec![br(l3, 9, 18)]),
            ("foo/sub1/file1_in_subdir1.txt".into(), vec![br(l2, 0, 9)]),
            ("foo/sub1/file2_in_subdir1.txt".into(), vec![br(l2, 9, 18)]),
            (
                "foo/sub1/subdir2/file2_in_subdir2.txt".into(),
                vec![br(l3, 9, 18)],
            ),
            (
                "foo/sub1/subdir2/file1_in_subdir2.txt".into(),
                vec![br(l3, 0, 9)],
            ),
        ];
        let want = format!(
            "./a/b 307372fa8fd5c146b22ae7a45b49bc31+6 0:6:c.out\n\
             ./foo {l1} {l2} 9:18:bar 36:18:sub1file2\n\
             ./foo/baz {l3} 9:18:sub2file2\n\
             ./foo/sub1 {l2} 0:9:file1_in_subdir1.txt 9:18:file2_in_subdir1.txt\n\
             ./foo/sub1/subdir2 {l3} 0:9:file1_in_subdir2.txt 9:18:file2_in_subdir2.txt\n"
        );
        let dirs: Vec<Vec<u8>> = vec!["a".into(), "a/b".into(), "foo".into()];
        assert_eq!(normalized_manifest(&files, &dirs), want);
        Manifest::parse(&want).unwrap();
    }

    #[test]
    fn normalized_manifest_empty_dirs_empty_files_and_nothing() {
        assert_eq!(normalized_manifest(&[], &[]), "");
        assert_eq!(normalized_manifest(&[], &[Vec::new()]), "");
        let e = EMPTY_BLOCK_LOCATOR;
        let files = vec![("d/x".into(), vec![]), ("d/y".into(), vec![br(e, 0, 0)])];
        let dirs: Vec<Vec<u8>> = ["d", "empty", "deep/er/est", "deep", "deep/er", "empty"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let want =
            format!("./d {e} 0:0:x 0:0:y\n./deep/er/est {e} 0:0:\\056\n./empty {e} 0:0:\\056\n");
        assert_eq!(normalized_manifest(&files, &dirs), want);
        let parsed = Manifest::parse(&want).unwrap();
        assert_eq!(parsed.files().len(), 2);
    }

    #[test]
    fn normalized_manifest_dedups_blocks_merges_pieces_and_escapes() {
        let a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa+10";
        let b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb+10";
        let files = vec![
            // Across two blocks: one segment.
            ("big".into(), vec![br(a, 0, 10), br(b, 0, 10)]),
            // Non-contiguous pieces: two segments.
            ("gappy".into(), vec![br(b, 2, 3), br(a, 1, 1)]),
            ("sp ace/co:lon\\".into(), vec![br(a, 4, 2)]),
            ("a b/x".into(), vec![br(b, 0, 1)]),
            ("a/x".into(), vec![br(b, 0, 1)]),
        ];
        let text = normalized_manifest(&files, &[]);
        assert_eq!(
            text,
            format!(
                ". {a} {b} 0:20:big 12:3:gappy 1:1:gappy\n./a {b} 0:1:x\n./a\\040b {b} 0:1:x\n./sp\\040ace {a} 4:2:co\\072lon\\134\n"
            )
        );
        // What goes in comes back out.
        let parsed = Manifest::parse(&text).unwrap().files();
        let got: Vec<(Vec<u8>, Vec<BlockRange>)> =
            parsed.into_iter().map(|f| (f.path, f.ranges)).collect();
        for f in &files {
            assert!(got.contains(f), "{f:?} not in {got:?}");
        }
    }

    #[test]
    fn md5_hex_vectors() {
        assert_eq!(md5_hex(b"foo"), "acbd18db4cc2f85cedef654fccc4a4d8");
        assert_eq!(md5_hex(b"hello\n"), "b1946ac92492d2347c6235b4d2611184");
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
