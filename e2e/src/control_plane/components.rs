//! Starting the control plane's components: etcd, kube-apiserver and
//! kube-controller-manager, each on free loopback ports (retried on a port
//! clash), each registered with the [`ControlPlane`] as soon as it is ready.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::binaries::Binaries;
use crate::process::Process;
use crate::{Error, Result};

const PORT_ATTEMPTS: usize = 3;

impl ControlPlane {
    pub(super) async fn start_etcd(&self, bins: &Binaries, timeout: Duration) -> Result<String> {
        let data = self.dir.join("etcd");
        let log = self.dir.join("etcd.log");
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let client_port = free_port()?;
            let peer_port = free_port()?;
            let client_url = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let args = vec![
                "--name=garret-e2e".to_string(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=garret-e2e={peer_url}"),
                "--listen-metrics-urls=".to_string(),
                "--unsafe-no-fsync=true".to_string(),
                "--log-level=warn".to_string(),
            ];
            let _ = std::fs::remove_dir_all(&data);
            let mut p = Process::spawn("etcd", &bins.etcd, &args, &log)?;
            let deadline = Instant::now() + timeout;
            let addr = format!("127.0.0.1:{client_port}");
            loop {
                if let Some(status) = p.exited() {
                    let err = p.startup_error(format!("exited with {status}"));
                    if port_clash(&p) {
                        last_err = Some(err);
                        break;
                    }
                    return Err(err);
                }
                if let Ok(body) = http_get(&addr, "/health").await {
                    if body.contains("\"health\":\"true\"") {
                        self.push(p);
                        return Ok(client_url);
                    }
                }
                if Instant::now() > deadline {
                    return Err(
                        p.startup_error(format!("{addr}/health not healthy after {timeout:?}"))
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Usage("etcd: no free port".into())))
    }

    pub(super) async fn start_apiserver(
        &mut self,
        bins: &Binaries,
        etcd_url: &str,
        timeout: Duration,
    ) -> Result<()> {
        let log = self.dir.join("kube-apiserver.log");
        // Without a node no pod runs, so no pod needs a token.
        let mut disabled = if self.options.node {
            vec![]
        } else {
            vec!["ServiceAccount"]
        };
        if !self.options.admission_webhooks {
            disabled.extend(["MutatingAdmissionWebhook", "ValidatingAdmissionWebhook"]);
        }
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            self.url = format!("https://127.0.0.1:{port}");
            let args = self.apiserver_args(etcd_url, port, &disabled);
            let p = Process::spawn("kube-apiserver", &bins.kube_apiserver, &args, &log)?;
            match self.await_apiserver(p, timeout).await? {
                None => return Ok(()),
                Some(clash) => last_err = Some(clash),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Usage("kube-apiserver: no free port".into())))
    }

    /// The API server's flags for one attempt on `port`.
    fn apiserver_args(&self, etcd_url: &str, port: u16, disabled: &[&str]) -> Vec<String> {
        let pki = self.dir.join("pki");
        let sa_key = self.dir.join("sa.key");
        let mut args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", pki.display()),
            format!(
                "--token-auth-file={}",
                self.dir.join("tokens.csv").display()
            ),
            "--authorization-mode=RBAC".to_string(),
            format!("--service-account-issuer={}", self.url),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            // An object range only: nothing listens there and the API
            // server never dials it (no webhooks, no aggregated APIs).
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--endpoint-reconciler-type=none".to_string(),
            format!("--disable-admission-plugins={}", disabled.join(",")),
            // The node name does not resolve; logs/exec dial the node IP.
            "--kubelet-preferred-address-types=InternalIP".to_string(),
            "--allow-privileged=true".to_string(),
            "--profiling=false".to_string(),
            "--enable-priority-and-fairness=false".to_string(),
        ];
        args.extend(self.options.apiserver_args.iter().cloned());
        args
    }

    /// Wait for a just-spawned API server's /readyz; registers it once ready
    /// (`Ok(None)`), or gives back its error if it lost its port to another
    /// process (`Ok(Some(_))`: try another).
    async fn await_apiserver(
        &mut self,
        mut p: Process,
        timeout: Duration,
    ) -> Result<Option<Error>> {
        let deadline = Instant::now() + timeout;
        let admin = self.tokens[0].clone();
        let mut client: Option<Client> = None;
        let mut last = String::from("no answer yet");
        loop {
            if let Some(status) = p.exited() {
                let err = p.startup_error(format!("exited with {status}"));
                if port_clash(&p) {
                    return Ok(Some(err));
                }
                return Err(err);
            }
            if client.is_none() && self.ca_file.exists() {
                match client_from_yaml(&self.kubeconfig_yaml(&admin)).await {
                    Ok(c) => client = Some(c),
                    Err(e) => last = e.to_string(),
                }
            }
            if let Some(c) = &client {
                match readyz(c).await {
                    Ok(()) => {
                        self.push(p);
                        return Ok(None);
                    }
                    Err(e) => last = e,
                }
            }
            if Instant::now() > deadline {
                return Err(p.startup_error(format!(
                    "/readyz not ok after {timeout:?}; last answer: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(super) async fn start_controller_manager(
        &self,
        bins: &Binaries,
        timeout: Duration,
    ) -> Result<()> {
        let log = self.dir.join("kube-controller-manager.log");
        let mut controllers = String::from(
            "garbage-collector-controller,namespace-controller,serviceaccount-controller,\
             serviceaccount-token-controller,root-ca-certificate-publisher-controller,deployment-controller,\
             replicaset-controller,statefulset-controller,job-controller,cronjob-controller,\
             clusterrole-aggregation-controller",
        );
        if self.options.node {
            // node-lifecycle lifts the not-ready taint; the PV binder and the
            // protection controllers make PVCs bind and be deletable.
            controllers.push_str(
                ",node-lifecycle-controller,endpointslice-controller,endpoints-controller,\
                 persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,\
                 persistentvolume-protection-controller,pod-garbage-collector-controller,\
                 ttl-after-finished-controller",
            );
        }
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig_path().display()),
            "--leader-elect=false".to_string(),
            // No serving: nothing to clash on, nothing to probe.
            "--secure-port=0".to_string(),
            format!("--controllers={controllers}"),
            format!(
                "--service-account-private-key-file={}",
                self.dir.join("sa.key").display()
            ),
            format!("--root-ca-file={}", self.ca_file.display()),
            "--use-service-account-credentials=false".to_string(),
            "--profiling=false".to_string(),
        ];
        let mut p = Process::spawn(
            "kube-controller-manager",
            &bins.kube_controller_manager,
            &args,
            &log,
        )?;
        // Ready once the ServiceAccount controller has created `default` in
        // the `default` namespace.
        let client = self.admin_client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = p.exited() {
                return Err(p.startup_error(format!("exited with {status}")));
            }
            if let Ok(Some(_)) = sas.get_opt("default").await {
                self.push(p);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(p.startup_error(format!(
                    "no `default` ServiceAccount after {timeout:?} (controllers not running?)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn readyz(client: &Client) -> std::result::Result<(), String> {
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(req).await {
        Ok(body) if body.trim() == "ok" => Ok(()),
        Ok(body) => Err(body),
        Err(e) => Err(e.to_string()),
    }
}

/// A plain-HTTP GET (etcd's client port), returning the body.
async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| std::io::Error::other("timeout"))?
}

fn port_clash(p: &Process) -> bool {
    p.log_tail(40).contains("address already in use")
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind 127.0.0.1:0", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("local_addr", e))?
        .port())
}
