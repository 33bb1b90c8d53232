//! etcd + kube-apiserver (+ kube-controller-manager) on loopback.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binaries::Binaries;
use crate::process::{self, Process, DIR_PREFIX};
use crate::{Error, Result};

/// User name of the admin identity (group `system:masters`).
pub const ADMIN_USER: &str = "garret-e2e-admin";

const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const STARTUP_TIMEOUT_ENV: &str = "GARRET_E2E_STARTUP_TIMEOUT_SECS";
const KEEP_DIR_ENV: &str = "GARRET_E2E_KEEP_DIR";
const PORT_ATTEMPTS: usize = 3;

/// A user the API server knows through its static token file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    user: String,
    groups: Vec<String>,
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

    fn validate(&self) -> Result<()> {
        let bad = |s: &str| s.is_empty() || s.contains([',', '"', '\n', '\r']);
        if bad(&self.user) || self.groups.iter().any(|g| bad(g)) {
            return Err(Error::Usage(format!(
                "identity {self:?}: user and group names must be non-empty and contain no comma, quote or newline"
            )));
        }
        Ok(())
    }
}

/// How to start a [`ControlPlane`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    controller_manager: bool,
    identities: Vec<Identity>,
    startup_timeout: Option<Duration>,
    admission_webhooks: bool,
    apiserver_args: Vec<String>,
    // Set by crate::node: ServiceAccount admission, kubelet addressing and
    // the extra controllers a node needs.
    node: bool,
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
    /// [`ControlPlane::client_for`].
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

    async fn start_etcd(&self, bins: &Binaries, timeout: Duration) -> Result<String> {
        let data = self.dir.join("etcd");
        let log = self.dir.join("etcd.log");
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let client_port = free_port()?;
            let peer_port = free_port()?;
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let args = vec![
                "--name=garret-e2e".to_string(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=garret-e2e={peer_url}"),
                "--listen-metrics-urls=".to_string(),
                "--unsafe-no-fsync=true".to_string(),
                "--log-level=warn".to_string(),
            ];
            let _ = std::fs::remove_dir_all(&data);
            let mut p = Process::spawn("etcd", &bins.etcd, &args, &log)?;
            let deadline = Instant::now() + timeout;
            let addr = format!("127.0.0.1:{client_port}");
            loop {
                if let Some(status) = p.exited() {
                    let err = p.startup_error(format!("exited with {status}"));
                    if port_clash(&p) {
                        last_err = Some(err);
                        break;
                    }
                    return Err(err);
                }
                if let Ok(body) = http_get(&addr, "/health").await {
                    if body.contains("\"health\":\"true\"") {
                        self.push(p);
                        return Ok(client_url);
                    }
                }
                if Instant::now() > deadline {
                    return Err(
                        p.startup_error(format!("{addr}/health not healthy after {timeout:?}"))
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Usage("etcd: no free port".into())))
    }

    async fn start_apiserver(
        &mut self,
        bins: &Binaries,
        etcd_url: &str,
        timeout: Duration,
    ) -> Result<()> {
        let log = self.dir.join("kube-apiserver.log");
        let pki = self.dir.join("pki");
        let sa_key = self.dir.join("sa.key");
        // Without a node no pod runs, so no pod needs a token.
        let mut disabled = if self.options.node {
            vec![]
        } else {
            vec!["ServiceAccount"]
        };
        if !self.options.admission_webhooks {
            disabled.extend(["MutatingAdmissionWebhook", "ValidatingAdmissionWebhook"]);
        }
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            self.url = format!("https://127.0.0.1:{port}");
            let mut args = vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".to_string(),
                "--advertise-address=127.0.0.1".to_string(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", pki.display()),
                format!(
                    "--token-auth-file={}",
                    self.dir.join("tokens.csv").display()
                ),
                "--authorization-mode=RBAC".to_string(),
                format!("--service-account-issuer={}", self.url),
                format!("--service-account-key-file={}", sa_key.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                // An object range only: nothing listens there and the API
                // server never dials it (no webhooks, no aggregated APIs).
                "--service-cluster-ip-range=10.0.0.0/24".to_string(),
                "--endpoint-reconciler-type=none".to_string(),
                format!("--disable-admission-plugins={}", disabled.join(",")),
                // The node name does not resolve; logs/exec dial the node IP.
                "--kubelet-preferred-address-types=InternalIP".to_string(),
                "--allow-privileged=true".to_string(),
                "--profiling=false".to_string(),
                "--enable-priority-and-fairness=false".to_string(),
            ];
            args.extend(self.options.apiserver_args.iter().cloned());
            let mut p = Process::spawn("kube-apiserver", &bins.kube_apiserver, &args, &log)?;
            let deadline = Instant::now() + timeout;
            let admin = self.tokens[0].clone();
            let mut client: Option<Client> = None;
            let mut last = String::from("no answer yet");
            loop {
                if let Some(status) = p.exited() {
                    let err = p.startup_error(format!("exited with {status}"));
                    if port_clash(&p) {
                        last_err = Some(err);
                        break;
                    }
                    return Err(err);
                }
                if client.is_none() && self.ca_file.exists() {
                    match client_from_yaml(&self.kubeconfig_yaml(&admin)).await {
                        Ok(c) => client = Some(c),
                        Err(e) => last = e.to_string(),
                    }
                }
                if let Some(c) = &client {
                    match readyz(c).await {
                        Ok(()) => {
                            self.push(p);
                            return Ok(());
                        }
                        Err(e) => last = e,
                    }
                }
                if Instant::now() > deadline {
                    return Err(p.startup_error(format!(
                        "/readyz not ok after {timeout:?}; last answer: {last}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Usage("kube-apiserver: no free port".into())))
    }

    async fn start_controller_manager(&self, bins: &Binaries, timeout: Duration) -> Result<()> {
        let log = self.dir.join("kube-controller-manager.log");
        let mut controllers = String::from(
            "garbage-collector-controller,namespace-controller,serviceaccount-controller,\
             serviceaccount-token-controller,root-ca-certificate-publisher-controller,deployment-controller,\
             replicaset-controller,statefulset-controller,job-controller,cronjob-controller,\
             clusterrole-aggregation-controller",
        );
        if self.options.node {
            // node-lifecycle lifts the not-ready taint; the PV binder and the
            // protection controllers make PVCs bind and be deletable.
            controllers.push_str(
                ",node-lifecycle-controller,endpointslice-controller,endpoints-controller,\
                 persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,\
                 persistentvolume-protection-controller,pod-garbage-collector-controller,\
                 ttl-after-finished-controller",
            );
        }
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig_path().display()),
            "--leader-elect=false".to_string(),
            // No serving: nothing to clash on, nothing to probe.
            "--secure-port=0".to_string(),
            format!("--controllers={controllers}"),
            format!(
                "--service-account-private-key-file={}",
                self.dir.join("sa.key").display()
            ),
            format!("--root-ca-file={}", self.ca_file.display()),
            "--use-service-account-credentials=false".to_string(),
            "--profiling=false".to_string(),
        ];
        let mut p = Process::spawn(
            "kube-controller-manager",
            &bins.kube_controller_manager,
            &args,
            &log,
        )?;
        // Ready once the ServiceAccount controller has created `default` in
        // the `default` namespace.
        let client = self.admin_client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = p.exited() {
                return Err(p.startup_error(format!("exited with {status}")));
            }
            if let Ok(Some(_)) = sas.get_opt("default").await {
                self.push(p);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(p.startup_error(format!(
                    "no `default` ServiceAccount after {timeout:?} (controllers not running?)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
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

async fn readyz(client: &Client) -> std::result::Result<(), String> {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(req).await {
        Ok(body) if body.trim() == "ok" => Ok(()),
        Ok(body) => Err(body),
        Err(e) => Err(e.to_string()),
    }
}

/// A plain-HTTP GET (etcd's client port), returning the body.
async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| std::io::Error::other("timeout"))?
}

fn port_clash(p: &Process) -> bool {
    p.log_tail(40).contains("address already in use")
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind 127.0.0.1:0", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("local_addr", e))?
        .port())
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
