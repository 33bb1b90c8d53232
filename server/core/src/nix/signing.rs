//! Ed25519 keys and narinfo signatures in Nix's `name:base64` string form.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::hash::Sha256Hash;
use super::store_path::{validate_base_name, StorePath};
use super::Error;

/// Splits `name:base64`, checking the name is non-empty (the split on the
/// first ':' already guarantees it has no ':').
fn split_named<'a>(s: &'a str, what: &str) -> Result<(&'a str, Vec<u8>), Error> {
    let (name, data) = s
        .split_once(':')
        .ok_or_else(|| Error::InvalidKey(format!("{what} must look like 'name:base64'")))?;
    validate_key_name(name)?;
    let bytes = STANDARD
        .decode(data)
        .map_err(|e| Error::InvalidKey(format!("{what} is not valid base64: {e}")))?;
    Ok((name, bytes))
}

fn validate_key_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidKey("key name is empty".into()));
    }
    if name.contains(':') {
        return Err(Error::InvalidKey("key name must not contain ':'".into()));
    }
    Ok(())
}

/// A named ed25519 signing key. Debug output never includes the secret.
#[derive(Clone)]
pub struct Keypair {
    name: String,
    key: SigningKey,
}

impl Keypair {
    /// Creates a fresh key from the OS random source.
    pub fn generate(name: &str) -> Result<Self, Error> {
        validate_key_name(name)?;
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses `name:base64(seed || public key)` (64 bytes, libsodium layout
    /// as written by `nix key generate-secret`), rejecting strings whose
    /// public half does not belong to the seed.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, bytes) = split_named(s, "secret key")?;
        let bytes: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
            Error::InvalidKey(format!("secret key is {} bytes, expected 64", bytes.len()))
        })?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| {
            Error::InvalidKey("public half of the secret key does not match its seed".into())
        })?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// `name:base64(seed || public key)`; this string is the secret.
    pub fn to_canonical_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            STANDARD.encode(self.key.to_keypair_bytes())
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint (see [`fingerprint`]) and returns `name:base64sig`,
    /// ready for a narinfo `Sig:` line.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(sig.to_bytes()))
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("name", &self.name)
            .field("public_key", &self.public_key().to_canonical_string())
            .finish_non_exhaustive()
    }
}

/// A named ed25519 public key, as listed in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `name:base64(32 bytes)`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let (name, bytes) = split_named(s, "public key")?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            Error::InvalidKey(format!("public key is {} bytes, expected 32", bytes.len()))
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| Error::InvalidKey("public key is not a valid ed25519 point".into()))?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    pub fn to_canonical_string(&self) -> String {
        format!("{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a `name:base64sig` string against `fingerprint`. A signature
    /// made under a different key name never verifies, mirroring how Nix
    /// picks keys by name. Malformed signatures simply fail.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, data)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = STANDARD.decode(data) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        let sig = Signature::from_bytes(&bytes);
        self.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_canonical_string())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_canonical_string())
    }
}

/// Builds the string Nix signs for a path:
/// `1;<store path>;sha256:<nix32>;<nar size>;<refs>`, where `refs` are the
/// base names expanded with the store path's own store dir, sorted bytewise
/// and de-duplicated (Nix keeps them in a sorted set), joined with ','.
pub fn fingerprint(
    store_path: &str,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[String],
) -> Result<String, Error> {
    let path = StorePath::parse(store_path)?;
    if nar_size == 0 {
        return Err(Error::Signing(
            "cannot fingerprint a path whose NAR size is unknown (0)".into(),
        ));
    }
    let dir = path.store_dir();
    let mut refs = Vec::with_capacity(references.len());
    for r in references {
        validate_base_name(r)?;
        refs.push(format!("{dir}/{r}"));
    }
    refs.sort_unstable();
    refs.dedup();
    Ok(format!(
        "1;{store_path};{};{nar_size};{}",
        nar_hash.to_typed_nix32(),
        refs.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIXOS_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    const NIXOS_FP: &str = "1;/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10;sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci;206104;/nix/store/563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56,/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10";
    const NIXOS_SIG: &str = "cache.nixos.org-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==";
    const HEX: &str = "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a";

    fn hello_hash() -> Sha256Hash {
        Sha256Hash::parse_attic(&format!("sha256:{HEX}")).unwrap()
    }

    #[test]
    fn fingerprint_matches_spec_vector() {
        // References deliberately unsorted: the fingerprint must sort them.
        let refs = vec![
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10".to_string(),
            "563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56".to_string(),
        ];
        let fp = fingerprint(
            "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
            &hello_hash(),
            206104,
            &refs,
        )
        .unwrap();
        assert_eq!(fp, NIXOS_FP);
    }

    #[test]
    fn cache_nixos_org_signature_verifies() {
        let pk = PublicKey::parse(NIXOS_KEY).unwrap();
        assert_eq!(pk.name(), "cache.nixos.org-1");
        assert_eq!(pk.to_canonical_string(), NIXOS_KEY);
        assert!(pk.verify(NIXOS_FP, NIXOS_SIG));
        // Any change to the message or signature must break it.
        assert!(!pk.verify(&NIXOS_FP.replace("206104", "206105"), NIXOS_SIG));
        let flipped = NIXOS_SIG.replace("lo9E", "lo9F");
        assert!(!pk.verify(NIXOS_FP, &flipped));
        // Same signature bytes under another key name are not accepted.
        let renamed = NIXOS_SIG.replace("cache.nixos.org-1:", "other:");
        assert!(!pk.verify(NIXOS_FP, &renamed));
        for junk in [
            "",
            "cache.nixos.org-1",
            "cache.nixos.org-1:",
            "cache.nixos.org-1:!!",
            "cache.nixos.org-1:AAAA",
        ] {
            assert!(!pk.verify(NIXOS_FP, junk));
        }
    }

    #[test]
    fn fingerprint_edge_cases() {
        let h = hello_hash();
        let fp = fingerprint("/custom/dir/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x", &h, 1, &[]).unwrap();
        assert_eq!(
            fp,
            format!(
                "1;/custom/dir/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x;{};1;",
                h.to_typed_nix32()
            )
        );
        let refs = vec![
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-x".to_string(),
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-x".to_string(),
            "0cp9cav49dmsjbwdjlmkjxj10gkpx553-y".to_string(),
        ];
        let fp = fingerprint(
            "/custom/dir/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x",
            &h,
            1,
            &refs,
        )
        .unwrap();
        assert!(fp.ends_with(
            ";1;/custom/dir/0cp9cav49dmsjbwdjlmkjxj10gkpx553-y,/custom/dir/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x"
        ));
        assert!(fingerprint("relative/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x", &h, 1, &[]).is_err());
        assert!(fingerprint("/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x", &h, 0, &[]).is_err());
        let full_ref = vec!["/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x".to_string()];
        assert!(fingerprint(
            "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-x",
            &h,
            1,
            &full_ref
        )
        .is_err());
    }

    #[test]
    fn sign_verify_round_trip() {
        let kp = Keypair::generate("my-cache").unwrap();
        assert_eq!(kp.name(), "my-cache");
        let sig = kp.sign(NIXOS_FP);
        assert!(sig.starts_with("my-cache:"));
        let pk = kp.public_key();
        assert!(pk.verify(NIXOS_FP, &sig));
        assert!(!pk.verify("something else", &sig));
        // Deterministic signatures.
        assert_eq!(kp.sign(NIXOS_FP), sig);
        // Another key does not verify it.
        let other = Keypair::generate("my-cache").unwrap().public_key();
        assert!(!other.verify(NIXOS_FP, &sig));
    }

    #[test]
    fn keypair_string_round_trip() {
        let kp = Keypair::generate("hello").unwrap();
        let s = kp.to_canonical_string();
        assert!(s.starts_with("hello:"));
        let back = Keypair::parse(&s).unwrap();
        assert_eq!(back.to_canonical_string(), s);
        assert_eq!(back.public_key(), kp.public_key());
        let pk_s = kp.public_key().to_canonical_string();
        assert_eq!(PublicKey::parse(&pk_s).unwrap(), kp.public_key());
    }

    #[test]
    fn golden_signature_from_fixed_seed() {
        // RFC 8032 test 1 secret seed, so the signature is reproducible.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let public =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let mut bytes = seed.clone();
        bytes.extend_from_slice(&public);
        let kp = Keypair::parse(&format!("t:{}", STANDARD.encode(&bytes))).unwrap();
        // RFC 8032 test 1 signs the empty message.
        let expected = hex::decode(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        )
        .unwrap();
        assert_eq!(kp.sign(""), format!("t:{}", STANDARD.encode(expected)));
    }

    #[test]
    fn keypair_parse_rejects() {
        let kp = Keypair::generate("k").unwrap();
        let mut bytes = STANDARD.decode(&kp.to_canonical_string()[2..]).unwrap();
        // Mismatched public half.
        bytes[40] ^= 1;
        assert!(Keypair::parse(&format!("k:{}", STANDARD.encode(&bytes))).is_err());
        // Wrong lengths, missing name, bad base64.
        assert!(Keypair::parse(&format!("k:{}", STANDARD.encode(&bytes[..32]))).is_err());
        assert!(Keypair::parse(&format!(":{}", &kp.to_canonical_string()[2..])).is_err());
        assert!(Keypair::parse(&kp.to_canonical_string()[2..]).is_err());
        assert!(Keypair::parse("k:not base64!").is_err());
        assert!(Keypair::generate("").is_err());
        assert!(Keypair::generate("a:b").is_err());
    }

    #[test]
    fn public_key_parse_rejects() {
        assert!(
            PublicKey::parse("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShj")
                .is_err()
        );
        assert!(PublicKey::parse(":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=").is_err());
        assert!(PublicKey::parse("6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=").is_err());
        assert!(PublicKey::parse(&format!("k:{}", STANDARD.encode([0u8; 64]))).is_err());
    }

    #[test]
    fn debug_hides_secret() {
        let kp = Keypair::generate("dbg").unwrap();
        let secret = kp.to_canonical_string();
        let secret_b64 = &secret["dbg:".len()..];
        let dbg = format!("{kp:?}");
        assert!(!dbg.contains(secret_b64), "{dbg}");
        assert!(!dbg.contains(&STANDARD.encode(kp.key.to_bytes())));
        assert!(dbg.contains("dbg"));
    }
}
