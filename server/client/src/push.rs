//! Push pipeline: plan (closure path-info in one query → upstream filter →
//! get-missing-paths), then upload the missing paths with N workers, each streaming one NAR
//! from a reused `nix-store --serve` session ([`local_nix::DumpPool`]) into one PUT, or,
//! above `--part-size` and when the server offers it, as parts that survive proxy body
//! limits and resume where they stopped ([`parts`]). Failures are collected per path; they
//! never stop the other uploads.

mod parts;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use indicatif::HumanBytes;

use crate::http::{ApiClient, ApiError};
use crate::local_nix::{self, PathInfo};
use crate::progress::Progress;
use garret_core::cache_name::CacheName;
use garret_core::wire::{UploadPathNarInfo, UploadPathResultKind};

#[derive(Debug, Clone)]
pub struct PushOptions {
    pub no_closure: bool,
    pub ignore_upstream_filter: bool,
    pub jobs: usize,
    pub force_preamble: bool,
    /// NARs larger than this go in parts of this size, if the server offers part uploads;
    /// 0 sends every NAR in one request.
    pub part_size: u64,
}

/// The default part size: under the 100 MiB body limit of Cloudflare-style proxies, and a
/// size a proxy's limit can be raised to.
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;

/// Parses a byte size: a number with an optional binary suffix (`K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`, any case).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 64MiB, 512K, 1048576)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit (use K, M or G, i.e. KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// What to upload, and what was left out and why.
#[derive(Debug, Default)]
pub struct Plan {
    pub upload: Vec<PathInfo>,
    pub already_present: usize,
    pub upstream: usize,
    /// Every path looked at (closure minus `already_handled`), for callers that remember.
    pub considered: Vec<String>,
}

/// Outcome counts of one push.
#[derive(Debug, Default)]
pub struct Summary {
    pub pushed: usize,
    pub deduplicated: usize,
    pub already_present: usize,
    pub upstream: usize,
    pub failed: Vec<(String, String)>,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        let mut s = format!(
            "pushed {} (deduplicated {}), skipped {} already in the cache and {} from upstream, {} failed; {} in {:.1}s ({}/s)",
            self.pushed + self.deduplicated,
            self.deduplicated,
            self.already_present,
            self.upstream,
            self.failed.len(),
            HumanBytes(self.bytes),
            secs,
            HumanBytes((self.bytes as f64 / secs) as u64),
        );
        for (path, err) in &self.failed {
            s.push_str(&format!("\nfailed: {path}: {err}"));
        }
        s
    }
}

/// Computes what to send for `roots`, skipping `already_handled` hashes (watch-store).
pub async fn plan(
    api: &ApiClient,
    cache: &CacheName,
    roots: &[String],
    upstream_names: &[String],
    opts: &PushOptions,
    already_handled: &BTreeSet<String>,
) -> Result<Plan> {
    let infos: Vec<PathInfo> = if opts.no_closure {
        let paths: Vec<String> = roots
            .iter()
            .filter(|p| !already_handled.contains(hash_of(p)))
            .cloned()
            .collect();
        if paths.is_empty() {
            return Ok(Plan::default());
        }
        local_nix::path_info(&paths).await?
    } else {
        local_nix::closure_info(roots)
            .await?
            .into_iter()
            .filter(|i| !already_handled.contains(i.path.hash().as_str()))
            .collect()
    };
    if infos.is_empty() {
        return Ok(Plan::default());
    }
    let paths = infos.iter().map(|i| i.path.as_str().to_string()).collect();
    let mut plan = Plan {
        considered: paths,
        ..Plan::default()
    };
    let mut candidates = Vec::new();
    for info in infos {
        if !opts.ignore_upstream_filter && info.signed_by_any(upstream_names) {
            plan.upstream += 1;
        } else {
            candidates.push(info);
        }
    }
    if candidates.is_empty() {
        return Ok(plan);
    }
    let hashes = candidates
        .iter()
        .map(|i| i.path.hash().to_string())
        .collect();
    let missing: BTreeSet<String> = api
        .get_missing_paths(cache, hashes)
        .await
        .context("asking the server which paths are missing")?
        .into_iter()
        .collect();
    for info in candidates {
        if missing.contains(info.path.hash().as_str()) {
            plan.upload.push(info);
        } else {
            plan.already_present += 1;
        }
    }
    // Big NARs first keeps all workers busy until the end.
    plan.upload.sort_by_key(|p| std::cmp::Reverse(p.nar_size));
    Ok(plan)
}

fn hash_of(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.get(..32).unwrap_or(base)
}

fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// The upload-info JSON Attic's client sends for a path.
pub fn upload_info(cache: &CacheName, info: &PathInfo) -> UploadPathNarInfo {
    UploadPathNarInfo {
        cache: cache.to_string(),
        store_path_hash: info.path.hash().to_string(),
        store_path: info.path.as_str().to_string(),
        references: info.references.iter().map(|r| base_name(r)).collect(),
        system: None,
        deriver: info.deriver.as_deref().map(base_name),
        sigs: info.sigs.clone(),
        ca: info.ca.clone(),
        nar_hash: info.nar_hash.to_typed_hex(),
        nar_size: info.nar_size,
    }
}

/// Uploads every path of the plan with `jobs` concurrent PUTs.
pub async fn upload(
    api: &ApiClient,
    cache: &CacheName,
    plan: Plan,
    opts: &PushOptions,
    progress: &Progress,
) -> Summary {
    let start = Instant::now();
    let mut summary = Summary {
        already_present: plan.already_present,
        upstream: plan.upstream,
        ..Default::default()
    };
    // Ask once whether the server takes parts, and only if some NAR needs them.
    let parts_ok = opts.part_size > 0
        && plan.upload.iter().any(|p| p.nar_size > opts.part_size)
        && match api.upload_session_capabilities().await {
            Ok(caps) => caps.is_some(),
            Err(e) => {
                progress.println(&format!(
                    "could not ask the server about part uploads ({e:#}); sending whole NARs"
                ));
                false
            }
        };
    // One `nix-store --serve` per concurrent upload, reused from path to path.
    let dumps = &local_nix::DumpPool::default();
    let results: Vec<(String, u64, Result<UploadPathResultKind>)> =
        futures::stream::iter(plan.upload.into_iter().map(|info| async move {
            let path = info.path.as_str().to_string();
            let in_parts = parts_ok && info.nar_size > opts.part_size;
            let r = upload_one(api, cache, &info, opts, in_parts, dumps, progress).await;
            (path, info.nar_size, r)
        }))
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    // Bytes of NARs that made it (not bytes streamed, which count retried attempts too).
    for (path, size, r) in results {
        match r {
            Ok(kind) => {
                summary.bytes += size;
                match kind {
                    UploadPathResultKind::Deduplicated => summary.deduplicated += 1,
                    _ => summary.pushed += 1,
                }
            }
            Err(e) => summary.failed.push((path, format!("{e:#}"))),
        }
    }
    summary.elapsed = start.elapsed();
    summary
}

/// Attempts per path: 5xx answers and dropped connections are often transient (a busy
/// database, a restarting server) and a NAR stream is cheap to start again.
const ATTEMPTS: u32 = 3;

fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(api) = c.downcast_ref::<ApiError>() {
            return api.status().is_server_error();
        }
        c.downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_connect() || r.is_request() || r.is_body())
    })
}

async fn upload_one(
    api: &ApiClient,
    cache: &CacheName,
    info: &PathInfo,
    opts: &PushOptions,
    in_parts: bool,
    dumps: &local_nix::DumpPool,
    progress: &Progress,
) -> Result<UploadPathResultKind> {
    let path = info.path.as_str();
    let mut attempt = 1;
    loop {
        // A retry of a part upload resumes: the server keeps the parts it has.
        match upload_attempt(api, cache, info, opts, in_parts, dumps, progress).await {
            // A part upload's session that is gone (expired) is started afresh.
            Err(e)
                if attempt < ATTEMPTS
                    && (is_transient(&e) || (in_parts && crate::http::session_gone(&e))) =>
            {
                progress.println(&format!("retrying {path} after: {e:#}"));
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

async fn upload_attempt(
    api: &ApiClient,
    cache: &CacheName,
    info: &PathInfo,
    opts: &PushOptions,
    in_parts: bool,
    dumps: &local_nix::DumpPool,
    progress: &Progress,
) -> Result<UploadPathResultKind> {
    let path = info.path.as_str();
    let bar = Arc::new(progress.start(path, info.nar_size));
    if in_parts {
        let result =
            parts::upload(api, &upload_info(cache, info), opts.part_size, bar.clone()).await;
        return finish(&bar, result);
    }
    let nar = dumps.nar(path, info.nar_size).await?;
    let counted = {
        let bar = bar.clone();
        nar.inspect(move |chunk| {
            if let Ok(c) = chunk {
                bar.inc(c.len() as u64);
            }
        })
    };
    let result = api
        .upload_path(&upload_info(cache, info), counted, opts.force_preamble)
        .await;
    finish(&bar, result)
}

fn finish(
    bar: &crate::progress::PathProgress,
    result: Result<garret_core::wire::UploadPathResult>,
) -> Result<UploadPathResultKind> {
    match result {
        Ok(r) => {
            bar.finish(match r.kind {
                UploadPathResultKind::Deduplicated => "deduplicated",
                _ => "pushed",
            });
            Ok(r.kind)
        }
        Err(e) => {
            bar.finish("FAILED");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_take_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("256K"), Ok(256 << 10));
        assert_eq!(parse_size("64MiB"), Ok(DEFAULT_PART_SIZE));
        assert_eq!(parse_size(" 16 mib "), Ok(16 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("64MB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999999G")
            .unwrap_err()
            .contains("too large"));
    }
}
