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

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, HostPathVolumeSource, Node as K8sNode, ObjectReference, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeSpec, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Client;

use crate::binaries::{is_executable, testbin_dir};
use crate::control_plane::client_from_yaml;
use crate::local_image::{run, LocalImage};
use crate::process::{Process, DIR_PREFIX};
use crate::{ControlPlane, Error, Identity, Options, Result, ADMIN_USER};

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

/// The global sysctls the kubelet sets at start, with the values it wants:
/// shadowed inside the node's mount namespace so the host keeps its own.
const FAKE_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

const PAUSE_C: &str = r#"/* pause: sleep, reap zombies, exit on SIGINT/SIGTERM */
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void down(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0};
  a.sa_handler = down; sigaction(SIGINT, &a, 0); sigaction(SIGTERM, &a, 0);
  a.sa_handler = reap; a.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &a, 0);
  for (;;) pause();
}
"#;

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

    /// Stop everything and remove the directory (unless
    /// `GARRET_E2E_KEEP_DIR=1`). Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for relay in self
            .relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            relay.stop();
        }
        let mut procs = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        if self.init_pid > 0 && !procs.is_empty() {
            // SAFETY: plain syscall. The holder (procs[0], not yet reaped by
            // us) is the init's parent and reaps it, so the pid cannot have
            // been reused while the holder is alive.
            if procs[0].exited().is_none() {
                unsafe {
                    libc::kill(self.init_pid, libc::SIGKILL);
                }
            }
            // The holder returns once init is reaped, and init is reaped
            // only after every process of its namespace is gone.
            procs[0].wait_exit(Duration::from_secs(30));
        }
        while let Some(mut p) = procs.pop() {
            p.kill();
        }
        drop(procs);
        remove_cgroups(&self.cgroups, Duration::from_secs(10));
        self.cp.shutdown();
        let mut tempdir = self.tempdir.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = tempdir.take() {
            if std::env::var("GARRET_E2E_KEEP_DIR").is_ok_and(|v| v == "1") {
                eprintln!("garret-e2e: kept {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
    }

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

    async fn boot(&mut self, tools: &Tools, timeout: Duration) -> Result<()> {
        let dir = self.dir.clone();
        for sub in [
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "pod-logs",
            "volumes",
            "sysctl",
        ] {
            mkdir(&dir.join(sub))?;
        }

        // The pause binary doubles as init of the node's pid namespace.
        let pause_src = dir.join("pause.c");
        write(&pause_src, PAUSE_C)?;
        let pause = dir.join("pause");
        run(Command::new("gcc")
            .args(["-Os", "-static", "-o"])
            .arg(&pause)
            .arg(&pause_src))
        .map_err(|e| {
            Error::Usage(format!(
                "compile the pause binary (gcc -static, needs libc6-dev): {e}"
            ))
        })?;

        // Namespaces: mounts, fake sysctls and the network, then exec init.
        let mut script = String::from("set -e\n");
        for shadowed in ["/run", "/var/lib", "/var/log"] {
            script.push_str(&format!(
                "mount -t tmpfs -o mode=0755 garret-e2e-node {shadowed}\n"
            ));
        }
        for (name, value) in FAKE_SYSCTLS {
            let file = dir.join("sysctl").join(name.replace('/', "."));
            write(&file, &format!("{value}\n"))?;
            script.push_str(&format!(
                "mount --bind {} /proc/sys/{name}\n",
                file.display()
            ));
        }
        script.push_str(&format!(
            "ip link set lo up\nip link add {NODE_BRIDGE} type bridge\n\
             ip addr add {NODE_IP}/24 dev {NODE_BRIDGE}\nip link set {NODE_BRIDGE} up\n\
             ip route add {SERVICE_CIDR} dev {NODE_BRIDGE}\n\
             touch {ready}\nexec {pause}\n",
            ready = dir.join("ns-ready").display(),
            pause = pause.display(),
        ));
        write(&dir.join("namespaces.sh"), &script)?;
        let args: Vec<String> = [
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            "sh",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.join("namespaces.sh").to_string_lossy().into_owned()])
        .collect();
        let holder = Process::spawn(
            "node-namespaces",
            &tools.unshare,
            &args,
            &dir.join("namespaces.log"),
        )?;
        let holder_pid = holder.id();
        self.push(holder);
        let marker = dir.join("ns-ready");
        self.wait_until(timeout, "the node's namespaces", || {
            let up = marker.exists();
            async move { up }
        })
        .await?;
        let children =
            std::fs::read_to_string(format!("/proc/{holder_pid}/task/{holder_pid}/children"))
                .map_err(|e| Error::io("find the node's init", e))?;
        self.init_pid = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::Usage("the node's namespace holder has no child".into()))?;

        // A cgroup subtree per v1 hierarchy for the kubelet (cgroupfs driver).
        let cgroup_name = format!("{DIR_PREFIX}{}-{}", std::process::id(), self.init_pid);
        self.cgroups = create_cgroups(&cgroup_name)?;

        self.start_containerd(tools, timeout).await?;
        self.load_image(
            &LocalImage::new(PAUSE_IMAGE)
                .file(&pause, "/pause")
                .entrypoint(["/pause"]),
        )?;

        // The API server, seen from the node's netns at 0.0.0.0:6443.
        let api: SocketAddr = self
            .cp
            .url()
            .trim_start_matches("https://")
            .parse()
            .map_err(|e| Error::Usage(format!("API server URL {}: {e}", self.cp.url())))?;
        let netns = self.netns_path();
        let listener = in_netns(netns, move || {
            TcpListener::bind(("0.0.0.0", API_RELAY_PORT))
        })
        .map_err(|e| Error::io("bind the API relay in the node's netns", e))?;
        let relay = Relay::spawn(listener, move || {
            TcpStream::connect_timeout(&api, Duration::from_secs(10))
        })
        .map_err(|e| Error::io("start the API relay", e))?;
        self.relays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(relay);

        let client = self.admin_client().await?;
        self.create_cluster_objects(&client).await?;
        let inside = format!("https://127.0.0.1:{API_RELAY_PORT}");
        let node_kubeconfig = dir.join("kubelet/kubeconfig.yaml");
        write(
            &node_kubeconfig,
            &self.cp.kubeconfig_yaml_via(KUBELET_USER, &inside)?,
        )?;

        self.start_kubelet(tools, &cgroup_name, &node_kubeconfig)?;
        self.start_kube_proxy(tools, &node_kubeconfig)?;
        let sched_log = dir.join("kube-scheduler.log");
        let sched = Process::spawn(
            "kube-scheduler",
            &tools.kube_scheduler,
            &[
                format!("--kubeconfig={}", self.cp.kubeconfig_path().display()),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--profiling=false".into(),
            ],
            &sched_log,
        )?;
        self.push(sched);
        spawn_provisioner(
            self.cp.kubeconfig_yaml_via(ADMIN_USER, self.cp.url())?,
            self.volumes_dir(),
            self.stop.clone(),
            dir.join("provisioner.log"),
        )?;

        // Ready: the node is Ready without taints, and kube-proxy has
        // programmed the `kubernetes` Service.
        let nodes: Api<K8sNode> = Api::all(client);
        self.wait_until(
            timeout,
            &format!("node {NODE_NAME} Ready and untainted"),
            || {
                let nodes = nodes.clone();
                async move {
                    let Ok(Some(n)) = nodes.get_opt(NODE_NAME).await else {
                        return false;
                    };
                    let ready = n
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    let tainted = n.spec.and_then(|s| s.taints).is_some_and(|t| !t.is_empty());
                    ready && !tainted
                }
            },
        )
        .await?;
        let rule = format!("--to-destination {NODE_IP}:{API_RELAY_PORT}");
        self.wait_until(
            timeout,
            "kube-proxy rules for the kubernetes Service",
            || {
                let out = self.command("iptables-save").args(["-t", "nat"]).output();
                let found = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&rule));
                async move { found }
            },
        )
        .await?;
        Ok(())
    }

    async fn start_containerd(&self, tools: &Tools, timeout: Duration) -> Result<()> {
        let d = self.dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE in this sandbox: negative oom_score_adj is refused.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d}/cni/net.d"
"#,
            sock = self.socket.display(),
        );
        write(&self.dir.join("containerd.toml"), &config)?;
        let cni = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "garret-e2e-pods",
            "plugins": [{
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_CIDR }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.dir.join("cni/ipam"),
                },
            }],
        });
        write(
            &self.dir.join("cni/net.d/10-bridge.conflist"),
            &cni.to_string(),
        )?;
        self.spawn_inside(
            "containerd",
            &tools.containerd,
            &[format!("--config={d}/containerd.toml")],
        )?;
        self.wait_until(timeout, "containerd to serve", || {
            let up = self.socket.exists()
                && self
                    .ctr()
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success());
            async move { up }
        })
        .await
    }

    async fn create_cluster_objects(&self, client: &Client) -> Result<()> {
        // The API server keeps no endpoints for `kubernetes`
        // (--endpoint-reconciler-type=none): point it at the relay.
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("kubernetes".into()),
                namespace: Some("default".into()),
                labels: Some(
                    [
                        (
                            "kubernetes.io/service-name".to_string(),
                            "kubernetes".to_string(),
                        ),
                        (
                            "endpointslice.kubernetes.io/managed-by".to_string(),
                            "garret-e2e".to_string(),
                        ),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec![NODE_IP.into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..EndpointConditions::default()
                }),
                ..Endpoint::default()
            }],
            ports: Some(vec![EndpointPort {
                name: Some("https".into()),
                port: Some(API_RELAY_PORT.into()),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
        };
        Api::<EndpointSlice>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &slice)
            .await?;
        let class = StorageClass {
            metadata: ObjectMeta {
                name: Some(STORAGE_CLASS.into()),
                annotations: Some(
                    [(
                        "storageclass.kubernetes.io/is-default-class".to_string(),
                        "true".to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            provisioner: PROVISIONER.into(),
            reclaim_policy: Some("Delete".into()),
            volume_binding_mode: Some("Immediate".into()),
            ..StorageClass::default()
        };
        Api::<StorageClass>::all(client.clone())
            .create(&PostParams::default(), &class)
            .await?;
        Ok(())
    }

    fn start_kubelet(&self, tools: &Tools, cgroup_name: &str, kubeconfig: &Path) -> Result<()> {
        let d = self.dir.display();
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The host is cgroup v1 (hybrid); 1.35 refuses v1 unless told.
failCgroupV1: false
# containerd 1.6 has no RuntimeConfig RPC; the kubelet falls back to this.
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_name}
failSwapOn: false
# No CAP_SYS_RESOURCE: a negative score would be refused.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://{sock}
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/kubelet/volume-plugins
authentication: {{anonymous: {{enabled: true}}, webhook: {{enabled: false}}}}
authorization: {{mode: AlwaysAllow}}
address: {NODE_IP}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
resolvConf: ""
# Imported images cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
nodeStatusUpdateFrequency: 5s
serializeImagePulls: false
"#,
            sock = self.socket.display(),
        );
        write(&self.dir.join("kubelet/config.yaml"), &config)?;
        self.spawn_inside(
            "kubelet",
            &tools.kubelet,
            &[
                format!("--config={d}/kubelet/config.yaml"),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={d}/kubelet/root"),
                format!("--cert-dir={d}/kubelet/pki"),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
            ],
        )
    }

    fn start_kube_proxy(&self, tools: &Tools, kubeconfig: &Path) -> Result<()> {
        let config = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: "{kubeconfig}"}}
mode: iptables
clusterCIDR: {POD_CIDR}
hostnameOverride: {NODE_NAME}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Zero leaves the global conntrack sysctls alone.
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#,
            kubeconfig = kubeconfig.display(),
        );
        let path = self.dir.join("kube-proxy.yaml");
        write(&path, &config)?;
        self.spawn_inside(
            "kube-proxy",
            &tools.kube_proxy,
            &[format!("--config={}", path.display())],
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A loopback port forwarded into the node's netns by [`Node::forward`].
#[derive(Debug)]
pub struct PortForward {
    local: SocketAddr,
    relay: Relay,
}

impl PortForward {
    /// `127.0.0.1:<port>` in the test process.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.relay.stop();
    }
}

/// Accepts on a listener (in whatever netns it was bound) and pipes each
/// connection to a stream made by `connect`, on plain threads: the node
/// outlives any single test's tokio runtime.
#[derive(Debug)]
struct Relay {
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn spawn<F>(listener: TcpListener, connect: F) -> io::Result<Relay>
    where
        F: Fn() -> io::Result<TcpStream> + Send + Sync + 'static,
    {
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.clone(), stop.clone());
        let connect = Arc::new(connect);
        std::thread::Builder::new()
            .name("garret-e2e-relay".into())
            .spawn(move || {
                for conn in l.incoming() {
                    if s.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(a) = conn else { continue };
                    let connect = connect.clone();
                    let _ = std::thread::Builder::new()
                        .name("garret-e2e-pipe".into())
                        .spawn(move || {
                            if let Ok(b) = connect() {
                                pipe(a, b);
                            }
                        });
                }
            })?;
        Ok(Relay { listener, stop })
    }

    /// Stop accepting; the listener's socket (and its netns reference) goes
    /// when the accept thread returns.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on a listening socket we own wakes accept().
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = io::copy(&mut a, &mut b);
        let _ = b.shutdown(Shutdown::Write);
    });
    let _ = copy(&mut b2, &mut a2);
    let _ = a2.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// Run `f` on a fresh thread that has joined the network namespace at
/// `netns`; sockets it creates stay in that namespace.
fn in_netns<T, F>(netns: PathBuf, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    std::thread::spawn(move || {
        let ns = File::open(&netns)?;
        // SAFETY: setns on this thread only (network namespaces may differ
        // per thread); the thread ends right after `f`.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

fn connect_in(netns: PathBuf, addr: SocketAddr) -> io::Result<TcpStream> {
    in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    })
}

/// Host programs and binaries the node needs, found up front so a missing
/// one is named with the command that installs it.
struct Tools {
    unshare: PathBuf,
    containerd: PathBuf,
    kubelet: PathBuf,
    kube_proxy: PathBuf,
    kube_scheduler: PathBuf,
}

impl Tools {
    fn locate() -> Result<Tools> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Usage(
                "garret_e2e::Node needs root (namespaces, mounts, cgroups, iptables)".into(),
            ));
        }
        let package = |tool: &'static str, package: &'static str| {
            which(tool).ok_or(Error::MissingTool {
                tool,
                install: format!("apt-get install -y --no-install-recommends {package}"),
            })
        };
        for (tool, pkg) in [
            ("containerd-shim-runc-v2", "containerd"),
            ("ctr", "containerd"),
            ("runc", "runc"),
            ("nsenter", "util-linux"),
            ("ip", "iproute2"),
            ("iptables", "iptables"),
            ("iptables-save", "iptables"),
            ("conntrack", "conntrack"),
            ("gcc", "gcc libc6-dev"),
            ("tar", "tar"),
            ("sha256sum", "coreutils"),
            ("ldd", "libc-bin"),
        ] {
            package(tool, pkg)?;
        }
        for plugin in ["bridge", "host-local", "loopback"] {
            let path = Path::new(CNI_BIN_DIR).join(plugin);
            if !is_executable(&path) {
                return Err(Error::MissingTool {
                    tool: "CNI plugins (bridge, host-local, loopback)",
                    install: format!(
                        "apt-get install -y --no-install-recommends containernetworking-plugins ({} missing)",
                        path.display()
                    ),
                });
            }
        }
        let bins = testbin_dir()?;
        let testbin = |binary: &'static str| {
            let path = bins.join(binary);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(Error::MissingBinary { binary, path })
            }
        };
        Ok(Tools {
            unshare: package("unshare", "util-linux")?,
            containerd: package("containerd", "containerd")?,
            kubelet: testbin("kubelet")?,
            kube_proxy: testbin("kube-proxy")?,
            kube_scheduler: testbin("kube-scheduler")?,
        })
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

/// The cgroup hierarchies mounted under /sys/fs/cgroup: the v1 ones, plus
/// the hybrid host's cgroup2 (`unified`) when `with_v2` (runc creates the
/// kubelet's paths there too, so teardown must look there).
fn cgroup_hierarchies(with_v2: bool) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            let wanted = kind == "cgroup" || (with_v2 && kind == "cgroup2");
            (wanted && at.starts_with(CGROUP_ROOT)).then(|| PathBuf::from(at))
        })
        .collect()
}

/// Create the kubelet's cgroup root; returns every path teardown removes.
fn create_cgroups(name: &str) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for h in cgroup_hierarchies(false) {
        let dir = h.join(name);
        mkdir(&dir)?;
        // A cpuset child has no CPUs or memory nodes until given its parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(file)) {
                write(&dir.join(file), &v)?;
            }
        }
        made.push(dir);
    }
    if made.is_empty() {
        return Err(Error::Usage(
            "no cgroup v1 hierarchies under /sys/fs/cgroup: the node is only set up for cgroup v1 hosts"
                .into(),
        ));
    }
    let v2: Vec<PathBuf> = cgroup_hierarchies(true)
        .into_iter()
        .map(|h| h.join(name))
        .filter(|d| !made.contains(d))
        .collect();
    made.extend(v2);
    Ok(made)
}

/// Remove cgroup trees bottom-up, retrying while killed tasks drain.
fn remove_cgroups(roots: &[PathBuf], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for root in roots {
        loop {
            let mut dirs = Vec::new();
            collect_dirs(root, &mut dirs);
            // Deepest first.
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            let failed = dirs
                .iter()
                .any(|d| std::fs::remove_dir(d).is_err() && d.exists());
            if !failed || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Cgroup subtrees `garret-e2e-<pid>-*` of test binaries that are gone.
fn sweep_stale_cgroups() {
    for h in cgroup_hierarchies(true) {
        let Ok(entries) = std::fs::read_dir(&h) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(DIR_PREFIX))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: signal 0 only checks whether the process exists.
            let gone = pid > 0
                && unsafe { libc::kill(pid, 0) } != 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                remove_cgroups(&[e.path()], Duration::from_secs(2));
            }
        }
    }
}

/// Makes a hostPath PersistentVolume for each pending claim of
/// [`STORAGE_CLASS`], pre-bound to it, and deletes released ones (with their
/// directory). A loop on its own thread and runtime: it serves every test.
fn spawn_provisioner(
    kubeconfig: String,
    volumes: PathBuf,
    stop: Arc<AtomicBool>,
    log: PathBuf,
) -> Result<()> {
    std::thread::Builder::new()
        .name("garret-e2e-provisioner".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut log = File::options().create(true).append(true).open(&log).ok();
                let client = match client_from_yaml(&kubeconfig).await {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some(l) = log.as_mut() {
                            let _ = writeln!(l, "no client: {e}");
                        }
                        return;
                    }
                };
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = provision_once(&client, &volumes).await {
                        if let Some(l) = log.as_mut() {
                            let _ = writeln!(l, "{e}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        })
        .map_err(|e| Error::io("start the volume provisioner", e))?;
    Ok(())
}

async fn provision_once(client: &Client, volumes: &Path) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pvc in pvcs.list(&ListParams::default()).await? {
        let Some(spec) = pvc.spec.as_ref() else {
            continue;
        };
        let (Some(ns), Some(name), Some(uid)) = (
            pvc.metadata.namespace.as_ref(),
            pvc.metadata.name.as_ref(),
            pvc.metadata.uid.as_ref(),
        ) else {
            continue;
        };
        if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
            || spec.volume_name.is_some()
            || pvc.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let pv_name = format!("garret-e2e-{uid}");
        if pvs.get_opt(&pv_name).await?.is_some() {
            continue;
        }
        let path = volumes.join(uid);
        mkdir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage").cloned())
            .unwrap_or_else(|| Quantity("1Gi".into()));
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(pv_name),
                labels: Some([(PROVISIONED_LABEL.to_string(), "true".to_string())].into()),
                annotations: Some(
                    [(
                        "pv.kubernetes.io/provisioned-by".to_string(),
                        PROVISIONER.to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some([("storage".to_string(), size)].into()),
                access_modes: spec
                    .access_modes
                    .clone()
                    .or_else(|| Some(vec!["ReadWriteOnce".into()])),
                host_path: Some(HostPathVolumeSource {
                    path: path.to_string_lossy().into_owned(),
                    type_: Some("Directory".into()),
                }),
                claim_ref: Some(ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("PersistentVolumeClaim".into()),
                    namespace: Some(ns.clone()),
                    name: Some(name.clone()),
                    uid: Some(uid.clone()),
                    ..ObjectReference::default()
                }),
                storage_class_name: Some(STORAGE_CLASS.into()),
                persistent_volume_reclaim_policy: Some("Delete".into()),
                volume_mode: spec.volume_mode.clone(),
                ..PersistentVolumeSpec::default()
            }),
            ..PersistentVolume::default()
        };
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let provisioned = ListParams::default().labels(&format!("{PROVISIONED_LABEL}=true"));
    for pv in pvs.list(&provisioned).await? {
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, Some("Released" | "Failed")) || pv.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(name) = pv.metadata.name.as_ref() else {
            continue;
        };
        match pvs.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(path) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()) {
            let path = Path::new(&path.path);
            if path.starts_with(volumes) {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(format!("mkdir {}", path.display()), e))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}
