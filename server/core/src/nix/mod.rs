//! Pure, I/O-free building blocks for speaking the Nix binary-cache protocol:
//! nix32 encoding, SHA-256 hash strings, store paths, narinfo files, ed25519
//! signing and a streaming NAR validator.
//!
//! This module deliberately depends only on itself so it can be built and
//! tested in isolation from the rest of the crate.

pub mod base32;
pub mod fields;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod signing;
pub mod store_path;

pub use hash::Sha256Hash;
pub use nar::NarValidator;
pub use narinfo::NarInfo;
pub use signing::{fingerprint, Keypair, PublicKey};
pub use store_path::{validate_base_name, StorePath, StorePathHash};

/// Every failure this module can report. Messages are meant to be shown to
/// API clients, so they describe the problem without echoing secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid nix32 string: {0}")]
    InvalidBase32(String),

    #[error("invalid hash: {0}")]
    InvalidHash(String),

    #[error("invalid store path hash: {0}")]
    InvalidStorePathHash(String),

    #[error("invalid store path name: {0}")]
    InvalidStorePathName(String),

    #[error("invalid store path: {0}")]
    InvalidStorePath(String),

    #[error("invalid field: {0}")]
    InvalidField(String),

    #[error("invalid narinfo: {0}")]
    InvalidNarInfo(String),

    #[error("invalid signing key: {0}")]
    InvalidKey(String),

    #[error("signing failed: {0}")]
    Signing(String),

    #[error("invalid NAR at byte offset {offset}: {reason}")]
    InvalidNar { offset: u64, reason: String },
}

/// Shorthand used throughout the module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_descriptive() {
        let e = Error::InvalidNar {
            offset: 8,
            reason: "non-zero padding".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid NAR at byte offset 8: non-zero padding"
        );
        assert!(StorePathHash::parse("x")
            .unwrap_err()
            .to_string()
            .starts_with("invalid store path hash"));
    }

    #[test]
    fn reexports_work_together() {
        // A miniature end-to-end: sign a narinfo's fingerprint and verify it.
        let kp = Keypair::generate("test").unwrap();
        let info = NarInfo {
            store_path: "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello".into(),
            url: "nar/xcp9cav49dmsjbwdjlmkjxj10gkpx553.nar".into(),
            compression: "none".into(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256Hash::digest(b"nar"),
            nar_size: 3,
            references: vec!["xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello".into()],
            deriver: None,
            sigs: vec![],
            ca: None,
            system: None,
        };
        let fp = fingerprint(
            &info.store_path,
            &info.nar_hash,
            info.nar_size,
            &info.references,
        )
        .unwrap();
        let mut signed = info.clone();
        signed.sigs.push(kp.sign(&fp));
        let parsed = NarInfo::parse(&signed.render()).unwrap();
        let pk = PublicKey::parse(&kp.public_key().to_canonical_string()).unwrap();
        assert!(pk.verify(&fp, &parsed.sigs[0]));
        let path = StorePath::parse(&parsed.store_path).unwrap();
        validate_base_name(path.base_name()).unwrap();
        assert!(NarValidator::new().finish().is_err());
    }
}
