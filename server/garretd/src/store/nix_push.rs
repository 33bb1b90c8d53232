//! Nix's own push (`nix copy --to`): the NAR arrives first, with no claim, and the narinfo
//! last, as the commit point.
//!
//! Guarantees: an unclaimed NAR is verified against the NAR grammar and stored whole, but no
//! cache serves it, and GC reaps it if no narinfo ever claims it. A narinfo attaches a NAR
//! only if this cache itself received that NAR (proof of possession, unless the server is
//! configured without it) and only if the narinfo's NarSize matches what arrived; the
//! cache's record of the received NAR is dropped once it is claimed.

use bytes::Bytes;
use futures::Stream;

use super::Store;
use crate::db::NewObject;
use crate::error::{ServerError, ServerResult};
use garret_core::nix::Sha256Hash;

impl Store {
    /// Stores a NAR whose hash is not known in advance and, once `accept` (run after the
    /// whole body arrived, e.g. to check the file's hash against its name) agrees, records
    /// that `cache_id` received it. Returns the NAR's hash and size.
    pub async fn ingest_for_narinfo<S, E>(
        &self,
        cache_id: i64,
        body: S,
        accept: impl FnOnce() -> ServerResult<()>,
    ) -> ServerResult<(Sha256Hash, u64)>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let got = self.receive(body, None).await?;
        let (hash, size) = (got.hash, got.size);
        let (_, nar_id) = self.commit(None, got).await?;
        // A refused NAR stays unclaimed and unrecorded: GC removes it.
        accept()?;
        if let Err(e) = self
            .db
            .record_nix_upload(cache_id, &hash.to_typed_hex(), nar_id)
            .await
        {
            return Err(self.write_race(Some(cache_id), e).await);
        }
        Ok((hash, size))
    }

    /// Makes `obj` visible with the NAR its narinfo names, the commit point of a Nix push.
    pub async fn commit_narinfo(
        &self,
        obj: &NewObject,
        nar_hash: &Sha256Hash,
        nar_size: u64,
    ) -> ServerResult<()> {
        let hash_text = nar_hash.to_typed_hex();
        let mut nar = self.db.find_nix_upload(obj.cache_id, &hash_text).await?;
        if nar.is_none() && !self.proof_of_possession {
            nar = self.db.find_nar(&hash_text).await?;
        }
        let nar = nar.ok_or_else(|| {
            ServerError::request(format!(
                "no NAR with NarHash {} was uploaded to this cache; upload the NAR first",
                nar_hash.to_typed_nix32()
            ))
        })?;
        if nar.nar_size as u64 != nar_size {
            return Err(ServerError::request(format!(
                "NarSize {} does not match the uploaded NAR ({} bytes)",
                nar_size, nar.nar_size
            )));
        }
        if let Err(e) = self.db.attach_object(obj, nar.id).await {
            return Err(self.write_race(Some(obj.cache_id), e).await);
        }
        self.db.forget_nix_upload(obj.cache_id, &hash_text).await?;
        Ok(())
    }
}
