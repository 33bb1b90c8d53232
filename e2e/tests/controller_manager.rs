//! With kube-controller-manager: garbage collection of owned objects and
//! namespace deletion. One control plane (etcd + kube-apiserver +
//! kube-controller-manager) for this test binary.

use std::time::Duration;

use garret_e2e::{wait_for, ControlPlane, Options};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::Resource;

const GC: Duration = Duration::from_secs(90);

async fn cp() -> &'static ControlPlane {
    ControlPlane::shared(Options::new().with_controller_manager())
        .await
        .expect("start control plane with kube-controller-manager")
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                    uid: o.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn owned_config_map_is_garbage_collected_with_its_owner() {
    let cp = cp().await;
    assert!(cp.has_controller_manager());
    let client = cp.admin_client().await.expect("admin client");
    let ns = cp.create_namespace("gc").await.expect("namespace");
    let api: Api<ConfigMap> = Api::namespaced(client, &ns);

    let owner = api
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .expect("create owner");
    assert!(owner.meta().uid.is_some());
    api.create(&PostParams::default(), &config_map("owned", Some(&owner)))
        .await
        .expect("create owned");
    api.create(&PostParams::default(), &config_map("bystander", None))
        .await
        .expect("create bystander");

    // While the owner lives, the garbage collector leaves the child alone. To know the
    // collector has looked (rather than sleeping and hoping), a probe created after the
    // child names an owner that does not exist: the collector handles events in order, so
    // once it has removed the probe it has seen the child and its live owner.
    let mut ghost = config_map("ghost-owner", None);
    ghost.metadata.uid = Some("00000000-0000-4000-8000-00000000dead".into());
    api.create(&PostParams::default(), &config_map("probe", Some(&ghost)))
        .await
        .expect("create probe");
    wait_for(GC, "the probe with a missing owner to be collected", || {
        let api = api.clone();
        async move { Ok(api.get_opt("probe").await?.is_none().then_some(())) }
    })
    .await
    .expect("probe collected");
    assert!(
        api.get_opt("owned").await.expect("get").is_some(),
        "a child whose owner lives is kept"
    );

    api.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    wait_for(GC, "owned ConfigMap to be garbage collected", || {
        let api = api.clone();
        async move { Ok(api.get_opt("owned").await?.is_none().then_some(())) }
    })
    .await
    .expect("garbage collected");
    assert!(
        api.get_opt("bystander").await.expect("get").is_some(),
        "unowned objects survive"
    );
}

#[tokio::test]
async fn namespaces_get_service_accounts_and_can_be_deleted() {
    let cp = cp().await;
    let client = cp.admin_client().await.expect("admin client");
    let ns = cp.create_namespace("nsdel").await.expect("namespace");

    // The ServiceAccount controller creates `default` in every namespace.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    wait_for(GC, "default ServiceAccount", || {
        let sas = sas.clone();
        async move { Ok(sas.get_opt("default").await?) }
    })
    .await
    .expect("default ServiceAccount");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &config_map("content", None))
        .await
        .expect("create content");

    // The namespace controller empties and finalizes a deleted namespace.
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    wait_for(GC, "namespace to be finalized", || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) }
    })
    .await
    .expect("namespace gone");
}

#[tokio::test]
async fn deployment_gets_a_replica_set_and_pending_pods() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Pod;

    let cp = cp().await;
    let client = cp.admin_client().await.expect("admin client");
    let ns = cp.create_namespace("deploy").await.expect("namespace");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] },
            },
        },
    }))
    .expect("deployment");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let rs = wait_for(GC, "ReplicaSet owned by the Deployment", || {
        let replica_sets = replica_sets.clone();
        async move {
            Ok(replica_sets
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .next())
        }
    })
    .await
    .expect("replica set");
    let owner = rs.metadata.owner_references.unwrap_or_default();
    assert_eq!(owner.first().map(|o| o.uid.clone()), created.metadata.uid);

    // No scheduler, no kubelet: the pods exist and stay Pending.
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pending = wait_for(GC, "two Pods from the ReplicaSet", || {
        let pods = pods.clone();
        async move {
            let items = pods.list(&Default::default()).await?.items;
            Ok((items.len() == 2).then_some(items))
        }
    })
    .await
    .expect("pods");
    for pod in pending {
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
        assert_eq!(pod.spec.and_then(|s| s.node_name), None);
    }
}
