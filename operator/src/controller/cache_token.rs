//! The CacheToken edge: read the BinaryCache, its signing key and the token Secret, take the
//! clock and a random `jti`, run the pure pipeline in `token`, apply the Secret, write status
//! and requeue for the renewal time.

use std::sync::Arc;

use garret_core::token::{TokenKeys, Verifier};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Client, ResourceExt};

use super::{
    apply, children_only, drain, error_policy, get_opt, now, patch_status, scoped_api, Context,
    Settings,
};
use crate::condition::Wanted;
use crate::desired::meta::key_of;
use crate::desired::{config::endpoint, secrets::signing_key, Names};
use crate::token::{self, renewal, Issued, Observed};
use crate::types::{BinaryCache, CacheToken};
use crate::{Error, Result};

/// The CacheToken controller, watching the Secrets it writes.
pub async fn controller(client: Client, settings: Settings) {
    let ns = &settings.namespace;
    let tokens = scoped_api::<CacheToken>(&client, ns);
    let secrets = scoped_api::<Secret>(&client, ns);
    let caches = scoped_api::<BinaryCache>(&client, ns);
    let ctx = Arc::new(Context::new(client, settings));
    let controller = Controller::new(tokens, watcher::Config::default());
    let store = controller.store();
    // A BinaryCache's status changes once its signing key exists (and whenever it is
    // re-keyed): wake the tokens that reference it instead of waiting for back-off.
    let stream = controller
        .owns(secrets, children_only())
        .watches(caches, watcher::Config::default(), move |bc| {
            tokens_referencing(&store.state(), &bc)
        })
        .run(reconcile, error_policy, ctx);
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

/// One reconcile; a failure is recorded in status before back-off (or, for a spec error,
/// instead of it: only a spec change helps, and the watch brings it).
pub async fn reconcile(ct: Arc<CacheToken>, ctx: Arc<Context>) -> Result<Action> {
    match pipeline(&ct, &ctx).await {
        Ok(action) => {
            ctx.note_success(&key_of(ct.as_ref()));
            Ok(action)
        }
        Err(e) => {
            let wanted = token::failure_conditions(&e);
            if let Err(status_err) = write_status(&ct, &ctx, &wanted, None).await {
                tracing::warn!(error = %status_err, "could not record failure in status");
            }
            match e {
                Error::InvalidSpec(_) => Ok(Action::await_change()),
                e => Err(e),
            }
        }
    }
}

/// The signing keys of BinaryCache `name`, from its token-key Secret.
async fn signing_keys(secrets: &Api<Secret>, bc_name: &str) -> Result<TokenKeys> {
    let key_name = Names(bc_name).token_key();
    let key_secret = get_opt(secrets, &key_name).await?.ok_or_else(|| {
        Error::Dependency(format!(
            "token-signing Secret {key_name} does not exist yet"
        ))
    })?;
    TokenKeys::new(&signing_key(&key_secret)?).map_err(|source| Error::Token {
        context: format!("preparing the key in {key_name}"),
        source,
    })
}

/// validate → observe → decide → mint → desired → apply → status → requeue.
async fn pipeline(ct: &CacheToken, ctx: &Context) -> Result<Action> {
    let v = token::validate(ct)?;
    let caches: Api<BinaryCache> = ctx.api(&v.namespace);
    let bc = get_opt(&caches, &v.binary_cache)
        .await?
        .ok_or_else(|| Error::Dependency(format!("BinaryCache {} not found", v.binary_cache)))?;
    let secrets: Api<Secret> = ctx.api(&v.namespace);
    let keys = signing_keys(&secrets, &v.binary_cache).await?;
    let verifier = Verifier::from_keys(keys.clone(), None, None);
    let current = get_opt(&secrets, &v.secret_name).await?;
    token::check_owner(ct, current.as_ref())?;

    let observed = Observed {
        endpoint: endpoint(&bc),
        current,
        status_revision: ct.status.as_ref().and_then(|s| s.revision).unwrap_or(0),
        now: garret_core::clock::unix_now(),
    };
    let decision = renewal::decide(&v, observed.current.as_ref(), &verifier, observed.now);
    let jti = garret_core::token::new_jti();
    let outcome = token::mint(&v, decision, &keys, jti, observed.now)?;
    let children = token::desired(&v, &observed, outcome);

    if let Some(secret) = &children.secret {
        apply(&secrets, secret).await?;
    }
    if let Some(event) = &children.event {
        ctx.event(ct, event).await;
    }
    let wanted = token::ready_conditions(&v, &children.issued);
    write_status(ct, ctx, &wanted, Some(&children.issued)).await?;
    let wait = token::requeue_after(
        children.issued.renew_at,
        garret_core::clock::unix_now(),
        ctx.settings.resync,
    );
    Ok(Action::requeue(wait))
}

async fn write_status(
    ct: &CacheToken,
    ctx: &Context,
    wanted: &[Wanted],
    issued: Option<&Issued>,
) -> Result<()> {
    let status = token::status(ct, wanted, issued, &now());
    let api: Api<CacheToken> = ctx.api(&ct.namespace().unwrap_or_default());
    patch_status(&api, ct, &status).await
}
