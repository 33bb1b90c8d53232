//! nix32 and the SHA-256 hash strings built on it: never panic, decoding is the exact
//! inverse of encoding (one valid encoding per byte string), and every accepted hash
//! string re-encodes to a form that parses to the same hash.
#![no_main]

use garret_core::nix::base32;
use garret_core::nix::Sha256Hash;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Any bytes encode, and decode back.
    let encoded = base32::encode(data);
    assert_eq!(encoded.len(), base32::encoded_len(data.len()));
    assert_eq!(base32::decode(&encoded).ok().as_deref(), Some(data));

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = base32::decode(s) {
        assert_eq!(base32::encode(&bytes), s, "a second encoding was accepted");
    }
    for parsed in [Sha256Hash::parse_any(s), Sha256Hash::parse_attic(s)] {
        let Ok(h) = parsed else { continue };
        assert_eq!(Sha256Hash::parse_attic(&h.to_typed_hex()).ok(), Some(h));
        assert_eq!(Sha256Hash::parse_attic(&h.to_typed_nix32()).ok(), Some(h));
        assert_eq!(Sha256Hash::parse_any(&h.to_typed_nix32()).ok(), Some(h));
    }
    if Sha256Hash::parse_attic(s).is_ok() {
        assert!(
            Sha256Hash::parse_any(s).is_ok(),
            "attic form refused by parse_any"
        );
    }
});
