//! Pure builders: a validated `BinaryCache` in, the desired child objects out. No I/O; the
//! only impure inputs (generated keys) are passed in by the controller.

pub mod config;
pub mod ingress;
pub mod secrets;
pub mod workload;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::types::BinaryCache;
use crate::{Error, Result};

/// Port garretd listens on inside the pod.
pub const HTTP_PORT: i32 = 8080;
/// Where the rendered server.toml is mounted.
pub const CONFIG_DIR: &str = "/etc/garret";
/// Where per-cache signing keys are mounted, one file per cache.
pub const CACHE_KEYS_DIR: &str = "/run/garret/cache-keys";
/// The data volume (SQLite file, local chunks).
pub const DATA_DIR: &str = "/var/lib/garret";
/// Key of the token-signing Secret holding `ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64`.
pub const TOKEN_KEY_FIELD: &str = "token-rs256-secret-base64";

/// Names of every object a BinaryCache owns, in one place.
pub struct Names<'a>(pub &'a str);

impl Names<'_> {
    pub fn workload(&self) -> String {
        self.0.to_string()
    }
    pub fn config(&self) -> String {
        format!("{}-config", self.0)
    }
    pub fn token_key(&self) -> String {
        format!("{}-token-key", self.0)
    }
    pub fn cache_keys(&self) -> String {
        format!("{}-cache-keys", self.0)
    }
    pub fn data(&self) -> String {
        format!("{}-data", self.0)
    }
}

/// Labels on every child and the pod selector.
pub fn labels(bc: &BinaryCache) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "garretd".to_string()),
        ("app.kubernetes.io/instance".to_string(), bc.name_any()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            crate::FIELD_MANAGER.to_string(),
        ),
    ])
}

/// Controller owner reference to `owner`, so children are garbage-collected with it and
/// their changes wake its controller.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Result<OwnerReference> {
    owner
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidSpec("owner has no uid yet".into()))
}

/// Metadata for a child of `bc`; `owned = false` for state that must survive the owner
/// (`reclaimPolicy` decides its fate in the finalizer instead).
pub fn child_meta(bc: &BinaryCache, name: String, owned: bool) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: bc.namespace(),
        labels: Some(labels(bc)),
        owner_references: if owned {
            Some(vec![owner_ref(bc)?])
        } else {
            None
        },
        ..ObjectMeta::default()
    })
}

/// Rejects specs garretd or Kubernetes would reject later, with a message for the user.
pub fn validate(bc: &BinaryCache) -> Result<()> {
    let spec = &bc.spec;
    let invalid = |m: String| Err(Error::InvalidSpec(m));
    if spec.image.trim().is_empty() {
        return invalid("image must not be empty".into());
    }
    if spec.replicas < 0 {
        return invalid("replicas must not be negative".into());
    }
    if spec.replicas > 1 && (spec.storage.s3.is_none() || spec.database.postgres.is_none()) {
        return invalid(
            "more than one replica needs storage.s3 and database.postgres (the data volume is ReadWriteOnce)".into(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &spec.caches {
        if let Err(e) = garret_core::cache_name::CacheName::parse(&c.name) {
            return invalid(format!("cache name {:?}: {e}", c.name));
        }
        if !seen.insert(c.name.as_str()) {
            return invalid(format!("cache {:?} is declared twice", c.name));
        }
        if let Some(p) = &c.retention_period {
            duration(p, &format!("caches[{}].retentionPeriod", c.name))?;
        }
    }
    let gc = &spec.garbage_collection;
    for (field, value) in [
        ("garbageCollection.interval", &gc.interval),
        (
            "garbageCollection.defaultRetentionPeriod",
            &gc.default_retention_period,
        ),
    ] {
        if let Some(v) = value {
            duration(v, field)?;
        }
    }
    if let Some(i) = &spec.ingress {
        if i.host.trim().is_empty() {
            return invalid("ingress.host must not be empty".into());
        }
    }
    Ok(())
}

fn duration(text: &str, field: &str) -> Result<std::time::Duration> {
    garret_core::duration::parse_duration(text)
        .map_err(|e| Error::InvalidSpec(format!("{field}: {e}")))
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::types::BinaryCache;

    /// A BinaryCache as a user would write it, with the uid the API server would add.
    pub fn binary_cache(yaml: &str) -> BinaryCache {
        let mut bc: BinaryCache = serde_saphyr::from_str(yaml).expect("fixture parses");
        bc.metadata.uid = Some("0000-uid".into());
        bc.metadata.namespace = Some("ns".into());
        bc
    }

    pub const MINIMAL: &str = r#"
apiVersion: garret.dev/v1alpha1
kind: BinaryCache
metadata: {name: main}
spec:
  caches:
    - name: team
    - name: public-stuff
      public: true
      priority: 30
      retentionPeriod: 30 days
      upstreamCacheKeyNames: []
"#;

    pub const FULL: &str = r#"
apiVersion: garret.dev/v1alpha1
kind: BinaryCache
metadata: {name: big}
spec:
  image: example.org/garretd:dev
  replicas: 3
  storage:
    s3:
      bucket: nars
      region: eu-west-1
      endpoint: https://s3.example.org
      credentialsSecretRef: {name: s3-creds}
  database:
    postgres: {name: pg, key: url}
  ingress:
    host: cache.example.org
    className: nginx
    tlsSecretName: cache-tls
    annotations:
      nginx.ingress.kubernetes.io/proxy-body-size: 50g
  resources:
    requests: {cpu: 500m, memory: 1Gi}
  garbageCollection:
    interval: 6 hours
    defaultRetentionPeriod: 90 days
"#;
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn fixtures_are_valid() {
        validate(&binary_cache(MINIMAL)).expect("minimal");
        validate(&binary_cache(FULL)).expect("full");
    }

    #[test]
    fn rejects_bad_specs() {
        let cases = [
            ("spec: {replicas: 2}", "more than one replica"),
            ("spec: {caches: [{name: a}, {name: a}]}", "declared twice"),
            ("spec: {caches: [{name: 'bad name!'}]}", "cache name"),
            (
                "spec: {caches: [{name: a, retentionPeriod: forever}]}",
                "retentionPeriod",
            ),
            (
                "spec: {garbageCollection: {interval: soon}}",
                "garbageCollection.interval",
            ),
            ("spec: {image: ''}", "image"),
        ];
        for (spec, needle) in cases {
            let bc = binary_cache(&format!(
                "apiVersion: garret.dev/v1alpha1\nkind: BinaryCache\nmetadata: {{name: x}}\n{spec}"
            ));
            let err = validate(&bc).expect_err(spec).to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn children_are_owned_except_state() {
        let bc = binary_cache(MINIMAL);
        let owned = child_meta(&bc, "x".into(), true).expect("meta");
        let refs = owned.owner_references.expect("owner refs");
        assert_eq!(refs[0].kind, "BinaryCache");
        assert_eq!(refs[0].uid, "0000-uid");
        assert_eq!(refs[0].controller, Some(true));
        let state = child_meta(&bc, "y".into(), false).expect("meta");
        assert!(state.owner_references.is_none());
    }
}
