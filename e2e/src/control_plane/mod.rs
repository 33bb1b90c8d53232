//! etcd + kube-apiserver (+ kube-controller-manager) on loopback.
//!
//! [`ControlPlane`] and its public methods live here; `options` holds
//! [`Identity`] and [`Options`], `components` starts etcd, kube-apiserver
//! and kube-controller-manager. Every process is registered with the
//! control plane as soon as it runs, so dropping it (or a failed start)
//! kills them all and removes the directory.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::binaries::Binaries;
use crate::process::{self, Process, DIR_PREFIX};
use crate::{Error, Result};

mod components;
mod options;

pub use options::{Identity, Options};

/// User name of the admin identity (group `system:masters`).
pub const ADMIN_USER: &str = "garret-e2e-admin";

const KEEP_DIR_ENV: &str = "GARRET_E2E_KEEP_DIR";

#[derive(Clone, Debug)]
struct TokenRow {
    identity: Identity,
    token: String,
}

/// A running etcd + kube-apiserver (+ kube-controller-manager).
///
/// Dropping it kills every process and removes its directory. Clients are
/// made per call: a [`kube::Client`] belongs to the tokio runtime it was
/// created in, and each `#[tokio::test]` has its own runtime.
#[derive(Debug)]
pub struct ControlPlane {
    options: Options,
    url: String,
    dir: PathBuf,
    ca_file: PathBuf,
    tokens: Vec<TokenRow>,
    // Killed in reverse order of start.
    processes: Mutex<Vec<Process>>,
    tempdir: Mutex<Option<tempfile::TempDir>>,
}

static SHARED: tokio::sync::OnceCell<ControlPlane> = tokio::sync::OnceCell::const_new();

extern "C" fn shutdown_shared_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(cp) = SHARED.get() {
            cp.shutdown();
        }
    });
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use with
    /// `options`; every later call must pass equal options. It is torn down
    /// when the test binary exits.
    pub async fn shared(options: Options) -> Result<&'static ControlPlane> {
        let cp = SHARED
            .get_or_try_init(|| async {
                let cp = ControlPlane::start(options.clone()).await?;
                // SAFETY: registers a plain extern "C" fn without captures.
                unsafe {
                    libc::atexit(shutdown_shared_at_exit);
                }
                Ok::<_, Error>(cp)
            })
            .await?;
        if cp.options != options {
            return Err(Error::Usage(format!(
                "ControlPlane::shared called with different options ({options:?}) than the ones it was started with ({:?})",
                cp.options
            )));
        }
        Ok(cp)
    }

    /// Start a control plane of its own (prefer [`ControlPlane::shared`]).
    pub async fn start(options: Options) -> Result<ControlPlane> {
        for identity in &options.identities {
            identity.validate()?;
            if identity.user == ADMIN_USER {
                return Err(Error::Usage(format!(
                    "{ADMIN_USER} is reserved for the admin identity"
                )));
            }
        }
        process::sweep_stale_dirs();
        let bins = Binaries::locate(options.controller_manager)?;
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| Error::io("create temporary directory", e))?;
        let dir = tempdir.path().to_path_buf();
        let timeout = options.timeout();

        let mut tokens = vec![TokenRow {
            identity: Identity::new(ADMIN_USER).group("system:masters"),
            token: random_token(),
        }];
        tokens.extend(options.identities.iter().map(|identity| TokenRow {
            identity: identity.clone(),
            token: random_token(),
        }));
        let mut csv = String::new();
        for (i, row) in tokens.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},uid-{i},\"{}\"\n",
                row.token,
                row.identity.user,
                row.identity.groups.join(",")
            ));
        }
        write(&dir.join("tokens.csv"), &csv)?;
        generate_sa_key(&dir)?;

        let mut cp = ControlPlane {
            options,
            url: String::new(),
            ca_file: dir.join("pki/apiserver.crt"),
            dir,
            tokens,
            processes: Mutex::new(Vec::new()),
            tempdir: Mutex::new(Some(tempdir)),
        };
        // On error, `cp` is dropped here and kills whatever was started.
        let etcd_url = cp.start_etcd(&bins, timeout).await?;
        cp.start_apiserver(&bins, &etcd_url, timeout).await?;
        for row in &cp.tokens {
            let name = kubeconfig_name(&row.identity.user);
            write(&cp.dir.join(name), &cp.kubeconfig_yaml(row))?;
        }
        if cp.options.controller_manager {
            cp.start_controller_manager(&bins, timeout).await?;
        }
        Ok(cp)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory holding logs, tokens, kubeconfigs, certificates and the
    /// etcd data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA bundle that signed the API server's serving certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Path of a kubeconfig for the admin identity (for kubectl or helm).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join(kubeconfig_name(ADMIN_USER))
    }

    /// Path of a kubeconfig for `user`.
    pub fn kubeconfig_path_for(&self, user: &str) -> Result<PathBuf> {
        self.row(user)?;
        Ok(self.dir.join(kubeconfig_name(user)))
    }

    /// Whether kube-controller-manager runs.
    pub fn has_controller_manager(&self) -> bool {
        self.options.controller_manager
    }

    /// A client for the admin identity (`system:masters`).
    pub async fn admin_client(&self) -> Result<Client> {
        self.client_for(ADMIN_USER).await
    }

    /// A client for an identity given in [`Options::identity`].
    pub async fn client_for(&self, user: &str) -> Result<Client> {
        let row = self.row(user)?;
        client_from_yaml(&self.kubeconfig_yaml(row)).await
    }

    /// A client config for `user`, e.g. to hand to code under test.
    pub async fn config_for(&self, user: &str) -> Result<Config> {
        let row = self.row(user)?;
        config_from_yaml(&self.kubeconfig_yaml(row)).await
    }

    /// Create a namespace named `<prefix>-<random>` and return its name.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        let mut name: String = prefix
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(48)
            .collect();
        let trimmed = name.trim_matches('-').len();
        if trimmed == 0 {
            name = "test".into();
        }
        let name = format!("{}-{:x}", name.trim_matches('-'), random_u64() & 0xff_ffff);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("garret.dev/e2e".to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let api: Api<Namespace> = Api::all(self.admin_client().await?);
        api.create(&PostParams::default(), &ns).await?;
        Ok(name)
    }

    /// Kill every process and remove the directory (unless
    /// `GARRET_E2E_KEEP_DIR=1`). Idempotent; also done on drop.
    pub fn shutdown(&self) {
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = procs.pop() {
            p.kill();
        }
        drop(procs);
        let mut tempdir = self.tempdir.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = tempdir.take() {
            if std::env::var(KEEP_DIR_ENV).is_ok_and(|v| v == "1") {
                let kept = dir.keep();
                eprintln!("garret-e2e: kept {}", kept.display());
            } else {
                let _ = dir.close();
            }
        }
    }

    fn row(&self, user: &str) -> Result<&TokenRow> {
        self.tokens.iter().find(|r| r.identity.user == user).ok_or_else(|| {
            Error::Usage(format!(
                "unknown identity {user:?}: add it with Options::identity before the control plane starts"
            ))
        })
    }

    fn push(&self, p: Process) {
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }

    /// A kubeconfig for `user` that dials `server` instead of [`Self::url`]
    /// (the node reaches this API server through a relay in its netns).
    pub(crate) fn kubeconfig_yaml_via(&self, user: &str, server: &str) -> Result<String> {
        Ok(self.kubeconfig_yaml_at(self.row(user)?, server))
    }

    fn kubeconfig_yaml(&self, row: &TokenRow) -> String {
        self.kubeconfig_yaml_at(row, &self.url)
    }

    fn kubeconfig_yaml_at(&self, row: &TokenRow, server: &str) -> String {
        // JSON strings are valid YAML scalars: no quoting surprises.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: garret-e2e\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {}\n  user:\n    token: {}\ncontexts:\n- name: garret-e2e\n  context:\n    cluster: garret-e2e\n    user: {}\n    namespace: default\ncurrent-context: garret-e2e\n",
            q(server),
            q(&self.ca_file.to_string_lossy()),
            q(&row.identity.user),
            q(&row.token),
            q(&row.identity.user),
        )
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn kubeconfig_name(user: &str) -> String {
    let safe: String = user
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("kubeconfig-{safe}.yaml")
}

async fn config_from_yaml(yaml: &str) -> Result<Config> {
    let kubeconfig = Kubeconfig::from_yaml(yaml)?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

pub(crate) async fn client_from_yaml(yaml: &str) -> Result<Client> {
    // kube selects rustls' ring provider; installing it as the process
    // default keeps that working if another crate in the build enables a
    // second provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = config_from_yaml(yaml).await?;
    Ok(Client::try_from(config)?)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn random_token() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// The service-account signing key (RSA 2048, PEM), made with the openssl CLI.
fn generate_sa_key(dir: &Path) -> Result<()> {
    let key = dir.join("sa.key");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .map_err(|e| {
            Error::io(
                "run `openssl genpkey` for the service-account key (is openssl installed?)",
                e,
            )
        })?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "`openssl genpkey` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_names_are_validated() {
        assert!(Identity::new("alice").group("devs").validate().is_ok());
        assert!(Identity::new("a,b").validate().is_err());
        assert!(Identity::new("alice").group("x\"y").validate().is_err());
        assert!(Identity::new("").validate().is_err());
    }

    #[test]
    fn kubeconfig_names_are_file_safe() {
        assert_eq!(
            kubeconfig_name("system:serviceaccount:ns:op"),
            "kubeconfig-system_serviceaccount_ns_op.yaml"
        );
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(random_token(), random_token());
    }
}
