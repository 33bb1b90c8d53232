//! The product's story, end to end, with real pods: `helm install` the operator chart with
//! the locally built operator image, `kubectl apply -f docs/cache.yaml`, then push with the
//! CI token's Secret and substitute with real Nix through a reverse proxy configured from the
//! Ingress the operator rendered — and the data survives pod deletion, a rolling update and
//! the BinaryCache's deletion and re-creation.
//!
//! The scenario is written once against [`Cluster`]: the harness's own [`Node`] by default,
//! or any cluster named by `GARRET_E2E_KUBECONFIG` whose node already has the two images
//! (`e2e/kind/run.sh` does that with kind). Clients (the `garret` CLI, Nix, nginx as the
//! ingress controller) run where the cluster's Service IPs are reachable, with a private
//! `/etc/hosts` that maps the Ingress host to the proxy — the only stand-in for DNS.
//!
//! Every wait polls observable state (conditions, pod readiness, HTTP answers); nothing
//! sleeps to synchronise and nothing asserts on time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use garret_e2e::{build_images, default_bin_dir, testbin_dir, wait_for, Node, Options};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;

/// Generous: the first rollout pulls nothing but starts garretd, runs migrations and
/// generates keys on a shared 2-core machine.
const T: Duration = Duration::from_secs(300);
/// The documented bound from `kubectl delete cachetoken` to 401 (docs/operator.md), with
/// room for a loaded CI machine; the mounted list alone takes about a minute.
const REVOKED_WITHIN: Duration = Duration::from_secs(20);
const HOST: &str = "cache.garret.test";
const OPERATOR_NS: &str = "garret-system";

// Nix's hermetic client configuration and the two-derivation closure (with a 3 MB file, so
// a push passes nginx's default 1 MiB body limit only when it is raised) are the server
// tests' own.
#[path = "../../server/garretd/tests/common/nix.rs"]
#[allow(dead_code)]
mod nix;
#[path = "../../server/garretd/tests/common/skip.rs"]
#[allow(dead_code)]
mod skip;
use nix::NIX_CONF;

/// Where the scenario runs: what differs between the harness's node and another cluster.
enum Cluster {
    Harness(&'static Node),
    External { kubeconfig: PathBuf },
}

impl Cluster {
    async fn get() -> Cluster {
        if let Some(kc) = std::env::var_os("GARRET_E2E_KUBECONFIG") {
            return Cluster::External {
                kubeconfig: PathBuf::from(kc),
            };
        }
        let node = Node::shared(Options::new()).await.expect("node");
        let images = build_images(&default_bin_dir().expect("bin dir")).expect("images");
        for image in [&images.garretd, &images.operator] {
            node.import_image(&image.archive).expect("import image");
        }
        Cluster::Harness(node)
    }

    fn kubeconfig(&self) -> PathBuf {
        match self {
            Cluster::Harness(node) => node.control_plane().kubeconfig_path(),
            Cluster::External { kubeconfig } => kubeconfig.clone(),
        }
    }

    async fn client(&self) -> Client {
        match self {
            Cluster::Harness(node) => node.admin_client().await.expect("client"),
            Cluster::External { kubeconfig } => {
                let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
                let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .expect("kubeconfig");
                Client::try_from(cfg).expect("client")
            }
        }
    }

    async fn namespace(&self, prefix: &str) -> String {
        match self {
            Cluster::Harness(node) => node.create_namespace(prefix).await.expect("namespace"),
            Cluster::External { .. } => {
                let ns = format!("{prefix}-{}", std::process::id());
                kubectl(self, &["create", "namespace", &ns]);
                ns
            }
        }
    }

    /// `program` where Service cluster IPs are reachable.
    fn command(&self, program: &str) -> Command {
        match self {
            Cluster::Harness(node) => node.command(program),
            Cluster::External { .. } => Command::new(program),
        }
    }

    /// Where the proxy reaches Service `svc` (port 80): its cluster IP on the harness's node;
    /// elsewhere a `kubectl port-forward` on a fixed loopback port, (re)started by
    /// [`Upstream::refresh`] whenever the pods behind it changed.
    fn upstream(&self, ns: &str, svc: &Service) -> Upstream {
        match self {
            Cluster::Harness(_) => {
                let spec = svc.spec.as_ref().expect("service spec");
                let port = spec.ports.as_ref().and_then(|p| p.first()).map(|p| p.port);
                Upstream {
                    addr: format!(
                        "{}:{}",
                        spec.cluster_ip.clone().expect("cluster IP"),
                        port.expect("service port")
                    ),
                    forward: None,
                }
            }
            Cluster::External { kubeconfig } => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("free port")
                    .port();
                let mut up = Upstream {
                    addr: format!("127.0.0.1:{port}"),
                    forward: Some(Forward {
                        cmd: vec![
                            garret_e2e::kubectl().to_string_lossy().into_owned(),
                            format!("--kubeconfig={}", kubeconfig.display()),
                            "port-forward".into(),
                            "-n".into(),
                            ns.into(),
                            format!("svc/{}", svc.metadata.name.clone().unwrap_or_default()),
                            format!("{port}:80"),
                        ],
                        child: None,
                    }),
                };
                up.refresh();
                up
            }
        }
    }

    fn helm(&self) -> PathBuf {
        match self {
            Cluster::Harness(_) => testbin_dir().expect("testbin").join("helm"),
            Cluster::External { .. } => PathBuf::from("helm"),
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    let out = Command::new(garret_e2e::kubectl())
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl");
    check(&format!("kubectl {}", args.join(" ")), out)
}

/// The clients' side: a private directory with Nix's and garret's configuration, and a
/// hosts file naming the proxy.
struct Clients<'a> {
    cluster: &'a Cluster,
    dir: PathBuf,
    hosts: PathBuf,
    /// Loopback address of this test's proxy (tests share the node's netns).
    addr: &'static str,
}

impl Clients<'_> {
    /// Clients for which `host` (an Ingress host or a Service's DNS name) is the local
    /// proxy, listening on `addr`.
    fn new<'a>(cluster: &'a Cluster, dir: &Path, host: &str, addr: &'static str) -> Clients<'a> {
        for d in ["conf", "cache", "home", "xdg"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        std::fs::write(dir.join("conf/nix.conf"), NIX_CONF).expect("nix.conf");
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, format!("127.0.0.1 localhost\n{addr} {host}\n")).expect("hosts");
        Clients {
            cluster,
            dir: dir.to_path_buf(),
            hosts,
            addr,
        }
    }

    /// `program` with the private hosts file bind-mounted over `/etc/hosts` in a mount
    /// namespace of its own, and a hermetic Nix and garret configuration.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.cluster.command("unshare");
        c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&self.hosts)
            .arg(program)
            .env("NIX_CONF_DIR", self.dir.join("conf"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("HOME", self.dir.join("home"))
            .env("XDG_CONFIG_HOME", self.dir.join("xdg"))
            .env_remove("NIX_REMOTE")
            .env_remove("GARRET_TOKEN")
            .env_remove("GARRET_SERVER")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        let program = program.as_ref().to_os_string();
        let out = self
            .cmd(&program)
            .args(args)
            .output()
            .expect("spawn client");
        eprintln!(
            "$ {} {}\n{}{}",
            program.to_string_lossy(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
        let what = format!("{} {}", program.as_ref().to_string_lossy(), args.join(" "));
        check(&what, self.run(program, args))
    }

    fn store(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// The `garret` client with its local Nix pointed at chroot store `store`.
    fn garret(&self, store: &str, args: &[&str]) -> Output {
        let garret = default_bin_dir().expect("bin dir").join("garret");
        let mut c = self.cmd(&garret);
        c.env("NIX_REMOTE", format!("local?root={store}"))
            .args(args);
        let out = c.output().expect("spawn garret");
        eprintln!(
            "$ garret {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The server tests' two-derivation closure, built locally (no network needed, so
    /// the harness's own Nix runner does it in this client directory).
    fn build_two(&self, store: &str, nonce: &str) -> String {
        nix::Nix {
            root: self.dir.clone(),
        }
        .build_two(store, nonce)
    }

    /// Realise `path` into a fresh chroot store `store`, substituting from `url` only,
    /// trusting only `key`.
    fn substitute(
        &self,
        store: &str,
        path: &str,
        url: &str,
        key: &str,
        netrc: Option<&Path>,
    ) -> Output {
        let mut args = vec![
            "--store",
            store,
            "--realise",
            path,
            "--option",
            "substituters",
            url,
            "--option",
            "trusted-public-keys",
            key,
        ];
        let netrc = netrc.map(|p| p.to_string_lossy().into_owned());
        if let Some(netrc) = &netrc {
            args.extend(["--option", "netrc-file", netrc]);
        }
        self.run("nix-store", &args)
    }

    /// Fetch `url` with curl (for status codes only).
    fn http_status(&self, url: &str) -> String {
        self.ok(
            "curl",
            &["-s", "-o", "/dev/null", "-w", "%{http_code}", url],
        )
    }

    /// nginx as ingress-nginx configures it for the Ingress host: proxying to `upstream`,
    /// with the annotations the operator rendered translated to their nginx directives
    /// (`None`: an Ingress without them, i.e. nginx's defaults — 1 MiB bodies, request
    /// buffering on, 60 s timeouts).
    fn nginx(&self, upstream: &str, ann: Option<&BTreeMap<String, String>>) -> Proxy {
        const A: &str = "nginx.ingress.kubernetes.io/";
        let dir = self.dir.join("nginx");
        std::fs::create_dir_all(dir.join("logs")).expect("mkdir");
        let mut directives = String::new();
        for (key, directive) in [
            ("proxy-body-size", "client_max_body_size"),
            ("proxy-request-buffering", "proxy_request_buffering"),
            ("proxy-buffering", "proxy_buffering"),
            ("proxy-read-timeout", "proxy_read_timeout"),
            ("proxy-send-timeout", "proxy_send_timeout"),
        ] {
            if let Some(v) = ann.and_then(|a| a.get(&format!("{A}{key}"))) {
                // ingress-nginx takes bare seconds for the timeouts.
                let v = if key.ends_with("timeout") && v.chars().all(|c| c.is_ascii_digit()) {
                    format!("{v}s")
                } else {
                    v.clone()
                };
                directives.push_str(&format!("{directive} {v}; "));
            }
        }
        let servers = format!(
            "server {{ listen {}:80;
               location / {{ proxy_pass http://{upstream}; proxy_http_version 1.1;
                 proxy_set_header Host $host; {directives}}} }}\n",
            self.addr
        );
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
             error_log {d}/logs/error.log info; events {{ worker_connections 64; }}
             http {{ access_log {d}/logs/access.log; client_body_temp_path {d}/body;
               proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi;
               scgi_temp_path {d}/scgi; {servers} }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        let child = self
            .cluster
            .command("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx on PATH (apt-get install nginx-light)");
        Proxy { child }
    }
}

struct Upstream {
    addr: String,
    forward: Option<Forward>,
}

struct Forward {
    cmd: Vec<String>,
    child: Option<Child>,
}

impl Upstream {
    /// Restart the port-forward (a no-op on the harness's node, where Service IPs route).
    fn refresh(&mut self) {
        if let Some(f) = &mut self.forward {
            if let Some(mut c) = f.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let child = Command::new(&f.cmd[0])
                .args(&f.cmd[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("kubectl port-forward");
            f.child = Some(child);
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(Forward { child: Some(c), .. }) = &mut self.forward {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Proxy {
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos().to_string()
}

fn secret_text(s: &Secret, key: &str) -> String {
    let data = s.data.as_ref().expect("secret data");
    String::from_utf8(data[key].0.clone()).expect("utf8 secret")
}

async fn condition_true(api: &Api<garret_operator::BinaryCache>, name: &str) -> bool {
    let Ok(Some(bc)) = api.get_opt(name).await else {
        return false;
    };
    bc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn wait_ready(kube: &Client, ns: &str, name: &str) -> garret_operator::BinaryCache {
    let api: Api<garret_operator::BinaryCache> = Api::namespaced(kube.clone(), ns);
    let ready = wait_for(T, &format!("BinaryCache {name} Ready"), || async {
        Ok(if condition_true(&api, name).await {
            api.get_opt(name).await?
        } else {
            None
        })
    })
    .await;
    match ready {
        Ok(bc) => bc,
        Err(e) => {
            dump_state(kube, ns, name).await;
            panic!("BinaryCache Ready: {e}");
        }
    }
}

/// What a failed wait needs to be understood: the BinaryCache's status, its pods' states
/// and, on the harness's node, the tail of every container log of the namespace.
async fn dump_state(kube: &Client, ns: &str, name: &str) {
    let api: Api<garret_operator::BinaryCache> = Api::namespaced(kube.clone(), ns);
    if let Ok(Some(bc)) = api.get_opt(name).await {
        eprintln!("BinaryCache {name} status: {:?}", bc.status);
    }
    let pods: Api<Pod> = Api::namespaced(kube.clone(), ns);
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for p in list.items {
            eprintln!(
                "pod {:?}: {:?}",
                p.metadata.name,
                p.status.map(|s| s.container_statuses)
            );
        }
    }
    if let Some(Cluster::Harness(node)) = CLUSTER.get() {
        let logs = node.pod_logs_dir();
        for entry in walk(&logs) {
            let text = std::fs::read_to_string(&entry).unwrap_or_default();
            let start = text.len().saturating_sub(3000);
            let tail = text.get(start..).unwrap_or(&text);
            eprintln!("--- {}\n{tail}", entry.display());
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Names of the Ready garretd pods of BinaryCache `name`.
async fn ready_pods(kube: &Client, ns: &str, name: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), ns);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
    let Ok(list) = pods.list(&lp).await else {
        return Vec::new();
    };
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect()
}

async fn deployment_rolled_out(kube: &Client, ns: &str, name: &str) -> bool {
    let api: Api<Deployment> = Api::namespaced(kube.clone(), ns);
    let Ok(Some(d)) = api.get_opt(name).await else {
        return false;
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.unwrap_or_default();
    st.observed_generation == d.metadata.generation
        && st.updated_replicas == Some(want)
        && st.available_replicas == Some(want)
        && st.replicas == Some(want)
}

/// Each operator replica's `/metrics` text, read from its pod IP on the node.
async fn operator_metrics(kube: &Client, clients: &Clients<'_>) -> kube::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), OPERATOR_NS);
    let lp = ListParams::default().labels("app.kubernetes.io/name=garret-operator");
    let mut texts = Vec::new();
    for pod in pods.list(&lp).await?.items {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        let out = clients
            .cmd("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                &format!("http://{ip}:8080/metrics"),
            ])
            .output()
            .expect("curl");
        texts.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Ok(texts)
}

static CLUSTER: tokio::sync::OnceCell<Cluster> = tokio::sync::OnceCell::const_new();

/// The cluster with the operator installed from its chart, once per test binary: it runs
/// in a pod under the chart's ClusterRole only.
async fn with_operator() -> &'static Cluster {
    CLUSTER
        .get_or_init(|| async {
            let cluster = Cluster::get().await;
            let kube = cluster.client().await;
            let chart = repo().join("charts/garret-operator");
            let out = Command::new(cluster.helm())
                .args(["install", "garret-operator"])
                .arg(&chart)
                .args(["--namespace", OPERATOR_NS, "--create-namespace"])
                .arg("--kubeconfig")
                .arg(cluster.kubeconfig())
                .output()
                .expect("helm");
            check("helm install", out);
            wait_for(T, "operator Deployment available", || async {
                Ok(deployment_rolled_out(&kube, OPERATOR_NS, "garret-operator")
                    .await
                    .then_some(()))
            })
            .await
            .expect("operator running");
            cluster
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_apply_cache_yaml_push_substitute_and_keep_the_data() {
    let cluster = with_operator().await;
    let kube = cluster.client().await;
    let tmp = tempfile::Builder::new()
        .prefix("garret-story-")
        .tempdir()
        .expect("tempdir");
    let clients = Clients::new(cluster, tmp.path(), HOST, "127.0.0.1");

    // 2. kubectl apply -f docs/cache.yaml, then wait on conditions.
    let ns = cluster.namespace("story").await;
    let cache_yaml = repo().join("docs/cache.yaml");
    let applied = std::time::Instant::now();
    kubectl(
        cluster,
        &["apply", "-n", &ns, "-f", &cache_yaml.to_string_lossy()],
    );
    let bc = wait_ready(&kube, &ns, "main").await;
    let status = bc.status.clone().expect("status");
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://{HOST}/").as_str())
    );
    let key_of = |cache: &str| {
        status
            .caches
            .iter()
            .find(|c| c.name == cache)
            .map(|c| c.public_key.clone())
            .unwrap_or_else(|| panic!("status lists no key for {cache}: {status:?}"))
    };
    let (team_key, oss_key) = (key_of("team"), key_of("oss"));
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
    let ci = wait_for(T, "Secret ci-token", || async {
        Ok(secrets.get_opt("ci-token").await?)
    })
    .await
    .expect("ci token");
    let reader = wait_for(T, "Secret reader-token", || async {
        Ok(secrets.get_opt("reader-token").await?)
    })
    .await
    .expect("reader token");

    // The operator's replicas: exactly one leads, and it counted this reconcile and the
    // tokens it minted (read from each pod's /metrics on the node).
    if let Cluster::Harness(_) = cluster {
        let metrics = wait_for(T, "the operator's leader counted the reconciles", || async {
            let texts = operator_metrics(&kube, &clients).await?;
            let leaders: Vec<&String> = texts
                .iter()
                .filter(|t| t.lines().any(|l| l == "garret_operator_leader 1"))
                .collect();
            let counted = leaders.first().is_some_and(|t| {
                t.contains(r#"garret_operator_reconciles_total{kind="BinaryCache",result="success"}"#)
                    && t.contains(&format!(
                        r#"garret_operator_token_expiry_timestamp_seconds{{namespace="{ns}",name="ci"}}"#
                    ))
            });
            Ok((texts.len() == 2 && leaders.len() == 1 && counted).then_some(texts))
        })
        .await
        .expect("operator metrics");
        let standbys = metrics
            .iter()
            .filter(|t| t.lines().any(|l| l == "garret_operator_leader 0"))
            .count();
        assert_eq!(standbys, 1, "one standby replica: {metrics:?}");
    }

    // 3. The ingress controller: nginx configured from the Ingress the operator rendered.
    let ingresses: Api<Ingress> = Api::namespaced(kube.clone(), &ns);
    let ing = ingresses.get("main").await.expect("Ingress main");
    let ann: BTreeMap<String, String> = ing.metadata.annotations.clone().unwrap_or_default();
    assert!(
        ann.contains_key("nginx.ingress.kubernetes.io/proxy-body-size"),
        "the Ingress raises the body size: {ann:?}"
    );
    let rule_host = ing
        .spec
        .as_ref()
        .and_then(|s| s.rules.as_ref())
        .and_then(|r| r.first())
        .and_then(|r| r.host.clone());
    assert_eq!(rule_host.as_deref(), Some(HOST));
    let services: Api<Service> = Api::namespaced(kube.clone(), &ns);
    let svc = services.get("main").await.expect("Service main");
    let mut upstream = cluster.upstream(&ns, &svc);
    let proxy = clients.nginx(&upstream.addr, Some(&ann));
    let url = format!("http://{HOST}");
    wait_for(T, "garretd answering through the proxy", || async {
        Ok((clients.http_status(&format!("{url}/oss/nix-cache-info")) == "200").then_some(()))
    })
    .await
    .expect("proxy up");

    // 4. Push with the CI token's Secret, as CI would.
    let store_a = clients.store("a");
    let n = nonce();
    let top = clients.build_two(&store_a, &n);
    let token = secret_text(&ci, "token");
    assert_eq!(secret_text(&ci, "endpoint"), format!("{url}/"));
    let login = clients.garret(
        &store_a,
        &["login", "main", &secret_text(&ci, "endpoint"), &token],
    );
    check("garret login", login);
    check(
        "garret push",
        clients.garret(&store_a, &["push", "team", &top]),
    );
    let used = clients.garret(&store_a, &["use", "team"]);
    check("garret use", used);
    let conf_path = tmp.path().join("conf/nix.conf");
    let nix_conf = std::fs::read_to_string(&conf_path).unwrap_or_default();
    assert!(
        nix_conf.contains(&format!("{url}/team")),
        "garret use wrote {nix_conf}"
    );
    assert!(nix_conf.contains(&team_key), "garret use wrote {nix_conf}");
    let netrc_path = tmp.path().join("conf/netrc");
    let netrc = std::fs::read_to_string(&netrc_path).unwrap_or_default();
    assert!(
        netrc.contains(&token),
        "garret use wrote no netrc entry: {netrc:?}"
    );
    // Later checks name their substituter, key and token explicitly (Nix reads
    // $NIX_CONF_DIR/netrc by default, so it goes too, or "anonymous" would not be).
    std::fs::write(&conf_path, NIX_CONF).expect("reset nix.conf");
    std::fs::remove_file(&netrc_path).expect("remove netrc");

    // Plain Nix pushes too (`nix copy --to`), into the public cache.
    let netrc_ci = tmp.path().join("netrc-ci");
    std::fs::write(&netrc_ci, secret_text(&ci, "netrc")).expect("netrc");
    let netrc_ci_s = netrc_ci.to_string_lossy().into_owned();
    clients.ok(
        "nix",
        &[
            "copy",
            "--store",
            &store_a,
            "--to",
            &format!("{url}/oss?compression=zstd"),
            "--option",
            "netrc-file",
            &netrc_ci_s,
            &top,
        ],
    );

    // 5. Real Nix substitutes, checking signatures with the key the status shows.
    let netrc_reader = tmp.path().join("netrc-reader");
    std::fs::write(&netrc_reader, secret_text(&reader, "netrc")).expect("netrc");
    let got = clients.substitute(
        &clients.store("b"),
        &top,
        &format!("{url}/team"),
        &team_key,
        Some(&netrc_reader),
    );
    check("substitute team with the reader token", got);
    // Reported, never asserted: how long a platform team waits for its first substitution.
    eprintln!(
        "story: kubectl apply -f docs/cache.yaml to the first Nix substitution: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    let anon = clients.substitute(
        &clients.store("c"),
        &top,
        &format!("{url}/oss"),
        &oss_key,
        None,
    );
    check("anonymous substitute from the public cache", anon);
    let denied = clients.substitute(
        &clients.store("d"),
        &top,
        &format!("{url}/team"),
        &team_key,
        None,
    );
    assert!(
        !denied.status.success(),
        "anonymous pull of the private cache must fail"
    );
    assert_eq!(
        clients.http_status(&format!("{url}/team/nix-cache-info")),
        "401"
    );
    // The reader cannot push.
    let store_r = clients.store("r");
    let other = clients.build_two(&store_r, &nonce());
    check(
        "garret login (reader)",
        clients.garret(
            &store_r,
            &[
                "login",
                "main",
                &format!("{url}/"),
                &secret_text(&reader, "token"),
            ],
        ),
    );
    let push = clients.garret(&store_r, &["push", "team", &other]);
    assert!(!push.status.success(), "the reader token must not push");

    // 6. An Ingress without the operator's annotations (nginx's default 1 MiB body limit):
    // the push fails with the client naming the proxy's 413. Clients follow the endpoint the
    // server advertises, so the proxy in front of it is the one that changes.
    drop(proxy);
    let _default_proxy = clients.nginx(&upstream.addr, None);
    let wait_proxy = || async {
        Ok((clients.http_status(&format!("{url}/oss/nix-cache-info")) == "200").then_some(()))
    };
    wait_for(T, "the default-limits proxy up", wait_proxy)
        .await
        .expect("proxy");
    check(
        "garret login (ci)",
        clients.garret(&store_r, &["login", "main", &format!("{url}/"), &token]),
    );
    let push = clients.garret(&store_r, &["push", "team", &other]);
    assert!(
        !push.status.success(),
        "a 3 MB NAR must not pass a 1 MiB proxy limit"
    );
    let err = String::from_utf8_lossy(&push.stderr);
    assert!(
        err.contains("413") && err.contains("client_max_body_size"),
        "the client names the proxy's 413 and the setting: {err}"
    );
    drop(_default_proxy);
    let _proxy = clients.nginx(&upstream.addr, Some(&ann));
    wait_for(T, "the annotated proxy up again", wait_proxy)
        .await
        .expect("proxy");
    check(
        "push through the raised limit",
        clients.garret(&store_r, &["push", "team", &other]),
    );

    let narinfo = |path: &str| {
        let hash = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .expect("store path hash")
            .to_string();
        format!("{url}/oss/{hash}.narinfo")
    };
    let served = narinfo(&top);

    // 7. Delete the garretd pod: the replacement (same volume) serves the same paths.
    let before = ready_pods(&kube, &ns, "main").await;
    assert_eq!(before.len(), 1, "one garretd pod: {before:?}");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    pods.delete(&before[0], &DeleteParams::default())
        .await
        .expect("delete pod");
    wait_for(T, "a replacement garretd pod Ready", || async {
        let now = ready_pods(&kube, &ns, "main").await;
        Ok((now.len() == 1 && now != before).then_some(()))
    })
    .await
    .expect("replacement pod");
    upstream.refresh();
    wait_for(
        T,
        "the path served again after the pod was replaced",
        || async { Ok((clients.http_status(&served) == "200").then_some(())) },
    )
    .await
    .expect("served after pod replacement");

    // 7b. Revocation on the real kubelet: `kubectl delete cachetoken reader` and the reader's
    // token is refused through the proxy within seconds. The mounted ConfigMap alone would
    // take until the kubelet's next sync (about a minute by default); the operator pushes the
    // list to each garretd pod (here the replacement pod of step 7) as soon as it is written.
    let reader_token = secret_text(&reader, "token");
    let auth = format!("Authorization: Bearer {reader_token}");
    let team_info = format!("{url}/team/nix-cache-info");
    let as_reader = || {
        clients.ok(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &auth,
                &team_info,
            ],
        )
    };
    assert_eq!(as_reader(), "200", "the reader token works before");
    let deleted = std::time::Instant::now();
    kubectl(cluster, &["delete", "cachetoken", "reader", "-n", &ns]);
    wait_for(REVOKED_WITHIN, "the reader token refused", || async {
        Ok((as_reader() == "401").then_some(()))
    })
    .await
    .expect("a deleted CacheToken's token is refused within the documented bound");
    eprintln!(
        "reader token refused {:.2} s after kubectl delete cachetoken",
        deleted.elapsed().as_secs_f64()
    );
    if let Cluster::Harness(_) = cluster {
        let texts = operator_metrics(&kube, &clients).await.expect("metrics");
        let pushed = texts.iter().any(|t| {
            t.lines().any(|l| {
                l.strip_prefix(r#"garret_operator_revocation_pushes_total{result="ok"} "#)
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .is_some_and(|n| n >= 1.0)
            })
        });
        assert!(pushed, "the leader pushed the list to the pod: {texts:?}");
    }

    // 8. A start-time setting changes: a rolling update, and the cache keeps its data.
    let bcs: Api<garret_operator::BinaryCache> = Api::namespaced(kube.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
    let gen0 = deployments
        .get("main")
        .await
        .expect("deployment")
        .metadata
        .generation;
    bcs.patch(
        "main",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"garbageCollection": {"interval": "6 hours"}}})),
    )
    .await
    .expect("patch BinaryCache");
    wait_for(
        T,
        "the Deployment rolled out with the new setting",
        || async {
            let d = deployments.get("main").await?;
            Ok(
                (d.metadata.generation != gen0 && deployment_rolled_out(&kube, &ns, "main").await)
                    .then_some(()),
            )
        },
    )
    .await
    .expect("rollout");
    upstream.refresh();
    wait_for(T, "the path served after the rolling update", || async {
        Ok((clients.http_status(&served) == "200").then_some(()))
    })
    .await
    .expect("served after rollout");

    // 9. Delete the BinaryCache (reclaimPolicy Retain) and re-create it: same keys, same data.
    bcs.delete("main", &DeleteParams::default())
        .await
        .expect("delete BinaryCache");
    wait_for(T, "the BinaryCache and its Deployment gone", || async {
        Ok(
            (bcs.get_opt("main").await?.is_none() && deployments.get_opt("main").await?.is_none())
                .then_some(()),
        )
    })
    .await
    .expect("deleted");
    kubectl(
        cluster,
        &["apply", "-n", &ns, "-f", &cache_yaml.to_string_lossy()],
    );
    let again = wait_ready(&kube, &ns, "main").await;
    // The Service was re-created with a new cluster IP: the ingress controller follows it.
    drop(_proxy);
    let svc = services.get("main").await.expect("Service main");
    drop(upstream);
    let upstream = cluster.upstream(&ns, &svc);
    let _proxy = clients.nginx(&upstream.addr, Some(&ann));
    let keys: Vec<_> = again.status.expect("status").caches;
    assert!(
        keys.iter()
            .any(|c| c.name == "team" && c.public_key == team_key),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|c| c.name == "oss" && c.public_key == oss_key),
        "{keys:?}"
    );
    wait_for(T, "the path served by the re-created cache", || async {
        Ok((clients.http_status(&served) == "200").then_some(()))
    })
    .await
    .expect("served after re-creation");
    let fresh = clients.substitute(
        &clients.store("e"),
        &top,
        &format!("{url}/oss"),
        &oss_key,
        None,
    );
    check("substitute after re-creation", fresh);

    if let Cluster::External { .. } = cluster {
        kubectl(cluster, &["delete", "namespace", &ns, "--wait=false"]);
    }
}

/// Production wiring from real pods: two garretd replicas on this machine's PostgreSQL and
/// S3 server (Garage in CI), reached through relays on the node IP. A path pushed through
/// one replica is served by the other, and both replicas' GC loops running against the same
/// database and bucket keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_and_s3_serve_each_others_pushes() {
    let cluster = with_operator().await;
    let Cluster::Harness(node) = cluster else {
        eprintln!("SKIPPED two_replicas_on_postgres_and_s3: needs the harness's node relays");
        return;
    };
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(pg), Some(s3), Some(region), Some(bucket), Some(ak), Some(sk)) = (
        var("GARRET_TEST_POSTGRES_URL"),
        var("S3_ENDPOINT"),
        var("S3_REGION"),
        var("S3_BUCKET"),
        var("S3_ACCESS_KEY"),
        var("S3_SECRET_KEY"),
    ) else {
        let why = "GARRET_TEST_POSTGRES_URL and S3_* unset: .ci/run starts PostgreSQL and Garage";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED two_replicas_on_postgres_and_s3: {why}");
        return;
    };
    let host_port = |url: &str| -> std::net::SocketAddr {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let hp = rest.split('/').next().unwrap_or(rest);
        hp.parse().unwrap_or_else(|e| panic!("{hp}: {e}"))
    };
    let pg_in = node.expose(host_port(&pg)).expect("relay to PostgreSQL");
    let s3_in = node.expose(host_port(&s3)).expect("relay to S3");
    let db = format!("story_ha_{}", nonce());
    check(
        "create database",
        Command::new("psql")
            .arg(format!("{pg}/postgres"))
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE {db}"),
            ])
            .output()
            .expect("psql"),
    );
    let creds = pg
        .split_once("://")
        .and_then(|(_, r)| r.rsplit_once('@'))
        .map(|(c, _)| c)
        .expect("credentials in GARRET_TEST_POSTGRES_URL");

    let kube = cluster.client().await;
    let ns = cluster.namespace("ha").await;
    let tmp = tempfile::Builder::new()
        .prefix("garret-story-ha-")
        .tempdir()
        .expect("tempdir");
    let svc_host = format!("ha.{ns}.svc");
    let clients = Clients::new(cluster, tmp.path(), &svc_host, "127.0.0.2");
    let manifest = format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: ha-db}}
stringData: {{url: "postgresql://{creds}@{pg_in}/{db}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ha-s3}}
stringData: {{AWS_ACCESS_KEY_ID: "{ak}", AWS_SECRET_ACCESS_KEY: "{sk}"}}
---
apiVersion: garret.dev/v1alpha1
kind: BinaryCache
metadata: {{name: ha}}
spec:
  replicas: 2
  caches: [{{name: ha, public: true}}]
  storage:
    s3: {{bucket: "{bucket}", region: "{region}", endpoint: "http://{s3_in}", credentialsSecretRef: {{name: ha-s3}}}}
  database:
    postgres: {{name: ha-db, key: url}}
  garbageCollection: {{interval: "2s"}}
---
apiVersion: garret.dev/v1alpha1
kind: CacheToken
metadata: {{name: ha-ci}}
spec:
  binaryCacheRef: {{name: ha}}
  subject: ha-ci
  validity: 1 day
  permissions: {{pull: ["ha"], push: ["ha"]}}
  secretName: ha-ci-token
"#
    );
    let file = tmp.path().join("ha.yaml");
    std::fs::write(&file, manifest).expect("ha.yaml");
    kubectl(
        cluster,
        &["apply", "-n", &ns, "-f", &file.to_string_lossy()],
    );
    let bc = wait_ready(&kube, &ns, "ha").await;
    let key = bc
        .status
        .and_then(|s| s.caches.into_iter().find(|c| c.name == "ha"))
        .map(|c| c.public_key)
        .expect("the status shows the cache's key");
    let names = wait_for(T, "two Ready garretd pods", || async {
        let ready = ready_pods(&kube, &ns, "ha").await;
        Ok((ready.len() == 2).then_some(ready))
    })
    .await
    .expect("two replicas");
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns);
    let mut ips = Vec::new();
    for name in &names {
        let pod = pods.get(name).await.expect("pod");
        ips.push(pod.status.and_then(|s| s.pod_ip).expect("pod IP"));
    }
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns);
    let token = wait_for(T, "Secret ha-ci-token", || async {
        Ok(secrets.get_opt("ha-ci-token").await?)
    })
    .await
    .map(|s| secret_text(&s, "token"))
    .expect("token");

    // Push through replica 0 only: the client follows the advertised endpoint, which the
    // proxy sends to that one pod.
    // This BinaryCache has no Ingress; the proxy gets the limits the operator would render.
    let ann = garret_operator::desired::ingress::default_annotations();
    let proxy = clients.nginx(&format!("{}:8080", ips[0]), Some(&ann));
    let url = format!("http://{svc_host}");
    wait_for(T, "replica 0 through the proxy", || async {
        Ok((clients.http_status(&format!("{url}/ha/nix-cache-info")) == "200").then_some(()))
    })
    .await
    .expect("proxy");
    let store = clients.store("a");
    let top = clients.build_two(&store, &nonce());
    check(
        "garret login",
        clients.garret(&store, &["login", "ha", &format!("{url}/"), &token]),
    );
    check(
        "garret push via replica 0",
        clients.garret(&store, &["push", "ha", &top]),
    );
    drop(proxy);

    // Replica 1 serves it, and keeps serving it while both replicas' GC loops run.
    let hash = Path::new(&top)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .expect("hash")
        .to_string();
    let gc_runs = |ip: &str| -> u64 {
        // Polled often: quietly, unlike `Clients::run`.
        let out = clients
            .cmd("curl")
            .args(["-s", &format!("http://{ip}:8080/metrics")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("garret_gc_runs"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let (start0, start1) = (gc_runs(&ips[0]), gc_runs(&ips[1]));
    wait_for(T, "three GC runs in each replica", || async {
        Ok((gc_runs(&ips[0]) >= start0 + 3 && gc_runs(&ips[1]) >= start1 + 3).then_some(()))
    })
    .await
    .expect("GC runs in both replicas");
    for ip in &ips {
        let status = clients.http_status(&format!("http://{ip}:8080/ha/{hash}.narinfo"));
        assert_eq!(
            status, "200",
            "replica {ip} serves the pushed path after GC"
        );
    }
    let got = clients.substitute(
        &clients.store("b"),
        &top,
        &format!("http://{}:8080/ha", ips[1]),
        &key,
        None,
    );
    check("substitute from replica 1", got);

    // A start-time setting changes on the two-replica cache: a rolling update, and the
    // Service answers every request while both pods are replaced (each new connection goes
    // through kube-proxy, so a pod that stopped accepting too early would show as a failure).
    let svc = Api::<Service>::namespaced(kube.clone(), &ns)
        .get("ha")
        .await
        .expect("Service ha");
    let through_service = format!(
        "http://{}/ha/{hash}.narinfo",
        cluster.upstream(&ns, &svc).addr
    );
    let poll = tmp.path().join("poll");
    std::fs::create_dir_all(&poll).expect("mkdir poll");
    let (stop, log) = (poll.join("stop"), poll.join("codes"));
    let mut poller = clients
        .cmd("sh")
        .args([
            "-c",
            r#"while [ ! -e "$1" ]; do curl -s -o /dev/null --max-time 5 -w '%{http_code}\n' "$3" >> "$2"; done"#,
            "poller",
        ])
        .arg(&stop)
        .arg(&log)
        .arg(&through_service)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the poller");
    let answered = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(T, "the poller's first answers", || async {
        Ok((answered().lines().count() >= 3).then_some(()))
    })
    .await
    .expect("poller running");
    let bcs: Api<garret_operator::BinaryCache> = Api::namespaced(kube.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns);
    let gen0 = deployments
        .get("ha")
        .await
        .expect("deployment")
        .metadata
        .generation;
    bcs.patch(
        "ha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"garbageCollection": {"interval": "3s"}}})),
    )
    .await
    .expect("patch BinaryCache");
    wait_for(T, "both old pods replaced and gone", || async {
        let d = deployments.get("ha").await?;
        let now = all_pods(&kube, &ns, "ha").await;
        Ok((d.metadata.generation != gen0
            && deployment_rolled_out(&kube, &ns, "ha").await
            && now.len() == 2
            && now.iter().all(|p| !names.contains(p)))
        .then_some(()))
    })
    .await
    .expect("rolling update");
    std::fs::write(&stop, "").expect("stop the poller");
    poller.wait().expect("poller exits");
    let codes = answered();
    let failed: Vec<&str> = codes.lines().filter(|c| *c != "200").collect();
    eprintln!(
        "{} requests through the Service during the rolling update, {} not 200",
        codes.lines().count(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the rolling update: {failed:?}"
    );
}

/// Names of all garretd pods of BinaryCache `name`, terminating ones included.
async fn all_pods(kube: &Client, ns: &str, name: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), ns);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"));
    pods.list(&lp)
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}
