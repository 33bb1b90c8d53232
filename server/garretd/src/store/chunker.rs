//! Streaming content-defined chunking with FastCDC 2020's cut points (the `fastcdc` crate's
//! `v2020` with normalisation level 1: same gear table, masks and off-by-one rules, so chunks
//! stored before this chunker existed still deduplicate). Bytes arrive in arbitrary pieces
//! and are looked at once, as they arrive: the rolling hash is carried from piece to piece,
//! and a chunk is the list of piece slices it spans, so no byte is copied here. The tests
//! check every cut against the crate's own chunker.

use std::sync::LazyLock;

use bytes::Bytes;
use fastcdc::v2020 as cdc;

#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    pub min_size: usize,
    pub avg_size: usize,
    pub max_size: usize,
}

/// One chunk of a NAR: views of the body pieces it spans, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    parts: Vec<Bytes>,
    len: usize,
}

impl Chunk {
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The bytes as one slice, when the chunk lies within one body piece.
    pub fn contiguous(&self) -> Option<&[u8]> {
        match self.parts.as_slice() {
            [] => Some(&[]),
            [one] => Some(one),
            _ => None,
        }
    }

    /// Appends the chunk's bytes to `out`.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        for p in &self.parts {
            out.extend_from_slice(p);
        }
    }
}

/// The crate's gear table (seed 0), fetched once, and the same shifted left by one.
static GEAR: LazyLock<[[u64; 256]; 2]> = LazyLock::new(|| {
    let gear = *cdc::get_gear_with_seed(0).0;
    [gear, gear.map(|g| g << 1)]
});

/// Streaming chunker. Cut rules, as the crate's `cut` applies them to a chunk's bytes at
/// positions `p` (from the chunk's start): the hash starts at the first even position
/// `≥ min_size − 1` (`first`); a position is tested with the small mask below `avg` and
/// the large one after, until `limit` (`max` rounded down to even); a match at `p` ends the
/// chunk before byte `p`; with no match the chunk is `max` bytes. At the end of input a
/// match at an even last position does not count (the crate tests positions in pairs), so
/// such a match waits in `pending` until the next byte shows up.
pub struct Chunker {
    first: usize,
    avg: usize,
    limit: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    hash: u64,
    /// Bytes of the current chunk seen so far.
    pos: usize,
    current: Chunk,
    pending: bool,
}

impl Chunker {
    pub fn new(params: ChunkParams) -> Chunker {
        // The crate's lower bounds (it refuses smaller values); the config's defaults and
        // the single-chunk mode stay above them.
        let min = params.min_size.max(cdc::MINIMUM_MIN as usize);
        let avg = params.avg_size.max(cdc::AVERAGE_MIN as usize);
        let max = params.max_size.max(cdc::MAXIMUM_MIN as usize);
        let bits = cdc::logarithm2(u32::try_from(avg).unwrap_or(cdc::AVERAGE_MAX)) as usize;
        let mask = |i: usize| cdc::MASKS[i.min(cdc::MASKS.len() - 1)];
        Chunker {
            first: min / 2 * 2,
            avg: avg / 2 * 2,
            limit: max / 2 * 2,
            max,
            mask_s: mask(bits + 1),
            mask_l: mask(bits - 1),
            hash: 0,
            pos: 0,
            current: Chunk::default(),
            pending: false,
        }
    }

    /// Adds a piece of the body; pushes the chunks that are now final onto `out`.
    pub fn push(&mut self, piece: &Bytes, out: &mut Vec<Chunk>) {
        if piece.is_empty() {
            return;
        }
        if self.pending {
            self.confirm_pending(out);
        }
        let n = piece.len();
        // `start`: where the current chunk's part of this piece begins; `off`: next byte.
        let (mut start, mut off) = (0, 0);
        while off < n {
            if self.pos == self.max {
                self.emit(piece.slice(start..off), out);
                start = off;
                continue;
            }
            if self.pos < self.first || self.pos >= self.limit {
                // Untested bytes: before the first tested position, or after the last one.
                let end = if self.pos < self.first {
                    self.first
                } else {
                    self.max
                };
                let take = (end - self.pos).min(n - off);
                self.pos += take;
                off += take;
                continue;
            }
            let (mask, end) = if self.pos < self.avg {
                (self.mask_s, self.avg.min(self.limit))
            } else {
                (self.mask_l, self.limit)
            };
            let take = (end - self.pos).min(n - off);
            match scan(&piece[off..off + take], &mut self.hash, mask) {
                None => {
                    self.pos += take;
                    off += take;
                }
                Some(i) => {
                    let p = self.pos + i;
                    if p & 1 == 0 && off + i + 1 == n {
                        // The byte after `p` decides (see the type's comment).
                        self.pos = p + 1;
                        self.pending = true;
                        off = n;
                    } else {
                        off += i;
                        self.emit(piece.slice(start..off), out);
                        start = off;
                    }
                }
            }
        }
        self.current.push(piece.slice(start..n));
    }

    /// Flushes the tail at end of input.
    pub fn finish(mut self, out: &mut Vec<Chunk>) {
        if !self.current.is_empty() {
            out.push(std::mem::take(&mut self.current));
        }
    }

    /// Ends the current chunk with `last` and starts the next one.
    fn emit(&mut self, last: Bytes, out: &mut Vec<Chunk>) {
        self.current.push(last);
        out.push(std::mem::take(&mut self.current));
        self.pos = 0;
        self.hash = 0;
    }

    /// More input came after an even-position match that ended a piece: the cut stands,
    /// and that piece's last byte starts the next chunk (untested there: `first` ≥ 64).
    fn confirm_pending(&mut self, out: &mut Vec<Chunk>) {
        self.pending = false;
        let mut chunk = std::mem::take(&mut self.current);
        let carried = match chunk.parts.last_mut() {
            Some(last) => last.split_off(last.len() - 1),
            None => Bytes::new(),
        };
        chunk.len -= carried.len();
        if chunk.parts.last().is_some_and(|p| p.is_empty()) {
            chunk.parts.pop();
        }
        out.push(chunk);
        self.hash = 0;
        self.pos = carried.len();
        self.current.push(carried);
    }
}

/// The rolling gear hash over `data`, from `hash`; the index of the first byte after which
/// `hash & mask == 0`. (After a match `hash` is left as it was: the chunk ends there.)
///
/// Two bytes per shift, as the crate does (the hash after the first of a pair is tested
/// shifted left by one, against the mask shifted likewise), four bytes per round. Measured
/// on the upload path this costs what the crate's `cut` costs (≈ 0.8 SHA-256 passes per
/// byte hashed): the loop is bound by its loads and tests, not by the hash's dependency
/// chain, so computing `h1` from `h` directly (tried, with `black_box` to keep the compiler
/// from undoing it) did not help.
#[inline]
fn scan(data: &[u8], hash: &mut u64, mask: u64) -> Option<usize> {
    let [gear, gear_ls] = &*GEAR;
    let mask_ls = mask << 1;
    let mut h = *hash;
    let mut quads = data.chunks_exact(4);
    let mut at = 0;
    for q in quads.by_ref() {
        let (g0, g1, g2, g3) = (
            gear_ls[q[0] as usize],
            gear[q[1] as usize],
            gear_ls[q[2] as usize],
            gear[q[3] as usize],
        );
        let h0 = (h << 2).wrapping_add(g0);
        let h1 = h0.wrapping_add(g1);
        let h2 = (h1 << 2).wrapping_add(g2);
        let h3 = h2.wrapping_add(g3);
        if h0 & mask_ls == 0 {
            return Some(at);
        }
        if h1 & mask == 0 {
            return Some(at + 1);
        }
        if h2 & mask_ls == 0 {
            return Some(at + 2);
        }
        if h3 & mask == 0 {
            return Some(at + 3);
        }
        h = h3;
        at += 4;
    }
    for (i, &b) in quads.remainder().iter().enumerate() {
        h = (h << 1).wrapping_add(gear[b as usize]);
        if h & mask == 0 {
            return Some(at + i);
        }
    }
    *hash = h;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x: u64 = 0x9e3779b97f4a7c15 ^ seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    const P: ChunkParams = ChunkParams {
        min_size: 1024,
        avg_size: 4096,
        max_size: 16384,
    };

    fn chunk_all(params: ChunkParams, data: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut c = Chunker::new(params);
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            c.push(&Bytes::copy_from_slice(p), &mut out);
        }
        c.finish(&mut out);
        out.iter()
            .map(|c| {
                let mut v = Vec::new();
                c.copy_to(&mut v);
                assert_eq!(v.len(), c.len());
                v
            })
            .collect()
    }

    /// The chunks the `fastcdc` crate cuts, the way the previous chunker used it: cut
    /// whenever `max` bytes are buffered, then the tail.
    fn reference(params: ChunkParams, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let window = &rest[..rest.len().min(params.max_size)];
            let cdc = cdc::FastCDC::new(
                window,
                params.min_size as u32,
                params.avg_size as u32,
                params.max_size as u32,
            );
            let (_, len) = cdc.cut(0, window.len());
            let len = len.clamp(1, window.len());
            out.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn the_crate_tests_even_positions_with_the_masks_we_use() {
        let (gear, gear_ls) = cdc::get_gear_with_seed(0);
        assert!(gear.iter().zip(gear_ls.iter()).all(|(g, l)| g << 1 == *l));
        // `(h << 1) & (m << 1) == 0` equals `h & m == 0` only without bit 63.
        assert!(cdc::MASKS.iter().all(|m| m >> 63 == 0));
    }

    #[test]
    fn cuts_equal_the_fastcdc_crate_whatever_the_pieces() {
        // Noise, long runs (no cut: max-size chunks), and a mix; odd sizes for the tail
        // rule; small parameters so the pending rule is hit often.
        let mut runs = noise(40_000, 1);
        runs.extend(std::iter::repeat_n(0u8, 70_000));
        runs.extend(noise(33_333, 2));
        let small = ChunkParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
        };
        let odd = ChunkParams {
            min_size: 1001,
            avg_size: 3000,
            max_size: 9999,
        };
        for (params, data) in [
            (P, noise(300_001, 3)),
            (P, runs.clone()),
            (small, noise(100_003, 4)),
            (small, runs),
            (odd, noise(200_000, 5)),
        ] {
            let want = reference(params, &data);
            assert!(want.len() > 10);
            for piece in [1, 2, 3, 7, 64, 4095, 4096, 100_000, data.len()] {
                assert_eq!(
                    chunk_all(params, &data, piece),
                    want,
                    "piece size {piece}, {params:?}"
                );
            }
        }
    }

    #[test]
    fn every_tail_length_cuts_as_the_crate_does() {
        let small = ChunkParams {
            min_size: 64,
            avg_size: 256,
            max_size: 1024,
        };
        let data = noise(3000, 6);
        for len in 0..data.len() {
            let d = &data[..len];
            assert_eq!(chunk_all(small, d, 97), reference(small, d), "length {len}");
        }
    }

    #[test]
    fn an_insertion_only_changes_nearby_chunks() {
        let data = noise(200_000, 7);
        let mut edited = data.clone();
        edited.splice(100_000..100_000, b"inserted".iter().copied());
        let a = chunk_all(P, &data, 5000);
        let b = chunk_all(P, &edited, 5000);
        let shared = a.iter().filter(|c| b.contains(c)).count();
        assert!(
            shared + 3 >= a.len(),
            "only {shared} of {} chunks survived",
            a.len()
        );
    }

    #[test]
    fn chunks_are_views_of_the_pieces() {
        let data = Bytes::from(noise(100_000, 8));
        let mut c = Chunker::new(P);
        let mut out = Vec::new();
        c.push(&data, &mut out);
        c.finish(&mut out);
        let base = data.as_ptr() as usize;
        let mut at = 0;
        for chunk in &out {
            let bytes = chunk.contiguous().expect("one piece, one part");
            assert_eq!(bytes.as_ptr() as usize - base, at, "no copy");
            at += bytes.len();
        }
        assert_eq!(at, data.len());
    }
}
