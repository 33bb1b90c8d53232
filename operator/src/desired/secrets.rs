//! The generated key Secrets: the RS256 token-signing key and one ed25519 keypair per
//! declared cache. The controller generates missing keys (randomness, and seconds of CPU for
//! RSA) before `desired` runs; these functions only place them. Keys are only ever added,
//! never rewritten: changing one would invalidate every token or every signature already
//! handed out. Neither Secret is owned: its fate follows `reclaimPolicy`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::validate::Validated;
use super::TOKEN_KEY_FIELD;
use crate::types::CacheStatus;
use crate::{Error, Result};

/// The token-signing Secret around `config_value` (base64 of a private-key PEM, the value of
/// `ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64`).
pub fn token_key_secret(v: &Validated, config_value: &str) -> Secret {
    Secret {
        metadata: v.child_meta(v.names().token_key(), false),
        data: Some(BTreeMap::from([(
            TOKEN_KEY_FIELD.to_string(),
            ByteString(config_value.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The signing key a token-key Secret holds, or why it is unusable.
pub fn signing_key(secret: &Secret) -> Result<garret_core::token::SigningKey> {
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY_FIELD))
        .ok_or_else(|| Error::Dependency(format!("Secret has no {TOKEN_KEY_FIELD} key")))?;
    let text = std::str::from_utf8(&value.0)
        .map_err(|_| Error::Dependency(format!("{TOKEN_KEY_FIELD} is not UTF-8")))?;
    garret_core::token::SigningKey::from_rs256_secret_base64(text).map_err(|source| Error::Token {
        context: "reading the token-signing Secret".into(),
        source,
    })
}

/// Declared caches that have no keypair in `existing` yet: the keys to generate.
pub fn caches_missing_keys(v: &Validated, existing: Option<&Secret>) -> Vec<String> {
    let data = existing.and_then(|s| s.data.as_ref());
    v.spec
        .caches
        .iter()
        .filter(|c| !data.is_some_and(|d| d.contains_key(&c.name)))
        .map(|c| c.name.clone())
        .collect()
}

/// The cache-keys data: every key already stored (also of caches no longer declared: their
/// signatures stay valid) plus the `generated` ones; a stored key always wins.
pub fn cache_keys_data(
    existing: Option<&Secret>,
    generated: &BTreeMap<String, String>,
) -> BTreeMap<String, ByteString> {
    let mut data = existing.and_then(|s| s.data.clone()).unwrap_or_default();
    for (name, keypair) in generated {
        data.entry(name.clone())
            .or_insert_with(|| ByteString(keypair.as_bytes().to_vec()));
    }
    data
}

/// The cache-keys Secret to write when keys were `generated`, `None` when nothing is new.
/// It carries the read `resourceVersion` of `existing`: the controller replaces with it, so
/// a concurrent writer makes the write fail and retry instead of losing a key.
pub fn cache_keys_secret(
    v: &Validated,
    existing: Option<&Secret>,
    generated: &BTreeMap<String, String>,
) -> Option<Secret> {
    if generated.is_empty() {
        return None;
    }
    let mut metadata = v.child_meta(v.names().cache_keys(), false);
    metadata.resource_version = existing.and_then(|s| s.metadata.resource_version.clone());
    Some(Secret {
        metadata,
        data: Some(cache_keys_data(existing, generated)),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// Public keys of the declared caches, for status; caches whose key is missing or corrupt
/// are left out.
pub fn public_keys(v: &Validated, data: &BTreeMap<String, ByteString>) -> Vec<CacheStatus> {
    v.spec
        .caches
        .iter()
        .filter_map(|c| {
            let raw = data.get(&c.name)?;
            let text = std::str::from_utf8(&raw.0).ok()?;
            let kp = garret_core::nix::signing::Keypair::parse(text.trim()).ok()?;
            Some(CacheStatus {
                name: c.name.clone(),
                public_key: kp.public_key().to_canonical_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;
    use garret_core::nix::signing::Keypair;

    fn keypair(name: &str) -> String {
        Keypair::generate(name)
            .expect("generate")
            .to_canonical_string()
    }

    #[test]
    fn cache_keys_are_added_never_replaced() {
        let v = validated(MINIMAL);
        assert_eq!(caches_missing_keys(&v, None), vec!["team", "public-stuff"]);
        let team = keypair("team");
        let first = cache_keys_secret(
            &v,
            None,
            &BTreeMap::from([("team".to_string(), team.clone())]),
        )
        .expect("secret");
        assert!(
            first.metadata.resource_version.is_none(),
            "created, not replaced"
        );
        assert_eq!(caches_missing_keys(&v, Some(&first)), vec!["public-stuff"]);
        let mut stored = first.clone();
        stored.metadata.resource_version = Some("5".into());
        let second = cache_keys_secret(
            &v,
            Some(&stored),
            &BTreeMap::from([
                ("team".to_string(), keypair("team")),
                ("public-stuff".to_string(), keypair("public-stuff")),
            ]),
        )
        .expect("secret");
        assert_eq!(second.metadata.resource_version.as_deref(), Some("5"));
        let data = second.data.clone().expect("data");
        assert_eq!(
            data.get("team").map(|b| b.0.clone()),
            Some(team.into_bytes())
        );
        assert!(caches_missing_keys(&v, Some(&second)).is_empty());
        let keys = public_keys(&v, &data);
        assert_eq!(keys.len(), 2);
        assert!(keys[0].public_key.starts_with("team:"));
        assert!(second.metadata.owner_references.is_none());
        assert!(cache_keys_secret(&v, Some(&second), &BTreeMap::new()).is_none());
    }

    #[test]
    fn token_key_round_trips() {
        let v = validated(MINIMAL);
        let (_, value) = garret_core::token::generate_rs256(2048).expect("rsa");
        let secret = token_key_secret(&v, &value);
        assert_eq!(secret.metadata.name.as_deref(), Some("main-token-key"));
        let key = signing_key(&secret).expect("key parses");
        assert!(key.can_sign());
        let mut broken = secret.clone();
        broken.data = Some(BTreeMap::from([(
            TOKEN_KEY_FIELD.to_string(),
            ByteString(b"nope".to_vec()),
        )]));
        assert!(signing_key(&broken).is_err());
        broken.data = None;
        assert!(signing_key(&broken).is_err());
    }
}
