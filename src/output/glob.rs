//! `output_glob` patterns: which output files and directories to keep.
//!
//! The syntax is that of the Go `doublestar` package as Arvados' copier uses it, matched
//! against `/`-separated paths relative to the output directory:
//!
//! - `**` as a whole path component matches zero or more components (`a/**` matches `a`,
//!   `a/b`, `a/b/c`); `**` inside a component is just `*`;
//! - `*` matches any run of characters within one component, `?` one character;
//! - `[abc]`, `[a-z]`, `[!…]` / `[^…]` (negated) match one character (never `/`);
//! - `{x,y}` alternatives (may nest, may contain `/`); `\c` matches `c` literally.
//!
//! Paths are bytes: a byte that is not part of a UTF-8 character is one character of its
//! own, which `?`, `*` and a negated class match, and nothing else.
//!
//! A malformed pattern (unclosed `[`/`{`, empty class, stray `}`, trailing `\`) matches
//! nothing. [`OutputGlobs::matches`] adds the copier's rule that `x/**` selects a *file*
//! only if it is inside `x`, never a file named like `x` itself.

use std::collections::HashSet;

/// Most patterns one glob may expand to through `{…}` alternatives; beyond it the glob is
/// treated as malformed rather than using unbounded memory.
const MAX_ALTERNATIVES: usize = 4096;

/// One character matcher inside a path component.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `[…]`: ranges (single characters are `(c, c)`), negated or not.
    Class {
        negate: bool,
        ranges: Vec<(char, char)>,
    },
}

/// One path component of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Component {
    /// `**`: zero or more path components.
    GlobStar,
    Pattern(Vec<Token>),
}

/// A brace-free pattern, split into components.
type Compiled = Vec<Component>;

/// One glob: the alternatives it expands to, or `None` if it is malformed.
#[derive(Debug, Clone)]
struct Glob {
    alternatives: Option<Vec<Compiled>>,
}

/// The `output_glob` list of a container. Empty means "keep everything".
#[derive(Debug, Clone, Default)]
pub struct OutputGlobs {
    globs: Vec<Glob>,
}

impl OutputGlobs {
    pub fn new(patterns: &[String]) -> OutputGlobs {
        OutputGlobs {
            globs: patterns
                .iter()
                .map(|p| Glob {
                    alternatives: compile(p),
                })
                .collect(),
        }
    }

    /// True when there are no globs (everything is kept).
    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// Whether the output entry at `path` (relative, `/`-separated; a leading `/` is
    /// ignored) is selected by any glob. For a file, a glob ending in `/**` must match
    /// with the file strictly inside the `**` part: `foo*/**` selects `foo/bar` but not a
    /// file named `foo` (bash `globstar` behaviour), while it does select a directory
    /// named `foo`.
    pub fn matches(&self, path: impl AsRef<[u8]>, is_dir: bool) -> bool {
        let names = split_names(path.as_ref());
        self.alternatives().any(|alt| {
            if !is_dir && alt.last() == Some(&Component::GlobStar) {
                let mut inside = alt.clone();
                inside.push(Component::Pattern(vec![Token::Star]));
                match_components(&inside, &names)
            } else {
                match_components(alt, &names)
            }
        })
    }

    /// Whether anything strictly below the directory `path` could be selected by a glob
    /// (conservative: `true` when unsure). Always true when there are no globs. Used to
    /// skip whole subtrees, as the copier's `subtreeCouldMatch`.
    pub fn subtree_could_match(&self, path: impl AsRef<[u8]>) -> bool {
        if self.globs.is_empty() {
            return true;
        }
        let names = split_names(path.as_ref());
        self.alternatives()
            .any(|alt| alternative_could_match_below(alt, &names))
    }

    fn alternatives(&self) -> impl Iterator<Item = &Compiled> {
        self.globs
            .iter()
            .filter_map(|g| g.alternatives.as_ref())
            .flatten()
    }
}

fn split_names(path: &[u8]) -> Vec<&[u8]> {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    path[start..].split(|&b| b == b'/').collect()
}

/// The copier's rule: walk the separators of the pattern; a `**` component before the
/// path's depth means anything could match; at the path's depth, the pattern's first
/// components must match the path's and more components must follow; a pattern shorter
/// than the path can only match below it if it ends in `**`.
fn alternative_could_match_below(alt: &[Component], names: &[&[u8]]) -> bool {
    let depth = names.len();
    // Separators are between components: after component k, for k in 0..len-1.
    for k in 0..alt.len().saturating_sub(1) {
        if alt[k] == Component::GlobStar {
            return true;
        }
        if k + 1 == depth {
            return alt[..depth].iter().zip(names).all(|(c, n)| match c {
                Component::GlobStar => true,
                Component::Pattern(tokens) => match_name(tokens, n),
            });
        }
    }
    alt.len() <= depth && alt.last() == Some(&Component::GlobStar)
}

/// Match pattern components against path components; `**` takes zero or more.
fn match_components(pattern: &[Component], names: &[&[u8]]) -> bool {
    match pattern.split_first() {
        None => names.is_empty(),
        Some((Component::GlobStar, rest)) => {
            (0..=names.len()).any(|skip| match_components(rest, &names[skip..]))
        }
        Some((Component::Pattern(tokens), rest)) => match names.split_first() {
            Some((name, more)) => match_name(tokens, name) && match_components(rest, more),
            None => false,
        },
    }
}

/// Match one component's tokens against one name (classic `*` backtracking).
fn match_name(tokens: &[Token], name: &[u8]) -> bool {
    let chars = characters(name);
    let (mut t, mut c) = (0, 0);
    let mut star: Option<(usize, usize)> = None; // (token after the star, char it took up to)
    while c < chars.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                star = Some((t + 1, c));
                t += 1;
                continue;
            }
            Some(tok) if token_matches(tok, chars[c]) => {
                t += 1;
                c += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((after, from)) => {
                star = Some((after, from + 1));
                t = after;
                c = from + 1;
            }
            None => return false,
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::Star)
}

/// The characters of a name: `None` for each byte that is not part of a UTF-8 character.
fn characters(name: &[u8]) -> Vec<Option<char>> {
    let mut out = Vec::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        out.extend(chunk.valid().chars().map(Some));
        out.extend(chunk.invalid().iter().map(|_| None));
    }
    out
}

fn token_matches(tok: &Token, ch: Option<char>) -> bool {
    match (tok, ch) {
        (Token::Literal(l), _) => Some(*l) == ch,
        (Token::One, _) => true,
        (Token::Star, _) => false,
        (Token::Class { negate, ranges }, Some(ch)) => {
            ranges.iter().any(|&(lo, hi)| lo <= ch && ch <= hi) != *negate
        }
        (Token::Class { negate, .. }, None) => *negate,
    }
}

/// Expand braces and compile every alternative; `None` if the pattern is malformed.
fn compile(pattern: &str) -> Option<Vec<Compiled>> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut expanded = Vec::new();
    expand_braces(&chars, &mut expanded)?;
    expanded
        .iter()
        .map(|alt| compile_alternative(alt))
        .collect()
}

/// Expand the first top-level `{…}` of `chars` (recursively), appending brace-free
/// patterns to `out`. Escapes and classes are kept as they are.
fn expand_braces(chars: &[char], out: &mut Vec<Vec<char>>) -> Option<()> {
    let Some(open) = find_unescaped(chars, 0, |c| c == '{') else {
        if find_unescaped(chars, 0, |c| c == '}').is_some() {
            return None; // stray `}`
        }
        out.push(chars.to_vec());
        return (out.len() <= MAX_ALTERNATIVES).then_some(());
    };
    if find_unescaped(&chars[..open], 0, |c| c == '}').is_some() {
        return None;
    }
    // Find the matching `}` and the top-level commas.
    let mut depth = 0;
    let mut commas = Vec::new();
    let mut close = None;
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => i = skip_class(chars, i)?,
            '{' => depth += 1,
            '}' if depth == 0 => {
                close = Some(i);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => commas.push(i),
            _ => {}
        }
        i += 1;
    }
    let close = close?;
    let mut starts = vec![open + 1];
    starts.extend(commas.iter().map(|c| c + 1));
    let mut ends = commas.clone();
    ends.push(close);
    for (s, e) in starts.into_iter().zip(ends) {
        let mut alt = chars[..open].to_vec();
        alt.extend_from_slice(&chars[s..e]);
        alt.extend_from_slice(&chars[close + 1..]);
        expand_braces(&alt, out)?;
    }
    Some(())
}

/// Index of the first character at or after `from`, outside escapes and classes, that
/// satisfies `want`.
fn find_unescaped(chars: &[char], from: usize, want: impl Fn(char) -> bool) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '[' => i = skip_class(chars, i).unwrap_or(chars.len()),
            c if want(c) => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Given `chars[open] == '['`, the index of the class's closing `]`; `None` if the class
/// is empty or never closed.
fn skip_class(chars: &[char], open: usize) -> Option<usize> {
    let mut i = open + 1;
    if matches!(chars.get(i), Some('!' | '^')) {
        i += 1;
    }
    if matches!(chars.get(i), None | Some(']')) {
        return None;
    }
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            ']' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Split a brace-free pattern at `/` (outside escapes and classes) and compile each part.
fn compile_alternative(chars: &[char]) -> Option<Compiled> {
    let mut components = Vec::new();
    let mut start = 0;
    loop {
        let (end, next) = find_separator(chars, start);
        let part = &chars[start..end];
        if part == ['*', '*'] {
            // Consecutive `**` components mean the same as one.
            if components.last() != Some(&Component::GlobStar) {
                components.push(Component::GlobStar);
            }
        } else {
            components.push(Component::Pattern(compile_component(part)?));
        }
        if next > chars.len() {
            return Some(components);
        }
        start = next;
    }
}

/// The next path separator at or after `from`, outside classes: `/`, or an escaped `\/`
/// (a path component never contains `/`, so it can only mean the separator). Returns
/// where the component before it ends and where the next one starts (past the end of
/// `chars` when there is no separator).
fn find_separator(chars: &[char], from: usize) -> (usize, usize) {
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&'/') => return (i, i + 2),
            '\\' => i += 1,
            '[' => i = skip_class(chars, i).unwrap_or(chars.len()),
            '/' => return (i, i + 1),
            _ => {}
        }
        i += 1;
    }
    (chars.len(), chars.len() + 1)
}

fn compile_component(chars: &[char]) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                i += 1;
                tokens.push(Token::Literal(*chars.get(i)?));
            }
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::One),
            '[' => {
                let close = skip_class(chars, i)?;
                tokens.push(compile_class(&chars[i + 1..close]));
                i = close;
            }
            c => tokens.push(Token::Literal(c)),
        }
        i += 1;
    }
    Some(tokens)
}

/// The inside of a (validated, non-empty) class: `!`/`^` negation, `\c` escapes, `a-z`
/// ranges; `-` first or last is literal.
fn compile_class(inner: &[char]) -> Token {
    let (negate, body) = match inner.first() {
        Some('!' | '^') => (true, &inner[1..]),
        _ => (false, inner),
    };
    let mut ranges = Vec::new();
    let mut i = 0;
    let next = |i: &mut usize| -> Option<char> {
        if body.get(*i) == Some(&'\\') {
            *i += 1;
        }
        let c = body.get(*i).copied();
        *i += 1;
        c
    };
    while i < body.len() {
        let Some(lo) = next(&mut i) else { break };
        if body.get(i) == Some(&'-') && i + 1 < body.len() {
            i += 1;
            let hi = next(&mut i).unwrap_or(lo);
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
    Token::Class { negate, ranges }
}

/// Keep only the files the globs select, and the directories they select or that hold
/// something kept (Go's `applyGlobsToFilesAndDirs`). Returns sorted directories.
pub(super) fn apply_globs<T>(
    globs: &OutputGlobs,
    dirs: Vec<Vec<u8>>,
    files: Vec<T>,
    path_of: impl Fn(&T) -> &[u8],
) -> (Vec<Vec<u8>>, Vec<T>) {
    if globs.is_empty() {
        let mut dirs = dirs;
        dirs.sort();
        return (dirs, files);
    }
    let mut keep: HashSet<Vec<u8>> = HashSet::new();
    for d in dirs.iter().filter(|d| globs.matches(d, true)) {
        add_with_ancestors(d, &mut keep);
        keep.insert(d.clone());
    }
    let files: Vec<T> = files
        .into_iter()
        .filter(|f| globs.matches(path_of(f), false))
        .collect();
    for f in &files {
        add_with_ancestors(path_of(f), &mut keep);
    }
    let mut dirs: Vec<Vec<u8>> = keep.into_iter().collect();
    dirs.sort();
    (dirs, files)
}

fn add_with_ancestors(path: &[u8], keep: &mut HashSet<Vec<u8>>) {
    for (i, &b) in path.iter().enumerate() {
        if i > 0 && b == b'/' {
            keep.insert(path[..i].to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(patterns: &[&str]) -> OutputGlobs {
        OutputGlobs::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Whether `pattern` matches the whole of `path`, without the file rule for `x/**`
    /// (as a directory is matched).
    fn glob_match(pattern: &str, path: &str) -> bool {
        globs(&[pattern]).matches(path, true)
    }

    /// Go's TestMatchGlobs truth table.
    #[test]
    fn match_globs_truth_table() {
        // (glob, [(path, is_dir, selected)])
        type Cases<'a> = &'a [(&'a str, bool, bool)];
        let table: &[(&str, Cases)] = &[
            (
                "foo*/**",
                &[
                    ("foo", true, true),
                    ("food", true, true),
                    ("foo", false, false),
                    ("food", false, false),
                    ("foo/bar", false, true),
                    ("food/bar", false, true),
                    ("foo/bar", true, true),
                    ("food/bar", true, true),
                ],
            ),
            (
                "ba[!/]/foo*/**",
                &[
                    ("bar/foo", true, true),
                    ("bar/food", true, true),
                    ("bar/foo", false, false),
                    ("bar/food", false, false),
                    ("bar/foo/z\\[", true, true),
                    ("bar/food/z\\[", true, true),
                    ("bar/foo/z\\[", false, true),
                    ("bar/food/z\\[", false, true),
                ],
            ),
            (
                "waz/**/foo*/**",
                &[
                    ("waz/quux/foo", true, true),
                    ("waz/quux/food", true, true),
                    ("waz/quux/foo", false, false),
                    ("waz/quux/food", false, false),
                    ("waz/quux/foo/foo", true, true),
                    ("waz/quux/food/foo", true, true),
                    ("waz/quux/foo/foo", false, true),
                    ("waz/quux/food/foo", false, true),
                ],
            ),
            (
                "foo/**/*",
                &[
                    ("foo", false, false),
                    ("foo/bar", false, true),
                    ("foo/bar/baz", false, true),
                    ("foo/bar/baz/waz", false, true),
                ],
            ),
        ];
        for (glob, cases) in table {
            let g = globs(&[glob]);
            for &(path, is_dir, want) in cases.iter() {
                assert_eq!(g.matches(path, is_dir), want, "{glob} {path} dir={is_dir}");
            }
        }
        // A leading "/" on the path is ignored.
        assert!(globs(&["foo/**/*"]).matches("/foo/bar", false));
    }

    /// Go's TestSubtreeCouldMatch vectors.
    #[test]
    fn subtree_could_match_vectors() {
        let vectors = [
            ("abc", "*", false),
            ("abc", "abc/*", true),
            ("abc", "a*/**", true),
            ("abc", "**", true),
            ("abc", "*/*", true),
            ("abc", "**/*.txt", true),
            ("abc/def", "*", false),
            ("abc/def", "*/*", false),
            ("abc/def", "*/*.txt", false),
            ("abc/def", "*/*/*", true),
            ("abc/def", "**", true),
            ("abc/def", "**/bar", true),
            ("abc/def", "abc/**", true),
            ("abc/def/ghi", "*c/**/bar", true),
            ("abc/def/ghi", "*c/*f/bar", false),
            ("abc/def/ghi", "abc/d[^/]f/ghi/*", true),
        ];
        for (mount, glob, could) in vectors {
            assert_eq!(
                globs(&[glob]).subtree_could_match(mount),
                could,
                "{mount} {glob}"
            );
        }
        assert!(globs(&[]).subtree_could_match("anything"));
    }

    /// The glob half of Go's TestApplyGlobsToCollectionFS: files of the collection
    /// `foo bar baz/quux baz/parent1/item1` each glob list selects.
    #[test]
    fn collection_file_selection_vectors() {
        let files = ["foo", "bar", "baz/quux", "baz/parent1/item1"];
        let all: &[&str] = &files;
        let vectors: &[(&[&str], &[&str])] = &[
            (&["foo"], &["foo"]),
            (&["baz/parent1/item1"], &["baz/parent1/item1"]),
            (&["**"], all),
            (&["**/*"], all),
            (&["*"], &["foo", "bar"]),
            (&["baz"], &[]),
            (&["b*/**"], &["baz/quux", "baz/parent1/item1"]),
            (&["baz/**"], &["baz/quux", "baz/parent1/item1"]),
            (&["baz/*"], &["baz/quux"]),
            (&["baz/**/*uu?"], &["baz/quux"]),
            (&["**/*m1"], &["baz/parent1/item1"]),
            (&["*/*/*/**/*1"], &[]),
            (&["f*", "**/q*"], &["foo", "baz/quux"]),
            (&["\\"], &[]),
            (&["\\", "foo"], &["foo"]),
            (&["foo/**"], &[]),
            (&["foo*/**"], &[]),
        ];
        for (patterns, want) in vectors {
            let g = globs(patterns);
            let got: Vec<&str> = files
                .iter()
                .copied()
                .filter(|f| g.matches(f, false))
                .collect();
            assert_eq!(&got, want, "{patterns:?}");
        }
    }

    #[test]
    fn doublestar_syntax() {
        let yes = [
            ("*.txt", "a.txt"),
            ("**/*.txt", "a.txt"),
            ("**/*.txt", "x/y/a.txt"),
            ("a/**", "a"),
            ("a/**", "a/b/c"),
            ("a/**/b", "a/b"),
            ("a/**/b", "a/x/y/b"),
            ("a/**/**/b", "a/b"),
            ("a**b", "axyb"),
            ("**.txt", "a.txt"),
            ("?", "x"),
            ("[a-c]x", "bx"),
            ("[!a-c]x", "dx"),
            ("[^a-c]x", "dx"),
            ("[-a]", "-"),
            ("[a-]", "-"),
            ("[\\]]", "]"),
            ("\\*", "*"),
            ("{a,b/c}/d", "b/c/d"),
            ("{a,{b,c}}x", "cx"),
            ("x{,y}", "x"),
            ("[{]", "{"),
            ("é?", "éé"),
            ("a\\/b", "a/b"),
            ("a\\/*", "a/b"),
        ];
        for (p, name) in yes {
            assert!(glob_match(p, name), "{p} should match {name}");
        }
        let no = [
            ("*.txt", "x/a.txt"),
            ("*", "a/b"),
            ("?", "ab"),
            ("a/*", "a"),
            ("[a-c]x", "dx"),
            ("[!a-c]x", "bx"),
            ("\\*", "a"),
            ("{a,b}", "c"),
            ("a**b", "a/b"),
            // Malformed patterns match nothing.
            ("[", "["),
            ("[]", "]"),
            ("[!]", "x"),
            ("a{b", "a{b"),
            ("a}b", "a}b"),
            ("\\", "\\"),
            ("x\\", "x"),
        ];
        for (p, name) in no {
            assert!(!glob_match(p, name), "{p} should not match {name}");
        }
    }

    /// Go's TestApplyGlobsToFilesAndDirs.
    #[test]
    fn apply_globs_to_files_and_dirs() {
        let dirs = ["dir1", "dir1/dir11", "dir1/dir12", "dir2"];
        let files = ["dir1/file11", "dir1/dir11/file111", "dir2/file2"];
        let trials: &[(&[&str], &[&str], &[&str])] = &[
            (&[], &dirs, &files),
            (&["**"], &dirs, &files),
            (
                &["**/file111"],
                &["dir1", "dir1/dir11"],
                &["dir1/dir11/file111"],
            ),
            (&["nothing"], &[], &[]),
            (&["**/dir12"], &["dir1", "dir1/dir12"], &[]),
            (&["**/file*"], &["dir1", "dir1/dir11", "dir2"], &files),
            (&["**/dir1[12]"], &["dir1", "dir1/dir11", "dir1/dir12"], &[]),
            (&["**/dir1[^2]"], &["dir1", "dir1/dir11"], &[]),
            (
                &["dir1/**"],
                &["dir1", "dir1/dir11", "dir1/dir12"],
                &["dir1/file11", "dir1/dir11/file111"],
            ),
        ];
        for (globs, want_dirs, want_files) in trials {
            let g = OutputGlobs::new(&globs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            let (got_dirs, got_files) = apply_globs(
                &g,
                dirs.iter().map(|s| s.as_bytes().to_vec()).collect(),
                files.iter().map(|s| s.to_string()).collect(),
                |f: &String| f.as_bytes(),
            );
            let got_dirs: Vec<&str> = got_dirs
                .iter()
                .map(|d| std::str::from_utf8(d).unwrap())
                .collect();
            assert_eq!(&got_dirs, want_dirs, "{globs:?}");
            assert_eq!(&got_files, want_files, "{globs:?}");
        }
    }

    /// Issue 10: names are bytes. A byte that is not part of a UTF-8 character is one
    /// character for `?`, `*` and negated classes, and matches nothing else.
    #[test]
    fn names_that_are_not_utf8_match_by_character() {
        let odd: &[u8] = b"d\xe9/caf\xc3\xa9\xff";
        for (pattern, selected) in [
            ("**", true),
            ("d?/*", true),
            ("d[!a]/caf??", true),
            ("d?/caf?", false),
            ("d[a-z]/*", false),
            ("d\u{e9}/*", false),
            ("d\u{fffd}/*", false),
            ("*/caf\u{e9}*", true),
        ] {
            assert_eq!(globs(&[pattern]).matches(odd, false), selected, "{pattern}");
        }
    }
}
