//! `garret use`: point the user's Nix at a cache (substituter, trusted key, netrc).

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

use crate::cache_ref::CacheRef;
use crate::commands::connect;
use crate::config::{config_home, write_private};
use crate::nix_conf::{prepend_to_list, set_value, upsert_netrc, NIXOS_KEY, NIXOS_SUBSTITUTER};

/// Add a cache to your nix.conf ($NIX_CONF_DIR/nix.conf, else $XDG_CONFIG_HOME/nix/nix.conf).
///
/// Prepends the substituter to `substituters` and the key to `trusted-public-keys` (creating
/// them next to cache.nixos.org if absent). With a token, also writes `machine HOST password
/// TOKEN` into a netrc beside nix.conf (mode 0600) and sets `netrc-file`. Running it again
/// changes nothing. Note: a multi-user Nix only honours these for trusted users.
#[derive(clap::Args)]
pub struct Args {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
}

/// The nix.conf the user controls: `$NIX_CONF_DIR/nix.conf` if set, else the XDG one.
pub fn nix_conf_path() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("NIX_CONF_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("nix.conf"));
    }
    Ok(config_home()?.join("nix").join("nix.conf"))
}

pub async fn run(a: Args) -> Result<()> {
    let (server, api) = connect(&a.cache)?;
    let cfg = api
        .get_cache_config(&a.cache.cache)
        .await
        .with_context(|| format!("reading cache {}", a.cache))?;
    let substituter = cfg
        .substituter_endpoint
        .ok_or_else(|| anyhow!("the server did not report a substituter endpoint"))?;
    let key = cfg
        .public_key
        .ok_or_else(|| anyhow!("the server did not report a public key"))?;

    let conf_path = nix_conf_path()?;
    let dir = conf_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", conf_path.display()))?
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let old = match std::fs::read_to_string(&conf_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", conf_path.display())),
    };
    let mut conf = prepend_to_list(&old, "substituters", &substituter, NIXOS_SUBSTITUTER);
    conf = prepend_to_list(&conf, "trusted-public-keys", &key, NIXOS_KEY);

    if let Some(token) = &server.token {
        let host = reqwest::Url::parse(&substituter)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .ok_or_else(|| anyhow!("substituter {substituter:?} has no host"))?;
        let netrc_path = dir.join("netrc");
        let old_netrc = match std::fs::read_to_string(&netrc_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", netrc_path.display())),
        };
        let new_netrc = upsert_netrc(&old_netrc, &host, token);
        if new_netrc != old_netrc {
            write_private(&netrc_path, new_netrc.as_bytes())?;
        }
        let netrc_str = netrc_path
            .to_str()
            .ok_or_else(|| anyhow!("netrc path is not UTF-8"))?;
        conf = set_value(&conf, "netrc-file", netrc_str);
        eprintln!("Wrote credentials for {host} to {}", netrc_path.display());
    }
    if conf != old {
        let tmp = dir.join(format!(".nix.conf.tmp-{}", std::process::id()));
        std::fs::write(&tmp, &conf).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &conf_path)
            .with_context(|| format!("replacing {}", conf_path.display()))?;
    }
    eprintln!(
        "Configured {} in {}: substituter {substituter}, key {key}",
        a.cache,
        conf_path.display()
    );
    Ok(())
}
