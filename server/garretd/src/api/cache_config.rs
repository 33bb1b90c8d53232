//! `/_api/v1/cache-config/{cache}`: read, create, reconfigure, destroy.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;

use super::auth::{authorize, Caller};
use super::endpoint::{api_endpoint, substituter_endpoint};
use super::extract::{parse_cache, parse_json, read_body, CONFIG_BODY_LIMIT};
use super::state::SharedState;
use crate::db::{CachePatch, NewCache};
use crate::error::{ServerError, ServerResult};
use garret_core::nix::fields::validate_store_dir;
use garret_core::nix::signing::Keypair;
use garret_core::wire::{CacheConfig, CreateCacheRequest, KeypairConfig, RetentionPeriodConfig};

pub async fn get_config(
    State(state): State<SharedState>,
    caller: Caller,
    headers: HeaderMap,
    uri: Uri,
    Path(cache): Path<String>,
) -> ServerResult<Json<CacheConfig>> {
    let authority = uri.authority().map(|a| a.as_str());
    let name = parse_cache(&cache)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.pull).await?;
    let row = &c.row;
    Ok(Json(CacheConfig {
        keypair: None,
        substituter_endpoint: Some(substituter_endpoint(
            &state.config,
            &headers,
            authority,
            &row.name,
        )),
        api_endpoint: Some(api_endpoint(&state.config, &headers, authority)),
        public_key: Some(c.keypair.public_key().to_canonical_string()),
        is_public: Some(row.is_public),
        store_dir: Some(row.store_dir.clone()),
        priority: Some(row.priority),
        upstream_cache_key_names: Some(row.upstream_cache_key_names.clone()),
        retention_period: Some(match row.retention_period {
            None => RetentionPeriodConfig::Global,
            Some(p) => RetentionPeriodConfig::Period(p.clamp(0, u32::MAX as i64) as u32),
        }),
        upstreams: (!row.upstreams.is_empty()).then(|| row.upstreams.clone()),
    }))
}

fn keypair_for(name: &str, k: &KeypairConfig) -> ServerResult<String> {
    let kp = match k {
        KeypairConfig::Generate => Keypair::generate(name).map_err(ServerError::internal)?,
        KeypairConfig::Keypair(s) => {
            Keypair::parse(s).map_err(|e| ServerError::request(format!("invalid keypair: {e}")))?
        }
    };
    Ok(kp.to_canonical_string())
}

/// The store dir is served verbatim in `nix-cache-info` and is the prefix of every store
/// path the cache accepts: a clean absolute path on one line.
fn check_store_dir(dir: &str) -> ServerResult<()> {
    validate_store_dir(dir).map_err(|e| {
        ServerError::request(format!(
            "store_dir must be a clean absolute path without whitespace: {e}"
        ))
    })
}

pub async fn create_cache(
    State(state): State<SharedState>,
    caller: Caller,
    Path(cache): Path<String>,
    body: Body,
) -> ServerResult<()> {
    let name = parse_cache(&cache)?;
    let perm = caller.permission(name.as_str());
    if perm.is_empty() {
        return Err(caller.unauthorized());
    }
    if !perm.create_cache {
        return Err(ServerError::AccessError);
    }
    let body = read_body(body, CONFIG_BODY_LIMIT).await?;
    let req: CreateCacheRequest = parse_json(&body)?;
    check_store_dir(&req.store_dir)?;
    let created = state
        .db()
        .create_cache(&NewCache {
            declared: false,
            name: name.to_string(),
            keypair: keypair_for(name.as_str(), &req.keypair)?,
            is_public: req.is_public,
            store_dir: req.store_dir,
            priority: req.priority,
            upstream_cache_key_names: req.upstream_cache_key_names,
            retention_period: None,
            upstreams: Vec::new(),
        })
        .await?;
    state.forget_cache(name.as_str(), None);
    if !created {
        return Err(ServerError::CacheAlreadyExists);
    }
    tracing::info!(cache = %name, by = caller.subject().as_deref().unwrap_or("-"), "cache created");
    Ok(())
}

pub async fn configure_cache(
    State(state): State<SharedState>,
    caller: Caller,
    Path(cache): Path<String>,
    body: Body,
) -> ServerResult<()> {
    let name = parse_cache(&cache)?;
    // Authorized before the body is read; the retention right is checked once it is known
    // whether the body asks for it.
    let c = authorize(&state, &caller, name.as_str(), |p| p.configure_cache).await?;
    let body = read_body(body, CONFIG_BODY_LIMIT).await?;
    let req: CacheConfig = parse_json(&body)?;
    if req.retention_period.is_some() && !caller.permission(name.as_str()).configure_cache_retention
    {
        return Err(ServerError::AccessError);
    }
    if let Some(dir) = &req.store_dir {
        check_store_dir(dir)?;
    }
    if let Some(ups) = &req.upstreams {
        garret_core::upstream::check_all(ups)
            .map_err(|e| ServerError::request(format!("invalid upstreams: {e}")))?;
    }
    let patch = CachePatch {
        keypair: req
            .keypair
            .as_ref()
            .map(|k| keypair_for(name.as_str(), k))
            .transpose()?,
        is_public: req.is_public,
        store_dir: req.store_dir,
        priority: req.priority,
        upstream_cache_key_names: req.upstream_cache_key_names,
        retention_period: req.retention_period.map(|r| match r {
            RetentionPeriodConfig::Global => None,
            RetentionPeriodConfig::Period(p) => Some(p as i64),
        }),
        upstreams: req.upstreams,
    };
    if patch.is_empty() {
        return Err(ServerError::request("No modifiable fields were set."));
    }
    if let Some(Some(p)) = patch.retention_period {
        if p > i32::MAX as i64 {
            return Err(ServerError::request("retention period is too large"));
        }
    }
    let updated = state.db().update_cache(c.row.id, &patch).await?;
    state.forget_cache(name.as_str(), Some(c.row.id));
    if !updated {
        return Err(ServerError::NoSuchCache);
    }
    Ok(())
}

pub async fn destroy_cache(
    State(state): State<SharedState>,
    caller: Caller,
    Path(cache): Path<String>,
) -> ServerResult<()> {
    let name = parse_cache(&cache)?;
    let c = authorize(&state, &caller, name.as_str(), |p| p.destroy_cache).await?;
    let deleted = state
        .db()
        .delete_cache(c.row.id, state.config.soft_delete_caches)
        .await?;
    state.forget_cache(name.as_str(), Some(c.row.id));
    if !deleted {
        return Err(ServerError::NoSuchCache);
    }
    tracing::info!(cache = %name, by = caller.subject().as_deref().unwrap_or("-"), "cache destroyed");
    Ok(())
}
