//! The CacheToken Secret's shape, in one place: its field names, the annotations that
//! record what was issued (the Secret, read fresh, is the record; status may lag), and the
//! object itself. Pure.
//!
//! The Secret is all a CI job needs. Mounted at [`MOUNT_DIR`] (the convention the files
//! refer to), it holds the token, the endpoint, a netrc line, a `nix.conf` snippet
//! (substituters and keys of every declared cache the token may pull, and `netrc-file`) and
//! a client `config.toml` for `garret` and `attic` (`token-file` points at the mounted
//! token, so renewals need no restart).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::revocation::{Pending, PREVIOUS_TOKENS_ANNOTATION};
use super::Validated;
use crate::desired::meta::managed_by;
use crate::types::{CacheStatus, CacheTokenSpec};

/// Where a pod is expected to mount the token Secret; `nix.conf` and `config.toml` name
/// files below it.
pub const MOUNT_DIR: &str = "/var/run/secrets/garret";
/// Secret key holding the JWT.
pub const TOKEN_FIELD: &str = "token";
/// Secret key holding the server URL.
pub const ENDPOINT_FIELD: &str = "endpoint";
/// Secret key holding a netrc line for the endpoint's host.
pub const NETRC_FIELD: &str = "netrc";
/// Secret key holding a nix.conf snippet.
pub const NIX_CONF_FIELD: &str = "nix.conf";
/// Secret key holding the `garret`/`attic` client config (`$XDG_CONFIG_HOME/attic/config.toml`).
pub const CLIENT_CONFIG_FIELD: &str = "config.toml";
/// Annotation: hash of the spec the token was minted from.
pub const SPEC_HASH_ANNOTATION: &str = "garret.dev/spec-hash";
/// Annotation: the `jti` the Secret holds.
pub const TOKEN_ID_ANNOTATION: &str = "garret.dev/token-id";
/// Annotation: the `exp` (Unix seconds) of the token the Secret holds.
pub const EXPIRES_ANNOTATION: &str = "garret.dev/expires";
/// Annotation: the BinaryCache whose key signed the token.
pub const BINARY_CACHE_ANNOTATION: &str = "garret.dev/binary-cache";
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

/// What the Secret's files are built from, besides the token.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The BinaryCache's URL.
    pub endpoint: &'a str,
    /// Its declared caches and their public keys (from its status).
    pub caches: &'a [CacheStatus],
}

/// The data of the token Secret: the JWT, the server URL, a netrc line (Nix reads private
/// caches with the token as the netrc password), a nix.conf snippet and a client config.
pub fn secret_data(v: &Validated, token: &str, ctx: Context<'_>) -> BTreeMap<String, ByteString> {
    let netrc = format!("machine {} password {token}\n", host_of(ctx.endpoint));
    let field = |k: &str, v: String| (k.to_string(), ByteString(v.into_bytes()));
    BTreeMap::from([
        field(TOKEN_FIELD, token.to_string()),
        field(ENDPOINT_FIELD, ctx.endpoint.to_string()),
        field(NETRC_FIELD, netrc),
        field(NIX_CONF_FIELD, nix_conf(v, ctx)),
        field(CLIENT_CONFIG_FIELD, client_config(v, ctx.endpoint)),
    ])
}

/// The declared caches this token may pull, in the BinaryCache's order.
pub fn pullable<'a>(v: &Validated, caches: &'a [CacheStatus]) -> Vec<&'a CacheStatus> {
    // Building claims cannot fail here: validate already did it once.
    let Ok(claims) = v.request.claims(0, String::new()) else {
        return vec![];
    };
    caches
        .iter()
        .filter(|c| claims.permission_for(&c.name).pull)
        .collect()
}

/// A nix.conf snippet: `extra-` settings, so Nix's defaults (cache.nixos.org) stay; use it
/// as `NIX_USER_CONF_FILES`, append it to nix.conf, or `include` it.
pub fn nix_conf(v: &Validated, ctx: Context<'_>) -> String {
    let caches = pullable(v, ctx.caches);
    let mut out = format!(
        "# Nix settings for BinaryCache {} (CacheToken secret {}), expecting this Secret at {MOUNT_DIR}\n",
        v.binary_cache, v.secret_name
    );
    if !caches.is_empty() {
        let base = ctx.endpoint.trim_end_matches('/');
        let subs: Vec<String> = caches
            .iter()
            .map(|c| format!("{base}/{}", c.name))
            .collect();
        let keys: Vec<&str> = caches.iter().map(|c| c.public_key.as_str()).collect();
        out.push_str(&format!("extra-substituters = {}\n", subs.join(" ")));
        out.push_str(&format!("extra-trusted-public-keys = {}\n", keys.join(" ")));
    }
    out.push_str(&format!("netrc-file = {MOUNT_DIR}/{NETRC_FIELD}\n"));
    out
}

/// Attic's client config (`garret` reads the same format): one server named after the
/// BinaryCache, the default, whose token is read from the mounted Secret.
pub fn client_config(v: &Validated, endpoint: &str) -> String {
    use toml::{Table, Value};
    let mut server = Table::new();
    server.insert("endpoint".into(), Value::String(endpoint.to_string()));
    server.insert(
        "token-file".into(),
        Value::String(format!("{MOUNT_DIR}/{TOKEN_FIELD}")),
    );
    let mut servers = Table::new();
    servers.insert(v.binary_cache.clone(), Value::Table(server));
    let mut t = Table::new();
    t.insert(
        "default-server".into(),
        Value::String(v.binary_cache.clone()),
    );
    t.insert("servers".into(), Value::Table(servers));
    t.to_string()
}

/// The host of a URL such as `https://cache.example.org:8443/`, without port or path.
pub fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.split(':').next().unwrap_or(authority)
}

/// Whether `current` already has the data and annotations of `want` (our annotations
/// only; an annotation we no longer set, such as an emptied previous-token list, counts).
pub fn same_content(current: &Secret, want: &Secret) -> bool {
    let ours = [
        SPEC_HASH_ANNOTATION,
        TOKEN_ID_ANNOTATION,
        EXPIRES_ANNOTATION,
        BINARY_CACHE_ANNOTATION,
        REVISION_ANNOTATION,
        PREVIOUS_TOKENS_ANNOTATION,
    ];
    current.data == want.data
        && ours
            .iter()
            .all(|k| current.annotations().get(*k) == want.annotations().get(*k))
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

/// What the Secret records about its token.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    pub token: &'a str,
    pub jti: &'a str,
    pub exp: i64,
    pub revision: i64,
    /// Replaced tokens in their grace period.
    pub pending: &'a [Pending],
}

/// The token Secret, owned by the CacheToken; its annotations record what was issued.
pub fn token_secret(v: &Validated, stored: Stored<'_>, ctx: Context<'_>) -> Secret {
    let mut annotations = BTreeMap::from([
        (SPEC_HASH_ANNOTATION.to_string(), v.spec_hash.clone()),
        (TOKEN_ID_ANNOTATION.to_string(), stored.jti.to_string()),
        (EXPIRES_ANNOTATION.to_string(), stored.exp.to_string()),
        (BINARY_CACHE_ANNOTATION.to_string(), v.binary_cache.clone()),
        (REVISION_ANNOTATION.to_string(), stored.revision.to_string()),
    ]);
    if !stored.pending.is_empty() {
        // Serializing plain strings and integers cannot fail.
        if let Ok(json) = serde_json::to_string(stored.pending) {
            annotations.insert(PREVIOUS_TOKENS_ANNOTATION.to_string(), json);
        }
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(v.secret_name.clone()),
            namespace: Some(v.namespace.clone()),
            owner_references: Some(vec![v.owner.clone()]),
            labels: Some(managed_by()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        data: Some(secret_data(v, stored.token, ctx)),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::{spec, validated};

    fn caches() -> Vec<CacheStatus> {
        ["team-ci", "team-web", "oss"]
            .map(|n| CacheStatus {
                name: n.into(),
                public_key: format!("{n}:KEY"),
            })
            .to_vec()
    }

    #[test]
    fn secret_carries_netrc_for_the_host() {
        let v = validated(&spec());
        let ctx = Context {
            endpoint: "https://cache.example.org:8443/x",
            caches: &[],
        };
        let data = secret_data(&v, "T", ctx);
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

    /// The two files a CI pod uses, whole. spec() grants pull on `team-*` and push on
    /// `team-ci`; the exact `team-ci` entry wins outright (Attic's rule), so that cache is
    /// push-only for this token and not a substituter.
    #[test]
    fn nix_conf_and_client_config_are_all_a_job_needs() {
        let v = validated(&spec());
        let caches = caches();
        let ctx = Context {
            endpoint: "https://cache.example.org/",
            caches: &caches,
        };
        let data = secret_data(&v, "T", ctx);
        let text = |k: &str| String::from_utf8(data[k].0.clone()).expect("utf-8");
        assert_eq!(
            text("nix.conf"),
            "# Nix settings for BinaryCache main (CacheToken secret ci-token), expecting this Secret at /var/run/secrets/garret\n\
             extra-substituters = https://cache.example.org/team-web\n\
             extra-trusted-public-keys = team-web:KEY\n\
             netrc-file = /var/run/secrets/garret/netrc\n"
        );
        assert_eq!(
            text("config.toml"),
            "default-server = \"main\"\n\n\
             [servers.main]\n\
             endpoint = \"https://cache.example.org/\"\n\
             token-file = \"/var/run/secrets/garret/token\"\n"
        );
        // Attic's layout, read back as TOML
        let cfg: toml::Table = toml::from_str(&text("config.toml")).expect("client config");
        assert_eq!(cfg["default-server"].as_str(), Some("main"));
        assert_eq!(
            cfg["servers"]["main"]["endpoint"].as_str(),
            Some("https://cache.example.org/")
        );
        // no pullable cache: only the netrc
        let none = Context {
            endpoint: "https://cache.example.org/",
            caches: &caches[2..],
        };
        assert!(!nix_conf(&v, none).contains("substituters"));
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
