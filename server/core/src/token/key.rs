//! Signing keys as configured in `[jwt.signing]`, and their prepared jsonwebtoken form.

use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::rngs::OsRng;
use rand::RngCore;
use rsa::pkcs1::{
    DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey,
};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};

use super::{Error, Result};

/// Size of generated HS256 secrets. 64 bytes matches the HMAC-SHA256 block size, which is what
/// Attic's docs recommend (`openssl rand 64 | base64 -w0`).
const HS256_SECRET_LEN: usize = 64;

/// Smallest RSA modulus we accept; ring refuses anything shorter.
const RSA_MIN_BITS: usize = 2048;
/// ring signs with at most 4096-bit keys ...
const RSA_MAX_SIGNING_BITS: usize = 4096;
/// ... but verifies up to 8192 bits.
const RSA_MAX_VERIFY_BITS: usize = 8192;

/// Config values are standard base64; accept them with or without padding, since people paste
/// them from many tools.
const CONFIG_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The JWS algorithms Attic supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Hs256,
    Rs256,
}

impl Algorithm {
    /// The `alg` header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Rs256 => "RS256",
        }
    }

    pub(super) const fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key material from `[jwt.signing]`. Construct through the `from_*` functions, which validate
/// the input; hand-built values are validated again by [`TokenKeys::new`].
#[derive(Clone)]
pub enum SigningKey {
    /// HMAC secret: the raw bytes obtained by base64-decoding the config value.
    Hs256 { secret: Vec<u8> },
    /// RSA key pair; `private_pem` is PKCS#1 or PKCS#8, `public_pem` is SPKI or PKCS#1.
    Rs256 {
        private_pem: String,
        public_pem: String,
    },
    /// Public key only: tokens can be verified but not minted.
    Rs256VerifyOnly { public_pem: String },
}

impl SigningKey {
    /// `token-hs256-secret-base64`: the decoded bytes are the HMAC key.
    pub fn from_hs256_base64(value: &str) -> Result<Self> {
        let secret = decode_config_base64(value)?;
        if secret.is_empty() {
            return Err(Error::InvalidKey("HS256 secret is empty".into()));
        }
        Ok(SigningKey::Hs256 { secret })
    }

    /// `token-rs256-secret-base64`: base64 of an entire private-key PEM document.
    pub fn from_rs256_secret_base64(value: &str) -> Result<Self> {
        let pem = decode_config_pem(value)?;
        let private = parse_private_pem(&pem)?;
        let public_pem = public_to_pem(&private.to_public_key())?;
        Ok(SigningKey::Rs256 {
            private_pem: pem,
            public_pem,
        })
    }

    /// `token-rs256-pubkey-base64`: base64 of a public-key PEM; gives a verify-only key.
    pub fn from_rs256_pubkey_base64(value: &str) -> Result<Self> {
        let pem = decode_config_pem(value)?;
        parse_public_pem(&pem)?;
        Ok(SigningKey::Rs256VerifyOnly { public_pem: pem })
    }

    /// Which `alg` tokens for this key carry.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Hs256 { .. } => Algorithm::Hs256,
            SigningKey::Rs256 { .. } | SigningKey::Rs256VerifyOnly { .. } => Algorithm::Rs256,
        }
    }

    /// Whether this key can mint tokens (everything except a bare public key).
    pub fn can_sign(&self) -> bool {
        !matches!(self, SigningKey::Rs256VerifyOnly { .. })
    }
}

/// Never prints secret material; the public PEM is harmless but noisy, so only its size shows.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigningKey::Hs256 { secret } => f
                .debug_struct("Hs256")
                .field("secret", &format_args!("<redacted {} bytes>", secret.len()))
                .finish(),
            SigningKey::Rs256 { public_pem, .. } => f
                .debug_struct("Rs256")
                .field("private_pem", &format_args!("<redacted>"))
                .field("public_pem", &format_args!("<{} chars>", public_pem.len()))
                .finish(),
            SigningKey::Rs256VerifyOnly { public_pem } => f
                .debug_struct("Rs256VerifyOnly")
                .field("public_pem", &format_args!("<{} chars>", public_pem.len()))
                .finish(),
        }
    }
}

/// A fresh HS256 key plus the base64 string to put in the config.
pub fn generate_hs256() -> (SigningKey, String) {
    let mut secret = vec![0u8; HS256_SECRET_LEN];
    OsRng.fill_bytes(&mut secret);
    let config_value = STANDARD.encode(&secret);
    (SigningKey::Hs256 { secret }, config_value)
}

/// A fresh RS256 key pair plus the config value (base64 of the PKCS#8 PEM, the form Attic's
/// own generator writes). Slow: seconds for 4096 bits.
pub fn generate_rs256(bits: usize) -> Result<(SigningKey, String)> {
    if !(RSA_MIN_BITS..=RSA_MAX_SIGNING_BITS).contains(&bits) {
        return Err(Error::KeyGeneration(format!(
            "RSA key size must be between {RSA_MIN_BITS} and {RSA_MAX_SIGNING_BITS} bits, got {bits}"
        )));
    }
    let private =
        RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| Error::KeyGeneration(e.to_string()))?;
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Error::KeyGeneration(e.to_string()))?
        .to_string();
    let public_pem = public_to_pem(&private.to_public_key())?;
    let config_value = STANDARD.encode(private_pem.as_bytes());
    Ok((
        SigningKey::Rs256 {
            private_pem,
            public_pem,
        },
        config_value,
    ))
}

/// jsonwebtoken keys prepared once from a [`SigningKey`].
///
/// Parsing PEM and building keys is far too slow for the request path, so the verifier holds
/// one of these for its whole life.
#[derive(Clone)]
pub struct TokenKeys {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
}

impl TokenKeys {
    /// Validate `key` and build the jsonwebtoken keys.
    ///
    /// For RSA pairs this signs and verifies a probe message, so a key ring cannot use (or a
    /// public half that does not belong to the private half) fails at startup instead of
    /// silently rejecting every token later.
    pub fn new(key: &SigningKey) -> Result<Self> {
        match key {
            SigningKey::Hs256 { secret } => {
                if secret.is_empty() {
                    return Err(Error::InvalidKey("HS256 secret is empty".into()));
                }
                Ok(TokenKeys {
                    algorithm: Algorithm::Hs256,
                    encoding: Some(EncodingKey::from_secret(secret)),
                    decoding: DecodingKey::from_secret(secret),
                })
            }
            SigningKey::Rs256 {
                private_pem,
                public_pem,
            } => {
                let private = parse_private_pem(private_pem)?;
                let public = parse_public_pem(public_pem)?;
                let bits = public.size() * 8;
                if bits > RSA_MAX_SIGNING_BITS {
                    return Err(Error::InvalidKey(format!(
                        "RSA signing keys may have at most {RSA_MAX_SIGNING_BITS} bits, got {bits}"
                    )));
                }
                let private_der = private
                    .to_pkcs1_der()
                    .map_err(|e| Error::InvalidKey(e.to_string()))?;
                let keys = TokenKeys {
                    algorithm: Algorithm::Rs256,
                    encoding: Some(EncodingKey::from_rsa_der(private_der.as_bytes())),
                    decoding: rsa_decoding_key(&public)?,
                };
                keys.self_test()?;
                Ok(keys)
            }
            SigningKey::Rs256VerifyOnly { public_pem } => {
                let public = parse_public_pem(public_pem)?;
                Ok(TokenKeys {
                    algorithm: Algorithm::Rs256,
                    encoding: None,
                    decoding: rsa_decoding_key(&public)?,
                })
            }
        }
    }

    /// The algorithm every token must use with these keys.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether [`TokenKeys::encoding`] is available.
    pub fn can_sign(&self) -> bool {
        self.encoding.is_some()
    }

    pub(super) fn encoding(&self) -> Option<&EncodingKey> {
        self.encoding.as_ref()
    }

    pub(super) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    fn self_test(&self) -> Result<()> {
        const PROBE: &[u8] = b"garret signing key self-test";
        let alg = self.algorithm.to_jwt();
        let encoding = self.encoding.as_ref().ok_or(Error::VerifyOnlyKey)?;
        let signature = jsonwebtoken::crypto::sign(PROBE, encoding, alg)
            .map_err(|e| Error::InvalidKey(format!("private key is unusable: {e}")))?;
        match jsonwebtoken::crypto::verify(&signature, PROBE, &self.decoding, alg) {
            Ok(true) => Ok(()),
            _ => Err(Error::InvalidKey(
                "public key does not belong to the private key".into(),
            )),
        }
    }
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("algorithm", &self.algorithm)
            .field("can_sign", &self.can_sign())
            .finish_non_exhaustive()
    }
}

fn decode_config_base64(value: &str) -> Result<Vec<u8>> {
    // Wrapped output (e.g. `base64` without -w0) contains newlines; they carry no meaning.
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(Error::InvalidKey("key value is empty".into()));
    }
    CONFIG_B64
        .decode(compact.as_bytes())
        .map_err(|e| Error::InvalidKey(format!("key value is not valid base64: {e}")))
}

fn decode_config_pem(value: &str) -> Result<String> {
    let bytes = decode_config_base64(value)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::InvalidKey("decoded key is not UTF-8 PEM text".into()))?;
    // The PEM parser is strict about stray whitespace around the armour.
    let trimmed = text.trim();
    if !trimmed.starts_with("-----BEGIN ") {
        return Err(Error::InvalidKey(
            "decoded key is not a PEM document (expected -----BEGIN ...)".into(),
        ));
    }
    Ok(format!("{trimmed}\n"))
}

fn parse_private_pem(pem: &str) -> Result<RsaPrivateKey> {
    let key = RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| {
            Error::InvalidKey(
                "expected an unencrypted RSA private key PEM (PKCS#1 or PKCS#8)".into(),
            )
        })?;
    key.validate()
        .map_err(|e| Error::InvalidKey(format!("RSA private key is inconsistent: {e}")))?;
    check_bits(key.size() * 8, RSA_MAX_SIGNING_BITS)?;
    Ok(key)
}

fn parse_public_pem(pem: &str) -> Result<RsaPublicKey> {
    let key = RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
        .map_err(|_| Error::InvalidKey("expected an RSA public key PEM (SPKI or PKCS#1)".into()))?;
    check_bits(key.size() * 8, RSA_MAX_VERIFY_BITS)?;
    Ok(key)
}

fn check_bits(bits: usize, max: usize) -> Result<()> {
    if (RSA_MIN_BITS..=max).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidKey(format!(
            "RSA key size must be between {RSA_MIN_BITS} and {max} bits, got {bits}"
        )))
    }
}

fn public_to_pem(key: &RsaPublicKey) -> Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::InvalidKey(e.to_string()))
}

/// jsonwebtoken's RSA decoding keys take PKCS#1 DER; going through the rsa crate lets us accept
/// both SPKI and PKCS#1 PEMs uniformly.
fn rsa_decoding_key(key: &RsaPublicKey) -> Result<DecodingKey> {
    let der = key
        .to_pkcs1_der()
        .map_err(|e| Error::InvalidKey(e.to_string()))?;
    Ok(DecodingKey::from_rsa_der(der.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::super::testkeys::*;
    use super::*;

    fn b64(text: &str) -> String {
        STANDARD.encode(text.as_bytes())
    }

    #[test]
    fn hs256_decodes_base64_to_raw_bytes() {
        let key = SigningKey::from_hs256_base64("aGVsbG8=").unwrap();
        match &key {
            SigningKey::Hs256 { secret } => assert_eq!(secret, b"hello"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(key.algorithm(), Algorithm::Hs256);
        assert!(key.can_sign());
    }

    #[test]
    fn hs256_tolerates_missing_padding_and_whitespace() {
        for v in ["aGVsbG8", " aGVs\nbG8=\n", "aGVsbG8=\r\n"] {
            match SigningKey::from_hs256_base64(v).unwrap() {
                SigningKey::Hs256 { secret } => assert_eq!(secret, b"hello", "{v:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn hs256_rejects_bad_values() {
        for v in ["", "   ", "not base64!", "aGVsbG8-", "===="] {
            assert!(
                matches!(SigningKey::from_hs256_base64(v), Err(Error::InvalidKey(_))),
                "{v:?}"
            );
        }
        assert!(TokenKeys::new(&SigningKey::Hs256 { secret: vec![] }).is_err());
    }

    #[test]
    fn generated_hs256_round_trips_through_config() {
        let (key, value) = generate_hs256();
        let SigningKey::Hs256 { secret } = &key else {
            panic!("wrong variant");
        };
        assert_eq!(secret.len(), HS256_SECRET_LEN);
        match SigningKey::from_hs256_base64(&value).unwrap() {
            SigningKey::Hs256 { secret: again } => assert_eq!(&again, secret),
            other => panic!("unexpected {other:?}"),
        }
        let (other, _) = generate_hs256();
        let SigningKey::Hs256 {
            secret: other_secret,
        } = other
        else {
            panic!("wrong variant");
        };
        assert_ne!(secret, &other_secret, "secrets must be random");
    }

    #[test]
    fn rs256_accepts_pkcs1_and_pkcs8_private_keys() {
        for pem in [KEY_A_PKCS1, KEY_A_PKCS8] {
            let key = SigningKey::from_rs256_secret_base64(&b64(pem)).unwrap();
            assert_eq!(key.algorithm(), Algorithm::Rs256);
            assert!(key.can_sign());
            let SigningKey::Rs256 { public_pem, .. } = &key else {
                panic!("wrong variant");
            };
            // The derived public key is the same key as the fixture's.
            assert_eq!(public_pem.trim(), KEY_A_PUBLIC_SPKI.trim());
            let keys = TokenKeys::new(&key).unwrap();
            assert!(keys.can_sign());
            assert_eq!(keys.algorithm(), Algorithm::Rs256);
        }
    }

    #[test]
    fn rs256_tolerates_crlf_and_surrounding_whitespace() {
        let crlf = KEY_A_PKCS8.replace('\n', "\r\n");
        assert!(SigningKey::from_rs256_secret_base64(&b64(&crlf)).is_ok());
        let padded = format!("\n\n  {KEY_A_PKCS1}\n\n");
        assert!(SigningKey::from_rs256_secret_base64(&b64(&padded)).is_ok());
    }

    #[test]
    fn rs256_pubkey_accepts_spki_and_pkcs1() {
        for pem in [KEY_A_PUBLIC_SPKI, KEY_A_PUBLIC_PKCS1] {
            let key = SigningKey::from_rs256_pubkey_base64(&b64(pem)).unwrap();
            assert!(matches!(key, SigningKey::Rs256VerifyOnly { .. }));
            assert!(!key.can_sign());
            assert_eq!(key.algorithm(), Algorithm::Rs256);
            let keys = TokenKeys::new(&key).unwrap();
            assert!(!keys.can_sign());
        }
    }

    #[test]
    fn rs256_rejects_wrong_material() {
        // Raw PEM instead of base64-of-PEM.
        assert!(SigningKey::from_rs256_secret_base64(KEY_A_PKCS8).is_err());
        // Public key where a private one is needed, and vice versa.
        assert!(SigningKey::from_rs256_secret_base64(&b64(KEY_A_PUBLIC_SPKI)).is_err());
        assert!(SigningKey::from_rs256_pubkey_base64(&b64(KEY_A_PKCS8)).is_err());
        // Not PEM at all.
        assert!(SigningKey::from_rs256_secret_base64(&b64("hello")).is_err());
        // Corrupted body.
        let broken = KEY_A_PKCS8.replacen("MII", "XII", 1);
        assert!(SigningKey::from_rs256_secret_base64(&b64(&broken)).is_err());
        // Not UTF-8.
        assert!(SigningKey::from_rs256_secret_base64(&STANDARD.encode([0xff, 0xfe])).is_err());
    }

    #[test]
    fn mismatched_pair_fails_self_test() {
        let key = SigningKey::Rs256 {
            private_pem: KEY_A_PKCS8.into(),
            public_pem: KEY_B_PUBLIC_SPKI.into(),
        };
        let err = TokenKeys::new(&key).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn hand_built_invalid_keys_are_rejected() {
        assert!(TokenKeys::new(&SigningKey::Rs256VerifyOnly {
            public_pem: "junk".into()
        })
        .is_err());
        assert!(TokenKeys::new(&SigningKey::Rs256 {
            private_pem: "junk".into(),
            public_pem: KEY_A_PUBLIC_SPKI.into(),
        })
        .is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let key = SigningKey::from_hs256_base64("c3VwZXJzZWNyZXQ=").unwrap();
        let text = format!("{key:?}");
        assert!(!text.contains("supersecret"), "{text}");
        assert!(!text.contains("115"), "no byte values either: {text}");
        assert!(text.contains("redacted"));

        let key = SigningKey::from_rs256_secret_base64(&b64(KEY_A_PKCS8)).unwrap();
        let text = format!("{key:?}");
        assert!(!text.contains("PRIVATE"), "{text}");
        assert!(!text.contains("MII"), "{text}");
        let keys = TokenKeys::new(&key).unwrap();
        let text = format!("{keys:?}");
        assert!(!text.contains("MII"), "{text}");
        assert!(text.contains("Rs256"));
    }

    #[test]
    fn generate_rs256_rejects_unsupported_sizes() {
        assert!(matches!(generate_rs256(1024), Err(Error::KeyGeneration(_))));
        assert!(matches!(generate_rs256(8192), Err(Error::KeyGeneration(_))));
    }

    #[test]
    fn generate_rs256_produces_loadable_config() {
        let (key, value) = generate_rs256(2048).unwrap();
        assert!(key.can_sign());
        let reloaded = SigningKey::from_rs256_secret_base64(&value).unwrap();
        let (SigningKey::Rs256 { public_pem: a, .. }, SigningKey::Rs256 { public_pem: b, .. }) =
            (&key, &reloaded)
        else {
            panic!("wrong variants");
        };
        assert_eq!(a, b);
        let pem = String::from_utf8(STANDARD.decode(&value).unwrap()).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        TokenKeys::new(&reloaded).unwrap();
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(Algorithm::Hs256.to_string(), "HS256");
        assert_eq!(Algorithm::Rs256.as_str(), "RS256");
        assert_eq!(Algorithm::Hs256.to_jwt(), jsonwebtoken::Algorithm::HS256);
        assert_eq!(Algorithm::Rs256.to_jwt(), jsonwebtoken::Algorithm::RS256);
    }
}
