//! A TLS reverse proxy in front of a test server: Debian's nginx on a random loopback port,
//! with a throwaway CA and a certificate for 127.0.0.1/localhost made by the `openssl` CLI.
//! Everything (config, pid, logs, temp paths) lives in the proxy's own temp directory; nginx
//! runs in the foreground as one process (`daemon off; master_process off;`) and is killed
//! on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `$GARRET_NGINX`, else `/usr/sbin/nginx`, else `nginx` on PATH.
pub fn nginx_bin() -> Option<PathBuf> {
    let candidates = std::env::var_os("GARRET_NGINX")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nginx"), PathBuf::from("nginx")]);
    candidates.into_iter().find(|bin| {
        Command::new(bin)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// nginx's binary; skips (locally) or fails (under CI) through `skip::require` when missing.
pub fn require_nginx() -> Option<PathBuf> {
    let bin = nginx_bin();
    super::skip::require(
        "TLS proxy",
        bin.is_some(),
        "nginx not found (/usr/sbin/nginx or PATH): apt-get install -y nginx",
    )
    .then_some(bin)
    .flatten()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn openssl (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority of its own, and a server certificate it signed for 127.0.0.1 and
/// localhost (P-256 keys, valid for a week).
pub struct TestCa {
    /// The CA certificate: what a client must trust.
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir ca");
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1";
        let subject = format!("/CN=Garret test CA {name}");
        let mut ca: Vec<&str> = "req -x509 -nodes -days 7 -keyout ca.key -out ca.pem"
            .split(' ')
            .chain(ec.split(' '))
            .collect();
        ca.extend([
            "-subj",
            &subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &ca);
        let mut csr: Vec<&str> = "req -nodes -keyout server.key -out server.csr"
            .split(' ')
            .chain(ec.split(' '))
            .collect();
        csr.extend(["-subj", "/CN=127.0.0.1"]);
        openssl(&dir, &csr);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid\n",
        )
        .expect("server.ext");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "7",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        TestCa {
            ca_pem: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// nginx terminating TLS on `https://127.0.0.1:<port>` and proxying to a plain-HTTP upstream.
pub struct Nginx {
    child: Child,
    pub port: u16,
    /// `https://127.0.0.1:<port>` (no trailing slash, like `Garretd::url`).
    pub url: String,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Nginx {
    /// Proxies to `upstream` (`http://127.0.0.1:<port>`) with `ca`'s server certificate.
    /// `client_max_body_size`: `None` keeps nginx's default (1m), e.g. `Some("50g")` raises it.
    pub fn start(
        bin: &Path,
        upstream: &str,
        ca: &TestCa,
        client_max_body_size: Option<&str>,
    ) -> Nginx {
        let tmp = tempfile::Builder::new()
            .prefix("garret-nginx-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        // The port is free when picked; another process may take it before nginx binds, so a
        // bind failure is retried on a new port.
        for _ in 0..5 {
            let port = free_port();
            let conf = config(&dir, port, upstream, ca, client_max_body_size);
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("nginx.conf");
            let _ = std::fs::remove_file(dir.join("error.log"));
            let mut child = Command::new(bin)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn nginx");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().expect("wait nginx") {
                    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                    if log.contains("Address already in use") {
                        break; // next port
                    }
                    panic!("nginx exited with {status}: {log}");
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Nginx {
                        child,
                        port,
                        url: format!("https://127.0.0.1:{port}"),
                        dir,
                        _tmp: tmp,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("nginx did not listen on {addr} within 30s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx could not bind a free loopback port in 5 tries");
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

fn config(
    dir: &Path,
    port: u16,
    upstream: &str,
    ca: &TestCa,
    client_max_body_size: Option<&str>,
) -> String {
    let d = dir.display();
    let body = client_max_body_size
        .map(|s| format!("client_max_body_size {s};"))
        .unwrap_or_else(|| "# client_max_body_size: nginx's default (1m)".into());
    format!(
        "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name 127.0.0.1 localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {body}
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
",
        cert = ca.server_cert.display(),
        key = ca.server_key.display(),
    )
}
