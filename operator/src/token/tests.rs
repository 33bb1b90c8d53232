//! CacheToken pipeline tests: shared helpers, and the fixture-driven check of every object
//! and status the pure steps produce (`tests/fixtures/cache-token.*.yaml`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use garret_core::token::{Claims, SigningKey};
use k8s_openapi::ByteString;
use serde_json::{json, Value};

use super::*;
use crate::desired::fixtures;
use crate::types::{BinaryCacheRef, CacheTokenSpec, TokenPermissions};

/// One RSA key for all token tests (generating one takes a while).
pub fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| garret_core::token::generate_rs256(2048).expect("rsa").0)
}

pub fn spec() -> CacheTokenSpec {
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
        previous_token_grace_period: None,
    }
}

/// A CacheToken as the API server returns it.
pub fn cache_token(spec: &CacheTokenSpec) -> CacheToken {
    let mut ct = CacheToken::new("ci", spec.clone());
    ct.metadata.namespace = Some("ns".into());
    ct.metadata.uid = Some("2222-uid".into());
    ct
}

pub fn validated(spec: &CacheTokenSpec) -> Validated {
    validate(&cache_token(spec)).expect("valid")
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
fn validate_rejects_bad_timing_and_missing_identity() {
    let mut s = spec();
    s.renew_before = Some("4h".into());
    assert!(validate(&cache_token(&s))
        .expect_err("too long")
        .0
        .contains("renewBefore"));
    let mut ct = cache_token(&spec());
    ct.metadata.uid = None;
    assert!(validate(&ct).expect_err("no uid").0.contains("uid"));
    ct.metadata.namespace = None;
    assert!(validate(&ct).expect_err("no ns").0.contains("namespaced"));
}

#[test]
fn validate_rejects_a_token_that_grants_nothing() {
    let mut s = spec();
    s.permissions = Default::default();
    let err = validate(&cache_token(&s)).expect_err("no rights");
    assert!(err.0.contains("permissions"), "{}", err.0);
}

#[test]
fn a_foreign_secret_is_never_taken_over() {
    let ct = cache_token(&spec());
    assert!(check_owner(&ct, None).is_ok());
    let v = validated(&spec());
    let stored = secret::Stored {
        token: "t",
        jti: "j",
        exp: 2,
        revision: 1,
        pending: &[],
    };
    let ctx = secret::Context {
        endpoint: "http://e/",
        caches: &[],
    };
    let ours = secret::token_secret(&v, stored, ctx);
    assert!(check_owner(&ct, Some(&ours)).is_ok());
    let foreign = Secret::default();
    let err = check_owner(&ct, Some(&foreign)).expect_err("foreign");
    assert_eq!(
        err.0,
        "Secret ci-token exists and is not owned by this CacheToken"
    );
}

#[test]
fn minting_signs_the_request_and_keep_passes_through() {
    let v = validated(&spec());
    let keys = TokenKeys::new(key()).expect("keys");
    let now = 1_800_000_000;
    let out = mint(
        &v,
        Decision::Issue(Reason::Expired),
        &keys,
        "j-1".into(),
        now,
    )
    .expect("mint");
    let Outcome::Minted {
        reason,
        token,
        jti,
        exp,
    } = out
    else {
        panic!("expected Minted, got {out:?}");
    };
    assert_eq!(
        (reason, jti.as_str(), exp),
        (Reason::Expired, "j-1", now + 3 * 3600)
    );
    let verifier = garret_core::token::Verifier::from_keys(keys.clone(), None, None);
    let claims = verifier.verify(&token, now + 1).expect("verifies");
    assert_eq!(claims.jti.as_deref(), Some("j-1"));
    let keep = Decision::Keep {
        claims: Box::new(claims),
        renew_at: 5,
    };
    assert!(matches!(
        mint(&v, keep, &keys, "unused".into(), now).expect("keep"),
        Outcome::Keep { renew_at: 5, .. }
    ));
}

#[test]
fn requeue_waits_for_renewal_within_resync() {
    let resync = Duration::from_secs(300);
    assert_eq!(requeue_after(1060, 1000, resync), Duration::from_secs(60));
    assert_eq!(requeue_after(1000, 1000, resync), Duration::from_secs(1));
    assert_eq!(requeue_after(900, 1000, resync), Duration::from_secs(1));
    assert_eq!(requeue_after(100_000, 1000, resync), resync);
}

#[test]
fn binary_cache_changes_wake_only_its_tokens() {
    use crate::controller::cache_token::tokens_referencing;
    use crate::types::BinaryCache;
    use std::sync::Arc;
    let token = |ns: &str, name: &str, cache: &str| {
        let mut s = spec();
        s.binary_cache_ref.name = cache.into();
        let mut t = CacheToken::new(name, s);
        t.metadata.namespace = Some(ns.into());
        Arc::new(t)
    };
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

/// Fixture input: a CacheToken and reconcile scenarios against it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    cache_token: CacheToken,
    scenarios: BTreeMap<String, Scenario>,
}

/// What the controller observed, and the outcome of decide + mint (tokens are fixed strings:
/// `desired` only places them).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Scenario {
    endpoint: String,
    /// The BinaryCache's `status.caches`.
    #[serde(default)]
    caches: Vec<crate::types::CacheStatus>,
    /// The revocation plan (tested on its own in `revocation`).
    #[serde(default)]
    pending: Vec<revocation::Pending>,
    #[serde(default)]
    revoke: Vec<RevokeInput>,
    now: i64,
    /// Data and annotations of the existing token Secret; absent: no Secret.
    current: Option<CurrentSecret>,
    outcome: OutcomeInput,
}

#[derive(serde::Deserialize)]
struct CurrentSecret {
    data: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
enum OutcomeInput {
    Keep {
        nbf: i64,
        exp: i64,
        jti: String,
        renew_at: i64,
    },
    Minted {
        reason: String,
        token: String,
        jti: String,
        exp: i64,
    },
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeInput {
    token_id: String,
    exp: i64,
    reason: String,
}

fn reason(name: &str) -> Reason {
    match name {
        "SecretMissing" => Reason::SecretMissing,
        "Expired" => Reason::Expired,
        "SpecChanged" => Reason::SpecChanged,
        "RenewalDue" => Reason::RenewalDue,
        other => Reason::SecretInvalid(other.into()),
    }
}

fn run(ct: &CacheToken, s: Scenario) -> Value {
    let v = validate(ct).expect("fixture is valid");
    let current = s.current.map(|c| {
        let mut secret = Secret {
            data: Some(
                c.data
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        secret.metadata.annotations = Some(c.annotations);
        secret.metadata.owner_references = Some(vec![v.owner.clone()]);
        secret
    });
    check_owner(ct, current.as_ref()).expect("ours");
    let outcome = match s.outcome {
        OutcomeInput::Keep {
            nbf,
            exp,
            jti,
            renew_at,
        } => Outcome::Keep {
            claims: Box::new(Claims {
                nbf: Some(nbf),
                exp: Some(exp),
                jti: Some(jti),
                ..Claims::default()
            }),
            renew_at,
        },
        OutcomeInput::Minted {
            reason: r,
            token,
            jti,
            exp,
        } => Outcome::Minted {
            reason: reason(&r),
            token,
            jti,
            exp,
        },
    };
    let o = Observed {
        endpoint: s.endpoint,
        caches: s.caches,
        current,
        status_revision: ct.status.as_ref().and_then(|s| s.revision).unwrap_or(0),
        now: s.now,
    };
    let reasons = [
        "Renewed",
        "SubjectChanged",
        "PermissionsNarrowed",
        "Deleted",
    ];
    let plan = revocation::Plan {
        pending: s.pending,
        revoke: s
            .revoke
            .into_iter()
            .map(|r| revocation::Target {
                binary_cache: v.binary_cache.clone(),
                token_id: r.token_id,
                exp: r.exp,
                reason: reasons
                    .into_iter()
                    .find(|x| *x == r.reason)
                    .unwrap_or("Renewed"),
            })
            .collect(),
    };
    let revoked = revoked_event(&plan.revoke);
    let children = desired(&v, &o, outcome, plan);
    let now = time(s.now).expect("time");
    let wanted = ready_conditions(&v, &children.issued);
    json!({
        "secret": children.secret,
        "event": children.event.map(|e| json!({"reason": e.reason, "action": e.action, "note": e.note})),
        "revokedEvent": revoked.map(|e| json!({"reason": e.reason, "action": e.action, "note": e.note})),
        "status": status(ct, &wanted, Some(&children.issued), &now),
        "requeueAfterSecs": requeue_after(children.issued.next_at(), s.now, Duration::from_secs(300)).as_secs(),
    })
}

#[test]
fn cache_token_children_match_the_fixture() {
    let input: Input = fixtures::read("cache-token.input.yaml");
    let results: serde_json::Map<String, Value> = input
        .scenarios
        .into_iter()
        .map(|(name, s)| (name, run(&input.cache_token, s)))
        .collect();
    let results = Value::Object(results);
    fixtures::assert_expected("cache-token.expected.yaml", &results);
    // The points the fixture exists for, spelled out so a careless re-bless shows.
    let rev = |case: &str| results[case]["status"]["revision"].as_i64();
    assert_eq!(rev("first-issue"), Some(4), "status said 3: the next is 4");
    assert_eq!(
        rev("spec-changed"),
        Some(8),
        "the Secret said 7: it wins over status"
    );
    assert_eq!(
        rev("endpoint-moved"),
        Some(7),
        "kept tokens keep their revision"
    );
    assert!(results["unchanged"]["secret"].is_null(), "nothing to write");
    assert!(
        results["endpoint-moved"]["event"].is_null(),
        "no Event without a new token"
    );
    assert_eq!(results["first-issue"]["event"]["reason"], "Issued");
    let status = |case: &str| &results[case]["status"];
    assert_eq!(
        status("renewed-with-grace")["previousTokens"][0]["tokenId"],
        "jti-old"
    );
    assert_eq!(
        results["renewed-with-grace"]["requeueAfterSecs"], 300,
        "the end of the grace period is within the resync"
    );
    assert_eq!(
        status("grace-over")["revokedTokens"][0]["reason"],
        "Renewed"
    );
    assert!(status("grace-over")["previousTokens"].is_null());
    assert!(
        !results["grace-over"]["secret"]["metadata"]["annotations"]
            .as_object()
            .is_some_and(|a| a.contains_key("garret.dev/previous-tokens")),
        "the pending record leaves the Secret"
    );
    assert_eq!(results["grace-over"]["revokedEvent"]["reason"], "Revoked");
}
