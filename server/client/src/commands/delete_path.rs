//! `garret cache delete-path`: remove one store path from a cache (needs the delete right,
//! `d`). Its NAR stops being served at once; storage is freed by the server's GC.

use std::path::PathBuf;

use anyhow::{Context, Result};
use reqwest::Method;

use crate::cache_ref::CacheRef;
use crate::commands::connect;
use crate::commands::pin::path_hash;
use garret_core::pins::DeletePathResponse;

#[derive(clap::Args)]
pub struct Args {
    /// CACHE or SERVER:CACHE.
    pub cache: CacheRef,
    /// The store path (or a symlink to it, or its 32-character hash). Only this path goes,
    /// not its references; a path a pin holds is refused.
    pub path: PathBuf,
}

pub async fn run(a: Args) -> Result<()> {
    let (hash, shown) = path_hash(&a.path)?;
    let (_, api) = connect(&a.cache)?;
    let url = format!("_api/v1/cache/{}/path/{hash}", a.cache.cache);
    let resp: DeletePathResponse = api
        .json(api.request(Method::DELETE, &url)?)
        .await
        .with_context(|| format!("deleting {shown} from cache {}", a.cache))?;
    eprintln!("Deleted {} from cache {}", resp.store_path, a.cache);
    Ok(())
}
