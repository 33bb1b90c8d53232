//! The host programs and Kubernetes binaries a node needs, located up front
//! so that a missing one is named together with the command that installs it.

use std::path::{Path, PathBuf};

use super::CNI_BIN_DIR;
use crate::binaries::{is_executable, testbin_dir};
use crate::{Error, Result};

/// Host programs and binaries the node needs, found up front so a missing
/// one is named with the command that installs it.
pub(super) struct Tools {
    pub(super) unshare: PathBuf,
    pub(super) containerd: PathBuf,
    pub(super) kubelet: PathBuf,
    pub(super) kube_proxy: PathBuf,
    pub(super) kube_scheduler: PathBuf,
}

impl Tools {
    pub(super) fn locate() -> Result<Tools> {
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
