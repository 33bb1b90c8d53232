//! The ConfigMap holding garretd's `server.toml`, in Attic's key names plus Garret's
//! `[[caches]]`. Secrets never go in here: they arrive as environment variables and files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use toml::{Table, Value};

use super::meta::Names;
use super::validate::Validated;
use super::{CACHE_KEYS_DIR, DATA_DIR, HTTP_PORT, REVOCATIONS_DIR, REVOCATION_FILE};
use crate::types::BinaryCache;

/// The URL clients reach the server at: `spec.apiEndpoint` when pinned, else the Ingress
/// host when exposed, else the HTTPRoute's first hostname without a wildcard, else the
/// Service. Takes the raw object because CacheTokens read it from a BinaryCache they do not
/// validate.
pub fn endpoint(bc: &BinaryCache) -> String {
    if let Some(pinned) = pinned_api_endpoint(bc) {
        return pinned;
    }
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    if let Some(i) = &bc.spec.ingress {
        return format!("{}://{}/", scheme(i.tls_secret_name.is_some()), i.host);
    }
    let gateway = bc.spec.gateway.as_ref();
    if let Some((g, host)) = gateway.and_then(|g| Some((g, super::gateway::endpoint_host(g)?))) {
        return format!("{}://{host}/", scheme(g.tls));
    }
    format!(
        "http://{}.{}.svc/",
        Names(bc.metadata.name.as_deref().unwrap_or_default()).workload(),
        bc.metadata.namespace.as_deref().unwrap_or_default()
    )
}

/// `spec.apiEndpoint` with the trailing `/` garretd requires.
pub fn pinned_api_endpoint(bc: &BinaryCache) -> Option<String> {
    bc.spec.api_endpoint.as_ref().map(|ep| {
        if ep.ends_with('/') {
            ep.clone()
        } else {
            format!("{ep}/")
        }
    })
}

/// The revocation list file garretd reads (in the revocations ConfigMap, mounted at
/// [`REVOCATIONS_DIR`]).
pub fn revocation_list_path() -> String {
    format!("{REVOCATIONS_DIR}/{REVOCATION_FILE}")
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

/// Settings that need a restart to change (listen, storage, database, GC); the caches part
/// is re-read by garretd while running, so it is kept apart for the restart hash.
fn server_table(v: &Validated) -> Table {
    let spec = &v.spec;
    let mut t = Table::new();
    t.insert("listen".into(), s(format!("[::]:{HTTP_PORT}")));
    // Unless pinned, garretd derives the endpoint from each request (Host,
    // X-Forwarded-Proto), so clients behind port-forward, Service and Ingress all work.
    if let Some(ep) = &v.spec.api_endpoint {
        let ep = if ep.ends_with('/') {
            ep.clone()
        } else {
            format!("{ep}/")
        };
        t.insert("api-endpoint".into(), s(ep));
    }
    let mut jwt = Table::new();
    jwt.insert("revocation-list".into(), s(revocation_list_path()));
    t.insert("jwt".into(), Value::Table(jwt));

    if spec.database.postgres.is_none() {
        let mut db = Table::new();
        db.insert(
            "url".into(),
            s(format!("sqlite://{DATA_DIR}/server.db?mode=rwc")),
        );
        t.insert("database".into(), Value::Table(db));
    }
    // With PostgreSQL the URL comes from ATTIC_SERVER_DATABASE_URL (a Secret), not this file.

    let mut storage = Table::new();
    match &spec.storage.s3 {
        Some(s3) => {
            storage.insert("type".into(), s("s3"));
            storage.insert("bucket".into(), s(&s3.bucket));
            storage.insert("region".into(), s(&s3.region));
            if let Some(e) = &s3.endpoint {
                storage.insert("endpoint".into(), s(e));
            }
        }
        None => {
            storage.insert("type".into(), s("local"));
            storage.insert("path".into(), s(format!("{DATA_DIR}/storage")));
        }
    }
    t.insert("storage".into(), Value::Table(storage));

    let gc = &spec.garbage_collection;
    let mut gct = Table::new();
    if let Some(i) = &gc.interval {
        gct.insert("interval".into(), s(i));
    }
    if let Some(r) = &gc.default_retention_period {
        gct.insert("default-retention-period".into(), s(r));
    }
    if !gct.is_empty() {
        t.insert("garbage-collection".into(), Value::Table(gct));
    }
    t
}

fn caches_table(v: &Validated) -> Table {
    let caches: Vec<Value> = v
        .spec
        .caches
        .iter()
        .map(|c| {
            let mut t = Table::new();
            t.insert("name".into(), s(&c.name));
            t.insert("public".into(), Value::Boolean(c.public));
            if let Some(p) = c.priority {
                t.insert("priority".into(), Value::Integer(p.into()));
            }
            if let Some(r) = &c.retention_period {
                t.insert("retention-period".into(), s(r));
            }
            if let Some(u) = &c.upstream_cache_key_names {
                t.insert(
                    "upstream-cache-key-names".into(),
                    Value::Array(u.iter().map(s).collect()),
                );
            }
            if !c.upstreams.is_empty() {
                t.insert(
                    "upstreams".into(),
                    Value::Array(c.upstreams.iter().map(upstream_table).collect()),
                );
            }
            t.insert(
                "signing-key-file".into(),
                s(format!("{CACHE_KEYS_DIR}/{}", c.name)),
            );
            Value::Table(t)
        })
        .collect();
    let mut t = Table::new();
    if !caches.is_empty() {
        t.insert("caches".into(), Value::Array(caches));
    }
    t
}

/// One `upstreams` entry of a `[[caches]]` table, in garretd's kebab-case keys.
fn upstream_table(u: &crate::types::UpstreamSpec) -> Value {
    let mut t = Table::new();
    t.insert("url".into(), s(&u.url));
    t.insert(
        "public-keys".into(),
        Value::Array(u.public_keys.iter().map(s).collect()),
    );
    if let Some(p) = u.priority {
        t.insert("priority".into(), Value::Integer(p.into()));
    }
    Value::Table(t)
}

/// TOML text of `t`. Infallible here: these tables hold only strings, booleans, integers
/// and arrays of them, all of which TOML can represent (`Table`'s `Display` relies on that).
fn render(t: &Table) -> String {
    t.to_string()
}

/// The full server.toml text.
pub fn server_toml(v: &Validated) -> String {
    let mut all = server_table(v);
    all.extend(caches_table(v));
    render(&all)
}

/// Hash of the settings garretd reads only at start; put on the pod template so changing
/// them rolls the pods, while cache declarations apply live.
pub fn restart_hash(v: &Validated) -> String {
    hex::encode(&Sha256::digest(render(&server_table(v)).as_bytes())[..8])
}

/// The revocation list ConfigMap, owned by the BinaryCache: created once, empty but for a
/// header; CacheTokens add and prune entries (`token::revocation`).
pub fn revocations_config_map(v: &Validated) -> ConfigMap {
    ConfigMap {
        metadata: v.child_meta(v.names().revocations(), true),
        data: Some(BTreeMap::from([(
            REVOCATION_FILE.to_string(),
            crate::token::revocation::list_header(&v.name),
        )])),
        ..ConfigMap::default()
    }
}

/// The ConfigMap, owned by the BinaryCache.
pub fn config_map(v: &Validated) -> ConfigMap {
    ConfigMap {
        metadata: v.child_meta(v.names().config(), true),
        data: Some(BTreeMap::from([(
            "server.toml".to_string(),
            server_toml(v),
        )])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::fixtures::*;
    use garretd::config::{Config, ConfigSource, StorageConfig};

    /// garretd's own parser is the judge of what the operator writes.
    fn parse(text: &str) -> Config {
        Config::from_toml(text, &ConfigSource::default(), vec![])
            .expect("garretd accepts the config")
    }

    #[test]
    fn upstreams_render_as_garretd_reads_them() {
        use crate::types::UpstreamSpec;
        let mut bc = binary_cache(MINIMAL);
        let key = "up-1:9JwWjIvIxZ++emTefhvrh0lCM+RimmTooj9215Exnv8=";
        bc.spec.caches[0].upstreams = vec![UpstreamSpec {
            url: "https://cache.nixos.org".into(),
            public_keys: vec![key.into()],
            priority: Some(40),
        }];
        let v = crate::desired::validate::validate(&bc).expect("valid");
        let cfg = parse(&server_toml(&v));
        let ups = &cfg.caches[0].upstreams;
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].url, "https://cache.nixos.org");
        assert_eq!(ups[0].public_keys, vec![key.to_string()]);
        assert_eq!(ups[0].priority, 40);
        assert!(cfg.caches[1].upstreams.is_empty());
    }

    #[test]
    fn minimal_config_is_sqlite_and_local_with_declared_caches() {
        let bc = validated(MINIMAL);
        let cfg = parse(&server_toml(&bc));
        assert_eq!(
            cfg.database_url(),
            "sqlite:///var/lib/garret/server.db?mode=rwc"
        );
        assert!(
            matches!(cfg.storage, Some(StorageConfig::Local { ref path, .. }) if path.to_str() == Some("/var/lib/garret/storage"))
        );
        assert_eq!(
            cfg.api_endpoint, None,
            "derived from each request unless pinned"
        );
        assert_eq!(
            cfg.jwt.revocation_list.as_deref().and_then(|p| p.to_str()),
            Some("/run/garret/revocations/revoked")
        );
        assert_eq!(cfg.listen, "[::]:8080");
        assert_eq!(cfg.caches.len(), 2);
        let team = &cfg.caches[0];
        assert_eq!(
            (team.name.as_str(), team.public, team.priority),
            ("team", false, 41)
        );
        assert_eq!(
            team.upstream_cache_key_names,
            vec!["cache.nixos.org-1".to_string()]
        );
        assert_eq!(
            team.signing_key_file.as_deref().and_then(|p| p.to_str()),
            Some("/run/garret/cache-keys/team")
        );
        let public = &cfg.caches[1];
        assert!(public.public);
        assert_eq!(public.priority, 30);
        assert_eq!(
            public.retention_period,
            Some(std::time::Duration::from_secs(30 * 86400))
        );
        assert!(public.upstream_cache_key_names.is_empty());
    }

    #[test]
    fn full_config_is_s3_with_gc_and_https_endpoint() {
        let bc = validated(FULL);
        let text = server_toml(&bc);
        assert!(
            !text.contains("[database]"),
            "the URL comes from the Secret: {text}"
        );
        let cfg = parse(&text);
        match cfg.storage {
            Some(StorageConfig::S3(s3)) => {
                assert_eq!(s3.bucket, "nars");
                assert_eq!(s3.region, "eu-west-1");
                assert_eq!(s3.endpoint.as_deref(), Some("https://s3.example.org"));
                assert!(
                    s3.credentials.is_none(),
                    "credentials come from the environment"
                );
            }
            other => panic!("expected s3, got {other:?}"),
        }
        assert_eq!(cfg.api_endpoint, None);
        assert_eq!(
            cfg.garbage_collection.interval,
            std::time::Duration::from_secs(6 * 3600)
        );
        assert_eq!(
            cfg.garbage_collection.default_retention_period,
            std::time::Duration::from_secs(90 * 86400)
        );
    }

    #[test]
    fn restart_hash_ignores_caches_but_not_storage() {
        let a = validated(MINIMAL);
        let mut b = a.clone();
        b.spec.caches.pop();
        assert_eq!(restart_hash(&a), restart_hash(&b));
        b.spec.garbage_collection.interval = Some("1 hour".into());
        assert_ne!(restart_hash(&a), restart_hash(&b));
    }

    #[test]
    fn a_pinned_api_endpoint_is_written_and_is_the_endpoint() {
        let mut bc = validated(FULL);
        bc.spec.api_endpoint = Some("https://push.example.org".into());
        let cfg = parse(&server_toml(&bc));
        assert_eq!(
            cfg.api_endpoint.as_deref(),
            Some("https://push.example.org/")
        );
        let mut raw = binary_cache(FULL);
        assert_eq!(endpoint(&raw), "https://cache.example.org/");
        raw.spec.api_endpoint = Some("https://push.example.org".into());
        assert_eq!(endpoint(&raw), "https://push.example.org/");
    }

    #[test]
    fn revocation_list_starts_empty_and_owned() {
        let cm = revocations_config_map(&validated(MINIMAL));
        assert_eq!(cm.metadata.name.as_deref(), Some("main-revocations"));
        assert_eq!(cm.metadata.owner_references.map(|r| r.len()), Some(1));
        let text = cm
            .data
            .and_then(|d| d.get("revoked").cloned())
            .unwrap_or_default();
        assert!(garret_core::token::RevocationList::parse(&text).is_empty());
    }

    #[test]
    fn config_map_is_owned() {
        let cm = config_map(&validated(MINIMAL));
        assert_eq!(cm.metadata.name.as_deref(), Some("main-config"));
        assert_eq!(cm.metadata.owner_references.map(|r| r.len()), Some(1));
        assert!(cm.data.is_some_and(|d| d.contains_key("server.toml")));
    }
}
