//! The limits a public server needs (docs/limits.md), against a real garretd: half-sent and
//! idle connections are closed, connections beyond the cap wait instead of starving the
//! server, and a caller without a valid token is refused before its body is read.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;

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
