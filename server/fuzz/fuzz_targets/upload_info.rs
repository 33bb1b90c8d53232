//! The upload info of `POST /_api/v1/upload-path`: the `X-Attic-Nar-Info` header or the
//! body preamble, both JSON of `garret_core::wire::UploadPathNarInfo`.
//!
//! garretd (`server/garretd/src/api/upload.rs`) parses it with `serde_json::from_slice`,
//! then `parse_cache` and `validate` check it field by field with garret-core's checks.
//! This target runs the same steps in the same order, then renders the narinfo that garretd
//! would serve for an accepted upload and parses it back: an upload that passes validation
//! must never turn into a narinfo with other fields than the ones it sent (the field
//! injection of issue 11).
//!
//! Input: the JSON text. When it starts with a decimal number and a newline, that number
//! is taken as `X-Attic-Nar-Info-Preamble-Size` and the preamble is cut from the rest the
//! way garretd cuts it (the remainder is the NAR stream, ignored here).
#![no_main]

use garret_core::cache_name::CacheName;
use garret_core::nix::fields::{validate_ca, validate_token};
use garret_core::nix::store_path::{validate_base_name, StorePath, StorePathHash};
use garret_core::nix::{NarInfo, Sha256Hash};
use garret_core::wire::UploadPathNarInfo;
use libfuzzer_sys::fuzz_target;

/// garretd's default `max_nar_info_size` is larger; inputs stay small anyway.
const MAX_PREAMBLE: usize = 1 << 20;

/// What garretd's `validate` returns: the parsed path and NAR hash, or the first refusal.
fn validate(info: &UploadPathNarInfo) -> Option<(StorePath, Sha256Hash)> {
    let hash = StorePathHash::parse(&info.store_path_hash).ok()?;
    let path = StorePath::parse(&info.store_path).ok()?;
    if path.hash().as_str() != hash.as_str() {
        return None;
    }
    for r in &info.references {
        validate_base_name(r).ok()?;
    }
    if let Some(d) = &info.deriver {
        validate_base_name(d).ok()?;
    }
    for s in &info.sigs {
        validate_token("signature", s).ok()?;
    }
    if let Some(s) = &info.system {
        validate_token("system", s).ok()?;
    }
    if let Some(ca) = info.ca.as_deref().filter(|ca| !ca.is_empty()) {
        validate_ca(ca).ok()?;
    }
    let nar_hash = Sha256Hash::parse_attic(&info.nar_hash).ok()?;
    if info.nar_size == 0 {
        return None;
    }
    Some((path, nar_hash))
}

/// Splits off a preamble-size line, as a client sending the header would.
fn preamble(data: &[u8]) -> &[u8] {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return data;
    };
    let Some(size) = std::str::from_utf8(&data[..nl])
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
    else {
        return data;
    };
    let body = &data[nl + 1..];
    if size > MAX_PREAMBLE || size > body.len() {
        // garretd refuses these before parsing anything.
        return &[];
    }
    &body[..size]
}

fuzz_target!(|data: &[u8]| {
    let json = preamble(data);
    let Ok(info) = serde_json::from_slice::<UploadPathNarInfo>(json) else {
        return;
    };
    if CacheName::parse(&info.cache).is_err() {
        return;
    }
    let Some((path, nar_hash)) = validate(&info) else {
        return;
    };
    // What garretd's nix_read serves for it (its own signature aside).
    let served = NarInfo {
        store_path: path.as_str().to_owned(),
        url: format!("nar/{}.nar", path.hash()),
        compression: "zstd".into(),
        file_hash: None,
        file_size: None,
        nar_hash,
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        sigs: info.sigs.clone(),
        ca: info.ca.clone().filter(|ca| !ca.is_empty()),
        system: info.system.clone(),
    };
    let text = served.render();
    match NarInfo::parse(&text) {
        Ok(back) => assert_eq!(back, served, "served narinfo reads back differently"),
        Err(e) => panic!("an accepted upload is served as a narinfo Nix would refuse: {e}\n{text}"),
    }
});
