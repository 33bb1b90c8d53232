//! The limits a public server needs (docs/limits.md), against a real garretd: half-sent and
//! idle connections are closed, connections beyond the cap wait instead of starving the
//! server, and a caller without a valid token is refused before its body is read.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};

/// Only a guard so a regression fails instead of hanging; the limits under test are ~1 s.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn addr(g: &Garretd) -> String {
    g.url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

fn connect(g: &Garretd) -> TcpStream {
    let s = TcpStream::connect(addr(g)).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s
}

/// Reads until the server closes; panics if it does not (the guard fires first).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

const SHORT_HEAD_TIMEOUT: &str = "[http]\nheader-read-timeout = \"1s\"\n";

#[test]
fn half_sent_and_silent_connections_are_closed_after_the_header_read_timeout() {
    let g = Garretd::start_with(Some(SHORT_HEAD_TIMEOUT), &[]);
    let mut half = connect(&g);
    half.write_all(b"GET /healthz HT").unwrap();
    let mut headers = connect(&g);
    headers
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Never: finished")
        .unwrap();
    let mut silent = connect(&g);
    for (what, s) in [
        ("half a request line", &mut half),
        ("unfinished headers", &mut headers),
        ("nothing", &mut silent),
    ] {
        let got = read_until_closed(s);
        assert!(
            !String::from_utf8_lossy(&got).contains(" 200 "),
            "a connection that sent {what} was closed without being served"
        );
    }
    // Normal clients are unaffected.
    let mut ok = connect(&g);
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = String::from_utf8_lossy(&read_until_closed(&mut ok)).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

fn open_connections(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("garret_http_connections_open "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_are_served_once_idle_ones_time_out() {
    let g = Garretd::start_with(
        Some("[http]\nheader-read-timeout = \"1s\"\nmax-connections = 2\n"),
        &[],
    );
    // One idle connection, plus the one polling the metrics: the cap is reached.
    let mut idle = connect(&g);
    idle.write_all(b"GET /heal").unwrap();
    let poller = g.client();
    let mut full = false;
    for _ in 0..1200 {
        let Ok(r) = poller.http.get(poller.url("metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        if open_connections(&text) == Some(2) {
            full = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(full, "the server saw both connections");
    // A third client waits in the backlog and is served once the idle ones time out.
    let fresh = reqwest::Client::builder()
        .timeout(HANG_GUARD)
        .build()
        .unwrap();
    let r = fresh.get(poller.url("healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    read_until_closed(&mut idle);
}

/// Declares a 16 MiB body, sends 1 KiB of it, and reads the answer without sending more.
fn refused_before_the_body(g: &Garretd, method: &str, path: &str) -> String {
    let mut s = connect(g);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-valid-token\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        (16 << 20) - 1
    );
    let mut req = head.into_bytes();
    req.extend(std::iter::repeat_n(b' ', 1024));
    s.write_all(&req).unwrap();
    // Answered although the body never finished, and then the connection is closed.
    String::from_utf8_lossy(&read_until_closed(&mut s)).into_owned()
}

#[test]
fn a_bad_token_is_refused_with_401_before_the_body_is_read() {
    let g = Garretd::start();
    let narinfo = format!("/somecache/{}.narinfo", fake_hash("p"));
    for (method, path) in [
        ("PUT", narinfo.as_str()),
        ("POST", "/_api/v1/get-missing-paths"),
        ("POST", "/_api/v1/cache-config/somecache"),
        ("PATCH", "/_api/v1/cache-config/somecache"),
    ] {
        let got = refused_before_the_body(&g, method, path);
        assert!(
            got.starts_with("HTTP/1.1 401"),
            "{method} {path} was refused with 401 before its body: {got}"
        );
    }
}

/// Cleartext HTTP/2 (prior knowledge): the server's first SETTINGS frame advertises the
/// configured stream cap, so one connection cannot open hundreds of streams.
#[test]
fn http2_advertises_the_configured_stream_cap() {
    let g = Garretd::start_with(Some("[http]\nmax-concurrent-streams = 5\n"), &[]);
    let mut s = connect(&g);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap(); // empty SETTINGS
    let mut advertised = None;
    while advertised.is_none() {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        if head[3] == 0x4 && head[4] & 0x1 == 0 {
            advertised = Some(
                payload
                    .chunks_exact(6)
                    .find(|e| e[..2] == [0, 0x3]) // SETTINGS_MAX_CONCURRENT_STREAMS
                    .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]])),
            );
        }
    }
    assert_eq!(advertised, Some(Some(5)));
}

/// Sends an upload-path head (declaring a 16 MiB body) plus the first `sent` bytes of the
/// body, then reads the answer without sending more.
fn upload_refused_before_the_body(
    g: &Garretd,
    token: Option<&str>,
    form: &str,
    sent: usize,
) -> String {
    let mut s = connect(g);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: x\r\n{auth}{form}\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        16 << 20
    );
    let mut req = head.into_bytes();
    req.extend(std::iter::repeat_n(b'{', sent));
    s.write_all(&req).unwrap();
    String::from_utf8_lossy(&read_until_closed(&mut s)).into_owned()
}

/// Sends an upload-path head declaring 64 MiB and then all of it; whether every byte was
/// accepted (the server read, or drained, the body) or the connection was closed first.
fn whole_body_is_accepted(g: &Garretd, token: Option<&str>, form: &str) -> bool {
    const SIZE: usize = 64 << 20;
    let mut s = connect(g);
    s.set_write_timeout(Some(HANG_GUARD)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "PUT /_api/v1/upload-path HTTP/1.1\r\nHost: x\r\n{auth}{form}\
         Content-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let piece = vec![b'{'; 1 << 20];
    (0..SIZE / piece.len()).all(|_| s.write_all(&piece).is_ok())
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or_default()
}

/// The preamble form names its cache inside the body; a caller whose token is missing,
/// invalid or grants push nowhere is refused (401, connection closed) before any of it is
/// read, however large the preamble it declares. The header form is authorized from its
/// headers, so callers without the right are refused without their body being read too.
#[tokio::test]
async fn upload_path_refuses_callers_who_cannot_push_before_reading_the_body() {
    let (g, api, admin) = server_with_cache("private", false).await;
    assert_eq!(
        api.create_cache(&admin, "open", true).await.status(),
        StatusCode::OK
    );
    let pull_only = g.token("reader", "1 hour", &["--pull", "*"]);
    let expired = g.token("old", "1s", ALL_RIGHTS);
    let foreign = Garretd::start().admin_token();
    // `expired` is only expired once its 1 s validity has passed: observe that.
    let probe = g.client();
    loop {
        let r = probe
            .send(Method::GET, "_api/v1/cache-config/private", Some(&expired))
            .await;
        if r.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let preamble = "X-Attic-Nar-Info-Preamble-Size: 1048576\r\n";
    let info = |cache: &str| {
        let nar = nar_of_file(b"never sent");
        format!(
            "X-Attic-Nar-Info: {}\r\n",
            upload_info(cache, "refused", &nar, &[])
        )
    };
    let callers: [(&str, Option<&str>); 5] = [
        ("no token", None),
        ("a garbage token", Some("not-a-valid-token")),
        ("an expired token", Some(&expired)),
        ("another server's token", Some(&foreign)),
        ("a token without push", Some(&pull_only)),
    ];
    // Bounded load: every case on its own connection, all of them open at once.
    let mut cases = Vec::new();
    for (who, token) in callers {
        cases.push((who, "preamble", token, preamble.to_string(), "401"));
        let expected = match who {
            // some right on the name: it may know the cache exists
            "a token without push" => "403",
            _ => "401",
        };
        cases.push((
            who,
            "header, private cache",
            token,
            info("private"),
            expected,
        ));
        // public caches add pull for everyone, never push
        cases.push((who, "header, public cache", token, info("open"), "403"));
        cases.push((
            who,
            "header, missing cache",
            token,
            info("ghost"),
            if who == "a token without push" {
                "404"
            } else {
                "401"
            },
        ));
    }
    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(_, _, token, form, _)| {
                let g = &g;
                scope.spawn(move || upload_refused_before_the_body(g, *token, form, 8))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((who, form, _, _, expected), got) in cases.iter().zip(&answers) {
        // Answered although 8 bytes of the 16 MiB body were sent, then closed: the server
        // neither waited for the body nor read (drained) it.
        assert!(
            status_line(got).starts_with(&format!("HTTP/1.1 {expected}")),
            "{who}, {form}: expected {expected} before the body: {got}"
        );
    }
    // Not drained either: a caller who goes on sending its whole (64 MiB) body finds the
    // connection closed under it, for both forms.
    for (token, form) in [
        (Some("not-a-valid-token"), preamble.to_string()),
        (Some("not-a-valid-token"), info("private")),
        (None, info("open")),
    ] {
        assert!(
            !whole_body_is_accepted(&g, token, &form),
            "{form}: the server read a refused upload's body"
        );
    }
    // The refused uploads stored nothing, and a pusher is still served normally.
    assert_eq!(g.count("objects"), 0);
    api.upload_ok(&admin, "private", "accepted", &nar_of_file(b"fine"))
        .await;
}

fn metric(metrics: &str, name: &str) -> Option<i64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn buffered_bytes(api: &Api) -> i64 {
    let text = api.get("metrics", None).await.text().await.unwrap();
    metric(&text, "garret_nar_read_buffered_bytes").expect("the buffered-bytes gauge")
}

/// Resident memory of a process, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// A client that asks for a NAR with a tiny receive window and then never reads.
async fn stalled_reader(g: &Garretd, path: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr(g).parse().unwrap()).await.unwrap();
    let req = format!("GET /{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Downloads to clients that stop reading together hold at most `nar-read-buffer-budget`
/// bytes: further reads wait for budget instead of growing memory, and once the stalled
/// readers go away a normal client (queued behind them) gets the whole NAR.
#[tokio::test]
async fn stalled_nar_readers_hold_at_most_the_read_budget() {
    const BUDGET: i64 = 8 << 20;
    /// What one download reads at most at once (`store::download::MAX_READ`).
    const MAX_READ: i64 = 2 << 20;
    const READERS: usize = 24;
    let budget = std::env::var("GARRET_TEST_READ_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BUDGET);
    let g = Garretd::start_with(
        Some(&format!("[http]\nnar-read-buffer-budget = {budget}\n")),
        &[],
    );
    let api = g.client();
    let admin = g.admin_token();
    assert_eq!(
        api.create_cache(&admin, "big", false).await.status(),
        StatusCode::OK
    );
    // Incompressible, so each download is ~24 MiB on the wire: far more than the kernel's
    // socket buffers absorb for a reader that does not read.
    let nar = nar_of_file(&noise(5, 24 << 20));
    api.upload_ok(&admin, "big", "big", &nar).await;
    let path = format!("big/nar/{}.nar", fake_hash("big"));
    assert_eq!(api.nar(&path, Some(&admin)).await, nar, "a first download");
    assert_eq!(buffered_bytes(&api).await, 0);
    let before = rss_bytes(g.pid());

    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(stalled_reader(&g, &path, &admin).await);
    }
    // The readers fill the budget (all but less than one read of it)...
    let mut held = 0;
    for _ in 0..2400 {
        held = buffered_bytes(&api).await;
        if held > budget.min(READERS as i64 * MAX_READ) - MAX_READ {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held <= budget, "{held} bytes buffered, budget {budget}");
    // ...and a normal client queues behind them.
    let queued = tokio::spawn({
        let api = api.clone();
        let (path, admin) = (path.clone(), admin.clone());
        async move { api.nar(&path, Some(&admin)).await }
    });
    let mut peak = 0;
    let mut peak_held = 0;
    for _ in 0..20 {
        peak = peak.max(rss_bytes(g.pid()));
        peak_held = peak_held.max(buffered_bytes(&api).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "{READERS} stalled readers, budget {budget}: {peak_held} bytes buffered, \
         RSS {before} -> {peak} (+{grown})"
    );
    assert!(
        peak_held <= budget,
        "{peak_held} bytes buffered, budget {budget}"
    );
    // The budget plus a constant (connections, allocator slack). Without a budget
    // (GARRET_TEST_READ_BUDGET=4294967296) the 24 readers held 116 MB of reads queued ahead
    // of their sockets and RSS grew by 106 MB; with it, by 0.2 MB.
    assert!(
        grown < budget as u64 + (32 << 20),
        "RSS grew by {grown} bytes with a {budget}-byte budget"
    );

    drop(readers);
    assert_eq!(
        queued.await.unwrap(),
        nar,
        "the queued client got the whole NAR"
    );
    for _ in 0..2400 {
        if buffered_bytes(&api).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(buffered_bytes(&api).await, 0, "all budget was given back");
}
