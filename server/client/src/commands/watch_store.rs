//! `garret watch-store`: push new store paths as they appear.
//!
//! Attic waits on inotify for `<path>.lock` files to disappear. We poll the store directory
//! listing once a second instead (no extra dependency, works on every filesystem): a new
//! entry is pushed once no `.lock` sits beside it and Nix reports it valid.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cache_ref::CacheRef;
use crate::commands::connect_for_push;
use crate::local_nix::store_dir;
use crate::progress::Progress;
use crate::push::{plan, upload, PushOptions};
use garret_core::nix::store_path::StorePath;

/// Entries that stay invalid this long (aborted builds, temp dirs) are forgotten.
const PENDING_TIMEOUT: Duration = Duration::from_secs(600);

/// Watch the Nix store and push every new path (with its closure) to a cache. Runs until
/// interrupted.
#[derive(clap::Args)]
pub struct Args {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// Concurrent uploads.
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Push paths even when they are signed by an upstream cache key.
    #[arg(long)]
    pub ignore_upstream_cache_filter: bool,
    /// Directory to watch; defaults to the store directory. For a chroot store
    /// (`--store /x`) give its real location, e.g. /x/nix/store.
    #[arg(long)]
    pub watch_dir: Option<PathBuf>,
    /// How often to look for new paths.
    #[arg(long, default_value = "1s", value_parser = garret_core::duration::parse_duration)]
    pub interval: Duration,
}

fn list(dir: &PathBuf) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if let Some(n) = e.file_name().to_str() {
            names.insert(n.to_string());
        }
    }
    Ok(names)
}

/// Which of `paths` Nix considers valid (registered), via `nix-store --check-validity`.
async fn valid(paths: &[String]) -> Result<BTreeSet<String>> {
    let out = tokio::process::Command::new("nix-store")
        .args(["--check-validity", "--print-invalid"])
        .args(paths)
        .output()
        .await
        .context("running nix-store --check-validity")?;
    let invalid: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    Ok(paths
        .iter()
        .filter(|p| !invalid.contains(*p))
        .cloned()
        .collect())
}

/// What the watcher remembers between polls.
struct Watch {
    store_dir: String,
    /// The directory listing of the last poll.
    seen: BTreeSet<String>,
    /// New store paths (base names) not yet pushed, and when they appeared.
    pending: BTreeMap<String, Instant>,
    /// Base names already pushed (or found present), so closures skip them.
    handled: BTreeSet<String>,
}

impl Watch {
    fn new(store_dir: String, seen: BTreeSet<String>) -> Watch {
        Watch {
            store_dir,
            seen,
            pending: BTreeMap::new(),
            handled: BTreeSet::new(),
        }
    }

    /// Takes a new listing: remembers the store paths that appeared, forgets the ones that
    /// went away or stayed invalid too long, and returns the full paths no `.lock` sits
    /// beside any more (Nix is done writing them).
    fn settled(&mut self, now: BTreeSet<String>) -> Vec<String> {
        let sd = &self.store_dir;
        for name in now.difference(&self.seen) {
            let is_path = !name.ends_with(".lock")
                && !name.ends_with(".drv")
                && StorePath::parse(&format!("{sd}/{name}")).is_ok();
            if is_path {
                self.pending.insert(name.clone(), Instant::now());
            }
        }
        self.pending
            .retain(|n, t| now.contains(n) && t.elapsed() < PENDING_TIMEOUT);
        self.seen = now;
        self.pending
            .keys()
            .filter(|n| !self.seen.contains(&format!("{n}.lock")))
            .map(|n| format!("{sd}/{n}"))
            .collect()
    }

    /// These paths are being pushed now; they are no longer waited for.
    fn taken(&mut self, ready: &[String]) {
        for p in ready {
            self.pending.remove(p.rsplit('/').next().unwrap_or(p));
        }
    }

    /// Remembers what a push considered, except what failed (that is tried again when it
    /// shows up in a later closure), by the hash part of its base name.
    fn pushed(&mut self, considered: Vec<String>, failed: &[(String, String)]) {
        let failed: BTreeSet<&str> = failed.iter().map(|(p, _)| p.as_str()).collect();
        self.handled.extend(
            considered
                .into_iter()
                .filter(|p| !failed.contains(p.as_str()))
                .map(|p| {
                    p.rsplit('/')
                        .next()
                        .unwrap_or(&p)
                        .chars()
                        .take(32)
                        .collect()
                }),
        );
    }
}

/// Polls forever: settled new paths that Nix reports valid are pushed with their closure;
/// errors are printed and the next poll goes on.
pub async fn run(a: Args) -> Result<()> {
    let sd = store_dir();
    let dir = a.watch_dir.clone().unwrap_or_else(|| PathBuf::from(&sd));
    let (api, upstream) = connect_for_push(&a.cache).await?;
    let opts = PushOptions {
        no_closure: false,
        ignore_upstream_filter: a.ignore_upstream_cache_filter,
        jobs: usize::from(a.jobs),
        force_preamble: false,
        part_size: crate::push::DEFAULT_PART_SIZE,
    };
    let progress = Progress::new();
    let mut watch = Watch::new(sd, list(&dir)?);
    progress.println(&format!(
        "Watching {} (polling every {}) for new paths to push to {}",
        dir.display(),
        humantime::format_duration(a.interval),
        a.cache
    ));
    loop {
        tokio::time::sleep(a.interval).await;
        let now = match list(&dir) {
            Ok(n) => n,
            Err(e) => {
                progress.println(&format!("error: {e:#}"));
                continue;
            }
        };
        let ready = watch.settled(now);
        if ready.is_empty() {
            continue;
        }
        let ready = match valid(&ready).await {
            Ok(v) => v.into_iter().collect::<Vec<_>>(),
            Err(e) => {
                progress.println(&format!("error: {e:#}"));
                continue;
            }
        };
        if ready.is_empty() {
            continue;
        }
        watch.taken(&ready);
        match plan(
            &api,
            &a.cache.cache,
            &ready,
            &upstream,
            &opts,
            &watch.handled,
        )
        .await
        {
            Ok(p) => {
                let considered = p.considered.clone();
                let summary = upload(&api, &a.cache.cache, p, &opts, &progress).await;
                progress.println(&summary.render());
                watch.pushed(considered, &summary.failed);
            }
            Err(e) => progress.println(&format!("error: {e:#}")),
        }
    }
}
