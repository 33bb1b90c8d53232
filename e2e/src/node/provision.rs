//! The hostPath provisioner: a loop on its own thread that gives each
//! pending claim of [`STORAGE_CLASS`] a pre-bound hostPath PersistentVolume
//! under the node's volumes directory, and deletes released ones.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::Client;

use super::{mkdir, PROVISIONED_LABEL, PROVISIONER, STORAGE_CLASS};
use crate::control_plane::client_from_yaml;
use crate::{Error, Result};

/// Makes a hostPath PersistentVolume for each pending claim of
/// [`STORAGE_CLASS`], pre-bound to it, and deletes released ones (with their
/// directory). A loop on its own thread and runtime: it serves every test.
pub(super) fn spawn_provisioner(
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
        provision_claim(&pvs, &pvc, volumes).await?;
    }
    delete_released(&pvs, volumes).await
}

/// A pre-bound hostPath volume (and its directory) for `pvc`, if it is a
/// pending claim of [`STORAGE_CLASS`] that has none yet.
async fn provision_claim(
    pvs: &Api<PersistentVolume>,
    pvc: &PersistentVolumeClaim,
    volumes: &Path,
) -> Result<()> {
    let Some(spec) = pvc.spec.as_ref() else {
        return Ok(());
    };
    let (Some(ns), Some(name), Some(uid)) = (
        pvc.metadata.namespace.as_ref(),
        pvc.metadata.name.as_ref(),
        pvc.metadata.uid.as_ref(),
    ) else {
        return Ok(());
    };
    if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
        || spec.volume_name.is_some()
        || pvc.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    let pv_name = format!("garret-e2e-{uid}");
    if pvs.get_opt(&pv_name).await?.is_some() {
        return Ok(());
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
    let pv = claim_volume(pv_name, &path, size, spec, ns, name, uid);
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The PersistentVolume for a claim, bound to it through `claimRef`.
fn claim_volume(
    pv_name: String,
    path: &Path,
    size: Quantity,
    spec: &PersistentVolumeClaimSpec,
    ns: &str,
    name: &str,
    uid: &str,
) -> PersistentVolume {
    PersistentVolume {
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
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                uid: Some(uid.to_string()),
                ..ObjectReference::default()
            }),
            storage_class_name: Some(STORAGE_CLASS.into()),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            volume_mode: spec.volume_mode.clone(),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    }
}

/// Delete provisioned volumes that are Released or Failed, with their
/// directory under `volumes`.
async fn delete_released(pvs: &Api<PersistentVolume>, volumes: &Path) -> Result<()> {
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
