//! JWT claim set in Attic's layout, with a hand-written (de)serializer so the order of cache
//! patterns survives in both directions (first-match resolution depends on it).

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{CachePattern, Permission};

/// Claim name of Attic's private claim (namespaced for Auth0 compatibility).
pub const ATTIC_NAMESPACE: &str = "https://jwt.attic.rs/v1";

/// Claim name of Garret's own server-wide rights (absent from every token Attic mints).
pub const GARRET_NAMESPACE: &str = "https://garret.dev/v1";

/// Server-wide rights, beyond Attic's per-cache permissions. Only whoever holds the signing
/// key can grant them, and that holder can already mint any cache permission, so they add no
/// power over the key; they let a short-lived operator token do one job and nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerRights {
    /// `push-revocations`: add entries to the in-memory revocation list
    /// (`POST /_api/v1/revocations`), so a revocation applies before a mounted list updates.
    pub push_revocations: bool,
}

impl ServerRights {
    pub fn is_empty(&self) -> bool {
        *self == ServerRights::default()
    }
}

/// The `aud` claim: RFC 7519 allows a single string or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// All audience values, whichever form was used.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        let slice: &[String] = match self {
            Audience::One(one) => std::slice::from_ref(one),
            Audience::Many(many) => many,
        };
        slice.iter().map(String::as_str)
    }

    /// Whether at least one of our values appears in `accepted`.
    pub fn intersects(&self, accepted: &[String]) -> bool {
        self.values().any(|v| accepted.iter().any(|a| a == v))
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Audience::One(one) => serializer.serialize_str(one),
            Audience::Many(many) => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AudienceVisitor;

        impl<'de> Visitor<'de> for AudienceVisitor {
            type Value = Audience;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience::One(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Audience, E> {
                Ok(Audience::One(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    values.push(v);
                }
                Ok(Audience::Many(values))
            }
        }

        deserializer.deserialize_any(AudienceVisitor)
    }
}

/// Decoded token claims. Standard claims are all optional; `caches` is Attic's grant list in
/// the order the token lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub sub: Option<String>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    pub iss: Option<String>,
    pub aud: Option<Audience>,
    pub jti: Option<String>,
    pub caches: Vec<(CachePattern, Permission)>,
    /// [`GARRET_NAMESPACE`]; serialized only when it grants something.
    pub server: ServerRights,
}

impl Claims {
    /// Permission this token grants on `cache_name`.
    ///
    /// An entry whose key is textually the cache name wins outright; otherwise the first
    /// matching pattern in token order applies. Entries are never merged, so a broad early
    /// pattern can deliberately shadow a more specific later one.
    pub fn permission_for(&self, cache_name: &str) -> Permission {
        let exact = self
            .caches
            .iter()
            .find(|(pattern, _)| pattern.as_str() == cache_name);
        exact
            .or_else(|| {
                self.caches
                    .iter()
                    .find(|(pattern, _)| pattern.matches(cache_name))
            })
            .map(|(_, perm)| *perm)
            .unwrap_or_default()
    }
}

/// Serializes `caches` as a JSON object in vector order.
struct CachesRef<'a>(&'a [(CachePattern, Permission)]);

impl Serialize for CachesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (pattern, perm) in self.0 {
            map.serialize_entry(pattern.as_str(), perm)?;
        }
        map.end()
    }
}

/// The value stored under [`ATTIC_NAMESPACE`]: `{"caches": {...}}`.
struct NamespaceRef<'a>(&'a [(CachePattern, Permission)]);

impl Serialize for NamespaceRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("caches", &CachesRef(self.0))?;
        map.end()
    }
}

impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(v) = &self.sub {
            map.serialize_entry("sub", v)?;
        }
        if let Some(v) = &self.exp {
            map.serialize_entry("exp", v)?;
        }
        if let Some(v) = &self.nbf {
            map.serialize_entry("nbf", v)?;
        }
        if let Some(v) = &self.iat {
            map.serialize_entry("iat", v)?;
        }
        if let Some(v) = &self.iss {
            map.serialize_entry("iss", v)?;
        }
        if let Some(v) = &self.aud {
            map.serialize_entry("aud", v)?;
        }
        if let Some(v) = &self.jti {
            map.serialize_entry("jti", v)?;
        }
        map.serialize_entry(ATTIC_NAMESPACE, &NamespaceRef(&self.caches))?;
        if !self.server.is_empty() {
            map.serialize_entry(GARRET_NAMESPACE, &ServerRightsRef(self.server))?;
        }
        map.end()
    }
}

/// The value stored under [`GARRET_NAMESPACE`]: `{"push-revocations": true}`.
struct ServerRightsRef(ServerRights);

impl Serialize for ServerRightsRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("push-revocations", &self.0.push_revocations)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for ServerRights {
    /// An object; a right is granted only by the boolean `true`, other members are ignored
    /// (later versions may add rights), a repeated member is refused.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RightsVisitor;

        impl<'de> Visitor<'de> for RightsVisitor {
            type Value = ServerRights;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of server rights")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerRights, A::Error> {
                let mut push_revocations: Option<bool> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "push-revocations" {
                        if push_revocations.is_some() {
                            return Err(de::Error::duplicate_field("push-revocations"));
                        }
                        push_revocations = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(ServerRights {
                    push_revocations: push_revocations.unwrap_or(false),
                })
            }
        }

        deserializer.deserialize_map(RightsVisitor)
    }
}

/// A NumericDate. Integers are taken as-is; fractional seconds (allowed by RFC 7519) are
/// truncated. Anything that does not fit an `i64` is refused rather than clamped, so a token
/// can't sneak in a surprising value.
struct UnixTime(i64);

impl<'de> Deserialize<'de> for UnixTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimeVisitor;

        impl Visitor<'_> for TimeVisitor {
            type Value = UnixTime;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of seconds since the Unix epoch")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<UnixTime, E> {
                Ok(UnixTime(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<UnixTime, E> {
                i64::try_from(v)
                    .map(UnixTime)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<UnixTime, E> {
                let t = v.trunc();
                // i64::MAX is not exactly representable as f64; 2^63 is the first value out of
                // range, while -2^63 is exact and in range. NaN and infinities fail `contains`.
                const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
                if (-TWO_POW_63..TWO_POW_63).contains(&t) {
                    Ok(UnixTime(t as i64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }

        deserializer.deserialize_any(TimeVisitor)
    }
}

/// Ordered list of `pattern -> permission` entries read from the `caches` object.
struct CacheList(Vec<(CachePattern, Permission)>);

impl<'de> Deserialize<'de> for CacheList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = CacheList;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping cache name patterns to permissions")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CacheList, A::Error> {
                let mut entries: Vec<(CachePattern, Permission)> = Vec::new();
                while let Some(pattern) = map.next_key::<CachePattern>()? {
                    // Duplicate keys would make the grant depend on parser details; refuse.
                    if entries.iter().any(|(p, _)| *p == pattern) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate cache pattern `{pattern}`"
                        )));
                    }
                    let perm = map.next_value::<Permission>()?;
                    entries.push((pattern, perm));
                }
                Ok(CacheList(entries))
            }
        }

        deserializer.deserialize_map(ListVisitor)
    }
}

/// The namespaced Attic claim. `caches` is required; other members are ignored.
struct Namespace(Vec<(CachePattern, Permission)>);

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamespaceVisitor;

        impl<'de> Visitor<'de> for NamespaceVisitor {
            type Value = Namespace;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with a `caches` member")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Namespace, A::Error> {
                let mut caches: Option<CacheList> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "caches" {
                        if caches.is_some() {
                            return Err(de::Error::duplicate_field("caches"));
                        }
                        caches = Some(map.next_value()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                caches
                    .map(|CacheList(list)| Namespace(list))
                    .ok_or_else(|| de::Error::missing_field("caches"))
            }
        }

        deserializer.deserialize_map(NamespaceVisitor)
    }
}

/// Reads an optional claim; `null` counts as absent, as the usual `Option` derive would.
fn next_optional<'de, A, T>(map: &mut A) -> Result<Option<T>, A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    map.next_value::<Option<T>>()
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;

        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = Claims;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JWT claims object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                let mut sub = None;
                let mut exp: Option<UnixTime> = None;
                let mut nbf: Option<UnixTime> = None;
                let mut iat: Option<UnixTime> = None;
                let mut iss = None;
                let mut aud = None;
                let mut jti = None;
                let mut attic: Option<Namespace> = None;
                let mut server: Option<ServerRights> = None;
                // A claim we interpret must appear once; otherwise which copy counts would be
                // a parser detail an attacker could play with.
                let mut seen: Vec<String> = Vec::new();

                while let Some(key) = map.next_key::<String>()? {
                    let known = matches!(
                        key.as_str(),
                        "sub"
                            | "exp"
                            | "nbf"
                            | "iat"
                            | "iss"
                            | "aud"
                            | "jti"
                            | ATTIC_NAMESPACE
                            | GARRET_NAMESPACE
                    );
                    if known {
                        if seen.contains(&key) {
                            return Err(de::Error::custom(format_args!("duplicate claim `{key}`")));
                        }
                        seen.push(key.clone());
                    }
                    match key.as_str() {
                        "sub" => sub = next_optional(&mut map)?,
                        "exp" => exp = next_optional(&mut map)?,
                        "nbf" => nbf = next_optional(&mut map)?,
                        "iat" => iat = next_optional(&mut map)?,
                        "iss" => iss = next_optional(&mut map)?,
                        "aud" => aud = next_optional(&mut map)?,
                        "jti" => jti = next_optional(&mut map)?,
                        // Mandatory and must be an object; `null` is not "absent" here.
                        ATTIC_NAMESPACE => attic = Some(map.next_value::<Namespace>()?),
                        GARRET_NAMESPACE => server = next_optional(&mut map)?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }

                let Namespace(caches) =
                    attic.ok_or_else(|| de::Error::missing_field(ATTIC_NAMESPACE))?;
                Ok(Claims {
                    sub,
                    exp: exp.map(|t| t.0),
                    nbf: nbf.map(|t| t.0),
                    iat: iat.map(|t| t.0),
                    iss,
                    aud,
                    jti,
                    caches,
                    server: server.unwrap_or_default(),
                })
            }
        }

        deserializer.deserialize_map(ClaimsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<Claims, serde_json::Error> {
        serde_json::from_str(text)
    }

    fn perm(letters: &str) -> Permission {
        let mut p = Permission::none();
        for l in letters.split(',').filter(|l| !l.is_empty()) {
            match l {
                "r" => p.pull = true,
                "w" => p.push = true,
                "d" => p.delete = true,
                "cc" => p.create_cache = true,
                "cr" => p.configure_cache = true,
                "cq" => p.configure_cache_retention = true,
                "cd" => p.destroy_cache = true,
                other => panic!("bad letter {other}"),
            }
        }
        p
    }

    fn with_caches(caches: &str) -> Claims {
        parse(&format!(r#"{{"{ATTIC_NAMESPACE}":{{"caches":{caches}}}}}"#)).unwrap()
    }

    #[test]
    fn parses_spec_example() {
        let c = parse(
            r#"{
              "sub": "alice",
              "exp": 4102324986,
              "nbf": 1700000000,
              "https://jwt.attic.rs/v1": {
                "caches": {
                  "alice-*":  {"r": 1, "w": 1, "cc": 1},
                  "prod":     {"r": 1}
                }
              }
            }"#,
        )
        .unwrap();
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.exp, Some(4_102_324_986));
        assert_eq!(c.nbf, Some(1_700_000_000));
        assert_eq!(c.iat, None);
        assert_eq!(c.caches.len(), 2);
        assert_eq!(c.caches[0].0.as_str(), "alice-*");
        assert_eq!(c.caches[0].1, perm("r,w,cc"));
        assert_eq!(c.caches[1].0.as_str(), "prod");
        assert_eq!(c.caches[1].1, perm("r"));
    }

    #[test]
    fn namespace_claim_is_mandatory() {
        assert!(parse(r#"{"sub":"a"}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1": null}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1": {}}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1": {"caches": null}}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1": {"caches": []}}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1": 1}"#).is_err());
        // Only the exact namespace counts.
        assert!(parse(r#"{"https://jwt.attic.rs/v2": {"caches": {}}}"#).is_err());
    }

    #[test]
    fn empty_caches_is_valid_and_grants_nothing() {
        let c = with_caches("{}");
        assert!(c.caches.is_empty());
        assert!(c.permission_for("anything").is_empty());
    }

    #[test]
    fn bad_permissions_or_patterns_invalidate_claims() {
        assert!(parse(r#"{"https://jwt.attic.rs/v1":{"caches":{"a":{"r":true}}}}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1":{"caches":{"a":{"r":2}}}}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1":{"caches":{"a b":{"r":1}}}}"#).is_err());
        assert!(parse(r#"{"https://jwt.attic.rs/v1":{"caches":{"a":1}}}"#).is_err());
    }

    #[test]
    fn duplicates_are_rejected() {
        assert!(
            parse(r#"{"https://jwt.attic.rs/v1":{"caches":{"a":{"r":1},"a":{"w":1}}}}"#).is_err()
        );
        assert!(parse(r#"{"https://jwt.attic.rs/v1":{"caches":{},"caches":{}}}"#).is_err());
        assert!(parse(r#"{"exp":1,"exp":2,"https://jwt.attic.rs/v1":{"caches":{}}}"#).is_err());
        assert!(parse(r#"{"exp":null,"exp":2,"https://jwt.attic.rs/v1":{"caches":{}}}"#).is_err());
        assert!(parse(
            r#"{"https://jwt.attic.rs/v1":{"caches":{}},"https://jwt.attic.rs/v1":{"caches":{"*":{"r":1}}}}"#
        )
        .is_err());
    }

    #[test]
    fn unknown_claims_are_ignored() {
        let c = parse(
            r#"{"foo":[1,{"x":true}],"nonce":"n","https://jwt.attic.rs/v1":{"extra":1,"caches":{"x":{"r":1,"zz":5}}}}"#,
        )
        .unwrap();
        assert_eq!(c.caches.len(), 1);
        assert_eq!(c.caches[0].1, perm("r"));
    }

    #[test]
    fn standard_claims_parse() {
        let c = parse(
            r#"{"sub":"s","iss":"me","aud":["a","b"],"jti":"j","iat":5,"https://jwt.attic.rs/v1":{"caches":{}}}"#,
        )
        .unwrap();
        assert_eq!(c.iss.as_deref(), Some("me"));
        assert_eq!(c.jti.as_deref(), Some("j"));
        assert_eq!(c.iat, Some(5));
        assert_eq!(c.aud, Some(Audience::Many(vec!["a".into(), "b".into()])));

        let c = parse(r#"{"aud":"single","https://jwt.attic.rs/v1":{"caches":{}}}"#).unwrap();
        assert_eq!(c.aud, Some(Audience::One("single".into())));
    }

    #[test]
    fn server_rights_need_a_literal_true_and_round_trip() {
        let attic = r#""https://jwt.attic.rs/v1":{"caches":{}}"#;
        let granted = parse(&format!(
            r#"{{{attic},"https://garret.dev/v1":{{"push-revocations":true,"later":1}}}}"#
        ))
        .unwrap();
        assert!(granted.server.push_revocations);
        let text = serde_json::to_string(&granted).unwrap();
        assert_eq!(parse(&text).unwrap(), granted);

        for none in [
            format!("{{{attic}}}"),
            format!(r#"{{{attic},"https://garret.dev/v1":null}}"#),
            format!(r#"{{{attic},"https://garret.dev/v1":{{}}}}"#),
            format!(r#"{{{attic},"https://garret.dev/v1":{{"push-revocations":false}}}}"#),
        ] {
            let c = parse(&none).unwrap();
            assert!(!c.server.push_revocations, "{none}");
            // Nothing granted: nothing written, so Attic-shaped tokens stay as they were.
            assert!(!serde_json::to_string(&c).unwrap().contains("garret.dev"));
        }
        for bad in [
            format!(r#"{{{attic},"https://garret.dev/v1":{{"push-revocations":1}}}}"#),
            format!(r#"{{{attic},"https://garret.dev/v1":{{"push-revocations":"true"}}}}"#),
            format!(r#"{{{attic},"https://garret.dev/v1":[]}}"#),
            format!(
                r#"{{{attic},"https://garret.dev/v1":{{"push-revocations":false,"push-revocations":true}}}}"#
            ),
            format!(
                r#"{{{attic},"https://garret.dev/v1":{{}},"https://garret.dev/v1":{{"push-revocations":true}}}}"#
            ),
        ] {
            assert!(parse(&bad).is_err(), "{bad} must fail");
        }
    }

    #[test]
    fn null_standard_claims_are_absent() {
        let c =
            parse(r#"{"sub":null,"exp":null,"aud":null,"https://jwt.attic.rs/v1":{"caches":{}}}"#)
                .unwrap();
        assert_eq!(c.sub, None);
        assert_eq!(c.exp, None);
        assert_eq!(c.aud, None);
    }

    #[test]
    fn wrongly_typed_standard_claims_fail() {
        for bad in [
            r#"{"sub":1,"https://jwt.attic.rs/v1":{"caches":{}}}"#,
            r#"{"exp":"1","https://jwt.attic.rs/v1":{"caches":{}}}"#,
            r#"{"exp":true,"https://jwt.attic.rs/v1":{"caches":{}}}"#,
            r#"{"nbf":18446744073709551615,"https://jwt.attic.rs/v1":{"caches":{}}}"#,
            r#"{"iat":1e300,"https://jwt.attic.rs/v1":{"caches":{}}}"#,
            r#"{"aud":[1],"https://jwt.attic.rs/v1":{"caches":{}}}"#,
            r#"{"aud":{},"https://jwt.attic.rs/v1":{"caches":{}}}"#,
            r#"[]"#,
            r#""claims""#,
        ] {
            assert!(parse(bad).is_err(), "{bad} must fail");
        }
    }

    #[test]
    fn fractional_times_truncate() {
        let c = parse(
            r#"{"exp":1700000000.9,"nbf":1699999999.1,"iat":-1.5,"https://jwt.attic.rs/v1":{"caches":{}}}"#,
        )
        .unwrap();
        assert_eq!(c.exp, Some(1_700_000_000));
        assert_eq!(c.nbf, Some(1_699_999_999));
        assert_eq!(c.iat, Some(-1));
        let c = parse(r#"{"exp":1e9,"https://jwt.attic.rs/v1":{"caches":{}}}"#).unwrap();
        assert_eq!(c.exp, Some(1_000_000_000));
    }

    #[test]
    fn order_is_preserved_on_parse() {
        // Deliberately not alphabetical, and long enough that hashing would scramble it.
        let keys = [
            "zeta", "alpha", "m*", "*", "beta-*", "a", "q+r", "c_d", "0x",
        ];
        let body: Vec<String> = keys.iter().map(|k| format!(r#""{k}":{{"r":1}}"#)).collect();
        let c = with_caches(&format!("{{{}}}", body.join(",")));
        let got: Vec<&str> = c.caches.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(got, keys);
    }

    #[test]
    fn serializes_in_attic_layout_with_order() {
        let c = Claims {
            sub: Some("alice".into()),
            exp: Some(20),
            nbf: Some(10),
            iat: None,
            iss: Some("issuer".into()),
            aud: Some(Audience::Many(vec!["x".into()])),
            jti: Some("id".into()),
            caches: vec![
                (CachePattern::parse("zz").unwrap(), perm("r")),
                (CachePattern::parse("aa-*").unwrap(), perm("w,cd")),
            ],
            server: ServerRights::default(),
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"sub":"alice","exp":20,"nbf":10,"iss":"issuer","aud":["x"],"jti":"id","https://jwt.attic.rs/v1":{"caches":{"zz":{"r":1},"aa-*":{"w":1,"cd":1}}}}"#
        );
        assert_eq!(parse(&text).unwrap(), c);
    }

    #[test]
    fn minimal_claims_serialize_namespace_only() {
        let text = serde_json::to_string(&Claims::default()).unwrap();
        assert_eq!(text, r#"{"https://jwt.attic.rs/v1":{"caches":{}}}"#);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value, json!({ATTIC_NAMESPACE: {"caches": {}}}));
    }

    #[test]
    fn single_audience_serializes_as_string() {
        let c = Claims {
            aud: Some(Audience::One("a".into())),
            ..Claims::default()
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["aud"], json!("a"));
    }

    #[test]
    fn audience_intersection() {
        let accepted = vec!["x".to_string(), "y".to_string()];
        assert!(Audience::One("y".into()).intersects(&accepted));
        assert!(!Audience::One("z".into()).intersects(&accepted));
        assert!(Audience::Many(vec!["z".into(), "x".into()]).intersects(&accepted));
        assert!(!Audience::Many(vec![]).intersects(&accepted));
        assert!(!Audience::One("x".into()).intersects(&[]));
        let many = Audience::Many(vec!["p".into(), "q".into()]);
        let values: Vec<&str> = many.values().collect();
        assert_eq!(values, ["p", "q"]);
    }

    #[test]
    fn first_match_wins_without_merging() {
        // Spec §3.4 example.
        let c = with_caches(r#"{"all-*":{"r":1},"all-ci-*":{"w":1}}"#);
        assert_eq!(c.permission_for("all-ci-x"), perm("r"));
        assert_eq!(c.permission_for("all-x"), perm("r"));
        assert!(c.permission_for("other").is_empty());

        // Reversed order gives the specific entry priority.
        let c = with_caches(r#"{"all-ci-*":{"w":1},"all-*":{"r":1}}"#);
        assert_eq!(c.permission_for("all-ci-x"), perm("w"));
        assert_eq!(c.permission_for("all-x"), perm("r"));
    }

    #[test]
    fn exact_key_beats_earlier_patterns() {
        let c = with_caches(r#"{"*":{"r":1},"prod-*":{"w":1},"prod-main":{"cd":1}}"#);
        assert_eq!(c.permission_for("prod-main"), perm("cd"));
        assert_eq!(c.permission_for("prod-other"), perm("r"));
        assert_eq!(c.permission_for("anything"), perm("r"));
    }

    #[test]
    fn exact_key_with_empty_permission_still_wins() {
        // An explicit empty entry blocks the wildcard for that one cache.
        let c = with_caches(r#"{"*":{"r":1},"secret":{}}"#);
        assert!(c.permission_for("secret").is_empty());
        assert_eq!(c.permission_for("public"), perm("r"));
    }

    #[test]
    fn matching_empty_entry_stops_the_search() {
        let c = with_caches(r#"{"a-*":{"r":0},"*":{"r":1}}"#);
        assert!(c.permission_for("a-1").is_empty());
        assert_eq!(c.permission_for("b"), perm("r"));
    }
}
