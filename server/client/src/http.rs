//! Attic API calls. Server errors come back as `{code, error, message}` JSON and are shown by
//! their message; anything else (proxies, framework rejections) as `HTTP <status>: <text>`.

use std::fmt;

use anyhow::{Context, Result};
use reqwest::{header, Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use garret_core::cache_name::CacheName;
use garret_core::wire::{
    CacheConfig, CreateCacheRequest, GetMissingPathsRequest, GetMissingPathsResponse,
    UploadPathNarInfo, UploadPathResult, UploadPathResultKind, NAR_INFO_HEADER,
    NAR_INFO_PREAMBLE_SIZE_HEADER,
};

/// Attic's client switches to the preamble form at this size of the upload-info JSON.
pub const NAR_INFO_HEADER_LIMIT: usize = 4096;

/// An error answer from the server.
#[derive(Debug)]
pub enum ApiError {
    /// Attic's JSON error body.
    Structured {
        status: StatusCode,
        error: String,
        message: String,
    },
    /// A non-JSON error body.
    Plain { status: StatusCode, text: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Structured { status, .. } | ApiError::Plain { status, .. } => *status,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Structured {
                status, message, ..
            } => {
                write!(f, "{message}")?;
                // Attic-style servers answer 401 for a bad token *and* an unknown cache (to hide
                // which exist); say so, since "Unauthorized." alone is a common puzzle.
                if *status == StatusCode::UNAUTHORIZED && !message.contains("rejected") {
                    write!(
                        f,
                        " (the token is missing, invalid or expired, has no rights on this cache, or the cache does not exist)"
                    )?;
                }
                Ok(())
            }
            ApiError::Plain { status, text } => write!(f, "HTTP {status}: {}", text.trim()),
        }
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    message: String,
}

/// One server's API, authenticated with an optional bearer token.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    endpoint: Url,
    token: Option<String>,
}

impl ApiClient {
    pub fn new(endpoint: &str, token: Option<String>) -> Result<ApiClient> {
        // A base without a trailing slash would lose its last segment on join.
        let mut ep = endpoint.trim().to_string();
        if !ep.ends_with('/') {
            ep.push('/');
        }
        let endpoint =
            Url::parse(&ep).with_context(|| format!("invalid server URL {endpoint:?}"))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("garret/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            http,
            endpoint,
            token,
        })
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The same credentials against another base URL (the cache's advertised `api_endpoint`).
    pub fn rebased(&self, endpoint: &str) -> Result<ApiClient> {
        let mut c = ApiClient::new(endpoint, self.token.clone())?;
        c.http = self.http.clone();
        Ok(c)
    }

    fn request(&self, method: Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let url = self
            .endpoint
            .join(path)
            .with_context(|| format!("building URL for {path}"))?;
        let r = self.http.request(method, url);
        Ok(match &self.token {
            // Lower-case scheme, exactly what the stock Attic client sends.
            Some(t) => r.header(header::AUTHORIZATION, format!("bearer {t}")),
            None => r,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.endpoint))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from(resp).await.into())
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.context("reading the response")?;
        serde_json::from_slice(&bytes).context("the server's answer is not the expected JSON")
    }

    fn config_path(cache: &CacheName) -> String {
        format!("_api/v1/cache-config/{cache}")
    }

    pub async fn get_cache_config(&self, cache: &CacheName) -> Result<CacheConfig> {
        self.json(self.request(Method::GET, &Self::config_path(cache))?)
            .await
    }

    pub async fn create_cache(&self, cache: &CacheName, req: &CreateCacheRequest) -> Result<()> {
        self.send(
            self.request(Method::POST, &Self::config_path(cache))?
                .json(req),
        )
        .await?;
        Ok(())
    }

    pub async fn configure_cache(&self, cache: &CacheName, patch: &CacheConfig) -> Result<()> {
        self.send(
            self.request(Method::PATCH, &Self::config_path(cache))?
                .json(patch),
        )
        .await?;
        Ok(())
    }

    pub async fn destroy_cache(&self, cache: &CacheName) -> Result<()> {
        self.send(self.request(Method::DELETE, &Self::config_path(cache))?)
            .await?;
        Ok(())
    }

    pub async fn get_missing_paths(
        &self,
        cache: &CacheName,
        hashes: Vec<String>,
    ) -> Result<Vec<String>> {
        let body = GetMissingPathsRequest {
            cache: cache.to_string(),
            store_path_hashes: hashes,
        };
        let resp: GetMissingPathsResponse = self
            .json(
                self.request(Method::POST, "_api/v1/get-missing-paths")?
                    .json(&body),
            )
            .await?;
        Ok(resp.missing_paths)
    }

    /// PUTs one NAR. `nar` must yield exactly `info.nar_size` bytes; it is sent as a chunked
    /// body so no NAR is ever held in memory.
    pub async fn upload_path<S>(
        &self,
        info: &UploadPathNarInfo,
        nar: S,
        force_preamble: bool,
    ) -> Result<UploadPathResult>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    {
        use futures::StreamExt;
        let json = serde_json::to_string(info).context("serializing upload info")?;
        let req = self.request(Method::PUT, "_api/v1/upload-path")?;
        let req = if json.len() < NAR_INFO_HEADER_LIMIT && !force_preamble {
            req.header(NAR_INFO_HEADER, json)
                .body(reqwest::Body::wrap_stream(nar))
        } else {
            let len = json.len();
            let preamble = futures::stream::once(async move { Ok(bytes::Bytes::from(json)) });
            req.header(NAR_INFO_PREAMBLE_SIZE_HEADER, len.to_string())
                .body(reqwest::Body::wrap_stream(preamble.chain(nar)))
        };
        let resp = self.send(req).await?;
        let bytes = resp.bytes().await.context("reading the upload response")?;
        // Attic: a non-JSON 2xx answer still means the path was stored.
        Ok(serde_json::from_slice(&bytes).unwrap_or(UploadPathResult {
            kind: UploadPathResultKind::Uploaded,
            file_size: None,
            frac_deduplicated: None,
        }))
    }
}

async fn error_from(resp: reqwest::Response) -> ApiError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => ApiError::Structured {
            status,
            error: b.error,
            message: b.message,
        },
        Err(_) => ApiError::Plain { status, text },
    }
}
