//! The resumable-upload calls (docs/resumable-uploads.md): a capability probe, then a
//! session per NAR, one PUT per part and a commit. Only `garret` speaks them, and only to a
//! server that answers the probe.

use anyhow::{Context, Result};
use reqwest::{header, Method, StatusCode};

use super::ApiClient;
use garret_core::nix::Sha256Hash;
use garret_core::upload_session::{
    Capabilities, CreateSessionRequest, PartResult, Session, PART_HASH_HEADER, SESSION_ROUTE,
};
use garret_core::wire::{UploadPathNarInfo, UploadPathResult};

impl ApiClient {
    /// What the server accepts for part uploads; `None` when it has no such API (a stock
    /// atticd or an older garretd answers 404 or 405), so the caller uses `upload-path`.
    pub async fn upload_session_capabilities(&self) -> Result<Option<Capabilities>> {
        let req = self.request(Method::GET, SESSION_ROUTE)?;
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => return Err(self.transport_error(e)),
        };
        if !resp.status().is_success() {
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .await
            .context("reading the capability answer")?;
        // Anything not ours (a proxy's page, an unrelated JSON) is "no part API".
        Ok(serde_json::from_slice::<Capabilities>(&bytes)
            .ok()
            .filter(|c| c.version >= 1))
    }

    /// Starts, or resumes, the session for one NAR.
    pub async fn create_upload_session(
        &self,
        nar_info: &UploadPathNarInfo,
        part_size: u64,
    ) -> Result<Session> {
        let body = CreateSessionRequest {
            nar_info: nar_info.clone(),
            part_size,
        };
        self.json(self.request(Method::POST, SESSION_ROUTE)?.json(&body))
            .await
    }

    /// PUTs one part of exactly `len` bytes, streamed from `body`.
    pub async fn upload_part<S>(
        &self,
        session: &str,
        part: u64,
        len: u64,
        hash: &Sha256Hash,
        body: S,
    ) -> Result<PartResult>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        let path = format!("{SESSION_ROUTE}/{session}/part/{part}");
        let req = self
            .request(Method::PUT, &path)?
            .header(PART_HASH_HEADER, hash.to_typed_hex())
            .header(header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        match self.json(req).await {
            Ok(r) => Ok(r),
            Err(e) => Err(e.context(format!("uploading part {part}"))),
        }
    }

    pub async fn commit_upload_session(&self, session: &str) -> Result<UploadPathResult> {
        let path = format!("{SESSION_ROUTE}/{session}/commit");
        self.json(self.request(Method::POST, &path)?).await
    }
}

/// Whether an error means the session is gone (expired, or cleaned up after a refusal), so
/// a new one must be started.
pub fn session_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<super::ApiError>()
            .is_some_and(|a| a.status() == StatusCode::NOT_FOUND)
    })
}
