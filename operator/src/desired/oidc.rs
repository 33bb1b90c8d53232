//! Keyless access for this cluster's ServiceAccounts (`spec.serviceAccountAccess`).
//!
//! garretd needs no network path to the apiserver: the operator reads the cluster's
//! ServiceAccount issuer (`/.well-known/openid-configuration`) and its public keys
//! (`/openid/v1/jwks`) and renders both into the config ConfigMap — a `[[jwt.oidc]]` entry in
//! server.toml with one grant per ServiceAccount, and the JWKS file beside it. garretd
//! re-reads both when they change, so a key rotation reaches it with the next reconcile.
//! A CI pod presents a projected ServiceAccount token whose audience is [`audience`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;
use toml::{Table, Value};

use super::validate::Validated;
use super::CONFIG_DIR;
use crate::error::{Error, Result};
use crate::types::{Access, ServiceAccountAccess};

/// Key of the JWKS in the config ConfigMap (mounted beside server.toml).
pub const JWKS_FILE: &str = "cluster-jwks.json";

/// The audience a ServiceAccount token must carry for this BinaryCache: specific to it, so
/// a token meant for another service (or another cache) is refused.
pub fn audience(namespace: &str, name: &str) -> String {
    format!("garret.dev/{namespace}/{name}")
}

/// The `sub` the kube-apiserver writes into a ServiceAccount's tokens.
pub fn subject(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

/// What the operator read from its own apiserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterIssuer {
    /// The `iss` of the cluster's ServiceAccount tokens.
    pub issuer: String,
    /// The JWKS document, as served.
    pub jwks: String,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

impl ClusterIssuer {
    /// From the bodies of the discovery document and the JWKS; refuses what garretd would
    /// refuse, so a broken answer never replaces working keys in the ConfigMap.
    pub fn from_documents(discovery: &str, jwks: &str) -> Result<Self> {
        let d: Discovery = serde_json::from_str(discovery).map_err(|e| {
            Error::Dependency(format!("the cluster's OpenID discovery document: {e}"))
        })?;
        if d.issuer.is_empty() {
            return Err(Error::Dependency(
                "the cluster's OpenID discovery document names no issuer".into(),
            ));
        }
        garret_core::token::Jwks::parse(jwks.as_bytes())
            .map_err(|e| Error::Dependency(format!("the cluster's ServiceAccount JWKS: {e}")))?;
        Ok(ClusterIssuer {
            issuer: d.issuer,
            jwks: jwks.to_string(),
        })
    }
}

fn grant(default_namespace: &str, a: &ServiceAccountAccess) -> Value {
    let ns = a.namespace.as_deref().unwrap_or(default_namespace);
    let letters = match a.access {
        Access::Pull => "r",
        Access::Push => "rw",
    };
    let mut matches = Table::new();
    matches.insert("sub".into(), Value::String(subject(ns, &a.service_account)));
    let caches: Table = a
        .caches
        .iter()
        .map(|c| (c.clone(), Value::String(letters.into())))
        .collect();
    let mut t = Table::new();
    t.insert("match".into(), Value::Table(matches));
    t.insert("caches".into(), Value::Table(caches));
    Value::Table(t)
}

/// The `[[jwt.oidc]]` entry trusting `issuer` for `v`'s ServiceAccount grants.
pub fn oidc_entry(v: &Validated, issuer: &ClusterIssuer) -> Table {
    let mut t = Table::new();
    t.insert("issuer".into(), Value::String(issuer.issuer.clone()));
    t.insert(
        "audience".into(),
        Value::String(audience(&v.namespace, &v.name)),
    );
    t.insert(
        "jwks-file".into(),
        Value::String(format!("{CONFIG_DIR}/{JWKS_FILE}")),
    );
    let grants = v
        .spec
        .service_account_access
        .iter()
        .map(|a| grant(&v.namespace, a))
        .collect();
    t.insert("grants".into(), Value::Array(grants));
    t
}

/// Adds the cluster issuer to the rendered config ConfigMap: the `[[jwt.oidc]]` entry in
/// server.toml and the JWKS beside it. Without `spec.serviceAccountAccess` nothing changes.
pub fn add_cluster_issuer(cm: &mut ConfigMap, v: &Validated, issuer: &ClusterIssuer) {
    if v.spec.service_account_access.is_empty() {
        return;
    }
    let data = cm.data.get_or_insert_with(BTreeMap::new);
    let mut server: Table = data
        .get("server.toml")
        .and_then(|text| text.parse().ok())
        .unwrap_or_default();
    let jwt = server
        .entry("jwt")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(jwt) = jwt {
        jwt.insert(
            "oidc".into(),
            Value::Array(vec![Value::Table(oidc_entry(v, issuer))]),
        );
    }
    data.insert("server.toml".into(), server.to_string());
    data.insert(JWKS_FILE.into(), issuer.jwks.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::config::config_map;
    use crate::desired::fixtures::*;
    use crate::desired::validate::validate;
    use garretd::config::{Config, ConfigSource};

    const DISCOVERY: &str = r#"{"issuer":"https://kubernetes.default.svc.cluster.local","jwks_uri":"https://10.0.0.1:6443/openid/v1/jwks","response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256"]}"#;

    /// A JWKS of one RSA key of 2048-bit shape (the parser checks the size, not primality).
    fn jwks() -> String {
        serde_json::json!({"keys": [{"use": "sig", "kty": "RSA", "kid": "k1", "alg": "RS256",
            "n": N_2048, "e": "AQAB"}]})
        .to_string()
    }

    const N_2048: &str = "xcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFxcXFAQ";

    fn with_access(yaml_access: &str) -> Validated {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minimal.yaml"),
        )
        .expect("fixture");
        let mut bc = parse_binary_cache(&text);
        bc.spec.service_account_access =
            serde_saphyr::from_str(yaml_access).expect("access parses");
        validate(&bc).expect("valid")
    }

    #[test]
    fn renders_issuer_audience_jwks_and_grants_garretd_accepts() {
        let v = with_access(
            "- serviceAccount: pusher\n  namespace: ci\n  caches: [team, 'team-*']\n- serviceAccount: reader\n  caches: [oss]\n  access: Pull\n",
        );
        let issuer = ClusterIssuer::from_documents(DISCOVERY, &jwks()).expect("issuer");
        let mut cm = config_map(&v);
        let before = cm.clone();
        add_cluster_issuer(&mut cm, &v, &issuer);
        let data = cm.data.as_ref().expect("data");
        assert_eq!(data.get(JWKS_FILE), Some(&jwks()));
        let cfg = Config::from_toml(&data["server.toml"], &ConfigSource::default(), vec![])
            .expect("garretd accepts the config");
        assert_eq!(cfg.jwt.oidc.len(), 1);
        let o = &cfg.jwt.oidc[0];
        assert_eq!(o.issuer, "https://kubernetes.default.svc.cluster.local");
        assert_eq!(
            o.audience,
            vec![format!("garret.dev/{}/{}", v.namespace, v.name)]
        );
        assert_eq!(
            o.jwks_file.as_deref().and_then(|p| p.to_str()),
            Some("/etc/garret/cluster-jwks.json")
        );
        assert_eq!(o.grants.len(), 2);
        assert_eq!(
            o.grants[0].matches.get("sub").map(String::as_str),
            Some("system:serviceaccount:ci:pusher")
        );
        assert_eq!(
            o.grants[0].caches,
            BTreeMap::from([("team".into(), "rw".into()), ("team-*".into(), "rw".into())])
        );
        assert_eq!(
            o.grants[1].matches.get("sub").cloned(),
            Some(format!("system:serviceaccount:{}:reader", v.namespace))
        );
        assert_eq!(
            o.grants[1].caches,
            BTreeMap::from([("oss".into(), "r".into())])
        );
        // Everything else is as rendered before; the revocation list stays.
        assert_eq!(
            cfg.jwt.revocation_list.as_deref().and_then(|p| p.to_str()),
            Some("/run/garret/revocations/revoked")
        );
        let old = Config::from_toml(
            &before.data.expect("data")["server.toml"],
            &ConfigSource::default(),
            vec![],
        )
        .expect("old config");
        assert_eq!(old.caches, cfg.caches);
    }

    #[test]
    fn nothing_changes_without_service_account_access() {
        let v = validated(MINIMAL);
        let issuer = ClusterIssuer::from_documents(DISCOVERY, &jwks()).expect("issuer");
        let mut cm = config_map(&v);
        let before = cm.clone();
        add_cluster_issuer(&mut cm, &v, &issuer);
        assert_eq!(cm, before);
    }

    #[test]
    fn broken_cluster_documents_are_refused() {
        for (discovery, keys) in [
            ("{}", jwks()),
            (r#"{"issuer": ""}"#, jwks()),
            ("not json", jwks()),
            (DISCOVERY, r#"{"keys": []}"#.to_string()),
            (DISCOVERY, "<html>".to_string()),
        ] {
            assert!(
                matches!(
                    ClusterIssuer::from_documents(discovery, &keys),
                    Err(Error::Dependency(_))
                ),
                "{discovery} {keys}"
            );
        }
    }
}
