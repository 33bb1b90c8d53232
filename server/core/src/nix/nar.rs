//! Streaming validation of the NAR (Nix ARchive) format.
//!
//! Uploads are checked while they stream through, so the validator keeps only
//! a small, bounded amount of state and never buffers file contents: inside a
//! regular file it merely counts bytes down, which keeps it far off the
//! critical path of the upload pipeline.

use super::Error;

/// Deepest directory nesting accepted. Bounds the per-level state we keep.
pub const MAX_DEPTH: usize = 256;
/// Longest directory entry name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 4096;
/// Longest symlink target accepted, in bytes (PATH_MAX on Linux).
pub const MAX_TARGET_LEN: usize = 4096;
/// Longest keyword in the grammar ("nix-archive-1" is 13 bytes). Anything
/// longer where a keyword is expected is rejected before reading it.
const MAX_KEYWORD_LEN: u64 = 16;

const MAGIC: &[u8] = b"nix-archive-1";

/// Which grammar token the parser wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Magic,
    /// "(" opening a node.
    NodeOpen,
    /// "type".
    TypeKeyword,
    /// "regular" | "symlink" | "directory".
    NodeType,
    /// "executable" | "contents" after "regular".
    RegularAttr,
    /// The empty string after "executable".
    ExecutableEmpty,
    /// "contents" after the executable marker.
    Contents,
    /// The file body itself.
    FileData,
    /// "target".
    TargetKeyword,
    /// The symlink target.
    Target,
    /// ")" closing a regular file or symlink node.
    NodeClose,
    /// "entry" | ")" inside a directory.
    DirItem,
    /// "(" opening an entry.
    EntryOpen,
    /// "name".
    NameKeyword,
    /// The entry name.
    Name,
    /// "node".
    NodeKeyword,
    /// ")" closing an entry.
    EntryClose,
    /// The archive is complete; nothing more may follow.
    End,
}

/// Where inside a string token the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Collecting the 8-byte little-endian length.
    Length { have: u8 },
    /// Collecting a small payload into `buf`.
    Payload { remaining: u64 },
    /// Skipping a file body without looking at it.
    Skip { remaining: u64 },
    /// Checking zero padding up to the next multiple of 8.
    Padding { remaining: u8 },
}

/// Incremental NAR grammar checker. Feed it the archive in chunks of any size
/// and call [`finish`](Self::finish) at the end.
#[derive(Debug)]
pub struct NarValidator {
    expect: Expect,
    phase: Phase,
    /// Length bytes collected so far.
    len_buf: [u8; 8],
    /// Payload of the current (small) token.
    buf: Vec<u8>,
    /// Padding owed after the current token's payload.
    pad: u8,
    /// One entry per open directory: the last entry name seen there, to
    /// enforce strictly ascending order.
    dirs: Vec<Vec<u8>>,
    /// Bytes consumed so far.
    offset: u64,
    /// Offset at which the current token started (for error messages).
    token_start: u64,
    /// Sticky error: once invalid, always invalid.
    failed: Option<Error>,
}

impl Default for NarValidator {
    fn default() -> Self {
        Self::new()
    }
}

impl NarValidator {
    pub fn new() -> Self {
        Self {
            expect: Expect::Magic,
            phase: Phase::Length { have: 0 },
            len_buf: [0; 8],
            buf: Vec::new(),
            pad: 0,
            dirs: Vec::new(),
            offset: 0,
            token_start: 0,
            failed: None,
        }
    }

    /// Total bytes accepted so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Whether a complete archive has been seen (and nothing invalid).
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.expect == Expect::End
    }

    /// Consumes the next chunk of the archive. After the first error every
    /// further call returns that same error.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.feed_inner(data) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Checks that the archive ended exactly at a valid end point.
    pub fn finish(self) -> Result<(), Error> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.expect != Expect::End {
            return Err(Error::InvalidNar {
                offset: self.offset,
                reason: "archive is truncated".into(),
            });
        }
        Ok(())
    }

    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, Error> {
        Err(Error::InvalidNar {
            offset: self.token_start,
            reason: reason.into(),
        })
    }

    fn feed_inner(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            if self.expect == Expect::End {
                self.token_start = self.offset;
                return self.fail("trailing data after the end of the archive");
            }
            let consumed = match self.phase {
                Phase::Skip { remaining } => {
                    // Hot path: file contents are skipped without inspection.
                    let n = clamp(remaining, data.len());
                    let left = remaining - n as u64;
                    if left == 0 {
                        self.end_payload()?;
                    } else {
                        self.phase = Phase::Skip { remaining: left };
                    }
                    n
                }
                Phase::Length { have } => {
                    if have == 0 {
                        self.token_start = self.offset;
                    }
                    let start = usize::from(have);
                    let n = (8 - start).min(data.len());
                    self.len_buf[start..start + n].copy_from_slice(&data[..n]);
                    let have = have + n as u8;
                    if have == 8 {
                        self.phase = Phase::Length { have: 0 };
                        self.start_payload(u64::from_le_bytes(self.len_buf))?;
                    } else {
                        self.phase = Phase::Length { have };
                    }
                    n
                }
                Phase::Payload { remaining } => {
                    let n = clamp(remaining, data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    let left = remaining - n as u64;
                    if left == 0 {
                        self.end_payload()?;
                    } else {
                        self.phase = Phase::Payload { remaining: left };
                    }
                    n
                }
                Phase::Padding { remaining } => {
                    let n = usize::from(remaining).min(data.len());
                    if data[..n].iter().any(|&b| b != 0) {
                        return self.fail("non-zero padding");
                    }
                    let left = remaining - n as u8;
                    if left == 0 {
                        self.phase = Phase::Length { have: 0 };
                        self.complete_token()?;
                    } else {
                        self.phase = Phase::Padding { remaining: left };
                    }
                    n
                }
            };
            self.offset += consumed as u64;
            data = &data[consumed..];
        }
        Ok(())
    }

    /// Called once a token's length is known: decide how to read the payload
    /// and reject lengths that cannot be right before reading any of it.
    fn start_payload(&mut self, len: u64) -> Result<(), Error> {
        self.pad = ((8 - len % 8) % 8) as u8;
        self.buf.clear();
        let limit = match self.expect {
            Expect::FileData => {
                self.phase = Phase::Skip { remaining: len };
                if len == 0 {
                    self.end_payload()?;
                }
                return Ok(());
            }
            Expect::Name => MAX_NAME_LEN as u64,
            Expect::Target => MAX_TARGET_LEN as u64,
            Expect::End => return self.fail("trailing data after the end of the archive"),
            _ => MAX_KEYWORD_LEN,
        };
        if len > limit {
            return self.fail(format!(
                "token of {len} bytes is longer than allowed here ({limit})"
            ));
        }
        self.phase = Phase::Payload { remaining: len };
        if len == 0 {
            self.end_payload()?;
        }
        Ok(())
    }

    /// Payload done; move to padding (or straight to the next token).
    fn end_payload(&mut self) -> Result<(), Error> {
        if self.pad == 0 {
            self.phase = Phase::Length { have: 0 };
            self.complete_token()
        } else {
            self.phase = Phase::Padding {
                remaining: self.pad,
            };
            Ok(())
        }
    }

    /// A whole token (length, payload, padding) has been read: advance the
    /// grammar.
    fn complete_token(&mut self) -> Result<(), Error> {
        // Take the buffer so the grammar step can mutate other state; put it
        // back afterwards to reuse its allocation.
        let tok = std::mem::take(&mut self.buf);
        let next = self.advance(&tok);
        self.buf = tok;
        self.expect = next?;
        Ok(())
    }

    /// The grammar transition for token `tok` in the current state.
    fn advance(&mut self, tok: &[u8]) -> Result<Expect, Error> {
        Ok(match self.expect {
            Expect::Magic => {
                if tok != MAGIC {
                    return self.fail("not a NAR: bad magic");
                }
                Expect::NodeOpen
            }
            Expect::NodeOpen => self.keyword(tok, b"(", Expect::TypeKeyword)?,
            Expect::TypeKeyword => self.keyword(tok, b"type", Expect::NodeType)?,
            Expect::NodeType => match tok {
                b"regular" => Expect::RegularAttr,
                b"symlink" => Expect::TargetKeyword,
                b"directory" => {
                    if self.dirs.len() >= MAX_DEPTH {
                        return self.fail(format!("directories nested deeper than {MAX_DEPTH}"));
                    }
                    self.dirs.push(Vec::new());
                    Expect::DirItem
                }
                _ => return self.fail(format!("unknown node type {:?}", show(tok))),
            },
            Expect::RegularAttr => match tok {
                b"executable" => Expect::ExecutableEmpty,
                b"contents" => Expect::FileData,
                _ => {
                    return self.fail(format!(
                        "expected \"executable\" or \"contents\", got {:?}",
                        show(tok)
                    ))
                }
            },
            Expect::ExecutableEmpty => {
                if !tok.is_empty() {
                    return self.fail("executable marker must be followed by an empty string");
                }
                Expect::Contents
            }
            Expect::Contents => self.keyword(tok, b"contents", Expect::FileData)?,
            Expect::FileData => Expect::NodeClose,
            Expect::TargetKeyword => self.keyword(tok, b"target", Expect::Target)?,
            Expect::Target => {
                if tok.is_empty() {
                    return self.fail("empty symlink target");
                }
                if tok.contains(&0) {
                    return self.fail("NUL byte in symlink target");
                }
                Expect::NodeClose
            }
            Expect::NodeClose => {
                self.keyword(tok, b")", Expect::NodeClose)?;
                self.after_node()
            }
            Expect::DirItem => match tok {
                b"entry" => Expect::EntryOpen,
                b")" => {
                    self.dirs.pop();
                    self.after_node()
                }
                _ => return self.fail(format!("expected \"entry\" or \")\", got {:?}", show(tok))),
            },
            Expect::EntryOpen => self.keyword(tok, b"(", Expect::NameKeyword)?,
            Expect::NameKeyword => self.keyword(tok, b"name", Expect::Name)?,
            Expect::Name => {
                self.check_name(tok)?;
                Expect::NodeKeyword
            }
            Expect::NodeKeyword => self.keyword(tok, b"node", Expect::NodeOpen)?,
            Expect::EntryClose => self.keyword(tok, b")", Expect::DirItem)?,
            Expect::End => return self.fail("trailing data after the end of the archive"),
        })
    }

    /// Returns `next` if `tok` equals the keyword `word`.
    fn keyword(&self, tok: &[u8], word: &[u8], next: Expect) -> Result<Expect, Error> {
        if tok == word {
            Ok(next)
        } else {
            self.fail(format!("expected {:?}, got {:?}", show(word), show(tok)))
        }
    }

    /// What follows a closed node: the enclosing entry's ")" or the end.
    fn after_node(&self) -> Expect {
        if self.dirs.is_empty() {
            Expect::End
        } else {
            Expect::EntryClose
        }
    }

    /// Validates an entry name and that it sorts after its predecessor.
    fn check_name(&mut self, name: &[u8]) -> Result<(), Error> {
        if name.is_empty() {
            return self.fail("empty entry name");
        }
        if name == b"." || name == b".." {
            return self.fail(format!("invalid entry name {:?}", show(name)));
        }
        if name.iter().any(|&b| b == b'/' || b == 0) {
            return self.fail(format!("entry name {:?} contains '/' or NUL", show(name)));
        }
        let token_start = self.token_start;
        let Some(last) = self.dirs.last_mut() else {
            return self.fail("entry outside a directory");
        };
        // The first entry of a directory has an empty predecessor, which
        // every valid (non-empty) name sorts after.
        if name <= last.as_slice() {
            return Err(Error::InvalidNar {
                offset: token_start,
                reason: format!(
                    "entry {:?} is not strictly after {:?}",
                    show(name),
                    show(last)
                ),
            });
        }
        last.clear();
        last.extend_from_slice(name);
        Ok(())
    }
}

/// `min(remaining, available)` as a usize without lossy casts.
fn clamp(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// Lossy, length-capped rendering of a token for error messages.
fn show(bytes: &[u8]) -> String {
    const CAP: usize = 64;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(CAP)]).into_owned();
    if bytes.len() > CAP {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Minimal test-only NAR writer. It writes entries in the order given,
    /// so tests can build invalid archives too.
    enum Node {
        File { exec: bool, data: Vec<u8> },
        Link(Vec<u8>),
        Dir(Vec<(Vec<u8>, Node)>),
    }

    fn file(data: &[u8]) -> Node {
        Node::File {
            exec: false,
            data: data.to_vec(),
        }
    }

    fn exe(data: &[u8]) -> Node {
        Node::File {
            exec: true,
            data: data.to_vec(),
        }
    }

    fn link(target: &str) -> Node {
        Node::Link(target.as_bytes().to_vec())
    }

    fn dir(entries: Vec<(&str, Node)>) -> Node {
        Node::Dir(
            entries
                .into_iter()
                .map(|(n, node)| (n.as_bytes().to_vec(), node))
                .collect(),
        )
    }

    fn put(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }

    fn put_node(out: &mut Vec<u8>, node: &Node) {
        put(out, b"(");
        put(out, b"type");
        match node {
            Node::File { exec, data } => {
                put(out, b"regular");
                if *exec {
                    put(out, b"executable");
                    put(out, b"");
                }
                put(out, b"contents");
                put(out, data);
            }
            Node::Link(target) => {
                put(out, b"symlink");
                put(out, b"target");
                put(out, target);
            }
            Node::Dir(entries) => {
                put(out, b"directory");
                for (name, child) in entries {
                    put(out, b"entry");
                    put(out, b"(");
                    put(out, b"name");
                    put(out, name);
                    put(out, b"node");
                    put_node(out, child);
                    put(out, b")");
                }
            }
        }
        put(out, b")");
    }

    fn nar(node: &Node) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, MAGIC);
        put_node(&mut out, node);
        out
    }

    /// Builds a raw token stream, for hand-crafted malformed archives.
    fn tokens(toks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in toks {
            put(&mut out, t);
        }
        out
    }

    fn validate(data: &[u8]) -> Result<(), Error> {
        let mut v = NarValidator::new();
        v.feed(data)?;
        v.finish()
    }

    fn validate_bytewise(data: &[u8]) -> Result<(), Error> {
        let mut v = NarValidator::new();
        for b in data {
            v.feed(std::slice::from_ref(b))?;
        }
        v.finish()
    }

    /// Feeds in pseudo-random chunk sizes (including empty chunks).
    fn validate_random(data: &[u8], seed: u64) -> Result<(), Error> {
        let mut state = seed | 1;
        let mut v = NarValidator::new();
        let mut rest = data;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = (state % 40) as usize;
            let n = n.min(rest.len());
            v.feed(&rest[..n])?;
            rest = &rest[n..];
        }
        v.finish()
    }

    /// Asserts every feeding strategy agrees on the outcome.
    fn check(data: &[u8], ok: bool) {
        let results = [
            validate(data),
            validate_bytewise(data),
            validate_random(data, 1),
            validate_random(data, 0xdead_beef),
            validate_random(data, 42),
        ];
        for r in &results {
            assert_eq!(r.is_ok(), ok, "{r:?}");
        }
    }

    fn sample_tree() -> Node {
        dir(vec![
            ("a.sh", exe(b"#!/bin/sh\necho hi\n")),
            ("b.txt", file(b"hello world")),
            ("empty", file(b"")),
            ("link", link("b.txt")),
            ("sub", dir(vec![("Z", file(b"12345678"))])),
            ("sub2", dir(vec![])),
        ])
    }

    #[test]
    fn spec_example_144_bytes() {
        let data = nar(&file(b"Hi! I have no dependencies.\n"));
        assert_eq!(data.len(), 144);
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            "baeabdb75c223d171800c17b05c5e7e8e9980723a90eb6ffcc632a305afc5a42"
        );
        check(&data, true);
    }

    #[test]
    fn valid_archives() {
        check(&nar(&sample_tree()), true);
        check(&nar(&file(b"")), true);
        check(&nar(&exe(b"x")), true);
        check(&nar(&link("/dangling/../target")), true);
        check(&nar(&dir(vec![])), true);
        check(
            &nar(&dir(vec![(
                "a",
                dir(vec![("b", dir(vec![("c", file(b"!"))]))]),
            )])),
            true,
        );
        // Names are compared bytewise: "B" < "a" < "a.b" < "ab" < "\xff".
        check(
            &nar(&Node::Dir(vec![
                (b"B".to_vec(), file(b"")),
                (b"a".to_vec(), file(b"")),
                (b"a.b".to_vec(), file(b"")),
                (b"ab".to_vec(), file(b"")),
                (vec![0xff], file(b"")),
            ])),
            true,
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let data = nar(&sample_tree());
        for cut in 0..data.len() {
            let mut v = NarValidator::new();
            v.feed(&data[..cut]).unwrap();
            assert!(!v.is_complete());
            assert!(v.finish().is_err(), "prefix of {cut} bytes accepted");
        }
        let mut v = NarValidator::new();
        v.feed(&data).unwrap();
        assert!(v.is_complete());
        assert_eq!(v.position(), data.len() as u64);
    }

    #[test]
    fn empty_input_is_invalid() {
        assert!(NarValidator::new().finish().is_err());
    }

    #[test]
    fn bad_magic() {
        let mut data = nar(&file(b"x"));
        data[8] = b'N';
        check(&data, false);
        let mut other = tokens(&[b"nix-archive-2"]);
        other.extend_from_slice(&nar(&file(b"x"))[24..]);
        check(&other, false);
        // A huge length where the magic should be must fail immediately.
        let mut v = NarValidator::new();
        assert!(v.feed(&u64::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn nonzero_padding() {
        let mut data = nar(&file(b"Hi! I have no dependencies.\n"));
        // Padding after the magic.
        let mut a = data.clone();
        a[8 + 13] = 1;
        check(&a, false);
        // Padding after file contents (4 bytes before the final ")" token).
        let n = data.len();
        data[n - 16 - 1] = 7;
        check(&data, false);
    }

    #[test]
    fn unsorted_and_duplicate_entries() {
        check(&nar(&dir(vec![("b", file(b"")), ("a", file(b""))])), false);
        check(&nar(&dir(vec![("a", file(b"")), ("a", file(b""))])), false);
        check(
            &nar(&dir(vec![(
                "x",
                dir(vec![("b", file(b"")), ("a", file(b""))]),
            )])),
            false,
        );
        // Order is per directory: a child dir's names restart.
        check(
            &nar(&dir(vec![
                ("m", dir(vec![("a", file(b""))])),
                ("n", file(b"")),
            ])),
            true,
        );
    }

    #[test]
    fn bad_names() {
        for name in ["", ".", "..", "a/b", "/", "a\0b"] {
            check(&nar(&dir(vec![(name, file(b""))])), false);
        }
        check(&nar(&dir(vec![("...", file(b""))])), true);
        let long = "n".repeat(MAX_NAME_LEN + 1);
        check(&nar(&dir(vec![(long.as_str(), file(b""))])), false);
        let ok = "n".repeat(MAX_NAME_LEN);
        check(&nar(&dir(vec![(ok.as_str(), file(b""))])), true);
    }

    #[test]
    fn truncated() {
        let data = nar(&sample_tree());
        check(&data[..data.len() - 8], false);
        check(&data[..data.len() - 1], false);
        check(&data[..100], false);
    }

    #[test]
    fn trailing_garbage() {
        let mut data = nar(&file(b"x"));
        data.push(0);
        check(&data, false);
        let mut twice = nar(&file(b"x"));
        twice.extend_from_slice(&nar(&file(b"x")));
        check(&twice, false);
        // Trailing data in a later feed call is also caught.
        let mut v = NarValidator::new();
        v.feed(&nar(&file(b"x"))).unwrap();
        assert!(v.feed(b"\0").is_err());
        assert!(v.finish().is_err());
    }

    #[test]
    fn huge_lengths() {
        // Huge keyword length.
        let mut data = tokens(&[MAGIC]);
        data.extend_from_slice(&(1u64 << 40).to_le_bytes());
        check(&data, false);
        // Huge name length must be rejected without reading it.
        let mut data = tokens(&[MAGIC, b"(", b"type", b"directory", b"entry", b"(", b"name"]);
        data.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut v = NarValidator::new();
        assert!(v.feed(&data).is_err());
        // Huge target length.
        let mut data = tokens(&[MAGIC, b"(", b"type", b"symlink", b"target"]);
        data.extend_from_slice(&(MAX_TARGET_LEN as u64 + 1).to_le_bytes());
        let mut v = NarValidator::new();
        assert!(v.feed(&data).is_err());
        // A huge file length is fine to start but the archive is truncated.
        let mut data = tokens(&[MAGIC, b"(", b"type", b"regular", b"contents"]);
        data.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut v = NarValidator::new();
        v.feed(&data).unwrap();
        v.feed(&[0xAB; 4096]).unwrap();
        assert!(v.finish().is_err());
    }

    #[test]
    fn executable_marker_and_symlinks() {
        // "executable" followed by a non-empty string.
        let data = tokens(&[
            MAGIC,
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"x",
            b"contents",
            b"",
            b")",
        ]);
        check(&data, false);
        // Executable marker twice.
        let data = tokens(&[
            MAGIC,
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"",
            b"executable",
            b"",
            b"contents",
            b"",
            b")",
        ]);
        check(&data, false);
        // Missing contents.
        check(&tokens(&[MAGIC, b"(", b"type", b"regular", b")"]), false);
        // Empty symlink target.
        check(
            &tokens(&[MAGIC, b"(", b"type", b"symlink", b"target", b"", b")"]),
            false,
        );
        // Long but allowed target.
        let t = "t".repeat(MAX_TARGET_LEN);
        check(&nar(&link(&t)), true);
    }

    /// A directory holding one empty file `a`, token by token.
    const DIR_WITH_FILE: [&[u8]; 17] = [
        MAGIC,
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        b"a",
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"",
        b")",
        b")",
        b")",
    ];

    #[test]
    fn wrong_keywords() {
        for toks in [
            &[MAGIC, b"[", b"type", b"regular", b"contents", b"", b")"][..],
            &[MAGIC, b"(", b"kind", b"regular", b"contents", b"", b")"],
            &[MAGIC, b"(", b"type", b"fifo", b")"],
            &[MAGIC, b"(", b"type", b"regular", b"contents", b"", b"]"],
            &[MAGIC, b"(", b"type", b"directory", b"file", b")"],
            &[
                MAGIC, b"(", b"type", b"symlink", b"target", b"x", b"target", b"y", b")",
            ],
        ] {
            check(&tokens(toks), false);
        }
        // One wrong token in the directory entry: `name`, `node`, the entry's `)`.
        for (at, wrong) in [(6, &b"nom"[..]), (8, b"nod"), (15, b"x")] {
            let mut toks = DIR_WITH_FILE;
            toks[at] = wrong;
            check(&tokens(&toks), false);
        }
        // The correct version of the entry stream is accepted.
        check(&tokens(&DIR_WITH_FILE), true);
    }

    #[test]
    fn depth_limit() {
        let mut node = file(b"");
        for _ in 0..MAX_DEPTH {
            node = dir(vec![("d", node)]);
        }
        // Exactly MAX_DEPTH nested directories: fine.
        check(&nar(&node), true);
        let deeper = dir(vec![("d", node)]);
        assert!(validate(&nar(&deeper)).is_err());
    }

    #[test]
    fn errors_are_sticky_and_report_offsets() {
        let mut data = nar(&file(b"x"));
        data[8] = b'N';
        let mut v = NarValidator::new();
        let err = v.feed(&data).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidNar {
                offset: 0,
                reason: "not a NAR: bad magic".into()
            }
        );
        assert_eq!(v.feed(b"").unwrap_err(), err);
        assert_eq!(v.finish().unwrap_err(), err);
    }

    #[test]
    fn large_file_is_skipped_cheaply() {
        // 8 GiB of contents fed as the same 1 MiB chunk: only the counter moves.
        const CHUNK: usize = 1 << 20;
        const CHUNKS: u64 = 8192;
        let size = CHUNK as u64 * CHUNKS;
        let mut head = tokens(&[MAGIC, b"(", b"type", b"regular", b"contents"]);
        head.extend_from_slice(&size.to_le_bytes());
        let chunk = vec![0x5Au8; CHUNK];
        let mut v = NarValidator::new();
        v.feed(&head).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..CHUNKS {
            v.feed(&chunk).unwrap();
        }
        let elapsed = start.elapsed();
        v.feed(&tokens(&[b")"])).unwrap();
        assert_eq!(v.position(), head.len() as u64 + size + 16);
        v.finish().unwrap();
        // Generous bound even for debug builds on a busy machine.
        assert!(elapsed.as_secs() < 5, "took {elapsed:?}");
    }

    #[test]
    fn random_garbage_never_panics() {
        let valid = nar(&sample_tree());
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut data = valid.clone();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let pos = (state % data.len() as u64) as usize;
            data[pos] ^= (state >> 32) as u8 | 1;
            // Flips inside file contents stay valid, so only the absence of
            // panics (and agreement between feeding strategies) is checked.
            let whole = validate(&data).is_ok();
            assert_eq!(validate_bytewise(&data).is_ok(), whole);
            let _ = validate_random(&data, state);
        }
    }
}
