//! `spec.gateway` on a real kube-apiserver, with the operator running under the chart's
//! ClusterRole: a cluster without the Gateway API gets every other child and a status that
//! says what is missing; once the Gateway API's own CRDs (sigs.k8s.io/gateway-api, standard
//! channel, from the testbin directory) are installed the HTTPRoute follows without a
//! restart, attached to a real Gateway, with the parentRefs, hostnames, backend and timeouts
//! of the spec; it is server-side dry-run clean, follows spec changes, and is deleted when
//! `spec.gateway` is removed. The CRD refuses obvious mistakes at apply time.

use std::process::{Command, Stdio};
use std::time::Duration;

use garret_e2e::OPERATOR_USER;
use garret_e2e::{testbin_dir, wait_for, ApplyYaml, ControlPlane};
use garret_operator::controller::{self, Settings};
use garret_operator::types::BinaryCache;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

async fn cp() -> &'static ControlPlane {
    let options = garret_e2e::operator_options();
    ControlPlane::shared(options).await.expect("control plane")
}

/// The operator's controllers for one namespace; stopped when dropped.
struct Operator(tokio::task::JoinHandle<()>);

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn start_operator(client: Client, ns: &str) -> Operator {
    let settings = Settings {
        namespace: Some(ns.to_string()),
        rsa_bits: 2048,
        ..Settings::default()
    };
    Operator(tokio::spawn(controller::run(client, settings)))
}

/// `kubectl apply --server-side --dry-run=server` of `yaml` in `ns`: (succeeded, output).
fn dry_run(cp: &ControlPlane, ns: &str, yaml: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(garret_e2e::kubectl())
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["apply", "--server-side", "--dry-run=server"])
        .args([
            "--field-manager=garret-operator",
            "--force-conflicts",
            "-n",
            ns,
        ])
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("kubectl output");
    let warned = String::from_utf8_lossy(&out.stderr).contains("Warning");
    (
        out.status.success() && !warned,
        garret_e2e::output_text(&out),
    )
}

fn binary_cache(spec: Value) -> Value {
    json!({"apiVersion": "garret.dev/v1alpha1", "kind": "BinaryCache", "metadata": {"name": "main"}, "spec": spec})
}

async fn apply_bc(api: &Api<BinaryCache>, value: &Value) -> kube::Result<BinaryCache> {
    api.patch(
        "main",
        &PatchParams::apply("e2e-user").force(),
        &Patch::Apply(value),
    )
    .await
}

fn routes_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "httproutes"),
    )
}

/// The Ready condition of `bc`, once status describes its current generation.
fn ready(bc: &BinaryCache) -> Option<(String, String, String)> {
    let status = bc.status.as_ref()?;
    if status.observed_generation != bc.metadata.generation {
        return None;
    }
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn spec_gateway_renders_an_http_route_once_the_gateway_api_is_installed() {
    let cp = cp().await;
    let admin = garret_e2e::admin_with_crds(cp, T)
        .await
        .expect("admin client and CRDs");
    garret_e2e::apply_chart_rbac(&admin)
        .await
        .expect("apply the chart's RBAC");
    let ns = cp.create_namespace("gw").await.expect("namespace");
    let op_client = cp.client_for(OPERATOR_USER).await.expect("operator client");
    let _op = start_operator(op_client, &ns);
    let caches: Api<BinaryCache> = Api::namespaced(admin.clone(), &ns);
    let gateway = json!({
        "parentRefs": [{"name": "public", "sectionName": "https"}],
        "hostnames": ["cache.example.org", "*.cache.example.org"],
    });
    let spec = json!({"caches": [{"name": "c"}], "gateway": gateway});
    apply_bc(&caches, &binary_cache(spec.clone()))
        .await
        .expect("apply BinaryCache");

    // No Gateway API yet: the other children are there, and status says what is missing.
    let (_, reason, message) = wait_for(T, "status naming the missing Gateway API", || async {
        let bc = caches.get("main").await?;
        Ok(ready(&bc).filter(|(_, reason, _)| reason == "DependencyNotReady"))
    })
    .await
    .expect("status");
    assert!(
        message.contains("Gateway API") && message.contains("HTTPRoute"),
        "{reason}: {message}"
    );
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    assert!(services.get_opt("main").await.expect("get").is_some());

    // The Gateway API's own CRDs, then a Gateway the route attaches to (nothing programs it:
    // the route is checked as the API server stores it).
    let gateway_crds = testbin_dir().expect("testbin").join("gateway-crds");
    assert!(
        gateway_crds.is_dir(),
        "{} missing: `bash tools/k8s-testbin/build.sh` fetches the Gateway API CRDs",
        gateway_crds.display()
    );
    let n = garret_e2e::install_crds_from(&admin, &gateway_crds, T)
        .await
        .expect("install the Gateway API CRDs");
    assert_eq!(n, 3, "GatewayClass, Gateway, HTTPRoute");
    let gateway_yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: garret-e2e}
spec: {controllerName: example.org/garret-e2e}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public}
spec:
  gatewayClassName: garret-e2e
  listeners:
    - name: https
      protocol: HTTPS
      port: 443
      hostname: "*.example.org"
      tls: {certificateRefs: [{name: wildcard-example-org}]}
      allowedRoutes: {namespaces: {from: All}}
"#;
    let opts = ApplyYaml {
        namespace: &ns,
        force: true,
        ..Default::default()
    };
    garret_e2e::apply_yaml(&admin, gateway_yaml, &opts)
        .await
        .expect("apply GatewayClass and Gateway");

    // Picked up on the operator's own retry, no restart and no spec change.
    let routes = routes_api(&admin, &ns);
    let route = wait_for(Duration::from_secs(90), "the HTTPRoute", || async {
        Ok(routes.get_opt("main").await?)
    })
    .await
    .expect("HTTPRoute applied");
    let bc = caches.get("main").await.expect("get BinaryCache");
    let owner = &route.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid), owner.controller),
        ("BinaryCache", bc.metadata.uid.as_ref(), Some(true))
    );
    let spec_of = |r: &DynamicObject| r.data["spec"].clone();
    let s = spec_of(&route);
    // As stored: the API server's defaults filled in (group, kind, weight).
    assert_eq!(
        s["parentRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "sectionName": "https"}])
    );
    assert_eq!(
        s["hostnames"],
        json!(["cache.example.org", "*.cache.example.org"])
    );
    let rule = &s["rules"][0];
    assert_eq!(
        rule["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": "main", "port": 80, "weight": 1}])
    );
    assert_eq!(
        rule["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/"}}])
    );
    assert_eq!(
        rule["timeouts"],
        json!({"request": "3600s", "backendRequest": "3600s"})
    );
    let service = services.get("main").await.expect("Service");
    let port = service.spec.and_then(|s| s.ports).expect("ports")[0].port;
    assert_eq!(json!(port), rule["backendRefs"][0]["port"]);

    // Status moves on, and the endpoint is the route's host (the listener terminates TLS).
    let (_, reason, _) = wait_for(T, "status past the Gateway API wait", || async {
        let bc = caches.get("main").await?;
        Ok(ready(&bc).filter(|(_, reason, _)| reason != "DependencyNotReady"))
    })
    .await
    .expect("status");
    let bc = caches.get("main").await.expect("get");
    let endpoint = bc.status.as_ref().and_then(|s| s.endpoint.clone());
    assert_eq!(
        endpoint.as_deref(),
        Some("https://cache.example.org/"),
        "{reason}"
    );

    // What the operator renders for this object is server-side dry-run clean: no refusal,
    // no warning.
    let v = garret_operator::desired::validate(&bc).expect("valid");
    let rendered = garret_operator::desired::gateway::http_route(&v).expect("route");
    let (clean, out) = dry_run(
        cp,
        &ns,
        &serde_json::to_string(&rendered).expect("serialize"),
    );
    assert!(clean, "dry-run of the rendered HTTPRoute:\n{out}");

    // A spec change reaches the route.
    let mut changed = spec.clone();
    changed["gateway"]["timeouts"] = json!({"request": "2h", "backendRequest": "1h"});
    changed["gateway"]["hostnames"] = json!(["cache.example.org"]);
    apply_bc(&caches, &binary_cache(changed))
        .await
        .expect("apply changed BinaryCache");
    let route = wait_for(T, "the HTTPRoute to follow the spec", || async {
        let r = routes.get("main").await?;
        let t = &r.data["spec"]["rules"][0]["timeouts"];
        Ok((t == &json!({"request": "2h", "backendRequest": "1h"})).then_some(r))
    })
    .await
    .expect("route updated");
    assert_eq!(spec_of(&route)["hostnames"], json!(["cache.example.org"]));

    // Removing spec.gateway (the user's apply no longer has the field) deletes the route.
    let mut without = spec;
    without
        .as_object_mut()
        .expect("spec object")
        .remove("gateway");
    apply_bc(&caches, &binary_cache(without))
        .await
        .expect("apply without gateway");
    assert!(caches
        .get("main")
        .await
        .expect("get")
        .spec
        .gateway
        .is_none());
    wait_for(T, "the HTTPRoute to be deleted", || async {
        Ok(routes.get_opt("main").await?.is_none().then_some(()))
    })
    .await
    .expect("route deleted");
    let bc = wait_for(T, "status after the route is gone", || async {
        let bc = caches.get("main").await?;
        Ok(ready(&bc).map(|_| bc))
    })
    .await
    .expect("status");
    assert_eq!(
        bc.status.and_then(|s| s.endpoint).as_deref(),
        Some(format!("http://main.{ns}.svc/").as_str())
    );
}

#[tokio::test]
async fn the_crd_refuses_obvious_gateway_mistakes_at_apply_time() {
    let cp = cp().await;
    let admin = garret_e2e::admin_with_crds(cp, T)
        .await
        .expect("admin client and CRDs");
    let ns = cp.create_namespace("gw-rules").await.expect("namespace");
    let caches: Api<BinaryCache> = Api::namespaced(admin.clone(), &ns);
    let cases = [
        (json!({"parentRefs": []}), "spec.gateway.parentRefs"),
        (json!({"hostnames": ["cache.example.org"]}), "parentRefs"),
        (
            json!({"parentRefs": [{"name": ""}]}),
            "spec.gateway.parentRefs[0].name",
        ),
        (
            json!({"parentRefs": [{"name": "gw", "namespace": "Not_A_Namespace"}]}),
            "spec.gateway.parentRefs[0].namespace",
        ),
        (
            json!({"parentRefs": [{"name": "gw"}], "hostnames": ["Cache.Example.org"]}),
            "spec.gateway.hostnames[0]",
        ),
        (
            json!({"parentRefs": [{"name": "gw"}], "hostnames": ["cache.example.org:443"]}),
            "spec.gateway.hostnames[0]",
        ),
        (
            json!({"parentRefs": [{"name": "gw"}], "hostnames": ["cache.example.org", "a.*.example.org"]}),
            "spec.gateway.hostnames[1]",
        ),
        (
            json!({"parentRefs": [{"name": "gw"}], "timeouts": {"request": "1d"}}),
            "spec.gateway.timeouts.request",
        ),
        (
            json!({"parentRefs": [{"name": "gw"}], "timeouts": {"request": "10m", "backendRequest": "1h"}}),
            "timeouts.backendRequest must not be longer than timeouts.request",
        ),
    ];
    for (gateway, needle) in cases {
        let err = apply_bc(&caches, &binary_cache(json!({"gateway": gateway.clone()})))
            .await
            .expect_err(&format!("{gateway} was accepted"));
        let msg = err.to_string();
        assert!(msg.contains(needle), "{gateway}: {msg}");
    }
    // What the rules allow: wildcards, a disabled request timeout with a backend one.
    let ok = json!({"parentRefs": [{"name": "gw"}], "hostnames": ["*.example.org"], "timeouts": {"request": "0s", "backendRequest": "1h"}});
    let bc = apply_bc(&caches, &binary_cache(json!({"gateway": ok})))
        .await
        .expect("a valid gateway spec is accepted");
    garret_operator::desired::validate(&bc).expect("the operator accepts it too");
    assert!(
        bc.spec.gateway.is_some_and(|g| g.tls),
        "tls defaults to true"
    );
}
