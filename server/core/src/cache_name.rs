//! Cache names as Attic defines them: `^[A-Za-z0-9][A-Za-z0-9_+-]{0,49}$`. Starting with an
//! alphanumeric keeps `_api` (and every dot or slash trick) out of the namespace.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheName(String);

#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid cache name {0:?}: use 1-50 characters from A-Z a-z 0-9 _ + -, starting with a letter or digit")]
pub struct InvalidCacheName(pub String);

impl CacheName {
    pub fn parse(s: &str) -> Result<CacheName, InvalidCacheName> {
        let mut bytes = s.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
        let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-'));
        if first_ok && rest_ok && s.len() <= 50 {
            Ok(CacheName(s.to_string()))
        } else {
            let shown: String = s.chars().take(60).collect();
            Err(InvalidCacheName(shown))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for CacheName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CacheName::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for CacheName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_attic_names_and_rejects_the_rest() {
        for ok in ["a", "hello", "alice+shared", "A-1_x", &"x".repeat(50)] {
            assert!(CacheName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "_api",
            "-x",
            "..",
            "a/b",
            "a.b",
            "a b",
            &"x".repeat(51),
            "é",
        ] {
            assert!(CacheName::parse(bad).is_err(), "{bad}");
        }
    }
}
