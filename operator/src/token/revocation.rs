//! Revoking replaced and deleted tokens, pure. Each BinaryCache has a revocation list (a
//! ConfigMap garretd mounts as `[jwt] revocation-list`, one `<jti> <exp>` per line); the
//! CacheToken controller adds entries and drops those whose token has expired.
//!
//! What happens to the token in the Secret when a new one replaces it ([`replaced`]), in
//! order, the first hit wins:
//!
//! 1. it was issued for another BinaryCache (`binaryCacheRef` changed): revoked there at once;
//! 2. it cannot be read or verified, or has expired: nothing to revoke;
//! 3. its subject differs from the new token's: revoked at once (`SubjectChanged`);
//! 4. it grants something the new one does not ([`narrows`]): revoked at once
//!    (`PermissionsNarrowed`);
//! 5. otherwise (a routine renewal, a longer validity, an added permission) it stays valid for
//!    `previousTokenGracePeriod` (default 1 h) so running jobs finish, then is revoked
//!    (`Renewed`); unless it expires before that anyway.
//!
//! Deleting a CacheToken revokes its current token and those still in their grace period
//! ([`on_delete`]). The Secret's annotations are the record of what is pending (status may
//! lag): the token id, expiry and BinaryCache of the current token, and the replaced tokens
//! with the time each is due ([`PREVIOUS_TOKENS_ANNOTATION`]).

use std::time::Duration;

use garret_core::token::{parse_entries, Claims, Permission, Rejection, RevocationEntry, Verifier};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use super::renewal::Reason;
use super::secret::{
    stored_token, BINARY_CACHE_ANNOTATION, EXPIRES_ANNOTATION, TOKEN_ID_ANNOTATION,
};
use super::Validated;
use crate::desired::meta::{controller_ref, managed_by, Names};
use crate::desired::REVOCATION_FILE;
use crate::error::InvalidSpec;
use crate::types::{BinaryCache, CacheToken, CacheTokenSpec, PreviousToken, RevokedToken};

/// Default `previousTokenGracePeriod`.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(3600);

/// Annotation on the token Secret: the replaced tokens still in their grace period (JSON).
pub const PREVIOUS_TOKENS_ANNOTATION: &str = "garret.dev/previous-tokens";

/// The spec's grace period for tokens replaced by a renewal.
pub fn grace_period(spec: &CacheTokenSpec) -> Result<Duration, InvalidSpec> {
    match &spec.previous_token_grace_period {
        None => Ok(DEFAULT_GRACE_PERIOD),
        Some(text) => garret_core::duration::parse_duration(text)
            .map_err(|e| InvalidSpec(format!("previousTokenGracePeriod: {e}"))),
    }
}

/// A replaced token waiting out its grace period.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub token_id: String,
    pub exp: i64,
    pub revoke_at: i64,
    /// The BinaryCache that accepts it.
    pub binary_cache: String,
}

/// A token to put on a BinaryCache's revocation list now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub binary_cache: String,
    pub token_id: String,
    pub exp: i64,
    pub reason: &'static str,
}

/// What becomes of a replaced token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    Now(Target),
    Grace(Pending),
}

/// Whether `new` grants less than `old` on some cache name. Conservative: `new` counts as
/// not narrower only if every entry of `old` is in `new` (same pattern text) with at least
/// the same rights, in the same relative order, and every pattern `new` adds grants at
/// least everything any `old` entry did. (First-match resolution makes anything looser
/// unsafe: a reordering or an added narrow pattern can shadow a broad one.)
pub fn narrows(old: &Claims, new: &Claims) -> bool {
    let covers = |a: &Permission, b: &Permission| {
        (a.pull || !b.pull)
            && (a.push || !b.push)
            && (a.delete || !b.delete)
            && (a.create_cache || !b.create_cache)
            && (a.configure_cache || !b.configure_cache)
            && (a.configure_cache_retention || !b.configure_cache_retention)
            && (a.destroy_cache || !b.destroy_cache)
    };
    let position =
        |c: &Claims, pattern: &str| c.caches.iter().position(|(p, _)| p.as_str() == pattern);
    let mut last = None;
    for (pattern, old_perm) in &old.caches {
        let Some(i) = position(new, pattern.as_str()) else {
            return true;
        };
        if !covers(&new.caches[i].1, old_perm) || last.is_some_and(|l| i < l) {
            return true;
        }
        last = Some(i);
    }
    new.caches.iter().any(|(pattern, perm)| {
        position(old, pattern.as_str()).is_none()
            && old
                .caches
                .iter()
                .any(|(_, old_perm)| !covers(perm, old_perm))
    })
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    secret.annotations().get(key).map(String::as_str)
}

/// The current token of `secret` as its annotations record it: (id, exp, BinaryCache).
fn recorded(secret: &Secret) -> Option<(String, i64, Option<String>)> {
    let id = annotation(secret, TOKEN_ID_ANNOTATION).filter(|s| !s.is_empty())?;
    let exp = annotation(secret, EXPIRES_ANNOTATION)?.parse().ok()?;
    let bc = annotation(secret, BINARY_CACHE_ANNOTATION).map(str::to_string);
    Some((id.to_string(), exp, bc))
}

/// The fate of the token in `current` when a token is minted for `reason` at `now`.
/// `verifier` holds the key of `v`'s BinaryCache.
pub fn replaced(
    v: &Validated,
    reason: &Reason,
    current: Option<&Secret>,
    verifier: &Verifier,
    now: i64,
) -> Option<Fate> {
    let current = current?;
    if let Some((id, exp, Some(bc))) = recorded(current) {
        if bc != v.binary_cache {
            return (exp > now).then_some(Fate::Now(Target {
                binary_cache: bc,
                token_id: id,
                exp,
                reason: "BinaryCacheChanged",
            }));
        }
    }
    if matches!(
        reason,
        Reason::SecretMissing | Reason::SecretInvalid(_) | Reason::Expired
    ) {
        return None;
    }
    let old = match verifier.verify(stored_token(current)?.trim(), now) {
        Ok(c) => c,
        Err(Rejection::Expired) | Err(_) => return None,
    };
    let (Some(token_id), Some(exp)) = (old.jti.clone(), old.exp) else {
        return None;
    };
    let now_target = |reason| {
        Some(Fate::Now(Target {
            binary_cache: v.binary_cache.clone(),
            token_id: token_id.clone(),
            exp,
            reason,
        }))
    };
    if old.sub.as_deref() != Some(v.request.sub.as_str()) {
        return now_target("SubjectChanged");
    }
    // Building claims cannot fail here: validate already did it once.
    let new = v.request.claims(now, String::new()).ok()?;
    if narrows(&old, &new) {
        return now_target("PermissionsNarrowed");
    }
    let grace = i64::try_from(v.timing.grace.as_secs()).unwrap_or(i64::MAX);
    let revoke_at = now.saturating_add(grace);
    if revoke_at >= exp {
        return None; // it expires within the grace period anyway
    }
    if grace == 0 {
        return now_target("Renewed");
    }
    Some(Fate::Grace(Pending {
        token_id,
        exp,
        revoke_at,
        binary_cache: v.binary_cache.clone(),
    }))
}

/// The replaced tokens recorded on `secret`.
pub fn stored_pending(secret: Option<&Secret>) -> Vec<Pending> {
    secret
        .and_then(|s| annotation(s, PREVIOUS_TOKENS_ANNOTATION))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// What this reconcile revokes, and what stays pending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// To put on revocation lists before the Secret is written.
    pub revoke: Vec<Target>,
    /// Still in their grace period; recorded on the Secret.
    pub pending: Vec<Pending>,
}

/// Combine the Secret's pending tokens with the fate of a replaced one: due and expired
/// entries leave `pending`, the due ones (and an immediate fate) go to `revoke`.
pub fn plan(stored: Vec<Pending>, fate: Option<Fate>, now: i64) -> Plan {
    let mut plan = Plan::default();
    let mut all = stored;
    match fate {
        Some(Fate::Now(t)) => plan.revoke.push(t),
        Some(Fate::Grace(p)) => all.push(p),
        None => {}
    }
    for p in all {
        if p.exp <= now {
            continue; // expired: refused anyway
        }
        if p.revoke_at <= now {
            plan.revoke.push(Target {
                binary_cache: p.binary_cache,
                token_id: p.token_id,
                exp: p.exp,
                reason: "Renewed",
            });
        } else if !plan.pending.iter().any(|q| q.token_id == p.token_id) {
            plan.pending.push(p);
        }
    }
    plan
}

/// The earliest time a pending token is due.
pub fn next_due(pending: &[Pending]) -> Option<i64> {
    pending.iter().map(|p| p.revoke_at).min()
}

fn unix(t: &Option<Time>) -> Option<i64> {
    t.as_ref().map(|t| t.0.as_second())
}

/// Everything to revoke when `ct` is deleted: its current token and the replaced ones still
/// in their grace period, from the Secret's annotations, else from status; expired ones left
/// out.
pub fn on_delete(ct: &CacheToken, current: Option<&Secret>, now: i64) -> Vec<Target> {
    let status = ct.status.clone().unwrap_or_default();
    let spec_bc = ct.spec.binary_cache_ref.name.clone();
    let mut out = vec![];
    let current_token = current
        .and_then(recorded)
        .or_else(|| Some((status.token_id.clone()?, unix(&status.not_after)?, None)));
    if let Some((id, exp, bc)) = current_token {
        out.push(Target {
            binary_cache: bc.unwrap_or_else(|| spec_bc.clone()),
            token_id: id,
            exp,
            reason: "Deleted",
        });
    }
    let pending = match current {
        Some(_) => stored_pending(current),
        None => status
            .previous_tokens
            .iter()
            .filter_map(|p| {
                Some(Pending {
                    token_id: p.token_id.clone(),
                    exp: unix(&p.not_after)?,
                    revoke_at: unix(&p.revoke_at)?,
                    binary_cache: spec_bc.clone(),
                })
            })
            .collect(),
    };
    out.extend(pending.into_iter().map(|p| Target {
        binary_cache: p.binary_cache,
        token_id: p.token_id,
        exp: p.exp,
        reason: "Deleted",
    }));
    out.retain(|t| t.exp > now);
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|t| seen.insert(t.token_id.clone()));
    out
}

fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The first lines of every list the operator writes.
pub fn list_header(binary_cache: &str) -> String {
    format!(
        "# Revoked tokens of BinaryCache {binary_cache}, written by garret-operator.\n\
         # <jti> <exp>  # <namespace>/<CacheToken> <reason> <revoked at>\n"
    )
}

/// The list text after adding `adds` (revoked by CacheToken `who`, `namespace/name`) to
/// `text` at `now`: entries whose token has expired are dropped, ids already listed are not
/// repeated, foreign lines (no `exp`) are kept. Returns the text unchanged in content when
/// there is nothing to do, so the caller can skip the write.
pub fn edit_list(text: &str, binary_cache: &str, adds: &[Target], who: &str, now: i64) -> String {
    let mut entries: Vec<RevocationEntry> = parse_entries(text)
        .into_iter()
        .filter(|e| !e.expired(now))
        .collect();
    for t in adds {
        if t.exp <= now || entries.iter().any(|e| e.id == t.token_id) {
            continue;
        }
        entries.push(RevocationEntry {
            id: t.token_id.clone(),
            exp: Some(t.exp),
            comment: format!("{who} {} {}", t.reason, rfc3339(now)),
        });
    }
    let mut out = list_header(binary_cache);
    for e in entries {
        out.push_str(&e.render());
        out.push('\n');
    }
    out
}

/// The revocation list ConfigMap of `bc` as its controller creates it (see
/// `desired::config::revocations_config_map`), for the rare case a CacheToken needs it
/// first.
pub fn list_config_map(bc: &BinaryCache) -> Result<ConfigMap, InvalidSpec> {
    let name = bc.name_any();
    let mut labels = managed_by();
    labels.insert("app.kubernetes.io/name".into(), "garretd".into());
    labels.insert("app.kubernetes.io/instance".into(), name.clone());
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(Names(&name).revocations()),
            namespace: bc.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![controller_ref(bc)?]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            REVOCATION_FILE.to_string(),
            list_header(&name),
        )])),
        ..ConfigMap::default()
    })
}

/// Whether `text` has an entry that has expired at `now` (so a write would prune it).
pub fn has_expired(text: &str, now: i64) -> bool {
    parse_entries(text).iter().any(|e| e.expired(now))
}

fn time(unix: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .ok()
        .map(Time)
}

/// `status.revokedTokens` after this reconcile: the earlier ones still unexpired, then the
/// new ones (a token is listed once).
pub fn revoked_status(earlier: &[RevokedToken], adds: &[Target], now: i64) -> Vec<RevokedToken> {
    let mut out: Vec<RevokedToken> = earlier
        .iter()
        .filter(|r| unix(&r.not_after).is_none_or(|exp| exp > now))
        .cloned()
        .collect();
    for t in adds {
        if out.iter().any(|r| r.token_id == t.token_id) {
            continue;
        }
        out.push(RevokedToken {
            token_id: t.token_id.clone(),
            not_after: time(t.exp),
            revoked_at: time(now),
            reason: t.reason.to_string(),
        });
    }
    out
}

/// `status.previousTokens` for `pending`.
pub fn previous_status(pending: &[Pending]) -> Vec<PreviousToken> {
    pending
        .iter()
        .map(|p| PreviousToken {
            token_id: p.token_id.clone(),
            not_after: time(p.exp),
            revoke_at: time(p.revoke_at),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::secret::{secret_data, spec_hash, Context, SPEC_HASH_ANNOTATION};
    use crate::token::tests::{key, spec, validated};
    use garret_core::token::{MakeToken, TokenKeys};

    const NOW: i64 = 1_800_000_000;

    fn claims(request: &MakeToken) -> Claims {
        request.claims(NOW, "j".into()).expect("claims")
    }

    fn request(pull: &[&str], push: &[&str]) -> MakeToken {
        MakeToken {
            sub: "ci".into(),
            validity: Duration::from_secs(3600),
            pull: pull.iter().map(|s| s.to_string()).collect(),
            push: push.iter().map(|s| s.to_string()).collect(),
            ..MakeToken::default()
        }
    }

    #[test]
    fn narrowing_is_judged_conservatively() {
        let base = claims(&request(&["team-*"], &["team-ci"]));
        assert!(!narrows(&base, &base), "same grants");
        assert!(
            !narrows(
                &base,
                &claims(&request(&["team-*"], &["team-ci", "team-*"]))
            ),
            "push added on an existing pattern"
        );
        assert!(
            narrows(&base, &claims(&request(&["team-*"], &[]))),
            "push removed"
        );
        assert!(
            narrows(&base, &claims(&request(&["team-a"], &["team-ci"]))),
            "pattern replaced by a narrower one"
        );
        assert!(
            narrows(
                &base,
                &claims(&request(&["team-x", "team-*"], &["team-ci"]))
            ),
            "an added pattern with fewer rights may shadow"
        );
        let two = claims(&request(&["a-*", "b-*"], &[]));
        assert!(
            narrows(&two, &claims(&request(&["b-*", "a-*"], &[]))),
            "reordered: first match changes"
        );
        let pull_only = claims(&request(&["team-*"], &[]));
        assert!(
            !narrows(&pull_only, &claims(&request(&["team-*", "oss"], &[]))),
            "an added pattern as broad as every old one"
        );
    }

    fn verifier() -> Verifier {
        Verifier::from_keys(TokenKeys::new(key()).expect("keys"), None, None)
    }

    /// A Secret holding a token minted at `at` for `s`, annotated as the controller does.
    fn issued(s: &CacheTokenSpec, at: i64) -> Secret {
        let v = validated(s);
        let claims = v.request.claims(at, "old-jti".into()).expect("claims");
        let token = garret_core::token::mint(&claims, key()).expect("mint");
        Secret {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([
                    (SPEC_HASH_ANNOTATION.to_string(), spec_hash(s)),
                    (TOKEN_ID_ANNOTATION.to_string(), "old-jti".to_string()),
                    (
                        EXPIRES_ANNOTATION.to_string(),
                        claims.exp.unwrap_or_default().to_string(),
                    ),
                    (
                        BINARY_CACHE_ANNOTATION.to_string(),
                        s.binary_cache_ref.name.clone(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(secret_data(
                &v,
                &token,
                Context {
                    endpoint: "http://main.ns.svc/",
                    caches: &[],
                },
            )),
            ..Secret::default()
        }
    }

    #[test]
    fn the_fate_of_a_replaced_token() {
        let s = spec(); // validity 3h, pull team-*, push team-ci
        let old = issued(&s, NOW);
        let exp = NOW + 3 * 3600;
        let at = NOW + 2 * 3600; // renewal due
        let vf = verifier();

        // routine renewal: grace period (1 h by default) … but it expires at +1h anyway
        assert_eq!(
            replaced(&validated(&s), &Reason::RenewalDue, Some(&old), &vf, at),
            None
        );
        let mut short = s.clone();
        short.previous_token_grace_period = Some("10m".into());
        assert_eq!(
            replaced(&validated(&short), &Reason::RenewalDue, Some(&old), &vf, at),
            Some(Fate::Grace(Pending {
                token_id: "old-jti".into(),
                exp,
                revoke_at: at + 600,
                binary_cache: "main".into()
            }))
        );
        short.previous_token_grace_period = Some("0s".into());
        let now_fate = |reason| {
            Some(Fate::Now(Target {
                binary_cache: "main".into(),
                token_id: "old-jti".into(),
                exp,
                reason,
            }))
        };
        assert_eq!(
            replaced(&validated(&short), &Reason::RenewalDue, Some(&old), &vf, at),
            now_fate("Renewed")
        );

        let mut renamed = short.clone();
        renamed.subject = "someone-else".into();
        assert_eq!(
            replaced(
                &validated(&renamed),
                &Reason::SpecChanged,
                Some(&old),
                &vf,
                NOW + 60
            ),
            now_fate("SubjectChanged")
        );
        let mut narrowed = s.clone();
        narrowed.permissions.push.clear();
        assert_eq!(
            replaced(
                &validated(&narrowed),
                &Reason::SpecChanged,
                Some(&old),
                &vf,
                NOW + 60
            ),
            now_fate("PermissionsNarrowed")
        );
        let mut widened = s.clone();
        widened.permissions.delete = vec!["team-ci".into()];
        widened.previous_token_grace_period = Some("5m".into());
        assert!(matches!(
            replaced(&validated(&widened), &Reason::SpecChanged, Some(&old), &vf, NOW + 60),
            Some(Fate::Grace(Pending { revoke_at, .. })) if revoke_at == NOW + 60 + 300
        ));

        let mut moved = s.clone();
        moved.binary_cache_ref.name = "other".into();
        assert_eq!(
            replaced(
                &validated(&moved),
                &Reason::SecretInvalid("other key".into()),
                Some(&old),
                &vf,
                NOW + 60
            ),
            Some(Fate::Now(Target {
                binary_cache: "main".into(),
                token_id: "old-jti".into(),
                exp,
                reason: "BinaryCacheChanged"
            }))
        );

        for r in [
            Reason::Expired,
            Reason::SecretMissing,
            Reason::SecretInvalid("x".into()),
        ] {
            assert_eq!(
                replaced(&validated(&renamed), &r, Some(&old), &vf, NOW + 60),
                None
            );
        }
        assert_eq!(
            replaced(&validated(&renamed), &Reason::SpecChanged, None, &vf, NOW),
            None
        );
    }

    #[test]
    fn plan_moves_due_tokens_to_the_list() {
        let p = |id: &str, exp, revoke_at| Pending {
            token_id: id.into(),
            exp,
            revoke_at,
            binary_cache: "main".into(),
        };
        let stored = vec![
            p("due", 500, 100),
            p("waiting", 500, 300),
            p("gone", 150, 100),
        ];
        let plan = plan(stored, Some(Fate::Grace(p("new", 900, 400))), 200);
        assert_eq!(
            plan.pending,
            vec![p("waiting", 500, 300), p("new", 900, 400)]
        );
        assert_eq!(
            plan.revoke,
            vec![Target {
                binary_cache: "main".into(),
                token_id: "due".into(),
                exp: 500,
                reason: "Renewed"
            }]
        );
        assert_eq!(next_due(&plan.pending), Some(300));
    }

    #[test]
    fn the_list_is_edited_and_pruned() {
        let t = |id: &str, exp| Target {
            binary_cache: "main".into(),
            token_id: id.into(),
            exp,
            reason: "Deleted",
        };
        let start = list_header("main");
        let one = edit_list(&start, "main", &[t("a", 2000), t("old", 50)], "ns/ci", 100);
        assert_eq!(
            one,
            format!("{start}a 2000  # ns/ci Deleted 1970-01-01T00:01:40Z\n"),
            "expired tokens are never added"
        );
        let two = edit_list(
            &format!("{one}sub:mallory\n"),
            "main",
            &[t("a", 2000), t("b", 3000)],
            "ns/x",
            1000,
        );
        let ids: Vec<String> = parse_entries(&two).into_iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            ["a", "sub:mallory", "b"],
            "no duplicates; foreign lines kept"
        );
        assert!(!has_expired(&two, 1999) && has_expired(&two, 2000));
        let pruned = edit_list(&two, "main", &[], "", 2500);
        let ids: Vec<String> = parse_entries(&pruned).into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["sub:mallory", "b"]);
        let list = garret_core::token::RevocationList::parse(&two);
        assert_eq!(list.len(), 3, "garretd reads what the operator writes");
    }

    #[test]
    fn deletion_revokes_current_and_pending() {
        let s = spec();
        let mut ct = crate::token::tests::cache_token(&s);
        let mut secret = issued(&s, NOW);
        let pending = vec![Pending {
            token_id: "prev".into(),
            exp: NOW + 100,
            revoke_at: NOW + 50,
            binary_cache: "main".into(),
        }];
        secret.metadata.annotations.get_or_insert_default().insert(
            PREVIOUS_TOKENS_ANNOTATION.into(),
            serde_json::to_string(&pending).expect("json"),
        );
        let ids = |ts: Vec<Target>| ts.into_iter().map(|t| t.token_id).collect::<Vec<_>>();
        assert_eq!(ids(on_delete(&ct, Some(&secret), NOW)), ["old-jti", "prev"]);
        assert_eq!(ids(on_delete(&ct, Some(&secret), NOW + 200)), ["old-jti"]);
        // no Secret: status is the record
        ct.status = Some(crate::types::CacheTokenStatus {
            token_id: Some("from-status".into()),
            not_after: time(NOW + 10),
            ..Default::default()
        });
        assert_eq!(ids(on_delete(&ct, None, NOW)), ["from-status"]);
        assert!(on_delete(&ct, None, NOW + 10).is_empty());
    }

    #[test]
    fn status_lists_revocations_until_expiry() {
        let t = |id: &str, exp| Target {
            binary_cache: "main".into(),
            token_id: id.into(),
            exp,
            reason: "Renewed",
        };
        let one = revoked_status(&[], &[t("a", 200)], 100);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].revoked_at, time(100));
        let two = revoked_status(&one, &[t("a", 200), t("b", 300)], 150);
        assert_eq!(two.len(), 2);
        assert_eq!(revoked_status(&two, &[], 250).len(), 1);
        assert!(grace_period(&spec()).is_ok_and(|g| g == DEFAULT_GRACE_PERIOD));
        let mut bad = spec();
        bad.previous_token_grace_period = Some("soon".into());
        assert!(grace_period(&bad).is_err());
    }
}
