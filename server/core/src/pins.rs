//! Garret's additions to Attic's API, shared by the server and the `garret` client: pins
//! (a named root whose closure garbage collection leaves alone) and deleting one path.
//! Attic has neither; the bodies follow its style (snake_case JSON, store path hashes).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::nix::store_path::StorePathHash;

/// A pin's name: 1-100 characters from `A-Z a-z 0-9 . _ + -`, starting with a letter or
/// digit, so it is one URL path segment that needs no escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PinName(String);

#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid pin name {0:?}: use 1-100 characters from A-Z a-z 0-9 . _ + -, starting with a letter or digit")]
pub struct InvalidPinName(pub String);

impl PinName {
    pub fn parse(s: &str) -> Result<PinName, InvalidPinName> {
        let mut bytes = s.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
        let rest_ok =
            bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
        if first_ok && rest_ok && s.len() <= 100 {
            Ok(PinName(s.to_string()))
        } else {
            Err(InvalidPinName(s.chars().take(110).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PinName {
    type Err = InvalidPinName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PinName::parse(s)
    }
}

impl<'de> Deserialize<'de> for PinName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PinName::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for PinName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// `POST /_api/v1/cache/{cache}/pins`: pin a path (already in the cache) with its closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePinRequest {
    pub name: PinName,
    pub store_path_hash: StorePathHash,
    /// Keep this many versions of the name, the new one included; older ones are released.
    /// Absent: release none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
}

/// One version of a pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinVersion {
    pub version: u64,
    pub store_path: String,
    /// Paths of the closure the cache held when the version was made (the root included).
    pub closure_size: u64,
    #[serde(default)]
    pub keep: Option<u32>,
    /// Unix seconds.
    pub created_at: i64,
    #[serde(default)]
    pub created_by: Option<String>,
}

/// The answer to a pin: the version made, what it protects, and what it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePinResponse {
    pub name: PinName,
    #[serde(flatten)]
    pub pin: PinVersion,
    /// References (transitively) that the cache does not hold, e.g. paths the push skipped
    /// because cache.nixos.org has them. They are not pinned.
    pub missing_references: u64,
    /// Versions of this name released to honour `keep`.
    pub released_versions: Vec<u64>,
}

/// One pin name with its live versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinEntry {
    pub name: PinName,
    pub versions: Vec<PinVersion>,
}

/// `GET /_api/v1/cache/{cache}/pins`, names in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PinList {
    pub pins: Vec<PinEntry>,
}

/// `DELETE /_api/v1/cache/{cache}/pins/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePinResponse {
    pub name: PinName,
    pub versions_released: u64,
}

/// `DELETE /_api/v1/cache/{cache}/path/{store_path_hash}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletePathResponse {
    pub store_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_one_plain_path_segment() {
        for ok in [
            "release",
            "v1.2.3",
            "main+nightly",
            "a_b-c",
            &"x".repeat(100),
        ] {
            assert!(PinName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "a%2f",
            &"x".repeat(101),
            "é",
        ] {
            assert!(PinName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_create_body_without_keep_keeps_all() {
        let r: CreatePinRequest = serde_json::from_str(
            r#"{"name":"rel","store_path_hash":"00000000000000000000000000000000"}"#,
        )
        .unwrap();
        assert_eq!(r.keep, None);
        assert!(serde_json::from_str::<CreatePinRequest>(
            r#"{"name":"a/b","store_path_hash":"00000000000000000000000000000000"}"#
        )
        .is_err());
    }
}
