//! The Nix-facing side: `nix-cache-info`, `<hash>.narinfo`, `nar/<hash>.nar`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::{authorize, Caller};
use super::extract::{parse_cache, parse_file};
use super::state::{CacheEntry, SharedState};
use crate::db::ObjectRow;
use crate::error::{ServerError, ServerResult};
use garret_core::nix::fields::{validate_ca, validate_store_dir, validate_token};
use garret_core::nix::narinfo::NarInfo;
use garret_core::nix::signing::fingerprint;
use garret_core::nix::store_path::{validate_base_name, StorePath};
use garret_core::nix::Sha256Hash;

fn with_visibility(mut resp: Response, cache: &CacheEntry) -> Response {
    if cache.row.is_public {
        resp.headers_mut().insert(
            "x-attic-cache-visibility",
            HeaderValue::from_static("public"),
        );
    }
    resp
}

pub async fn nix_cache_info(
    State(state): State<SharedState>,
    caller: Caller,
    Path(cache): Path<String>,
) -> ServerResult<Response> {
    let name = parse_cache(&cache)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.pull).await?;
    // Defence in depth: a row written before store dirs were validated must not add lines.
    if validate_store_dir(&c.row.store_dir).is_err() {
        return Err(ServerError::internal(anyhow::anyhow!(
            "cache {name} has an invalid store_dir {:?}; refusing to serve nix-cache-info",
            c.row.store_dir
        )));
    }
    let body = format!(
        "WantMassQuery: 1\nStoreDir: {}\nPriority: {}\n",
        c.row.store_dir, c.row.priority
    );
    let resp = ([(header::CONTENT_TYPE, "text/x-nix-cache-info")], body).into_response();
    Ok(with_visibility(resp, &c))
}

pub async fn narinfo(
    State(state): State<SharedState>,
    caller: Caller,
    Path((cache, file)): Path<(String, String)>,
) -> ServerResult<Response> {
    let name = parse_cache(&cache)?;
    let hash = parse_file(&file, "narinfo")?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.pull).await?;
    let key = (c.row.id, hash.as_str().to_string());
    let text = match state.narinfos.get(&key) {
        Some(t) => t,
        None => match state.db().find_object(c.row.id, hash.as_str()).await? {
            Some(obj) => {
                let text: std::sync::Arc<str> = render_narinfo(&c, &obj)?.into();
                state.narinfos.insert(key, text.clone());
                text
            }
            // Pull-through: an upstream's verified answer, signed by this cache; not
            // remembered here, so the stored object's narinfo takes over once it exists.
            None => match state.pull_through.lookup(&c, hash.as_str()).await {
                Some(found) => {
                    crate::upstream::render_pending(&c, &found, local_compression(&state)?)?.into()
                }
                None => return Err(ServerError::NoSuchObject),
            },
        },
    };
    let resp = (
        [(header::CONTENT_TYPE, "text/x-nix-narinfo")],
        text.as_ref().to_owned(),
    )
        .into_response();
    Ok(with_visibility(resp, &c))
}

/// The narinfo of an object, signed with the cache's key (pushers never hold the key).
///
/// Defence in depth against rows stored before their fields were validated: a path whose
/// store path, references or compression could break the `Key: value` format is not served
/// at all; a bad deriver, signature or content address is left out.
pub fn render_narinfo(cache: &CacheEntry, obj: &ObjectRow) -> ServerResult<String> {
    let refuse = |what: &str| {
        ServerError::internal(anyhow::anyhow!(
            "object {} has an invalid {what}; refusing to serve its narinfo",
            obj.id
        ))
    };
    if StorePath::parse(&obj.store_path).is_err() {
        return Err(refuse("store path"));
    }
    if obj
        .references
        .iter()
        .any(|r| validate_base_name(r).is_err())
    {
        return Err(refuse("reference"));
    }
    if validate_token("compression", &obj.compression).is_err() {
        return Err(refuse("compression"));
    }
    let skip_bad = |what: &str, ok: bool| {
        if !ok {
            tracing::warn!(
                object = obj.id,
                "leaving an invalid {what} out of a narinfo"
            );
        }
        ok
    };
    let deriver = obj
        .deriver
        .clone()
        .filter(|d| skip_bad("deriver", validate_base_name(d).is_ok()));
    let ca = obj
        .ca
        .clone()
        .filter(|ca| ca.is_empty() || skip_bad("content address", validate_ca(ca).is_ok()));
    let nar_hash = Sha256Hash::parse_attic(&obj.nar_hash).map_err(ServerError::internal)?;
    let nar_size = obj.nar_size as u64;
    let fp = fingerprint(&obj.store_path, &nar_hash, nar_size, &obj.references)
        .map_err(ServerError::internal)?;
    let info = NarInfo {
        store_path: obj.store_path.clone(),
        url: format!("nar/{}.nar", obj.store_path_hash),
        compression: obj.compression.clone(),
        file_hash: None,
        file_size: None,
        nar_hash,
        nar_size,
        references: obj.references.clone(),
        deriver,
        sigs: vec![cache.keypair.sign(&fp)],
        ca,
        system: None,
    };
    Ok(info.render())
}

pub async fn nar(
    State(state): State<SharedState>,
    caller: Caller,
    method: Method,
    Path((cache, file)): Path<(String, String)>,
) -> ServerResult<Response> {
    let name = parse_cache(&cache)?;
    // Nix probes `nar/<file hash>.nar.xz` before uploading: anything that is not one of
    // our own `<store path hash>.nar` names is simply absent.
    let hash = parse_file(&file, "nar").map_err(|_| ServerError::NotFound)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.pull).await?;
    let obj = match state.db().find_object(c.row.id, hash.as_str()).await? {
        Some(obj) => obj,
        None => return pull_nar(&state, c, hash.as_str(), &method).await,
    };
    let stream = state.store.open_nar(obj.nar_id).await?;
    if method != Method::HEAD {
        let db = state.db().clone();
        tokio::spawn(async move {
            if let Err(e) = db.touch_object(obj.id).await {
                tracing::debug!(error = %e, "could not record an access");
            }
        });
    }
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .body(Body::from_stream(stream))
        .map_err(ServerError::internal)?;
    Ok(with_visibility(resp, &c))
}

fn local_compression(state: &SharedState) -> ServerResult<crate::store::Compression> {
    crate::store::Compression::from_config(&state.config.compression).map_err(ServerError::internal)
}

/// A NAR this cache does not hold: fetched from an upstream that has it (the first request
/// streams it, concurrent ones wait for the commit and are served from here), else 404.
async fn pull_nar(
    state: &SharedState,
    c: std::sync::Arc<CacheEntry>,
    hash: &str,
    method: &Method,
) -> ServerResult<Response> {
    use crate::upstream::Pull;
    let found = state
        .pull_through
        .lookup(&c, hash)
        .await
        .ok_or(ServerError::NoSuchObject)?;
    let nar = |body: Body| {
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/x-nix-nar")
            .body(body)
            .map_err(ServerError::internal)
    };
    // A HEAD says it is there without starting a fetch.
    if method == Method::HEAD {
        return Ok(with_visibility(nar(Body::empty())?, &c));
    }
    match state
        .pull_through
        .pull(&state.store, c.clone(), found)
        .await
    {
        Pull::Leader(mut stream) => {
            // As for stored NARs: wait for the first bytes, so an upstream that fails at
            // once is a retryable 503, not a 200 whose body breaks off.
            let first = match futures::StreamExt::next(&mut stream).await {
                Some(Ok(piece)) => piece,
                Some(Err(e)) => return Err(ServerError::Unavailable(e.to_string())),
                None => {
                    return Err(ServerError::Unavailable(
                        "the upstream sent an empty NAR".into(),
                    ))
                }
            };
            let stream = Box::pin(futures::StreamExt::chain(
                futures::stream::once(async move { Ok(first) }),
                stream,
            ));
            let body = crate::upstream::client_body(stream, local_compression(state)?);
            Ok(with_visibility(nar(body)?, &c))
        }
        Pull::Finished => {
            let obj = state
                .db()
                .find_object(c.row.id, hash)
                .await?
                .ok_or_else(|| {
                    ServerError::Unavailable(
                        "fetching this path from the upstream failed; please retry".into(),
                    )
                })?;
            let stream = state.store.open_nar(obj.nar_id).await?;
            Ok(with_visibility(nar(Body::from_stream(stream))?, &c))
        }
    }
}
