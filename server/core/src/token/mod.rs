//! Attic-compatible JWT handling: permission model, cache-name patterns, claim layout,
//! key loading, verification and minting.
//!
//! This module is deliberately self-contained (it never reaches into the rest of the crate) so it
//! can be reasoned about and tested on its own; the HTTP layer only sees [`Verifier`],
//! [`Claims`] and [`Permission`].

mod claims;
mod key;
mod mint;
mod oidc;
mod pattern;
mod permission;
mod revocation;
mod verify;

#[cfg(test)]
mod testkeys;

use sha2::{Digest, Sha256};

pub use claims::{Audience, Claims, ServerRights, ATTIC_NAMESPACE, GARRET_NAMESPACE};
pub use key::{generate_hs256, generate_rs256, Algorithm, SigningKey, TokenKeys};
pub use mint::{mint, new_jti, parse_validity, MakeToken};
pub use oidc::{grants_for, parse_permission, Grant, Issuer, Jwks, KeyAlgorithm, OidcVerifier};
pub use pattern::CachePattern;
pub use permission::Permission;
pub use revocation::{
    parse_entries, settle as settle_revocations, Entry as RevocationEntry, RevocationList,
};
pub use verify::{Rejection, Verifier};

/// Failures while loading keys, building or minting tokens.
///
/// Verification failures are not errors of this kind: they are [`Rejection`]s, because a bad
/// token is an expected, caller-controlled outcome rather than a server fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cache name pattern {0:?}")]
    InvalidPattern(String),

    #[error("invalid key material: {0}")]
    InvalidKey(String),

    #[error("key generation failed: {0}")]
    KeyGeneration(String),

    #[error("this key can only verify tokens (RS256 public key); a private key is needed to mint")]
    VerifyOnlyKey,

    #[error("failed to sign token: {0}")]
    Signing(String),

    #[error("invalid validity {input:?}: {reason}")]
    InvalidValidity { input: String, reason: String },

    #[error("token expiry is out of range")]
    TimeOutOfRange,

    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),

    #[error("invalid grant: {0}")]
    InvalidGrant(String),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SHA-256 of the raw token text.
///
/// Callers use this as a cache or revocation-list key so raw bearer tokens are never held as map
/// keys or written to logs.
pub fn token_fingerprint(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_of_token() {
        // Known SHA-256 of the empty string.
        let empty = token_fingerprint("");
        assert_eq!(
            empty[..4],
            [0xe3, 0xb0, 0xc4, 0x42],
            "sha256(\"\") starts with e3b0c442"
        );
        assert_ne!(token_fingerprint("a.b.c"), token_fingerprint("a.b.d"));
        assert_eq!(token_fingerprint("a.b.c"), token_fingerprint("a.b.c"));
    }

    #[test]
    fn end_to_end_hs256_mint_and_verify() {
        let (key, config_value) = generate_hs256();
        let reloaded = SigningKey::from_hs256_base64(&config_value).unwrap();
        let spec = MakeToken {
            sub: "alice".into(),
            validity: parse_validity("1 hour").unwrap(),
            pull: vec!["alice-*".into()],
            push: vec!["alice-*".into()],
            ..MakeToken::default()
        };
        let claims = spec.claims(1_700_000_000, new_jti()).unwrap();
        let token = mint(&claims, &key).unwrap();
        let verifier = Verifier::new(reloaded, None, None).unwrap();
        let got = verifier.verify(&token, 1_700_000_100).unwrap();
        assert_eq!(got, claims);
        let p = got.permission_for("alice-dev");
        assert!(p.pull && p.push && !p.delete);
        assert!(got.permission_for("bob").is_empty());
    }
}
