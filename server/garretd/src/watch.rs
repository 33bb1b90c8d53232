//! Reloads what may change while the server runs: declared caches (the config file) and the
//! token revocation list. Files are polled by content, which also sees the atomic symlink
//! swaps Kubernetes uses for mounted ConfigMaps and Secrets.
//!
//! Declared caches converge on their own: Kubernetes gives no ordering between volumes, so
//! a new cache's key file may land after the config naming it. Declarations that did not
//! apply are retried with backoff ([`RETRY_FIRST`] doubling up to [`RETRY_MAX`]) and at once
//! when the config file or one of the declared key files changes, until all of them apply.
//! `garret_declared_config_applied` is 1 only while the file is valid and fully applied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use sha2::{Digest, Sha256};

use crate::api::state::SharedState;
use crate::config::{Config, ConfigSource, DeclaredCache};
use crate::declare::Applied;
use garret_core::token::RevocationList;

/// How often watched files are checked: changes apply within this time.
pub const POLL: Duration = Duration::from_secs(2);
/// The first retry of declarations that did not apply; the delay doubles from there.
pub const RETRY_FIRST: Duration = POLL;
/// The longest wait between retries of declarations that did not apply.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

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

/// The declared caches being converged on: the last valid declarations, what their key
/// files held when last applied, and when to try again if they did not all apply.
struct Declared {
    caches: Vec<DeclaredCache>,
    keys_seen: Vec<Option<[u8; 32]>>,
    /// Whether the config file, as last read, was valid.
    file_valid: bool,
    /// Attempts in a row that left some declaration unapplied (0 = all applied).
    failures: u32,
    next_try: Instant,
}

impl Declared {
    fn key_digests(caches: &[DeclaredCache]) -> Vec<Option<[u8; 32]>> {
        caches
            .iter()
            .map(|c| c.signing_key_file.as_deref().and_then(digest))
            .collect()
    }

    fn publish(&self) {
        let applied = self.file_valid && self.failures == 0;
        crate::metrics::METRICS
            .declared_config_applied
            .set(i64::from(applied));
    }

    /// Applies the declarations and schedules a retry if some did not apply.
    async fn apply(&mut self, state: &SharedState) {
        self.keys_seen = Self::key_digests(&self.caches);
        let applied = reload_caches(state, &self.caches).await;
        if applied.complete() {
            if self.failures > 0 {
                tracing::info!("declared caches applied");
            }
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            let delay = crate::declare::retry_delay(self.failures, RETRY_FIRST, RETRY_MAX);
            self.next_try = Instant::now() + delay;
            tracing::warn!(
                pending = ?applied.pending(),
                error = applied.errors(),
                attempt = self.failures,
                retry_in_secs = delay.as_secs(),
                "declared caches not applied yet; retrying with backoff and whenever the config or a key file changes"
            );
        }
        self.publish();
    }
}

/// Polls the config file and the revocation list; applies changes. `started` is what
/// applying the declarations at start gave.
pub fn spawn(state: SharedState, source: ConfigSource, started: &Applied) {
    let mut declared = Declared {
        caches: state.config.caches.clone(),
        keys_seen: Declared::key_digests(&state.config.caches),
        file_valid: true,
        failures: u32::from(!started.complete()),
        next_try: Instant::now() + RETRY_FIRST,
    };
    declared.publish();
    // Identity-issuer keys are refreshed in a task of their own: a slow issuer must not
    // delay the config and revocation reloads here.
    let (oidc_tx, oidc_rx) = tokio::sync::watch::channel(state.config.jwt.oidc.clone());
    crate::oidc::spawn_refresh(state.clone(), oidc_rx);
    tokio::spawn(async move {
        let mut config_seen = source.file.as_deref().and_then(digest);
        let mut revocation_path: Option<PathBuf> = state.config.jwt.revocation_list.clone();
        let mut revocation_seen = revocation_path.as_deref().and_then(digest);
        loop {
            tokio::time::sleep(POLL).await;
            let mut changed = false;
            if let Some(file) = &source.file {
                let now = digest(file);
                if now.is_some() && now != config_seen {
                    config_seen = now;
                    match Config::load(&source) {
                        Ok(cfg) => {
                            declared.caches = cfg.caches.clone();
                            let _ = oidc_tx.send(cfg.jwt.oidc.clone());
                            declared.file_valid = true;
                            changed = true;
                            if cfg.jwt.revocation_list != revocation_path {
                                revocation_path = cfg.jwt.revocation_list.clone();
                                revocation_seen = None;
                            }
                        }
                        Err(e) => {
                            declared.file_valid = false;
                            declared.publish();
                            tracing::warn!(
                                error = format!("{e:#}"),
                                "config file changed but is invalid; keeping the previous one"
                            );
                        }
                    }
                }
            }
            changed |= Declared::key_digests(&declared.caches) != declared.keys_seen;
            let retry = declared.failures > 0 && Instant::now() >= declared.next_try;
            if changed || retry {
                declared.apply(&state).await;
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

async fn reload_caches(state: &SharedState, caches: &[DeclaredCache]) -> Applied {
    crate::declare::apply(state.db(), caches, |name, id| state.forget_cache(name, id)).await
}
