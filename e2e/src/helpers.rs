//! Helpers most tests need: polling, CRD installation, applying YAML.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

use crate::{Error, Result};

/// Poll `check` every 200 ms until it returns `Ok(Some(_))`, an error, or
/// `timeout` passes (then [`Error::Timeout`] naming `what`).
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(timeout, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Install every CRD in the `.yaml` files of `dir` (in name order; a file may hold several
/// documents) with [`install_crd`]. Returns how many were installed.
pub async fn install_crds_from(client: &Client, dir: &Path, timeout: Duration) -> Result<usize> {
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| Error::io(p.display().to_string(), e));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir.display().to_string(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut n = 0;
    for file in files {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&read(&file)?)
            .map_err(|e| Error::Yaml(format!("{}: {e}", file.display())))?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let crd: CustomResourceDefinition = serde_json::from_value(doc)
                .map_err(|e| Error::Yaml(format!("{}: {e}", file.display())))?;
            install_crd(client, &crd, timeout).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Install this repository's CRDs (`crds/`, what the chart installs).
pub async fn install_garret_crds(client: &Client, timeout: Duration) -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    install_crds_from(client, &dir, timeout).await.map(drop)
}

/// Server-side apply a CRD (field manager `garret-e2e`, forced) and wait until
/// it is `Established`. Returns the established CRD.
pub async fn install_crd(
    client: &Client,
    crd: &CustomResourceDefinition,
    timeout: Duration,
) -> Result<CustomResourceDefinition> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name_any();
    let mut crd = crd.clone();
    crd.metadata.managed_fields = None;
    crd.metadata.resource_version = None;
    api.patch(
        &name,
        &PatchParams::apply("garret-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let established = await_condition(api, &name, conditions::is_crd_established());
    match tokio::time::timeout(timeout, established).await {
        Ok(Ok(Some(crd))) => Ok(crd),
        Ok(Ok(None)) => Err(Error::Yaml(format!(
            "CRD {name} disappeared while waiting for Established"
        ))),
        Ok(Err(e)) => Err(Error::Usage(format!("waiting for CRD {name}: {e}"))),
        Err(_) => Err(Error::Timeout(
            timeout,
            format!("CRD {name} to be Established"),
        )),
    }
}

/// How [`apply_yaml`] applies.
#[derive(Clone, Debug)]
pub struct ApplyYaml<'a> {
    /// Server-side apply field manager.
    pub field_manager: &'a str,
    /// Namespace for namespaced objects that name none.
    pub namespace: &'a str,
    /// Server-side dry run: validated and admitted, never persisted.
    pub dry_run: bool,
    /// Take ownership of conflicting fields.
    pub force: bool,
}

impl Default for ApplyYaml<'_> {
    fn default() -> Self {
        ApplyYaml {
            field_manager: "garret-e2e",
            namespace: "default",
            dry_run: false,
            force: false,
        }
    }
}

/// Server-side apply every document of a multi-document YAML stream, in
/// order, resolving each kind through discovery (so CRDs work once they are
/// established). Empty documents are skipped. Returns the objects as the API
/// server answered them; the first failing document stops the run with an
/// error naming its position, kind and name.
///
/// With `dry_run: true` this is `kubectl apply --server-side --dry-run=server`:
/// the API server validates (schemas, CRD structural schemas, admission)
/// without storing anything.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    opts: &ApplyYaml<'_>,
) -> Result<Vec<DynamicObject>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| Error::Yaml(format!("parse YAML: {e}")))?;
    let mut params = PatchParams::apply(opts.field_manager);
    if opts.force {
        params = params.force();
    }
    if opts.dry_run {
        params = params.dry_run();
    }
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() || doc.as_object().is_some_and(|o| o.is_empty()) {
            continue;
        }
        let at = |msg: String| Error::Yaml(format!("document {}: {msg}", i + 1));
        let obj: DynamicObject =
            serde_json::from_value(doc).map_err(|e| at(format!("not a Kubernetes object: {e}")))?;
        let types = obj
            .types
            .as_ref()
            .ok_or_else(|| at("missing apiVersion/kind".into()))?;
        let gvk = GroupVersionKind::try_from(types)
            .map_err(|e| at(format!("bad apiVersion/kind: {e}")))?;
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or_else(|| at(format!("{} has no metadata.name", gvk.kind)))?;
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|e| at(format!("discover {}/{}: {e}", gvk.api_version(), gvk.kind)))?;
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            let ns = obj.metadata.namespace.as_deref().unwrap_or(opts.namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let applied = api
            .patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|e| at(format!("apply {} {name}: {e}", gvk.kind)))?;
        out.push(applied);
    }
    Ok(out)
}

/// The text of `key` in `secret` (empty when absent or not UTF-8).
pub fn secret_text(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> String {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

/// A finished command's stdout then stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Apply the chart's ClusterRole and its binding as `helm template` renders them (release
/// `garret-operator` in `garret-system`), so a test's operator identity has exactly the
/// chart's grants.
pub async fn apply_chart_rbac(admin: &Client) -> Result<()> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/garret-operator");
    let helm = crate::testbin_dir()?.join("helm");
    let out = std::process::Command::new(&helm)
        .args(["template", "garret-operator"])
        .arg(&chart)
        .args(["--namespace", "garret-system"])
        .output()
        .map_err(|source| Error::Io {
            context: format!("running {}", helm.display()),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Yaml(format!("helm template: {}", output_text(&out))));
    }
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| Error::Yaml(format!("parse the chart's output: {e}")))?;
    let rbac = docs
        .into_iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let opts = ApplyYaml {
        force: true,
        ..Default::default()
    };
    apply_yaml(admin, &rbac, &opts).await.map(drop)
}

/// The identity the chart's ServiceAccount has on the API server.
pub const OPERATOR_USER: &str = "system:serviceaccount:garret-system:garret-operator";

/// A control plane that also knows the operator's identity ([`OPERATOR_USER`], in
/// `system:serviceaccounts`), for tests that run the operator under the chart's RBAC.
pub fn operator_options() -> crate::Options {
    crate::Options::new()
        .identity(crate::Identity::new(OPERATOR_USER).group("system:serviceaccounts"))
}

/// The admin client of `cp`, with the garret CRDs installed (idempotent).
pub async fn admin_with_crds(cp: &crate::ControlPlane, timeout: Duration) -> Result<Client> {
    let admin = cp.admin_client().await?;
    install_garret_crds(&admin, timeout).await?;
    Ok(admin)
}
