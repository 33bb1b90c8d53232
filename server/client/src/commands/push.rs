//! `garret push`: upload store paths (with their closure) to a cache.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cache_ref::CacheRef;
use crate::commands::connect_for_push;
use crate::local_nix::{resolve_store_path, store_dir};
use crate::progress::Progress;
use crate::push::{plan, upload, PushOptions};

/// Push store paths and their closures to a cache.
///
/// Paths signed by the cache's upstream keys (cache.nixos.org-1 by default) and paths the
/// cache already has are skipped; the rest are streamed in parallel. Exits non-zero if any
/// path failed.
#[derive(clap::Args)]
pub struct Args {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// Store paths, or symlinks to them such as ./result.
    pub paths: Vec<PathBuf>,
    /// Also read paths from standard input, one per line.
    #[arg(long)]
    pub stdin: bool,
    /// Push only the given paths, not their dependencies.
    #[arg(long)]
    pub no_closure: bool,
    /// Push paths even when they are signed by an upstream cache key.
    #[arg(long)]
    pub ignore_upstream_cache_filter: bool,
    /// Concurrent uploads.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Send the upload metadata in the body even when it would fit a header.
    #[arg(long)]
    pub force_preamble: bool,
    /// NARs larger than this are sent in parts of this size (K, M, G suffixes), when the
    /// server offers part uploads: each part passes a proxy's body limit, and an
    /// interrupted push resumes with the parts the server has. 0 sends whole NARs.
    #[arg(long, env = "GARRET_PART_SIZE", default_value = "64MiB", value_parser = crate::push::parse_size)]
    pub part_size: u64,
}

pub async fn run(a: Args) -> Result<()> {
    let mut args = a.paths.clone();
    if a.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading paths from stdin")?;
            let line = line.trim();
            if !line.is_empty() {
                args.push(PathBuf::from(line));
            }
        }
    }
    if args.is_empty() {
        bail!("no paths to push: give PATH arguments or --stdin");
    }
    let sd = store_dir();
    let roots = args
        .iter()
        .map(|p| resolve_store_path(p, &sd))
        .collect::<Result<Vec<_>>>()?;

    let (api, upstream) = connect_for_push(&a.cache).await?;
    let opts = PushOptions {
        no_closure: a.no_closure,
        ignore_upstream_filter: a.ignore_upstream_cache_filter,
        jobs: usize::from(a.jobs),
        force_preamble: a.force_preamble,
        part_size: a.part_size,
    };
    let p = plan(
        &api,
        &a.cache.cache,
        &roots,
        &upstream,
        &opts,
        &BTreeSet::new(),
    )
    .await?;
    let progress = Progress::new();
    progress.println(&format!(
        "{} paths to push to {} ({} already there, {} from upstream)",
        p.upload.len(),
        a.cache,
        p.already_present,
        p.upstream
    ));
    let summary = upload(&api, &a.cache.cache, p, &opts, &progress).await;
    progress.println(&summary.render());
    if !summary.failed.is_empty() {
        bail!(
            "{} of {} paths failed to push",
            summary.failed.len(),
            summary.failed.len() + summary.pushed + summary.deduplicated
        );
    }
    Ok(())
}
