//! Where the control plane's binaries come from.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Kubernetes release built by `tools/k8s-testbin` (must match its go.mod;
/// a unit test checks that).
pub const K8S_VERSION: &str = "1.35.4";

/// The command that builds the Kubernetes binaries (run from the repo root).
pub const BUILD_COMMAND: &str = "bash tools/k8s-testbin/build.sh";

/// Environment variable naming the directory that holds `kube-apiserver`,
/// `kube-controller-manager` (and `helm`). Same meaning as for the build
/// script.
pub const TESTBIN_DIR_ENV: &str = "GARRET_TESTBIN_DIR";

/// The testbin directory: `$GARRET_TESTBIN_DIR`, else
/// `$HOME/.cache/garret/k8s-testbin/v<K8S_VERSION>` (the build script's
/// default).
pub fn testbin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(TESTBIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home)
            .join(".cache/garret/k8s-testbin")
            .join(format!("v{K8S_VERSION}"))),
        None => Err(Error::Usage(format!(
            "neither {TESTBIN_DIR_ENV} nor HOME is set; cannot find the Kubernetes test binaries \
             (build them with `{BUILD_COMMAND}`)"
        ))),
    }
}

/// The `kubectl` tests drive clusters with: the testbin's (same release as the control
/// plane, so a brand-new machine needs none of its own), else the one on `PATH`.
pub fn kubectl() -> PathBuf {
    testbin_dir()
        .map(|d| d.join("kubectl"))
        .ok()
        .filter(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

/// Paths of the binaries a control plane runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// etcd, from the `etcd-bin-vendored` crate.
    pub etcd: PathBuf,
    /// kube-apiserver, from the testbin directory.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager, from the testbin directory.
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    /// Locate all binaries; `need_controller_manager` decides whether a
    /// missing `kube-controller-manager` is an error.
    pub fn locate(need_controller_manager: bool) -> Result<Binaries> {
        let etcd = etcd_bin_vendored::etcd_bin_path()
            .map_err(|e| Error::Etcd(e.to_string()))?
            .to_path_buf();
        if !is_executable(&etcd) {
            return Err(Error::Etcd(format!(
                "{} is not an executable file",
                etcd.display()
            )));
        }
        let dir = testbin_dir()?;
        let kube_apiserver = require(&dir, "kube-apiserver")?;
        let kube_controller_manager = dir.join("kube-controller-manager");
        if need_controller_manager && !is_executable(&kube_controller_manager) {
            return Err(Error::MissingBinary {
                binary: "kube-controller-manager",
                path: kube_controller_manager,
            });
        }
        Ok(Binaries {
            etcd,
            kube_apiserver,
            kube_controller_manager,
        })
    }
}

fn require(dir: &Path, binary: &'static str) -> Result<PathBuf> {
    let path = dir.join(binary);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::MissingBinary { binary, path })
    }
}

pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_go_mod() {
        let go_mod = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/k8s-testbin/go.mod");
        let text = std::fs::read_to_string(&go_mod).expect("read tools/k8s-testbin/go.mod");
        let needle = format!("k8s.io/kubernetes v{K8S_VERSION}");
        assert!(
            text.lines().any(|l| l
                .trim_start()
                .trim_start_matches("require ")
                .starts_with(&needle)),
            "{} does not require {needle}",
            go_mod.display()
        );
        let staging = format!(
            "v0.{}",
            K8S_VERSION.split_once('.').map(|(_, r)| r).unwrap_or("")
        );
        assert!(
            text.contains(&format!("k8s.io/apiserver => k8s.io/apiserver {staging}")),
            "staging replaces in go.mod are not at {staging}"
        );
    }

    #[test]
    fn missing_binary_error_names_build_command() {
        let err = require(Path::new("/nonexistent/garret"), "kube-apiserver").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(BUILD_COMMAND), "{msg}");
        assert!(msg.contains("/nonexistent/garret/kube-apiserver"), "{msg}");
    }

    #[test]
    fn vendored_etcd_is_present() {
        let etcd = etcd_bin_vendored::etcd_bin_path().expect("etcd for this platform");
        assert!(is_executable(etcd), "{}", etcd.display());
    }
}
