//! The BinaryCache edge: read the key Secrets and generate what is missing, run the pure
//! pipeline (`desired::validate` → `desired::desired`), apply the children in order, write
//! status. Deletion runs the `reclaimPolicy` finalizer.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PartialObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Client, ResourceExt};

use super::queue::{self, OwnsCounted};
use super::{
    apply, children_only, create_if_absent, delete_if_owned, delete_if_present, drain,
    error_policy, get_opt, now, patch_status, probe, scoped_api, Context, Settings,
};
use crate::condition::Wanted;
use crate::desired::gateway::{HTTPRoute, GATEWAY_GROUP};
use crate::desired::meta::{key_of, normal_event};
use crate::desired::{self, secrets, status, Children, Names, Observed, Validated};
use crate::types::{BinaryCache, ReclaimPolicy};
use crate::{Error, Result};

/// Finalizer that applies `reclaimPolicy` to the volume and key Secrets on deletion.
pub const FINALIZER: &str = "garret.dev/reclaim";

/// The metrics label of this controller.
const KIND: &str = "BinaryCache";

/// The BinaryCache controller, watching its owned children. The Deployment is among them, so
/// a pod becoming ready (or not) changes the Deployment's status and wakes the BinaryCache,
/// whose status then follows.
pub async fn controller(client: Client, settings: Settings) {
    let ns = &settings.namespace;
    let caches = scoped_api::<BinaryCache>(&client, ns);
    let deployments = scoped_api::<PartialObjectMeta<Deployment>>(&client, ns);
    let config_maps = scoped_api::<PartialObjectMeta<ConfigMap>>(&client, ns);
    let services = scoped_api::<PartialObjectMeta<Service>>(&client, ns);
    let ctx = Arc::new(Context::new(client, settings));
    // `Controller::new` and `owns`, with each wake-up counted in the queue depth.
    let stream = queue::counted(caches, KIND)
        .owns_counted(deployments, children_only(), KIND)
        .owns_counted(config_maps, children_only(), KIND)
        .owns_counted(services, children_only(), KIND)
        .run(
            |obj, ctx| {
                let key = key_of(obj.as_ref());
                async move { crate::metrics::timed_queued(KIND, &key, reconcile(obj, ctx)).await }
            },
            error_policy,
            ctx,
        );
    drain(stream).await;
}

/// One reconcile, wrapped in the finalizer so deletion runs [`cleanup`].
pub async fn reconcile(bc: Arc<BinaryCache>, ctx: Arc<Context>) -> Result<Action> {
    let ns = bc
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("BinaryCache must be namespaced".into()))?;
    let api: Api<BinaryCache> = ctx.api(&ns);
    let key = key_of(bc.as_ref());
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

/// Run the pipeline; an invalid spec or a failure is recorded in status.
async fn apply_all(bc: &BinaryCache, ctx: &Context) -> Result<Action> {
    match pipeline(bc, ctx).await {
        Ok(action) => Ok(action),
        Err(Error::InvalidSpec(msg)) => {
            write_status(bc, ctx, &status::invalid(&msg), None).await?;
            // Nothing will change until the spec does.
            Ok(Action::await_change())
        }
        Err(e) => {
            if let Err(status_err) = write_status(bc, ctx, &status::failed(&e), None).await {
                tracing::warn!(error = %status_err, "could not record failure in status");
            }
            Err(e)
        }
    }
}

/// validate → observe (and generate keys) → desired → apply → status.
async fn pipeline(bc: &BinaryCache, ctx: &Context) -> Result<Action> {
    let v = desired::validate(bc)?;
    let observed = observe(&v, ctx).await?;
    let mut children = desired::desired(&v, &observed);
    if !v.spec.service_account_access.is_empty() {
        let issuer = cluster_issuer(&ctx.client).await?;
        desired::oidc::add_cluster_issuer(&mut children.config_map, &v, &issuer);
    }
    let deployment = apply_children(bc, ctx, &v, &children).await?;
    let answers = ask_garretd(ctx, &v, &children.caches, &deployment).await?;
    let (served, waiting) = status::tally(&children.caches, &answers);
    let wanted = status::serving(status::readiness(v.spec.replicas, &deployment), &waiting);
    let applied = status::Applied {
        endpoint: &children.endpoint,
        caches: &children.caches,
        served: &served,
        replicas: status::Replicas::of(&deployment),
    };
    write_status(bc, ctx, &wanted, Some(applied)).await?;
    if let Some(ev) = status::readiness_event(bc, &wanted) {
        ctx.event(bc, &ev).await;
    }
    // garretd applies declared state on its own schedule and nothing in the cluster changes
    // when it has: look again soon. Without an available pod the Deployment's watch wakes us.
    let asked = answers.iter().any(|a| *a != status::Answer::NotAsked);
    if asked && !waiting.is_empty() {
        tracing::info!(object = %key_of(bc), waiting = ?waiting, "declared caches not served yet");
        crate::metrics::global().requeued(KIND, &key_of(bc), SERVED_RETRY);
        return Ok(Action::requeue(SERVED_RETRY));
    }
    crate::metrics::global().requeued(KIND, &key_of(bc), ctx.settings.resync);
    Ok(Action::requeue(ctx.settings.resync))
}

/// The cluster's ServiceAccount issuer and keys, read from the apiserver (RBAC: `get` on
/// the nonResourceURLs `/.well-known/openid-configuration` and `/openid/v1/jwks`). Read on
/// every reconcile, so a key rotation reaches garretd by the next resync.
async fn cluster_issuer(client: &Client) -> Result<desired::oidc::ClusterIssuer> {
    async fn get(client: &Client, path: &str) -> Result<String> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Dependency(format!("GET {path}: {e}")))?;
        client.request_text(request).await.map_err(|e| {
            Error::Dependency(format!(
                "reading the cluster's ServiceAccount issuer ({path}): {e}"
            ))
        })
    }
    let discovery = get(client, "/.well-known/openid-configuration").await?;
    let jwks = get(client, "/openid/v1/jwks").await?;
    desired::oidc::ClusterIssuer::from_documents(&discovery, &jwks)
}

/// How soon to ask garretd again while a declared cache is not served.
const SERVED_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// garretd's answer for each declared cache (see `probe`), or [`status::Answer::NotAsked`]
/// for all when no replica is available to answer.
async fn ask_garretd(
    ctx: &Context,
    v: &Validated,
    caches: &[crate::types::CacheStatus],
    deployment: &Deployment,
) -> Result<Vec<status::Answer>> {
    let available = deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    if caches.is_empty() || available < 1 {
        return Ok(vec![status::Answer::NotAsked; caches.len()]);
    }
    let names = v.names();
    let secrets: Api<Secret> = ctx.api(&v.namespace);
    let key_secret = get_opt(&secrets, &names.token_key())
        .await?
        .ok_or_else(|| Error::Dependency(format!("Secret {} not found", names.token_key())))?;
    let key = secrets::signing_key(&key_secret)?;
    let cache_names: Vec<String> = caches.iter().map(|c| c.name.clone()).collect();
    let token = probe::token(&key, &cache_names, garret_core::clock::unix_now())?;
    let template = ctx.settings.garretd_url.as_deref();
    let cluster_ip = match template {
        Some(_) => None,
        None => get_opt(&ctx.api::<Service>(&v.namespace), &names.workload())
            .await?
            .and_then(|s| s.spec?.cluster_ip),
    };
    let base = probe::base_url(
        template,
        &names.workload(),
        &v.namespace,
        cluster_ip.as_deref(),
    );
    Ok(probe::probe(&base, &token, &cache_names).await)
}

/// Read the key Secrets and generate the keys that are missing (see `desired`'s module
/// docs for why generation happens here).
async fn observe(v: &Validated, ctx: &Context) -> Result<Observed> {
    let secrets: Api<Secret> = ctx.api(&v.namespace);
    let names = v.names();
    let new_token_key = match get_opt(&secrets, &names.token_key()).await? {
        Some(_) => None,
        None => Some(generate_token_key(ctx.settings.rsa_bits).await?),
    };
    let cache_keys = get_opt(&secrets, &names.cache_keys()).await?;
    let mut new_cache_keys = BTreeMap::new();
    for cache in secrets::caches_missing_keys(v, cache_keys.as_ref()) {
        let kp = garret_core::nix::signing::Keypair::generate(&cache)
            .map_err(|e| Error::InvalidSpec(format!("cache {cache}: {e}")))?;
        new_cache_keys.insert(cache, kp.to_canonical_string());
    }
    Ok(Observed {
        cache_keys,
        new_token_key,
        new_cache_keys,
    })
}

/// A new RS256 token key, as the Secret's value. RSA generation takes seconds: it runs off
/// the async workers.
async fn generate_token_key(bits: usize) -> Result<String> {
    let (_, value) = tokio::task::spawn_blocking(move || garret_core::token::generate_rs256(bits))
        .await
        .map_err(|e| Error::Dependency(format!("key generation task: {e}")))?
        .map_err(|source| Error::Token {
            context: "generating the token-signing key".into(),
            source,
        })?;
    Ok(value)
}

/// Write the children in order; returns the Deployment as applied, for readiness.
async fn apply_children(
    bc: &BinaryCache,
    ctx: &Context,
    v: &Validated,
    c: &Children,
) -> Result<Deployment> {
    let ns = &v.namespace;
    let secrets: Api<Secret> = ctx.api(ns);
    if let Some((secret, event)) = &c.token_key {
        create_if_absent(&secrets, secret).await?;
        ctx.event(bc, event).await;
    }
    if let Some(keys) = &c.cache_keys {
        write_cache_keys(&secrets, keys).await?;
    }
    apply(&ctx.api::<ConfigMap>(ns), &c.config_map).await?;
    // Created once: CacheTokens edit its entries (revocation list).
    create_if_absent(&ctx.api::<ConfigMap>(ns), &c.revocations).await?;
    if let Some(pvc) = &c.data_pvc {
        create_if_absent(&ctx.api::<PersistentVolumeClaim>(ns), pvc).await?;
    }
    let deployment = apply(&ctx.api::<Deployment>(ns), &c.deployment).await?;
    apply(&ctx.api::<Service>(ns), &c.service).await?;
    let ingresses: Api<Ingress> = ctx.api(ns);
    match &c.ingress {
        Some(ing) => drop(apply(&ingresses, ing).await?),
        None => delete_if_owned(&ingresses, &v.names().workload(), bc.uid().as_deref()).await?,
    }
    let budgets: Api<PodDisruptionBudget> = ctx.api(ns);
    match &c.disruption_budget {
        Some(pdb) => drop(apply(&budgets, pdb).await?),
        None => delete_if_owned(&budgets, &v.names().workload(), bc.uid().as_deref()).await?,
    }
    apply_http_route(bc, ctx, v, c.http_route.as_ref()).await?;
    Ok(deployment)
}

/// The HTTPRoute when `spec.gateway` asks for one, else an owned one is deleted. Applied
/// last, so a cluster without the Gateway API CRDs still gets every other child: the API
/// server then answers a bare 404 for the kind itself (not a `NotFound` Status, so `get_opt`
/// does not read it as absent). With a route wanted that is a wait ([`Error::Dependency`]:
/// in status, retried on its short schedule, picked up once the CRDs are installed), not a
/// failure with back-off; with none wanted there is nothing to delete.
async fn apply_http_route(
    bc: &BinaryCache,
    ctx: &Context,
    v: &Validated,
    route: Option<&HTTPRoute>,
) -> Result<()> {
    let not_found =
        |e: &Error| matches!(e, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404);
    let routes: Api<HTTPRoute> = ctx.api(&v.namespace);
    let Some(route) = route else {
        return match delete_if_owned(&routes, &v.names().workload(), bc.uid().as_deref()).await {
            Err(e) if not_found(&e) => Ok(()),
            other => other,
        };
    };
    match apply(&routes, route).await {
        Err(e) if not_found(&e) => Err(Error::Dependency(format!(
            "spec.gateway needs the Gateway API: the API server serves no HTTPRoute \
             ({GATEWAY_GROUP}/v1); install the Gateway API CRDs (standard channel) \
             or remove spec.gateway"
        ))),
        other => other.map(drop),
    }
}

/// Replace (not apply) with the read resourceVersion: a concurrent writer makes this fail and
/// retry instead of losing a key. Without one, the Secret is new.
async fn write_cache_keys(secrets: &Api<Secret>, keys: &Secret) -> Result<()> {
    let name = keys.name_any();
    let pp = PostParams::default();
    let written = match keys.metadata.resource_version {
        Some(_) => secrets.replace(&name, &pp, keys).await,
        None => secrets.create(&pp, keys).await,
    };
    let verb = if keys.metadata.resource_version.is_some() {
        "updating"
    } else {
        "creating"
    };
    written
        .map(drop)
        .map_err(|e| Error::kube(format!("{verb} {name}"), e))
}

async fn write_status(
    bc: &BinaryCache,
    ctx: &Context,
    wanted: &[Wanted],
    applied: Option<status::Applied<'_>>,
) -> Result<()> {
    let status = status::status(bc, wanted, applied, &now());
    let api: Api<BinaryCache> = ctx.api(&bc.namespace().unwrap_or_default());
    patch_status(&api, bc, &status).await
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
    ctx.event(bc, &normal_event("Deleted", "Cleanup", note))
        .await;
    Ok(Action::await_change())
}
