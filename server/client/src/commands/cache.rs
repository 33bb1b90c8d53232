//! `garret cache create|configure|info|destroy`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::cache_ref::CacheRef;
use crate::commands::connect;
use garret_core::wire::{CacheConfig, CreateCacheRequest, KeypairConfig, RetentionPeriodConfig};

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Create a cache with a freshly generated signing key.
    Create(CreateArgs),
    /// Change settings of a cache; only the options given are sent.
    Configure(ConfigureArgs),
    /// Show a cache's substituter URL, public key and settings.
    Info(InfoArgs),
    /// Destroy a cache and everything pushed to it.
    Destroy(DestroyArgs),
    /// Delete one store path from a cache (not its references).
    DeletePath(crate::commands::delete_path::Args),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// Anyone can pull without a token.
    #[arg(long)]
    pub public: bool,
    /// Substituter priority (lower is preferred by Nix; cache.nixos.org is 40).
    #[arg(long, default_value_t = 41)]
    pub priority: i32,
    /// Paths signed by this key are not pushed (repeatable).
    #[arg(long = "upstream-cache-key-name", value_name = "NAME", default_values_t = vec!["cache.nixos.org-1".to_string()])]
    pub upstream_cache_key_names: Vec<String>,
    /// Store directory of the paths the cache holds.
    #[arg(long, default_value = "/nix/store")]
    pub store_dir: String,
}

#[derive(clap::Args)]
pub struct ConfigureArgs {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// Let anyone pull without a token.
    #[arg(long, conflicts_with = "private")]
    pub public: bool,
    /// Require a token to pull.
    #[arg(long)]
    pub private: bool,
    /// Substituter priority (lower is preferred).
    #[arg(long)]
    pub priority: Option<i32>,
    /// Replace the upstream key names (repeatable).
    #[arg(long = "upstream-cache-key-name", value_name = "NAME")]
    pub upstream_cache_key_names: Vec<String>,
    /// Generate a new signing key (clients must `garret use` the cache again).
    #[arg(long)]
    pub regenerate_keypair: bool,
    /// Garbage-collect paths not accessed for this long, e.g. "30 days"; needs the
    /// configure-cache-retention right.
    #[arg(long, value_parser = garret_core::duration::parse_duration, conflicts_with = "reset_retention_period")]
    pub retention_period: Option<Duration>,
    /// Go back to the server's global retention period.
    #[arg(long)]
    pub reset_retention_period: bool,
    /// Store directory of the paths the cache holds.
    #[arg(long)]
    pub store_dir: Option<String>,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
}

#[derive(clap::Args)]
pub struct DestroyArgs {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// Don't ask to type the cache name (required without a terminal).
    #[arg(long)]
    pub no_confirm: bool,
}

pub async fn run(c: CacheCommand) -> Result<()> {
    match c {
        CacheCommand::Create(a) => create(a).await,
        CacheCommand::Configure(a) => configure(a).await,
        CacheCommand::Info(a) => info(a).await,
        CacheCommand::Destroy(a) => destroy(a).await,
        CacheCommand::DeletePath(a) => crate::commands::delete_path::run(a).await,
    }
}

async fn create(a: CreateArgs) -> Result<()> {
    let (_, api) = connect(&a.cache)?;
    let req = CreateCacheRequest {
        keypair: KeypairConfig::Generate,
        is_public: a.public,
        store_dir: a.store_dir,
        priority: a.priority,
        upstream_cache_key_names: a.upstream_cache_key_names,
    };
    api.create_cache(&a.cache.cache, &req)
        .await
        .with_context(|| format!("creating cache {}", a.cache))?;
    eprintln!(
        "Created {} cache {}",
        if a.public { "public" } else { "private" },
        a.cache
    );
    Ok(())
}

/// The PATCH body for the options given. Unlike Attic, `retention_period` is only sent when
/// asked for, so e.g. `--public` works with the configure-cache right alone.
pub fn configure_patch(a: &ConfigureArgs) -> Result<CacheConfig> {
    let mut patch = CacheConfig::default();
    if a.public || a.private {
        patch.is_public = Some(a.public);
    }
    patch.priority = a.priority;
    if !a.upstream_cache_key_names.is_empty() {
        patch.upstream_cache_key_names = Some(a.upstream_cache_key_names.clone());
    }
    if a.regenerate_keypair {
        patch.keypair = Some(KeypairConfig::Generate);
    }
    if let Some(d) = a.retention_period {
        let secs = u32::try_from(d.as_secs())
            .ok()
            .filter(|s| *s <= i32::MAX as u32)
            .context("retention period is too long")?;
        patch.retention_period = Some(RetentionPeriodConfig::Period(secs));
    } else if a.reset_retention_period {
        patch.retention_period = Some(RetentionPeriodConfig::Global);
    }
    patch.store_dir = a.store_dir.clone();
    if patch == CacheConfig::default() {
        bail!("nothing to change: give at least one option (see --help)");
    }
    Ok(patch)
}

async fn configure(a: ConfigureArgs) -> Result<()> {
    let patch = configure_patch(&a)?;
    let (_, api) = connect(&a.cache)?;
    api.configure_cache(&a.cache.cache, &patch)
        .await
        .with_context(|| format!("configuring cache {}", a.cache))?;
    eprintln!("Configured cache {}", a.cache);
    Ok(())
}

async fn info(a: InfoArgs) -> Result<()> {
    let (_, api) = connect(&a.cache)?;
    let c = api
        .get_cache_config(&a.cache.cache)
        .await
        .with_context(|| format!("reading cache {}", a.cache))?;
    let na = || "(not reported)".to_string();
    let retention = match &c.retention_period {
        Some(RetentionPeriodConfig::Period(0)) => "never garbage-collected".to_string(),
        Some(RetentionPeriodConfig::Period(s)) => {
            humantime::format_duration(Duration::from_secs(u64::from(*s))).to_string()
        }
        Some(RetentionPeriodConfig::Global) => "server default".to_string(),
        None => na(),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "Cache: {}", a.cache)?;
    writeln!(
        out,
        "Substituter: {}",
        c.substituter_endpoint.unwrap_or_else(na)
    )?;
    writeln!(out, "Public key: {}", c.public_key.unwrap_or_else(na))?;
    writeln!(
        out,
        "Visibility: {}",
        match c.is_public {
            Some(true) => "public",
            Some(false) => "private",
            None => "(not reported)",
        }
    )?;
    writeln!(
        out,
        "Priority: {}",
        c.priority.map(|p| p.to_string()).unwrap_or_else(na)
    )?;
    writeln!(out, "Retention period: {retention}")?;
    writeln!(
        out,
        "Upstream cache key names: {}",
        c.upstream_cache_key_names
            .map(|v| v.join(", "))
            .unwrap_or_else(na)
    )?;
    writeln!(out, "Store directory: {}", c.store_dir.unwrap_or_else(na))?;
    writeln!(out, "API endpoint: {}", c.api_endpoint.unwrap_or_else(na))?;
    Ok(())
}

async fn destroy(a: DestroyArgs) -> Result<()> {
    if !a.no_confirm {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            bail!(
                "refusing to destroy {} without a terminal to confirm; pass --no-confirm",
                a.cache
            );
        }
        eprint!(
            "This destroys cache {} and every path in it. Type the cache name to confirm: ",
            a.cache
        );
        std::io::stderr().flush()?;
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        if line.trim() != a.cache.cache.as_str() {
            bail!("confirmation did not match; cache {} left alone", a.cache);
        }
    }
    let (_, api) = connect(&a.cache)?;
    api.destroy_cache(&a.cache.cache)
        .await
        .with_context(|| format!("destroying cache {}", a.cache))?;
    eprintln!("Destroyed cache {}", a.cache);
    Ok(())
}
