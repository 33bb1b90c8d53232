//! Streaming content-defined chunking (FastCDC 2020). Bytes arrive in arbitrary pieces; a
//! chunk is cut as soon as `max_size` bytes are buffered, which yields exactly the cut points
//! of chunking the whole NAR at once, with at most `max_size` + one piece held in memory.
//! Chunks are views into the chunker's buffer (no copy per chunk); when the buffer is full,
//! only the uncut tail moves to a fresh one.

use bytes::{Bytes, BytesMut};

use fastcdc::v2020::FastCDC;

#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    pub min_size: usize,
    pub avg_size: usize,
    pub max_size: usize,
}

pub struct Chunker {
    params: ChunkParams,
    buf: BytesMut,
}

/// Size of the buffers chunks are cut from: large next to a chunk, so moving the tail to a
/// new buffer (at most `max_size` bytes) is rare; small next to an upload's bounded memory
/// (a buffer is freed when its last chunk has been written).
const BUFFER: usize = 2 << 20;

impl Chunker {
    pub fn new(params: ChunkParams) -> Chunker {
        Chunker {
            params,
            buf: BytesMut::new(),
        }
    }

    /// Room for `more` bytes: a new buffer, with the uncut tail copied over, if the current
    /// one is full. (Growing the shared buffer in place is impossible while chunks cut
    /// from it are still alive.)
    fn make_room(&mut self, more: usize) {
        if self.buf.capacity() - self.buf.len() >= more {
            return;
        }
        let need = self.buf.len() + more;
        let mut fresh = BytesMut::with_capacity(need.max(BUFFER).max(self.params.max_size * 2));
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
    }

    fn cut_len(&self, data: &[u8]) -> usize {
        let p = self.params;
        let cdc = FastCDC::new(
            data,
            p.min_size as u32,
            p.avg_size as u32,
            p.max_size as u32,
        );
        let (_, len) = cdc.cut(0, data.len());
        len.max(1).min(data.len())
    }

    fn take(&mut self, len: usize) -> Bytes {
        self.buf.split_to(len).freeze()
    }

    /// Adds bytes; returns the chunks that are now final.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) {
        self.make_room(data.len());
        self.buf.extend_from_slice(data);
        while self.buf.len() >= self.params.max_size {
            let len = self.cut_len(&self.buf);
            out.push(self.take(len));
        }
    }

    /// Flushes the tail at end of input.
    pub fn finish(mut self, out: &mut Vec<Bytes>) {
        while !self.buf.is_empty() {
            let len = self.cut_len(&self.buf);
            out.push(self.take(len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e3779b97f4a7c15;
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

    fn chunk_all(data: &[u8], piece: usize) -> Vec<Bytes> {
        let mut c = Chunker::new(P);
        let mut out = Vec::new();
        for p in data.chunks(piece) {
            c.push(p, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn cut_points_do_not_depend_on_how_bytes_arrive() {
        let data = noise(300_000);
        let whole = chunk_all(&data, data.len());
        for piece in [1, 7, 4096, 100_000] {
            assert_eq!(chunk_all(&data, piece), whole, "piece size {piece}");
        }
        assert_eq!(whole.concat(), data);
        assert!(whole.len() > 10);
        assert!(whole.iter().all(|c| c.len() <= P.max_size));
    }

    #[test]
    fn an_insertion_only_changes_nearby_chunks() {
        let data = noise(200_000);
        let mut edited = data.clone();
        edited.splice(100_000..100_000, b"inserted".iter().copied());
        let a = chunk_all(&data, 5000);
        let b = chunk_all(&edited, 5000);
        let shared = a.iter().filter(|c| b.contains(c)).count();
        assert!(
            shared + 3 >= a.len(),
            "only {shared} of {} chunks survived",
            a.len()
        );
    }
}
