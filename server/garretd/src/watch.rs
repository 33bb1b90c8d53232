//! Reloads what may change while the server runs: declared caches (the config file) and the
//! token revocation list. Files are polled by content, which also sees the atomic symlink
//! swaps Kubernetes uses for mounted ConfigMaps and Secrets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::api::state::SharedState;
use crate::config::{Config, ConfigSource};
use garret_core::token::RevocationList;

/// How often watched files are checked: changes apply within this time.
pub const POLL: Duration = Duration::from_secs(2);

fn digest(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Reads the revocation list; a configured but unreadable list is an error.
pub fn read_revocations(path: Option<&Path>) -> anyhow::Result<RevocationList> {
    match path {
        None => Ok(RevocationList::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading the revocation list {}: {e}", p.display()))?;
            Ok(RevocationList::parse(&text))
        }
    }
}

/// Polls the config file and the revocation list; applies changes.
pub fn spawn(state: SharedState, source: ConfigSource) {
    tokio::spawn(async move {
        let mut config_seen = source.file.as_deref().and_then(digest);
        let mut revocation_path: Option<PathBuf> = state.config.jwt.revocation_list.clone();
        let mut revocation_seen = revocation_path.as_deref().and_then(digest);
        loop {
            tokio::time::sleep(POLL).await;
            if let Some(file) = &source.file {
                let now = digest(file);
                if now.is_some() && now != config_seen {
                    config_seen = now;
                    match Config::load(&source) {
                        Ok(cfg) => {
                            reload_caches(&state, &cfg).await;
                            if cfg.jwt.revocation_list != revocation_path {
                                revocation_path = cfg.jwt.revocation_list.clone();
                                revocation_seen = None;
                            }
                        }
                        Err(e) => tracing::warn!(
                            error = format!("{e:#}"),
                            "config file changed but is invalid; keeping the previous one"
                        ),
                    }
                }
            }
            if let Some(path) = &revocation_path {
                let now = digest(path);
                if now.is_some() && now != revocation_seen {
                    revocation_seen = now;
                    match read_revocations(Some(path)) {
                        Ok(list) => {
                            tracing::info!(entries = list.len(), "revocation list reloaded");
                            state.set_revocations(list);
                        }
                        Err(e) => tracing::warn!(
                            error = format!("{e:#}"),
                            "keeping the previous revocation list"
                        ),
                    }
                }
            }
        }
    });
}

async fn reload_caches(state: &SharedState, cfg: &Config) {
    match crate::declare::apply(state.db(), &cfg.caches).await {
        Ok(changed) => {
            for name in changed {
                let id = state
                    .db()
                    .get_cache(&name)
                    .await
                    .ok()
                    .flatten()
                    .map(|c| c.id);
                state.forget_cache(&name, id);
            }
        }
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "applying declared caches failed; will retry on the next change"
        ),
    }
}
