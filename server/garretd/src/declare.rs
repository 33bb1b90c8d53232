//! Caches declared in configuration (`[[caches]]`), applied idempotently at start and
//! whenever the config file changes. A Kubernetes operator drives the server through this
//! file, never through its API. Caches created through the API are left alone, and a cache
//! removed from the file is kept (data is never deleted by omission).

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
            };
            Ok(if patch.is_empty() {
                Action::Unchanged
            } else {
                Action::Update { id: row.id, patch }
            })
        }
    }
}

/// Applies every declaration; returns the names of caches that changed. Several replicas
/// may do this at once: creation is insert-if-absent and updates converge on the file.
pub async fn apply(db: &Database, declared: &[DeclaredCache]) -> anyhow::Result<Vec<String>> {
    let mut changed = Vec::new();
    for d in declared {
        let keypair = declared_keypair(d)?;
        let current = db.cache_origin(&d.name).await?;
        match plan(d, keypair, current)? {
            Action::Create(new) => {
                if db.create_cache(&new).await? {
                    tracing::info!(cache = %d.name, "declared cache created");
                    changed.push(d.name.clone());
                }
            }
            Action::Update { id, patch } => {
                db.update_cache(id, &patch).await?;
                tracing::info!(cache = %d.name, "declared cache updated");
                changed.push(d.name.clone());
            }
            Action::Unchanged => {}
            Action::LeaveAlone => {
                tracing::warn!(cache = %d.name, "a cache of this name was created through the API; leaving it alone");
            }
        }
    }
    Ok(changed)
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
    fn api_caches_are_left_alone() {
        let kp = Keypair::generate("team").unwrap().to_canonical_string();
        assert_eq!(
            plan(&decl(), None, Some((row(&kp), false))).unwrap(),
            Action::LeaveAlone
        );
    }
}
