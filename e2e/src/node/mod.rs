//! A real Kubernetes node beside the control plane, so tests can run pods.
//!
//! [`Node`] starts its own [`ControlPlane`] (etcd, kube-apiserver with
//! ServiceAccount admission, kube-controller-manager with the node, volume
//! and EndpointSlice controllers), kube-scheduler, and a node: containerd
//! 1.6 + runc (Debian), the CNI `bridge` + `host-local` plugins (pods get IPs
//! in [`POD_CIDR`]), the kubelet and kube-proxy (iptables mode). It follows
//! the recipe in `/work/shared/testing/real-pods.md`.
//!
//! Guarantees:
//!
//! * **Isolation.** containerd, the kubelet, kube-proxy and every pod run in
//!   namespaces the harness creates: a network namespace (node IP
//!   [`NODE_IP`] on a bridge, no route out), a private mount namespace
//!   (tmpfs over `/run`, `/var/lib` and `/var/log`, where containerd, CNI and
//!   the kubelet hard-code paths; the global sysctls the kubelet would rewrite
//!   are shadowed by bind-mounted files) and a pid namespace. Host sysctls,
//!   routes, iptables and mounts are never touched; the only host changes are
//!   a cgroup subtree `/garret-e2e-<pid>-<n>` per hierarchy and the temporary
//!   directory. The control plane and kube-scheduler stay on host loopback;
//!   a relay inside the node's netns (`0.0.0.0:6443`) carries the kubelet's,
//!   kube-proxy's and the pods' connections to it, and the `kubernetes`
//!   Service (10.0.0.1:443) has an EndpointSlice pointing at that relay, so
//!   in-cluster clients work unchanged.
//! * **Teardown.** The pid namespace's init is the only thing holding the
//!   node together: killing it makes the kernel kill every process in the
//!   namespace (containerd, shims, pods), which frees the mount and network
//!   namespaces with all their mounts and iptables rules. That happens on
//!   [`Node::shutdown`] / drop, at test-binary exit (`atexit`), and, through
//!   `PR_SET_PDEATHSIG` and `unshare --kill-child`, when the test binary is
//!   killed. The kubelet's cgroups are removed on shutdown and, for a killed
//!   run, by the next start; its temporary directory likewise.
//! * **Storage.** A default StorageClass [`STORAGE_CLASS`] whose claims get a
//!   hostPath PersistentVolume made on demand by a small loop in the harness
//!   (directory under [`Node::volumes_dir`]); it deletes released volumes.
//!
//! Needs root, the Debian packages `containerd runc containernetworking-plugins
//! iptables conntrack` and `kubelet`, `kube-scheduler`, `kube-proxy` from
//! `tools/k8s-testbin/build.sh`; missing pieces are named in the error.
//!
//! Layout: this module holds [`Node`] and its public methods; `boot` brings
//! the node up step by step, `components` starts containerd, the kubelet and
//! kube-proxy with their configs, `netns` relays into and out of the node's
//! network namespace, `provision` is the hostPath provisioner, `teardown`
//! is shutdown and the leftover-cgroup sweep, `tools` finds the programs.

mod boot;
mod components;
mod netns;
mod provision;
mod teardown;
mod tools;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::Api;
use kube::Client;

use crate::local_image::{run, LocalImage};
use crate::process::{Process, DIR_PREFIX};
use crate::{ControlPlane, Error, Identity, Options, Result};

pub use netns::PortForward;
use netns::{connect_in, in_netns, Relay};
use teardown::sweep_stale_cgroups;
use tools::Tools;

/// The node's name.
pub const NODE_NAME: &str = "garret-e2e-node";
/// The node's InternalIP, inside its network namespace.
pub const NODE_IP: &str = "10.88.0.1";
/// Pod IPs come from here (CNI bridge `cni0`, gateway 10.244.0.1).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The default StorageClass; its claims get hostPath volumes.
pub const STORAGE_CLASS: &str = "garret-e2e-hostpath";
/// The pause image containerd uses for pod sandboxes (built at start).
pub const PAUSE_IMAGE: &str = "local.test/pause:garret-e2e";

const KUBELET_USER: &str = "system:node:garret-e2e-node";
const NODE_BRIDGE: &str = "k8snode0";
/// Port of the API relay in the node's netns (Service `kubernetes` → here).
const API_RELAY_PORT: u16 = 6443;
const SERVICE_CIDR: &str = "10.0.0.0/24";
const CNI_BIN_DIR: &str = "/usr/lib/cni";
const PROVISIONER: &str = "garret.dev/e2e-hostpath";
const PROVISIONED_LABEL: &str = "garret.dev/e2e-provisioned";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A running single-node cluster; see the module documentation.
#[derive(Debug)]
pub struct Node {
    options: Options,
    cp: ControlPlane,
    dir: PathBuf,
    /// Host pid of the init of the node's pid namespace (0 until started).
    init_pid: i32,
    socket: PathBuf,
    cgroups: Vec<PathBuf>,
    /// The namespace holder first; node components after it.
    processes: Mutex<Vec<Process>>,
    relays: Mutex<Vec<Relay>>,
    stop: Arc<AtomicBool>,
    tempdir: Mutex<Option<tempfile::TempDir>>,
}

static SHARED: tokio::sync::OnceCell<Node> = tokio::sync::OnceCell::const_new();

extern "C" fn shutdown_shared_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(node) = SHARED.get() {
            node.shutdown();
        }
    });
}

impl Node {
    /// The node (and its control plane) of this test binary, started on
    /// first use; every later call must pass equal `options`. Torn down when
    /// the test binary exits. Use [`Node::control_plane`] rather than
    /// [`ControlPlane::shared`] in the same binary.
    pub async fn shared(options: Options) -> Result<&'static Node> {
        let node = SHARED
            .get_or_try_init(|| async {
                let node = Node::start(options.clone()).await?;
                // SAFETY: registers a plain extern "C" fn without captures.
                unsafe {
                    libc::atexit(shutdown_shared_at_exit);
                }
                Ok::<_, Error>(node)
            })
            .await?;
        if node.options != options {
            return Err(Error::Usage(format!(
                "Node::shared called with different options ({options:?}) than the ones it was started with ({:?})",
                node.options
            )));
        }
        Ok(node)
    }

    /// Start a node of its own (prefer [`Node::shared`]: the kubelet's
    /// cgroups and fixed in-netns ports are per node, so one per binary).
    pub async fn start(options: Options) -> Result<Node> {
        let t0 = Instant::now();
        let tools = Tools::locate()?;
        sweep_stale_cgroups();
        let kubelet = Identity::new(KUBELET_USER)
            .group("system:nodes")
            .group("system:masters");
        let cp = ControlPlane::start(options.clone().for_node(kubelet)).await?;
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-node-", std::process::id()))
            .tempdir()
            .map_err(|e| Error::io("create temporary directory", e))?;
        let dir = tempdir.path().to_path_buf();
        for shadowed in ["/run", "/var/lib", "/var/log"] {
            if dir.starts_with(shadowed) {
                return Err(Error::Usage(format!(
                    "the node's directory {} is under {shadowed}, which the node shadows; set TMPDIR elsewhere",
                    dir.display()
                )));
            }
        }
        let mut node = Node {
            options,
            cp,
            socket: dir.join("containerd.sock"),
            dir,
            init_pid: 0,
            cgroups: Vec::new(),
            processes: Mutex::new(Vec::new()),
            relays: Mutex::new(Vec::new()),
            stop: Arc::new(AtomicBool::new(false)),
            tempdir: Mutex::new(Some(tempdir)),
        };
        // On error `node` is dropped, which tears down what was started.
        node.boot(&tools, node.cp_timeout()).await?;
        eprintln!(
            "garret-e2e: node {NODE_NAME} ready in {:.1} s ({})",
            t0.elapsed().as_secs_f64(),
            node.dir.display()
        );
        Ok(node)
    }

    /// The control plane the node is registered with.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// A client for the admin identity (`system:masters`).
    pub async fn admin_client(&self) -> Result<Client> {
        self.cp.admin_client().await
    }

    /// Create a namespace `<prefix>-<random>` and wait until pods can be
    /// created in it: the `default` ServiceAccount and the
    /// `kube-root-ca.crt` ConfigMap (its token volume) exist.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String> {
        let ns = self.cp.create_namespace(prefix).await?;
        let client = self.admin_client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
        crate::wait_for(
            self.cp_timeout(),
            &format!("ServiceAccount default and ConfigMap kube-root-ca.crt in {ns}"),
            || async {
                let ready = sas.get_opt("default").await?.is_some()
                    && cms.get_opt("kube-root-ca.crt").await?.is_some();
                Ok(ready.then_some(()))
            },
        )
        .await?;
        Ok(ns)
    }

    /// `program` run in the node's network namespace (and otherwise the
    /// test's own view of the system): it reaches pod IPs, Service cluster
    /// IPs and [`NODE_IP`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// `ctr` talking to the node's containerd in the CRI namespace `k8s.io`.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"]);
        cmd
    }

    /// Import an image archive (OCI layout or docker-save tarball) so pods
    /// can use it with `imagePullPolicy: Never`.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        run(self.ctr().args(["images", "import"]).arg(archive))?;
        Ok(())
    }

    /// Write `image` under the node's directory and import it.
    pub fn load_image(&self, image: &LocalImage) -> Result<()> {
        let archive = image.write(&self.dir.join("images"))?;
        self.import_image(&archive)
    }

    /// A TCP connection from inside the node's network namespace, e.g. to a
    /// pod IP. The socket stays in that namespace; use it from any thread
    /// (or `tokio::net::TcpStream::from_std` after `set_nonblocking`).
    pub fn connect(&self, addr: SocketAddr) -> Result<TcpStream> {
        connect_in(self.netns_path(), addr)
            .map_err(|e| Error::io(format!("connect to {addr} in the node's netns"), e))
    }

    /// A loopback port of the test process forwarded to `addr` inside the
    /// node's network namespace (like `kubectl port-forward`, for clients
    /// that must run in the test process). Stops when dropped.
    pub fn forward(&self, addr: SocketAddr) -> Result<PortForward> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("bind 127.0.0.1:0 for a port forward", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("local_addr", e))?;
        let netns = self.netns_path();
        let relay = Relay::spawn(listener, move || connect_in(netns.clone(), addr))
            .map_err(|e| Error::io("start port forward", e))?;
        Ok(PortForward { local, relay })
    }

    /// The other direction of [`Node::forward`]: a port on [`NODE_IP`] inside the node's
    /// network namespace relayed to `host` (a service of the test on host loopback, e.g.
    /// PostgreSQL or an S3 server), so pods reach it at the returned address. Stops with
    /// the node.
    pub fn expose(&self, host: SocketAddr) -> Result<SocketAddr> {
        let listener = in_netns(self.netns_path(), move || TcpListener::bind((NODE_IP, 0)))
            .map_err(|e| Error::io(format!("bind a relay for {host} in the node's netns"), e))?;
        let inside = listener
            .local_addr()
            .map_err(|e| Error::io("local_addr", e))?;
        let relay = Relay::spawn(listener, move || {
            TcpStream::connect_timeout(&host, Duration::from_secs(10))
        })
        .map_err(|e| Error::io(format!("start the relay for {host}"), e))?;
        self.relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(relay);
        Ok(inside)
    }

    /// The node's working directory (configs, logs, containerd state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the kubelet writes container logs
    /// (`<namespace>_<pod>_<uid>/<container>/<n>.log`): `kubectl logs` needs
    /// the API server to dial the kubelet, which it cannot (host loopback
    /// only).
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }

    /// Parent of the hostPath directories backing provisioned volumes
    /// (one per claim, named by the claim's uid).
    pub fn volumes_dir(&self) -> PathBuf {
        self.dir.join("volumes")
    }
}

impl Node {
    fn cp_timeout(&self) -> Duration {
        self.options.clone().timeout()
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.init_pid))
    }

    fn push(&self, p: Process) {
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }

    /// Start a node component inside the node's namespaces.
    fn spawn_inside(&self, name: &'static str, program: &Path, args: &[String]) -> Result<()> {
        let mut full = vec![
            "-t".to_string(),
            self.init_pid.to_string(),
            "--net".into(),
            "--mount".into(),
            "--pid".into(),
            "--".into(),
            program.to_string_lossy().into_owned(),
        ];
        full.extend(args.iter().cloned());
        let log = self.dir.join(format!("{name}.log"));
        let p = Process::spawn(name, Path::new("nsenter"), &full, &log)?;
        self.push(p);
        Ok(())
    }

    /// Fail fast, with its log, if a node component exited.
    fn check_alive(&self) -> Result<()> {
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                return Err(p.startup_error(format!("exited with {status}")));
            }
        }
        Ok(())
    }

    async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if check().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(timeout, what.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(format!("mkdir {}", path.display()), e))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}
