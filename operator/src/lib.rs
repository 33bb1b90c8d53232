//! Garret's Kubernetes operator.
//!
//! Two kinds in `garret.dev/v1alpha1`: [`BinaryCache`] (a `garretd` deployment and its
//! config, keys and exposure) and [`CacheToken`] (a scoped JWT kept fresh in a Secret).
//! Each controller follows one pipeline: fetch → validate (pure) → build (pure) → apply
//! (server-side apply, field manager [`FIELD_MANAGER`]) → status. Only `controller/` talks to
//! the API server; `build/` and `renewal` are plain functions.

pub mod build;
pub mod condition;
pub mod controller;
pub mod error;
pub mod renewal;
pub mod types;

pub use error::{Error, Result};
pub use types::{BinaryCache, CacheToken};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "garret-operator";

/// The CRDs as YAML documents, in the order they are committed under `crds/`.
pub fn crd_yaml() -> Result<Vec<(&'static str, String)>> {
    use kube::CustomResourceExt;
    let yaml = |crd| serde_saphyr::to_string(&crd).map_err(|e| Error::Serialize(e.to_string()));
    Ok(vec![
        ("binarycaches.garret.dev.yaml", yaml(BinaryCache::crd())?),
        ("cachetokens.garret.dev.yaml", yaml(CacheToken::crd())?),
    ])
}
