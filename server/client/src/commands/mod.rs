//! The command line: one module per command, each with its clap arguments and its `run`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::cache_ref::CacheRef;
use crate::config::{Config, Server};
use crate::http::ApiClient;

pub mod cache;
pub mod delete_path;
pub mod login;
pub mod pin;
pub mod push;
pub mod use_cache;
pub mod watch_store;

#[derive(Parser)]
#[command(
    name = "garret",
    version,
    about = "Client for Garret and Attic binary caches",
    long_about = "Client for Garret and Attic binary caches.\n\n\
Servers and tokens live in $XDG_CONFIG_HOME/garret/config.toml (see `garret login`).\n\
Without a config file, set GARRET_SERVER (endpoint URL) and GARRET_TOKEN; GARRET_TOKEN also\n\
overrides the stored token of whichever server a command uses (handy in CI).\n\
Caches are named CACHE (default server) or SERVER:CACHE."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    Login(login::Args),
    /// Create, configure, inspect or destroy caches.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    Use(use_cache::Args),
    Push(push::Args),
    /// Keep a path and its closure in a cache despite retention and GC.
    #[command(subcommand)]
    Pin(pin::PinCommand),
    WatchStore(watch_store::Args),
}

/// Runs one command; the binary turns an error into `error: …` and exit code 1.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Login(a) => login::run(a),
        Command::Cache(c) => cache::run(c).await,
        Command::Use(a) => use_cache::run(a).await,
        Command::Push(a) => push::run(a).await,
        Command::Pin(c) => pin::run(c).await,
        Command::WatchStore(a) => watch_store::run(a).await,
    }
}

/// The server a cache reference points at, and an API client for it.
pub(crate) fn connect(cache: &CacheRef) -> Result<(Server, ApiClient)> {
    // With GARRET_SERVER set and no SERVER: prefix, the file is not needed at all.
    let config = if cache.server.is_none()
        && std::env::var_os(crate::config::SERVER_ENV).is_some_and(|s| !s.is_empty())
    {
        Config::default()
    } else {
        Config::load()?
    };
    let server = config.resolve(cache.server.as_deref())?;
    let api = ApiClient::new(&server.endpoint, server.token.clone())?;
    Ok((server, api))
}

/// Where to push to a cache: an API client at the endpoint the server advertises for its API
/// (as Attic does, it may live elsewhere), and the cache's upstream key names.
pub(crate) async fn connect_for_push(cache: &CacheRef) -> Result<(ApiClient, Vec<String>)> {
    let (_, api) = connect(cache)?;
    let cfg = api
        .get_cache_config(&cache.cache)
        .await
        .with_context(|| format!("reading cache {cache}"))?;
    let api = match &cfg.api_endpoint {
        Some(ep) => api.rebased(ep)?,
        None => api,
    };
    Ok((api, cfg.upstream_cache_key_names.unwrap_or_default()))
}
