//! Garret's Kubernetes operator.
//!
//! Two kinds in `garret.dev/v1alpha1`: [`BinaryCache`] (a `garretd` deployment and its
//! config, keys and exposure) and [`CacheToken`] (a scoped JWT kept fresh in a Secret).
//! Each reconcile is one pipeline, per kind:
//!
//! ```text
//! observe ─▶ validate ─▶ desired ─▶ apply ─▶ status
//! (edge)     (pure)      (pure)     (edge)   (pure, written at the edge)
//! ```
//!
//! - [`desired`] — BinaryCache: `validate(&BinaryCache) -> Result<Validated, InvalidSpec>`,
//!   `desired(&Validated, &Observed) -> Children` (every child object and the status it
//!   implies), and `desired::status`. Keys need randomness, so the edge generates the
//!   missing ones and passes them in through `Observed`.
//! - [`token`] — CacheToken: `validate`, the renewal policy (`token::renewal`, ordered pure
//!   checks), `mint` (given a random `jti`), `desired` (the Secret's shape lives in
//!   `token::secret`), `status` and the requeue time.
//! - [`controller`] — the edge, and the only code that talks to the API server: it reads
//!   what the pure steps need, applies their output (server-side apply, field manager
//!   [`FIELD_MANAGER`]) and writes status.

pub mod condition;
pub mod controller;
pub mod desired;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod token;
pub mod types;

pub use error::{Error, InvalidSpec, Result};
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
