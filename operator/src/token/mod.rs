//! Everything a CacheToken is, in one module: the renewal policy ([`renewal`]), the Secret's
//! shape ([`secret`]) and the status. The pipeline, pure except where marked:
//!
//! 1. [`validate`]: spec timing, the `make-token` request and the spec hash, computed once.
//! 2. [`renewal::decide`]: keep the token in the Secret, or issue one (and why).
//! 3. [`mint`] (the one fallible step after validation): sign the claims. The controller
//!    passes in the random `jti`, so minting is deterministic given its inputs.
//! 4. [`revocation::replaced`] and [`revocation::plan`]: what becomes of the token being
//!    replaced (revoked at once, or after the grace period) and which earlier ones are due;
//!    the controller writes the revocation list before the new token.
//! 5. [`desired`]: the Secret to apply (if any), the Event, and what status says.
//! 6. [`status`] and [`requeue_after`]: the status object and when to look again.
//!
//! Only `controller::cache_token` reads the cluster, the clock and the random source.

pub mod renewal;
pub mod revocation;
pub mod secret;
pub mod wake;

use std::time::Duration;

use garret_core::token::{MakeToken, TokenKeys};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::ResourceExt;

use crate::condition::{self, Wanted};
use crate::desired::meta::{controller_ref, normal_event, owned_by, Note};
use crate::error::InvalidSpec;
use crate::types::{CacheStatus, CacheToken, CacheTokenStatus};
use crate::{Error, Result};
use renewal::{Decision, Reason, Timing};
use revocation::{Pending, Target};

/// A CacheToken whose spec passed [`validate`].
#[derive(Clone, Debug)]
pub struct Validated {
    pub namespace: String,
    /// The BinaryCache whose key signs the token.
    pub binary_cache: String,
    pub secret_name: String,
    /// Controller reference for the token Secret.
    pub owner: OwnerReference,
    pub timing: Timing,
    pub request: MakeToken,
    pub spec_hash: String,
}

/// Check the spec (durations, permission patterns) and resolve what every later step needs.
pub fn validate(ct: &CacheToken) -> Result<Validated, InvalidSpec> {
    let namespace = ct
        .namespace()
        .ok_or_else(|| InvalidSpec("CacheToken must be namespaced".into()))?;
    let spec = &ct.spec;
    let p = &spec.permissions;
    let granted = [
        &p.pull,
        &p.push,
        &p.delete,
        &p.create_cache,
        &p.configure_cache,
        &p.configure_cache_retention,
        &p.destroy_cache,
    ];
    // The CRD refuses this at apply time; objects stored before that rule still get here.
    if granted.iter().all(|list| list.is_empty()) {
        return Err(InvalidSpec(
            "permissions must grant at least one right on some cache".into(),
        ));
    }
    let timing = renewal::timing(spec)?;
    let request = renewal::make_token(spec, &timing)?;
    Ok(Validated {
        namespace,
        binary_cache: spec.binary_cache_ref.name.clone(),
        secret_name: spec.secret_name.clone(),
        owner: controller_ref(ct)?,
        timing,
        request,
        spec_hash: secret::spec_hash(spec),
    })
}

/// A Secret of that name that this CacheToken does not own is someone else's: never taken over.
pub fn check_owner(ct: &CacheToken, current: Option<&Secret>) -> Result<(), InvalidSpec> {
    match current {
        Some(s) if !owned_by(s, ct.uid().as_deref()) => Err(InvalidSpec(format!(
            "Secret {} exists and is not owned by this CacheToken",
            ct.spec.secret_name
        ))),
        _ => Ok(()),
    }
}

/// A decision with the token it needs, ready for [`desired`].
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The token in the Secret stands; renew at `renew_at`.
    Keep {
        claims: Box<garret_core::token::Claims>,
        renew_at: i64,
    },
    /// A new token, minted at `now` of [`Observed`].
    Minted {
        reason: Reason,
        token: String,
        jti: String,
        exp: i64,
    },
}

/// Turn `decision` into an [`Outcome`], signing a new token with `keys` if one is due.
pub fn mint(
    v: &Validated,
    decision: Decision,
    keys: &TokenKeys,
    jti: String,
    now: i64,
) -> Result<Outcome> {
    let reason = match decision {
        Decision::Keep { claims, renew_at } => return Ok(Outcome::Keep { claims, renew_at }),
        Decision::Issue(reason) => reason,
    };
    let token_error = |context: &str| {
        let context = context.to_string();
        move |source| Error::Token { context, source }
    };
    let claims = v
        .request
        .claims(now, jti.clone())
        .map_err(token_error("building claims"))?;
    let token = keys
        .mint(&claims)
        .map_err(token_error("signing the token"))?;
    Ok(Outcome::Minted {
        reason,
        token,
        jti,
        exp: claims.exp.unwrap_or(now),
    })
}

/// What the controller read before [`desired`].
#[derive(Clone, Debug)]
pub struct Observed {
    /// The BinaryCache's endpoint (it goes into the Secret).
    pub endpoint: String,
    /// The BinaryCache's declared caches with their public keys (for `nix.conf`).
    pub caches: Vec<CacheStatus>,
    /// The token Secret as read fresh from the API server.
    pub current: Option<Secret>,
    /// `status.revision`, which may lag the Secret's annotation.
    pub status_revision: i64,
    /// Unix seconds of this reconcile.
    pub now: i64,
}

/// What status says about the current token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub nbf: i64,
    pub exp: i64,
    pub renew_at: i64,
    pub revision: i64,
    pub jti: Option<String>,
    /// Replaced tokens in their grace period.
    pub pending: Vec<Pending>,
    /// Tokens revoked by this reconcile.
    pub revoked: Vec<Target>,
}

impl Issued {
    /// When something is next due: the renewal or the end of a grace period.
    pub fn next_at(&self) -> i64 {
        revocation::next_due(&self.pending).map_or(self.renew_at, |d| d.min(self.renew_at))
    }
}

/// The CacheToken's child and what it implies.
#[derive(Clone, Debug)]
pub struct Children {
    /// The token Secret to apply; `None` when the stored one is already right.
    pub secret: Option<Secret>,
    /// The `Issued` Event, when a token was minted.
    pub event: Option<Note>,
    pub issued: Issued,
}

/// The token Secret and status for `outcome`, given the revocation `plan` (already carried
/// out by the controller). The Secret's revision annotation (read fresh) is the record of
/// what was issued; status may come from a cache that missed our write.
pub fn desired(v: &Validated, o: &Observed, outcome: Outcome, plan: revocation::Plan) -> Children {
    let current = o.current.as_ref();
    let revision = current
        .and_then(secret::stored_revision)
        .unwrap_or(o.status_revision);
    let ctx = secret::Context {
        endpoint: &o.endpoint,
        caches: &o.caches,
    };
    match outcome {
        Outcome::Keep { claims, renew_at } => {
            // The token stands, but the endpoint, the caches (and so the files) or the
            // pending revocations may have moved.
            let jti = claims.jti.clone().unwrap_or_default();
            let exp = claims.exp.unwrap_or(o.now);
            let secret = current.and_then(|s| {
                let stored = secret::Stored {
                    token: secret::stored_token(s).unwrap_or_default(),
                    jti: &jti,
                    exp,
                    revision,
                    pending: &plan.pending,
                };
                let want = secret::token_secret(v, stored, ctx);
                (!secret::same_content(s, &want)).then_some(want)
            });
            let issued = Issued {
                nbf: claims.nbf.unwrap_or(o.now),
                exp,
                renew_at,
                revision,
                jti: claims.jti,
                pending: plan.pending,
                revoked: plan.revoke,
            };
            Children {
                secret,
                event: None,
                issued,
            }
        }
        Outcome::Minted {
            reason,
            token,
            jti,
            exp,
        } => {
            let revision = revision.max(o.status_revision) + 1;
            let note = format!("revision {revision} ({}), token id {jti}", reason.as_str());
            let stored = secret::Stored {
                token: &token,
                jti: &jti,
                exp,
                revision,
                pending: &plan.pending,
            };
            Children {
                secret: Some(secret::token_secret(v, stored, ctx)),
                event: Some(normal_event("Issued", "Issue", note)),
                issued: Issued {
                    nbf: o.now,
                    exp,
                    renew_at: renewal::renewal_time(o.now, exp, v.timing.renew_before),
                    revision,
                    jti: Some(jti),
                    pending: plan.pending,
                    revoked: plan.revoke,
                },
            }
        }
    }
}

/// The `Revoked` Event for tokens revoked in one reconcile.
pub fn revoked_event(revoked: &[Target]) -> Option<Note> {
    if revoked.is_empty() {
        return None;
    }
    let list: Vec<String> = revoked
        .iter()
        .map(|t| {
            format!(
                "{} ({}, on BinaryCache {})",
                t.token_id, t.reason, t.binary_cache
            )
        })
        .collect();
    Some(normal_event(
        "Revoked",
        "Revoke",
        format!("revoked token {}", list.join(", ")),
    ))
}

/// Conditions when the current token is in place: `Ready`, cert-manager's `Issuing`, and
/// kstatus' abnormal-true `Reconciling`/`Stalled` (see `desired::status`).
pub fn ready_conditions(v: &Validated, issued: &Issued) -> [Wanted; 4] {
    let msg = format!(
        "token revision {} in Secret {}",
        issued.revision, v.secret_name
    );
    [
        Wanted::new("Ready", true, "Issued", msg.clone()),
        Wanted::new(
            "Issuing",
            false,
            "UpToDate",
            "the current token is valid and not due for renewal",
        ),
        Wanted::new("Reconciling", false, "Issued", msg.clone()),
        Wanted::new("Stalled", false, "Issued", msg),
    ]
}

/// Conditions after a failed reconcile. `Issuing` (and `Reconciling`) stay True while the
/// operator keeps trying (a missing BinaryCache or key, an API error); a spec error stops
/// issuing until it changes (`Stalled`).
pub fn failure_conditions(e: &Error) -> [Wanted; 4] {
    let retrying = !matches!(e, Error::InvalidSpec(_));
    [
        Wanted::new("Ready", false, e.reason(), e.to_string()),
        Wanted::new("Issuing", retrying, e.reason(), e.to_string()),
        Wanted::new("Reconciling", retrying, e.reason(), e.to_string()),
        Wanted::new("Stalled", !retrying, e.reason(), e.to_string()),
    ]
}

fn time(unix: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .ok()
        .map(Time)
}

/// The status to write: `wanted` merged at `now`; token fields replaced when `issued` is
/// given, else kept.
pub fn status(
    ct: &CacheToken,
    wanted: &[Wanted],
    issued: Option<&Issued>,
    now: &Time,
) -> CacheTokenStatus {
    let current = ct.status.clone().unwrap_or_default();
    let generation = ct.metadata.generation;
    let mut status = CacheTokenStatus {
        observed_generation: generation,
        conditions: condition::merge(&current.conditions, wanted, generation, now),
        ..current
    };
    if let Some(i) = issued {
        status.not_before = time(i.nbf);
        status.not_after = time(i.exp);
        status.renewal_time = time(i.renew_at);
        status.revision = Some(i.revision);
        status.token_id = i.jti.clone();
        status.previous_tokens = revocation::previous_status(&i.pending);
        status.revoked_tokens =
            revocation::revoked_status(&status.revoked_tokens, &i.revoked, now.0.as_second());
    }
    status
}

/// Whether writing `next` would change the stored status (a reconcile that changes nothing
/// writes nothing).
pub fn status_changed(current: Option<&CacheTokenStatus>, next: &CacheTokenStatus) -> bool {
    current != Some(next)
}

/// How long until the next look: until the renewal time (at least a second), at most
/// `resync`.
pub fn requeue_after(renew_at: i64, now: i64, resync: Duration) -> Duration {
    let wait = renew_at.saturating_sub(now).max(1);
    Duration::from_secs(u64::try_from(wait).unwrap_or(1)).min(resync)
}

#[cfg(test)]
pub(crate) mod tests;
