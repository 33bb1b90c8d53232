//! [`Identity`] and [`Options`]: what a [`ControlPlane`](super::ControlPlane)
//! is started with. Identities are validated before they reach the token
//! file; the startup timeout falls back to `GARRET_E2E_STARTUP_TIMEOUT_SECS`.

use std::time::Duration;

use crate::{Error, Result};

const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const STARTUP_TIMEOUT_ENV: &str = "GARRET_E2E_STARTUP_TIMEOUT_SECS";

/// A user the API server knows through its static token file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub(super) user: String,
    pub(super) groups: Vec<String>,
}

impl Identity {
    /// A user without groups (besides `system:authenticated`, which the API
    /// server adds).
    pub fn new(user: impl Into<String>) -> Self {
        Identity {
            user: user.into(),
            groups: Vec::new(),
        }
    }

    /// Add a group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The groups.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |s: &str| s.is_empty() || s.contains([',', '"', '\n', '\r']);
        if bad(&self.user) || self.groups.iter().any(|g| bad(g)) {
            return Err(Error::Usage(format!(
                "identity {self:?}: user and group names must be non-empty and contain no comma, quote or newline"
            )));
        }
        Ok(())
    }
}

/// How to start a [`ControlPlane`](super::ControlPlane).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub(super) controller_manager: bool,
    pub(super) identities: Vec<Identity>,
    pub(super) startup_timeout: Option<Duration>,
    pub(super) admission_webhooks: bool,
    pub(super) apiserver_args: Vec<String>,
    // Set by crate::node: ServiceAccount admission, kubelet addressing and
    // the extra controllers a node needs.
    pub(super) node: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

impl Options {
    /// etcd + kube-apiserver, admin identity only.
    pub fn new() -> Self {
        Options {
            controller_manager: false,
            identities: Vec::new(),
            startup_timeout: None,
            admission_webhooks: false,
            apiserver_args: Vec::new(),
            node: false,
        }
    }

    /// What [`crate::Node`] needs from the control plane: the controller
    /// manager (with the node, volume and EndpointSlice controllers), the
    /// ServiceAccount admission plugin (pods get tokens) and the kubelet
    /// reached by its InternalIP.
    pub(crate) fn for_node(mut self, kubelet: Identity) -> Self {
        self.node = true;
        self.controller_manager = true;
        self.identities.push(kubelet);
        self
    }

    /// Also run kube-controller-manager (garbage collector, namespace
    /// deletion, ServiceAccounts, Deployment/ReplicaSet/StatefulSet/Job
    /// controllers). Pods stay `Pending`: there is no scheduler or kubelet.
    pub fn with_controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }

    /// Add an identity with its own token; get its client with
    /// [`ControlPlane::client_for`](super::ControlPlane::client_for).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identities.push(identity);
        self
    }

    /// How long to wait for each component to become ready (default 120 s,
    /// or `GARRET_E2E_STARTUP_TIMEOUT_SECS`).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = Some(timeout);
        self
    }

    /// Keep the MutatingAdmissionWebhook and ValidatingAdmissionWebhook
    /// admission plugins (disabled by default). Any webhook configuration a
    /// test creates must then use `url: https://127.0.0.1:<port>/...`, never
    /// a `service:` reference, which would make the API server dial a
    /// cluster IP.
    pub fn with_admission_webhooks(mut self) -> Self {
        self.admission_webhooks = true;
        self
    }

    /// Extra kube-apiserver flag, e.g. `--feature-gates=...`.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.startup_timeout
            .or_else(|| {
                std::env::var(STARTUP_TIMEOUT_ENV)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_secs)
            })
            .unwrap_or(DEFAULT_STARTUP_TIMEOUT)
    }
}
