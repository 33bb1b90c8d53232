//! BinaryCache: keys (generated once), config, workload and exposure, then status.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::{watcher, Controller};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{
    apply, children_only, delete_if_present, drain, error_policy, get_opt, now, Context, Settings,
};
use crate::build::{self, Names};
use crate::condition::{self, Wanted};
use crate::types::{BinaryCache, BinaryCacheStatus, CacheStatus, ReclaimPolicy};
use crate::{Error, Result};

/// Finalizer that applies `reclaimPolicy` to the volume and key Secrets on deletion.
pub const FINALIZER: &str = "garret.dev/reclaim";

/// The BinaryCache controller, watching its owned children.
pub async fn controller(client: Client, settings: Settings) {
    let api = |c: &Client| -> (
        Api<BinaryCache>,
        Api<Deployment>,
        Api<ConfigMap>,
        Api<Service>,
    ) {
        match &settings.namespace {
            Some(ns) => (
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
                Api::namespaced(c.clone(), ns),
            ),
            None => (
                Api::all(c.clone()),
                Api::all(c.clone()),
                Api::all(c.clone()),
                Api::all(c.clone()),
            ),
        }
    };
    let (caches, deployments, config_maps, services) = api(&client);
    let ctx = Arc::new(Context::new(client, settings));
    let stream = Controller::new(caches, watcher::Config::default())
        .owns(deployments, children_only())
        .owns(config_maps, children_only())
        .owns(services, children_only())
        .run(reconcile, error_policy, ctx);
    drain(stream).await;
}

/// One reconcile, wrapped in the finalizer so deletion runs [`cleanup`].
pub async fn reconcile(bc: Arc<BinaryCache>, ctx: Arc<Context>) -> Result<Action> {
    let ns = bc
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("BinaryCache must be namespaced".into()))?;
    let api: Api<BinaryCache> = ctx.api(&ns);
    let key = format!("{ns}/{}", bc.name_any());
    let action = finalizer(&api, FINALIZER, bc, |event| async {
        match event {
            Finalizer::Apply(bc) => apply_all(&bc, &ctx).await,
            Finalizer::Cleanup(bc) => cleanup(&bc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.note_success(&key);
    Ok(action)
}

/// Apply, and on failure record it in status before handing the error to back-off.
async fn apply_all(bc: &BinaryCache, ctx: &Context) -> Result<Action> {
    match apply_children(bc, ctx).await {
        Ok(action) => Ok(action),
        Err(Error::InvalidSpec(msg)) => {
            let wanted = [
                Wanted::new("Ready", false, "InvalidSpec", msg.clone()),
                Wanted::new("Progressing", false, "InvalidSpec", msg.clone()),
                Wanted::new("Degraded", true, "InvalidSpec", msg.clone()),
            ];
            write_status(bc, ctx, &wanted, None, None).await?;
            // Nothing will change until the spec does.
            Ok(Action::await_change())
        }
        Err(e) => {
            let msg = e.to_string();
            let wanted = [
                Wanted::new("Ready", false, e.reason(), msg.clone()),
                Wanted::new("Degraded", true, e.reason(), msg),
            ];
            if let Err(status_err) = write_status(bc, ctx, &wanted, None, None).await {
                tracing::warn!(error = %status_err, "could not record failure in status");
            }
            Err(e)
        }
    }
}

async fn apply_children(bc: &BinaryCache, ctx: &Context) -> Result<Action> {
    build::validate(bc)?;
    let ns = bc.namespace().unwrap_or_default();
    let name = bc.name_any();
    let names = Names(&name);
    let secrets: Api<Secret> = ctx.api(&ns);

    ensure_token_key(bc, ctx, &secrets, &names.token_key()).await?;
    let cache_keys = ensure_cache_keys(bc, &secrets, &names.cache_keys()).await?;

    apply(&ctx.api::<ConfigMap>(&ns), &build::config::config_map(bc)?).await?;
    if let Some(pvc) = build::workload::data_pvc(bc)? {
        let pvcs: Api<PersistentVolumeClaim> = ctx.api(&ns);
        // Created once: most of a claim's spec is immutable, and the size can only be
        // changed deliberately.
        if get_opt(&pvcs, &names.data()).await?.is_none() {
            create_if_absent(&pvcs, &pvc).await?;
        }
    }
    let deployment = apply(
        &ctx.api::<Deployment>(&ns),
        &build::workload::deployment(bc)?,
    )
    .await?;
    apply(&ctx.api::<Service>(&ns), &build::workload::service(bc)?).await?;
    let ingresses: Api<Ingress> = ctx.api(&ns);
    match build::ingress::ingress(bc)? {
        Some(ing) => {
            apply(&ingresses, &ing).await?;
        }
        None => {
            if let Some(existing) = get_opt(&ingresses, &names.workload()).await? {
                if existing
                    .owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == bc.uid().as_ref())
                {
                    delete_if_present(&ingresses, &names.workload()).await?;
                }
            }
        }
    }

    let public_keys = cache_keys
        .as_ref()
        .map(|s| build::secrets::public_keys(bc, s))
        .unwrap_or_default();
    let wanted = readiness(bc, &deployment);
    let was_ready = bc
        .status
        .as_ref()
        .and_then(|s| condition::is_true(&s.conditions, "Ready"));
    let ready = wanted[0].status;
    write_status(
        bc,
        ctx,
        &wanted,
        Some(build::config::endpoint(bc)),
        Some(public_keys),
    )
    .await?;
    if was_ready != Some(ready) {
        let (type_, reason) = if ready {
            (EventType::Normal, "Ready")
        } else {
            (EventType::Normal, "Progressing")
        };
        ctx.event(
            bc,
            Event {
                type_,
                reason: reason.into(),
                note: Some(wanted[0].message.clone()),
                action: "Reconcile".into(),
                secondary: None,
            },
        )
        .await;
    }
    Ok(Action::requeue(ctx.settings.resync))
}

/// Ready / Progressing / Degraded from what the Deployment reports. Only the Deployment
/// controller's own accounting counts: no pod has passed `/readyz`, no readiness.
pub fn readiness(bc: &BinaryCache, d: &Deployment) -> [Wanted; 3] {
    let want = bc.spec.replicas;
    let status = d.status.clone().unwrap_or_default();
    let observed =
        status.observed_generation == d.metadata.generation && d.metadata.generation.is_some();
    let available = status.available_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = observed && available >= want && updated >= want;
    let msg = format!("{available}/{want} replicas available");
    if ready {
        [
            Wanted::new("Ready", true, "Available", msg.clone()),
            Wanted::new("Progressing", false, "Complete", msg.clone()),
            Wanted::new("Degraded", false, "Available", msg),
        ]
    } else {
        [
            Wanted::new("Ready", false, "WaitingForReplicas", msg.clone()),
            Wanted::new("Progressing", true, "Rollout", msg.clone()),
            Wanted::new("Degraded", false, "Progressing", msg),
        ]
    }
}

async fn write_status(
    bc: &BinaryCache,
    ctx: &Context,
    wanted: &[Wanted],
    endpoint: Option<String>,
    caches: Option<Vec<CacheStatus>>,
) -> Result<()> {
    let ns = bc.namespace().unwrap_or_default();
    let current = bc.status.clone().unwrap_or_default();
    let status = BinaryCacheStatus {
        observed_generation: bc.metadata.generation,
        conditions: condition::merge(&current.conditions, wanted, bc.metadata.generation, &now()),
        endpoint: endpoint.or(current.endpoint),
        caches: caches.unwrap_or(current.caches),
    };
    let api: Api<BinaryCache> = ctx.api(&ns);
    api.patch_status(
        &bc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|e| Error::kube("writing BinaryCache status", e))?;
    Ok(())
}

async fn create_if_absent<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(format!("creating {}", obj.name_any()), e)),
    }
}

/// The RS256 token key: generated once, created, never updated.
async fn ensure_token_key(
    bc: &BinaryCache,
    ctx: &Context,
    secrets: &Api<Secret>,
    name: &str,
) -> Result<()> {
    if get_opt(secrets, name).await?.is_some() {
        return Ok(());
    }
    let bits = ctx.settings.rsa_bits;
    // RSA generation takes seconds: keep it off the async workers.
    let (_, value) = tokio::task::spawn_blocking(move || garret_core::token::generate_rs256(bits))
        .await
        .map_err(|e| Error::Dependency(format!("key generation task: {e}")))?
        .map_err(|source| Error::Token {
            context: "generating the token-signing key".into(),
            source,
        })?;
    create_if_absent(secrets, &build::secrets::token_key_secret(bc, value)?).await?;
    ctx.event(
        bc,
        Event {
            type_: EventType::Normal,
            reason: "KeyGenerated".into(),
            note: Some(format!("token-signing key stored in Secret {name}")),
            action: "GenerateKey".into(),
            secondary: None,
        },
    )
    .await;
    Ok(())
}

/// Cache keypairs: one per declared cache, generated when missing, existing ones kept.
async fn ensure_cache_keys(
    bc: &BinaryCache,
    secrets: &Api<Secret>,
    name: &str,
) -> Result<Option<Secret>> {
    let existing = get_opt(secrets, name).await?;
    let missing = build::secrets::caches_missing_keys(bc, existing.as_ref());
    if missing.is_empty() {
        return Ok(existing);
    }
    let mut generated = BTreeMap::new();
    for cache in missing {
        let kp = garret_core::nix::signing::Keypair::generate(&cache)
            .map_err(|e| Error::InvalidSpec(format!("cache {cache}: {e}")))?;
        generated.insert(cache, kp.to_canonical_string());
    }
    let desired = build::secrets::cache_keys_secret(bc, existing.as_ref(), generated)?;
    let applied = match existing {
        // Replace (not apply) with the read resourceVersion: a concurrent writer makes this
        // fail and retry instead of losing a key.
        Some(current) => {
            let mut next = desired;
            next.metadata.resource_version = current.metadata.resource_version.clone();
            secrets
                .replace(name, &PostParams::default(), &next)
                .await
                .map_err(|e| Error::kube(format!("updating {name}"), e))?
        }
        None => secrets
            .create(&PostParams::default(), &desired)
            .await
            .map_err(|e| Error::kube(format!("creating {name}"), e))?,
    };
    Ok(Some(applied))
}

/// Deletion: apply `reclaimPolicy` to what is not garbage-collected through owner references.
async fn cleanup(bc: &BinaryCache, ctx: &Context) -> Result<Action> {
    let ns = bc.namespace().unwrap_or_default();
    let name = bc.name_any();
    let names = Names(&name);
    let note = match bc.spec.reclaim_policy {
        ReclaimPolicy::Delete => {
            let secrets: Api<Secret> = ctx.api(&ns);
            delete_if_present(&secrets, &names.token_key()).await?;
            delete_if_present(&secrets, &names.cache_keys()).await?;
            delete_if_present(&ctx.api::<PersistentVolumeClaim>(&ns), &names.data()).await?;
            "reclaimPolicy Delete: data volume and keys deleted".to_string()
        }
        ReclaimPolicy::Retain => format!(
            "reclaimPolicy Retain: kept PVC {} and Secrets {}, {}",
            names.data(),
            names.token_key(),
            names.cache_keys()
        ),
    };
    ctx.event(
        bc,
        Event {
            type_: EventType::Normal,
            reason: "Deleted".into(),
            note: Some(note),
            action: "Cleanup".into(),
            secondary: None,
        },
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::*;

    fn deployment(generation: i64, observed: i64, available: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "main", "generation": generation},
            "status": {"observedGeneration": observed, "availableReplicas": available, "updatedReplicas": available}
        }))
        .expect("deployment")
    }

    #[test]
    fn ready_only_when_the_deployment_says_so() {
        let bc = binary_cache(MINIMAL);
        let fresh = readiness(&bc, &deployment(1, 0, 0));
        assert!(!fresh[0].status && fresh[1].status && !fresh[2].status);
        let stale = readiness(&bc, &deployment(2, 1, 1));
        assert!(
            !stale[0].status,
            "status of an older generation does not count"
        );
        let done = readiness(&bc, &deployment(2, 2, 1));
        assert!(done[0].status && !done[1].status);
        assert_eq!(done[0].message, "1/1 replicas available");
    }
}
