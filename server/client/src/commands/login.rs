//! `garret login`: remember a server (and its token) in the client config.

use anyhow::Result;

use crate::config::Config;

/// Add or update a server in $XDG_CONFIG_HOME/garret/config.toml (mode 0600).
///
/// The token is only replaced when given. The first server becomes the default.
#[derive(clap::Args)]
pub struct Args {
    /// Name for the server, used as SERVER in SERVER:CACHE.
    pub name: String,
    /// API endpoint: an http:// or https:// URL, e.g. https://cache.example.com/. For a
    /// private CA set NIX_SSL_CERT_FILE or SSL_CERT_FILE to its PEM file.
    pub endpoint: String,
    /// Token (JWT); prefer GARRET_TOKEN in CI to keep it out of shell history.
    pub token: Option<String>,
    /// Make this the default server.
    #[arg(long)]
    pub set_default: bool,
}

pub fn run(a: Args) -> Result<()> {
    garret_core::cache_name::CacheName::parse(&a.name).map_err(|_| {
        anyhow::anyhow!(
            "invalid server name {:?}: use letters, digits, _ + -",
            a.name
        )
    })?;
    // Only http(s), stored with exactly one trailing slash (`http://host//` would 404).
    let endpoint = crate::http::parse_endpoint(&a.endpoint)?;
    let path = crate::config::config_path()?;
    let mut config = Config::load_from(&path)?;
    config.login(&a.name, endpoint.as_str(), a.token, a.set_default);
    config.save_to(&path)?;
    eprintln!("Configured server {:?} in {}", a.name, path.display());
    Ok(())
}
