//! Server configuration: Attic's `server.toml` keys, plus embedded defaults rooted in a data
//! directory so `garretd serve --data-dir DIR` needs no file at all.
//!
//! Sources, later wins: built-in defaults → data-dir defaults → TOML file (`--config`, or
//! `ATTIC_SERVER_CONFIG_BASE64`) → `GARRETD_<SECTION>__<KEY>` environment overrides.

mod env;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use serde::Deserialize;

use garret_core::duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    pub api_endpoint: Option<String>,
    pub substituter_endpoint: Option<String>,
    #[serde(default)]
    pub soft_delete_caches: bool,
    #[serde(default = "yes")]
    pub require_proof_of_possession: bool,
    #[serde(default = "default_max_nar_info_size")]
    pub max_nar_info_size: usize,
    #[serde(default)]
    pub database: DatabaseConfig,
    pub storage: Option<StorageConfig>,
    #[serde(default)]
    pub chunking: ChunkingConfig,
    #[serde(default)]
    pub compression: CompressionConfig,
    #[serde(default)]
    pub garbage_collection: GcConfig,
    /// Garret: connection limits of the HTTP listener (`[http]`, see docs/limits.md).
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub jwt: JwtConfig,
    /// Where embedded defaults live (SQLite file, chunk folder, generated token secret).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Garret: caches declared in configuration, created or updated at start and whenever
    /// the file changes (`[[caches]]` tables).
    #[serde(default)]
    pub caches: Vec<DeclaredCache>,
    /// Garret: how upstreams of pull-through caches are asked (`[pull-through]`).
    #[serde(default)]
    pub pull_through: PullThroughConfig,
}

/// Limits for asking upstream caches (docs/pull-through.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PullThroughConfig {
    /// How long "no upstream has it" (or "the upstreams failed") is remembered.
    #[serde(default = "default_negative_ttl", with = "duration::serde_humantime")]
    pub negative_ttl: Duration,
    /// Connecting, and a whole narinfo request.
    #[serde(
        default = "default_upstream_timeout",
        with = "duration::serde_humantime"
    )]
    pub timeout: Duration,
    /// The longest silence while a NAR streams in before the fetch is given up.
    #[serde(
        default = "default_upstream_read_timeout",
        with = "duration::serde_humantime"
    )]
    pub read_timeout: Duration,
    /// Upstream narinfo lookups in flight for one get-missing-paths call.
    #[serde(default = "default_lookup_concurrency")]
    pub lookup_concurrency: usize,
    /// At most this many paths of one get-missing-paths call are asked upstream; the rest
    /// are reported missing (uploaded), which is always correct, only slower.
    #[serde(default = "default_max_lookups")]
    pub max_lookups_per_query: usize,
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_upstream_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_lookup_concurrency() -> usize {
    16
}
fn default_max_lookups() -> usize {
    2000
}

impl Default for PullThroughConfig {
    fn default() -> Self {
        PullThroughConfig {
            negative_ttl: default_negative_ttl(),
            timeout: default_upstream_timeout(),
            read_timeout: default_upstream_read_timeout(),
            lookup_concurrency: default_lookup_concurrency(),
            max_lookups_per_query: default_max_lookups(),
        }
    }
}

/// A cache as configuration declares it. Unset fields keep their current value (or the
/// API's default on creation).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeclaredCache {
    pub name: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default = "default_store_dir")]
    pub store_dir: String,
    /// `None` = the global default; `"0"` = keep forever.
    #[serde(default, with = "duration::serde_humantime_opt")]
    pub retention_period: Option<Duration>,
    #[serde(default = "default_upstream")]
    pub upstream_cache_key_names: Vec<String>,
    /// A file holding the cache's signing keypair (`name:base64`), e.g. a mounted Secret.
    pub signing_key_file: Option<PathBuf>,
    /// An environment variable holding the keypair instead.
    pub signing_key_env: Option<String>,
    /// Garret: upstream caches a miss is fetched from (docs/pull-through.md).
    #[serde(default)]
    pub upstreams: Vec<garret_core::upstream::Upstream>,
}

fn default_priority() -> i32 {
    41
}
fn default_store_dir() -> String {
    "/nix/store".into()
}
fn default_upstream() -> Vec<String> {
    vec!["cache.nixos.org-1".into()]
}

fn default_listen() -> String {
    "[::]:8080".into()
}
fn yes() -> bool {
    true
}
fn default_max_nar_info_size() -> usize {
    1 << 20
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Option<String>,
    #[serde(default)]
    pub heartbeat: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StorageConfig {
    Local {
        path: PathBuf,
        /// Write packs with `O_DIRECT` where the filesystem allows (Garret's addition;
        /// `false` keeps every write in the page cache).
        #[serde(default = "default_direct_io", rename = "direct-io")]
        direct_io: bool,
    },
    S3(S3Config),
}

fn default_direct_io() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct S3Config {
    pub region: String,
    pub bucket: String,
    pub endpoint: Option<String>,
    pub credentials: Option<S3Credentials>,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// FastCDC parameters. Attic requires the section; without it Garret uses the values of
/// Attic's generated config (64 KiB average). Chunks are packed into storage objects per
/// upload batch, so small chunks no longer mean many small files.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChunkingConfig {
    pub nar_size_threshold: usize,
    pub min_size: usize,
    pub avg_size: usize,
    pub max_size: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            nar_size_threshold: 64 * 1024,
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompressionType {
    None,
    Zstd,
    Brotli,
    Xz,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CompressionConfig {
    #[serde(rename = "type", default = "default_compression")]
    pub kind: CompressionType,
    pub level: Option<i32>,
}

fn default_compression() -> CompressionType {
    CompressionType::Zstd
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            kind: CompressionType::Zstd,
            level: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GcConfig {
    #[serde(default = "default_gc_interval", with = "duration::serde_humantime")]
    pub interval: Duration,
    #[serde(default, with = "duration::serde_humantime")]
    pub default_retention_period: Duration,
    /// Garret: how long unreferenced NARs and chunks rest before deletion, so uploads in
    /// flight can still claim them.
    #[serde(default = "default_orphan_grace", with = "duration::serde_humantime")]
    pub orphan_grace_period: Duration,
}

fn default_orphan_grace() -> Duration {
    Duration::from_secs(3600)
}

fn default_gc_interval() -> Duration {
    Duration::from_secs(12 * 3600)
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval: default_gc_interval(),
            default_retention_period: Duration::ZERO,
            orphan_grace_period: default_orphan_grace(),
        }
    }
}

/// What one client may hold of the listener (docs/limits.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpConfig {
    /// HTTP/1: a request's head (request line and headers) must arrive within this long,
    /// counted from when the connection is ready for it, so it also ends idle keep-alive.
    #[serde(
        default = "default_header_read_timeout",
        with = "duration::serde_humantime"
    )]
    pub header_read_timeout: Duration,
    /// A connection moving no bytes either way for this long is asked to close (requests
    /// in flight finish); if it moves none for as long again it is dropped.
    #[serde(default = "default_idle_timeout", with = "duration::serde_humantime")]
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2: streams (requests) in flight on one connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Bytes of NAR data held in memory for downloads, all of them together: reads ahead of
    /// a slow client wait for budget instead of growing memory.
    #[serde(default = "default_nar_read_buffer_budget")]
    pub nar_read_buffer_budget: usize,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_concurrent_streams() -> u32 {
    32
}
fn default_nar_read_buffer_budget() -> usize {
    256 << 20
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_concurrent_streams(),
            nar_read_buffer_budget: default_nar_read_buffer_budget(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JwtConfig {
    pub token_bound_issuer: Option<String>,
    pub token_bound_audiences: Option<Vec<String>>,
    /// Garret: a file listing revoked tokens, one `jti` (optionally followed by the token's
    /// `exp`) or `sub:<subject>` per line (format: `garret_core::token::parse_entries`).
    /// Polled every `watch::POLL` (2 s) by content, so a ConfigMap's symlink swap is seen;
    /// a listed token is refused from the next request after the reload, cached verdicts
    /// included.
    pub revocation_list: Option<PathBuf>,
    pub signing: Option<JwtSigning>,
    /// Garret: clock-skew allowance in seconds for `nbf` and `iat`, so a token minted on a
    /// slightly fast clock works at once (60 by default, as jsonwebtoken's
    /// `Validation::leeway`; unlike it, `exp` stays exact).
    #[serde(default = "default_jwt_leeway")]
    pub leeway: u64,
    /// Garret: trusted identity-token issuers (`[[jwt.oidc]]`, docs/keyless-push.md).
    #[serde(default)]
    pub oidc: Vec<crate::oidc::OidcIssuerConfig>,
}

fn default_jwt_leeway() -> u64 {
    60
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            token_bound_issuer: None,
            token_bound_audiences: None,
            revocation_list: None,
            signing: None,
            leeway: default_jwt_leeway(),
            oidc: Vec::new(),
        }
    }
}

#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JwtSigning {
    pub token_rs256_pubkey_base64: Option<String>,
    pub token_rs256_secret_base64: Option<String>,
    pub token_hs256_secret_base64: Option<String>,
}

impl std::fmt::Debug for JwtSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSigning { .. }")
    }
}

/// Where a configuration came from, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

impl Config {
    pub fn gc_settings(&self) -> crate::gc::GcSettings {
        crate::gc::GcSettings {
            default_retention: self.garbage_collection.default_retention_period,
            orphan_grace: self.garbage_collection.orphan_grace_period,
        }
    }

    /// Loads and validates the configuration, resolving embedded defaults.
    pub fn load(src: &ConfigSource) -> anyhow::Result<Config> {
        let text = match &src.file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?,
            None => match std::env::var("ATTIC_SERVER_CONFIG_BASE64") {
                Ok(b64) if !b64.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .context("ATTIC_SERVER_CONFIG_BASE64 is not valid base64")?;
                    String::from_utf8(raw).context("ATTIC_SERVER_CONFIG_BASE64 is not UTF-8")?
                }
                _ => String::new(),
            },
        };
        Self::from_toml(&text, src, env::vars_with_prefix("GARRETD_"))
    }

    /// [`Config::load`] after the file is read: text + command line + `GARRETD_` overrides.
    /// Not pure: `ATTIC_SERVER_DATABASE_URL` is still read from the process environment, and
    /// the default data directory depends on `XDG_DATA_HOME` and `HOME`.
    pub fn from_toml(
        text: &str,
        src: &ConfigSource,
        overrides: Vec<(String, String)>,
    ) -> anyhow::Result<Config> {
        let mut table: toml::Table = toml::from_str(text).context("parsing config TOML")?;
        if table.contains_key("token-hs256-secret-base64") {
            bail!("`token-hs256-secret-base64` must move into the `[jwt.signing]` section");
        }
        env::apply_overrides(&mut table, &overrides)?;
        let mut cfg: Config = table.try_into().context("invalid configuration")?;
        if let Some(listen) = &src.listen {
            cfg.listen = listen.clone();
        }
        if src.data_dir.is_some() {
            cfg.data_dir = src.data_dir.clone();
        }
        let needs_data_dir = cfg.storage.is_none()
            || (cfg.database.url.is_none() && std::env::var("ATTIC_SERVER_DATABASE_URL").is_err());
        if cfg.data_dir.is_none() && needs_data_dir {
            cfg.data_dir = Some(default_data_dir());
        }
        if cfg.database.url.is_none() {
            cfg.database.url = std::env::var("ATTIC_SERVER_DATABASE_URL").ok();
        }
        if let Some(dir) = cfg.data_dir.clone() {
            if cfg.database.url.is_none() {
                cfg.database.url = Some(format!(
                    "sqlite://{}?mode=rwc",
                    dir.join("server.db").display()
                ));
            }
            if cfg.storage.is_none() {
                cfg.storage = Some(StorageConfig::Local {
                    path: dir.join("storage"),
                    direct_io: default_direct_io(),
                });
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        crate::oidc::validate(&self.jwt.oidc, self.jwt.token_bound_issuer.as_deref())?;
        if let Some(ep) = &self.api_endpoint {
            if !ep.ends_with('/') {
                bail!("api-endpoint must end with '/' (got {ep:?})");
            }
        }
        let c = &self.chunking;
        if !(64..=c.avg_size).contains(&c.min_size) || c.avg_size < 256 || c.max_size < 1024 {
            bail!("[chunking] needs 64 <= min-size <= avg-size, avg-size >= 256, max-size >= 1024");
        }
        if c.min_size > 1 << 20 || c.avg_size > 4 << 20 {
            bail!("[chunking] min-size must be at most 1 MiB and avg-size at most 4 MiB");
        }
        if c.avg_size > c.max_size {
            bail!("[chunking] avg-size must not exceed max-size");
        }
        let h = &self.http;
        if h.header_read_timeout.is_zero()
            || h.idle_timeout.is_zero()
            || h.max_connections == 0
            || h.max_concurrent_streams == 0
        {
            bail!("[http] timeouts and limits must be above zero");
        }
        if h.max_connections > 1 << 20 {
            bail!("[http] max-connections is too large");
        }
        if h.nar_read_buffer_budget < 1 << 20 {
            bail!("[http] nar-read-buffer-budget must be at least 1 MiB (1048576)");
        }
        if c.max_size > 16 << 20 {
            bail!("[chunking] max-size above 16 MiB is not supported (chunks are held in memory)");
        }
        let p = &self.pull_through;
        if p.timeout.is_zero() || p.read_timeout.is_zero() || p.lookup_concurrency == 0 {
            bail!("[pull-through] timeouts and lookup-concurrency must be above zero");
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.caches {
            garret_core::cache_name::CacheName::parse(&c.name)?;
            if !names.insert(c.name.as_str()) {
                bail!("cache {:?} is declared twice", c.name);
            }
            garret_core::nix::fields::validate_store_dir(&c.store_dir)
                .with_context(|| format!("cache {:?}: invalid store-dir", c.name))?;
            garret_core::upstream::check_all(&c.upstreams)
                .with_context(|| format!("cache {:?}: invalid upstreams", c.name))?;
            if c.signing_key_file.is_some() && c.signing_key_env.is_some() {
                bail!(
                    "cache {:?}: set signing-key-file or signing-key-env, not both",
                    c.name
                );
            }
        }
        if self.compression.kind == CompressionType::Brotli {
            bail!("[compression] type = \"brotli\" is not supported: concatenated chunks would not decode; use zstd");
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen
            .parse()
            .with_context(|| format!("listen address {:?} is not ip:port", self.listen))
    }

    pub fn database_url(&self) -> &str {
        self.database.url.as_deref().unwrap_or_default()
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }
}

/// `$XDG_DATA_HOME/garret`, else `~/.local/share/garret`, else `./garret-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("garret");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/garret");
    }
    PathBuf::from("garret-data")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(dir: &str) -> ConfigSource {
        ConfigSource {
            data_dir: Some(dir.into()),
            ..Default::default()
        }
    }

    #[test]
    fn direct_io_can_be_turned_off() {
        let c = Config::from_toml(
            "[storage]\ntype = \"local\"\npath = \"/s\"\ndirect-io = false\n",
            &src("/d"),
            vec![],
        )
        .unwrap();
        assert!(matches!(
            c.storage,
            Some(StorageConfig::Local {
                direct_io: false,
                ..
            })
        ));
    }

    #[test]
    fn data_dir_alone_gives_sqlite_and_local_storage() {
        let c = Config::from_toml("", &src("/d"), vec![]).unwrap();
        assert_eq!(c.database_url(), "sqlite:///d/server.db?mode=rwc");
        assert!(
            matches!(c.storage, Some(StorageConfig::Local { ref path, direct_io: true }) if path == Path::new("/d/storage"))
        );
        assert_eq!(c.chunking.avg_size, 65536);
        assert!(c.require_proof_of_possession);
    }

    #[test]
    fn attic_server_toml_is_accepted() {
        let text = r#"
listen = "127.0.0.1:9000"
allowed-hosts = ["cache.example.com"]
api-endpoint = "https://cache.example.com/"
[database]
url = "postgresql:///attic?host=/run/postgresql"
[storage]
type = "s3"
region = "garage"
bucket = "attic"
endpoint = "http://127.0.0.1:3900"
[storage.credentials]
access_key_id = "GK1"
secret_access_key = "s"
[chunking]
nar-size-threshold = 131072
min-size = 65536
avg-size = 131072
max-size = 262144
[compression]
type = "zstd"
level = 3
[garbage-collection]
interval = "12 hours"
default-retention-period = "6 months"
[jwt]
token-bound-issuer = "me"
[jwt.signing]
token-hs256-secret-base64 = "c2VjcmV0"
"#;
        let c = Config::from_toml(text, &ConfigSource::default(), vec![]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert!(c.data_dir.is_none());
        assert!(matches!(c.storage, Some(StorageConfig::S3(ref s)) if s.bucket == "attic"));
        assert_eq!(c.garbage_collection.interval, Duration::from_secs(43200));
        assert_eq!(c.compression.level, Some(3));
        assert!(
            !format!("{c:?}").contains("c2VjcmV0"),
            "secrets must not be in Debug output"
        );
    }

    #[test]
    fn env_overrides_nested_keys_and_unknown_keys_fail() {
        let c = Config::from_toml(
            "",
            &src("/d"),
            vec![
                ("GARRETD_COMPRESSION__LEVEL".into(), "1".into()),
                ("GARRETD_API_ENDPOINT".into(), "http://x/".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.compression.level, Some(1));
        assert_eq!(c.api_endpoint.as_deref(), Some("http://x/"));
        assert!(Config::from_toml("bogus = 1", &src("/d"), vec![]).is_err());
        assert!(Config::from_toml("api-endpoint = \"http://x\"", &src("/d"), vec![]).is_err());
    }
}
