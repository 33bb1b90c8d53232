//! The NAR validator against a model: the fuzzer builds a file tree, this target writes it
//! out as a NAR exactly as Nix serialises one, and the validator must accept it exactly
//! when the tree obeys Nix's rules (entry names non-empty, not `.`/`..`, without `/` or NUL,
//! strictly ascending per directory; symlink targets non-empty without NUL; the size and
//! depth limits of `garret_core::nix::nar`). Any archive it accepts must also be refused
//! once cut short, and the verdict must not depend on how the archive is chunked.
#![no_main]

use garret_core::nix::nar::{MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};
use garret_core::nix::NarValidator;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Node {
    Regular { executable: bool, contents: Vec<u8> },
    Symlink { target: Vec<u8> },
    Directory(Vec<(Vec<u8>, Node)>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    root: Node,
    /// Where to cut the archive for the truncation check.
    cut: u32,
    /// Chunk size for the chunked feed (taken modulo 4096, plus one).
    chunk: u16,
}

fn str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
}

fn write(out: &mut Vec<u8>, node: &Node) {
    str(out, b"(");
    str(out, b"type");
    match node {
        Node::Regular {
            executable,
            contents,
        } => {
            str(out, b"regular");
            if *executable {
                str(out, b"executable");
                str(out, b"");
            }
            str(out, b"contents");
            str(out, contents);
        }
        Node::Symlink { target } => {
            str(out, b"symlink");
            str(out, b"target");
            str(out, target);
        }
        Node::Directory(entries) => {
            str(out, b"directory");
            for (name, child) in entries {
                str(out, b"entry");
                str(out, b"(");
                str(out, b"name");
                str(out, name);
                str(out, b"node");
                write(out, child);
                str(out, b")");
            }
        }
    }
    str(out, b")");
}

/// Nix's rules, as the model of what must be accepted. `depth` counts directories.
fn valid(node: &Node, depth: usize) -> bool {
    match node {
        Node::Regular { .. } => true,
        Node::Symlink { target } => {
            !target.is_empty() && target.len() <= MAX_TARGET_LEN && !target.contains(&0)
        }
        Node::Directory(entries) => {
            if depth + 1 > MAX_DEPTH {
                return false;
            }
            let names_ok = entries.iter().all(|(name, _)| {
                !name.is_empty()
                    && name.len() <= MAX_NAME_LEN
                    && name != b"."
                    && name != b".."
                    && !name.iter().any(|&b| b == b'/' || b == 0)
            });
            let sorted = entries.windows(2).all(|w| w[0].0 < w[1].0);
            names_ok && sorted && entries.iter().all(|(_, c)| valid(c, depth + 1))
        }
    }
}

fn accepts(nar: &[u8], chunk: usize) -> bool {
    let mut v = NarValidator::new();
    nar.chunks(chunk.max(1)).all(|c| v.feed(c).is_ok()) && v.finish().is_ok()
}

fuzz_target!(|input: Input| {
    let mut nar = Vec::new();
    str(&mut nar, b"nix-archive-1");
    write(&mut nar, &input.root);
    let expected = valid(&input.root, 0);
    let whole = accepts(&nar, nar.len());
    assert_eq!(
        whole, expected,
        "validator and model disagree on {:?}",
        input.root
    );
    let chunk = usize::from(input.chunk % 4096) + 1;
    assert_eq!(accepts(&nar, chunk), whole, "verdict depends on chunking");
    if whole {
        let cut = input.cut as usize % nar.len();
        assert!(
            !accepts(&nar[..cut], nar.len()),
            "a NAR cut at {cut} was accepted"
        );
    }
});
