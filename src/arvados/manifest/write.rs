//! Writing manifests: the normalized text of a set of files, given as whole blocks (files
//! crunch-run wrote block by block: logs, arv-local) or as pieces of blocks (the output
//! collection, which reuses the blocks of mounted collections). Parsing is the parent's job.

use std::collections::{HashMap, HashSet};

use super::{BlockRange, EMPTY_BLOCK_LOCATOR, Locator, escape_name};
use crate::store::FileBlocks;

/// Size of a locator token, or 0 if it does not parse (never the case for tokens from a
/// block store).
pub(super) fn locator_size(token: &str) -> u64 {
    Locator::parse(token).map(|l| l.size).unwrap_or(0)
}

/// Split a file name into its directory components and its base name, dropping empty and
/// `.` components (so `a//b/./c` is `([a, b], c)`).
fn split_path(name: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut parts: Vec<&[u8]> = name
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    let base = parts.pop().unwrap_or_default();
    (parts, base)
}

/// The normalized manifest of files written block by block.
///
/// All files whose names have no `/` go in one `.` stream, which is the intended use (log
/// and output files of one directory); a name with `/` goes in the stream of its directory
/// (`./dir`), streams in depth-first order of sorted names, so the result is still normalized.
/// Within a stream, files are sorted by name, each distinct block is listed once in the
/// order of first use, and adjacent segments of a file are merged into one `pos:len:name`.
/// A file with no data is `0:0:name`. A stream without any data gets the empty block
/// locator. No files gives `""`.
///
/// Segment lengths come from the locators' size fields (so the text is always consistent);
/// `FileBlocks::size` is expected to equal their sum. Locators are kept as given, signed.
/// It is [`normalized_manifest`] of the files' blocks, each taken whole.
pub fn single_stream_manifest(files: &[FileBlocks]) -> String {
    let files: Vec<(Vec<u8>, Vec<BlockRange>)> = files
        .iter()
        .map(|f| {
            let whole_blocks = f.locators.iter().map(|loc| BlockRange {
                locator: loc.clone(),
                offset: 0,
                len: locator_size(loc),
            });
            (f.name.as_bytes().to_vec(), whole_blocks.collect())
        })
        .collect();
    normalized_manifest(&files, &[])
}

/// The normalized manifest of a tree of files given as block ranges, plus empty directories.
///
/// `files` are `(path, ranges)` with `/`-separated paths relative to the collection root
/// (`a/b/c.out`, any bytes: see [`super::escape_name`]); each range is a piece of a block, its locator kept as given (signed).
/// `empty_dirs` are directory paths to keep even though no file is under them; one that
/// does have a file or another directory under it is implied by that and left out.
///
/// Streams come in depth-first order of their sorted (unescaped) path components, as the
/// Python SDK's and Go SDK's normalizers write them; files are sorted within a stream;
/// every distinct locator is listed once per stream, in order of first use; contiguous
/// pieces of a file merge into one `pos:len:name`; an empty file is `0:0:name`; a stream
/// with no data gets the empty block locator; an empty directory is
/// `./dir d41d8cd98f00b204e9800998ecf8427e+0 0:0:\056`. No files and no dirs gives `""`.
pub fn normalized_manifest(files: &[(Vec<u8>, Vec<BlockRange>)], empty_dirs: &[Vec<u8>]) -> String {
    let mut entries: Vec<Entry<'_>> = Vec::with_capacity(files.len());
    for (i, (path, _)) in files.iter().enumerate() {
        let (dir, base) = split_path(path);
        if !base.is_empty() {
            entries.push((dir, base, Some(i)));
        }
    }
    let mut occupied: HashSet<Vec<&[u8]>> = HashSet::new();
    for (dir, _, _) in &entries {
        for n in 1..=dir.len() {
            occupied.insert(dir[..n].to_vec());
        }
    }
    let mut dirs: Vec<Vec<&[u8]>> = empty_dirs
        .iter()
        .map(|d| split_path(d))
        .map(|(mut dir, base)| {
            if !base.is_empty() {
                dir.push(base);
            }
            dir
        })
        .filter(|d| !d.is_empty())
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        for n in 1..d.len() {
            occupied.insert(d[..n].to_vec());
        }
    }
    for d in dirs {
        if !occupied.contains(&d) {
            entries.push((d, b".", None));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));

    let mut out = String::new();
    let mut start = 0;
    while start < entries.len() {
        let end = start
            + entries[start..]
                .iter()
                .take_while(|e| e.0 == entries[start].0)
                .count();
        write_stream(&mut out, &entries[start..end], files);
        start = end;
    }
    out
}

/// A file or empty-directory marker of [`normalized_manifest`]: directory components, base
/// name, and the index into its files (`None` for an empty directory's `.` marker).
type Entry<'a> = (Vec<&'a [u8]>, &'a [u8], Option<usize>);

/// One stream line of [`normalized_manifest`]: `entries` all share the same directory.
fn write_stream(out: &mut String, entries: &[Entry<'_>], files: &[(Vec<u8>, Vec<BlockRange>)]) {
    let Some((dir, _, _)) = entries.first() else {
        return;
    };
    out.push('.');
    for component in dir {
        out.push('/');
        out.push_str(&escape_name(component));
    }
    let ranges_of = |e: &Entry<'_>| -> &[BlockRange] { e.2.map_or(&[], |i| files[i].1.as_slice()) };
    // Each distinct block once, at its offset in the stream.
    let mut offsets: HashMap<&str, u64> = HashMap::new();
    let mut stream_len = 0u64;
    for e in entries {
        for r in ranges_of(e) {
            if r.len == 0 || offsets.contains_key(r.locator.as_str()) {
                continue;
            }
            offsets.insert(r.locator.as_str(), stream_len);
            stream_len += locator_size(&r.locator);
            out.push(' ');
            out.push_str(&r.locator);
        }
    }
    if offsets.is_empty() {
        out.push(' ');
        out.push_str(EMPTY_BLOCK_LOCATOR);
    }
    for e in entries {
        // The empty-directory marker is a file named `.`, always written escaped.
        let name = match e.2 {
            Some(_) => escape_name(e.1),
            None => "\\056".to_string(),
        };
        let mut span: Option<(u64, u64)> = None; // (start, end) in the stream
        for r in ranges_of(e) {
            if r.len == 0 {
                continue;
            }
            let start = offsets.get(r.locator.as_str()).copied().unwrap_or(0) + r.offset;
            span = match span {
                Some((s, end)) if end == start => Some((s, end + r.len)),
                Some((s, end)) => {
                    out.push_str(&format!(" {}:{}:{}", s, end - s, name));
                    Some((start, start + r.len))
                }
                None => Some((start, start + r.len)),
            };
        }
        let (s, end) = span.unwrap_or((0, 0));
        out.push_str(&format!(" {}:{}:{}", s, end - s, name));
    }
    out.push('\n');
}
