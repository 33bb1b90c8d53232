//! Token verification with a fixed HS256 key.
//!
//! The first input byte picks what the rest is (byte % 3):
//! * 0: a payload (claims JSON), signed here with the fixed key under a fixed header, so
//!   the fuzzer gets past the signature check into claim parsing and the claim checks;
//! * 1: a whole compact token, verified as sent (header parsing, base64, structure);
//! * 2: like 0, verified with a bound issuer (`garret`) and audiences (`a`, `c`).
//!
//! Properties: never panics; a token it accepts yields claims that, minted again with the
//! same key, verify to the same claims at the same time; every cache pattern in them
//! matches the names it stands for, and an exact entry decides its own cache's permission.
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
        static VERIFIERS: (Verifier, Verifier, SigningKey) = {
            let key = key();
            let plain = Verifier::new(key.clone(), None, None)
                .unwrap_or_else(|e| panic!("verifier: {e}"))
                .with_leeway(60);
            let bound = Verifier::new(
                key.clone(),
                Some("garret".into()),
                Some(vec!["a".into(), "c".into()]),
            )
            .unwrap_or_else(|e| panic!("verifier: {e}"));
            (plain, bound, key)
        };
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = mode % 3;
    let token = if mode == 1 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        sign(rest)
    };
    VERIFIERS.with(|(plain, bound, key)| {
        let verifier = if mode == 2 { bound } else { plain };
        let Ok(claims) = verifier.verify(&token, NOW) else {
            return;
        };
        for name in ["a", "team", "team-ci", "oss", "x".repeat(50).as_str()] {
            let _ = claims.permission_for(name);
        }
        for (pattern, perm) in &claims.caches {
            let text = pattern.as_str();
            assert!(pattern.matches(&text.replace('*', "")), "{text:?}");
            assert!(pattern.matches(&text.replace('*', "x-*")), "{text:?}");
            if pattern.is_literal() {
                assert!(pattern.matches(text));
                let first = claims.caches.iter().find(|(p, _)| p.as_str() == text);
                assert_eq!(
                    claims.permission_for(text),
                    first.map_or(*perm, |(_, p)| *p)
                );
            }
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
