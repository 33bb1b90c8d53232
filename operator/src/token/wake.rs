//! Which watch events wake which CacheTokens, and what a reconcile can reuse from the last
//! one, pure. At a thousand tokens per BinaryCache both decide the operator's load:
//!
//! - A BinaryCache's status moves with its pods (ready replicas) and every reconcile of it;
//!   its tokens only read its endpoint, its caches' public keys and whether it exists. Only
//!   a change of those ([`binary_cache_view`]) wakes them ([`Seen`]).
//! - A CacheToken's own status write is an event on its watch; only a change of its spec
//!   (`generation`), its finalizers or its deletion wakes it ([`token_view`]).
//! - Parsing an RSA signing key and its self-test cost two private-key operations; the
//!   parsed key is kept while the key Secret's resourceVersion stays ([`KeyCache`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use garret_core::token::TokenKeys;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};

use crate::desired::config::endpoint;
use crate::types::{BinaryCache, CacheToken};

/// A digest of what a BinaryCache's tokens read from it.
pub fn binary_cache_view(bc: &BinaryCache) -> u64 {
    let mut h = DefaultHasher::new();
    bc.uid().hash(&mut h);
    bc.meta().deletion_timestamp.is_some().hash(&mut h);
    endpoint(bc).hash(&mut h);
    for c in bc.status.iter().flat_map(|s| &s.caches) {
        (&c.name, &c.public_key).hash(&mut h);
    }
    h.finish()
}

/// A digest of what a CacheToken's reconcile acts on in the object itself: not its status,
/// which the operator writes.
pub fn token_view(ct: &CacheToken) -> u64 {
    let mut h = DefaultHasher::new();
    ct.uid().hash(&mut h);
    ct.meta().generation.hash(&mut h);
    ct.finalizers().hash(&mut h);
    ct.meta().deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// The last digest seen per object key: an event passes when the digest moved (or the object
/// is new to us).
#[derive(Debug, Default)]
pub struct Seen(HashMap<String, u64>);

impl Seen {
    /// Record `view` for `key`; whether it differs from the last one.
    pub fn changed(&mut self, key: &str, view: u64) -> bool {
        match self.0.get_mut(key) {
            Some(last) if *last == view => false,
            Some(last) => {
                *last = view;
                true
            }
            None => {
                self.0.insert(key.to_string(), view);
                true
            }
        }
    }

    /// Forget `key` (deleted), so a new object of that name wakes its tokens.
    pub fn forget(&mut self, key: &str) {
        self.0.remove(key);
    }
}

/// Parsed signing keys per BinaryCache key (`namespace/name`), valid while the key Secret
/// keeps its uid and resourceVersion.
#[derive(Default)]
pub struct KeyCache(HashMap<String, (String, TokenKeys)>);

impl KeyCache {
    /// The keys parsed from the Secret at `version` (its `uid/resourceVersion`), if cached.
    pub fn get(&self, cache: &str, version: &str) -> Option<TokenKeys> {
        self.0
            .get(cache)
            .filter(|(v, _)| v == version)
            .map(|(_, k)| k.clone())
    }

    /// Keep `keys`, parsed from the Secret at `version`, replacing older ones.
    pub fn put(&mut self, cache: &str, version: &str, keys: TokenKeys) {
        self.0
            .insert(cache.to_string(), (version.to_string(), keys));
    }
}

/// The version a [`KeyCache`] entry is valid for: `None` for a Secret the API server did not
/// version (never cached).
pub fn secret_version(secret: &Secret) -> Option<String> {
    let uid = secret.metadata.uid.as_deref()?;
    let rv = secret.metadata.resource_version.as_deref()?;
    Some(format!("{uid}/{rv}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CacheTokenSpec;
    use serde_json::json;

    fn bc(status: serde_json::Value) -> BinaryCache {
        serde_json::from_value(json!({
            "apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache",
            "metadata": {"name": "main", "namespace": "a", "uid": "u1"},
            "spec": {"caches": [{"name": "c"}]},
            "status": status,
        }))
        .expect("bc")
    }

    #[test]
    fn replica_counts_and_conditions_do_not_wake_tokens_keys_and_endpoint_do() {
        let rolling = bc(json!({"replicas": 1, "readyReplicas": 0,
            "caches": [{"name": "c", "substituter": "http://x/c", "publicKey": "c:AAAA"}]}));
        let ready = bc(json!({"replicas": 1, "readyReplicas": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "r", "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "caches": [{"name": "c", "substituter": "http://x/c", "publicKey": "c:AAAA"}]}));
        let rekeyed = bc(json!({"replicas": 1, "readyReplicas": 1,
            "caches": [{"name": "c", "substituter": "http://x/c", "publicKey": "c:BBBB"}]}));
        let mut pinned = ready.clone();
        pinned.spec.api_endpoint = Some("https://cache.example.org/".into());
        let mut seen = Seen::default();
        assert!(
            seen.changed("a/main", binary_cache_view(&rolling)),
            "first sight"
        );
        assert!(!seen.changed("a/main", binary_cache_view(&ready)));
        assert!(seen.changed("a/main", binary_cache_view(&rekeyed)));
        assert!(seen.changed("a/main", binary_cache_view(&pinned)));
        assert!(!seen.changed("a/main", binary_cache_view(&pinned)));
        seen.forget("a/main");
        assert!(
            seen.changed("a/main", binary_cache_view(&pinned)),
            "recreated"
        );
    }

    fn token() -> CacheToken {
        let spec: CacheTokenSpec = serde_json::from_value(json!({
            "binaryCacheRef": {"name": "main"}, "subject": "s",
            "permissions": {"pull": ["c"]}, "secretName": "t-token"
        }))
        .expect("spec");
        let mut t = CacheToken::new("t", spec);
        t.metadata.namespace = Some("a".into());
        t.metadata.generation = Some(1);
        t
    }

    #[test]
    fn a_tokens_own_status_write_does_not_wake_it_spec_finalizer_and_deletion_do() {
        let t = token();
        let mut written = t.clone();
        written.status = Some(crate::types::CacheTokenStatus {
            revision: Some(3),
            ..Default::default()
        });
        written.metadata.resource_version = Some("99".into());
        assert_eq!(token_view(&t), token_view(&written));
        let mut spec = t.clone();
        spec.metadata.generation = Some(2);
        assert_ne!(token_view(&t), token_view(&spec));
        let mut fin = t.clone();
        fin.metadata.finalizers = Some(vec!["garret.dev/revoke".into()]);
        assert_ne!(token_view(&t), token_view(&fin));
        let mut deleting = fin.clone();
        deleting.metadata.deletion_timestamp = Some(crate::controller::now());
        assert_ne!(token_view(&fin), token_view(&deleting));
    }

    #[test]
    fn parsed_keys_are_reused_only_for_the_same_secret_version() {
        let key = garret_core::token::SigningKey::Hs256 {
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        };
        let keys = TokenKeys::new(&key).expect("keys");
        let mut cache = KeyCache::default();
        assert!(cache.get("a/main", "u/1").is_none());
        cache.put("a/main", "u/1", keys);
        assert!(cache.get("a/main", "u/1").is_some());
        assert!(cache.get("a/main", "u/2").is_none(), "re-keyed");
        assert!(cache.get("a/other", "u/1").is_none());
        let mut s = Secret::default();
        assert_eq!(secret_version(&s), None);
        s.metadata.uid = Some("u".into());
        s.metadata.resource_version = Some("7".into());
        assert_eq!(secret_version(&s).as_deref(), Some("u/7"));
    }
}
