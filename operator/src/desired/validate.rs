//! The first step of the BinaryCache pipeline: reject specs garretd or Kubernetes would
//! reject later, with a message for the user, and keep what the builders need in a
//! [`Validated`]. After this nothing about the spec can fail: every builder takes a
//! `Validated` and returns its object.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use super::config::endpoint;
use super::meta::{controller_ref, Names, MANAGED_BY};
use crate::error::InvalidSpec;
use crate::types::{BinaryCache, BinaryCacheSpec};

/// A BinaryCache whose spec passed [`validate`], with its identity resolved.
#[derive(Clone, Debug)]
pub struct Validated {
    pub name: String,
    pub namespace: String,
    /// Controller reference for owned children.
    pub owner: OwnerReference,
    pub spec: BinaryCacheSpec,
    /// The URL clients reach the server at (see [`endpoint`]).
    pub endpoint: String,
}

impl Validated {
    pub fn names(&self) -> Names<'_> {
        Names(&self.name)
    }

    /// Labels on every child and the pod selector.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "garretd".to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
            (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        ])
    }

    /// Metadata for a child; `owned = false` for state that must survive the owner
    /// (`reclaimPolicy` decides its fate in the finalizer instead).
    pub fn child_meta(&self, name: String, owned: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: owned.then(|| vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// Whether the pod needs the data volume: for SQLite or local chunks.
    pub fn needs_volume(&self) -> bool {
        self.spec.storage.s3.is_none() || self.spec.database.postgres.is_none()
    }
}

/// Check `bc`'s spec (and that it has the namespace and uid every object from the API
/// server has).
pub fn validate(bc: &BinaryCache) -> Result<Validated, InvalidSpec> {
    let namespace = bc
        .namespace()
        .ok_or_else(|| InvalidSpec("BinaryCache must be namespaced".into()))?;
    check_spec(&bc.spec)?;
    Ok(Validated {
        name: bc.name_any(),
        namespace,
        owner: controller_ref(bc)?,
        spec: bc.spec.clone(),
        endpoint: endpoint(bc),
    })
}

fn check_spec(spec: &BinaryCacheSpec) -> Result<(), InvalidSpec> {
    let invalid = |m: &str| Err(InvalidSpec(m.into()));
    if let Some(ep) = &spec.api_endpoint {
        let rest = ep
            .strip_prefix("https://")
            .or_else(|| ep.strip_prefix("http://"))
            .unwrap_or_default();
        if rest.is_empty() || rest.starts_with('/') || ep.chars().any(char::is_whitespace) {
            return invalid("apiEndpoint must be an http:// or https:// URL");
        }
    }
    if spec.image.trim().is_empty() {
        return invalid("image must not be empty");
    }
    if spec.replicas < 0 {
        return invalid("replicas must not be negative");
    }
    if spec.replicas > 1 && (spec.storage.s3.is_none() || spec.database.postgres.is_none()) {
        return invalid(
            "more than one replica needs storage.s3 and database.postgres (the data volume is ReadWriteOnce)",
        );
    }
    let mut seen = BTreeSet::new();
    for c in &spec.caches {
        if let Err(e) = garret_core::cache_name::CacheName::parse(&c.name) {
            return Err(InvalidSpec(format!("cache name {:?}: {e}", c.name)));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(InvalidSpec(format!("cache {:?} is declared twice", c.name)));
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
    if spec
        .ingress
        .as_ref()
        .is_some_and(|i| i.host.trim().is_empty())
    {
        return invalid("ingress.host must not be empty");
    }
    if let Some(gateway) = &spec.gateway {
        super::gateway::check(gateway)?;
    }
    Ok(())
}

fn duration(text: &str, field: &str) -> Result<std::time::Duration, InvalidSpec> {
    garret_core::duration::parse_duration(text).map_err(|e| InvalidSpec(format!("{field}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
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
            ("spec: {replicas: -1}", "negative"),
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
            (
                "spec: {garbageCollection: {defaultRetentionPeriod: soon}}",
                "defaultRetentionPeriod",
            ),
            ("spec: {ingress: {host: ' '}}", "ingress.host"),
            ("spec: {image: ''}", "image"),
        ];
        for (spec, needle) in cases {
            let bc = parse_binary_cache(&format!(
                "apiVersion: garret.dev/v1alpha1\nkind: BinaryCache\nmetadata: {{name: x}}\n{spec}"
            ));
            let err = validate(&bc).expect_err(spec).to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn needs_identity_from_the_api_server() {
        let mut bc = binary_cache(MINIMAL);
        bc.metadata.uid = None;
        assert!(validate(&bc).expect_err("no uid").0.contains("uid"));
        bc.metadata.namespace = None;
        assert!(validate(&bc).expect_err("no ns").0.contains("namespaced"));
    }

    #[test]
    fn children_are_owned_except_state() {
        let v = validate(&binary_cache(MINIMAL)).expect("valid");
        let owned = v.child_meta("x".into(), true);
        let refs = owned.owner_references.expect("owner refs");
        assert_eq!(refs[0].kind, "BinaryCache");
        assert_eq!(refs[0].uid, "0000-uid");
        assert_eq!(refs[0].controller, Some(true));
        let state = v.child_meta("y".into(), false);
        assert!(state.owner_references.is_none());
    }
}
