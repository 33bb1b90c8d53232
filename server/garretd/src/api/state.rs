//! Shared per-process state, and the in-memory caches that keep per-request work off the
//! hot path: verified tokens, cache rows with parsed keys, rendered narinfos.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use crate::config::Config;
use crate::db::{CacheRow, Database};
use crate::error::ServerResult;
use crate::store::Store;
use garret_core::nix::signing::Keypair;
use garret_core::token::OidcVerifier;
use garret_core::token::{
    settle_revocations as settle, Claims, Rejection, RevocationEntry, RevocationList, Verifier,
};

/// A cache row with its keypair parsed once.
#[derive(Debug)]
pub struct CacheEntry {
    pub row: CacheRow,
    pub keypair: Keypair,
}

pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub verifier: Verifier,
    /// Trusted identity-token issuers (`[[jwt.oidc]]`); replaced whole when their settings
    /// or key files change.
    oidc: std::sync::RwLock<Arc<OidcVerifier>>,
    /// A token named a `kid` its issuer's fetched key set lacks: fetch again (rate-bounded
    /// by `oidc::MIN_REFETCH`).
    oidc_refresh_wanted: std::sync::atomic::AtomicBool,
    /// What requests are checked against: the file's list plus the pushed entries it does
    /// not have yet. Replaced whole when either changes.
    revoked: std::sync::RwLock<Arc<RevocationList>>,
    /// The file's list and the pushed entries held (see `token::revocation::settle`).
    revocation_sources: std::sync::Mutex<(RevocationList, Vec<RevocationEntry>)>,
    tokens: Cache<[u8; 32], Result<Arc<Claims>, Rejection>>,
    caches: Cache<String, Option<Arc<CacheEntry>>>,
    /// (cache id, store path hash) → narinfo text, already signed.
    pub narinfos: Cache<(i64, String), Arc<str>>,
    /// Upstream lookups and fetches of pull-through caches.
    pub pull_through: crate::upstream::PullThrough,
}

pub type SharedState = Arc<AppState>;

/// How long another replica's change may take to show here.
const CACHE_ROW_TTL: Duration = Duration::from_secs(5);
const NARINFO_TTL: Duration = Duration::from_secs(10);
const TOKEN_TTL: Duration = Duration::from_secs(60);

impl AppState {
    pub fn new(config: Config, store: Store, verifier: Verifier) -> SharedState {
        let pull_through =
            crate::upstream::PullThrough::new(&config.pull_through, config.max_nar_info_size);
        Arc::new(AppState {
            verifier: verifier.with_leeway(config.jwt.leeway),
            config,
            store,
            revoked: Default::default(),
            oidc: Default::default(),
            oidc_refresh_wanted: Default::default(),
            revocation_sources: Default::default(),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(TOKEN_TTL)
                .build(),
            caches: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_ROW_TTL)
                .build(),
            narinfos: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(NARINFO_TTL)
                .support_invalidation_closures()
                .build(),
            pull_through,
        })
    }

    pub fn db(&self) -> &Database {
        self.store.db()
    }

    /// Verifies a bearer token, remembering the verdict by the token's hash (never the
    /// token itself). Time claims are re-checked on every use, and a rejection that depends
    /// on the time (not yet valid, expired, issued in the future) is never remembered: the
    /// same token may be good a second later.
    pub fn verify_token(&self, token: &str) -> Result<Arc<Claims>, Rejection> {
        self.verify_token_at(token, garret_core::clock::unix_now())
    }

    fn verify_token_at(&self, token: &str, now: i64) -> Result<Arc<Claims>, Rejection> {
        let key = garret_core::token::token_fingerprint(token);
        let verdict = match self.tokens.get(&key) {
            Some(v) => v,
            None => {
                // A token naming a trusted identity issuer is judged by that issuer's keys
                // and grants; any other goes to Attic's key, which refuses foreign tokens.
                let oidc = self.oidc.read().map(|o| Arc::clone(&o)).ok();
                let v = oidc
                    .and_then(|o| o.verify(token, now))
                    .unwrap_or_else(|| self.verifier.verify(token, now))
                    .map(Arc::new);
                if matches!(&v, Err(Rejection::UnknownKey)) {
                    self.oidc_refresh_wanted
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if !matches!(&v, Err(r) if r.is_time_dependent()) {
                    self.tokens.insert(key, v.clone());
                }
                v
            }
        };
        if let Ok(claims) = &verdict {
            self.verifier.check_time(claims, now)?;
            if self
                .revoked
                .read()
                .map(|r| r.is_revoked(claims))
                .unwrap_or(true)
            {
                return Err(Rejection::Revoked);
            }
        }
        verdict
    }

    /// The revocation file was (re)read.
    pub fn set_revocations(&self, list: RevocationList) {
        self.update_revocations(Some(list), Vec::new());
    }

    /// Entries pushed by the operator; returns how many pushed entries the file does not
    /// have yet (held in memory until it does, or their token expires).
    pub fn push_revocations(&self, entries: Vec<RevocationEntry>) -> usize {
        self.update_revocations(None, entries)
    }

    fn update_revocations(
        &self,
        file: Option<RevocationList>,
        pushed: Vec<RevocationEntry>,
    ) -> usize {
        let Ok(mut sources) = self.revocation_sources.lock() else {
            return 0;
        };
        let (file_list, held) = &mut *sources;
        if let Some(list) = file {
            *file_list = list;
        }
        let now = garret_core::clock::unix_now();
        *held = settle(std::mem::take(held), pushed, file_list, now);
        let effective = Arc::new(file_list.with(held.iter()));
        if let Ok(mut r) = self.revoked.write() {
            *r = effective;
        }
        crate::metrics::METRICS
            .revocations_held
            .set(i64::try_from(held.len()).unwrap_or(i64::MAX));
        held.len()
    }

    /// New identity-issuer settings or keys. Remembered verdicts are dropped, so a key
    /// removed from a JWKS stops verifying at once.
    pub fn set_oidc(&self, verifier: OidcVerifier) {
        if let Ok(mut o) = self.oidc.write() {
            *o = Arc::new(verifier);
        }
        self.tokens.invalidate_all();
    }

    /// Whether a token asked for keys an issuer's set lacks since the last call.
    pub fn take_oidc_refresh_wanted(&self) -> bool {
        self.oidc_refresh_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// A live cache by name, from memory when recently seen.
    pub async fn cache(&self, name: &str) -> ServerResult<Option<Arc<CacheEntry>>> {
        if let Some(hit) = self.caches.get(name) {
            return Ok(hit);
        }
        let entry = match self.db().get_cache(name).await? {
            Some(row) => {
                let keypair =
                    Keypair::parse(&row.keypair).map_err(crate::error::ServerError::internal)?;
                Some(Arc::new(CacheEntry { row, keypair }))
            }
            None => None,
        };
        self.caches.insert(name.to_string(), entry.clone());
        Ok(entry)
    }

    /// Forgets everything remembered about a cache after it changed.
    pub fn forget_cache(&self, name: &str, id: Option<i64>) {
        self.caches.invalidate(name);
        if let Some(id) = id {
            let _ = self.narinfos.invalidate_entries_if(move |k, _| k.0 == id);
        }
    }
}
