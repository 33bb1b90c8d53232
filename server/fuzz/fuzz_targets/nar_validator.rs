//! The streaming NAR validator: never panics, and its verdict (including the error and its
//! offset) does not depend on how the archive is cut into chunks.
//!
//! Input: one byte choosing a chunk size (1..=64), then the archive.
#![no_main]

use garret_core::nix::NarValidator;
use libfuzzer_sys::fuzz_target;

/// Feeds `nar` in pieces of `chunk` bytes; the first error, else what `finish` says.
fn verdict(nar: &[u8], chunk: usize) -> (Result<(), garret_core::nix::Error>, u64) {
    let mut v = NarValidator::new();
    for piece in nar.chunks(chunk) {
        if let Err(e) = v.feed(piece) {
            // Sticky: the same error again, whatever follows.
            assert_eq!(v.feed(b"x").err(), Some(e.clone()));
            return (Err(e), v.position());
        }
    }
    let complete = v.is_complete();
    let pos = v.position();
    let r = v.finish();
    assert_eq!(complete, r.is_ok());
    (r, pos)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, nar)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(seed % 64) + 1;
    let (whole, whole_pos) = verdict(nar, nar.len().max(1));
    let (cut, cut_pos) = verdict(nar, chunk);
    assert_eq!(whole, cut, "verdict depends on chunking ({chunk} bytes)");
    if whole.is_ok() {
        assert_eq!(whole_pos, nar.len() as u64);
        assert_eq!(cut_pos, nar.len() as u64);
    }
});
