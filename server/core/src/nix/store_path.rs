//! Store paths (`<store dir>/<hash>-<name>`) and their pieces.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{base32, Error};

/// Length of the hash part of a store path (160 bits in nix32).
pub const HASH_LEN: usize = 32;
/// Longest allowed name part, as enforced by Nix.
pub const MAX_NAME_LEN: usize = 211;

/// The 32-character nix32 hash part of a store path; the key under which a
/// binary cache files a path (`<hash>.narinfo`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorePathHash(String);

impl StorePathHash {
    /// Validates that `s` is exactly 32 nix32 characters.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.len() != HASH_LEN {
            return Err(Error::InvalidStorePathHash(format!(
                "expected {HASH_LEN} characters, got {}",
                s.len()
            )));
        }
        if let Some(c) = s.bytes().find(|&c| !base32::is_nix32_char(c)) {
            return Err(Error::InvalidStorePathHash(format!(
                "invalid character {:?}",
                char::from(c)
            )));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathHash({})", self.0)
    }
}

impl TryFrom<String> for StorePathHash {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<StorePathHash> for String {
    fn from(h: StorePathHash) -> String {
        h.0
    }
}

impl std::str::FromStr for StorePathHash {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// Checks the name part of a store path: 1..=211 characters from
/// `[A-Za-z0-9+-._?=]`, not starting with `.` (so `.` and `..` can never be
/// names).
pub fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidStorePathName("name is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidStorePathName(format!(
            "name is {} characters, at most {MAX_NAME_LEN} allowed",
            name.len()
        )));
    }
    if name.starts_with('.') {
        return Err(Error::InvalidStorePathName(format!(
            "name {name:?} starts with '.'"
        )));
    }
    if let Some(c) = name
        .bytes()
        .find(|&c| !(c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)))
    {
        return Err(Error::InvalidStorePathName(format!(
            "invalid character {:?} in name",
            char::from(c)
        )));
    }
    Ok(())
}

/// Splits and validates a base name `<hash>-<name>`.
pub fn split_base_name(base: &str) -> Result<(StorePathHash, &str), Error> {
    let (hash, rest) = match (base.get(..HASH_LEN), base.get(HASH_LEN..)) {
        (Some(h), Some(r)) => (h, r),
        _ => {
            return Err(Error::InvalidStorePath(format!(
                "base name {base:?} is too short"
            )))
        }
    };
    let hash = StorePathHash::parse(hash)?;
    let name = rest.strip_prefix('-').ok_or_else(|| {
        Error::InvalidStorePath(format!("base name {base:?} lacks '-' after the hash"))
    })?;
    validate_name(name)?;
    Ok((hash, name))
}

/// Validates a base name `<hash>-<name>` (a store path without its store dir),
/// the form narinfo `References:` and `Deriver:` use.
pub fn validate_base_name(base: &str) -> Result<(), Error> {
    split_base_name(base).map(|_| ())
}

/// A full store path such as `/nix/store/<hash>-<name>`. The store dir is
/// kept as given (it need not be `/nix/store`) but must be a clean absolute
/// path, so joining it with reference base names is unambiguous.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    full: String,
    /// Byte offset of the '/' separating the store dir from the base name.
    slash: usize,
    hash: StorePathHash,
}

impl StorePath {
    pub fn parse(full: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidStorePath(format!("{full:?}: {why}"));
        if !full.starts_with('/') {
            return Err(bad("not an absolute path"));
        }
        if full.ends_with('/') {
            return Err(bad("trailing '/'"));
        }
        let slash = full.rfind('/').ok_or_else(|| bad("not an absolute path"))?;
        let dir = &full[..slash];
        if dir.is_empty() {
            return Err(bad("store directory is empty"));
        }
        super::fields::validate_store_dir(dir)?;
        let (hash, _) = split_base_name(&full[slash + 1..])?;
        Ok(Self {
            full: full.to_owned(),
            slash,
            hash,
        })
    }

    /// The directory holding the path, e.g. `/nix/store` (no trailing '/').
    pub fn store_dir(&self) -> &str {
        &self.full[..self.slash]
    }

    pub fn hash(&self) -> &StorePathHash {
        &self.hash
    }

    /// The part after `<hash>-`.
    pub fn name(&self) -> &str {
        &self.full[self.slash + 1 + HASH_LEN + 1..]
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    /// The whole path as given.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.full)
    }
}

impl std::str::FromStr for StorePath {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "xcp9cav49dmsjbwdjlmkjxj10gkpx553";

    #[test]
    fn hash_parse() {
        let h = StorePathHash::parse(HASH).unwrap();
        assert_eq!(h.as_str(), HASH);
        assert_eq!(h.to_string(), HASH);
        assert_eq!(HASH.parse::<StorePathHash>().unwrap(), h);
    }

    #[test]
    fn hash_rejects() {
        for bad in [
            "",
            &HASH[1..],
            &format!("{HASH}0"),
            "xcp9cav49dmsjbwdjlmkjxj10gkpx55e",
            "xcp9cav49dmsjbwdjlmkjxj10gkpx55o",
            "xcp9cav49dmsjbwdjlmkjxj10gkpx55u",
            "xcp9cav49dmsjbwdjlmkjxj10gkpx55t",
            "XCP9CAV49DMSJBWDJLMKJXJ10GKPX553",
            "xcp9cav49dmsjbwdjlmkjxj10gkpx55/",
            "xcp9cav49dmsjbwdjlmkjxj10gkpx5é",
        ] {
            assert!(StorePathHash::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hash_serde() {
        let h = StorePathHash::parse(HASH).unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{HASH}\""));
        assert_eq!(serde_json::from_str::<StorePathHash>(&json).unwrap(), h);
        assert!(serde_json::from_str::<StorePathHash>("\"short\"").is_err());
        assert!(
            serde_json::from_str::<StorePathHash>("\"xcp9cav49dmsjbwdjlmkjxj10gkpx55e\"").is_err()
        );
        assert!(serde_json::from_str::<StorePathHash>("42").is_err());
    }

    #[test]
    fn names() {
        for ok in [
            "hello-2.10",
            "a",
            "A+b-c._?=",
            "x".repeat(211).as_str(),
            "glibc-2.33-56",
        ] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            ".",
            "..",
            "a b",
            "a/b",
            "a:b",
            "naïve",
            "x".repeat(212).as_str(),
            "a\0b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn base_names() {
        validate_base_name(&format!("{HASH}-hello-2.10")).unwrap();
        let base = format!("{HASH}-hello-2.10");
        let (h, n) = split_base_name(&base).unwrap();
        assert_eq!(h.as_str(), HASH);
        assert_eq!(n, "hello-2.10");
        for bad in [
            HASH.to_string(),
            format!("{HASH}-"),
            format!("{HASH}_hello"),
            format!("{HASH}hello"),
            format!("{}-hello", &HASH[1..]),
            format!("{HASH}-.hello"),
            format!("/nix/store/{HASH}-hello"),
            "é".repeat(20),
            String::new(),
        ] {
            assert!(validate_base_name(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn full_paths() {
        let p = StorePath::parse(&format!("/nix/store/{HASH}-hello-2.10")).unwrap();
        assert_eq!(p.store_dir(), "/nix/store");
        assert_eq!(p.hash().as_str(), HASH);
        assert_eq!(p.name(), "hello-2.10");
        assert_eq!(p.base_name(), format!("{HASH}-hello-2.10"));
        assert_eq!(p.to_string(), format!("/nix/store/{HASH}-hello-2.10"));

        let q = StorePath::parse(&format!("/opt/my.store/{HASH}-x")).unwrap();
        assert_eq!(q.store_dir(), "/opt/my.store");
        assert_eq!(q.name(), "x");

        let r = StorePath::parse(&format!("/store/{HASH}-x")).unwrap();
        assert_eq!(r.store_dir(), "/store");
    }

    #[test]
    fn full_path_rejects() {
        for bad in [
            format!("nix/store/{HASH}-hello"),
            format!("{HASH}-hello"),
            format!("/nix/store/{HASH}-hello/"),
            format!("/nix//store/{HASH}-hello"),
            format!("//nix/store/{HASH}-hello"),
            format!("/nix/store//{HASH}-hello"),
            format!("/nix/../store/{HASH}-hello"),
            format!("/nix/./store/{HASH}-hello"),
            "/nix/store/..".to_string(),
            format!("/nix/store/{HASH}-.."),
            format!("/{HASH}-hello"),
            format!("/nix/store/{HASH}-hello/bin"),
            format!("/nix/store/{HASH}"),
            format!("/nix/store\nURL: x/{HASH}-hello"),
            format!("/nix/st\rore/{HASH}-hello"),
            format!("/nix/st ore/{HASH}-hello"),
            "/".to_string(),
            String::new(),
        ] {
            assert!(StorePath::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
