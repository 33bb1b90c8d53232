//! The per-cache permission set and its compact JSON form (`{"r":1,"w":1,...}`).

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a token may do to one cache. Each flag maps to one JSON letter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permission {
    /// `r`: read narinfo, NARs and cache config.
    pub pull: bool,
    /// `w`: upload paths and ask which are missing.
    pub push: bool,
    /// `d`: delete store paths from the cache and release pins (Garret; Attic reserves it).
    pub delete: bool,
    /// `cc`: create the cache.
    pub create_cache: bool,
    /// `cr`: reconfigure the cache.
    pub configure_cache: bool,
    /// `cq`: change retention/quota settings.
    pub configure_cache_retention: bool,
    /// `cd`: destroy the cache.
    pub destroy_cache: bool,
}

/// Letter order used when emitting JSON; fixed so minted tokens are byte-stable.
const LETTERS: [&str; 7] = ["r", "w", "d", "cc", "cr", "cq", "cd"];

impl Permission {
    /// Every permission granted.
    pub const fn all() -> Self {
        Permission {
            pull: true,
            push: true,
            delete: true,
            create_cache: true,
            configure_cache: true,
            configure_cache_retention: true,
            destroy_cache: true,
        }
    }

    /// No permission at all. Same as `Default`, but usable in `const` contexts.
    pub const fn none() -> Self {
        Permission {
            pull: false,
            push: false,
            delete: false,
            create_cache: false,
            configure_cache: false,
            configure_cache_retention: false,
            destroy_cache: false,
        }
    }

    /// True when no letter is granted; used for the "can discover this cache" rule.
    pub const fn is_empty(&self) -> bool {
        !(self.pull
            || self.push
            || self.delete
            || self.create_cache
            || self.configure_cache
            || self.configure_cache_retention
            || self.destroy_cache)
    }

    /// Flag-wise OR. Used to add public-cache pull and to merge `atticadm` flags; never used to
    /// combine pattern entries of a token (those are first-match-wins).
    pub const fn union(self, other: Permission) -> Self {
        Permission {
            pull: self.pull || other.pull,
            push: self.push || other.push,
            delete: self.delete || other.delete,
            create_cache: self.create_cache || other.create_cache,
            configure_cache: self.configure_cache || other.configure_cache,
            configure_cache_retention: self.configure_cache_retention
                || other.configure_cache_retention,
            destroy_cache: self.destroy_cache || other.destroy_cache,
        }
    }

    fn flag(&self, letter: &str) -> Option<bool> {
        Some(match letter {
            "r" => self.pull,
            "w" => self.push,
            "d" => self.delete,
            "cc" => self.create_cache,
            "cr" => self.configure_cache,
            "cq" => self.configure_cache_retention,
            "cd" => self.destroy_cache,
            _ => return None,
        })
    }

    fn flag_mut(&mut self, letter: &str) -> Option<&mut bool> {
        Some(match letter {
            "r" => &mut self.pull,
            "w" => &mut self.push,
            "d" => &mut self.delete,
            "cc" => &mut self.create_cache,
            "cr" => &mut self.configure_cache,
            "cq" => &mut self.configure_cache_retention,
            "cd" => &mut self.destroy_cache,
            _ => return None,
        })
    }
}

impl Serialize for Permission {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let granted: Vec<&str> = LETTERS
            .iter()
            .copied()
            .filter(|l| self.flag(l) == Some(true))
            .collect();
        let mut map = serializer.serialize_map(Some(granted.len()))?;
        for letter in granted {
            map.serialize_entry(letter, &1u8)?;
        }
        map.end()
    }
}

/// A single permission value. Attic encodes flags as the integers 0/1; booleans, other numbers
/// and anything else must fail so that a sloppily-built token is rejected as a whole.
struct Bit(bool);

impl<'de> Deserialize<'de> for Bit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BitVisitor;

        impl Visitor<'_> for BitVisitor {
            type Value = Bit;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the integer 0 or 1")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bit, E> {
                match v {
                    0 => Ok(Bit(false)),
                    1 => Ok(Bit(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bit, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }

        // Let the input pick its own type: only the integer visitors are implemented, so booleans,
        // floats, strings and null all fall through to serde's "invalid type" error.
        deserializer.deserialize_any(BitVisitor)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PermissionVisitor;

        impl<'de> Visitor<'de> for PermissionVisitor {
            type Value = Permission;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a permission object such as {\"r\":1,\"w\":1}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Permission, A::Error> {
                let mut perm = Permission::none();
                let mut seen = [false; LETTERS.len()];
                while let Some(key) = map.next_key::<String>()? {
                    match LETTERS.iter().position(|l| *l == key) {
                        Some(idx) => {
                            // A repeated letter is ambiguous; refuse rather than pick one.
                            if seen[idx] {
                                return Err(de::Error::custom(format_args!(
                                    "duplicate permission `{key}`"
                                )));
                            }
                            seen[idx] = true;
                            let Bit(value) = map.next_value()?;
                            if let Some(slot) = perm.flag_mut(&key) {
                                *slot = value;
                            }
                        }
                        // Attic ignores letters it does not know; so do we.
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(perm)
            }
        }

        deserializer.deserialize_map(PermissionVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Permission, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn parse_str(s: &str) -> Result<Permission, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn default_is_empty_and_all_is_not() {
        assert!(Permission::default().is_empty());
        assert_eq!(Permission::default(), Permission::none());
        assert!(!Permission::all().is_empty());
        for letter in LETTERS {
            let mut p = Permission::none();
            *p.flag_mut(letter).unwrap() = true;
            assert!(!p.is_empty(), "{letter} alone is not empty");
        }
    }

    #[test]
    fn union_is_flagwise_or() {
        let a = Permission {
            pull: true,
            ..Permission::none()
        };
        let b = Permission {
            push: true,
            destroy_cache: true,
            ..Permission::none()
        };
        let u = a.union(b);
        assert!(u.pull && u.push && u.destroy_cache);
        assert!(!u.delete && !u.create_cache);
        assert_eq!(a.union(Permission::none()), a);
        assert_eq!(a.union(Permission::all()), Permission::all());
    }

    #[test]
    fn parses_all_letters() {
        let p = parse(json!({"r":1,"w":1,"d":1,"cc":1,"cr":1,"cq":1,"cd":1})).unwrap();
        assert_eq!(p, Permission::all());
        let p = parse(json!({"r":1,"cq":1})).unwrap();
        assert!(p.pull && p.configure_cache_retention);
        assert!(!p.push && !p.delete && !p.create_cache && !p.configure_cache);
        assert!(!p.destroy_cache);
    }

    #[test]
    fn missing_and_zero_mean_not_granted() {
        assert_eq!(parse(json!({})).unwrap(), Permission::none());
        assert_eq!(
            parse(json!({"r":0,"w":0,"d":0,"cc":0,"cr":0,"cq":0,"cd":0})).unwrap(),
            Permission::none()
        );
    }

    #[test]
    fn booleans_are_rejected() {
        assert!(parse(json!({"r": true})).is_err());
        assert!(parse(json!({"r": false})).is_err());
        assert!(parse(json!({"r": 1, "w": true})).is_err());
    }

    #[test]
    fn other_values_are_rejected() {
        for bad in [
            r#"{"r":2}"#,
            r#"{"r":-1}"#,
            r#"{"r":1.0}"#,
            r#"{"r":0.5}"#,
            r#"{"r":"1"}"#,
            r#"{"r":null}"#,
            r#"{"r":[1]}"#,
            r#"{"r":{}}"#,
            r#"{"r":18446744073709551617}"#,
        ] {
            assert!(parse_str(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn non_objects_are_rejected() {
        for bad in ["1", "true", "null", "[]", r#""r""#] {
            assert!(parse_str(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn duplicate_letters_are_rejected() {
        assert!(parse_str(r#"{"r":1,"r":1}"#).is_err());
        assert!(parse_str(r#"{"r":1,"r":0}"#).is_err());
    }

    #[test]
    fn unknown_letters_are_ignored() {
        let p = parse(json!({"r":1,"x":true,"zz":{"nested":[1,2]}})).unwrap();
        assert_eq!(
            p,
            Permission {
                pull: true,
                ..Permission::none()
            }
        );
    }

    #[test]
    fn serializes_only_granted_letters_in_fixed_order() {
        assert_eq!(serde_json::to_string(&Permission::none()).unwrap(), "{}");
        let p = Permission {
            destroy_cache: true,
            pull: true,
            create_cache: true,
            ..Permission::none()
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"r":1,"cc":1,"cd":1}"#
        );
        assert_eq!(
            serde_json::to_string(&Permission::all()).unwrap(),
            r#"{"r":1,"w":1,"d":1,"cc":1,"cr":1,"cq":1,"cd":1}"#
        );
    }

    #[test]
    fn round_trips_every_combination() {
        for bits in 0u8..128 {
            let mut p = Permission::none();
            for (i, letter) in LETTERS.iter().enumerate() {
                *p.flag_mut(letter).unwrap() = bits & (1 << i) != 0;
            }
            let text = serde_json::to_string(&p).unwrap();
            assert_eq!(parse_str(&text).unwrap(), p, "{text}");
        }
    }
}
