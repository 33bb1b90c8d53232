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
}
