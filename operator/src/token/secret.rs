//! The CacheToken Secret's shape, in one place: its field names, the annotations that
//! record what was issued (the Secret, read fresh, is the record; status may lag), and the
//! object itself. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::Validated;
use crate::desired::meta::managed_by;
use crate::types::CacheTokenSpec;

/// Secret key holding the JWT.
pub const TOKEN_FIELD: &str = "token";
/// Secret key holding the server URL.
pub const ENDPOINT_FIELD: &str = "endpoint";
/// Secret key holding a netrc line for the endpoint's host.
pub const NETRC_FIELD: &str = "netrc";
/// Annotation: hash of the spec the token was minted from.
pub const SPEC_HASH_ANNOTATION: &str = "garret.dev/spec-hash";
/// Annotation: the `jti` the Secret holds.
pub const TOKEN_ID_ANNOTATION: &str = "garret.dev/token-id";
/// Annotation: the issue revision.
pub const REVISION_ANNOTATION: &str = "garret.dev/revision";

/// Hash of everything in the spec that shapes the token; stored on the Secret so a spec
/// change is noticed even if status is lost.
pub fn spec_hash(spec: &CacheTokenSpec) -> String {
    let canonical = serde_json::json!({
        "binaryCacheRef": spec.binary_cache_ref,
        "subject": spec.subject,
        "validity": spec.validity,
        "renewBefore": spec.renew_before,
        "permissions": spec.permissions,
    });
    hex::encode(&Sha256::digest(canonical.to_string().as_bytes())[..16])
}

/// The data of the token Secret: the JWT, the server URL, and a netrc line (Nix reads private
/// caches with the token as the netrc password).
pub fn secret_data(token: &str, endpoint: &str) -> BTreeMap<String, ByteString> {
    let netrc = format!("machine {} password {token}\n", host_of(endpoint));
    BTreeMap::from([
        (
            TOKEN_FIELD.to_string(),
            ByteString(token.as_bytes().to_vec()),
        ),
        (
            ENDPOINT_FIELD.to_string(),
            ByteString(endpoint.as_bytes().to_vec()),
        ),
        (NETRC_FIELD.to_string(), ByteString(netrc.into_bytes())),
    ])
}

/// The host of a URL such as `https://cache.example.org:8443/`, without port or path.
pub fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.split(':').next().unwrap_or(authority)
}

/// The JWT a Secret holds, if it holds UTF-8 text under [`TOKEN_FIELD`].
pub fn stored_token(secret: &Secret) -> Option<&str> {
    let bytes = secret.data.as_ref()?.get(TOKEN_FIELD)?;
    std::str::from_utf8(&bytes.0).ok()
}

/// The spec hash a Secret was issued for.
pub fn stored_spec_hash(secret: &Secret) -> Option<&String> {
    secret.annotations().get(SPEC_HASH_ANNOTATION)
}

/// The revision a Secret was issued as.
pub fn stored_revision(secret: &Secret) -> Option<i64> {
    secret.annotations().get(REVISION_ANNOTATION)?.parse().ok()
}

/// The token Secret, owned by the CacheToken; its annotations record what was issued.
pub fn token_secret(
    v: &Validated,
    token: &str,
    endpoint: &str,
    jti: &str,
    revision: i64,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(v.secret_name.clone()),
            namespace: Some(v.namespace.clone()),
            owner_references: Some(vec![v.owner.clone()]),
            labels: Some(managed_by()),
            annotations: Some(BTreeMap::from([
                (SPEC_HASH_ANNOTATION.to_string(), v.spec_hash.clone()),
                (TOKEN_ID_ANNOTATION.to_string(), jti.to_string()),
                (REVISION_ANNOTATION.to_string(), revision.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(secret_data(token, endpoint)),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::spec;

    #[test]
    fn secret_carries_netrc_for_the_host() {
        let data = secret_data("T", "https://cache.example.org:8443/x");
        assert_eq!(
            data["netrc"].0,
            b"machine cache.example.org password T\n".to_vec()
        );
        assert_eq!(
            data["endpoint"].0,
            b"https://cache.example.org:8443/x".to_vec()
        );
        assert_eq!(host_of("http://main.ns.svc/"), "main.ns.svc");
    }

    #[test]
    fn spec_hash_ignores_secret_name_only() {
        let a = spec();
        let mut b = a.clone();
        b.secret_name = "other".into();
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.subject = "someone".into();
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }
}
