//! CacheToken: mint a JWT with the BinaryCache's key into a Secret, and mint again when the
//! renewal policy (see `renewal`) says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use garret_core::token::{TokenKeys, Verifier};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{
    apply, children_only, drain, error_policy, get_opt, now, Context, Settings, MANAGED_BY,
};
use crate::build::{self, Names};
use crate::condition::{self, Wanted};
use crate::renewal::{self, Decision, SPEC_HASH_ANNOTATION};
use crate::types::{BinaryCache, CacheToken, CacheTokenStatus};
use crate::{Error, Result};

/// Annotation on the token Secret: the `jti` it holds.
pub const TOKEN_ID_ANNOTATION: &str = "garret.dev/token-id";
/// Annotation on the token Secret: the issue revision.
pub const REVISION_ANNOTATION: &str = "garret.dev/revision";

/// The CacheToken controller, watching the Secrets it writes.
pub async fn controller(client: Client, settings: Settings) {
    let (tokens, secrets, caches): (Api<CacheToken>, Api<Secret>, Api<BinaryCache>) =
        match &settings.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
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

/// The token Secret, owned by the CacheToken; its annotations record what was issued.
fn token_secret(
    ct: &CacheToken,
    ns: &str,
    token: &str,
    endpoint: &str,
    jti: &str,
    revision: i64,
) -> Result<Secret> {
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(ct.spec.secret_name.clone()),
            namespace: Some(ns.to_string()),
            owner_references: Some(vec![build::owner_ref(ct)?]),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (
                    SPEC_HASH_ANNOTATION.to_string(),
                    renewal::spec_hash(&ct.spec),
                ),
                (TOKEN_ID_ANNOTATION.to_string(), jti.to_string()),
                (REVISION_ANNOTATION.to_string(), revision.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(renewal::secret_data(token, endpoint)),
        type_: Some("Opaque".into()),
        ..Secret::default()
    })
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

fn time(unix: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .ok()
        .map(Time)
}

/// One reconcile: fetch, decide, maybe mint, record.
pub async fn reconcile(ct: Arc<CacheToken>, ctx: Arc<Context>) -> Result<Action> {
    let key = format!("{}/{}", ct.namespace().unwrap_or_default(), ct.name_any());
    match issue(&ct, &ctx).await {
        Ok(action) => {
            ctx.note_success(&key);
            Ok(action)
        }
        Err(e) => {
            let wanted = failure_conditions(&e);
            if let Err(status_err) = write_status(&ct, &ctx, &wanted, None).await {
                tracing::warn!(error = %status_err, "could not record failure in status");
            }
            match e {
                // Only a spec change helps; the watch brings it.
                Error::InvalidSpec(_) => Ok(Action::await_change()),
                e => Err(e),
            }
        }
    }
}

/// Conditions after a failed reconcile. `Issuing` stays True while the operator keeps trying
/// (a missing BinaryCache or key, an API error); a spec error stops issuing until it changes.
pub fn failure_conditions(e: &Error) -> [Wanted; 2] {
    let retrying = !matches!(e, Error::InvalidSpec(_));
    [
        Wanted::new("Ready", false, e.reason(), e.to_string()),
        Wanted::new("Issuing", retrying, e.reason(), e.to_string()),
    ]
}

/// What the status should say about the current token.
struct Issued {
    nbf: i64,
    exp: i64,
    renew_at: i64,
    revision: i64,
    jti: Option<String>,
}

async fn issue(ct: &CacheToken, ctx: &Context) -> Result<Action> {
    let ns = ct
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("CacheToken must be namespaced".into()))?;
    let spec = &ct.spec;
    let request = renewal::make_token(spec)?;
    let timing = renewal::timing(spec)?;

    let bc_name = &spec.binary_cache_ref.name;
    let caches: Api<BinaryCache> = ctx.api(&ns);
    let bc = get_opt(&caches, bc_name)
        .await?
        .ok_or_else(|| Error::Dependency(format!("BinaryCache {bc_name} not found")))?;
    let endpoint = build::config::endpoint(&bc);
    let secrets: Api<Secret> = ctx.api(&ns);
    let key_name = Names(bc_name).token_key();
    let key_secret = get_opt(&secrets, &key_name).await?.ok_or_else(|| {
        Error::Dependency(format!(
            "token-signing Secret {key_name} does not exist yet"
        ))
    })?;
    let key = build::secrets::signing_key(&key_secret)?;
    let keys = TokenKeys::new(&key).map_err(|source| Error::Token {
        context: format!("preparing the key in {key_name}"),
        source,
    })?;
    let verifier = Verifier::from_keys(keys.clone(), None, None);

    let current = get_opt(&secrets, &spec.secret_name).await?;
    if let Some(s) = &current {
        if !s
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == ct.uid().as_ref())
        {
            return Err(Error::InvalidSpec(format!(
                "Secret {} exists and is not owned by this CacheToken",
                spec.secret_name
            )));
        }
    }

    let unix_now = garret_core::clock::unix_now();
    // The Secret (read fresh from the API) is the record of what was issued; status may come
    // from a reflector cache that has not seen our last write yet.
    let issued_revision = current
        .as_ref()
        .and_then(|s| s.annotations().get(REVISION_ANNOTATION))
        .and_then(|r| r.parse::<i64>().ok());
    let status_revision = ct.status.as_ref().and_then(|s| s.revision).unwrap_or(0);
    let revision = issued_revision.unwrap_or(status_revision);
    let issued = match renewal::decide(spec, current.as_ref(), &verifier, unix_now)? {
        Decision::Keep { claims, renew_at } => {
            // The token stands, but the endpoint (and so netrc) may have moved.
            if let Some(current) = &current {
                let token = current
                    .data
                    .as_ref()
                    .and_then(|d| d.get(renewal::TOKEN_FIELD))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .unwrap_or_default();
                if current.data.as_ref() != Some(&renewal::secret_data(&token, &endpoint)) {
                    let jti = claims.jti.clone().unwrap_or_default();
                    let secret = token_secret(ct, &ns, &token, &endpoint, &jti, revision)?;
                    apply(&secrets, &secret).await?;
                }
            }
            Issued {
                nbf: claims.nbf.unwrap_or(unix_now),
                exp: claims.exp.unwrap_or(unix_now),
                renew_at,
                revision,
                jti: claims.jti.clone(),
            }
        }
        Decision::Issue(reason) => {
            let jti = garret_core::token::new_jti();
            let claims = request
                .claims(unix_now, jti.clone())
                .map_err(|source| Error::Token {
                    context: "building claims".into(),
                    source,
                })?;
            let token = keys.mint(&claims).map_err(|source| Error::Token {
                context: "signing the token".into(),
                source,
            })?;
            let revision = revision.max(status_revision) + 1;
            let secret = token_secret(ct, &ns, &token, &endpoint, &jti, revision)?;
            apply(&secrets, &secret).await?;
            let exp = claims.exp.unwrap_or(unix_now);
            ctx.event(
                ct,
                Event {
                    type_: EventType::Normal,
                    reason: "Issued".into(),
                    note: Some(format!(
                        "revision {revision} ({}), token id {jti}",
                        reason.as_str()
                    )),
                    action: "Issue".into(),
                    secondary: None,
                },
            )
            .await;
            Issued {
                nbf: unix_now,
                exp,
                renew_at: renewal::renewal_time(unix_now, exp, timing.renew_before),
                revision,
                jti: Some(jti),
            }
        }
    };

    let wanted = [
        Wanted::new(
            "Ready",
            true,
            "Issued",
            format!(
                "token revision {} in Secret {}",
                issued.revision, spec.secret_name
            ),
        ),
        Wanted::new(
            "Issuing",
            false,
            "UpToDate",
            "the current token is valid and not due for renewal",
        ),
    ];
    write_status(ct, ctx, &wanted, Some(&issued)).await?;
    let wait = issued
        .renew_at
        .saturating_sub(garret_core::clock::unix_now())
        .max(1);
    let wait = Duration::from_secs(u64::try_from(wait).unwrap_or(1)).min(ctx.settings.resync);
    Ok(Action::requeue(wait))
}

async fn write_status(
    ct: &CacheToken,
    ctx: &Context,
    wanted: &[Wanted],
    issued: Option<&Issued>,
) -> Result<()> {
    let current = ct.status.clone().unwrap_or_default();
    let mut status = CacheTokenStatus {
        observed_generation: ct.metadata.generation,
        conditions: condition::merge(&current.conditions, wanted, ct.metadata.generation, &now()),
        ..current
    };
    if let Some(i) = issued {
        status.not_before = time(i.nbf);
        status.not_after = time(i.exp);
        status.renewal_time = time(i.renew_at);
        status.revision = Some(i.revision);
        status.token_id = i.jti.clone();
    }
    let api: Api<CacheToken> = ctx.api(&ct.namespace().unwrap_or_default());
    api.patch_status(
        &ct.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|e| Error::kube("writing CacheToken status", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(ns: &str, name: &str, cache: &str) -> Arc<CacheToken> {
        let t: CacheToken = serde_json::from_value(json!({
            "apiVersion": "garret.dev/v1alpha1", "kind": "CacheToken",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"binaryCacheRef": {"name": cache}, "subject": "s", "secretName": name}
        }))
        .expect("token");
        Arc::new(t)
    }

    #[test]
    fn issuing_while_retrying_not_on_spec_errors() {
        let waiting = failure_conditions(&Error::Dependency("BinaryCache main not found".into()));
        assert!(!waiting[0].status && waiting[1].status);
        assert_eq!(waiting[1].reason, "DependencyNotReady");
        let invalid = failure_conditions(&Error::InvalidSpec("validity: bad".into()));
        assert!(!invalid[0].status && !invalid[1].status);
    }

    #[test]
    fn binary_cache_changes_wake_only_its_tokens() {
        let bc: BinaryCache = serde_json::from_value(json!({
            "apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache",
            "metadata": {"name": "main", "namespace": "a"}, "spec": {}
        }))
        .expect("bc");
        let tokens = [
            token("a", "one", "main"),
            token("a", "two", "other"),
            token("b", "three", "main"),
        ];
        let woken: Vec<String> = tokens_referencing(&tokens, &bc)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(woken, ["one"]);
    }
}
