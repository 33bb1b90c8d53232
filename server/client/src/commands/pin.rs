//! `garret pin create|list|delete`: keep a store path and its closure in a cache whatever
//! its retention says (a Garret addition; see docs/pins.md).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Subcommand;
use reqwest::Method;

use crate::cache_ref::CacheRef;
use crate::commands::connect;
use crate::http::ApiClient;
use crate::local_nix::{resolve_store_path, store_dir};
use garret_core::cache_name::CacheName;
use garret_core::nix::store_path::{StorePath, StorePathHash};
use garret_core::pins::{CreatePinRequest, CreatePinResponse, DeletePinResponse, PinList, PinName};

#[derive(Subcommand)]
pub enum PinCommand {
    /// Pin a path and its closure (as far as the cache holds it) under a name. Pinning a
    /// name again adds a version; `--keep N` releases all but the newest N.
    Create(CreateArgs),
    /// List a cache's pins and their versions, newest first.
    List(ListArgs),
    /// Release every version of a pin; its paths fall back to the cache's retention.
    Delete(DeleteArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// Pin name: letters, digits, `.`, `_`, `+`, `-`.
    pub name: PinName,
    /// A store path (or a symlink to one such as ./result, or its 32-character hash) that
    /// the cache holds.
    pub path: PathBuf,
    /// Keep only the newest N versions of this name, the new one included.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// The pin to release.
    pub name: PinName,
}

pub async fn run(c: PinCommand) -> Result<()> {
    match c {
        PinCommand::Create(a) => create(a).await,
        PinCommand::List(a) => list(a).await,
        PinCommand::Delete(a) => delete(a).await,
    }
}

/// The hash of the store path an argument names: a bare hash as is (unless a file of that
/// name exists), else the top-level store path the argument is or links to. The path need
/// not exist locally: pins and deletions name paths in the cache.
pub(crate) fn path_hash(arg: &Path) -> Result<(StorePathHash, String)> {
    if let Some(s) = arg.to_str() {
        if let Ok(h) = StorePathHash::parse(s) {
            if !arg.exists() {
                return Ok((h, s.to_string()));
            }
        }
    }
    let sd = store_dir();
    let full = resolve_store_path(arg, &sd)?;
    let path = StorePath::parse(&full)
        .with_context(|| format!("{} is not a store path", arg.display()))?;
    Ok((path.hash().clone(), full))
}

fn pins_path(cache: &CacheName) -> String {
    format!("_api/v1/cache/{cache}/pins")
}

async fn create(a: CreateArgs) -> Result<()> {
    let (hash, shown) = path_hash(&a.path)?;
    let (_, api) = connect(&a.cache)?;
    let req = CreatePinRequest {
        name: a.name.clone(),
        store_path_hash: hash,
        keep: a.keep,
    };
    let resp: CreatePinResponse = api
        .json(
            api.request(Method::POST, &pins_path(&a.cache.cache))?
                .json(&req),
        )
        .await
        .with_context(|| format!("pinning {shown} as {} in cache {}", a.name, a.cache))?;
    eprintln!(
        "Pinned {} as {} version {} in cache {} ({} paths)",
        resp.pin.store_path, resp.name, resp.pin.version, a.cache, resp.pin.closure_size
    );
    if resp.missing_references > 0 {
        eprintln!(
            "{} references are not in the cache (e.g. paths cache.nixos.org serves) and are not pinned",
            resp.missing_references
        );
    }
    if !resp.released_versions.is_empty() {
        let v: Vec<String> = resp
            .released_versions
            .iter()
            .map(|v| v.to_string())
            .collect();
        eprintln!("Released versions {} of {}", v.join(", "), resp.name);
    }
    Ok(())
}

pub(crate) async fn fetch_list(api: &ApiClient, cache: &CacheName) -> Result<PinList> {
    api.json(api.request(Method::GET, &pins_path(cache))?).await
}

/// One line per version: name, version, store path, closure size, keep, time, creator.
pub fn render_list(list: &PinList) -> String {
    let mut out = String::new();
    for pin in &list.pins {
        for v in &pin.versions {
            let when = humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_secs(v.created_at.max(0) as u64),
            );
            out.push_str(&format!(
                "{}\t{}\t{}\t{} paths\tkeep {}\t{}\t{}\n",
                pin.name,
                v.version,
                v.store_path,
                v.closure_size,
                v.keep
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "all".into()),
                when,
                v.created_by.as_deref().unwrap_or("-"),
            ));
        }
    }
    out
}

async fn list(a: ListArgs) -> Result<()> {
    let (_, api) = connect(&a.cache)?;
    let list = fetch_list(&api, &a.cache.cache)
        .await
        .with_context(|| format!("listing the pins of cache {}", a.cache))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    } else if list.pins.is_empty() {
        eprintln!("Cache {} has no pins", a.cache);
    } else {
        out.write_all(render_list(&list).as_bytes())?;
    }
    Ok(())
}

async fn delete(a: DeleteArgs) -> Result<()> {
    let (_, api) = connect(&a.cache)?;
    let path = format!("{}/{}", pins_path(&a.cache.cache), a.name);
    let resp: DeletePinResponse = api
        .json(api.request(Method::DELETE, &path)?)
        .await
        .with_context(|| format!("deleting pin {} of cache {}", a.name, a.cache))?;
    eprintln!(
        "Deleted pin {} of cache {} ({} versions released)",
        resp.name, a.cache, resp.versions_released
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use garret_core::pins::{PinEntry, PinVersion};

    const P: &str = "/nix/store/7x2qdwjgcq2yx6fyf3wxgvyapsqba3v0-hello";

    #[test]
    fn a_path_or_a_bare_hash_names_a_store_path() {
        let (h, shown) = path_hash(Path::new(&format!("{P}/bin/hello"))).unwrap();
        assert_eq!(h.as_str(), "7x2qdwjgcq2yx6fyf3wxgvyapsqba3v0");
        assert_eq!(shown, P);
        let (h, _) = path_hash(Path::new("7x2qdwjgcq2yx6fyf3wxgvyapsqba3v0")).unwrap();
        assert_eq!(h.as_str(), "7x2qdwjgcq2yx6fyf3wxgvyapsqba3v0");
        assert!(path_hash(Path::new("/tmp")).is_err());
    }

    #[test]
    fn the_list_has_one_line_per_version() {
        let v = |version| PinVersion {
            version,
            store_path: P.into(),
            closure_size: 3,
            keep: Some(2),
            created_at: 0,
            created_by: Some("ci".into()),
        };
        let list = PinList {
            pins: vec![PinEntry {
                name: PinName::parse("rel").unwrap(),
                versions: vec![v(2), v(1)],
            }],
        };
        assert_eq!(
            render_list(&list),
            format!(
                "rel\t2\t{P}\t3 paths\tkeep 2\t1970-01-01T00:00:00Z\tci\nrel\t1\t{P}\t3 paths\tkeep 2\t1970-01-01T00:00:00Z\tci\n"
            )
        );
    }
}
