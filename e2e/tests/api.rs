//! The harness against a real kube-apiserver: CRDs, server-side apply, status
//! subresource, watches, server-side dry run and RBAC. One control plane
//! (etcd + kube-apiserver) for this test binary, one namespace per test.

use std::time::Duration;

use futures::TryStreamExt;
use garret_e2e::{apply_yaml, install_crd, wait_for, ApplyYaml, ControlPlane, Identity, Options};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const RESTRICTED: &str = "e2e-restricted";
const T: Duration = Duration::from_secs(30);

/// A test-only custom resource with a status subresource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "e2e.garret.dev",
    version = "v1alpha1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
#[serde(rename_all = "camelCase")]
struct WidgetSpec {
    size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct WidgetStatus {
    ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_generation: Option<i64>,
}

async fn cp() -> &'static ControlPlane {
    let options = Options::new().identity(Identity::new(RESTRICTED).group("garret:e2e-restricted"));
    ControlPlane::shared(options)
        .await
        .expect("start control plane")
}

/// Every test calls this; the apply is idempotent.
async fn widget_crd(client: &Client) -> CustomResourceDefinition {
    install_crd(client, &Widget::crd(), T)
        .await
        .expect("install Widget CRD")
}

fn widget(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "e2e.garret.dev/v1alpha1",
        "kind": "Widget",
        "metadata": { "name": name },
        "spec": spec,
    })
}

async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<watcher::Event<Widget>>,
) -> watcher::Event<Widget> {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("event in time")
        .expect("stream open")
}

fn api_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn crd_is_established_and_its_schema_enforced() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("admin client");
    let crd = widget_crd(&client).await;
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        "{conditions:?}"
    );

    let ns = cp.create_namespace("crd").await.expect("namespace");
    let api: Api<Widget> = Api::namespaced(client.clone(), &ns);
    // A well-typed object is accepted...
    api.create(
        &PostParams::default(),
        &Widget::new(
            "ok",
            WidgetSpec {
                size: 1,
                color: None,
            },
        ),
    )
    .await
    .expect("create valid Widget");
    // ...a wrong type is rejected by the structural schema (422).
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        &ns,
        &kube::discovery::ApiResource::erase::<Widget>(&()),
    );
    let bad: kube::api::DynamicObject =
        serde_json::from_value(widget("bad", json!({ "size": "big" }))).expect("object");
    let err = raw
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("schema must reject");
    assert_eq!(api_code(&err), Some(422), "{err}");
}

#[tokio::test]
async fn create_server_side_apply_with_conflicts_and_read() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("admin client");
    widget_crd(&client).await;
    let ns = cp.create_namespace("ssa").await.expect("namespace");
    let api: Api<Widget> = Api::namespaced(client, &ns);

    // Plain create and read back.
    api.create(
        &PostParams::default(),
        &Widget::new(
            "created",
            WidgetSpec {
                size: 7,
                color: None,
            },
        ),
    )
    .await
    .expect("create");
    assert_eq!(api.get("created").await.expect("get").spec.size, 7);

    // alice applies size + color.
    let alice = PatchParams::apply("alice");
    api.patch(
        "w",
        &alice,
        &Patch::Apply(widget("w", json!({ "size": 1, "color": "red" }))),
    )
    .await
    .expect("alice applies");

    // bob applies a different size: conflict with alice's ownership (409).
    let bob_patch = Patch::Apply(widget("w", json!({ "size": 2 })));
    let err = api
        .patch("w", &PatchParams::apply("bob"), &bob_patch)
        .await
        .expect_err("bob must conflict without force");
    assert_eq!(api_code(&err), Some(409), "{err}");
    assert!(
        err.to_string().contains("alice"),
        "conflict names the owner: {err}"
    );
    assert_eq!(
        api.get("w").await.expect("get").spec.size,
        1,
        "nothing changed"
    );

    // With force, bob takes spec.size; alice keeps spec.color.
    let w = api
        .patch("w", &PatchParams::apply("bob").force(), &bob_patch)
        .await
        .expect("bob forces");
    assert_eq!(
        w.spec,
        WidgetSpec {
            size: 2,
            color: Some("red".into())
        }
    );

    let read = api.get("w").await.expect("get");
    let owners = |field: &str| -> Vec<String> {
        read.managed_fields()
            .iter()
            .filter(|m| {
                m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.pointer(&format!("/f:spec/f:{field}")).is_some())
            })
            .filter_map(|m| m.manager.clone())
            .collect()
    };
    assert_eq!(owners("size"), vec!["bob".to_string()]);
    assert_eq!(owners("color"), vec!["alice".to_string()]);
}

#[tokio::test]
async fn status_goes_through_the_status_subresource() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("admin client");
    widget_crd(&client).await;
    let ns = cp.create_namespace("status").await.expect("namespace");
    let api: Api<Widget> = Api::namespaced(client, &ns);

    let mut w = Widget::new(
        "s",
        WidgetSpec {
            size: 3,
            color: None,
        },
    );
    w.status = Some(WidgetStatus {
        ready: true,
        observed_generation: Some(99),
    });
    let created = api
        .create(&PostParams::default(), &w)
        .await
        .expect("create");
    // Status sent to the main resource is dropped.
    assert_eq!(created.status, None, "status must be ignored on create");
    let generation = created.metadata.generation.expect("generation");

    let status = json!({
        "apiVersion": "e2e.garret.dev/v1alpha1",
        "kind": "Widget",
        "status": { "ready": true, "observedGeneration": generation },
    });
    let patched = api
        .patch_status(
            "s",
            &PatchParams::apply("garret-e2e-status"),
            &Patch::Apply(status),
        )
        .await
        .expect("patch status");
    assert_eq!(
        patched.status,
        Some(WidgetStatus {
            ready: true,
            observed_generation: Some(generation)
        })
    );
    // A status write does not bump the generation and leaves the spec alone.
    let read = api.get("s").await.expect("get");
    assert_eq!(read.metadata.generation, Some(generation));
    assert_eq!(read.spec.size, 3);
    assert_eq!(read.status.map(|s| s.ready), Some(true));

    // And a spec write through the main resource does not touch status.
    let after = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": 4 }, "status": { "ready": false } })),
        )
        .await
        .expect("merge patch");
    assert_eq!(after.spec.size, 4);
    assert_eq!(after.metadata.generation, Some(generation + 1));
    assert_eq!(after.status.map(|s| s.ready), Some(true));
}

#[tokio::test]
async fn watcher_sees_apply_and_delete() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("admin client");
    widget_crd(&client).await;
    let ns = cp.create_namespace("watch").await.expect("namespace");
    let api: Api<Widget> = Api::namespaced(client, &ns);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(api.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.try_next().await.expect("watch stream") {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    // The initial list of an empty namespace.
    loop {
        if matches!(next(&mut rx).await, watcher::Event::InitDone) {
            break;
        }
    }

    api.create(
        &PostParams::default(),
        &Widget::new(
            "w",
            WidgetSpec {
                size: 1,
                color: None,
            },
        ),
    )
    .await
    .expect("create");
    match next(&mut rx).await {
        watcher::Event::Apply(w) => assert_eq!((w.name_any(), w.spec.size), ("w".into(), 1)),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "size": 2 } })),
    )
    .await
    .expect("patch");
    match next(&mut rx).await {
        watcher::Event::Apply(w) => assert_eq!(w.spec.size, 2),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("w", &DeleteParams::default())
        .await
        .expect("delete");
    match next(&mut rx).await {
        watcher::Event::Delete(w) => assert_eq!(w.name_any(), "w"),
        other => panic!("expected Delete, got {other:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn multi_document_yaml_server_side_dry_run() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("admin client");
    widget_crd(&client).await;
    let ns = cp.create_namespace("dryrun").await.expect("namespace");

    let good = r#"
# comment-only and empty documents are skipped
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  a: "1"
---
apiVersion: e2e.garret.dev/v1alpha1
kind: Widget
metadata:
  name: gadget
spec:
  size: 5
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: garret-e2e-dry-run-only
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
---
"#;
    let opts = ApplyYaml {
        namespace: &ns,
        dry_run: true,
        ..ApplyYaml::default()
    };
    let applied = apply_yaml(&client, good, &opts)
        .await
        .expect("valid YAML passes dry run");
    let kinds: Vec<String> = applied
        .iter()
        .map(|o| o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["ConfigMap", "Widget", "ClusterRole"]);
    // Dry run stores nothing.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(cms.get_opt("settings").await.expect("get").is_none());
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);
    assert!(widgets.get_opt("gadget").await.expect("get").is_none());
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    assert!(roles
        .get_opt("garret-e2e-dry-run-only")
        .await
        .expect("get")
        .is_none());

    // The server rejects what only it can check: a CRD schema violation in
    // document 2 and an invalid object name in document 3.
    let bad_schema = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\n---\n\
                      apiVersion: e2e.garret.dev/v1alpha1\nkind: Widget\nmetadata: {name: w}\nspec: {size: big}\n";
    let err = apply_yaml(&client, bad_schema, &opts)
        .await
        .expect_err("schema violation");
    let msg = err.to_string();
    assert!(
        msg.starts_with("document 2:") && msg.contains("spec.size"),
        "{msg}"
    );

    let bad_name = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok2}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Not_Valid}\n";
    let err = apply_yaml(&client, bad_name, &opts)
        .await
        .expect_err("invalid name");
    assert!(err.to_string().starts_with("document 3:"), "{err}");

    // An unknown kind fails discovery.
    let unknown = "apiVersion: e2e.garret.dev/v1alpha1\nkind: Gizmo\nmetadata: {name: g}\n";
    let err = apply_yaml(&client, unknown, &opts)
        .await
        .expect_err("unknown kind");
    assert!(err.to_string().contains("Gizmo"), "{err}");
}

#[tokio::test]
async fn rbac_denies_restricted_identity_until_bound() {
    let cp = cp().await;
    let admin = cp.admin_client().await.expect("admin client");
    let ns = cp.create_namespace("rbac").await.expect("namespace");
    let restricted = cp.client_for(RESTRICTED).await.expect("restricted client");
    let as_restricted: Api<ConfigMap> = Api::namespaced(restricted.clone(), &ns);

    let err = as_restricted
        .list(&Default::default())
        .await
        .expect_err("no RBAC yet: forbidden");
    assert_eq!(api_code(&err), Some(403), "{err}");
    assert!(err.to_string().contains(RESTRICTED), "{err}");

    // Let the group read ConfigMaps in this namespace only.
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &Role {
                metadata: ObjectMeta {
                    name: Some("cm-reader".into()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".into()]),
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create Role");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta {
                    name: Some("cm-reader".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "cm-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "Group".into(),
                    name: "garret:e2e-restricted".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create RoleBinding");

    // The authorizer's cache catches up within moments.
    let listed = wait_for(T, "restricted identity allowed to list", || {
        let api = as_restricted.clone();
        async move {
            match api.list(&Default::default()).await {
                Ok(list) => Ok(Some(list)),
                Err(e) if api_code(&e) == Some(403) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await
    .expect("allowed after binding");
    assert!(listed
        .items
        .iter()
        .all(|cm| cm.namespace().as_deref() == Some(ns.as_str())));

    // Still read-only, and still nothing in other namespaces.
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("nope".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = as_restricted
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("create not granted");
    assert_eq!(api_code(&err), Some(403), "{err}");
    let elsewhere: Api<ConfigMap> = Api::namespaced(restricted, "default");
    let err = elsewhere
        .list(&Default::default())
        .await
        .expect_err("other namespace");
    assert_eq!(api_code(&err), Some(403), "{err}");
}

#[tokio::test]
async fn unknown_identity_is_a_clear_error() {
    let cp = cp().await;
    let Err(err) = cp.client_for("nobody").await else {
        panic!("unknown identity must be an error");
    };
    assert!(err.to_string().contains("Options::identity"), "{err}");
    // Without a controller manager, nothing deletes owned objects: see
    // tests/controller_manager.rs for garbage collection.
    assert!(!cp.has_controller_manager());
}

#[tokio::test]
async fn own_control_plane_is_torn_down_on_drop() {
    let cp = ControlPlane::start(Options::new())
        .await
        .expect("start a second control plane");
    let dir = cp.dir().to_path_buf();
    let addr = cp.url().trim_start_matches("https://").to_string();
    let client = cp.admin_client().await.expect("admin client");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.git_version, format!("v{}", garret_e2e::K8S_VERSION));
    assert!(dir.join("kube-apiserver.log").exists());
    drop(client);
    drop(cp);
    assert!(!dir.exists(), "{} removed", dir.display());
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "kube-apiserver on {addr} is gone"
    );
}
