//! CacheToken renewal policy, pure: the spec's timing, the `make-token` request, and whether
//! the token in the Secret is still good or must be (re)issued now. Checks run in order and
//! the first hit wins, so the reported reason is the most fundamental one (cert-manager's
//! trigger policy chain).

use std::time::Duration;

use garret_core::token::{Claims, MakeToken, Rejection, Verifier};
use k8s_openapi::api::core::v1::Secret;

use super::secret::{stored_spec_hash, stored_token};
use super::Validated;
use crate::error::InvalidSpec;
use crate::types::CacheTokenSpec;

/// Why a new token must be issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    SecretMissing,
    /// No token, or one the current key does not accept (corrupt, or signed by another key).
    SecretInvalid(String),
    Expired,
    SpecChanged,
    RenewalDue,
}

impl Reason {
    /// PascalCase, for conditions and Events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::SecretMissing => "SecretMissing",
            Reason::SecretInvalid(_) => "SecretInvalid",
            Reason::Expired => "Expired",
            Reason::SpecChanged => "SpecChanged",
            Reason::RenewalDue => "RenewalDue",
        }
    }
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Issue(Reason),
    /// The current token stays; renew at `renew_at` (Unix seconds).
    Keep {
        claims: Box<Claims>,
        renew_at: i64,
    },
}

/// Parsed, checked timing settings of a spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub validity: Duration,
    pub renew_before: Option<Duration>,
    /// How long a token replaced by a renewal stays valid (`previousTokenGracePeriod`).
    pub grace: Duration,
}

/// Parse the spec's durations: `renewBefore` must leave part of the lifetime.
pub fn timing(spec: &CacheTokenSpec) -> Result<Timing, InvalidSpec> {
    let validity = garret_core::token::parse_validity(&spec.validity)
        .map_err(|e| InvalidSpec(format!("validity: {e}")))?;
    let renew_before = match &spec.renew_before {
        None => None,
        Some(text) => {
            let d = garret_core::duration::parse_duration(text)
                .map_err(|e| InvalidSpec(format!("renewBefore: {e}")))?;
            if d >= validity {
                return Err(InvalidSpec(format!(
                    "renewBefore ({text}) must be shorter than validity ({})",
                    spec.validity
                )));
            }
            Some(d)
        }
    };
    Ok(Timing {
        validity,
        renew_before,
        grace: super::revocation::grace_period(spec)?,
    })
}

/// When to renew a token valid from `nbf` to `exp`: `renewBefore` ahead of expiry, else once
/// two thirds of the lifetime have passed.
pub fn renewal_time(nbf: i64, exp: i64, renew_before: Option<Duration>) -> i64 {
    let lifetime = exp.saturating_sub(nbf).max(0);
    match renew_before {
        Some(rb) => exp
            .saturating_sub(i64::try_from(rb.as_secs()).unwrap_or(i64::MAX))
            .max(nbf),
        None => nbf.saturating_add(lifetime.saturating_mul(2) / 3),
    }
}

/// The `make-token` request for this spec (subject, lifetime, permission patterns).
pub fn make_token(spec: &CacheTokenSpec, timing: &Timing) -> Result<MakeToken, InvalidSpec> {
    let p = &spec.permissions;
    let request = MakeToken {
        sub: spec.subject.clone(),
        validity: timing.validity,
        pull: p.pull.clone(),
        push: p.push.clone(),
        delete: p.delete.clone(),
        create_cache: p.create_cache.clone(),
        configure_cache: p.configure_cache.clone(),
        configure_cache_retention: p.configure_cache_retention.clone(),
        destroy_cache: p.destroy_cache.clone(),
        issuer: None,
        audiences: None,
        // Server rights are the operator's own (revocation pushes); no CacheToken gets one.
        server: garret_core::token::ServerRights::default(),
    };
    // Fail on bad patterns now, as a spec error, instead of at mint time.
    request
        .claims(0, String::new())
        .map_err(|e| InvalidSpec(format!("permissions: {e}")))?;
    Ok(request)
}

/// Should the token in `secret` be replaced now? `verifier` holds the BinaryCache's current
/// key; `now` is Unix seconds.
pub fn decide(v: &Validated, secret: Option<&Secret>, verifier: &Verifier, now: i64) -> Decision {
    let Some(secret) = secret else {
        return Decision::Issue(Reason::SecretMissing);
    };
    let Some(token) = stored_token(secret) else {
        return Decision::Issue(Reason::SecretInvalid("no token in the Secret".into()));
    };
    let claims = match verifier.verify(token.trim(), now) {
        Ok(c) => c,
        Err(Rejection::Expired) => return Decision::Issue(Reason::Expired),
        Err(r) => return Decision::Issue(Reason::SecretInvalid(r.to_string())),
    };
    if stored_spec_hash(secret) != Some(&v.spec_hash) {
        return Decision::Issue(Reason::SpecChanged);
    }
    let (Some(nbf), Some(exp)) = (claims.nbf, claims.exp) else {
        return Decision::Issue(Reason::SecretInvalid("token has no nbf/exp".into()));
    };
    let renew_at = renewal_time(nbf, exp, v.timing.renew_before);
    if now >= renew_at {
        return Decision::Issue(Reason::RenewalDue);
    }
    Decision::Keep {
        claims: Box::new(claims),
        renew_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::secret::{secret_data, spec_hash, Context, SPEC_HASH_ANNOTATION};
    use crate::token::tests::{key, spec, validated};
    use garret_core::token::TokenKeys;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    const NOW: i64 = 1_800_000_000;

    fn ctx() -> Context<'static> {
        Context {
            endpoint: "http://main.ns.svc/",
            caches: &[],
        }
    }

    fn verifier() -> Verifier {
        Verifier::from_keys(TokenKeys::new(key()).expect("keys"), None, None)
    }

    fn issued(spec: &CacheTokenSpec, at: i64) -> Secret {
        let token = validated(spec).request.mint(key(), at).expect("mint");
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    SPEC_HASH_ANNOTATION.to_string(),
                    spec_hash(spec),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(secret_data(&validated(spec), &token, ctx())),
            ..Secret::default()
        }
    }

    #[test]
    fn renewal_at_two_thirds_or_renew_before() {
        assert_eq!(renewal_time(0, 3000, None), 2000);
        assert_eq!(renewal_time(100, 100 + 30 * 86400, None), 100 + 20 * 86400);
        assert_eq!(renewal_time(0, 3000, Some(Duration::from_secs(600))), 2400);
        assert_eq!(renewal_time(0, 3000, Some(Duration::from_secs(9999))), 0);
    }

    #[test]
    fn timing_rejects_nonsense() {
        let mut s = spec();
        s.validity = "0s".into();
        assert!(timing(&s).is_err());
        s.validity = "1h".into();
        s.renew_before = Some("2h".into());
        assert!(timing(&s)
            .expect_err("too long")
            .to_string()
            .contains("renewBefore"));
        s.renew_before = Some("10 minutes".into());
        assert_eq!(
            timing(&s).expect("ok").renew_before,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn bad_patterns_are_spec_errors() {
        let mut s = spec();
        s.permissions.pull = vec!["no spaces allowed".into()];
        let t = timing(&s).expect("timing");
        assert!(make_token(&s, &t)
            .expect_err("bad pattern")
            .0
            .starts_with("permissions:"));
    }

    #[test]
    fn reissue_chain() {
        let s = spec();
        let v = verifier();
        assert_eq!(
            decide(&validated(&s), None, &v, NOW),
            Decision::Issue(Reason::SecretMissing)
        );

        let fresh = issued(&s, NOW);
        match decide(&validated(&s), Some(&fresh), &v, NOW + 60) {
            Decision::Keep { claims, renew_at } => {
                assert_eq!(renew_at, NOW + 2 * 3600);
                assert_eq!(claims.sub.as_deref(), Some("ci"));
                assert!(claims.permission_for("team-ci").push);
                assert!(claims.permission_for("team-x").pull);
                assert!(!claims.permission_for("team-x").push);
            }
            other => panic!("expected Keep, got {other:?}"),
        }
        assert_eq!(
            decide(&validated(&s), Some(&fresh), &v, NOW + 2 * 3600),
            Decision::Issue(Reason::RenewalDue)
        );
        assert_eq!(
            decide(&validated(&s), Some(&fresh), &v, NOW + 3 * 3600 + 1),
            Decision::Issue(Reason::Expired)
        );

        let mut changed = s.clone();
        changed.permissions.delete = vec!["team-ci".into()];
        assert_eq!(
            decide(&validated(&changed), Some(&fresh), &v, NOW + 60),
            Decision::Issue(Reason::SpecChanged)
        );

        let mut corrupt = fresh.clone();
        corrupt.data = Some(secret_data(&validated(&s), "not.a.jwt", ctx()));
        assert!(matches!(
            decide(&validated(&s), Some(&corrupt), &v, NOW),
            Decision::Issue(Reason::SecretInvalid(_))
        ));
        corrupt.data = None;
        assert!(matches!(
            decide(&validated(&s), Some(&corrupt), &v, NOW),
            Decision::Issue(Reason::SecretInvalid(_))
        ));

        let other_key = garret_core::token::generate_rs256(2048).expect("rsa").0;
        let other = Verifier::from_keys(TokenKeys::new(&other_key).expect("keys"), None, None);
        assert!(matches!(
            decide(&validated(&s), Some(&fresh), &other, NOW),
            Decision::Issue(Reason::SecretInvalid(_))
        ));
    }
}
