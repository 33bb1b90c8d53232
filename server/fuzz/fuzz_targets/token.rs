//! Token verification with a fixed HS256 key.
//!
//! The first input byte picks what the rest is:
//! * even: a payload (claims JSON), signed here with the fixed key under a fixed header, so
//!   the fuzzer gets past the signature check into claim parsing and the claim checks;
//! * odd: a whole compact token, verified as sent (header parsing, base64, structure).
//!
//! Properties: never panics; a token it accepts yields claims that, minted again with the
//! same key, verify to the same claims at the same time; permission lookups on those
//! claims never panic.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use garret_core::token::{mint, SigningKey, Verifier};
use libfuzzer_sys::fuzz_target;

/// The fixed secret, as `token-hs256-secret-base64` would hold it.
const SECRET: &[u8] = b"garret-fuzz-fixed-hs256-secret-0123456789";
/// "Now" for every check, inside the validity of the seed tokens.
const NOW: i64 = 1_800_000_000;
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn key() -> SigningKey {
    match SigningKey::from_hs256_base64(&base64::engine::general_purpose::STANDARD.encode(SECRET)) {
        Ok(k) => k,
        Err(e) => panic!("fixed key refused: {e}"),
    }
}

fn sign(payload: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = match jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
        jsonwebtoken::Algorithm::HS256,
    ) {
        Ok(sig) => sig,
        Err(e) => panic!("signing failed: {e}"),
    };
    format!("{signing_input}.{sig}")
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static VERIFIER: (Verifier, SigningKey) = {
            let key = key();
            let v = Verifier::new(key.clone(), None, None)
                .unwrap_or_else(|e| panic!("verifier: {e}"))
                .with_leeway(60);
            (v, key)
        };
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        sign(rest)
    } else {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    };
    VERIFIER.with(|(verifier, key)| {
        let Ok(claims) = verifier.verify(&token, NOW) else {
            return;
        };
        for name in ["a", "team", "team-ci", "oss", "x".repeat(50).as_str()] {
            let _ = claims.permission_for(name);
        }
        verifier
            .check_time(&claims, NOW)
            .unwrap_or_else(|e| panic!("accepted claims fail the time check: {e}"));
        let reminted = mint(&claims, key).unwrap_or_else(|e| panic!("re-minting failed: {e}"));
        match verifier.verify(&reminted, NOW) {
            Ok(again) => assert_eq!(again, claims, "claims changed through mint/verify"),
            Err(e) => panic!("re-minted token refused: {e}"),
        }
    });
});
