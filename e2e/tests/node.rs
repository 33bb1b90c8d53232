//! Real pods on the harness's node: a Deployment serving HTTP on its pod IPs
//! and through a Service, a PersistentVolumeClaim whose data outlives its
//! pod, and a pod reaching the API server with its ServiceAccount token
//! through the `kubernetes` Service. One node for this test binary.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use garret_e2e::{wait_for, LocalImage, Node, Options, STORAGE_CLASS};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const BUSYBOX: &str = "local.test/busybox:e2e";
const CURL: &str = "local.test/curl:e2e";

async fn node() -> &'static Node {
    Node::shared(Options::new()).await.expect("start the node")
}

fn busybox() -> LocalImage {
    LocalImage::new(BUSYBOX)
        .file("/bin/busybox", "/bin/busybox")
        .text("/www/index.html", "hello from a real pod\n")
        .dir("/data")
        .entrypoint(["/bin/busybox"])
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

/// A pod that runs `script` under busybox sh once and exits.
fn run_once(name: &str, image: &str, script: &str, volumes: serde_json::Value) -> Pod {
    from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never",
                "command": ["/bin/busybox", "sh", "-c", script],
                "volumeMounts": if volumes.is_null() { json!([]) } else { json!([{ "name": "data", "mountPath": "/data" }]) },
            }],
            "volumes": if volumes.is_null() { json!([]) } else { json!([{ "name": "data", "persistentVolumeClaim": { "claimName": volumes } }]) },
        }
    }))
}

/// Wait until the pod has terminated; return its phase and the main
/// container's termination message.
async fn finished(pods: &Api<Pod>, name: &str) -> (String, String) {
    wait_for(WAIT, &format!("pod {name} to finish"), || async {
        let pod = pods.get(name).await?;
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase != "Succeeded" && phase != "Failed" {
            return Ok(None);
        }
        let message = pod
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .and_then(|t| t.message)
            .unwrap_or_default();
        Ok(Some((phase, message)))
    })
    .await
    .expect("pod finishes")
}

async fn gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(WAIT, &format!("{name} to be deleted"), || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
    .expect("deleted");
}

/// `curl` run in the node's netns; the body on success.
fn curl(node: &Node, url: &str) -> Option<String> {
    let out = node
        .command("curl")
        .args(["-fsS", "--max-time", "5", url])
        .output()
        .expect("run curl in the node's netns");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn deployment_serves_http_on_pod_ips_and_through_its_service() {
    let node = node().await;
    node.load_image(&busybox()).expect("import busybox image");
    let client = node.admin_client().await.expect("client");
    let ns = node.create_namespace("web").await.expect("namespace");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = from_json(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "web", "image": BUSYBOX, "imagePullPolicy": "Never",
                        // Each pod serves its own name, so both are seen to answer.
                        "command": ["/bin/busybox", "sh", "-c",
                            "/bin/busybox hostname > /www/name && exec /bin/busybox httpd -f -p 8080 -h /www"],
                        "ports": [{ "containerPort": 8080 }],
                        "readinessProbe": { "httpGet": { "path": "/", "port": 8080 }, "periodSeconds": 1 },
                    }],
                }
            }
        }
    }));
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    wait_for(WAIT, "deployment web 2/2 available", || async {
        let d = deployments.get("web").await?;
        let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
        Ok((available == 2).then_some(()))
    })
    .await
    .expect("deployment available");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list pods");
    let mut names = BTreeSet::new();
    let mut served = BTreeSet::new();
    for pod in list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP");
        assert!(
            ip.starts_with("10.244.0."),
            "pod IP {ip} not from the CNI bridge"
        );
        names.insert(pod.metadata.name.clone().unwrap_or_default());
        let index = curl(node, &format!("http://{ip}:8080/")).expect("GET / on the pod IP");
        assert_eq!(index, "hello from a real pod\n");
        served.insert(
            curl(node, &format!("http://{ip}:8080/name"))
                .expect("GET /name")
                .trim()
                .to_string(),
        );

        // The same pod from the test process, through a loopback forward.
        let addr: SocketAddr = format!("{ip}:8080").parse().expect("pod address");
        let forward = node.forward(addr).expect("port forward");
        let mut s = std::net::TcpStream::connect(forward.local_addr()).expect("connect forward");
        s.write_all(b"GET /name HTTP/1.0\r\n\r\n").expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(
            answer.ends_with(&format!(
                "{}\n",
                pod.metadata.name.clone().unwrap_or_default()
            )),
            "{answer}"
        );
    }
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(served, names, "each pod serves its own name");

    // A ClusterIP Service in front of them, through kube-proxy's rules.
    let services: Api<Service> = Api::namespaced(client, &ns);
    let svc: Service = from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web" },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] }
    }));
    let svc = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
    let url = format!("http://{ip}/name");
    let seen = wait_for(WAIT, "the Service to answer", || async {
        Ok(curl(node, &url).map(|s| s.trim().to_string()))
    })
    .await
    .expect("service answers");
    assert!(names.contains(&seen), "{seen} not one of {names:?}");

    deployments
        .delete("web", &DeleteParams::foreground())
        .await
        .expect("delete deployment");
    gone(&deployments, "web").await;
    wait_for(WAIT, "the deployment's pods to be deleted", || async {
        let left = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await
    .expect("pods deleted with their deployment");
}

#[tokio::test]
async fn pvc_binds_and_its_data_outlives_the_pod() {
    let node = node().await;
    node.load_image(&busybox()).expect("import busybox image");
    let client = node.admin_client().await.expect("client");
    let ns = node.create_namespace("pvc").await.expect("namespace");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvc: PersistentVolumeClaim = from_json(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "data" },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "64Mi" } } }
    }));
    let created = pvcs
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create pvc");
    // The DefaultStorageClass admission plugin filled in the node's class.
    assert_eq!(
        created.spec.and_then(|s| s.storage_class_name).as_deref(),
        Some(STORAGE_CLASS)
    );
    let volume = wait_for(WAIT, "pvc data to be Bound", || async {
        let p = pvcs.get("data").await?;
        let bound = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        Ok(bound.then(|| p.spec.and_then(|s| s.volume_name).unwrap_or_default()))
    })
    .await
    .expect("pvc bound");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let token = format!("written-by-writer-{}", std::process::id());
    let writer = run_once(
        "writer",
        BUSYBOX,
        &format!("echo {token} > /data/file"),
        json!("data"),
    );
    pods.create(&PostParams::default(), &writer)
        .await
        .expect("create writer");
    let (phase, _) = finished(&pods, "writer").await;
    assert_eq!(phase, "Succeeded");
    pods.delete("writer", &DeleteParams::default())
        .await
        .expect("delete writer");
    gone(&pods, "writer").await;

    let reader = run_once(
        "reader",
        BUSYBOX,
        "/bin/busybox cat /data/file > /dev/termination-log",
        json!("data"),
    );
    pods.create(&PostParams::default(), &reader)
        .await
        .expect("create reader");
    let (phase, message) = finished(&pods, "reader").await;
    assert_eq!(phase, "Succeeded", "{message}");
    assert_eq!(message.trim(), token, "data written by the deleted pod");

    // The volume is a directory of the node; deleting the claim removes both.
    let pvs: Api<PersistentVolume> = Api::all(client);
    let pv = pvs.get(&volume).await.expect("pv");
    let path = pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| h.path)
        .expect("hostPath volume");
    assert!(
        path.starts_with(&*node.volumes_dir().to_string_lossy()),
        "{path}"
    );
    let on_disk = std::fs::read_to_string(format!("{path}/file")).expect("file on the node");
    assert_eq!(on_disk.trim(), token);
    pods.delete("reader", &DeleteParams::default())
        .await
        .expect("delete reader");
    gone(&pods, "reader").await;
    pvcs.delete("data", &DeleteParams::default())
        .await
        .expect("delete pvc");
    gone(&pvcs, "data").await;
    gone(&pvs, &volume).await;
    assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
}

#[tokio::test]
async fn pod_reaches_the_api_server_with_its_service_account_token() {
    let node = node().await;
    let curl_image = LocalImage::new(CURL)
        .file("/bin/busybox", "/bin/busybox")
        .binary_with_libs("/usr/bin/curl", "/usr/bin/curl")
        .expect("curl and its libraries");
    node.load_image(&curl_image).expect("import curl image");
    let client = node.admin_client().await.expect("client");
    let ns = node.create_namespace("sa").await.expect("namespace");
    // In-cluster configuration exactly as a client library reads it: the
    // injected KUBERNETES_SERVICE_* variables and the projected token.
    let script = r#"SA=/var/run/secrets/kubernetes.io/serviceaccount
exec /usr/bin/curl -sS --fail-with-body --max-time 20 --cacert $SA/ca.crt \
  -H "Authorization: Bearer $(/bin/busybox cat $SA/token)" -H 'Content-Type: application/json' \
  -d '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \
  -o /dev/termination-log \
  https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews"#;
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    pods.create(
        &PostParams::default(),
        &run_once("whoami", CURL, script, serde_json::Value::Null),
    )
    .await
    .expect("create pod");
    let (phase, message) = finished(&pods, "whoami").await;
    assert_eq!(phase, "Succeeded", "{message}");
    let review: serde_json::Value = serde_json::from_str(&message).expect("JSON answer");
    assert_eq!(
        review["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{ns}:default"),
        "{review}"
    );
}
