//! Trusted identity-token issuers (`[[jwt.oidc]]`, docs/keyless-push.md): their settings,
//! and keeping their key sets current while the server runs.
//!
//! A static `jwks-file` (what the operator renders from its cluster's ServiceAccount issuer)
//! is re-read whenever its content changes, like the revocation list. A `jwks-url` (or, with
//! neither, the `jwks_uri` of the issuer's OpenID discovery document) is fetched at start,
//! every [`REFRESH_EVERY`], and when a token names a `kid` the set does not have — at most
//! once per [`MIN_REFETCH`], so unknown-`kid` tokens cannot make garretd hammer the issuer.
//! A key set that cannot be read, fetched or parsed leaves that issuer with the keys it had
//! (none at start), so its tokens are refused until it is fixed, and the rest of the server
//! runs on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::state::SharedState;
use garret_core::token::{parse_permission, Grant, Issuer, Jwks, OidcVerifier};

/// One `[[jwt.oidc]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// The token's `aud` must contain one of these (a string or a list in TOML).
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// A JWKS document with the issuer's public keys, re-read on change.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Where to fetch the JWKS instead (https, or http on loopback). With neither this nor
    /// `jwks-file`, the `jwks_uri` of `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
}

/// One `[[jwt.oidc.grants]]` table: `match` = claim → value (`*` globs), `caches` = cache
/// pattern → `r`/`w`/`d` letters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
    pub caches: BTreeMap<String, String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl OidcIssuerConfig {
    /// The grants, validated.
    pub fn grants(&self) -> anyhow::Result<Vec<Grant>> {
        self.grants
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let caches = g
                    .caches
                    .iter()
                    .map(|(p, letters)| Ok((p.clone(), parse_permission(letters)?)))
                    .collect::<Result<Vec<_>, garret_core::token::Error>>();
                caches
                    .and_then(|caches| {
                        Grant::new(
                            g.matches.iter().map(|(k, v)| (k.clone(), v.clone())),
                            caches,
                        )
                    })
                    .with_context(|| format!("[[jwt.oidc]] {:?}, grant {}", self.issuer, i + 1))
            })
            .collect()
    }
}

/// Checks every issuer's settings (not its key file, which may appear later).
/// `attic_issuer` is `[jwt] token-bound-issuer`: tokens naming an identity issuer are judged
/// as identity tokens only, so the two must differ.
pub fn validate(issuers: &[OidcIssuerConfig], attic_issuer: Option<&str>) -> anyhow::Result<()> {
    for (i, cfg) in issuers.iter().enumerate() {
        if Some(cfg.issuer.as_str()) == attic_issuer {
            bail!(
                "[[jwt.oidc]] {:?} is also `token-bound-issuer`: Attic tokens of that issuer would be judged as identity tokens",
                cfg.issuer
            );
        }
        if cfg.issuer.is_empty() {
            bail!("[[jwt.oidc]] entry {} has an empty issuer", i + 1);
        }
        if cfg.audience.is_empty() || cfg.audience.iter().any(String::is_empty) {
            bail!(
                "[[jwt.oidc]] {:?}: `audience` must name at least one non-empty audience",
                cfg.issuer
            );
        }
        if issuers[..i].iter().any(|o| o.issuer == cfg.issuer) {
            bail!("[[jwt.oidc]] {:?} is listed twice", cfg.issuer);
        }
        match (&cfg.jwks_file, &cfg.jwks_url) {
            (Some(_), Some(_)) => bail!(
                "[[jwt.oidc]] {:?}: set `jwks-file` or `jwks-url`, not both",
                cfg.issuer
            ),
            (None, Some(url)) => check_fetch_url(url)
                .with_context(|| format!("[[jwt.oidc]] {:?}: jwks-url", cfg.issuer))?,
            (None, None) => check_fetch_url(&discovery_url(&cfg.issuer))
                .with_context(|| format!("[[jwt.oidc]] {:?}: OpenID discovery", cfg.issuer))?,
            (Some(_), None) => {}
        }
        cfg.grants()?;
    }
    Ok(())
}

/// How often fetched key sets are fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The least time between two fetches of one issuer's keys (after a failure, or when a token
/// names an unknown `kid`).
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// Largest discovery document or JWKS accepted.
const MAX_DOCUMENT: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Keys are fetched over https; plain http only from this machine (tests, a local proxy),
/// since anyone on the path could otherwise swap the keys.
fn check_fetch_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => bail!("{url:?}: keys are fetched over https only (http on loopback)"),
    }
}

fn read_jwks(path: &Path) -> anyhow::Result<Jwks> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Jwks::parse(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// GET `url`, at most [`MAX_DOCUMENT`] bytes of a 200 answer.
async fn get_limited(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let mut resp = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if resp.status() != reqwest::StatusCode::OK {
        bail!("GET {url}: HTTP {}", resp.status());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.with_context(|| format!("GET {url}"))? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            bail!("GET {url}: larger than {MAX_DOCUMENT} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The issuer's key set from its `jwks-url` or its discovery document, with the digest of
/// the JWKS body.
async fn fetch_jwks(
    http: &reqwest::Client,
    cfg: &OidcIssuerConfig,
) -> anyhow::Result<([u8; 32], Jwks)> {
    let url = match &cfg.jwks_url {
        Some(url) => url.clone(),
        None => {
            let url = discovery_url(&cfg.issuer);
            let body = get_limited(http, &url).await?;
            let d: Discovery = serde_json::from_slice(&body)
                .with_context(|| format!("{url}: not an OpenID discovery document"))?;
            // OpenID Connect Discovery §4.3: the document must name the issuer it was asked for.
            if d.issuer != cfg.issuer {
                bail!("{url} names issuer {:?}", d.issuer);
            }
            check_fetch_url(&d.jwks_uri).with_context(|| format!("{url}: jwks_uri"))?;
            d.jwks_uri
        }
    };
    let body = get_limited(http, &url).await?;
    let jwks = Jwks::parse(&body).with_context(|| format!("parsing {url}"))?;
    Ok((Sha256::digest(&body).into(), jwks))
}

/// One issuer's keys and where they stand.
struct Loaded {
    /// Digest of the key file or fetched body last used.
    seen: Option<[u8; 32]>,
    jwks: Arc<Jwks>,
    /// Fetched sets: when the last fetch was tried, and when the next is due.
    tried: Option<Instant>,
    due: Instant,
}

/// Keeps the issuers' key sets current: [`OidcKeys::poll`] re-reads a key file whose content
/// changed, fetches remote sets when due, and installs a new verifier when anything changed.
pub struct OidcKeys {
    configs: Vec<OidcIssuerConfig>,
    leeway: u64,
    loaded: Vec<Loaded>,
    http: reqwest::Client,
    /// A token asked for an unknown `kid` and some remote set could not be fetched again
    /// yet ([`MIN_REFETCH`]): the wish stays until it can.
    wanted: bool,
}

impl OidcKeys {
    /// Reads every key file once (remote sets wait for the first `poll`); unreadable ones
    /// are logged and retried by `poll`.
    pub fn load(configs: &[OidcIssuerConfig], leeway: u64) -> Self {
        let now = Instant::now();
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let mut keys = OidcKeys {
            configs: configs.to_vec(),
            leeway,
            loaded: configs
                .iter()
                .map(|_| Loaded {
                    seen: None,
                    jwks: Arc::new(Jwks::default()),
                    tried: None,
                    due: now,
                })
                .collect(),
            http,
            wanted: false,
        };
        keys.refresh_files();
        for (cfg, l) in keys.configs.iter().zip(&keys.loaded) {
            if let (Some(file), None) = (&cfg.jwks_file, l.seen) {
                tracing::warn!(
                    issuer = %cfg.issuer,
                    file = %file.display(),
                    "JWKS file not readable yet; this issuer's tokens are refused until it is"
                );
            }
        }
        keys
    }

    /// The verifier for the current settings and keys.
    pub fn verifier(&self) -> OidcVerifier {
        let issuers = self
            .configs
            .iter()
            .zip(&self.loaded)
            .map(|(cfg, l)| Issuer {
                issuer: cfg.issuer.clone(),
                audiences: cfg.audience.clone(),
                jwks: l.jwks.clone(),
                // Validated when the config was loaded.
                grants: cfg.grants().unwrap_or_default(),
            })
            .collect();
        OidcVerifier::new(issuers, self.leeway)
    }

    /// Re-reads key files whose content changed; true when a key set changed. A file that
    /// vanished or does not parse leaves the keys in use as they are.
    fn refresh_files(&mut self) -> bool {
        let mut changed = false;
        for (cfg, l) in self.configs.iter().zip(self.loaded.iter_mut()) {
            let Some(file) = &cfg.jwks_file else {
                continue;
            };
            let now = digest(file);
            if now == l.seen {
                continue;
            }
            l.seen = now;
            if now.is_none() {
                tracing::warn!(issuer = %cfg.issuer, file = %file.display(), "JWKS file is gone; keeping its keys");
                continue;
            }
            match read_jwks(file) {
                Ok(keys) => {
                    tracing::info!(issuer = %cfg.issuer, keys = keys.len(), "identity-token keys loaded");
                    l.jwks = Arc::new(keys);
                    changed = true;
                }
                Err(e) => tracing::warn!(
                    issuer = %cfg.issuer,
                    error = format!("{e:#}"),
                    "keeping this issuer's previous keys"
                ),
            }
        }
        changed
    }

    /// Fetches the remote key sets that are due; `wanted` (a token named an unknown `kid`)
    /// makes every remote set due that was not tried within [`MIN_REFETCH`], now or, for
    /// those tried too recently, as soon as that time has passed.
    async fn refresh_remote(&mut self, wanted: bool) -> bool {
        let mut changed = false;
        let now = Instant::now();
        let wanted = wanted || self.wanted;
        self.wanted = false;
        for (cfg, l) in self.configs.iter().zip(self.loaded.iter_mut()) {
            if cfg.jwks_file.is_some() {
                continue;
            }
            let recently = l.tried.is_some_and(|t| now < t + MIN_REFETCH);
            if wanted && recently {
                self.wanted = true;
            }
            if !(now >= l.due || (wanted && !recently)) {
                continue;
            }
            l.tried = Some(now);
            match fetch_jwks(&self.http, cfg).await {
                Ok((fingerprint, keys)) => {
                    l.due = now + REFRESH_EVERY;
                    if l.seen != Some(fingerprint) {
                        tracing::info!(issuer = %cfg.issuer, keys = keys.len(), "identity-token keys fetched");
                        l.seen = Some(fingerprint);
                        l.jwks = Arc::new(keys);
                        changed = true;
                    }
                }
                Err(e) => {
                    l.due = now + MIN_REFETCH;
                    tracing::warn!(
                        issuer = %cfg.issuer,
                        error = format!("{e:#}"),
                        "fetching identity-token keys failed; keeping this issuer's previous keys"
                    );
                }
            }
        }
        changed
    }

    /// Applies a reloaded config's issuers (keys are read again), changed key files and
    /// remote key sets that are due.
    pub async fn poll(&mut self, state: &SharedState, new_configs: Option<&[OidcIssuerConfig]>) {
        let mut changed = false;
        if let Some(configs) = new_configs {
            if configs != self.configs.as_slice() {
                *self = OidcKeys::load(configs, self.leeway);
                changed = true;
            }
        }
        changed |= self.refresh_files();
        changed |= self.refresh_remote(state.take_oidc_refresh_wanted()).await;
        if changed {
            state.set_oidc(self.verifier());
        }
    }
}

/// Keeps the issuers' key sets current in a task of its own (key files polled every
/// `watch::POLL`, remote sets fetched when due), so a slow issuer never delays the other
/// reloads; `configs` carries the issuers of each reloaded config file.
pub fn spawn_refresh(
    state: SharedState,
    mut configs: tokio::sync::watch::Receiver<Vec<OidcIssuerConfig>>,
) {
    let first = configs.borrow_and_update().clone();
    let mut keys = OidcKeys::load(&first, state.config.jwt.leeway);
    tokio::spawn(async move {
        loop {
            let reloaded = if configs.has_changed().unwrap_or(false) {
                Some(configs.borrow_and_update().clone())
            } else {
                None
            };
            keys.poll(&state, reloaded.as_deref()).await;
            tokio::time::sleep(crate::watch::POLL).await;
        }
    });
}
