//! The token-signing key: from `[jwt.signing]`, else Attic's environment variables, else a
//! secret generated once in the data directory (mode 0600).

use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use garret_core::token::SigningKey;

/// File in the data directory that holds the generated HS256 secret (base64).
pub const SECRET_FILE: &str = "token-hs256-secret";

const ENV_RS256_PUB: &str = "ATTIC_SERVER_TOKEN_RS256_PUBKEY_BASE64";
const ENV_RS256: &str = "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64";
const ENV_HS256: &str = "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64";

/// Loads the signing key; with `create` a missing data-dir secret is generated.
pub fn load_signing_key(cfg: &Config, create: bool) -> anyhow::Result<SigningKey> {
    if let Some(s) = &cfg.jwt.signing {
        let set = [
            &s.token_rs256_pubkey_base64,
            &s.token_rs256_secret_base64,
            &s.token_hs256_secret_base64,
        ]
        .iter()
        .filter(|v| v.is_some())
        .count();
        if set != 1 {
            anyhow::bail!("[jwt.signing] needs exactly one of token-rs256-pubkey-base64, token-rs256-secret-base64, token-hs256-secret-base64");
        }
        if let Some(v) = &s.token_rs256_pubkey_base64 {
            return SigningKey::from_rs256_pubkey_base64(v).context("token-rs256-pubkey-base64");
        }
        if let Some(v) = &s.token_rs256_secret_base64 {
            return SigningKey::from_rs256_secret_base64(v).context("token-rs256-secret-base64");
        }
        if let Some(v) = &s.token_hs256_secret_base64 {
            return SigningKey::from_hs256_base64(v).context("token-hs256-secret-base64");
        }
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(v) = env(ENV_RS256_PUB) {
        return SigningKey::from_rs256_pubkey_base64(&v).context(ENV_RS256_PUB);
    }
    if let Some(v) = env(ENV_RS256) {
        return SigningKey::from_rs256_secret_base64(&v).context(ENV_RS256);
    }
    if let Some(v) = env(ENV_HS256) {
        return SigningKey::from_hs256_base64(&v).context(ENV_HS256);
    }
    let dir = cfg.data_dir().context(
        "no token signing key: set [jwt.signing] in the config, ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64, or use --data-dir",
    )?;
    data_dir_secret(dir, create)
}

fn data_dir_secret(dir: &Path, create: bool) -> anyhow::Result<SigningKey> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => SigningKey::from_hs256_base64(text.trim()).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let (key, b64) = garret_core::token::generate_hs256();
            write_private(&path, &b64)?;
            tracing::info!(path = %path.display(), "generated a token signing secret");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no token signing secret at {}: start `garretd serve` with this data directory once, or configure [jwt.signing]",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a file only its owner can read, without a window where it is world-readable.
pub fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
