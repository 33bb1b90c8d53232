//! Pull-through upstreams: what a cache says about the caches it substitutes from, and the
//! pure decisions about an upstream's answer (is it the path we asked for, is it signed by
//! a key we trust, how are its bytes compressed, where is its NAR). The fetching itself is
//! garretd's (`server/garretd/src/upstream/`).

use serde::{Deserialize, Serialize};

use crate::nix::narinfo::NarInfo;
use crate::nix::signing::{fingerprint, PublicKey};
use crate::nix::store_path::StorePath;
use crate::nix::Error;

/// One upstream binary cache. The same shape in `server.toml` (`public-keys`, kebab-case
/// like the rest of the file), in the API's cache config (`public_keys`, snake_case like
/// the rest of Attic's JSON) and rendered by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL, e.g. `https://cache.nixos.org` (a trailing `/` is ignored).
    pub url: String,
    /// `name:base64` keys; an answer must carry a signature by one of them.
    #[serde(alias = "public-keys")]
    pub public_keys: Vec<String>,
    /// Lower is asked first, as Nix orders substituters; ties keep the listed order.
    #[serde(default = "default_priority")]
    pub priority: i32,
}

fn default_priority() -> i32 {
    50
}

/// An upstream whose keys are parsed and URL is checked.
#[derive(Debug, Clone)]
pub struct CheckedUpstream {
    /// Without a trailing `/`.
    pub base: String,
    pub keys: Vec<PublicKey>,
    pub priority: i32,
}

impl Upstream {
    /// Refuses what could never work: a non-HTTP URL, one with a query or fragment (we
    /// append paths), no key (every answer would be refused) or a malformed key.
    pub fn check(&self) -> Result<CheckedUpstream, Error> {
        let bad = |m: String| Error::InvalidField(format!("upstream {:?}: {m}", self.url));
        let base = self.url.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| bad("the URL must start with http:// or https://".into()))?;
        if rest.is_empty() || rest.contains(['?', '#', ' ', '\n', '\r', '\t']) {
            return Err(bad(
                "the URL needs a host and no query, fragment or whitespace".into(),
            ));
        }
        if self.public_keys.is_empty() {
            return Err(bad("at least one public key is required".into()));
        }
        let keys = self
            .public_keys
            .iter()
            .map(|k| PublicKey::parse(k).map_err(|e| bad(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CheckedUpstream {
            base: base.to_string(),
            keys,
            priority: self.priority,
        })
    }
}

/// Checks every upstream of a cache; the first problem is the error.
pub fn check_all(upstreams: &[Upstream]) -> Result<Vec<CheckedUpstream>, Error> {
    let mut out: Vec<CheckedUpstream> = upstreams
        .iter()
        .map(Upstream::check)
        .collect::<Result<_, _>>()?;
    // Stable: equal priorities are asked in the order they are listed.
    out.sort_by_key(|u| u.priority);
    Ok(out)
}

/// Why an upstream's narinfo is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It describes another store path than the one asked for.
    WrongPath,
    /// Its store path lives under another store dir than the cache's.
    WrongStoreDir,
    /// No `Sig` line at all.
    Unsigned,
    /// Signatures, but none by a trusted key that verifies.
    BadSignature,
    /// Its NAR uses a compression we cannot decode.
    Compression(String),
    /// Something else about it is unusable (size 0, bad reference).
    Invalid(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::WrongPath => f.write_str("the narinfo describes another store path"),
            Refusal::WrongStoreDir => f.write_str("the store path is under another store dir"),
            Refusal::Unsigned => f.write_str("the narinfo is not signed"),
            Refusal::BadSignature => {
                f.write_str("no signature verifies against the upstream's trusted keys")
            }
            Refusal::Compression(c) => write!(f, "unsupported NAR compression {c:?}"),
            Refusal::Invalid(m) => write!(f, "invalid narinfo: {m}"),
        }
    }
}

/// The compressions of upstream NARs garretd decodes (those Nix writes, `bzip2` being the
/// narinfo default when `Compression` is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarCompression {
    None,
    Xz,
    Zstd,
    Bzip2,
    Brotli,
    Gzip,
}

impl NarCompression {
    pub fn from_nix(name: &str) -> Option<NarCompression> {
        Some(match name {
            "none" | "" => NarCompression::None,
            "xz" => NarCompression::Xz,
            "zstd" => NarCompression::Zstd,
            "bzip2" => NarCompression::Bzip2,
            "br" => NarCompression::Brotli,
            "gzip" => NarCompression::Gzip,
            _ => return None,
        })
    }
}

/// Decides whether an upstream's narinfo may be served for `wanted_hash` in a cache whose
/// store dir is `store_dir`: the right path, a decodable NAR, and a signature over Nix's
/// fingerprint by one of `keys`.
pub fn verify_narinfo(
    info: &NarInfo,
    wanted_hash: &str,
    store_dir: &str,
    keys: &[PublicKey],
) -> Result<NarCompression, Refusal> {
    let path = StorePath::parse(&info.store_path).map_err(|e| Refusal::Invalid(e.to_string()))?;
    if path.hash().as_str() != wanted_hash {
        return Err(Refusal::WrongPath);
    }
    if path.store_dir() != store_dir {
        return Err(Refusal::WrongStoreDir);
    }
    let compression = NarCompression::from_nix(&info.compression)
        .ok_or_else(|| Refusal::Compression(info.compression.clone()))?;
    if info.sigs.is_empty() {
        return Err(Refusal::Unsigned);
    }
    let fp = fingerprint(
        &info.store_path,
        &info.nar_hash,
        info.nar_size,
        &info.references,
    )
    .map_err(|e| Refusal::Invalid(e.to_string()))?;
    let trusted = info
        .sigs
        .iter()
        .any(|sig| keys.iter().any(|k| k.verify(&fp, sig)));
    if !trusted {
        return Err(Refusal::BadSignature);
    }
    Ok(compression)
}

/// Where an upstream's NAR is: the narinfo's `URL`, absolute or relative to the base.
/// `None` for a URL we will not follow (another scheme, or one that climbs out with `..`).
pub fn nar_url(base: &str, url: &str) -> Option<String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Some(url.to_string());
    }
    if url.contains("://") || url.split('/').any(|s| s == "..") || url.contains(['\n', ' ']) {
        return None;
    }
    Some(format!(
        "{}/{}",
        base.trim_end_matches('/'),
        url.trim_start_matches('/')
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::signing::Keypair;
    use crate::nix::Sha256Hash;

    const HASH: &str = "n5z75rf7snr3rz5wy57zn6pf44mrsf8h";

    fn info(kp: Option<&Keypair>) -> NarInfo {
        let mut i = NarInfo {
            store_path: format!("/nix/store/{HASH}-d"),
            url: "nar/x.nar.xz".into(),
            compression: "xz".into(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256Hash::digest(b"nar"),
            nar_size: 3,
            references: vec![format!("{HASH}-d")],
            deriver: None,
            sigs: vec![],
            ca: None,
            system: None,
        };
        if let Some(kp) = kp {
            let fp = fingerprint(&i.store_path, &i.nar_hash, i.nar_size, &i.references).unwrap();
            i.sigs.push(kp.sign(&fp));
        }
        i
    }

    #[test]
    fn trusted_signature_accepted_others_refused() {
        let up = Keypair::generate("up-1").unwrap();
        let other = Keypair::generate("up-1").unwrap();
        let keys = [up.public_key()];
        assert_eq!(
            verify_narinfo(&info(Some(&up)), HASH, "/nix/store", &keys),
            Ok(NarCompression::Xz)
        );
        assert_eq!(
            verify_narinfo(&info(None), HASH, "/nix/store", &keys),
            Err(Refusal::Unsigned)
        );
        assert_eq!(
            verify_narinfo(&info(Some(&other)), HASH, "/nix/store", &keys),
            Err(Refusal::BadSignature)
        );
        let mut tampered = info(Some(&up));
        tampered.nar_size = 4;
        assert_eq!(
            verify_narinfo(&tampered, HASH, "/nix/store", &keys),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn wrong_path_store_dir_and_compression_refused() {
        let up = Keypair::generate("up-1").unwrap();
        let keys = [up.public_key()];
        let i = info(Some(&up));
        assert_eq!(
            verify_narinfo(&i, "00000000000000000000000000000000", "/nix/store", &keys),
            Err(Refusal::WrongPath)
        );
        assert_eq!(
            verify_narinfo(&i, HASH, "/other/store", &keys),
            Err(Refusal::WrongStoreDir)
        );
        let mut odd = i.clone();
        odd.compression = "lz4".into();
        assert!(matches!(
            verify_narinfo(&odd, HASH, "/nix/store", &keys),
            Err(Refusal::Compression(_))
        ));
    }

    #[test]
    fn urls_and_checks() {
        assert_eq!(
            nar_url("http://u/", "nar/a.nar").as_deref(),
            Some("http://u/nar/a.nar")
        );
        assert_eq!(
            nar_url("http://u", "https://cdn/x").as_deref(),
            Some("https://cdn/x")
        );
        assert_eq!(nar_url("http://u", "../secret"), None);
        assert_eq!(nar_url("http://u", "file:///etc/passwd"), None);
        let key = Keypair::generate("k").unwrap().public_key().to_string();
        let up = |url: &str, keys: Vec<String>, priority| Upstream {
            url: url.into(),
            public_keys: keys,
            priority,
        };
        assert!(up("ftp://x", vec![key.clone()], 1).check().is_err());
        assert!(up("http://x?a", vec![key.clone()], 1).check().is_err());
        assert!(up("http://x", vec![], 1).check().is_err());
        assert!(up("http://x", vec!["k:bad".into()], 1).check().is_err());
        let all = check_all(&[
            up("http://b/", vec![key.clone()], 40),
            up("http://a", vec![key], 10),
        ])
        .unwrap();
        assert_eq!(all[0].base, "http://a");
        assert_eq!(all[1].base, "http://b");
    }
}
