//! Writing blobs with `O_DIRECT`: the bytes go from our buffer to the disk without a copy
//! into the page cache. Uploaded packs are written once and read later, if ever, so
//! buffering them only evicts hotter pages; and on VMs whose free memory is handed back to
//! the host, filling fresh page-cache pages cost ~2 ms of CPU per MiB (docs/benchmarks.md).
//! Object stores such as MinIO write this way for the same reasons.
//!
//! `O_DIRECT` wants the buffer address, the file offset and the length aligned to the
//! device's logical block; 4 KiB covers every common device. The tail block is padded and
//! the file cut back to the real length afterwards. Where the filesystem refuses
//! `O_DIRECT` (tmpfs, some FUSE and network filesystems) writes stay buffered.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const ALIGN: usize = 4096;

/// Does `dir`'s filesystem accept `O_DIRECT` writes? (Probes with a throwaway file.)
pub fn supported(dir: &Path) -> bool {
    let probe = dir.join(format!(".direct-probe-{}", uuid::Uuid::new_v4()));
    let ok = write(&probe, b"probe").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Creates `path` (which must not exist) holding exactly `data`, bypassing the page cache.
/// When `data` starts at an aligned address (packs are built that way, see
/// [`aligned_buffer`]), its whole blocks are written straight from it and only the tail
/// block is copied; otherwise the bytes are copied into an aligned buffer first.
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let direct = if data.as_ptr().align_offset(ALIGN) == 0 {
        data.len() / ALIGN * ALIGN
    } else {
        0
    };
    file.write_all(&data[..direct])?;
    let rest = &data[direct..];
    if !rest.is_empty() {
        let padded = rest.len().div_ceil(ALIGN) * ALIGN;
        // An over-allocated buffer holds an aligned window; no unsafe code needed.
        let mut buf = vec![0u8; padded + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        let window = &mut buf[start..start + padded];
        window[..rest.len()].copy_from_slice(rest);
        file.write_all(window)?;
        if padded != rest.len() {
            file.set_len(data.len() as u64)?;
        }
    }
    Ok(())
}

/// An empty buffer with room for `capacity` bytes whose first byte will sit at an address
/// `O_DIRECT` accepts: returns the vector and the offset to start writing at (the bytes
/// before it are padding; slice them off when freezing).
pub fn aligned_buffer(capacity: usize) -> (Vec<u8>, usize) {
    let mut buf = Vec::<u8>::with_capacity(capacity + ALIGN);
    let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
    buf.resize(start, 0);
    (buf, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exactly_the_data_whatever_its_length() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        if !supported(dir.path()) {
            eprintln!("skipped: {} refuses O_DIRECT", dir.path().display());
            return;
        }
        for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 17, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            write(&path, &data).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn aligned_data_is_written_in_place_and_its_tail_copied() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        if !supported(dir.path()) {
            eprintln!("skipped: {} refuses O_DIRECT", dir.path().display());
            return;
        }
        for len in [1usize, 4096, 4097, 5 * 4096 + 100] {
            let (mut buf, start) = aligned_buffer(len);
            assert_eq!(buf[start..].as_ptr().align_offset(ALIGN), 0);
            buf.extend((0..len).map(|i| (i * 7 % 253) as u8));
            let data = bytes::Bytes::from(buf).slice(start..);
            let path = dir.path().join(format!("a{len}"));
            write(&path, &data).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), &data[..], "length {len}");
        }
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        assert!(write(&path, b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
