//! A real Kubernetes control plane for Garret's tests.
//!
//! [`ControlPlane`] starts `etcd` (from the `etcd-bin-vendored` crate) and
//! `kube-apiserver` (built from Go modules by `tools/k8s-testbin/build.sh`) on
//! random 127.0.0.1 ports, each with its own temporary directory, and
//! optionally `kube-controller-manager` (garbage collection, namespace
//! deletion, Deployment → ReplicaSet, default ServiceAccounts). Clients
//! authenticate with static tokens: an admin identity in `system:masters`, and
//! any extra [`Identity`] (user + groups) so that RBAC can be tested.
//!
//! One control plane per test binary ([`ControlPlane::shared`]) and one fresh
//! namespace per test ([`ControlPlane::create_namespace`]) is the intended use:
//!
//! ```no_run
//! # async fn t() -> garret_e2e::Result<()> {
//! use garret_e2e::{ControlPlane, Options};
//! let cp = ControlPlane::shared(Options::new()).await?;
//! let client = cp.admin_client().await?;
//! let ns = cp.create_namespace("my-test").await?;
//! # let _ = (client, ns); Ok(()) }
//! ```
//!
//! [`Node`] adds a real node (containerd, kubelet, kube-proxy, CNI bridge,
//! kube-scheduler) in its own network, mount and pid namespaces, so pods
//! run; [`LocalImage`] makes small images for them from host files.
//!
//! Every process is started in its own process group with
//! `PR_SET_PDEATHSIG=SIGKILL`, and is killed (and the temporary directory
//! removed) when the [`ControlPlane`] is dropped, when the test binary exits
//! (an `atexit` hook covers the shared instance, which as a `static` is never
//! dropped), and by the kernel if the test binary dies abruptly. Directories
//! left behind by a killed test binary are removed by the next start.

mod binaries;
mod control_plane;
mod helpers;
mod images;
mod local_image;
mod node;
mod process;
mod rendered_garretd;

use std::path::PathBuf;
use std::time::Duration;

pub use binaries::{kubectl, testbin_dir, Binaries, BUILD_COMMAND, K8S_VERSION, TESTBIN_DIR_ENV};
pub use control_plane::{ControlPlane, Identity, Options, ADMIN_USER};
pub use helpers::{
    admin_with_crds, apply_chart_rbac, apply_yaml, install_crd, install_crds_from,
    install_garret_crds, operator_options, output_text, secret_text, wait_for, ApplyYaml,
    OPERATOR_USER,
};
pub use images::{
    build_images, default_bin_dir, ImageArchive, Images, GARRETD_REPOSITORY, IMAGES_BUILD_COMMAND,
    OPERATOR_REPOSITORY,
};
pub use local_image::LocalImage;
pub use node::{Node, PortForward, NODE_IP, NODE_NAME, PAUSE_IMAGE, POD_CIDR, STORAGE_CLASS};
pub use rendered_garretd::{rerooted, start_rendered_garretd, RenderedGarretd};

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the harness. Their messages are meant to be read in a failed
/// test's output, so they say what to do where they can; `Debug` prints the
/// same message, so `.expect()` in a test shows it.
#[derive(thiserror::Error)]
pub enum Error {
    /// A Kubernetes binary is missing from the testbin directory.
    #[error(
        "{binary} not found at {}: build the Kubernetes test binaries with `{BUILD_COMMAND}` \
         (from the repository root; it reuses what is already built), or point \
         {TESTBIN_DIR_ENV} at a directory holding kube-apiserver and kube-controller-manager",
        path.display()
    )]
    MissingBinary {
        /// Binary name, e.g. `kube-apiserver`.
        binary: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A host program or package the node ([`Node`]) needs is missing.
    #[error("{tool} not found: install it with `{install}` (as root; .ci/run does this in CI)")]
    MissingTool {
        /// The program, e.g. `containerd`.
        tool: &'static str,
        /// The command that installs it.
        install: String,
    },
    /// The etcd binary of the `etcd-bin-vendored` crate is not available.
    #[error("etcd from the etcd-bin-vendored crate is unavailable: {0}")]
    Etcd(String),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A component exited or did not become ready.
    #[error("{component} did not start: {reason}\n--- last lines of {} ---\n{tail}", log.display())]
    Startup {
        /// `etcd`, `kube-apiserver` or `kube-controller-manager`.
        component: &'static str,
        /// Why.
        reason: String,
        /// The component's log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A kubeconfig could not be turned into a client configuration.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Something did not happen in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// A YAML document could not be parsed or applied.
    #[error("{0}")]
    Yaml(String),
    /// Invalid use of the harness.
    #[error("{0}")]
    Usage(String),
    /// The container images could not be built (`tools/images/build.sh`).
    #[error("{0}")]
    Images(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
