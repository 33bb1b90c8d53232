//! Generated key Secrets: the RS256 token-signing key and one ed25519 keypair per declared
//! cache. They are generated once (by the controller, outside these pure functions) and then
//! only ever added to, never rewritten: changing a key would invalidate every token or every
//! signature already handed out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{child_meta, Names, TOKEN_KEY_FIELD};
use crate::types::{BinaryCache, CacheStatus};
use crate::{Error, Result};

fn name_of(bc: &BinaryCache) -> String {
    bc.metadata.name.clone().unwrap_or_default()
}

/// The token-signing Secret around `config_value` (base64 of a private-key PEM, the value of
/// `ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64`). Not owned: its fate follows `reclaimPolicy`.
pub fn token_key_secret(bc: &BinaryCache, config_value: String) -> Result<Secret> {
    Ok(Secret {
        metadata: child_meta(bc, Names(&name_of(bc)).token_key(), false)?,
        data: Some(BTreeMap::from([(
            TOKEN_KEY_FIELD.to_string(),
            ByteString(config_value.into_bytes()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
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

/// Declared caches that have no keypair in `existing` yet.
pub fn caches_missing_keys(bc: &BinaryCache, existing: Option<&Secret>) -> Vec<String> {
    let data = existing.and_then(|s| s.data.as_ref());
    bc.spec
        .caches
        .iter()
        .filter(|c| !data.is_some_and(|d| d.contains_key(&c.name)))
        .map(|c| c.name.clone())
        .collect()
}

/// The cache-keys Secret: every key already stored (also of caches no longer declared: their
/// signatures stay valid) plus the `generated` ones. Not owned, like the token key.
pub fn cache_keys_secret(
    bc: &BinaryCache,
    existing: Option<&Secret>,
    generated: BTreeMap<String, String>,
) -> Result<Secret> {
    let mut data: BTreeMap<String, ByteString> =
        existing.and_then(|s| s.data.clone()).unwrap_or_default();
    for (name, keypair) in generated {
        data.entry(name).or_insert(ByteString(keypair.into_bytes()));
    }
    Ok(Secret {
        metadata: child_meta(bc, Names(&name_of(bc)).cache_keys(), false)?,
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
}

/// Public keys of the declared caches, for status; caches whose key is missing or corrupt
/// are left out (the controller reports them).
pub fn public_keys(bc: &BinaryCache, keys: &Secret) -> Vec<CacheStatus> {
    let data = keys.data.clone().unwrap_or_default();
    bc.spec
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
    use crate::build::fixtures::*;
    use garret_core::nix::signing::Keypair;

    fn keypair(name: &str) -> String {
        Keypair::generate(name)
            .expect("generate")
            .to_canonical_string()
    }

    #[test]
    fn cache_keys_are_added_never_replaced() {
        let bc = binary_cache(MINIMAL);
        assert_eq!(caches_missing_keys(&bc, None), vec!["team", "public-stuff"]);
        let team = keypair("team");
        let first = cache_keys_secret(
            &bc,
            None,
            BTreeMap::from([("team".to_string(), team.clone())]),
        )
        .expect("secret");
        assert_eq!(caches_missing_keys(&bc, Some(&first)), vec!["public-stuff"]);
        let second = cache_keys_secret(
            &bc,
            Some(&first),
            BTreeMap::from([
                ("team".to_string(), keypair("team")),
                ("public-stuff".to_string(), keypair("public-stuff")),
            ]),
        )
        .expect("secret");
        let data = second.data.clone().expect("data");
        assert_eq!(
            data.get("team").map(|b| b.0.clone()),
            Some(team.into_bytes())
        );
        assert!(caches_missing_keys(&bc, Some(&second)).is_empty());
        let keys = public_keys(&bc, &second);
        assert_eq!(keys.len(), 2);
        assert!(keys[0].public_key.starts_with("team:"));
        assert!(second.metadata.owner_references.is_none());
    }

    #[test]
    fn token_key_round_trips() {
        let bc = binary_cache(MINIMAL);
        let (_, value) = garret_core::token::generate_rs256(2048).expect("rsa");
        let secret = token_key_secret(&bc, value).expect("secret");
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
