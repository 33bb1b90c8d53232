//! SHA-256 digests and the textual forms Nix and Attic use for them.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{base32, Error};

const PREFIX: &str = "sha256:";
const SRI_PREFIX: &str = "sha256-";
const HEX_LEN: usize = 64;
const NIX32_LEN: usize = base32::encoded_len(32);
/// Padded standard base64 of 32 bytes.
const BASE64_LEN: usize = 44;

/// A SHA-256 digest. Display renders the typed hex form Attic emits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash([u8; 32]);

impl Sha256Hash {
    /// Wraps raw digest bytes.
    pub const fn from_digest(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// Hashes `data` in one go; handy for small inputs and tests.
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The raw 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses what Attic's JSON API accepts: `sha256:<64 hex>` or
    /// `sha256:<52 nix32>`. Anything else is rejected so the API stays as
    /// narrow as upstream's.
    pub fn parse_attic(s: &str) -> Result<Self, Error> {
        let body = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::InvalidHash(format!("expected 'sha256:' prefix in {s:?}")))?;
        match body.len() {
            HEX_LEN => Self::from_hex(body),
            NIX32_LEN => Self::from_nix32(body),
            n => Err(Error::InvalidHash(format!(
                "sha256 hash must be {HEX_LEN} hex or {NIX32_LEN} nix32 characters, got {n}"
            ))),
        }
    }

    /// Parses any encoding Nix itself accepts in narinfo files: the Attic
    /// forms plus `sha256:<base64>` and SRI `sha256-<base64>`.
    pub fn parse_any(s: &str) -> Result<Self, Error> {
        if let Some(body) = s.strip_prefix(SRI_PREFIX) {
            return Self::from_base64(body);
        }
        let body = s.strip_prefix(PREFIX).ok_or_else(|| {
            Error::InvalidHash(format!("expected 'sha256:' or 'sha256-' prefix in {s:?}"))
        })?;
        match body.len() {
            HEX_LEN => Self::from_hex(body),
            NIX32_LEN => Self::from_nix32(body),
            BASE64_LEN => Self::from_base64(body),
            n => Err(Error::InvalidHash(format!(
                "sha256 hash has unexpected length {n}"
            ))),
        }
    }

    /// `sha256:<64 lowercase hex>`, the form Attic emits.
    pub fn to_typed_hex(&self) -> String {
        format!("{PREFIX}{}", self.to_hex())
    }

    /// `sha256:<52 nix32>`, the form Nix emits and signs.
    pub fn to_typed_nix32(&self) -> String {
        format!("{PREFIX}{}", self.to_nix32())
    }

    /// Bare lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Bare nix32 (52 characters), as used in Nix-style NAR file names.
    pub fn to_nix32(&self) -> String {
        base32::encode(&self.0)
    }

    fn from_hex(body: &str) -> Result<Self, Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(body, &mut out)
            .map_err(|e| Error::InvalidHash(format!("bad hex digest: {e}")))?;
        Ok(Self(out))
    }

    fn from_nix32(body: &str) -> Result<Self, Error> {
        let bytes = base32::decode(body)
            .map_err(|e| Error::InvalidHash(format!("bad nix32 digest: {e}")))?;
        Self::from_slice(&bytes)
    }

    fn from_base64(body: &str) -> Result<Self, Error> {
        let bytes = STANDARD
            .decode(body)
            .map_err(|e| Error::InvalidHash(format!("bad base64 digest: {e}")))?;
        Self::from_slice(&bytes)
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidHash(format!("digest is {} bytes, expected 32", bytes.len()))
        })?;
        Ok(Self(arr))
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hash({self})")
    }
}

/// JSON form is what Attic emits (typed hex); input accepts what Attic
/// accepts.
impl serde::Serialize for Sha256Hash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_typed_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Hash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse_attic(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a";
    const NIX32: &str = "16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci";

    fn sample() -> Sha256Hash {
        let mut b = [0u8; 32];
        hex::decode_to_slice(HEX, &mut b).unwrap();
        Sha256Hash::from_digest(b)
    }

    #[test]
    fn attic_accepts_hex_and_nix32() {
        assert_eq!(
            Sha256Hash::parse_attic(&format!("sha256:{HEX}")).unwrap(),
            sample()
        );
        assert_eq!(
            Sha256Hash::parse_attic(&format!("sha256:{NIX32}")).unwrap(),
            sample()
        );
        // Upper-case hex is tolerated, like Nix does.
        let upper = format!("sha256:{}", HEX.to_uppercase());
        assert_eq!(Sha256Hash::parse_attic(&upper).unwrap(), sample());
    }

    #[test]
    fn attic_rejects_other_forms() {
        let b64 = STANDARD.encode(sample().as_bytes());
        for bad in [
            HEX.to_string(),
            NIX32.to_string(),
            format!("sha256:{b64}"),
            format!("sha256-{b64}"),
            format!("sha512:{HEX}"),
            format!("SHA256:{HEX}"),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            format!("sha256:{}g", &HEX[1..]),
            format!("sha256:{}e", &NIX32[1..]),
            format!("md5:{HEX}"),
            String::new(),
            "sha256:".to_string(),
        ] {
            assert!(Sha256Hash::parse_attic(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn any_accepts_all_nix_forms() {
        let b64 = STANDARD.encode(sample().as_bytes());
        assert_eq!(b64.len(), BASE64_LEN);
        for ok in [
            format!("sha256:{HEX}"),
            format!("sha256:{NIX32}"),
            format!("sha256:{b64}"),
            format!("sha256-{b64}"),
        ] {
            assert_eq!(Sha256Hash::parse_any(&ok).unwrap(), sample(), "{ok}");
        }
    }

    #[test]
    fn any_rejects_garbage() {
        let b64 = STANDARD.encode(sample().as_bytes());
        for bad in [
            format!("sha256-{HEX}"),
            format!("sha256-{NIX32}"),
            format!("sha256-{}", &b64[..43]),
            format!("sha1:{b64}"),
            format!("sha256:{}!", &b64[..43]),
            HEX.to_string(),
        ] {
            assert!(Sha256Hash::parse_any(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rendering() {
        let h = sample();
        assert_eq!(h.to_typed_hex(), format!("sha256:{HEX}"));
        assert_eq!(h.to_typed_nix32(), format!("sha256:{NIX32}"));
        assert_eq!(h.to_string(), h.to_typed_hex());
        assert_eq!(h.to_hex(), HEX);
        assert_eq!(h.to_nix32(), NIX32);
        assert_eq!(format!("{h:?}"), format!("Sha256Hash(sha256:{HEX})"));
    }

    #[test]
    fn digest_of_spec_nar() {
        // Only checks the helper agrees with sha2 on a known input.
        let h = Sha256Hash::digest(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ordering_and_copy() {
        let a = Sha256Hash::from_digest([0; 32]);
        let b = Sha256Hash::from_digest([1; 32]);
        let c = a;
        assert!(a < b);
        assert_eq!(a, c);
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(json, format!("\"sha256:{HEX}\""));
        let back: Sha256Hash = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample());
        let from_nix32: Sha256Hash = serde_json::from_str(&format!("\"sha256:{NIX32}\"")).unwrap();
        assert_eq!(from_nix32, sample());
        assert!(serde_json::from_str::<Sha256Hash>("\"nope\"").is_err());
    }
}
