//! `garret-operator`: runs the BinaryCache and CacheToken controllers against the cluster
//! from the in-cluster service account or the local kubeconfig.

use garret_operator::controller::{self, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .json()
        .init();
    let client = kube::Client::try_default().await?;
    let settings = Settings {
        namespace: std::env::var("WATCH_NAMESPACE")
            .ok()
            .filter(|s| !s.is_empty()),
        ..Settings::default()
    };
    tracing::info!(?settings, "starting garret-operator");
    // Kubernetes stops a pod with SIGTERM; as PID 1 without a handler it would be ignored and
    // the pod killed only after its grace period.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = controller::run(client, settings) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    Ok(())
}
