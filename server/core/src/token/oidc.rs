//! Identity tokens from trusted OIDC issuers (a Kubernetes cluster's ServiceAccount issuer,
//! GitHub Actions, any provider with a JWKS), accepted directly as bearer tokens.
//!
//! Such a token carries no Attic permissions of its own (an Attic claim inside it is ignored:
//! the issuer is trusted to say who the caller is, never what it may do). What it may do comes
//! from the grants configured for its issuer, a pure function of its claims
//! ([`grants_for`]). The result is an ordinary [`Claims`], so the rest of the server
//! (permission checks, revocation by `jti`/`sub`, the verified-token cache) is unchanged.
//!
//! Verification is strict: `alg` must be RS256 or ES256 *and* match the key named by a
//! mandatory `kid`; `iss` must equal the configured issuer; `aud` must include a configured
//! audience; `exp` is required and exact; `nbf`/`iat` get the configured leeway.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::verify::typ_is_acceptable;
use super::{Audience, CachePattern, Claims, Error, Permission, Rejection, Result};

/// Longest accepted encoded header, as for Attic tokens.
const MAX_HEADER_LEN: usize = 8192;
/// Smallest RSA modulus accepted in a JWKS.
const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus ring verifies.
const RSA_MAX_BITS: usize = 8192;
/// Most keys one JWKS may hold; real issuers publish a handful.
const MAX_KEYS: usize = 64;

/// The signature algorithms accepted from identity providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rs256,
    Es256,
}

impl KeyAlgorithm {
    fn from_alg(alg: &str) -> Option<Self> {
        match alg {
            "RS256" => Some(KeyAlgorithm::Rs256),
            "ES256" => Some(KeyAlgorithm::Es256),
            _ => None,
        }
    }

    fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            KeyAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

#[derive(Clone)]
struct JwkKey {
    algorithm: KeyAlgorithm,
    decoding: DecodingKey,
}

/// A parsed JSON Web Key Set: signing keys by `kid`.
#[derive(Clone, Default)]
pub struct Jwks {
    keys: HashMap<String, JwkKey>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Jwks").field("kids", &kids).finish()
    }
}

/// One member of `keys`, only the fields we act on.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

fn jwks_error(msg: impl Into<String>) -> Error {
    Error::InvalidJwks(msg.into())
}

fn b64_field(value: Option<&str>, what: &str, kid: &str) -> Result<Vec<u8>> {
    let text = value.ok_or_else(|| jwks_error(format!("key {kid:?} has no {what:?}")))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| jwks_error(format!("key {kid:?}: {what:?} is not base64url")))
}

impl Jwks {
    /// Parse a JWKS document (RFC 7517). Keys for encryption (`use` other than `sig`) and key
    /// types we do not verify (e.g. `OKP`) are skipped; a signing key of a supported type
    /// that is malformed, lacks a `kid`, repeats one, or is too weak fails the whole set, so a
    /// broken file is noticed instead of silently dropping a key. A set with no usable key
    /// is an error too.
    pub fn parse(json: &[u8]) -> Result<Jwks> {
        let raw: RawJwks = serde_json::from_slice(json)
            .map_err(|e| jwks_error(format!("not a JWKS document: {e}")))?;
        if raw.keys.len() > MAX_KEYS {
            return Err(jwks_error(format!(
                "{} keys, at most {MAX_KEYS} accepted",
                raw.keys.len()
            )));
        }
        let mut keys = HashMap::new();
        for value in raw.keys {
            let jwk: RawJwk = serde_json::from_value(value)
                .map_err(|e| jwks_error(format!("malformed key: {e}")))?;
            if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let Some(parsed) = Self::parse_key(&jwk)? else {
                continue;
            };
            let kid = jwk
                .kid
                .filter(|k| !k.is_empty())
                .ok_or_else(|| jwks_error(format!("a {} key has no \"kid\"", jwk.kty)))?;
            if keys.insert(kid.clone(), parsed).is_some() {
                return Err(jwks_error(format!("kid {kid:?} appears twice")));
            }
        }
        if keys.is_empty() {
            return Err(jwks_error("no RS256 or ES256 signing key"));
        }
        Ok(Jwks { keys })
    }

    /// `None` for a key type this verifier does not use.
    fn parse_key(jwk: &RawJwk) -> Result<Option<JwkKey>> {
        let kid = jwk.kid.as_deref().unwrap_or("");
        let declared = match jwk.alg.as_deref() {
            None => None,
            Some(alg) => match KeyAlgorithm::from_alg(alg) {
                Some(a) => Some(a),
                // A key pinned to an algorithm we never accept can never verify a token here.
                None => return Ok(None),
            },
        };
        let (algorithm, decoding) = match jwk.kty.as_str() {
            "RSA" => {
                let n = b64_field(jwk.n.as_deref(), "n", kid)?;
                let e = b64_field(jwk.e.as_deref(), "e", kid)?;
                let n_trimmed = strip_leading_zeros(&n);
                let bits = n_trimmed.len() * 8;
                if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                    return Err(jwks_error(format!(
                        "key {kid:?}: RSA modulus of {bits} bits (accepted: {RSA_MIN_BITS}..={RSA_MAX_BITS})"
                    )));
                }
                let e_trimmed = strip_leading_zeros(&e);
                if e_trimmed.is_empty() || e_trimmed.len() > 4 {
                    return Err(jwks_error(format!("key {kid:?}: bad RSA exponent")));
                }
                (
                    KeyAlgorithm::Rs256,
                    DecodingKey::from_rsa_raw_components(n_trimmed, e_trimmed),
                )
            }
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Ok(None);
                }
                let x = b64_field(jwk.x.as_deref(), "x", kid)?;
                let y = b64_field(jwk.y.as_deref(), "y", kid)?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(jwks_error(format!(
                        "key {kid:?}: P-256 coordinates must be 32 bytes"
                    )));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                // An off-curve point is refused by ring at verification (a bad signature).
                (KeyAlgorithm::Es256, DecodingKey::from_ec_der(&point))
            }
            _ => return Ok(None),
        };
        if declared.is_some_and(|d| d != algorithm) {
            return Err(jwks_error(format!(
                "key {kid:?}: \"alg\" does not fit its \"kty\""
            )));
        }
        Ok(Some(JwkKey {
            algorithm,
            decoding,
        }))
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set has a key with this id.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// Parse a grant's permission: a string of `r` (pull), `w` (push) and `d` (delete), e.g.
/// `"rw"`. Cache creation and configuration are deliberately not grantable to identities.
pub fn parse_permission(letters: &str) -> Result<Permission> {
    let mut perm = Permission::none();
    for c in letters.chars() {
        match c {
            'r' => perm.pull = true,
            'w' => perm.push = true,
            'd' => perm.delete = true,
            _ => {
                return Err(Error::InvalidGrant(format!(
                    "permission {letters:?}: only r (pull), w (push) and d (delete) can be granted"
                )))
            }
        }
    }
    if perm.is_empty() {
        return Err(Error::InvalidGrant(
            "an empty permission grants nothing".into(),
        ));
    }
    Ok(perm)
}

/// One claim condition: the claim named `claim` (a top-level name such as `sub` or
/// `repository`, or a JSON pointer such as `/kubernetes.io/namespace`) must be a string
/// matching `pattern` (`*` stands for any run of characters), or an array holding one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMatch {
    claim: String,
    pattern: String,
}

impl ClaimMatch {
    fn holds(&self, claims: &Map<String, Value>) -> bool {
        let value = match self.claim.strip_prefix('/') {
            // A JSON pointer: its first segment names the top-level claim.
            Some(pointer) => {
                let (first, rest) = pointer.split_once('/').unwrap_or((pointer, ""));
                let top = claims.get(&unescape_pointer(first));
                if rest.is_empty() {
                    top
                } else {
                    top.and_then(|v| v.pointer(&format!("/{rest}")))
                }
            }
            None => claims.get(&self.claim),
        };
        let matches = |s: &str| super::pattern::glob_match(self.pattern.as_bytes(), s.as_bytes());
        match value {
            Some(Value::String(s)) => matches(s),
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str().is_some_and(matches)),
            _ => false,
        }
    }
}

/// RFC 6901 escapes of one pointer segment.
fn unescape_pointer(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// A rule: when every condition holds, the token gets these cache permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    conditions: Vec<ClaimMatch>,
    caches: Vec<(CachePattern, Permission)>,
}

impl Grant {
    /// Validate a grant. At least one condition is required: a grant that matches every
    /// token of an issuer is almost always a mistake (for a public issuer like GitHub's, it
    /// would let every repository in the world push).
    pub fn new(
        conditions: impl IntoIterator<Item = (String, String)>,
        caches: impl IntoIterator<Item = (String, Permission)>,
    ) -> Result<Grant> {
        let conditions: Vec<ClaimMatch> = conditions
            .into_iter()
            .map(|(claim, pattern)| ClaimMatch { claim, pattern })
            .collect();
        if conditions.is_empty() {
            return Err(Error::InvalidGrant(
                "a grant needs at least one claim in `match`".into(),
            ));
        }
        if let Some(c) = conditions.iter().find(|c| c.claim.is_empty()) {
            return Err(Error::InvalidGrant(format!(
                "empty claim name in `match` ({:?})",
                c.pattern
            )));
        }
        let caches = caches
            .into_iter()
            .map(|(p, perm)| Ok((CachePattern::parse(&p)?, perm)))
            .collect::<Result<Vec<_>>>()?;
        if caches.is_empty() {
            return Err(Error::InvalidGrant(
                "a grant needs at least one cache".into(),
            ));
        }
        Ok(Grant { conditions, caches })
    }

    /// Whether every condition holds for these (verified) claims.
    pub fn applies_to(&self, claims: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|c| c.holds(claims))
    }
}

/// The cache permissions a verified identity token gets from `grants`: the caches of every
/// grant whose conditions hold. Permissions for the same pattern are united; the list is
/// ordered most specific first (literal names, then longer patterns before shorter), so with
/// Attic's first-match resolution `team-ci-*` = `rw` beside `team-*` = `r` gives push on
/// `team-ci-x` and pull only on `team-x`, whatever order the grants were written in.
pub fn grants_for(
    claims: &Map<String, Value>,
    grants: &[Grant],
) -> Vec<(CachePattern, Permission)> {
    let mut merged: BTreeMap<CachePattern, Permission> = BTreeMap::new();
    for grant in grants.iter().filter(|g| g.applies_to(claims)) {
        for (pattern, perm) in &grant.caches {
            let entry = merged
                .entry(pattern.clone())
                .or_insert_with(Permission::none);
            *entry = entry.union(*perm);
        }
    }
    let mut list: Vec<(CachePattern, Permission)> = merged.into_iter().collect();
    list.sort_by(|(a, _), (b, _)| {
        b.is_literal()
            .cmp(&a.is_literal())
            .then(b.as_str().len().cmp(&a.as_str().len()))
            .then(a.as_str().cmp(b.as_str()))
    });
    list
}

/// A trusted issuer: who it is, which audiences we answer to, its keys and its grants.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: Arc<Jwks>,
    pub grants: Vec<Grant>,
}

/// Verifies identity tokens of the configured issuers.
#[derive(Debug, Clone, Default)]
pub struct OidcVerifier {
    issuers: Vec<Issuer>,
    leeway: i64,
}

#[derive(Deserialize)]
struct OidcHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Only `iss`, read before the signature is checked, to pick the issuer's keys.
#[derive(Deserialize)]
struct IssuerPeek {
    #[serde(default)]
    iss: Option<Value>,
}

impl OidcVerifier {
    /// `leeway`: seconds of clock skew allowed on `nbf` and `iat` (not on `exp`).
    pub fn new(issuers: Vec<Issuer>, leeway: u64) -> Self {
        OidcVerifier {
            issuers,
            leeway: i64::try_from(leeway).unwrap_or(i64::MAX),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn issuers(&self) -> &[Issuer] {
        &self.issuers
    }

    /// `None` when `token` does not name one of the configured issuers: it is then not ours
    /// to judge (the caller tries Attic's own key, which refuses a foreign token like any
    /// bad one). Otherwise the strict verdict.
    pub fn verify(&self, token: &str, now: i64) -> Option<std::result::Result<Claims, Rejection>> {
        if self.issuers.is_empty() {
            return None;
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let payload = URL_SAFE_NO_PAD.decode(payload_b64).ok()?;
        let peek: IssuerPeek = serde_json::from_slice(&payload).ok()?;
        let iss = peek.iss?;
        let iss = iss.as_str()?;
        let issuer = self.issuers.iter().find(|i| i.issuer == iss)?;
        Some(self.verify_for(
            issuer,
            token,
            header_b64,
            (payload_b64.len(), &payload),
            signature_b64,
            now,
        ))
    }

    fn verify_for(
        &self,
        issuer: &Issuer,
        token: &str,
        header_b64: &str,
        (payload_b64_len, payload): (usize, &[u8]),
        signature_b64: &str,
        now: i64,
    ) -> std::result::Result<Claims, Rejection> {
        if header_b64.len() > MAX_HEADER_LEN {
            return Err(Rejection::Malformed);
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| Rejection::Malformed)?;
        let header: OidcHeader =
            serde_json::from_slice(&header_json).map_err(|_| Rejection::Malformed)?;
        let alg = KeyAlgorithm::from_alg(&header.alg).ok_or(Rejection::WrongAlgorithm)?;
        if header.typ.as_deref().is_some_and(|t| !typ_is_acceptable(t)) || header.crit.is_some() {
            return Err(Rejection::Malformed);
        }
        let kid = header.kid.ok_or(Rejection::UnknownKey)?;
        let key = issuer.jwks.keys.get(&kid).ok_or(Rejection::UnknownKey)?;
        // The key decides the algorithm: an ES256 kid named in an RS256 header (or the
        // reverse) is refused before any cryptography.
        if key.algorithm != alg {
            return Err(Rejection::WrongAlgorithm);
        }
        if URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
            return Err(Rejection::Malformed);
        }
        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64_len];
        let ok =
            jsonwebtoken::crypto::verify(signature_b64, signing_input, &key.decoding, alg.to_jwt())
                .map_err(|_| Rejection::BadSignature)?;
        if !ok {
            return Err(Rejection::BadSignature);
        }

        let Value::Object(map) =
            serde_json::from_slice(payload).map_err(|e| Rejection::InvalidClaims(e.to_string()))?
        else {
            return Err(Rejection::InvalidClaims(
                "claims are not a JSON object".into(),
            ));
        };
        let claims = standard_claims(&map, grants_for(&map, &issuer.grants))?;
        if claims.iss.as_deref() != Some(issuer.issuer.as_str()) {
            return Err(Rejection::WrongIssuer);
        }
        self.check_time(&claims, now)?;
        let aud_ok = claims
            .aud
            .as_ref()
            .is_some_and(|aud| aud.intersects(&issuer.audiences));
        if !aud_ok {
            return Err(Rejection::WrongAudience);
        }
        Ok(claims)
    }

    fn check_time(&self, claims: &Claims, now: i64) -> std::result::Result<(), Rejection> {
        match claims.exp {
            None => {
                return Err(Rejection::InvalidClaims(
                    "identity tokens need an exp".into(),
                ))
            }
            Some(exp) if exp < now => return Err(Rejection::Expired),
            Some(_) => {}
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.saturating_sub(self.leeway) > now)
        {
            return Err(Rejection::NotYetValid);
        }
        if claims
            .iat
            .is_some_and(|iat| iat.saturating_sub(self.leeway) > now)
        {
            return Err(Rejection::IssuedInFuture);
        }
        Ok(())
    }
}

fn string_claim(
    map: &Map<String, Value>,
    name: &str,
) -> std::result::Result<Option<String>, Rejection> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Rejection::InvalidClaims(format!("{name} is not a string"))),
    }
}

/// A NumericDate: integers as they are, fractions truncated, out-of-range refused.
fn time_claim(map: &Map<String, Value>, name: &str) -> std::result::Result<Option<i64>, Rejection> {
    let bad = || Rejection::InvalidClaims(format!("{name} is not a number of seconds"));
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            let f = n.as_f64().ok_or_else(bad)?.trunc();
            const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
            if (-TWO_POW_63..TWO_POW_63).contains(&f) {
                Ok(Some(f as i64))
            } else {
                Err(bad())
            }
        }
        Some(_) => Err(bad()),
    }
}

fn standard_claims(
    map: &Map<String, Value>,
    caches: Vec<(CachePattern, Permission)>,
) -> std::result::Result<Claims, Rejection> {
    let aud = match map.get("aud") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            Audience::deserialize(v).map_err(|e| Rejection::InvalidClaims(format!("aud: {e}")))?,
        ),
    };
    Ok(Claims {
        sub: string_claim(map, "sub")?,
        exp: time_claim(map, "exp")?,
        nbf: time_claim(map, "nbf")?,
        iat: time_claim(map, "iat")?,
        iss: string_claim(map, "iss")?,
        aud,
        jti: string_claim(map, "jti")?,
        caches,
        // Server-wide rights are never granted to identities.
        ..Claims::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rw() -> Permission {
        parse_permission("rw").unwrap()
    }

    fn r() -> Permission {
        parse_permission("r").unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn grant(conds: &[(&str, &str)], caches: &[(&str, Permission)]) -> Grant {
        Grant::new(
            conds.iter().map(|(a, b)| (a.to_string(), b.to_string())),
            caches.iter().map(|(a, p)| (a.to_string(), *p)),
        )
        .unwrap()
    }

    fn k8s_claims(ns: &str, sa: &str) -> Map<String, Value> {
        obj(json!({
            "iss": "https://kubernetes.default.svc",
            "sub": format!("system:serviceaccount:{ns}:{sa}"),
            "aud": ["garret.dev/default/main"],
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u-1"}},
        }))
    }

    #[test]
    fn permission_letters() {
        assert_eq!(
            parse_permission("rwd").unwrap(),
            Permission {
                pull: true,
                push: true,
                delete: true,
                ..Permission::none()
            }
        );
        assert!(parse_permission("r").unwrap().pull);
        for bad in ["", "x", "rwx", "cc", "R"] {
            assert!(
                matches!(parse_permission(bad), Err(Error::InvalidGrant(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn grant_needs_conditions_and_caches() {
        assert!(Grant::new(Vec::new(), vec![("x".to_string(), rw())]).is_err());
        assert!(Grant::new(vec![("sub".into(), "a".into())], Vec::new()).is_err());
        assert!(Grant::new(vec![(String::new(), "a".into())], vec![("x".into(), rw())]).is_err());
        assert!(matches!(
            Grant::new(
                vec![("sub".into(), "a".into())],
                vec![("bad name".into(), rw())]
            ),
            Err(Error::InvalidPattern(_))
        ));
    }

    #[test]
    fn service_account_subject_grants_its_caches_only() {
        let grants = vec![
            grant(
                &[("sub", "system:serviceaccount:ci:pusher")],
                &[("team-*", rw())],
            ),
            grant(
                &[("sub", "system:serviceaccount:ci:reader")],
                &[("oss", r())],
            ),
        ];
        let got = grants_for(&k8s_claims("ci", "pusher"), &grants);
        assert_eq!(got, vec![(CachePattern::parse("team-*").unwrap(), rw())]);
        assert!(grants_for(&k8s_claims("ci", "other"), &grants).is_empty());
        // Same name in another namespace is another identity.
        assert!(grants_for(&k8s_claims("dev", "pusher"), &grants).is_empty());
    }

    #[test]
    fn all_conditions_must_hold() {
        let grants = vec![grant(
            &[("repository", "org/repo"), ("ref", "refs/heads/main")],
            &[("releases", rw())],
        )];
        let main = obj(json!({"repository": "org/repo", "ref": "refs/heads/main"}));
        let branch = obj(json!({"repository": "org/repo", "ref": "refs/heads/evil"}));
        let fork = obj(json!({"repository": "org/repo-fork", "ref": "refs/heads/main"}));
        let missing = obj(json!({"repository": "org/repo"}));
        assert_eq!(grants_for(&main, &grants).len(), 1);
        for c in [branch, fork, missing] {
            assert!(grants_for(&c, &grants).is_empty(), "{c:?}");
        }
    }

    #[test]
    fn globs_pointers_arrays_and_types() {
        let grants = vec![
            grant(&[("sub", "system:serviceaccount:ci:*")], &[("ci-a", r())]),
            grant(&[("/kubernetes.io/namespace", "build")], &[("ci-b", r())]),
            grant(&[("groups", "pushers")], &[("ci-c", r())]),
            grant(&[("run_number", "5")], &[("ci-d", r())]),
        ];
        let names = |c: Map<String, Value>| -> Vec<String> {
            grants_for(&c, &grants)
                .into_iter()
                .map(|(p, _)| p.as_str().to_string())
                .collect()
        };
        assert_eq!(names(k8s_claims("ci", "x")), ["ci-a"]);
        assert_eq!(names(k8s_claims("build", "x")), ["ci-b"]);
        assert_eq!(names(obj(json!({"groups": ["a", "pushers"]}))), ["ci-c"]);
        // Non-string claims never match, even if they print the same.
        assert!(names(obj(json!({"run_number": 5, "groups": [1]}))).is_empty());
        // A glob does not let a claim "contain" the pattern.
        assert!(names(obj(json!({"sub": "x-system:serviceaccount:ci:y"}))).is_empty());
    }

    #[test]
    fn grants_unite_per_pattern_and_order_most_specific_first() {
        let grants = vec![
            grant(&[("sub", "s")], &[("team-*", r())]),
            grant(&[("sub", "s")], &[("team-ci-*", rw())]),
            grant(
                &[("sub", "s")],
                &[("team-*", parse_permission("d").unwrap())],
            ),
            grant(&[("sub", "s")], &[("team-exact", r())]),
        ];
        let got = grants_for(&obj(json!({"sub": "s"})), &grants);
        let claims = Claims {
            caches: got.clone(),
            ..Claims::default()
        };
        assert_eq!(got[0].0.as_str(), "team-exact");
        assert_eq!(got[1].0.as_str(), "team-ci-*");
        let team_x = claims.permission_for("team-x");
        assert!(team_x.pull && team_x.delete && !team_x.push);
        let team_ci = claims.permission_for("team-ci-1");
        assert!(team_ci.pull && team_ci.push && !team_ci.delete);
        assert!(claims.permission_for("other").is_empty());
        // Written in the reverse order, the outcome is the same.
        let mut reversed = grants.clone();
        reversed.reverse();
        assert_eq!(grants_for(&obj(json!({"sub": "s"})), &reversed), got);
    }

    #[test]
    fn jwks_parse_rules() {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let public =
            rsa::RsaPublicKey::from_public_key_pem(super::super::testkeys::KEY_A_PUBLIC_SPKI)
                .unwrap();
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let rsa_key = |kid: &str| json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e});
        let ok = json!({"keys": [rsa_key("a"), rsa_key("b"),
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": e},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": e}]});
        let jwks = Jwks::parse(ok.to_string().as_bytes()).unwrap();
        assert_eq!(jwks.len(), 2);
        assert!(jwks.contains("a") && jwks.contains("b") && !jwks.contains("enc"));

        let small_n = URL_SAFE_NO_PAD.encode([0xffu8; 128]);
        let bad: Vec<Value> = vec![
            json!("not an object"),
            json!({"keys": "x"}),
            json!({"keys": []}),
            json!({"keys": [{"kty": "OKP", "kid": "x", "crv": "Ed25519", "x": "AA"}]}),
            json!({"keys": [rsa_key("a"), rsa_key("a")]}),
            json!({"keys": [{"kty": "RSA", "n": n, "e": e}]}),
            json!({"keys": [{"kty": "RSA", "kid": "a", "n": "!!", "e": e}]}),
            json!({"keys": [{"kty": "RSA", "kid": "a", "e": e}]}),
            json!({"keys": [{"kty": "RSA", "kid": "a", "n": small_n, "e": e}]}),
            json!({"keys": [{"kty": "RSA", "kid": "a", "alg": "ES256", "n": n, "e": e}]}),
            json!({"keys": [{"kty": "EC", "kid": "a", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]}),
            json!({"keys": [{"kty": 5}]}),
        ];
        for doc in bad {
            assert!(
                matches!(
                    Jwks::parse(doc.to_string().as_bytes()),
                    Err(Error::InvalidJwks(_))
                ),
                "{doc}"
            );
        }
        assert!(Jwks::parse(b"{").is_err());
    }

    #[test]
    fn foreign_issuer_is_not_ours_to_judge() {
        let v = OidcVerifier::new(
            vec![Issuer {
                issuer: "https://k8s".into(),
                audiences: vec!["a".into()],
                jwks: Arc::new(Jwks::default()),
                grants: Vec::new(),
            }],
            60,
        );
        let payload = |p: Value| {
            format!(
                "{}.{}.sig",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#),
                URL_SAFE_NO_PAD.encode(p.to_string())
            )
        };
        assert!(v
            .verify(&payload(json!({"iss": "https://other"})), 0)
            .is_none());
        assert!(v.verify(&payload(json!({"sub": "x"})), 0).is_none());
        assert!(v.verify(&payload(json!({"iss": 5})), 0).is_none());
        assert!(v.verify("garbage", 0).is_none());
        assert_eq!(
            v.verify(&payload(json!({"iss": "https://k8s"})), 0),
            Some(Err(Rejection::UnknownKey))
        );
        assert!(OidcVerifier::default()
            .verify(&payload(json!({"iss": "https://k8s"})), 0)
            .is_none());
    }
}
