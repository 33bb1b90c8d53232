//! Attic API calls. Server errors come back as `{code, error, message}` JSON and are shown by
//! their message; anything else (proxies, framework rejections) as `HTTP <status> from <url>`
//! with the page's title or text, and a 413 as the body limit it is. `https://` endpoints use
//! rustls with the CAs of [`crate::tls::Trust`].

use std::fmt;

use anyhow::{bail, Context, Result};
use reqwest::{header, Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use garret_core::cache_name::CacheName;
use garret_core::wire::{
    CacheConfig, CreateCacheRequest, GetMissingPathsRequest, GetMissingPathsResponse,
    UploadPathNarInfo, UploadPathResult, UploadPathResultKind, NAR_INFO_HEADER,
    NAR_INFO_PREAMBLE_SIZE_HEADER,
};

mod parts;

pub use parts::session_gone;

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
    /// A non-JSON error body (often a proxy's HTML page).
    Plain {
        status: StatusCode,
        url: Url,
        text: String,
    },
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
            ApiError::Plain { status, url, text } => {
                let detail = plain_detail(text);
                if *status == StatusCode::PAYLOAD_TOO_LARGE {
                    let what = if detail.is_empty() {
                        status.to_string()
                    } else {
                        detail
                    };
                    return write!(
                        f,
                        "the server or a proxy in front of it refused the upload to {url} as too \
                         large (HTTP {what}); raise its body limit, e.g. nginx's \
                         client_max_body_size (0 = unlimited) or the Ingress annotation \
                         nginx.ingress.kubernetes.io/proxy-body-size, or send large NARs in \
                         smaller parts with `garret push --part-size` (e.g. 16MiB)"
                    );
                }
                write!(f, "HTTP {status} from {url}")?;
                if detail.is_empty() {
                    write!(f, " (empty answer)")
                } else {
                    write!(f, ": {detail}")
                }
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// The gist of a non-JSON error body: an HTML page's `<title>`, else the trimmed text, cut
/// to a few hundred characters.
fn plain_detail(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let title = lower.find("<title>").and_then(|start| {
        let start = start + "<title>".len();
        let len = lower[start..].find("</title>")?;
        text.get(start..start + len)
    });
    let detail = title.unwrap_or(text).trim();
    match detail.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail.to_string(),
    }
}

/// Checks and normalises a server endpoint: an `http://` or `https://` URL with a host, no
/// query or fragment, whose path ends in exactly one `/` (so joins keep its last segment).
pub fn parse_endpoint(endpoint: &str) -> Result<Url> {
    let text = endpoint.trim();
    let mut url = Url::parse(text).with_context(|| {
        format!("invalid endpoint URL {endpoint:?}: expected e.g. https://cache.example.com/")
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!(
            "invalid endpoint URL {endpoint:?}: the scheme must be http:// or https://, not {}:",
            url.scheme()
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("invalid endpoint URL {endpoint:?}: no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("invalid endpoint URL {endpoint:?}: no query or fragment allowed");
    }
    let path = format!("{}/", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

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
    trust: crate::tls::Trust,
    /// Why the CA file could not be loaded, when that was forgiven for an http:// endpoint.
    trust_problem: Option<String>,
}

impl ApiClient {
    pub fn new(endpoint: &str, token: Option<String>) -> Result<ApiClient> {
        let endpoint = parse_endpoint(endpoint)?;
        let trust = crate::tls::Trust::from_env();
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("garret/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(std::time::Duration::from_secs(30))
        };
        // A CA file that cannot be read only matters for https (as in Nix): an http://
        // endpoint still works, trusting no CA at all should a redirect lead to https.
        let mut trust_problem = None;
        let builder = match trust.apply(builder()) {
            Ok(b) => b,
            Err(e) if endpoint.scheme() == "http" => {
                trust_problem = Some(format!("{e:#}"));
                builder().tls_built_in_root_certs(false)
            }
            Err(e) => return Err(e),
        };
        let http = builder.build().context("building the HTTP client")?;
        Ok(ApiClient {
            http,
            endpoint,
            token,
            trust,
            trust_problem,
        })
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The same credentials against another base URL (the cache's advertised `api_endpoint`).
    pub fn rebased(&self, endpoint: &str) -> Result<ApiClient> {
        let endpoint =
            parse_endpoint(endpoint).context("the server advertises an unusable api_endpoint")?;
        if let (Some(problem), "https") = (&self.trust_problem, endpoint.scheme()) {
            bail!("the server's API is at {endpoint}, but {problem}");
        }
        Ok(ApiClient {
            endpoint,
            ..self.clone()
        })
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> Result<reqwest::RequestBuilder> {
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
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => return Err(self.transport_error(e)),
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(error_from(resp).await.into())
    }

    /// A request that got no HTTP answer. A TLS failure becomes a [`crate::tls::TlsError`]
    /// saying what to fix (and is not retried); anything else keeps the reqwest error.
    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        if let Some(t) = crate::tls::failure(&e) {
            let mut message = crate::tls::explain(t, &self.trust);
            if let Some(problem) = &self.trust_problem {
                message.push_str(&format!(" ({problem})"));
            }
            return crate::tls::TlsError {
                endpoint: self.endpoint.to_string(),
                message,
            }
            .into();
        }
        anyhow::Error::new(e).context(format!("cannot reach {}", self.endpoint))
    }

    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
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
    let url = resp.url().clone();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => ApiError::Structured {
            status,
            error: b.error,
            message: b.message,
        },
        Err(_) => ApiError::Plain { status, url, text },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_http_or_https_with_one_trailing_slash() {
        for (given, want) in [
            ("http://h:8080", "http://h:8080/"),
            ("http://host//", "http://host/"),
            (" https://c.example/sub/// ", "https://c.example/sub/"),
            ("HTTPS://C.example", "https://c.example/"),
        ] {
            assert_eq!(parse_endpoint(given).unwrap().as_str(), want, "{given}");
        }
        for (given, needle) in [
            ("ftp://h/", "must be http:// or https://, not ftp:"),
            ("localhost:8080", "must be http:// or https://"),
            ("cache.example.com", "expected e.g. https://"),
            ("http://h/?x=1", "no query"),
        ] {
            let e = format!("{:#}", parse_endpoint(given).unwrap_err());
            assert!(e.contains(needle), "{given}: {e}");
        }
    }

    #[test]
    fn a_413_names_the_body_limit_and_other_pages_their_title() {
        let url = Url::parse("https://c.example/_api/v1/upload-path").unwrap();
        let nginx = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n";
        let e = ApiError::Plain {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            url: url.clone(),
            text: nginx.into(),
        }
        .to_string();
        assert!(
            e.contains("refused the upload to https://c.example/_api/v1/upload-path as too large (HTTP 413 Request Entity Too Large)"),
            "{e}"
        );
        assert!(e.contains("client_max_body_size"), "{e}");
        assert!(e.contains("--part-size"), "{e}");
        let e = ApiError::Plain {
            status: StatusCode::BAD_GATEWAY,
            url: url.clone(),
            text: "<html><head><title>502 Bad Gateway</title></head></html>".into(),
        }
        .to_string();
        assert_eq!(
            e,
            "HTTP 502 Bad Gateway from https://c.example/_api/v1/upload-path: 502 Bad Gateway"
        );
        let e = ApiError::Plain {
            status: StatusCode::NOT_FOUND,
            url,
            text: String::new(),
        }
        .to_string();
        assert!(
            e.ends_with("from https://c.example/_api/v1/upload-path (empty answer)"),
            "{e}"
        );
    }
}
