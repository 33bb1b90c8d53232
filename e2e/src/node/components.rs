//! The node components that run inside the node's namespaces (containerd,
//! the kubelet, kube-proxy), each with the config file it is started with:
//! every path they write to is under the node's directory or the tmpfs the
//! namespaces put over `/run`, `/var/lib` and `/var/log`.

use std::path::Path;
use std::time::Duration;

use super::tools::Tools;
use super::*;
use crate::Result;

impl Node {
    pub(super) async fn start_containerd(&self, tools: &Tools, timeout: Duration) -> Result<()> {
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

    pub(super) fn start_kubelet(
        &self,
        tools: &Tools,
        cgroup_name: &str,
        kubeconfig: &Path,
    ) -> Result<()> {
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

    pub(super) fn start_kube_proxy(&self, tools: &Tools, kubeconfig: &Path) -> Result<()> {
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
