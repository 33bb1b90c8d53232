//! Caches declared in configuration (`[[caches]]`), applied idempotently at start, whenever
//! the config file or a declared key file changes, and again with backoff until every
//! declaration has applied (see [`crate::watch`]). A Kubernetes operator drives the server through this
//! file, never through its API. Caches created through the API are left alone, and a cache
//! removed from the file is kept (data is never deleted by omission).

use std::time::Duration;

use anyhow::Context;

use crate::config::DeclaredCache;
use crate::db::{CachePatch, CacheRow, Database, NewCache};
use garret_core::nix::signing::Keypair;

/// What applying one declaration does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(NewCache),
    Update {
        id: i64,
        patch: CachePatch,
    },
    Unchanged,
    /// The name belongs to a cache made through the API.
    LeaveAlone,
}

/// The keypair a declaration asks for, if it names one.
pub fn declared_keypair(d: &DeclaredCache) -> anyhow::Result<Option<String>> {
    let text = if let Some(path) = &d.signing_key_file {
        std::fs::read_to_string(path)
            .with_context(|| format!("cache {}: reading {}", d.name, path.display()))?
    } else if let Some(var) = &d.signing_key_env {
        std::env::var(var)
            .with_context(|| format!("cache {}: environment variable {var} is not set", d.name))?
    } else {
        return Ok(None);
    };
    let kp = Keypair::parse(text.trim())
        .with_context(|| format!("cache {}: invalid signing key", d.name))?;
    Ok(Some(kp.to_canonical_string()))
}

/// Compares a declaration (with its resolved keypair) to the current row, without touching
/// the database. Not pure: a cache to be created without a configured key gets a freshly
/// generated keypair (random), so two calls may differ in that key.
pub fn plan(
    d: &DeclaredCache,
    keypair: Option<String>,
    current: Option<(CacheRow, bool)>,
) -> anyhow::Result<Action> {
    let retention = d.retention_period.map(|p| p.as_secs() as i64);
    match current {
        None => Ok(Action::Create(NewCache {
            declared: true,
            name: d.name.clone(),
            keypair: match keypair {
                Some(k) => k,
                None => Keypair::generate(&d.name)?.to_canonical_string(),
            },
            is_public: d.public,
            store_dir: d.store_dir.clone(),
            priority: d.priority,
            upstream_cache_key_names: d.upstream_cache_key_names.clone(),
            retention_period: retention,
            upstreams: d.upstreams.clone(),
        })),
        Some((_, false)) => Ok(Action::LeaveAlone),
        Some((row, true)) => {
            let differs = |changed: bool| changed.then_some(());
            let patch = CachePatch {
                keypair: keypair.filter(|k| *k != row.keypair),
                is_public: differs(row.is_public != d.public).map(|_| d.public),
                store_dir: differs(row.store_dir != d.store_dir).map(|_| d.store_dir.clone()),
                priority: differs(row.priority != d.priority).map(|_| d.priority),
                upstream_cache_key_names: differs(
                    row.upstream_cache_key_names != d.upstream_cache_key_names,
                )
                .map(|_| d.upstream_cache_key_names.clone()),
                retention_period: differs(row.retention_period != retention).map(|_| retention),
                upstreams: differs(row.upstreams != d.upstreams).map(|_| d.upstreams.clone()),
            };
            Ok(if patch.is_empty() {
                Action::Unchanged
            } else {
                Action::Update { id: row.id, patch }
            })
        }
    }
}

/// What applying the declarations did: the caches that changed and, per declaration that
/// could not be applied (e.g. its key file is not there yet), why.
#[derive(Debug, Default)]
pub struct Applied {
    pub changed: Vec<String>,
    pub failed: Vec<(String, anyhow::Error)>,
}

impl Applied {
    /// Whether the database now holds everything the declarations ask for.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// The failures as one line: `cache a: reading /x: No such file…; cache b: …`.
    pub fn errors(&self) -> String {
        self.failed
            .iter()
            .map(|(_, e)| format!("{e:#}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The names of the declarations not applied.
    pub fn pending(&self) -> Vec<&str> {
        self.failed.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Applies every declaration on its own: one that cannot be applied (a key file not mounted
/// yet, a database error) is reported in [`Applied::failed`] and does not hold back the
/// others. Several replicas may do this at once: creation is insert-if-absent and updates
/// converge on the file.
///
/// `changed` is called with each changed cache's name (and id, when it existed before) right
/// after its write and before the next declaration is applied, so that whoever forgets
/// remembered rows there makes the changes visible in the order they were written: a reader
/// who sees the last one never sees an earlier one stale.
pub async fn apply(
    db: &Database,
    declared: &[DeclaredCache],
    mut changed: impl FnMut(&str, Option<i64>),
) -> Applied {
    let mut out = Applied::default();
    for d in declared {
        match apply_one(db, d).await {
            Ok(Some(id)) => {
                changed(&d.name, id);
                out.changed.push(d.name.clone());
            }
            Ok(None) => {}
            Err(e) => out.failed.push((d.name.clone(), e)),
        }
    }
    out
}

/// Applies one declaration; `Some` when the cache changed, with its id when it was updated.
async fn apply_one(db: &Database, d: &DeclaredCache) -> anyhow::Result<Option<Option<i64>>> {
    let keypair = declared_keypair(d)?;
    let current = db.cache_origin(&d.name).await?;
    match plan(d, keypair, current)? {
        Action::Create(new) => {
            if db.create_cache(&new).await? {
                tracing::info!(cache = %d.name, "declared cache created");
                return Ok(Some(None));
            }
        }
        Action::Update { id, patch } => {
            db.update_cache(id, &patch).await?;
            tracing::info!(cache = %d.name, "declared cache updated");
            return Ok(Some(Some(id)));
        }
        Action::Unchanged => {}
        Action::LeaveAlone => {
            tracing::warn!(cache = %d.name, "a cache of this name was created through the API; leaving it alone");
        }
    }
    Ok(None)
}

/// When to try again after `failures` attempts in a row did not apply everything: `first`,
/// doubling each time, at most `max`.
pub fn retry_delay(failures: u32, first: Duration, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    first.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl() -> DeclaredCache {
        DeclaredCache {
            name: "team".into(),
            public: false,
            priority: 41,
            store_dir: "/nix/store".into(),
            retention_period: None,
            upstream_cache_key_names: vec!["cache.nixos.org-1".into()],
            signing_key_file: None,
            signing_key_env: None,
            upstreams: vec![],
        }
    }

    fn row(kp: &str) -> CacheRow {
        CacheRow {
            id: 7,
            name: "team".into(),
            keypair: kp.into(),
            is_public: false,
            store_dir: "/nix/store".into(),
            priority: 41,
            upstream_cache_key_names: vec!["cache.nixos.org-1".into()],
            retention_period: None,
            upstreams: vec![],
        }
    }

    #[test]
    fn creates_missing_caches_with_a_generated_key() {
        let Action::Create(new) = plan(&decl(), None, None).unwrap() else {
            panic!()
        };
        assert!(new.declared);
        assert!(Keypair::parse(&new.keypair).unwrap().name() == "team");
    }

    #[test]
    fn unchanged_declarations_do_nothing_and_changes_patch_only_what_differs() {
        let kp = Keypair::generate("team").unwrap().to_canonical_string();
        assert_eq!(
            plan(&decl(), None, Some((row(&kp), true))).unwrap(),
            Action::Unchanged
        );
        let mut d = decl();
        d.public = true;
        d.retention_period = Some(std::time::Duration::from_secs(60));
        let Action::Update { id, patch } = plan(&d, None, Some((row(&kp), true))).unwrap() else {
            panic!()
        };
        assert_eq!(id, 7);
        assert_eq!(patch.is_public, Some(true));
        assert_eq!(patch.retention_period, Some(Some(60)));
        assert!(patch.priority.is_none() && patch.keypair.is_none());
    }

    #[test]
    fn retries_back_off_from_the_first_delay_to_the_cap() {
        let (first, max) = (Duration::from_secs(2), Duration::from_secs(30));
        let delays: Vec<u64> = (1..=7)
            .map(|n| retry_delay(n, first, max).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(0, first, max), first);
        assert_eq!(retry_delay(u32::MAX, first, max), max);
    }

    #[test]
    fn a_missing_key_file_is_an_error_naming_the_cache_and_the_file() {
        let mut d = decl();
        d.signing_key_file = Some("/nonexistent/garret/team.key".into());
        let e = declared_keypair(&d).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("cache team") && text.contains("/nonexistent/garret/team.key"),
            "{text}"
        );
    }

    #[test]
    fn api_caches_are_left_alone() {
        let kp = Keypair::generate("team").unwrap().to_canonical_string();
        assert_eq!(
            plan(&decl(), None, Some((row(&kp), false))).unwrap(),
            Action::LeaveAlone
        );
    }
}
