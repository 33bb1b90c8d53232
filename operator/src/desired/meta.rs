//! Object metadata shared by every child the operator writes: names, labels, owner
//! references, the managed-by label its watches select on, and the one spelling of an
//! object's key. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use crate::error::InvalidSpec;
use crate::FIELD_MANAGER;

/// Label every object the operator writes carries; the controllers watch children by it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", FIELD_MANAGER);

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
    pub fn revocations(&self) -> String {
        format!("{}-revocations", self.0)
    }
}

/// Just the managed-by label, for children that carry no other labels.
pub fn managed_by() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())])
}

/// Controller owner reference to `owner`, so children are garbage-collected with it and
/// their changes wake its controller. Objects read from the API server always have a uid.
pub fn controller_ref<K: Resource<DynamicType = ()>>(
    owner: &K,
) -> Result<OwnerReference, InvalidSpec> {
    owner
        .controller_owner_ref(&())
        .ok_or_else(|| InvalidSpec("owner has no uid yet".into()))
}

/// Whether `obj` lists the object with uid `owner_uid` among its owners.
pub fn owned_by<K: Resource>(obj: &K, owner_uid: Option<&str>) -> bool {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == owner_uid)
}

/// `namespace/name`, the key of an object in logs and in the back-off table.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// An Event to publish. Always of type Normal: failures are reported in status conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub reason: &'static str,
    pub action: &'static str,
    /// For people reading `kubectl describe`.
    pub note: String,
}

/// A [`Note`]: what happened, to what end, and what to tell the reader.
pub fn normal_event(reason: &'static str, action: &'static str, note: String) -> Note {
    Note {
        reason,
        action,
        note,
    }
}
