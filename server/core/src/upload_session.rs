//! Garret's resumable upload API (docs/resumable-uploads.md), an opt-in addition to Attic's:
//! one NAR sent as parts of bounded size, so a proxy's body limit never applies to the NAR
//! and a dropped connection costs one part, not the whole upload. Shared by server and
//! client; stock Attic clients never see it.

use serde::{Deserialize, Serialize};

use crate::wire::UploadPathNarInfo;

/// The version of the part API this crate speaks ([`Capabilities::version`]).
pub const VERSION: u32 = 1;

/// Route of the capability probe (`GET`) and of session creation (`POST`).
pub const SESSION_ROUTE: &str = "_api/v1/upload-session";

/// A part's SHA-256 in Attic's typed form (`sha256:<hex>`), sent with every part.
pub const PART_HASH_HEADER: &str = "X-Garret-Part-Hash";

/// `GET /_api/v1/upload-session`: what the server accepts. A server without this route
/// (stock atticd, older garretd) answers 404 and the client uses `upload-path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Capabilities {
    pub version: u32,
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u64,
}

/// `POST /_api/v1/upload-session`: the upload info `upload-path` takes, and the part size
/// the client would like (the server may raise or lower it; the answer says which).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSessionRequest {
    pub nar_info: UploadPathNarInfo,
    pub part_size: u64,
}

/// A session as the server sees it: the same answer for a new one and for one resumed
/// (same cache, path, NAR, part size and token subject, not yet expired).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub part_size: u64,
    pub num_parts: u64,
    /// Parts already stored, ascending; the client sends only the others.
    pub parts_present: Vec<u64>,
    /// Unix seconds after which an untouched session is garbage-collected.
    pub expires_at: i64,
}

/// `PUT /_api/v1/upload-session/{id}/part/{n}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartResult {
    pub part: u64,
    /// False when the part was already stored (the request was a no-op).
    pub stored: bool,
}

/// The bytes of part `n` (0-based) of a NAR of `nar_size` bytes cut into `part_size` parts;
/// `None` past the last part. Every part is `part_size` long except the last.
pub fn part_len(nar_size: u64, part_size: u64, n: u64) -> Option<u64> {
    let start = n.checked_mul(part_size)?;
    (part_size > 0 && start < nar_size).then(|| (nar_size - start).min(part_size))
}

/// How many parts a NAR of `nar_size` bytes has at `part_size`.
pub fn num_parts(nar_size: u64, part_size: u64) -> u64 {
    if part_size == 0 {
        return 0;
    }
    nar_size.div_ceil(part_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_nar_exactly_once() {
        for (size, part) in [
            (1u64, 1u64),
            (10, 3),
            (9, 3),
            (100, 1000),
            (1 << 30, 64 << 20),
        ] {
            let n = num_parts(size, part);
            let total: u64 = (0..n).map(|i| part_len(size, part, i).unwrap()).sum();
            assert_eq!(total, size, "{size}/{part}");
            assert_eq!(part_len(size, part, n), None);
            assert!((0..n).all(|i| part_len(size, part, i).unwrap() > 0));
        }
        assert_eq!(part_len(10, 3, 3), Some(1));
        assert_eq!(part_len(10, 0, 0), None);
        assert_eq!(part_len(10, 3, u64::MAX), None, "no overflow");
    }
}
