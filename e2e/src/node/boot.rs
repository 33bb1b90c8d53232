//! Start-up of a node, in order: directories and the pause binary, the
//! namespaces (whose init holds the node together), cgroups, containerd,
//! the API relay and cluster objects, kubelet, kube-proxy, kube-scheduler,
//! the provisioner, then the waits for a Ready node and kube-proxy's rules.
//! Every step that starts a process registers it with the [`Node`] first,
//! so a failed start is torn down by the node's drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node as K8sNode;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

use super::netns::{in_netns, Relay};
use super::provision::spawn_provisioner;
use super::teardown::create_cgroups;
use super::tools::Tools;
use super::*;
use crate::local_image::{run, LocalImage};
use crate::process::{Process, DIR_PREFIX};
use crate::{Error, Result, ADMIN_USER};

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

impl Node {
    /// Bring the node up, step by step; see the module documentation.
    pub(super) async fn boot(&mut self, tools: &Tools, timeout: Duration) -> Result<()> {
        let pause = self.prepare_dir()?;
        self.start_namespaces(tools, timeout, &pause).await?;

        // A cgroup subtree per v1 hierarchy for the kubelet (cgroupfs driver).
        let cgroup_name = format!("{DIR_PREFIX}{}-{}", std::process::id(), self.init_pid);
        self.cgroups = create_cgroups(&cgroup_name)?;

        self.start_containerd(tools, timeout).await?;
        self.load_image(
            &LocalImage::new(PAUSE_IMAGE)
                .file(&pause, "/pause")
                .entrypoint(["/pause"]),
        )?;
        self.start_api_relay()?;

        let client = self.admin_client().await?;
        self.create_cluster_objects(&client).await?;
        let inside = format!("https://127.0.0.1:{API_RELAY_PORT}");
        let node_kubeconfig = self.dir.join("kubelet/kubeconfig.yaml");
        write(
            &node_kubeconfig,
            &self.cp.kubeconfig_yaml_via(KUBELET_USER, &inside)?,
        )?;

        self.start_kubelet(tools, &cgroup_name, &node_kubeconfig)?;
        self.start_kube_proxy(tools, &node_kubeconfig)?;
        self.start_scheduler(tools)?;
        spawn_provisioner(
            self.cp.kubeconfig_yaml_via(ADMIN_USER, self.cp.url())?,
            self.volumes_dir(),
            self.stop.clone(),
            self.dir.join("provisioner.log"),
        )?;
        self.wait_ready(client, timeout).await
    }

    /// The node's subdirectories and the pause binary (returned), which
    /// doubles as init of the node's pid namespace.
    fn prepare_dir(&self) -> Result<PathBuf> {
        let dir = &self.dir;
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
        Ok(pause)
    }

    /// Namespaces: mounts, fake sysctls and the network, then exec init;
    /// sets `init_pid` once they are up.
    async fn start_namespaces(
        &mut self,
        tools: &Tools,
        timeout: Duration,
        pause: &Path,
    ) -> Result<()> {
        let dir = self.dir.clone();
        let script = namespaces_script(&dir, pause)?;
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
        Ok(())
    }

    /// The API server, seen from the node's netns at 0.0.0.0:6443.
    fn start_api_relay(&self) -> Result<()> {
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
        Ok(())
    }

    fn start_scheduler(&self, tools: &Tools) -> Result<()> {
        let dir = &self.dir;
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
        Ok(())
    }

    /// Ready: the node is Ready without taints, and kube-proxy has
    /// programmed the `kubernetes` Service.
    async fn wait_ready(&self, client: Client, timeout: Duration) -> Result<()> {
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
}

/// The script `unshare` runs in the new namespaces: tmpfs over the
/// shadowed paths, the fake sysctls, the node's network, then exec init.
fn namespaces_script(dir: &Path, pause: &Path) -> Result<String> {
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
    Ok(script)
}
