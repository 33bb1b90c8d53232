//! Minting tokens, including the claim rules of `atticadm make-token`.

use std::time::Duration;

use jsonwebtoken::Header;

use super::{
    Audience, CachePattern, Claims, Error, Permission, Result, ServerRights, SigningKey, TokenKeys,
};

/// Sign `claims` with `key`. Fails for a verify-only key.
///
/// This prepares the key on every call; code minting repeatedly should build [`TokenKeys`]
/// once and use [`TokenKeys::mint`].
pub fn mint(claims: &Claims, key: &SigningKey) -> Result<String> {
    if !key.can_sign() {
        return Err(Error::VerifyOnlyKey);
    }
    TokenKeys::new(key)?.mint(claims)
}

impl TokenKeys {
    /// Sign `claims` as a compact JWS with header `{"typ":"JWT","alg":...}`.
    pub fn mint(&self, claims: &Claims) -> Result<String> {
        let encoding = self.encoding().ok_or(Error::VerifyOnlyKey)?;
        let header = Header::new(self.algorithm().to_jwt());
        jsonwebtoken::encode(&header, claims, encoding).map_err(|e| Error::Signing(e.to_string()))
    }
}

/// A fresh random token id (UUID v4), so each minted token is individually identifiable, e.g.
/// for revocation lists.
pub fn new_jti() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Parse a token lifetime in the one duration grammar of [`crate::duration`] (`"1 hour"`,
/// `"2y"`, `"3 months"`, bare seconds).
///
/// A zero validity would mint a token that dies within the second, which is never what the
/// operator meant, so it is refused.
pub fn parse_validity(text: &str) -> Result<Duration> {
    let invalid = |reason: String| Error::InvalidValidity {
        input: text.to_owned(),
        reason,
    };
    let duration = crate::duration::parse_duration(text).map_err(invalid)?;
    if duration.is_zero() {
        return Err(invalid("validity must be longer than zero".into()));
    }
    Ok(duration)
}

/// The inputs of `atticadm make-token`: a subject, a lifetime and, per permission letter, the
/// list of cache patterns that letter is granted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MakeToken {
    pub sub: String,
    pub validity: Duration,
    pub pull: Vec<String>,
    pub push: Vec<String>,
    pub delete: Vec<String>,
    pub create_cache: Vec<String>,
    pub configure_cache: Vec<String>,
    pub configure_cache_retention: Vec<String>,
    pub destroy_cache: Vec<String>,
    /// `[jwt] token-bound-issuer`, stamped as `iss`.
    pub issuer: Option<String>,
    /// `[jwt] token-bound-audiences`, stamped as an `aud` array.
    pub audiences: Option<Vec<String>>,
    /// Garret's server-wide rights (the operator's revocation pushes); none by default.
    pub server: ServerRights,
}

impl MakeToken {
    /// Build the claims atticadm would mint at `now_unix`.
    ///
    /// `exp = now + validity`, `nbf = now`, no `iat`. Cache entries appear in first-seen order
    /// walking the flags in letter order (`r w d cc cr cq cd`); a pattern named by several
    /// flags becomes one entry holding all of them, because resolution never merges entries.
    pub fn claims(&self, now_unix: i64, jti: String) -> Result<Claims> {
        let validity = i64::try_from(self.validity.as_secs()).map_err(|_| Error::TimeOutOfRange)?;
        let exp = now_unix
            .checked_add(validity)
            .ok_or(Error::TimeOutOfRange)?;

        let grants: [(&[String], Permission); 7] = [
            (
                &self.pull,
                Permission {
                    pull: true,
                    ..Permission::none()
                },
            ),
            (
                &self.push,
                Permission {
                    push: true,
                    ..Permission::none()
                },
            ),
            (
                &self.delete,
                Permission {
                    delete: true,
                    ..Permission::none()
                },
            ),
            (
                &self.create_cache,
                Permission {
                    create_cache: true,
                    ..Permission::none()
                },
            ),
            (
                &self.configure_cache,
                Permission {
                    configure_cache: true,
                    ..Permission::none()
                },
            ),
            (
                &self.configure_cache_retention,
                Permission {
                    configure_cache_retention: true,
                    ..Permission::none()
                },
            ),
            (
                &self.destroy_cache,
                Permission {
                    destroy_cache: true,
                    ..Permission::none()
                },
            ),
        ];

        let mut caches: Vec<(CachePattern, Permission)> = Vec::new();
        for (patterns, letter) in grants {
            for text in patterns {
                let pattern = CachePattern::parse(text)?;
                match caches.iter_mut().find(|(p, _)| *p == pattern) {
                    Some((_, perm)) => *perm = perm.union(letter),
                    None => caches.push((pattern, letter)),
                }
            }
        }

        Ok(Claims {
            sub: Some(self.sub.clone()),
            exp: Some(exp),
            nbf: Some(now_unix),
            iat: None,
            iss: self.issuer.clone(),
            aud: self.audiences.clone().map(Audience::Many),
            jti: Some(jti),
            caches,
            server: self.server,
        })
    }

    /// Build claims with a fresh jti and sign them.
    pub fn mint(&self, key: &SigningKey, now_unix: i64) -> Result<String> {
        mint(&self.claims(now_unix, new_jti())?, key)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkeys::*;
    use super::super::{Rejection, Verifier};
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;
    use serde_json::{json, Value};

    const NOW: i64 = 1_700_000_000;

    fn hs_key() -> SigningKey {
        SigningKey::from_hs256_base64("bWludC10ZXN0LXNlY3JldA==").unwrap()
    }

    fn decode_part(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn spec() -> MakeToken {
        MakeToken {
            sub: "alice".into(),
            validity: Duration::from_secs(3600),
            ..MakeToken::default()
        }
    }

    #[test]
    fn atticadm_time_claims() {
        let c = spec().claims(NOW, "id-1".into()).unwrap();
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.exp, Some(NOW + 3600));
        assert_eq!(c.nbf, Some(NOW));
        assert_eq!(c.iat, None);
        assert_eq!(c.jti.as_deref(), Some("id-1"));
        assert_eq!(c.iss, None);
        assert_eq!(c.aud, None);
        assert!(c.caches.is_empty());
    }

    #[test]
    fn sub_second_validity_is_truncated() {
        let mut s = spec();
        s.validity = Duration::from_millis(2_999);
        assert_eq!(s.claims(NOW, "j".into()).unwrap().exp, Some(NOW + 2));
    }

    #[test]
    fn caches_follow_flag_order_and_merge_repeats() {
        let s = MakeToken {
            pull: vec!["b-*".into(), "a".into()],
            push: vec!["c".into(), "a".into()],
            delete: vec!["d".into()],
            create_cache: vec!["b-*".into()],
            configure_cache: vec!["e".into()],
            configure_cache_retention: vec!["e".into()],
            destroy_cache: vec!["c".into(), "f".into()],
            ..spec()
        };
        let c = s.claims(NOW, "j".into()).unwrap();
        let order: Vec<&str> = c.caches.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(order, ["b-*", "a", "c", "d", "e", "f"]);

        let text = serde_json::to_string(&c).unwrap();
        let caches_json = text
            .split_once(r#""caches":"#)
            .map(|(_, rest)| rest)
            .unwrap();
        assert_eq!(
            caches_json,
            r#"{"b-*":{"r":1,"cc":1},"a":{"r":1,"w":1},"c":{"w":1,"cd":1},"d":{"d":1},"e":{"cr":1,"cq":1},"f":{"cd":1}}}}"#
        );
    }

    #[test]
    fn same_pattern_twice_in_one_flag_is_one_entry() {
        let s = MakeToken {
            pull: vec!["x".into(), "x".into()],
            ..spec()
        };
        let c = s.claims(NOW, "j".into()).unwrap();
        assert_eq!(c.caches.len(), 1);
    }

    #[test]
    fn invalid_pattern_is_an_error() {
        let s = MakeToken {
            push: vec!["ok".into(), "not ok".into()],
            ..spec()
        };
        assert!(matches!(
            s.claims(NOW, "j".into()),
            Err(Error::InvalidPattern(p)) if p == "not ok"
        ));
    }

    #[test]
    fn bound_issuer_and_audiences_are_stamped() {
        let s = MakeToken {
            issuer: Some("garret".into()),
            audiences: Some(vec!["one".into()]),
            ..spec()
        };
        let c = s.claims(NOW, "j".into()).unwrap();
        assert_eq!(c.iss.as_deref(), Some("garret"));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["aud"],
            json!(["one"]),
            "always an array, even for one value"
        );
    }

    #[test]
    fn expiry_overflow_is_reported() {
        let mut s = spec();
        s.validity = Duration::from_secs(u64::MAX);
        assert!(matches!(
            s.claims(NOW, "j".into()),
            Err(Error::TimeOutOfRange)
        ));
        s.validity = Duration::from_secs(10);
        assert!(matches!(
            s.claims(i64::MAX - 5, "j".into()),
            Err(Error::TimeOutOfRange)
        ));
    }

    #[test]
    fn minted_token_has_attic_header_and_verifies() {
        let s = MakeToken {
            pull: vec!["*".into()],
            issuer: Some("iss".into()),
            audiences: Some(vec!["aud".into()]),
            ..spec()
        };
        let token = s.mint(&hs_key(), NOW).unwrap();
        assert_eq!(decode_part(&token, 0), json!({"typ":"JWT","alg":"HS256"}));
        let payload = decode_part(&token, 1);
        assert_eq!(payload["nbf"], json!(NOW));
        assert!(payload.get("iat").is_none());

        let v = Verifier::new(hs_key(), Some("iss".into()), Some(vec!["aud".into()])).unwrap();
        let c = v.verify(&token, NOW).unwrap();
        assert!(c.permission_for("anything").pull);
        assert_eq!(v.verify(&token, NOW + 3601), Err(Rejection::Expired));
        assert_eq!(v.verify(&token, NOW - 1), Err(Rejection::NotYetValid));
    }

    #[test]
    fn rs256_minting_and_verify_only_failure() {
        let pair = SigningKey::from_rs256_secret_base64(&STANDARD.encode(KEY_A_PKCS8)).unwrap();
        let token = spec().mint(&pair, NOW).unwrap();
        assert_eq!(decode_part(&token, 0)["alg"], json!("RS256"));

        let public =
            SigningKey::from_rs256_pubkey_base64(&STANDARD.encode(KEY_A_PUBLIC_SPKI)).unwrap();
        assert!(matches!(
            spec().mint(&public, NOW),
            Err(Error::VerifyOnlyKey)
        ));
        let keys = TokenKeys::new(&public).unwrap();
        assert!(matches!(
            keys.mint(&Claims::default()),
            Err(Error::VerifyOnlyKey)
        ));
    }

    #[test]
    fn every_token_gets_a_unique_jti() {
        let a = spec().mint(&hs_key(), NOW).unwrap();
        let b = spec().mint(&hs_key(), NOW).unwrap();
        assert_ne!(a, b);
        let ja = decode_part(&a, 1)["jti"].as_str().unwrap().to_owned();
        let jb = decode_part(&b, 1)["jti"].as_str().unwrap().to_owned();
        assert_ne!(ja, jb);
        let parsed = uuid::Uuid::parse_str(&ja).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[test]
    fn prepared_keys_mint_the_same_as_one_shot() {
        let claims = spec().claims(NOW, "fixed".into()).unwrap();
        let keys = TokenKeys::new(&hs_key()).unwrap();
        // HS256 is deterministic, so both paths yield identical tokens.
        assert_eq!(
            keys.mint(&claims).unwrap(),
            mint(&claims, &hs_key()).unwrap()
        );
    }

    #[test]
    fn validity_parsing() {
        assert_eq!(parse_validity("1 hour").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_validity("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_validity(" 1d ").unwrap(), Duration::from_secs(86_400));
        // humantime's calendar units: a year is 365.25 days, a month 30.44 days.
        assert_eq!(
            parse_validity("2y").unwrap(),
            Duration::from_secs(2 * 31_557_600)
        );
        assert_eq!(
            parse_validity("3 months").unwrap(),
            Duration::from_secs(3 * 2_630_016)
        );
        assert_eq!(
            parse_validity("1y 6months").unwrap(),
            Duration::from_secs(31_557_600 + 6 * 2_630_016)
        );
    }

    #[test]
    fn bad_validity_is_rejected() {
        for bad in ["", "forever", "3 fortnights", "-1h", "0s", "0"] {
            let err = parse_validity(bad).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidValidity { input, .. } if input == bad),
                "{bad:?}: {err}"
            );
        }
    }
}
