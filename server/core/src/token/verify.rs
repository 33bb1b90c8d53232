//! Token verification (spec §3.2).
//!
//! The compact JWS is taken apart here rather than by `jsonwebtoken::decode`, so header rules
//! (exact `alg`, `typ`, size limit) and time checks against a caller-supplied clock are ours and
//! deterministic; jsonwebtoken only does the cryptographic signature check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use super::{Claims, Result, SigningKey, TokenKeys};

/// Longest accepted encoded header, per Attic.
const MAX_HEADER_LEN: usize = 8192;

/// Why a token was refused. The `Display` text is safe to return in a 401 body: it never echoes
/// token contents beyond what the caller sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed token")]
    Malformed,
    #[error("token is signed with an unexpected algorithm")]
    WrongAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    /// An identity token whose `kid` is missing or not in its issuer's key set.
    #[error("token signing key is not known")]
    UnknownKey,
    #[error("invalid token claims: {0}")]
    InvalidClaims(String),
    #[error("token has been revoked")]
    Revoked,
}

/// Only the header members we act on. `alg` is mandatory; unknown members are ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    /// We implement no JWS extensions, so any "critical" extension must be refused (RFC 7515
    /// §4.1.11). Attic never emits it.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Verifies tokens against one key and the configured issuer/audience bindings.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: TokenKeys,
    bound_issuer: Option<String>,
    bound_audiences: Option<Vec<String>>,
    /// Clock-skew allowance in seconds for `nbf` and `iat`.
    leeway: i64,
}

impl Rejection {
    /// Whether the verdict depends on the time of the check (`exp`, `nbf`, `iat`): the same
    /// token may be accepted a moment later (or, for `exp`, after a clock correction), so
    /// such a verdict must not be remembered.
    pub fn is_time_dependent(&self) -> bool {
        matches!(
            self,
            Rejection::Expired | Rejection::NotYetValid | Rejection::IssuedInFuture
        )
    }
}

impl Verifier {
    /// Prepare a verifier; key parsing happens here, once.
    ///
    /// `bound_audiences = Some(vec![])` accepts no token at all, as in Attic: the set is
    /// configured, and nothing can intersect it.
    pub fn new(
        key: SigningKey,
        bound_issuer: Option<String>,
        bound_audiences: Option<Vec<String>>,
    ) -> Result<Self> {
        Ok(Self::from_keys(
            TokenKeys::new(&key)?,
            bound_issuer,
            bound_audiences,
        ))
    }

    /// Build from already-prepared keys (e.g. shared with a minting path).
    pub fn from_keys(
        keys: TokenKeys,
        bound_issuer: Option<String>,
        bound_audiences: Option<Vec<String>>,
    ) -> Self {
        Verifier {
            keys,
            bound_issuer,
            bound_audiences,
            leeway: 0,
        }
    }

    /// Allow `secs` seconds of clock skew between the token's issuer and us on the
    /// not-before side: a token is accepted from `nbf - secs` (and `iat - secs`), so one
    /// minted on a slightly fast clock works at once. `exp` stays exact: a token never
    /// outlives the validity it was given. The default is no leeway.
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = i64::try_from(secs).unwrap_or(i64::MAX);
        self
    }

    pub fn leeway(&self) -> u64 {
        self.leeway.unsigned_abs()
    }

    /// The prepared keys, for callers that also mint.
    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    pub fn bound_issuer(&self) -> Option<&str> {
        self.bound_issuer.as_deref()
    }

    pub fn bound_audiences(&self) -> Option<&[String]> {
        self.bound_audiences.as_deref()
    }

    /// Check `token` and return its claims. `now_unix` is the current time in seconds; time
    /// claims are compared with the configured leeway (none by default).
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, Rejection> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed);
        };
        if header_b64.len() > MAX_HEADER_LEN {
            return Err(Rejection::Malformed);
        }

        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| Rejection::Malformed)?;
        let header: Header =
            serde_json::from_slice(&header_json).map_err(|_| Rejection::Malformed)?;
        // Exact match only: this is what stops `none` and HS256-with-the-RSA-public-key.
        if header.alg != self.keys.algorithm().as_str() {
            return Err(Rejection::WrongAlgorithm);
        }
        if let Some(typ) = &header.typ {
            if !typ_is_acceptable(typ) {
                return Err(Rejection::Malformed);
            }
        }
        if header.crit.is_some() {
            return Err(Rejection::Malformed);
        }

        // A signature that is not even base64url is a structural fault, not a wrong key.
        if URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
            return Err(Rejection::Malformed);
        }

        // Nothing from the payload is looked at before the signature checks out.
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = &token.as_bytes()[..signing_input_len];
        let signature_ok = jsonwebtoken::crypto::verify(
            signature_b64,
            signing_input,
            self.keys.decoding(),
            self.keys.algorithm().to_jwt(),
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => Rejection::Malformed,
            _ => Rejection::BadSignature,
        })?;
        if !signature_ok {
            return Err(Rejection::BadSignature);
        }

        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| Rejection::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| Rejection::InvalidClaims(e.to_string()))?;

        self.check_claims(&claims, now_unix)?;
        Ok(claims)
    }

    /// The time claims alone, at `now` (with the leeway): for re-checking claims that were
    /// verified earlier.
    pub fn check_time(&self, claims: &Claims, now: i64) -> Result<(), Rejection> {
        let leeway = self.leeway;
        if claims.exp.is_some_and(|exp| exp < now) {
            return Err(Rejection::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf.saturating_sub(leeway) > now)
        {
            return Err(Rejection::NotYetValid);
        }
        if claims
            .iat
            .is_some_and(|iat| iat.saturating_sub(leeway) > now)
        {
            return Err(Rejection::IssuedInFuture);
        }
        Ok(())
    }

    fn check_claims(&self, claims: &Claims, now: i64) -> Result<(), Rejection> {
        self.check_time(claims, now)?;
        if let Some(expected) = &self.bound_issuer {
            if claims.iss.as_deref() != Some(expected.as_str()) {
                return Err(Rejection::WrongIssuer);
            }
        }
        if let Some(accepted) = &self.bound_audiences {
            let ok = claims
                .aud
                .as_ref()
                .is_some_and(|aud| aud.intersects(accepted));
            if !ok {
                return Err(Rejection::WrongAudience);
            }
        }
        Ok(())
    }
}

/// `JWT` in any case, or a media type ending in `+JWT` (e.g. `at+jwt`).
pub(super) fn typ_is_acceptable(typ: &str) -> bool {
    if typ.eq_ignore_ascii_case("JWT") {
        return true;
    }
    let len = typ.len();
    len > 4
        && typ
            .get(len - 4..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case("+JWT"))
}

#[cfg(test)]
mod tests {
    use super::super::testkeys::*;
    use super::super::{mint, Audience, CachePattern, Error, Permission};
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{json, Value};

    const NOW: i64 = 1_700_000_000;
    const HS_SECRET_B64: &str = "dGVzdC1zZWNyZXQtZm9yLWdhcnJldC10b2tlbi10ZXN0cw==";

    fn hs_key() -> SigningKey {
        SigningKey::from_hs256_base64(HS_SECRET_B64).unwrap()
    }

    fn hs_secret() -> Vec<u8> {
        STANDARD.decode(HS_SECRET_B64).unwrap()
    }

    fn rs_key(pem: &str) -> SigningKey {
        SigningKey::from_rs256_secret_base64(&STANDARD.encode(pem)).unwrap()
    }

    fn hs_verifier() -> Verifier {
        Verifier::new(hs_key(), None, None).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn basic_claims() -> Claims {
        Claims {
            sub: Some("alice".into()),
            caches: vec![(
                CachePattern::parse("alice-*").unwrap(),
                Permission {
                    pull: true,
                    push: true,
                    ..Permission::none()
                },
            )],
            ..Claims::default()
        }
    }

    fn payload_value() -> Value {
        json!({"sub": "alice", "https://jwt.attic.rs/v1": {"caches": {"x": {"r": 1}}}})
    }

    /// HS256-sign arbitrary header/payload JSON with an arbitrary secret.
    fn hs_sign_raw(header: &Value, payload: &[u8], secret: &[u8]) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{input}.{sig}")
    }

    fn hs_token(payload: &Value) -> String {
        hs_sign_raw(
            &json!({"alg":"HS256","typ":"JWT"}),
            payload.to_string().as_bytes(),
            &hs_secret(),
        )
    }

    #[test]
    fn valid_hs256_token_verifies() {
        let claims = basic_claims();
        let token = mint(&claims, &hs_key()).unwrap();
        assert_eq!(hs_verifier().verify(&token, NOW).unwrap(), claims);
    }

    #[test]
    fn rs256_pkcs1_and_pkcs8_keys_sign_and_verify() {
        let claims = basic_claims();
        for pem in [KEY_A_PKCS1, KEY_A_PKCS8] {
            let key = rs_key(pem);
            let token = mint(&claims, &key).unwrap();
            // Verify with the full pair, with an SPKI-only key and with a PKCS#1-only key.
            for verifier_key in [
                key.clone(),
                SigningKey::from_rs256_pubkey_base64(&STANDARD.encode(KEY_A_PUBLIC_SPKI)).unwrap(),
                SigningKey::from_rs256_pubkey_base64(&STANDARD.encode(KEY_A_PUBLIC_PKCS1)).unwrap(),
            ] {
                let v = Verifier::new(verifier_key, None, None).unwrap();
                assert_eq!(v.verify(&token, NOW).unwrap(), claims);
            }
        }
    }

    #[test]
    fn rs256_token_from_other_key_is_bad_signature() {
        let token = mint(&basic_claims(), &rs_key(KEY_B_PKCS8)).unwrap();
        let v = Verifier::new(rs_key(KEY_A_PKCS8), None, None).unwrap();
        assert_eq!(v.verify(&token, NOW), Err(Rejection::BadSignature));
    }

    #[test]
    fn hs256_wrong_secret_is_bad_signature() {
        let token = hs_sign_raw(
            &json!({"alg":"HS256"}),
            payload_value().to_string().as_bytes(),
            b"some other secret",
        );
        assert_eq!(
            hs_verifier().verify(&token, NOW),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let token = hs_token(&payload_value());
        let parts: Vec<&str> = token.split('.').collect();
        let mut evil = payload_value();
        evil["https://jwt.attic.rs/v1"]["caches"] = json!({"*": {"r":1,"w":1,"cd":1}});
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(evil.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(
            hs_verifier().verify(&forged, NOW),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(payload_value().to_string().as_bytes());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
            format!("{header}.{payload}.AAAA"),
        ] {
            let got = hs_verifier().verify(&token, NOW);
            assert!(
                matches!(got, Err(Rejection::WrongAlgorithm | Rejection::Malformed)),
                "{token}: {got:?}"
            );
        }
        let token = format!("{header}.{payload}.");
        assert_eq!(
            hs_verifier().verify(&token, NOW),
            Err(Rejection::WrongAlgorithm)
        );
        let rs = Verifier::new(rs_key(KEY_A_PKCS8), None, None).unwrap();
        assert_eq!(rs.verify(&token, NOW), Err(Rejection::WrongAlgorithm));
    }

    #[test]
    fn alg_must_match_exactly() {
        for alg in ["hs256", "HS384", "HS512", "RS256", "ES256", "", " HS256"] {
            let token = hs_sign_raw(
                &json!({ "alg": alg }),
                payload_value().to_string().as_bytes(),
                &hs_secret(),
            );
            assert_eq!(
                hs_verifier().verify(&token, NOW),
                Err(Rejection::WrongAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn algorithm_confusion_is_rejected() {
        // Classic attack: configured for RS256, attacker HMACs with the public key PEM text.
        let verifier_key =
            SigningKey::from_rs256_pubkey_base64(&STANDARD.encode(KEY_A_PUBLIC_SPKI)).unwrap();
        let v = Verifier::new(verifier_key, None, None).unwrap();
        for secret in [
            KEY_A_PUBLIC_SPKI.as_bytes(),
            KEY_A_PUBLIC_SPKI.trim().as_bytes(),
            KEY_A_PUBLIC_PKCS1.as_bytes(),
        ] {
            let forged = hs_sign_raw(
                &json!({"alg":"HS256","typ":"JWT"}),
                payload_value().to_string().as_bytes(),
                secret,
            );
            assert_eq!(v.verify(&forged, NOW), Err(Rejection::WrongAlgorithm));

            // Lying in the header does not help either: the HMAC is no RSA signature.
            let forged = hs_sign_raw(
                &json!({"alg":"RS256","typ":"JWT"}),
                payload_value().to_string().as_bytes(),
                secret,
            );
            assert_eq!(v.verify(&forged, NOW), Err(Rejection::BadSignature));
        }

        // And the reverse: an RS256 token is refused by an HS256 verifier.
        let rs_token = mint(&basic_claims(), &rs_key(KEY_A_PKCS8)).unwrap();
        assert_eq!(
            hs_verifier().verify(&rs_token, NOW),
            Err(Rejection::WrongAlgorithm)
        );
    }

    #[test]
    fn structural_garbage_is_malformed() {
        let good = hs_token(&payload_value());
        let parts: Vec<&str> = good.split('.').collect();
        let cases = vec![
            String::new(),
            "abc".into(),
            "a.b".into(),
            format!("{good}.extra"),
            format!("!!.{}.{}", parts[1], parts[2]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
            format!("{}.{}.{}", b64(b"[]"), parts[1], parts[2]),
            format!("{}.{}.{}", b64(br#"{"typ":"JWT"}"#), parts[1], parts[2]),
            format!("{}.{}.{}", b64(br#"{"alg":5}"#), parts[1], parts[2]),
            format!("{}.{}.!!sig!!", parts[0], parts[1]),
        ];
        for token in cases {
            assert_eq!(
                hs_verifier().verify(&token, NOW),
                Err(Rejection::Malformed),
                "{token:?}"
            );
        }
    }

    #[test]
    fn undecodable_payload_with_valid_signature_is_malformed() {
        let header = b64(br#"{"alg":"HS256"}"#);
        let input = format!("{header}.!!!");
        let key = jsonwebtoken::EncodingKey::from_secret(&hs_secret());
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        let token = format!("{input}.{sig}");
        assert_eq!(hs_verifier().verify(&token, NOW), Err(Rejection::Malformed));
    }

    #[test]
    fn typ_rules() {
        let payload = payload_value().to_string();
        for (typ, ok) in [
            (json!("JWT"), true),
            (json!("jwt"), true),
            (json!("Jwt"), true),
            (json!("at+jwt"), true),
            (json!("application/at+JWT"), true),
            (json!(null), true),
            (json!("JWS"), false),
            (json!("+JWT"), false),
            (json!("xJWT"), false),
            (json!(""), false),
            (json!("JWT "), false),
            (json!(1), false),
        ] {
            let token = hs_sign_raw(
                &json!({"alg":"HS256","typ":typ}),
                payload.as_bytes(),
                &hs_secret(),
            );
            let got = hs_verifier().verify(&token, NOW);
            if ok {
                assert!(got.is_ok(), "typ {typ} should pass: {got:?}");
            } else {
                assert_eq!(got, Err(Rejection::Malformed), "typ {typ}");
            }
        }
        // No typ at all is fine.
        let token = hs_sign_raw(&json!({"alg":"HS256"}), payload.as_bytes(), &hs_secret());
        assert!(hs_verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn crit_header_is_rejected_but_other_members_ignored() {
        let payload = payload_value().to_string();
        let token = hs_sign_raw(
            &json!({"alg":"HS256","crit":["exp"],"exp":1}),
            payload.as_bytes(),
            &hs_secret(),
        );
        assert_eq!(hs_verifier().verify(&token, NOW), Err(Rejection::Malformed));
        let token = hs_sign_raw(
            &json!({"alg":"HS256","kid":"k1","x-custom":{"a":1}}),
            payload.as_bytes(),
            &hs_secret(),
        );
        assert!(hs_verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn header_length_limit() {
        let payload = payload_value().to_string();
        // Pad the header JSON so its encoding lands just under / over the limit.
        let build = |encoded_len: usize| {
            let raw_len = encoded_len * 3 / 4;
            let base = json!({"alg":"HS256","pad":""}).to_string().len();
            let header = json!({"alg":"HS256","pad":"p".repeat(raw_len - base)});
            let token = hs_sign_raw(&header, payload.as_bytes(), &hs_secret());
            let header_part_len = token.split('.').next().unwrap().len();
            (token, header_part_len)
        };
        let (small, small_len) = build(8190);
        assert!(small_len <= MAX_HEADER_LEN, "{small_len}");
        assert!(hs_verifier().verify(&small, NOW).is_ok());
        let (big, big_len) = build(8196);
        assert!(big_len > MAX_HEADER_LEN, "{big_len}");
        assert_eq!(hs_verifier().verify(&big, NOW), Err(Rejection::Malformed));
    }

    #[test]
    fn exp_is_optional_and_enforced_without_leeway() {
        let mut p = payload_value();
        assert!(
            hs_verifier().verify(&hs_token(&p), i64::MAX).is_ok(),
            "no exp = forever"
        );

        p["exp"] = json!(NOW);
        let token = hs_token(&p);
        assert!(
            hs_verifier().verify(&token, NOW).is_ok(),
            "exp == now is still valid"
        );
        assert!(hs_verifier().verify(&token, NOW - 100).is_ok());
        assert_eq!(
            hs_verifier().verify(&token, NOW + 1),
            Err(Rejection::Expired)
        );

        // Fractions truncate: 1700000000.99 behaves as 1700000000.
        p["exp"] = json!(1_700_000_000.99);
        let token = hs_token(&p);
        assert!(hs_verifier().verify(&token, NOW).is_ok());
        assert_eq!(
            hs_verifier().verify(&token, NOW + 1),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn nbf_and_iat_are_enforced_without_leeway() {
        let mut p = payload_value();
        p["nbf"] = json!(NOW);
        let token = hs_token(&p);
        assert!(hs_verifier().verify(&token, NOW).is_ok());
        assert_eq!(
            hs_verifier().verify(&token, NOW - 1),
            Err(Rejection::NotYetValid)
        );

        let mut p = payload_value();
        p["iat"] = json!(NOW);
        let token = hs_token(&p);
        assert!(hs_verifier().verify(&token, NOW).is_ok());
        assert_eq!(
            hs_verifier().verify(&token, NOW - 1),
            Err(Rejection::IssuedInFuture)
        );
    }

    #[test]
    fn leeway_applies_to_nbf_and_iat_but_not_exp() {
        let v = hs_verifier().with_leeway(60);
        assert_eq!(v.leeway(), 60);
        let mut p = payload_value();
        p["nbf"] = json!(NOW);
        p["iat"] = json!(NOW);
        p["exp"] = json!(NOW + 100);
        let token = hs_token(&p);
        assert!(v.verify(&token, NOW - 60).is_ok(), "nbf - leeway is valid");
        assert_eq!(v.verify(&token, NOW - 61), Err(Rejection::NotYetValid));
        assert!(v.verify(&token, NOW + 100).is_ok(), "exp itself is valid");
        assert_eq!(v.verify(&token, NOW + 101), Err(Rejection::Expired));
        p["nbf"] = json!(NOW + 1000);
        p["iat"] = json!(NOW + 30);
        let token = hs_token(&p);
        assert_eq!(v.verify(&token, NOW), Err(Rejection::NotYetValid));
        p["nbf"] = json!(NOW);
        p["iat"] = json!(NOW + 61);
        let token = hs_token(&p);
        assert_eq!(v.verify(&token, NOW), Err(Rejection::IssuedInFuture));
        // Without a leeway the edges are exact.
        assert_eq!(
            hs_verifier().verify(&token, NOW - 1),
            Err(Rejection::NotYetValid)
        );
        // Huge values saturate instead of overflowing.
        p["exp"] = json!(i64::MAX);
        p["nbf"] = json!(i64::MIN);
        p["iat"] = json!(i64::MIN);
        let token = hs_token(&p);
        assert!(hs_verifier()
            .with_leeway(u64::MAX)
            .verify(&token, NOW)
            .is_ok());
    }

    #[test]
    fn time_rejections_are_time_dependent_the_others_are_not() {
        let v = hs_verifier();
        let mut p = payload_value();
        p["nbf"] = json!(NOW + 3);
        let token = hs_token(&p);
        let early = v.verify(&token, NOW).unwrap_err();
        assert_eq!(early, Rejection::NotYetValid);
        assert!(early.is_time_dependent());
        // The same token is fine once its nbf is reached.
        let claims = v.verify(&token, NOW + 3).unwrap();
        assert_eq!(v.check_time(&claims, NOW + 2), Err(Rejection::NotYetValid));
        assert!(v.check_time(&claims, NOW + 3).is_ok());
        assert!(Rejection::Expired.is_time_dependent());
        assert!(Rejection::IssuedInFuture.is_time_dependent());
        for r in [
            Rejection::Malformed,
            Rejection::BadSignature,
            Rejection::WrongAlgorithm,
            Rejection::WrongIssuer,
            Rejection::WrongAudience,
            Rejection::Revoked,
        ] {
            assert!(!r.is_time_dependent(), "{r:?}");
        }
    }

    #[test]
    fn issuer_binding() {
        let bound = Verifier::new(hs_key(), Some("garret".into()), None).unwrap();
        let mut p = payload_value();
        assert_eq!(
            bound.verify(&hs_token(&p), NOW),
            Err(Rejection::WrongIssuer)
        );
        p["iss"] = json!("other");
        assert_eq!(
            bound.verify(&hs_token(&p), NOW),
            Err(Rejection::WrongIssuer)
        );
        p["iss"] = json!("Garret");
        assert_eq!(
            bound.verify(&hs_token(&p), NOW),
            Err(Rejection::WrongIssuer)
        );
        p["iss"] = json!("garret");
        assert!(bound.verify(&hs_token(&p), NOW).is_ok());
        // Unbound verifiers ignore iss.
        p["iss"] = json!("whatever");
        assert!(hs_verifier().verify(&hs_token(&p), NOW).is_ok());
        assert_eq!(bound.bound_issuer(), Some("garret"));
    }

    #[test]
    fn audience_binding() {
        let bound = Verifier::new(
            hs_key(),
            None,
            Some(vec!["cache.example".into(), "ci".into()]),
        )
        .unwrap();
        let mut p = payload_value();
        assert_eq!(
            bound.verify(&hs_token(&p), NOW),
            Err(Rejection::WrongAudience)
        );
        p["aud"] = json!("elsewhere");
        assert_eq!(
            bound.verify(&hs_token(&p), NOW),
            Err(Rejection::WrongAudience)
        );
        p["aud"] = json!([]);
        assert_eq!(
            bound.verify(&hs_token(&p), NOW),
            Err(Rejection::WrongAudience)
        );
        p["aud"] = json!("ci");
        assert!(bound.verify(&hs_token(&p), NOW).is_ok());
        p["aud"] = json!(["x", "cache.example"]);
        let claims = bound.verify(&hs_token(&p), NOW).unwrap();
        assert_eq!(
            claims.aud,
            Some(Audience::Many(vec!["x".into(), "cache.example".into()]))
        );
        assert_eq!(bound.bound_audiences().map(<[String]>::len), Some(2));

        // An empty configured set accepts nothing.
        let closed = Verifier::new(hs_key(), None, Some(vec![])).unwrap();
        assert_eq!(
            closed.verify(&hs_token(&p), NOW),
            Err(Rejection::WrongAudience)
        );
    }

    #[test]
    fn invalid_claims_are_reported() {
        let cases = [
            json!({"sub": "a"}),
            json!({"https://jwt.attic.rs/v1": {"caches": {"x": {"r": true}}}}),
            json!({"https://jwt.attic.rs/v1": {"caches": {"x": {"w": 2}}}}),
            json!({"https://jwt.attic.rs/v1": {"caches": {"bad name": {"r": 1}}}}),
            json!({"https://jwt.attic.rs/v1": {}}),
            json!({"exp": "soon", "https://jwt.attic.rs/v1": {"caches": {}}}),
            json!([1, 2]),
        ];
        for p in cases {
            let got = hs_verifier().verify(&hs_token(&p), NOW);
            assert!(
                matches!(got, Err(Rejection::InvalidClaims(_))),
                "{p}: {got:?}"
            );
        }
    }

    #[test]
    fn permission_resolution_from_verified_token() {
        let p = json!({"https://jwt.attic.rs/v1": {"caches": {
            "all-*": {"r": 1},
            "all-ci-*": {"w": 1}
        }}});
        let claims = hs_verifier().verify(&hs_token(&p), NOW).unwrap();
        let got = claims.permission_for("all-ci-x");
        assert!(got.pull && !got.push);
    }

    #[test]
    fn verify_only_key_verifies_but_cannot_mint() {
        let pair = rs_key(KEY_A_PKCS1);
        let token = mint(&basic_claims(), &pair).unwrap();
        let public =
            SigningKey::from_rs256_pubkey_base64(&STANDARD.encode(KEY_A_PUBLIC_SPKI)).unwrap();
        assert!(matches!(
            mint(&basic_claims(), &public),
            Err(Error::VerifyOnlyKey)
        ));
        let v = Verifier::new(public, None, None).unwrap();
        assert!(v.verify(&token, NOW).is_ok());
        assert!(!v.keys().can_sign());
    }

    #[test]
    fn rejection_messages_are_distinct_and_human() {
        let all = [
            Rejection::Malformed,
            Rejection::WrongAlgorithm,
            Rejection::BadSignature,
            Rejection::Expired,
            Rejection::NotYetValid,
            Rejection::IssuedInFuture,
            Rejection::WrongIssuer,
            Rejection::WrongAudience,
            Rejection::InvalidClaims("missing field".into()),
            Rejection::Revoked,
        ];
        let texts: Vec<String> = all.iter().map(ToString::to_string).collect();
        for (i, t) in texts.iter().enumerate() {
            assert!(
                t.starts_with("token") || t.starts_with("malformed") || t.starts_with("invalid")
            );
            for other in &texts[i + 1..] {
                assert_ne!(t, other);
            }
        }
        assert_eq!(texts[8], "invalid token claims: missing field");
    }

    #[test]
    fn verifier_can_be_shared_across_threads() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<Verifier>();
        assert_shareable::<TokenKeys>();
        assert_shareable::<Claims>();
        assert_shareable::<Rejection>();
    }

    #[test]
    fn typ_helper() {
        assert!(typ_is_acceptable("JWT"));
        assert!(typ_is_acceptable("dpop+jwt"));
        assert!(!typ_is_acceptable("+jwt"));
        assert!(!typ_is_acceptable("éJWT"));
        assert!(typ_is_acceptable("é+JWT"));
        assert!(!typ_is_acceptable("JWTé"));
    }
}
