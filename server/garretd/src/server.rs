//! Wiring: config → database, storage, store, verifier → HTTP server with graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::api::state::{AppState, SharedState};
use crate::backend::{DynStorage, LocalStorage};
use crate::config::{Config, ConfigSource, StorageConfig};
use crate::db::Database;
use crate::store::Store;
use garret_core::token::Verifier;

pub async fn open_storage(cfg: &Config) -> anyhow::Result<DynStorage> {
    match cfg.storage.as_ref().context("no [storage] configured")? {
        StorageConfig::Local { path, direct_io } => {
            Ok(Arc::new(LocalStorage::open(path, *direct_io)?))
        }
        StorageConfig::S3(s3) => Ok(Arc::new(
            crate::backend::S3Storage::new(s3).context("configuring S3 storage")?,
        )),
    }
}

/// Connects to everything, runs migrations and applies the declared caches (those that
/// cannot be applied yet are reported in the second value and retried by the watcher).
pub async fn build_state(cfg: Config) -> anyhow::Result<(SharedState, crate::declare::Applied)> {
    let key = crate::secrets::load_signing_key(&cfg, true)?;
    let verifier = Verifier::new(
        key,
        cfg.jwt.token_bound_issuer.clone(),
        cfg.jwt.token_bound_audiences.clone(),
    )
    .context("preparing the token key")?;
    let db = Database::connect(cfg.database_url()).await?;
    db.migrate().await?;
    let storage = open_storage(&cfg).await?;
    let declared = crate::declare::apply(&db, &cfg.caches, |_, _| {}).await;
    if !declared.complete() {
        tracing::warn!(
            pending = ?declared.pending(),
            error = declared.errors(),
            "declared caches not applied at start; serving the others and retrying in the background"
        );
    }
    let revoked = crate::watch::read_revocations(cfg.jwt.revocation_list.as_deref())?;
    let store = Store::new(&cfg, db, storage)?;
    let state = AppState::new(cfg, store, verifier);
    state.set_revocations(revoked);
    state.set_oidc(
        crate::oidc::OidcKeys::load(&state.config.jwt.oidc, state.config.jwt.leeway).verifier(),
    );
    Ok((state, declared))
}

/// How long in-flight requests may run after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub async fn serve(cfg: Config, source: ConfigSource) -> anyhow::Result<()> {
    let addr = cfg.listen_addr()?;
    let hint = first_token_hint(&cfg);
    let (state, declared) = build_state(cfg).await?;
    let app_limits = state.config.http.clone();
    spawn_gc_loop(&state);
    crate::watch::spawn(state.clone(), source, &declared);
    let app = crate::api::router(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "garretd listening");
    eprintln!("garretd listening on http://{local}/");
    if let Some(hint) = hint {
        eprintln!("{hint}");
    }
    let limits = state_limits(&app_limits);
    let signalled = Arc::new(tokio::sync::Notify::new());
    let notify = signalled.clone();
    let server = crate::listener::run(listener, app, limits, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        notify.notify_one();
    });
    tokio::select! {
        () = server => {}
        _ = async { signalled.notified().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
        }
    }
    Ok(())
}

fn state_limits(http: &crate::config::HttpConfig) -> crate::listener::Limits {
    crate::listener::Limits {
        header_read_timeout: http.header_read_timeout,
        idle_timeout: http.idle_timeout,
        max_connections: http.max_connections,
        max_concurrent_streams: http.max_concurrent_streams,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Told once at start: how to mint a first token for this server.
fn first_token_hint(cfg: &Config) -> Option<String> {
    let dir = cfg.data_dir()?;
    Some(format!(
        "Mint a first admin token with:\n  garretd make-token --data-dir {} --sub admin --validity '1 year' \\\n    --pull '*' --push '*' --delete '*' --create-cache '*' --configure-cache '*' \\\n    --configure-cache-retention '*' --destroy-cache '*'",
        dir.display()
    ))
}

/// Periodic GC inside the server (`[garbage-collection] interval`, 0 = off). Several
/// replicas may run it at once: every phase is safe to repeat and to race.
fn spawn_gc_loop(state: &SharedState) {
    let interval = state.config.garbage_collection.interval;
    if interval.is_zero() {
        return;
    }
    let settings = state.config.gc_settings();
    let db = state.store.db().clone();
    let storage = state.store.storage().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tick.tick().await;
            if let Err(e) =
                crate::gc::run_once(&db, &storage, settings, crate::gc::StopAfter::Never).await
            {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "garbage collection failed; will retry"
                );
            }
        }
    });
}

/// `garretd gc`: one pass, then exit.
pub async fn gc_once(
    cfg: &Config,
    stop: crate::gc::StopAfter,
) -> anyhow::Result<crate::gc::GcReport> {
    let db = Database::connect(cfg.database_url()).await?;
    db.migrate().await?;
    let storage = open_storage(cfg).await?;
    crate::gc::run_once(&db, &storage, cfg.gc_settings(), stop).await
}
