//! Trusted identity-token issuers (`[[jwt.oidc]]`, docs/keyless-push.md): their settings,
//! and keeping their key sets current while the server runs.
//!
//! A static `jwks-file` (what the operator renders from its cluster's ServiceAccount issuer)
//! is re-read whenever its content changes, like the revocation list. A key set that cannot
//! be read or parsed leaves that issuer with the keys it had (none at start), so its tokens
//! are refused until the file is fixed, and the rest of the server runs on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    pub jwks_file: PathBuf,
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
pub fn validate(issuers: &[OidcIssuerConfig]) -> anyhow::Result<()> {
    for (i, cfg) in issuers.iter().enumerate() {
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
        cfg.grants()?;
    }
    Ok(())
}

fn read_jwks(path: &Path) -> anyhow::Result<Jwks> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Jwks::parse(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Keeps the issuers' key sets current: [`OidcKeys::poll`] re-reads a key file whose content
/// changed and installs a new verifier when anything did.
pub struct OidcKeys {
    configs: Vec<OidcIssuerConfig>,
    leeway: u64,
    /// Per issuer: the digest last read and the keys in use.
    loaded: Vec<(Option<[u8; 32]>, Arc<Jwks>)>,
}

impl OidcKeys {
    /// Reads every key file once; unreadable ones are logged and retried by `poll`.
    pub fn load(configs: &[OidcIssuerConfig], leeway: u64) -> Self {
        let mut keys = OidcKeys {
            configs: configs.to_vec(),
            leeway,
            loaded: vec![(None, Arc::new(Jwks::default())); configs.len()],
        };
        keys.refresh();
        for (cfg, (seen, _)) in keys.configs.iter().zip(&keys.loaded) {
            if seen.is_none() {
                tracing::warn!(
                    issuer = %cfg.issuer,
                    file = %cfg.jwks_file.display(),
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
            .map(|(cfg, (_, jwks))| Issuer {
                issuer: cfg.issuer.clone(),
                audiences: cfg.audience.clone(),
                jwks: jwks.clone(),
                // Validated when the config was loaded.
                grants: cfg.grants().unwrap_or_default(),
            })
            .collect();
        OidcVerifier::new(issuers, self.leeway)
    }

    /// Re-reads key files whose content changed; true when a key set changed. A file that
    /// vanished or does not parse leaves the keys in use as they are.
    fn refresh(&mut self) -> bool {
        let mut changed = false;
        for (cfg, (seen, jwks)) in self.configs.iter().zip(self.loaded.iter_mut()) {
            let now = digest(&cfg.jwks_file);
            if now == *seen {
                continue;
            }
            *seen = now;
            if now.is_none() {
                tracing::warn!(issuer = %cfg.issuer, file = %cfg.jwks_file.display(), "JWKS file is gone; keeping its keys");
                continue;
            }
            match read_jwks(&cfg.jwks_file) {
                Ok(keys) => {
                    tracing::info!(issuer = %cfg.issuer, keys = keys.len(), "identity-token keys loaded");
                    *jwks = Arc::new(keys);
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

    /// Applies a reloaded config's issuers (keys are re-read) and changed key files.
    pub fn poll(&mut self, state: &SharedState, new_configs: Option<&[OidcIssuerConfig]>) {
        let mut changed = false;
        if let Some(configs) = new_configs {
            if configs != self.configs.as_slice() {
                *self = OidcKeys::load(configs, self.leeway);
                changed = true;
            }
        }
        changed |= self.refresh();
        if changed {
            state.set_oidc(self.verifier());
        }
    }
}
