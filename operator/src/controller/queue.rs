//! Controllers whose wake-ups are counted in `garret_operator_queue_depth` (see
//! `metrics::QueueDepth`): the trigger streams `Controller::new` and `Controller::owns` would
//! build, built here so that each event is counted as it wakes an object.

use std::fmt::Debug;

use futures::StreamExt;
use kube::api::{Api, ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;

use crate::desired::meta::key_of;

/// The `namespace/name` key of `r`, as `key_of` gives for the object.
pub fn key_of_ref<K: Resource>(r: &ObjectRef<K>) -> String {
    format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name)
}

/// Count a wake-up of `r` (of `kind`).
pub fn woken<K: Resource>(kind: &'static str, r: &ObjectRef<K>) {
    crate::metrics::global().woken(kind, &key_of_ref(r));
}

/// Whether the object with key `namespace/name` is in `store`.
pub fn store_has<K>(store: &Store<K>, key: &str) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let (ns, name) = key.split_once('/').unwrap_or(("", key));
    let r = ObjectRef::new(name);
    let r = if ns.is_empty() { r } else { r.within(ns) };
    store.get(&r).is_some()
}

/// The object of kind `K` that controls the object with `meta`, if one does.
pub fn controller_of<K: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> Option<ObjectRef<K>> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    (owner.kind == K::kind(&()) && owner.api_version == K::api_version(&())).then(|| {
        let r = ObjectRef::new(&owner.name);
        match &meta.namespace {
            Some(ns) => r.within(ns),
            None => r,
        }
    })
}

/// `Controller::new(api, Default::default())`, with every event of its watch counted as a
/// wake-up of `kind` and its store known to the queue (deleted objects leave it).
pub fn counted<K>(api: Api<K>, kind: &'static str) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let known = store.clone();
    crate::metrics::global().queue_exists(kind, Box::new(move |key: &str| store_has(&known, key)));
    let main = watcher(api, watcher::Config::default())
        .reflect(writer)
        .applied_objects()
        .inspect(move |event| {
            if let Ok(obj) = event {
                crate::metrics::global().woken(kind, &key_of(obj));
            }
        });
    Controller::for_stream(main, store)
}

/// `Controller::owns` (metadata only, as it does), with each wake-up counted.
pub trait OwnsCounted<K> {
    fn owns_counted<C>(
        self,
        api: Api<PartialObjectMeta<C>>,
        wc: watcher::Config,
        kind: &'static str,
    ) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static;
}

impl<K> OwnsCounted<K> for Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn owns_counted<C>(
        self,
        api: Api<PartialObjectMeta<C>>,
        wc: watcher::Config,
        kind: &'static str,
    ) -> Self
    where
        C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        self.watches_stream(watcher(api, wc).touched_objects(), move |child| {
            let owner = controller_of::<K>(&child.metadata);
            if let Some(r) = &owner {
                woken(kind, r);
            }
            owner
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{BinaryCache, CacheToken};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owned(kind: &str, controller: bool) -> ObjectMeta {
        ObjectMeta {
            namespace: Some("a".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "garret.dev/v1alpha1".into(),
                kind: kind.into(),
                name: "main".into(),
                uid: "u".into(),
                controller: Some(controller),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn a_child_wakes_the_object_of_the_kind_controlling_it() {
        assert_eq!(
            controller_of::<BinaryCache>(&owned("BinaryCache", true)),
            Some(ObjectRef::new("main").within("a"))
        );
        assert_eq!(
            controller_of::<CacheToken>(&owned("BinaryCache", true)),
            None
        );
        assert_eq!(
            controller_of::<BinaryCache>(&owned("BinaryCache", false)),
            None
        );
        assert_eq!(controller_of::<BinaryCache>(&ObjectMeta::default()), None);
        let r: ObjectRef<BinaryCache> = ObjectRef::new("main").within("a");
        assert_eq!(key_of_ref(&r), "a/main");
    }
}
