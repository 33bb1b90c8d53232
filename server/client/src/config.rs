//! The client's servers-and-tokens file, `$XDG_CONFIG_HOME/garret/config.toml`, in Attic's
//! format. It holds secrets, so it is only ever written with mode 0600.
//!
//! Environment overrides (for CI, where no file should be needed):
//! * `GARRET_TOKEN` replaces the token of whichever server a command uses;
//! * `GARRET_SERVER` (an endpoint URL) is used for `CACHE` references without a `SERVER:`
//!   prefix, instead of the config's default server; with both set no file is read at all.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const TOKEN_ENV: &str = "GARRET_TOKEN";
pub const SERVER_ENV: &str = "GARRET_SERVER";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_server: Option<String>,
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ServerConfig {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file whose (trimmed) content is the token, e.g. a mounted secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// A server chosen for one command, with its token already resolved.
#[derive(Debug, Clone)]
pub struct Server {
    /// Config name, or `$GARRET_SERVER` when it came from the environment.
    pub name: String,
    pub endpoint: String,
    pub token: Option<String>,
}

/// `$XDG_CONFIG_HOME/garret/config.toml`, else `~/.config/garret/config.toml`.
pub fn config_path() -> Result<PathBuf> {
    Ok(config_home()?.join("garret").join("config.toml"))
}

/// `$XDG_CONFIG_HOME`, else `$HOME/.config`.
pub fn config_home() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".config"))
}

impl Config {
    /// Reads the file; a missing file is an empty config.
    pub fn load_from(path: &Path) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn load() -> Result<Config> {
        Self::load_from(&config_path()?)
    }

    /// Writes atomically: a fresh 0600 temp file in the same directory, then rename, so the
    /// token is never world-readable and a crash never leaves half a file.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let text = toml::to_string_pretty(self).context("serializing config")?;
        write_private(path, text.as_bytes())
    }

    pub fn save(&self) -> Result<()> {
        self.save_to(&config_path()?)
    }

    /// Adds or updates a server; the token is only replaced when one is given (as Attic).
    pub fn login(&mut self, name: &str, endpoint: &str, token: Option<String>, set_default: bool) {
        let entry = self.servers.entry(name.to_string()).or_default();
        entry.endpoint = endpoint.to_string();
        if let Some(t) = token {
            entry.token = Some(t);
            entry.token_file = None;
        }
        if set_default || self.servers.len() == 1 || self.default_server.is_none() {
            self.default_server = Some(name.to_string());
        }
    }

    /// Picks the server for a command, applying the environment overrides.
    pub fn resolve(&self, name: Option<&str>) -> Result<Server> {
        let env_token = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty());
        let env_server = std::env::var(SERVER_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty());
        let (name, cfg) = match name {
            Some(n) => match self.servers.get(n) {
                Some(c) => (n.to_string(), c.clone()),
                None => bail!("unknown server {n:?}: run `garret login {n} URL [TOKEN]` first"),
            },
            None => {
                if let Some(endpoint) = env_server {
                    (
                        format!("${SERVER_ENV}"),
                        ServerConfig {
                            endpoint,
                            ..Default::default()
                        },
                    )
                } else {
                    let n = match (&self.default_server, self.servers.len()) {
                        (Some(d), _) => d.clone(),
                        (None, 1) => self.servers.keys().next().cloned().unwrap_or_default(),
                        (None, 0) => bail!(
                            "no server configured: run `garret login NAME URL [TOKEN]` or set {SERVER_ENV}"
                        ),
                        (None, _) => bail!(
                            "no default server: use SERVER:CACHE or `garret login --set-default`"
                        ),
                    };
                    let c = self.servers.get(&n).cloned().ok_or_else(|| {
                        anyhow!("default server {n:?} is not configured in the config file")
                    })?;
                    (n, c)
                }
            }
        };
        let token = match env_token {
            Some(t) => Some(t.trim().to_string()),
            None => match (&cfg.token, &cfg.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading token file {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            },
        };
        Ok(Server {
            name,
            endpoint: cfg.endpoint,
            token,
        })
    }
}

/// Writes `data` to `path` with mode 0600 from the first byte (temp file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_attic_format() {
        let text = "default-server = \"central\"\n\n[servers.central]\nendpoint = \"https://a.example/\"\ntoken-file = \"/run/t\"\n";
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.default_server.as_deref(), Some("central"));
        assert_eq!(
            c.servers["central"].token_file.as_deref(),
            Some(Path::new("/run/t"))
        );
        let back: Config = toml::from_str(&toml::to_string_pretty(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn login_keeps_token_unless_given_and_sets_default() {
        let mut c = Config::default();
        c.login("a", "http://a/", Some("t1".into()), false);
        assert_eq!(c.default_server.as_deref(), Some("a"));
        c.login("b", "http://b/", None, false);
        assert_eq!(c.default_server.as_deref(), Some("a"));
        c.login("a", "http://a2/", None, false);
        assert_eq!(c.servers["a"].token.as_deref(), Some("t1"));
        assert_eq!(c.servers["a"].endpoint, "http://a2/");
        c.login("b", "http://b/", None, true);
        assert_eq!(c.default_server.as_deref(), Some("b"));
    }

    #[test]
    fn private_file_has_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/config.toml");
        let mut c = Config::default();
        c.login("a", "http://a/", Some("secret".into()), true);
        c.save_to(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Config::load_from(&p).unwrap(), c);
    }
}
