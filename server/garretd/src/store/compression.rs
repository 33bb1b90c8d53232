//! Per-chunk compression. Each chunk is an independent frame; concatenated zstd frames
//! decode as one stream, which is how multi-chunk NARs are served.

use bytes::Bytes;

use crate::config::{CompressionConfig, CompressionType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

impl Compression {
    pub fn from_config(c: &CompressionConfig) -> anyhow::Result<Compression> {
        Ok(match c.kind {
            CompressionType::None => Compression::None,
            CompressionType::Zstd => Compression::Zstd {
                level: c.level.unwrap_or(DEFAULT_ZSTD_LEVEL),
            },
            CompressionType::Xz | CompressionType::Brotli => {
                anyhow::bail!("[compression] only \"zstd\" and \"none\" are supported")
            }
        })
    }

    /// The name Nix reads in a narinfo's `Compression:` field.
    pub fn nix_name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// Appends `data` compressed as one independent frame to `out` (how chunks are packed
    /// back to back); returns the frame's length. A chunk that looks incompressible is not
    /// handed to zstd at all but stored as a frame of raw blocks (see [`raw_frame_into`]):
    /// still zstd, so Nix and the download path read it like any other chunk.
    pub fn compress_into(self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
        self.compress_parts_into(&[data], out)
    }

    /// [`Self::compress_into`] for bytes held in several pieces (a chunk spanning body
    /// pieces): raw frames and `none` copy straight from the pieces; zstd gets one slice,
    /// joined in a per-thread scratch buffer only when the chunk is in several pieces.
    pub fn compress_parts_into<P: AsRef<[u8]>>(
        self,
        parts: &[P],
        out: &mut Vec<u8>,
    ) -> std::io::Result<usize> {
        let before = out.len();
        match self {
            Compression::None => parts.iter().for_each(|p| out.extend_from_slice(p.as_ref())),
            Compression::Zstd { .. } if looks_incompressible_parts(parts) => {
                raw_frame_parts_into(parts, out)
            }
            Compression::Zstd { level } => match parts {
                [one] => zstd_into(level, one.as_ref(), out)?,
                _ => SCRATCH.with(|cell| {
                    let mut joined = cell.borrow_mut();
                    joined.clear();
                    parts
                        .iter()
                        .for_each(|p| joined.extend_from_slice(p.as_ref()));
                    let r = zstd_into(level, &joined, out);
                    // Do not keep a large chunk's worth of memory per thread.
                    if joined.capacity() > SCRATCH_KEEP {
                        *joined = Vec::new();
                    }
                    r
                })?,
            },
        }
        Ok(out.len() - before)
    }

    pub fn compress(self, data: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Compression::None => Ok(Bytes::copy_from_slice(data)),
            Compression::Zstd { level } => COMPRESSOR.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_none_or(|(l, _)| *l != level) {
                    *slot = Some((level, zstd::bulk::Compressor::new(level)?));
                }
                match slot.as_mut() {
                    Some((_, c)) => c.compress(data).map(Bytes::from),
                    None => zstd::bulk::compress(data, level).map(Bytes::from),
                }
            }),
        }
    }
}

/// Appends one zstd frame of `data` at `level` to `out`.
fn zstd_into(level: i32, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let before = out.len();
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        // zstd writes into an initialised slice; the zeroing is cheap next to
        // compressing, and the tail is cut back to the frame's real length.
        out.resize(before + zstd::zstd_safe::compress_bound(data.len()), 0);
        let written = match slot.as_mut() {
            Some((_, c)) => c.compress_to_buffer(data, &mut out[before..]),
            None => Err(std::io::Error::other("no zstd context")),
        };
        out.truncate(before + *written.as_ref().unwrap_or(&0));
        written.map(|_| ())
    })
}

/// Scratch buffers above this size are not kept between chunks.
const SCRATCH_KEEP: usize = 1 << 20;

thread_local! {
    /// One zstd context per blocking thread: creating one per chunk costs more than
    /// compressing a small chunk.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// Where a chunk spanning several body pieces is joined for zstd.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest block a zstd frame may hold (RFC 8878, `Block_Maximum_Size`).
const ZSTD_MAX_BLOCK: usize = 128 << 10;

/// Appends `data` as one zstd frame made of raw (stored) blocks: the frame header states
/// the content size (single segment, no checksum), then each block is a 3-byte header and
/// the bytes as they are. Costs one copy and 9 + 3 per 128 KiB bytes; any zstd decoder
/// reads it, and reading it is a copy too.
#[cfg(test)]
pub fn raw_frame_into(data: &[u8], out: &mut Vec<u8>) {
    raw_frame_parts_into(&[data], out)
}

/// [`raw_frame_into`] for bytes held in several pieces; blocks may span pieces.
fn raw_frame_parts_into<P: AsRef<[u8]>>(parts: &[P], out: &mut Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    let blocks = len.div_ceil(ZSTD_MAX_BLOCK).max(1);
    out.reserve(13 + 3 * blocks + len);
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    match u32::try_from(len) {
        // Frame_Content_Size_flag 2 (4 bytes) | Single_Segment_flag
        Ok(n) => {
            out.push(0b1010_0000);
            out.extend_from_slice(&n.to_le_bytes());
        }
        // Frame_Content_Size_flag 3 (8 bytes) | Single_Segment_flag
        Err(_) => {
            out.push(0b1110_0000);
            out.extend_from_slice(&(len as u64).to_le_bytes());
        }
    }
    let mut pieces = parts.iter().map(|p| p.as_ref()).filter(|p| !p.is_empty());
    let mut piece: &[u8] = pieces.next().unwrap_or(&[]);
    let mut left = len;
    loop {
        let n = left.min(ZSTD_MAX_BLOCK);
        left -= n;
        // Block_Size << 3 | Block_Type 0 (raw) << 1 | Last_Block
        let header = ((n as u32) << 3) | u32::from(left == 0);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        let mut need = n;
        while need > 0 {
            if piece.is_empty() {
                piece = pieces.next().unwrap_or(&[]);
                if piece.is_empty() {
                    break;
                }
            }
            let k = need.min(piece.len());
            out.extend_from_slice(&piece[..k]);
            piece = &piece[k..];
            need -= k;
        }
        if left == 0 {
            break;
        }
    }
}

/// Bytes sampled per chunk by [`looks_incompressible`]: 32 windows of 128 bytes, spread
/// over the whole chunk.
const SAMPLE_WINDOWS: usize = 32;
const SAMPLE_WINDOW: usize = 128;

/// Whether zstd would save (next to) nothing on `data`, judged from a 4 KiB sample: both
/// the byte distribution and the distribution of differences between neighbouring bytes
/// must be close to uniform (compressed, encrypted or random data). The second test keeps
/// counters, ramps and tables (uniform bytes, very regular steps) on the zstd path.
/// Long-range repeats of random data inside one chunk are missed; those chunks are stored
/// raw, at most a few per cent larger than zstd would make them.
/// About 1/16 of the bytes are looked at, so it costs a few per cent of one zstd pass.
#[cfg(test)]
pub fn looks_incompressible(data: &[u8]) -> bool {
    looks_incompressible_parts(&[data])
}

/// [`looks_incompressible`] for bytes held in several pieces (a window spanning two pieces
/// is joined on the stack).
fn looks_incompressible_parts<P: AsRef<[u8]>>(parts: &[P]) -> bool {
    let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
    // Too short to judge, and the frame overhead matters there: let zstd decide.
    if len < SAMPLE_WINDOWS * SAMPLE_WINDOW * 2 {
        return false;
    }
    let mut bytes = [0u32; 256];
    let mut deltas = [0u32; 256];
    let stride = (len - SAMPLE_WINDOW) / (SAMPLE_WINDOWS - 1);
    let mut joined = [0u8; SAMPLE_WINDOW];
    // (index of the piece, its start offset) holding the next window's first byte
    let (mut at_piece, mut piece_start) = (0usize, 0usize);
    for w in 0..SAMPLE_WINDOWS {
        let from = w * stride;
        while piece_start + parts[at_piece].as_ref().len() <= from {
            piece_start += parts[at_piece].as_ref().len();
            at_piece += 1;
        }
        let piece = parts[at_piece].as_ref();
        let local = from - piece_start;
        let window: &[u8] = if local + SAMPLE_WINDOW <= piece.len() {
            &piece[local..local + SAMPLE_WINDOW]
        } else {
            let mut filled = 0;
            let mut src = &piece[local..];
            let mut next = at_piece + 1;
            while filled < SAMPLE_WINDOW {
                let k = src.len().min(SAMPLE_WINDOW - filled);
                joined[filled..filled + k].copy_from_slice(&src[..k]);
                filled += k;
                if filled < SAMPLE_WINDOW {
                    src = parts[next].as_ref();
                    next += 1;
                }
            }
            &joined
        };
        let mut prev = window[0];
        for &b in window {
            bytes[b as usize] += 1;
            deltas[b.wrapping_sub(prev) as usize] += 1;
            prev = b;
        }
    }
    entropy_bits(&bytes) >= INCOMPRESSIBLE_BITS && entropy_bits(&deltas) >= INCOMPRESSIBLE_BITS
}

/// Samples per histogram in [`looks_incompressible`].
const SAMPLE: usize = SAMPLE_WINDOWS * SAMPLE_WINDOW;

/// Order-0 entropy of a 4,096-byte sample of uniform random bytes is about 7.955 bits (the
/// estimate is biased low by ~255/(2·n·ln 2)); zstd's Huffman literals save under 1.5 %
/// above this threshold.
const INCOMPRESSIBLE_BITS: f64 = 7.88;

/// `c · log2 c` for every count a sample histogram can hold, computed once: the probe runs
/// per chunk, and 512 `log2` calls per chunk showed up in upload profiles.
static C_LOG2_C: std::sync::LazyLock<Vec<f64>> = std::sync::LazyLock::new(|| {
    (0..=SAMPLE)
        .map(|c| {
            if c == 0 {
                0.0
            } else {
                c as f64 * (c as f64).log2()
            }
        })
        .collect()
});

/// Shannon entropy in bits per symbol of a histogram of [`SAMPLE`] samples:
/// `log2 n − Σ c·log2 c / n`.
fn entropy_bits(hist: &[u32; 256]) -> f64 {
    let table = &*C_LOG2_C;
    let sum: f64 = hist
        .iter()
        .map(|&c| table.get(c as usize).copied().unwrap_or(0.0))
        .sum();
    (SAMPLE as f64).log2() - sum / SAMPLE as f64
}

/// zstd level used when the config names none. Attic uses 8; level 3 is zstd's own default
/// and several times faster on the upload path for a few percent more bytes.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_frames_decode_as_one_stream() {
        let c = Compression::Zstd { level: 3 };
        let a = c.compress(b"hello ").unwrap();
        let b = c.compress(b"world").unwrap();
        let joined = [a, b].concat();
        assert_eq!(zstd::decode_all(&joined[..]).unwrap(), b"hello world");
    }

    #[test]
    fn frames_packed_into_one_buffer_decode_one_by_one() {
        for c in [Compression::Zstd { level: 3 }, Compression::None] {
            let mut pack = b"header".to_vec();
            let a = c.compress_into(b"first chunk", &mut pack).unwrap();
            let b = c.compress_into(&[7u8; 5000], &mut pack).unwrap();
            assert_eq!(pack.len(), 6 + a + b);
            let first = &pack[6..6 + a];
            let second = &pack[6 + a..];
            let decode = |f: &[u8]| match c {
                Compression::None => f.to_vec(),
                Compression::Zstd { .. } => zstd::decode_all(f).unwrap(),
            };
            assert_eq!(decode(first), b"first chunk");
            assert_eq!(decode(second), vec![7u8; 5000]);
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn raw_frames_decode_whatever_the_length() {
        let data = noise(3 * ZSTD_MAX_BLOCK + 5, 7);
        for len in [
            1,
            2,
            1000,
            ZSTD_MAX_BLOCK - 1,
            ZSTD_MAX_BLOCK,
            ZSTD_MAX_BLOCK + 1,
            data.len(),
        ] {
            let mut frame = b"before".to_vec();
            raw_frame_into(&data[..len], &mut frame);
            let frame = &frame[6..];
            assert_eq!(
                frame.len(),
                9 + 3 * len.div_ceil(ZSTD_MAX_BLOCK) + len,
                "length {len}"
            );
            assert_eq!(
                zstd::decode_all(frame).unwrap(),
                &data[..len],
                "length {len}"
            );
            // The frame states its content size, as zstd's own frames do.
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(frame).ok(),
                Some(Some(len as u64)),
                "length {len}"
            );
        }
    }

    #[test]
    fn random_bytes_are_stored_raw_and_structure_is_compressed() {
        let c = Compression::Zstd { level: 3 };
        let random = noise(64 << 10, 1);
        let mut out = Vec::new();
        let n = c.compress_into(&random, &mut out).unwrap();
        assert_eq!(
            n,
            random.len() + 9 + 3,
            "random bytes become one raw block frame"
        );
        assert!(looks_incompressible(&random));

        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
            .iter()
            .copied()
            .cycle()
            .take(64 << 10)
            .collect();
        // Every byte value equally often, but a ramp: the neighbour test catches it.
        let ramp: Vec<u8> = (0..64usize << 10).map(|i| i as u8).collect();
        // Random half, zeros half: the byte distribution is far from uniform.
        let mut half = noise(32 << 10, 2);
        half.resize(64 << 10, 0);
        for (name, data) in [("text", &text), ("ramp", &ramp), ("half", &half)] {
            assert!(!looks_incompressible(data), "{name}");
            let mut out = Vec::new();
            let n = c.compress_into(data, &mut out).unwrap();
            assert!(n < data.len() * 3 / 4, "{name} was not compressed: {n}");
            assert_eq!(zstd::decode_all(&out[..]).unwrap(), *data, "{name}");
        }
        // Short chunks are left to zstd.
        assert!(!looks_incompressible(&random[..4096]));
    }

    #[test]
    fn a_chunk_in_several_pieces_is_stored_as_if_it_were_one() {
        let random = noise(200 << 10, 9);
        let text: Vec<u8> = b"0123456789 abcdefghij\n"
            .iter()
            .copied()
            .cycle()
            .take(100 << 10)
            .collect();
        for c in [Compression::Zstd { level: 3 }, Compression::None] {
            for data in [&random, &text] {
                let mut whole = Vec::new();
                c.compress_into(data, &mut whole).unwrap();
                // Cuts inside sample windows, inside raw blocks, and an empty piece.
                for cuts in [
                    vec![1usize],
                    vec![77, 77, 5000],
                    vec![ZSTD_MAX_BLOCK - 3, 150_000],
                ] {
                    let mut parts: Vec<&[u8]> = Vec::new();
                    let mut at = 0;
                    for cut in cuts.into_iter().map(|c| c.min(data.len())) {
                        parts.push(&data[at..cut]);
                        at = cut;
                    }
                    parts.push(&data[at..]);
                    let mut split = Vec::new();
                    let n = c.compress_parts_into(&parts, &mut split).unwrap();
                    assert_eq!(n, split.len());
                    assert_eq!(split, whole, "{c:?}, {} bytes", data.len());
                }
            }
        }
    }

    #[test]
    fn raw_and_compressed_frames_mix_in_one_stream() {
        let c = Compression::Zstd { level: 3 };
        let random = noise(200 << 10, 3);
        let zeros = vec![0u8; 100 << 10];
        let mut pack = Vec::new();
        for part in [&random, &zeros, &random, &zeros] {
            c.compress_into(part, &mut pack).unwrap();
        }
        assert!(pack.len() < 2 * random.len() + 4096);
        let whole = [&random[..], &zeros, &random, &zeros].concat();
        assert_eq!(zstd::decode_all(&pack[..]).unwrap(), whole);
        let mut streamed = Vec::new();
        std::io::copy(
            &mut zstd::stream::read::Decoder::new(&pack[..]).unwrap(),
            &mut streamed,
        )
        .unwrap();
        assert_eq!(streamed, whole);
    }
}
