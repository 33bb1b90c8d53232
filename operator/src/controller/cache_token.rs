//! The CacheToken edge: read the BinaryCache, its signing key and the token Secret, take the
//! clock and a random `jti`, run the pure pipeline in `token`, write revocations, apply the
//! Secret, write status and requeue for the renewal time (or the end of a grace period).
//! Deletion runs the `garret.dev/revoke` finalizer: the current token and those in their
//! grace period go on the BinaryCache's revocation list before the object goes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use garret_core::token::{TokenKeys, Verifier};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{Action, Config};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::queue::{controller_of, store_has, woken};
use super::revocation_push;
use super::{
    apply, children_only, create_if_absent, drain, error_policy, get_opt, now, patch_status,
    scoped_api, Context, Settings,
};
use crate::condition::Wanted;
use crate::desired::meta::{key_of, owned_by};
use crate::desired::{config::endpoint, secrets::signing_key, Names, REVOCATION_FILE};
use crate::token::revocation::{self, Target};
use crate::token::wake::{self, Seen};
use crate::token::{self, renewal, Issued, Observed, Outcome};
use crate::types::{BinaryCache, CacheStatus, CacheToken};
use crate::{Error, Result};

/// Finalizer that revokes a deleted CacheToken's tokens.
pub const FINALIZER: &str = "garret.dev/revoke";

/// Attempts at a revocation list write that lost a race with another token's write.
const LIST_WRITE_ATTEMPTS: usize = 8;

/// The metrics label of this controller.
const KIND: &str = "CacheToken";

/// How many CacheTokens reconcile at once. Unbounded, a thousand tokens applied together
/// open as many API connections and sign as many tokens at once, and a BinaryCache applied
/// meanwhile waits behind all of them; a few keep both cores busy (most of a reconcile is
/// waiting for the API server). On the 2-core bench machine 16 made 1,000 tokens Ready in
/// 26 s against 31 s with 8, at the same peak RSS (docs/benchmarks.md).
pub const CONCURRENCY: u16 = 16;

/// The CacheToken controller. Its trigger streams are built here rather than by `Controller`
/// so that they wake a token only for what its reconcile acts on (see `token::wake`) and so
/// that each wake-up is counted in `garret_operator_queue_depth`.
pub async fn controller(client: Client, settings: Settings) {
    let ns = &settings.namespace;
    let tokens = scoped_api::<CacheToken>(&client, ns);
    let secrets = scoped_api::<PartialObjectMeta<Secret>>(&client, ns);
    let caches = scoped_api::<BinaryCache>(&client, ns);
    let ctx = Arc::new(Context::new(client, settings));
    let (store, writer) = reflector::store::<CacheToken>();
    let metrics = crate::metrics::global();
    let known = store.clone();
    metrics.queue_exists(KIND, Box::new(move |key: &str| store_has(&known, key)));

    // The token itself: spec, finalizers and deletion, not the status this controller writes.
    let own = watcher(tokens, watcher::Config::default())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            |ct: &CacheToken| Some(wake::token_view(ct)),
            Default::default(),
        )
        .inspect(|event| {
            if let Ok(ct) = event {
                crate::metrics::global().woken(KIND, &key_of(ct));
            }
        });
    // Its Secret (metadata only: the operator reads the Secret fresh when it reconciles).
    let owned = watcher(secrets, children_only()).touched_objects();
    let owners = store.clone();
    // A BinaryCache's endpoint, keys or existence.
    let related = watcher(caches, watcher::Config::default()).touched_objects();
    let seen = Mutex::new(Seen::default());
    let referencing = store.clone();
    let stream = Controller::for_stream(own, store)
        .with_config(Config::default().concurrency(CONCURRENCY))
        .watches_stream(owned, move |secret| {
            let owner =
                controller_of::<CacheToken>(&secret.metadata).filter(|r| owners.get(r).is_some());
            if let Some(r) = &owner {
                woken(KIND, r);
            }
            owner
        })
        .watches_stream(related, move |bc: BinaryCache| {
            let changed = seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .changed(&key_of(&bc), wake::binary_cache_view(&bc));
            let refs = if changed {
                tokens_referencing(&referencing.state(), &bc)
            } else {
                vec![]
            };
            refs.iter().for_each(|r| woken(KIND, r));
            refs
        })
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

/// The CacheTokens among `tokens` that name `bc` as their BinaryCache.
pub fn tokens_referencing(
    tokens: &[Arc<CacheToken>],
    bc: &BinaryCache,
) -> Vec<ObjectRef<CacheToken>> {
    tokens
        .iter()
        .filter(|t| {
            t.namespace() == bc.namespace() && t.spec.binary_cache_ref.name == bc.name_any()
        })
        .map(|t| ObjectRef::from(t.as_ref()))
        .collect()
}

/// One reconcile, wrapped in the finalizer so deletion revokes ([`revoke_on_delete`]).
pub async fn reconcile(ct: Arc<CacheToken>, ctx: Arc<Context>) -> Result<Action> {
    let ns = ct
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("CacheToken must be namespaced".into()))?;
    let api: Api<CacheToken> = ctx.api(&ns);
    let key = key_of(ct.as_ref());
    let action = finalizer(&api, FINALIZER, ct, |event| async {
        match event {
            Finalizer::Apply(ct) => issue(&ct, &ctx).await,
            Finalizer::Cleanup(ct) => {
                crate::metrics::global().token_gone(&ns, &ct.name_any());
                crate::metrics::global().forget(KIND, &key_of(ct.as_ref()));
                revoke_on_delete(&ct, &ctx).await
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.note_success(&key);
    Ok(action)
}

/// The pipeline; a failure is recorded in status before back-off (or, for a spec error,
/// instead of it: only a spec change helps, and the watch brings it).
async fn issue(ct: &CacheToken, ctx: &Context) -> Result<Action> {
    match pipeline(ct, ctx).await {
        Ok(action) => Ok(action),
        Err(e) => {
            let wanted = token::failure_conditions(&e);
            if let Err(status_err) = write_status(ct, ctx, &wanted, None).await {
                tracing::warn!(error = %status_err, "could not record failure in status");
            }
            match e {
                Error::InvalidSpec(_) => Ok(Action::await_change()),
                e => Err(e),
            }
        }
    }
}

/// Deletion: put the current token and those in their grace period on the revocation list.
/// The token Secret (owned, so garbage-collected after this) is still there to read.
async fn revoke_on_delete(ct: &CacheToken, ctx: &Context) -> Result<Action> {
    let ns = ct.namespace().unwrap_or_default();
    let secrets: Api<Secret> = ctx.api(&ns);
    let current = get_opt(&secrets, &ct.spec.secret_name)
        .await?
        .filter(|s| owned_by(s, ct.uid().as_deref()));
    let now = garret_core::clock::unix_now();
    let targets = revocation::on_delete(ct, current.as_ref(), now);
    let written = write_revocations(ctx, &ns, &key_of(ct), &targets, now).await?;
    if let Some(note) = token::revoked_event(&written) {
        tracing::info!(object = %key_of(ct), note = %note.note, "revoked on deletion");
        ctx.event(ct, &note).await;
    }
    Ok(Action::await_change())
}

/// Add `targets` to their BinaryCaches' revocation lists (pruning expired entries on the
/// way). Returns the targets written: those of a BinaryCache that no longer exists are
/// dropped, as nothing serves its tokens. A list missing while its BinaryCache exists is
/// created, so a revocation is never lost to ordering.
async fn write_revocations(
    ctx: &Context,
    ns: &str,
    who: &str,
    targets: &[Target],
    now: i64,
) -> Result<Vec<Target>> {
    let mut by_cache: BTreeMap<&str, Vec<Target>> = BTreeMap::new();
    for t in targets {
        by_cache.entry(&t.binary_cache).or_default().push(t.clone());
    }
    let config_maps: Api<ConfigMap> = ctx.api(ns);
    let caches: Api<BinaryCache> = ctx.api(ns);
    let mut written = vec![];
    for (bc_name, adds) in by_cache {
        let name = Names(bc_name).revocations();
        let mut done = false;
        let mut pushed: Option<String> = None;
        for _ in 0..LIST_WRITE_ATTEMPTS {
            let cm = match get_opt(&config_maps, &name).await? {
                Some(cm) => cm,
                None => match get_opt(&caches, bc_name).await? {
                    None => {
                        tracing::info!(
                            binary_cache = bc_name,
                            "BinaryCache gone: nothing to revoke"
                        );
                        done = true;
                        break;
                    }
                    Some(bc) => {
                        create_if_absent(&config_maps, &revocation::list_config_map(&bc)?).await?;
                        continue;
                    }
                },
            };
            let text = cm
                .data
                .as_ref()
                .and_then(|d| d.get(REVOCATION_FILE))
                .map(String::as_str)
                .unwrap_or_default();
            let edited = revocation::edit_list(text, bc_name, &adds, who, now);
            if edited == text {
                written.extend(adds.iter().cloned());
                pushed = Some(edited);
                break;
            }
            // Merge patch with the read resourceVersion: a concurrent edit fails with 409.
            let patch = json!({
                "metadata": {"resourceVersion": cm.metadata.resource_version},
                "data": {REVOCATION_FILE: edited},
            });
            match config_maps
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    written.extend(adds.iter().cloned());
                    pushed = Some(edited);
                    break;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(Error::kube(format!("writing revocation list {name}"), e)),
            }
        }
        if let Some(list) = pushed {
            // The list is written; now make it apply at once (see `revocation_push`).
            let secrets: Api<Secret> = ctx.api(ns);
            match signing_keys(ctx, &secrets, ns, bc_name).await {
                Ok(keys) => revocation_push::push(ctx, &keys, ns, bc_name, &list).await,
                Err(e) => tracing::warn!(binary_cache = bc_name, error = %e,
                    "cannot sign a revocation push; the mounted list will carry it"),
            }
            continue;
        }
        if !done {
            return Err(Error::Dependency(format!(
                "revocation list {name} kept changing; will retry"
            )));
        }
    }
    Ok(written)
}

/// The signing keys of BinaryCache `bc_name`, from its token-key Secret: parsed (and
/// self-tested, two RSA private-key operations) once per version of that Secret.
async fn signing_keys(
    ctx: &Context,
    secrets: &Api<Secret>,
    ns: &str,
    bc_name: &str,
) -> Result<TokenKeys> {
    let key_name = Names(bc_name).token_key();
    let key_secret = get_opt(secrets, &key_name).await?.ok_or_else(|| {
        Error::Dependency(format!(
            "token-signing Secret {key_name} does not exist yet"
        ))
    })?;
    let cache = format!("{ns}/{bc_name}");
    let version = wake::secret_version(&key_secret);
    if let Some(keys) = version
        .as_deref()
        .and_then(|v| ctx.signing_keys().get(&cache, v))
    {
        return Ok(keys);
    }
    let keys = TokenKeys::new(&signing_key(&key_secret)?).map_err(|source| Error::Token {
        context: format!("preparing the key in {key_name}"),
        source,
    })?;
    if let Some(v) = version {
        ctx.signing_keys().put(&cache, &v, keys.clone());
    }
    Ok(keys)
}

/// validate → observe → decide → mint → revoke → desired → apply → status → requeue.
async fn pipeline(ct: &CacheToken, ctx: &Context) -> Result<Action> {
    let v = token::validate(ct)?;
    let caches: Api<BinaryCache> = ctx.api(&v.namespace);
    let bc = get_opt(&caches, &v.binary_cache)
        .await?
        .ok_or_else(|| Error::Dependency(format!("BinaryCache {} not found", v.binary_cache)))?;
    let secrets: Api<Secret> = ctx.api(&v.namespace);
    let keys = signing_keys(ctx, &secrets, &v.namespace, &v.binary_cache).await?;
    let verifier = Verifier::from_keys(keys.clone(), None, None);
    let current = get_opt(&secrets, &v.secret_name).await?;
    token::check_owner(ct, current.as_ref())?;

    let observed = Observed {
        endpoint: endpoint(&bc),
        caches: bc
            .status
            .iter()
            .flat_map(|s| &s.caches)
            .map(|c| CacheStatus {
                name: c.name.clone(),
                public_key: c.public_key.clone(),
            })
            .collect(),
        current,
        status_revision: ct.status.as_ref().and_then(|s| s.revision).unwrap_or(0),
        now: garret_core::clock::unix_now(),
    };
    let decision = renewal::decide(&v, observed.current.as_ref(), &verifier, observed.now);
    let jti = garret_core::token::new_jti();
    let outcome = token::mint(&v, decision, &keys, jti, observed.now)?;

    // What becomes of the token being replaced, and which earlier ones are due: on the
    // revocation list before the new token is written, so a failure here retries it all.
    let fate = match &outcome {
        Outcome::Minted { reason, .. } => revocation::replaced(
            &v,
            reason,
            observed.current.as_ref(),
            &verifier,
            observed.now,
        ),
        Outcome::Keep { .. } => None,
    };
    let plan = revocation::plan(
        revocation::stored_pending(observed.current.as_ref()),
        fate,
        observed.now,
    );
    let mut plan = plan;
    plan.revoke =
        write_revocations(ctx, &v.namespace, &key_of(ct), &plan.revoke, observed.now).await?;
    let revoked = token::revoked_event(&plan.revoke);
    let children = token::desired(&v, &observed, outcome, plan);

    if let Some(secret) = &children.secret {
        apply(&secrets, secret).await?;
    }
    if let Some(event) = &children.event {
        ctx.event(ct, event).await;
    }
    if let Some(event) = &revoked {
        ctx.event(ct, event).await;
    }
    let wanted = token::ready_conditions(&v, &children.issued);
    write_status(ct, ctx, &wanted, Some(&children.issued)).await?;
    crate::metrics::global().token_expires(
        &ct.namespace().unwrap_or_default(),
        &ct.name_any(),
        u64::try_from(children.issued.exp).unwrap_or(0),
    );
    let wait = token::requeue_after(
        children.issued.next_at(),
        garret_core::clock::unix_now(),
        ctx.settings.resync,
    );
    crate::metrics::global().requeued(KIND, &key_of(ct), wait);
    Ok(Action::requeue(wait))
}

/// Write status unless it already reads so: a no-op write still costs a request.
async fn write_status(
    ct: &CacheToken,
    ctx: &Context,
    wanted: &[Wanted],
    issued: Option<&Issued>,
) -> Result<()> {
    let status = token::status(ct, wanted, issued, &now());
    if !token::status_changed(ct.status.as_ref(), &status) {
        return Ok(());
    }
    let api: Api<CacheToken> = ctx.api(&ct.namespace().unwrap_or_default());
    patch_status(&api, ct, &status).await
}
