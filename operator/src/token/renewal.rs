//! CacheToken issuance policy, pure: what to mint, and whether the token in the Secret is
//! still good or must be (re)issued now. Checks run in order and the first hit wins, so the
//! reported reason is the most fundamental one (cert-manager's trigger policy chain).

use std::collections::BTreeMap;
use std::time::Duration;

use garret_core::token::{Claims, MakeToken, Rejection, Verifier};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use sha2::{Digest, Sha256};

use crate::types::CacheTokenSpec;
use crate::{Error, Result};

/// Secret key holding the JWT.
pub const TOKEN_FIELD: &str = "token";
/// Annotation on the token Secret: hash of the spec the token was minted from.
pub const SPEC_HASH_ANNOTATION: &str = "garret.dev/spec-hash";

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
}

/// Validate the spec's durations: `renewBefore` must leave part of the lifetime.
pub fn timing(spec: &CacheTokenSpec) -> Result<Timing> {
    let validity = garret_core::token::parse_validity(&spec.validity)
        .map_err(|e| Error::InvalidSpec(format!("validity: {e}")))?;
    let renew_before = match &spec.renew_before {
        None => None,
        Some(text) => {
            let d = garret_core::duration::parse_duration(text)
                .map_err(|e| Error::InvalidSpec(format!("renewBefore: {e}")))?;
            if d >= validity {
                return Err(Error::InvalidSpec(format!(
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
pub fn make_token(spec: &CacheTokenSpec) -> Result<MakeToken> {
    let t = timing(spec)?;
    let p = &spec.permissions;
    let request = MakeToken {
        sub: spec.subject.clone(),
        validity: t.validity,
        pull: p.pull.clone(),
        push: p.push.clone(),
        delete: p.delete.clone(),
        create_cache: p.create_cache.clone(),
        configure_cache: p.configure_cache.clone(),
        configure_cache_retention: p.configure_cache_retention.clone(),
        destroy_cache: p.destroy_cache.clone(),
        issuer: None,
        audiences: None,
    };
    // Fail on bad patterns now, as a spec error, instead of at mint time.
    request
        .claims(0, String::new())
        .map_err(|e| Error::InvalidSpec(format!("permissions: {e}")))?;
    Ok(request)
}

/// Hash of everything in the spec that shapes the token; stored on the Secret so a spec
/// change is noticed even if status is lost.
pub fn spec_hash(spec: &CacheTokenSpec) -> String {
    let canonical = serde_json::json!({
        "binaryCacheRef": spec.binary_cache_ref,
        "subject": spec.subject,
        "validity": spec.validity,
        "renewBefore": spec.renew_before,
        "permissions": spec.permissions,
    });
    hex::encode(&Sha256::digest(canonical.to_string().as_bytes())[..16])
}

/// Should the token in `secret` be replaced now? `verifier` holds the BinaryCache's current
/// key; `now` is Unix seconds.
pub fn decide(
    spec: &CacheTokenSpec,
    secret: Option<&Secret>,
    verifier: &Verifier,
    now: i64,
) -> Result<Decision> {
    let timing = timing(spec)?;
    let Some(secret) = secret else {
        return Ok(Decision::Issue(Reason::SecretMissing));
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_FIELD))
        .and_then(|b| std::str::from_utf8(&b.0).ok());
    let Some(token) = token else {
        return Ok(Decision::Issue(Reason::SecretInvalid(
            "no token in the Secret".into(),
        )));
    };
    let claims = match verifier.verify(token.trim(), now) {
        Ok(c) => c,
        Err(Rejection::Expired) => return Ok(Decision::Issue(Reason::Expired)),
        Err(r) => return Ok(Decision::Issue(Reason::SecretInvalid(r.to_string()))),
    };
    let stored_hash = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION));
    if stored_hash != Some(&spec_hash(spec)) {
        return Ok(Decision::Issue(Reason::SpecChanged));
    }
    let (Some(nbf), Some(exp)) = (claims.nbf, claims.exp) else {
        return Ok(Decision::Issue(Reason::SecretInvalid(
            "token has no nbf/exp".into(),
        )));
    };
    let renew_at = renewal_time(nbf, exp, timing.renew_before);
    if now >= renew_at {
        return Ok(Decision::Issue(Reason::RenewalDue));
    }
    Ok(Decision::Keep {
        claims: Box::new(claims),
        renew_at,
    })
}

/// The data of the token Secret: the JWT, the server URL, and a netrc line (Nix reads private
/// caches with the token as the netrc password).
pub fn secret_data(token: &str, endpoint: &str) -> BTreeMap<String, ByteString> {
    let netrc = format!("machine {} password {token}\n", host_of(endpoint));
    BTreeMap::from([
        (
            TOKEN_FIELD.to_string(),
            ByteString(token.as_bytes().to_vec()),
        ),
        (
            "endpoint".to_string(),
            ByteString(endpoint.as_bytes().to_vec()),
        ),
        ("netrc".to_string(), ByteString(netrc.into_bytes())),
    ])
}

/// The host of a URL such as `https://cache.example.org:8443/`, without port or path.
pub fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{BinaryCacheRef, TokenPermissions};
    use garret_core::token::{SigningKey, TokenKeys};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::sync::OnceLock;

    const NOW: i64 = 1_800_000_000;

    fn key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| garret_core::token::generate_rs256(2048).expect("rsa").0)
    }

    fn verifier() -> Verifier {
        Verifier::from_keys(TokenKeys::new(key()).expect("keys"), None, None)
    }

    fn spec() -> CacheTokenSpec {
        CacheTokenSpec {
            binary_cache_ref: BinaryCacheRef {
                name: "main".into(),
            },
            subject: "ci".into(),
            validity: "3h".into(),
            renew_before: None,
            permissions: TokenPermissions {
                pull: vec!["team-*".into()],
                push: vec!["team-ci".into()],
                ..TokenPermissions::default()
            },
            secret_name: "ci-token".into(),
        }
    }

    fn issued(spec: &CacheTokenSpec, at: i64) -> Secret {
        let token = make_token(spec)
            .expect("request")
            .mint(key(), at)
            .expect("mint");
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    SPEC_HASH_ANNOTATION.to_string(),
                    spec_hash(spec),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(secret_data(&token, "http://main.ns.svc/")),
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
        assert!(matches!(make_token(&s), Err(Error::InvalidSpec(_))));
    }

    #[test]
    fn reissue_chain() {
        let s = spec();
        let v = verifier();
        assert_eq!(
            decide(&s, None, &v, NOW).expect("decide"),
            Decision::Issue(Reason::SecretMissing)
        );

        let fresh = issued(&s, NOW);
        match decide(&s, Some(&fresh), &v, NOW + 60).expect("decide") {
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
            decide(&s, Some(&fresh), &v, NOW + 2 * 3600).expect("decide"),
            Decision::Issue(Reason::RenewalDue)
        );
        assert_eq!(
            decide(&s, Some(&fresh), &v, NOW + 3 * 3600 + 1).expect("decide"),
            Decision::Issue(Reason::Expired)
        );

        let mut changed = s.clone();
        changed.permissions.delete = vec!["team-ci".into()];
        assert_eq!(
            decide(&changed, Some(&fresh), &v, NOW + 60).expect("decide"),
            Decision::Issue(Reason::SpecChanged)
        );

        let mut corrupt = fresh.clone();
        corrupt.data = Some(secret_data("not.a.jwt", "http://main.ns.svc/"));
        assert!(matches!(
            decide(&s, Some(&corrupt), &v, NOW).expect("decide"),
            Decision::Issue(Reason::SecretInvalid(_))
        ));
        corrupt.data = None;
        assert!(matches!(
            decide(&s, Some(&corrupt), &v, NOW).expect("decide"),
            Decision::Issue(Reason::SecretInvalid(_))
        ));

        let other_key = garret_core::token::generate_rs256(2048).expect("rsa").0;
        let other = Verifier::from_keys(TokenKeys::new(&other_key).expect("keys"), None, None);
        assert!(matches!(
            decide(&s, Some(&fresh), &other, NOW).expect("decide"),
            Decision::Issue(Reason::SecretInvalid(_))
        ));
    }

    #[test]
    fn secret_carries_netrc_for_the_host() {
        let data = secret_data("T", "https://cache.example.org:8443/x");
        assert_eq!(
            data["netrc"].0,
            b"machine cache.example.org password T\n".to_vec()
        );
        assert_eq!(
            data["endpoint"].0,
            b"https://cache.example.org:8443/x".to_vec()
        );
        assert_eq!(host_of("http://main.ns.svc/"), "main.ns.svc");
    }

    #[test]
    fn spec_hash_ignores_secret_name_only() {
        let a = spec();
        let mut b = a.clone();
        b.secret_name = "other".into();
        assert_eq!(spec_hash(&a), spec_hash(&b));
        b.subject = "someone".into();
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }
}
