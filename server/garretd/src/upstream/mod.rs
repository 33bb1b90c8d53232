//! Pull-through caching (docs/pull-through.md): a miss in a cache with upstreams asks them,
//! in priority order, for the narinfo; a verified answer is served signed with the cache's
//! own key, and the NAR is fetched once, stored through the normal ingest and streamed to
//! the client that asked first.
//!
//! Guarantees:
//! * one upstream narinfo request per (cache, path) at a time, the answer remembered (a
//!   miss or an upstream failure for `[pull-through] negative-ttl`);
//! * one upstream NAR fetch per (cache, path) at a time: the first NAR request streams the
//!   bytes as they arrive, concurrent ones wait for the commit and are served locally;
//! * the fetch runs on its own task, so a client that goes away does not stop the ingest;
//! * memory is bounded by a few channel slots, whatever the NAR's size; nothing is stored
//!   unless the NAR matches the upstream's signed NarHash and NarSize (ingest checks that).
//!
//! Callers authorize first: nothing here runs for a caller who may not pull.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{Stream, StreamExt, TryStreamExt};
use moka::sync::Cache;
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::api::state::CacheEntry;
use crate::config::PullThroughConfig;
use crate::db::NewObject;
use crate::error::{ServerError, ServerResult};
use crate::store::{Compression, NarClaim, Store};
use garret_core::nix::narinfo::NarInfo;
use garret_core::nix::signing::fingerprint;
use garret_core::upstream::{check_all, nar_url, verify_narinfo, CheckedUpstream, NarCompression};

/// (cache id, store path hash).
type Key = (i64, String);

/// A verified upstream answer for one path.
#[derive(Debug)]
pub struct Found {
    pub info: NarInfo,
    pub nar_url: String,
    pub compression: NarCompression,
    pub upstream: String,
}

/// What a NAR request for a path not stored yet gets.
pub enum Pull {
    /// This request started the fetch: the NAR's bytes, as the upstream sends them.
    Leader(Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>),
    /// Another request is fetching it; the fetch is over (stored or failed), look again.
    Finished,
}

type Flight<T> = Shared<BoxFuture<'static, T>>;

/// `task`'s result for everyone who waits on it. A task normally takes its own entry out
/// of the table when done; one that died (panicked) before that gets it removed by
/// `forget`, and its waiters get `died`.
fn flight<T: Clone + Send + Sync + 'static>(
    task: tokio::task::JoinHandle<T>,
    died: T,
    forget: impl FnOnce() + Send + 'static,
) -> Flight<T> {
    async move {
        match task.await {
            Ok(v) => v,
            Err(_) => {
                forget();
                died
            }
        }
    }
    .boxed()
    .shared()
}

/// Removes `key`'s flight from `table`.
fn forget<T>(table: &Mutex<HashMap<Key, Flight<T>>>, key: &Key) {
    if let Ok(mut flights) = table.lock() {
        flights.remove(key);
    }
}

struct Inner {
    http: reqwest::Client,
    cfg: PullThroughConfig,
    max_narinfo: usize,
    found: Cache<Key, Arc<Found>>,
    missing: Cache<Key, ()>,
    lookups: Mutex<HashMap<Key, Flight<Option<Arc<Found>>>>>,
    pulls: Mutex<HashMap<Key, Flight<bool>>>,
}

#[derive(Clone)]
pub struct PullThrough(Arc<Inner>);

/// A verified answer is kept this long; the NAR is normally local long before.
const FOUND_TTL: Duration = Duration::from_secs(300);
/// Pieces of the NAR on their way to the first client.
const CLIENT_QUEUE: usize = 16;
/// Bytes read from the decoder at a time.
const PIECE: usize = 64 << 10;

impl PullThrough {
    pub fn new(cfg: &PullThroughConfig, max_narinfo: usize) -> PullThrough {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.read_timeout)
            .user_agent(concat!("garretd/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "upstream HTTP client without timeouts");
                reqwest::Client::new()
            });
        PullThrough(Arc::new(Inner {
            http,
            cfg: cfg.clone(),
            max_narinfo,
            found: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FOUND_TTL)
                .build(),
            missing: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cfg.negative_ttl)
                .build(),
            lookups: Mutex::default(),
            pulls: Mutex::default(),
        }))
    }

    /// The verified upstream narinfo of a path this cache does not hold, if an upstream
    /// has one. Upstream failures and refused answers count as "no" (and are logged).
    pub async fn lookup(&self, cache: &CacheEntry, hash: &str) -> Option<Arc<Found>> {
        if cache.row.upstreams.is_empty() {
            return None;
        }
        let key = (cache.row.id, hash.to_string());
        let inner = &self.0;
        if let Some(f) = inner.found.get(&key) {
            return Some(f);
        }
        if inner.missing.contains_key(&key) {
            return None;
        }
        let flight = {
            let mut flights = inner.lookups.lock().ok()?;
            // Looked up again under the lock: a flight that just ended has filled a cache.
            if let Some(f) = inner.found.get(&key) {
                return Some(f);
            }
            if inner.missing.contains_key(&key) {
                return None;
            }
            match flights.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let ups = match check_all(&cache.row.upstreams) {
                        Ok(u) => u,
                        Err(e) => {
                            tracing::warn!(cache = %cache.row.name, error = %e, "unusable upstreams");
                            return None;
                        }
                    };
                    let task = tokio::spawn(ask_all(
                        self.0.clone(),
                        key.clone(),
                        ups,
                        cache.row.store_dir.clone(),
                    ));
                    let (inner, k) = (self.0.clone(), key.clone());
                    let f = flight(task, None, move || forget(&inner.lookups, &k));
                    flights.insert(key, f.clone());
                    f
                }
            }
        };
        flight.await
    }

    /// Which of `missing` no upstream has either: the rest need no upload. At most
    /// `max-lookups-per-query` are asked (the others stay missing), `lookup-concurrency`
    /// at a time; answers come from the same remembered lookups as narinfo requests.
    pub async fn still_missing(&self, cache: &CacheEntry, missing: Vec<String>) -> Vec<String> {
        if cache.row.upstreams.is_empty() || missing.is_empty() {
            return missing;
        }
        let limit = self.0.cfg.max_lookups_per_query;
        let asked: Vec<(usize, bool)> =
            futures::stream::iter(missing.iter().cloned().enumerate().take(limit))
                .map(|(i, h)| async move { (i, self.lookup(cache, &h).await.is_some()) })
                .buffer_unordered(self.0.cfg.lookup_concurrency)
                .collect()
                .await;
        let mut upstream_has = vec![false; missing.len()];
        for (i, has) in asked {
            upstream_has[i] = has;
        }
        missing
            .into_iter()
            .zip(upstream_has)
            .filter(|(_, has)| !has)
            .map(|(h, _)| h)
            .collect()
    }

    /// Fetches `found`'s NAR into `cache`, once however many ask: the first caller gets the
    /// bytes, later ones wait until the fetch is over.
    pub async fn pull(&self, store: &Store, cache: Arc<CacheEntry>, found: Arc<Found>) -> Pull {
        let key = (cache.row.id, found_hash(&found));
        let inner = &self.0;
        let (tx, rx) = tokio::sync::mpsc::channel(CLIENT_QUEUE);
        let waiting = {
            let Ok(mut flights) = inner.pulls.lock() else {
                return Pull::Finished;
            };
            match flights.get(&key) {
                Some(f) => Some(f.clone()),
                None => {
                    let task = tokio::spawn(fetch_nar(
                        self.0.clone(),
                        key.clone(),
                        store.clone(),
                        cache,
                        found,
                        tx,
                    ));
                    let (inner, k) = (self.0.clone(), key.clone());
                    let f = flight(task, false, move || forget(&inner.pulls, &k));
                    flights.insert(key, f);
                    None
                }
            }
        };
        match waiting {
            Some(f) => {
                f.await;
                Pull::Finished
            }
            None => Pull::Leader(Box::pin(tokio_stream_of(rx))),
        }
    }
}

fn found_hash(found: &Found) -> String {
    garret_core::nix::store_path::StorePath::parse(&found.info.store_path)
        .map(|p| p.hash().as_str().to_string())
        .unwrap_or_default()
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The narinfo a cache serves for a path it is pulling: the upstream's facts, the cache's
/// own signature (as for pushed paths), and our own NAR URL and compression, so it is the
/// same text the cache serves once the NAR is stored.
pub fn render_pending(
    cache: &CacheEntry,
    found: &Found,
    compression: Compression,
) -> ServerResult<String> {
    let i = &found.info;
    let fp = fingerprint(&i.store_path, &i.nar_hash, i.nar_size, &i.references)
        .map_err(ServerError::internal)?;
    let info = NarInfo {
        store_path: i.store_path.clone(),
        url: format!("nar/{}.nar", found_hash(found)),
        compression: compression.nix_name().to_string(),
        file_hash: None,
        file_size: None,
        nar_hash: i.nar_hash,
        nar_size: i.nar_size,
        references: i.references.clone(),
        deriver: i.deriver.clone(),
        sigs: vec![cache.keypair.sign(&fp)],
        ca: i.ca.clone(),
        system: None,
    };
    Ok(info.render())
}

/// Asks the upstreams in order; the first verified answer wins. Runs on its own task and
/// records the verdict before it leaves the flight table, so no caller asks twice.
async fn ask_all(
    inner: Arc<Inner>,
    key: Key,
    ups: Vec<CheckedUpstream>,
    store_dir: String,
) -> Option<Arc<Found>> {
    let mut answer = None;
    for up in &ups {
        match ask_one(&inner, up, &key.1, &store_dir).await {
            Ok(Some(found)) => {
                answer = Some(Arc::new(found));
                break;
            }
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(upstream = %up.base, path = %key.1, "upstream answer not used: {why}")
            }
        }
    }
    match &answer {
        Some(f) => inner.found.insert(key.clone(), f.clone()),
        None => inner.missing.insert(key.clone(), ()),
    }
    if let Ok(mut flights) = inner.lookups.lock() {
        flights.remove(&key);
    }
    answer
}

/// One upstream's verified narinfo; `Ok(None)` when it says it has no such path.
async fn ask_one(
    inner: &Inner,
    up: &CheckedUpstream,
    hash: &str,
    store_dir: &str,
) -> Result<Option<Found>, String> {
    let url = format!("{}/{hash}.narinfo", up.base);
    let text = tokio::time::timeout(inner.cfg.timeout, get_small(inner, &url))
        .await
        .map_err(|_| format!("no narinfo answer within {:?}", inner.cfg.timeout))??;
    let Some(text) = text else {
        return Ok(None);
    };
    let info = NarInfo::parse(&text).map_err(|e| e.to_string())?;
    let compression =
        verify_narinfo(&info, hash, store_dir, &up.keys).map_err(|r| r.to_string())?;
    let nar_url = nar_url(&up.base, &info.url)
        .ok_or_else(|| format!("refusing to follow the NAR URL {:?}", info.url))?;
    Ok(Some(Found {
        info,
        nar_url,
        compression,
        upstream: up.base.clone(),
    }))
}

/// A narinfo body, at most `max-nar-info-size` bytes; `None` for a 404/403/410 (what Nix
/// also reads as "not there").
async fn get_small(inner: &Inner, url: &str) -> Result<Option<String>, String> {
    let resp = inner
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    if matches!(status.as_u16(), 404 | 403 | 410) {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| format!("reading the narinfo failed: {e}"))?;
        if buf.len() + piece.len() > inner.max_narinfo {
            return Err("the narinfo is too large".into());
        }
        buf.extend_from_slice(&piece);
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| "the narinfo is not UTF-8".into())
}

/// The NAR from upstream, decompressed, into the ingest and (while it listens) to the
/// first client. `true` once it is stored.
async fn fetch_nar(
    inner: Arc<Inner>,
    key: Key,
    store: Store,
    cache: Arc<CacheEntry>,
    found: Arc<Found>,
    client: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> bool {
    let result = fetch_and_ingest(&inner, &store, &cache, &found, &client).await;
    let stored = match result {
        Ok(()) => {
            tracing::info!(cache = %cache.row.name, path = %found.info.store_path, upstream = %found.upstream, "pulled from upstream");
            true
        }
        Err(e) => {
            tracing::warn!(cache = %cache.row.name, path = %found.info.store_path, upstream = %found.upstream, error = %e, "pull from upstream failed; nothing stored");
            // The client sees its body break off instead of a clean end.
            let _ = client
                .send(Err(std::io::Error::other(format!(
                    "the upstream NAR could not be stored: {e}"
                ))))
                .await;
            // Ask again next time rather than trusting a narinfo whose NAR failed.
            inner.found.invalidate(&key);
            false
        }
    };
    drop(client);
    if let Ok(mut flights) = inner.pulls.lock() {
        flights.remove(&key);
    }
    stored
}

async fn fetch_and_ingest(
    inner: &Inner,
    store: &Store,
    cache: &CacheEntry,
    found: &Found,
    client: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> ServerResult<()> {
    let unavailable = |m: String| ServerError::Unavailable(m);
    let resp = tokio::time::timeout(inner.cfg.timeout, inner.http.get(&found.nar_url).send())
        .await
        .map_err(|_| unavailable("the upstream did not answer in time".into()))?
        .map_err(|e| unavailable(format!("upstream NAR request failed: {e}")))?;
    if !resp.status().is_success() {
        return Err(unavailable(format!(
            "upstream answered {} for the NAR",
            resp.status()
        )));
    }
    let raw = StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
    let decoded: Pin<Box<dyn AsyncRead + Send>> = match found.compression {
        NarCompression::None => Box::pin(raw),
        NarCompression::Xz => Box::pin(async_compression::tokio::bufread::XzDecoder::new(raw)),
        NarCompression::Zstd => Box::pin(async_compression::tokio::bufread::ZstdDecoder::new(raw)),
        NarCompression::Bzip2 => Box::pin(async_compression::tokio::bufread::BzDecoder::new(raw)),
        NarCompression::Brotli => {
            Box::pin(async_compression::tokio::bufread::BrotliDecoder::new(raw))
        }
        NarCompression::Gzip => Box::pin(async_compression::tokio::bufread::GzipDecoder::new(raw)),
    };
    // The first client, while it keeps up; once it is gone (or stalls past the read
    // timeout) the ingest carries on alone.
    let listener = Arc::new(Mutex::new(Some(client.clone())));
    let stall = inner.cfg.read_timeout;
    let mut tapped = ReaderStream::with_capacity(decoded, PIECE)
        .then(move |piece| {
            let listener = listener.clone();
            async move {
                let tx = listener.lock().ok().and_then(|l| l.clone());
                if let (Ok(bytes), Some(tx)) = (&piece, tx) {
                    let sent = tokio::time::timeout(stall, tx.send(Ok(bytes.clone()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        if let Ok(mut l) = listener.lock() {
                            *l = None;
                        }
                    }
                }
                piece
            }
        })
        .boxed()
        .fuse();
    let i = &found.info;
    let obj = NewObject {
        cache_id: cache.row.id,
        store_path_hash: found_hash(found),
        store_path: i.store_path.clone(),
        references: i.references.clone(),
        deriver: i.deriver.clone(),
        // Kept as a record of where the path came from; narinfos carry the cache's own.
        sigs: i.sigs.clone(),
        ca: i.ca.clone(),
        created_by: Some(format!("upstream {}", found.upstream)),
    };
    let claim = NarClaim {
        nar_hash: i.nar_hash,
        nar_size: i.nar_size,
    };
    store.ingest(obj, claim, &mut tapped).await?;
    // An already stored NAR may be attached without reading the body: the first client
    // still needs all of it.
    // Bounded like the ingest: at most the signed NarSize in all.
    let mut left = i.nar_size;
    while let Some(piece) = tapped.next().await {
        let piece =
            piece.map_err(|e| unavailable(format!("reading the upstream NAR failed: {e}")))?;
        left = left
            .checked_sub(piece.len() as u64)
            .ok_or_else(|| unavailable("the upstream NAR is longer than its NarSize".into()))?;
    }
    Ok(())
}

/// The first client's body: the NAR as it arrives, compressed the way the narinfo it was
/// given says (the cache's own compression), so its narinfo stays true once it is stored.
pub fn client_body(
    nar: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
    compression: Compression,
) -> axum::body::Body {
    match compression {
        Compression::None => axum::body::Body::from_stream(nar),
        Compression::Zstd { level } => {
            let enc = async_compression::tokio::bufread::ZstdEncoder::with_quality(
                StreamReader::new(nar),
                async_compression::Level::Precise(level),
            );
            axum::body::Body::from_stream(ReaderStream::with_capacity(enc, PIECE))
        }
    }
}
