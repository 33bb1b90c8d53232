//! `garret-operator`: runs the BinaryCache and CacheToken controllers against the cluster
//! from the in-cluster service account or the local kubeconfig.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use garret_operator::controller::{self, Settings};
use garret_operator::{leader, metrics};

/// Kubernetes operator for Garret: reconciles BinaryCache (a garretd deployment with its
/// config, keys, volume, Service and Ingress) and CacheToken (a scoped token kept fresh in a
/// Secret), both garret.dev/v1alpha1.
///
/// It talks to the API server with the in-cluster service account when run in a pod, else
/// with the kubeconfig named by KUBECONFIG (default ~/.kube/config), whose current context
/// decides the cluster. Every flag can also be set from the environment variable shown.
#[derive(Debug, Parser)]
#[command(name = "garret-operator", version, after_help = AFTER_HELP)]
struct Cli {
    /// Watch this namespace only (the chart sets it for a namespaced install); empty or
    /// unset: all namespaces.
    #[arg(long, env = "WATCH_NAMESPACE", value_name = "NAMESPACE")]
    namespace: Option<String>,

    /// Size in bits of the RSA keys generated to sign each BinaryCache's tokens (Attic
    /// generates 4096).
    #[arg(long, env = "GARRET_OPERATOR_RSA_BITS", default_value_t = 4096, value_parser = clap::value_parser!(u16).range(2048..=8192))]
    rsa_bits: u16,

    /// Re-check every object this often even without changes, to undo drift (e.g. `5m`,
    /// `1 hour`, or seconds).
    #[arg(long, env = "GARRET_OPERATOR_RESYNC", default_value = "5m", value_parser = parse_duration)]
    resync: Duration,

    /// Where to serve /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "GARRET_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: std::net::SocketAddr,

    /// Where to reach each BinaryCache's garretd to check that its declared caches are
    /// served (status.caches[].served, the Ready condition) and to push revocations: a URL
    /// template in which {name} (the BinaryCache) and {namespace} are replaced, e.g.
    /// `http://127.0.0.1:8080` for an operator run outside the cluster with a port-forward.
    /// Unset: the BinaryCache's Service (its ClusterIP, port 80) for the check, and each of
    /// its pods (from the Service's EndpointSlices) for revocations.
    #[arg(long, env = "GARRET_OPERATOR_GARRETD_URL", value_name = "URL")]
    garretd_url: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = "GARRET_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

const AFTER_HELP: &str = "\
Environment:
  RUST_LOG    log filter (default: info,kube=warn), e.g. garret_operator=debug
  POD_NAME    reported as the instance in the Events the operator records (the chart sets it
              from the downward API)
  POD_NAMESPACE  with POD_NAME set (the chart sets both), replicas elect a leader on the
              Lease garret-operator in this namespace; only the leader writes
  KUBECONFIG  kubeconfig used outside a cluster (default: ~/.kube/config)

Deploy with the Helm chart (charts/garret-operator), which installs the CRDs, a ServiceAccount
and the ClusterRole the operator needs.";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = garret_core::duration::parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Parsed before anything touches the cluster, so --help and --version need no kubeconfig.
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let settings = Settings {
        namespace: cli.namespace.filter(|s| !s.is_empty()),
        rsa_bits: usize::from(cli.rsa_bits),
        resync: cli.resync,
        garretd_url: cli.garretd_url.filter(|s| !s.is_empty()),
    };
    let metrics_addr = cli.metrics_addr;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_addr).await {
            tracing::error!(error = %e, %metrics_addr, "metrics listener failed");
        }
    });
    let client = kube::Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    metrics::global().set_ready();
    tracing::info!(?settings, "starting garret-operator");
    // Kubernetes stops a pod with SIGTERM; as PID 1 without a handler it would be ignored and
    // the pod killed only after its grace period.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    };
    // In a pod (the chart sets POD_NAMESPACE and POD_NAME) replicas elect a leader;
    // run elsewhere (a developer's kubeconfig) the operator assumes it is the only one.
    let pod = (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME"));
    match pod {
        (Ok(ns), Ok(name)) if !ns.is_empty() && !name.is_empty() => {
            let election = leader::Election::new(ns, name);
            let work = controller::run(client.clone(), settings);
            let ended = leader::run_while_leader(client, &election, work, shutdown).await?;
            if ended == leader::Ended::LostLeadership {
                // Restarted by the kubelet, it competes again as a standby.
                anyhow::bail!("lost the leader lease");
            }
        }
        _ => {
            metrics::global().leader.set(1);
            tokio::select! {
                _ = controller::run(client, settings) => {}
                () = shutdown => {}
            }
        }
    }
    Ok(())
}
