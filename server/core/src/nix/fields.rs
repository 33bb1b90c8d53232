//! Checks for the free-text fields that end up in served narinfo and `nix-cache-info`
//! files: content addresses, store directories and single-token values such as signatures.
//!
//! Both files are `Key: value\n` lines, so a value containing a line break (or any other
//! control character) could add fields of its own choosing; every value we serve must pass
//! one of these checks first.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{base32, Error};

/// Longest store directory accepted.
pub const MAX_STORE_DIR_LEN: usize = 1024;
/// Longest single-token field (signature, system, ...) accepted.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Whether `s` contains a control character (`\n`, `\r`, `\t`, NUL, DEL, C1 controls...).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// A single-token value (a `keyname:base64` signature, a system name): non-empty, at most
/// [`MAX_TOKEN_LEN`] bytes, no control characters and no whitespace.
pub fn validate_token(what: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::InvalidField(format!("{what} is empty")));
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(Error::InvalidField(format!(
            "{what} is {} bytes, at most {MAX_TOKEN_LEN} allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::InvalidField(format!(
            "{what} contains the character {c:?}"
        )));
    }
    Ok(())
}

/// A Nix store directory: an absolute, clean path (`/nix/store`) without a trailing '/',
/// whitespace or control characters.
pub fn validate_store_dir(dir: &str) -> Result<(), Error> {
    let bad = |why: &str| Error::InvalidStorePath(format!("store directory {dir:?}: {why}"));
    if dir.len() > MAX_STORE_DIR_LEN {
        return Err(bad("too long"));
    }
    if !dir.starts_with('/') {
        return Err(bad("not an absolute path"));
    }
    if dir.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("contains whitespace or a control character"));
    }
    if dir.len() == 1 {
        return Err(bad("the root directory cannot be a store"));
    }
    for component in dir[1..].split('/') {
        match component {
            "" => return Err(bad("empty path component (or a trailing '/')")),
            "." | ".." => return Err(bad("'.' or '..' path component")),
            _ => {}
        }
    }
    Ok(())
}

/// Digest size in bytes of a hash algorithm Nix knows.
fn digest_len(algo: &str) -> Option<usize> {
    match algo {
        "md5" => Some(16),
        "sha1" => Some(20),
        "sha256" => Some(32),
        "sha512" => Some(64),
        _ => None,
    }
}

/// Checks that `body` is a `len`-byte digest in one of Nix's encodings: base16, nix32 or
/// (padded) base64.
fn check_digest(body: &str, len: usize) -> Result<(), Error> {
    let bad = |why: String| Error::InvalidField(format!("content address hash: {why}"));
    let decoded = if body.len() == 2 * len {
        if !body.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{body:?} is not base16")));
        }
        return Ok(());
    } else if body.len() == base32::encoded_len(len) {
        base32::decode(body).map_err(|e| bad(e.to_string()))?
    } else if body.len() == len.div_ceil(3) * 4 {
        STANDARD
            .decode(body)
            .map_err(|e| bad(format!("bad base64: {e}")))?
    } else {
        return Err(bad(format!(
            "{} characters is no encoding of a {len}-byte digest",
            body.len()
        )));
    };
    if decoded.len() != len {
        return Err(bad(format!(
            "digest is {} bytes, expected {len}",
            decoded.len()
        )));
    }
    Ok(())
}

/// `<algo>:<hash>` or SRI `<algo>-<base64>`.
fn check_typed_hash(s: &str, only_sha256: bool) -> Result<(), Error> {
    let bad = |why: &str| Error::InvalidField(format!("content address {s:?}: {why}"));
    let (algo, body, sri) = match (s.split_once(':'), s.split_once('-')) {
        (Some((a, b)), _) if digest_len(a).is_some() => (a, b, false),
        (_, Some((a, b))) if digest_len(a).is_some() => (a, b, true),
        _ => return Err(bad("expected <md5|sha1|sha256|sha512>:<hash>")),
    };
    if only_sha256 && algo != "sha256" {
        return Err(bad("text content addresses use sha256"));
    }
    let len = digest_len(algo).ok_or_else(|| bad("unknown hash algorithm"))?;
    if sri {
        let bytes = STANDARD
            .decode(body)
            .map_err(|e| bad(&format!("bad base64: {e}")))?;
        if bytes.len() != len {
            return Err(bad("wrong digest length"));
        }
        return Ok(());
    }
    check_digest(body, len)
}

/// A content address as Nix writes it in narinfo `CA:` lines: `text:sha256:<hash>` or
/// `fixed:[r:]<md5|sha1|sha256|sha512>:<hash>`, the hash in base16, nix32 or base64 (newer
/// Nix may also write SRI `<algo>-<base64>`). Nothing else, in particular no whitespace or
/// control characters, is accepted.
pub fn validate_ca(ca: &str) -> Result<(), Error> {
    if ca.len() > 256 {
        return Err(Error::InvalidField("content address is too long".into()));
    }
    if let Some(rest) = ca.strip_prefix("text:") {
        return check_typed_hash(rest, true);
    }
    if let Some(rest) = ca.strip_prefix("fixed:") {
        let rest = rest.strip_prefix("r:").unwrap_or(rest);
        return check_typed_hash(rest, false);
    }
    Err(Error::InvalidField(format!(
        "content address {ca:?} must start with 'text:' or 'fixed:'"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIX32: &str = "0059v5kg2s39n3s7fchn4vpdqgzwdmpgx5nwyjsn1q67g9a81i1f";
    const HEX: &str = "91e129ac1959d062ad093d2b1f8b65afae0f712056fe3eac78ec530ff6a1bb9a";
    const B64: &str = "keEprBlZ0GKtCT0rH4tlr64PcSBW/j6seOxTD/ahu5o=";

    #[test]
    fn content_addresses_nix_writes_are_accepted() {
        for ok in [
            format!("fixed:r:sha256:{NIX32}"),
            format!("fixed:sha256:{NIX32}"),
            format!("text:sha256:{NIX32}"),
            format!("fixed:r:sha256:{HEX}"),
            format!("fixed:sha256:{B64}"),
            format!("fixed:r:sha256-{B64}"),
            "fixed:md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            "fixed:sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709".into(),
            format!("fixed:r:sha512:{}", "0".repeat(128)),
            format!("fixed:sha1:{}", "0".repeat(32)),
        ] {
            validate_ca(&ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
    }

    #[test]
    fn content_addresses_outside_the_grammar_are_refused() {
        for bad in [
            String::new(),
            "fixed:r:sha256:abc".into(),
            format!("fixed:r:sha256:{NIX32}\nURL: http://other-host/evil.nar\nCompression: none"),
            format!("fixed:r:sha256:{NIX32}\r"),
            format!("fixed:r:sha256:{NIX32} "),
            format!(" fixed:r:sha256:{NIX32}"),
            format!("fixed:r:r:sha256:{NIX32}"),
            format!("fixed:sha384:{NIX32}"),
            format!("text:sha1:{}", "0".repeat(40)),
            format!("text:r:sha256:{NIX32}"),
            format!("other:sha256:{NIX32}"),
            format!("fixed:r:sha256:{}", &NIX32[1..]),
            format!("fixed:r:sha256:{}e", &NIX32[1..]),
            format!("fixed:r:sha256:{}g", &HEX[1..]),
            format!("fixed:r:sha256-{}", &B64[1..]),
            format!("fixed:r:sha256:{NIX32}:{NIX32}"),
            "fixed:md5:d41d8cd98f00b204e9800998ecf8427e\u{0085}".into(),
        ] {
            assert!(validate_ca(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn store_dirs_must_be_clean_single_line_paths() {
        for ok in ["/nix/store", "/opt/my.store", "/a"] {
            validate_store_dir(ok).unwrap();
        }
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix//store",
            "/nix/../store",
            "/nix/./store",
            "/nix/store\nWantMassQuery: 0\nPriority: 1",
            "/nix/store\r",
            "/nix/st ore",
            "/nix/st\tore",
            "/nix/\0store",
            &format!("/{}", "x".repeat(MAX_STORE_DIR_LEN)),
        ] {
            assert!(validate_store_dir(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tokens_refuse_whitespace_and_control_characters() {
        validate_token("signature", "cache-1:AAAA+/==").unwrap();
        for bad in ["", "a b", "a\nSig: x", "a\r", "a\t", "\u{7f}", "a\u{2028}b"] {
            assert!(
                validate_token("signature", bad).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(validate_token("signature", &"a".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert!(has_control("a\rb"));
        assert!(!has_control("a b"));
    }
}
