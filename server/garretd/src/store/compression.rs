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
    /// back to back); returns the frame's length.
    pub fn compress_into(self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
        let before = out.len();
        match self {
            Compression::None => out.extend_from_slice(data),
            Compression::Zstd { level } => COMPRESSOR.with(|cell| {
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
            })?,
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

thread_local! {
    /// One zstd context per blocking thread: creating one per chunk costs more than
    /// compressing a small chunk.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
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
}
