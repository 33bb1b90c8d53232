//! The URLs the server hands to clients (`api_endpoint`, `substituter_endpoint`).
//!
//! With `api-endpoint` unset, the endpoint is derived from each request, so a client reaches
//! the server back the way it came: through `kubectl port-forward` (`Host: localhost:8080`),
//! a Service from another pod, or a TLS-terminating proxy (`X-Forwarded-Proto: https` or
//! `Forwarded: proto=https`). The host is the request's `Host` (HTTP/1.1) or `:authority`
//! (HTTP/2), used only if it is a plain `hostname[:port]` or `[ipv6][:port]`; anything else
//! (paths, user info, control characters, spaces) is ignored in favour of `localhost`, so a
//! forged header cannot put an arbitrary URL into an answer.

use axum::http::HeaderMap;

use crate::config::Config;

/// Longest host name accepted (DNS's 253, plus room for a port).
const MAX_HOST_LEN: usize = 260;

/// Whether `host` is `hostname[:port]` or `[ipv6][:port]`, nothing more.
pub fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return false;
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty()
            || !addr
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
    });
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.chars().all(|c| c.is_ascii_digit())
            && p.parse::<u16>().is_ok_and(|n| n > 0)
    });
    name_ok && port_ok
}

/// `https` or `http`, from the first `Forwarded` element's `proto=`, else the first
/// `X-Forwarded-Proto` value; anything but those two words is ignored.
fn forwarded_scheme(headers: &HeaderMap) -> Option<&'static str> {
    let pick = |v: &str| match v.trim().trim_matches('"').to_ascii_lowercase().as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    };
    if let Some(fwd) = headers.get("forwarded").and_then(|h| h.to_str().ok()) {
        let first = fwd.split(',').next().unwrap_or_default();
        let proto = first.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case("proto").then_some(v)
        });
        if let Some(s) = proto.and_then(pick) {
            return Some(s);
        }
    }
    headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .and_then(|v| pick(v.split(',').next().unwrap_or_default()))
}

/// The configured `api-endpoint`, else `<scheme>://<host>/` from the request: `authority`
/// is the request URI's (HTTP/2's `:authority`), used when there is no `Host` header.
pub fn api_endpoint(cfg: &Config, headers: &HeaderMap, authority: Option<&str>) -> String {
    if let Some(ep) = &cfg.api_endpoint {
        return ep.clone();
    }
    derived_endpoint(headers, authority)
}

/// `<scheme>://<host>/` of a request, as described in the module docs.
pub fn derived_endpoint(headers: &HeaderMap, authority: Option<&str>) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(authority)
        .filter(|h| valid_host(h))
        .unwrap_or("localhost");
    let scheme = forwarded_scheme(headers).unwrap_or("http");
    format!("{scheme}://{}/", host.to_ascii_lowercase())
}

pub fn substituter_endpoint(
    cfg: &Config,
    headers: &HeaderMap,
    authority: Option<&str>,
    cache: &str,
) -> String {
    let base = cfg
        .substituter_endpoint
        .clone()
        .unwrap_or_else(|| api_endpoint(cfg, headers, authority));
    format!("{base}{cache}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn hosts_are_checked_strictly() {
        for ok in [
            "localhost",
            "localhost:8080",
            "cache.example.org",
            "main.ns.svc:80",
            "127.0.0.1:34567",
            "[::1]:8080",
            "[::1]",
            "under_score.example",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.com/path",
            "a b",
            "user@host",
            "host:",
            "host:0",
            "host:65536",
            "host:80:80",
            "host..x",
            ".host",
            "[::1",
            "[::1]x",
            "[zz]",
            "host\tx",
            "x?y",
            "x#y",
            "x\\y",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
        assert!(!valid_host(&"a".repeat(300)));
    }

    #[test]
    fn endpoint_follows_host_and_forwarded_proto() {
        assert_eq!(
            derived_endpoint(&headers(&[("host", "localhost:8080")]), None),
            "http://localhost:8080/"
        );
        assert_eq!(
            derived_endpoint(
                &headers(&[
                    ("host", "Cache.Example.org"),
                    ("x-forwarded-proto", "https")
                ]),
                None
            ),
            "https://cache.example.org/"
        );
        assert_eq!(
            derived_endpoint(
                &headers(&[("host", "c.example"), ("x-forwarded-proto", "https, http")]),
                None
            ),
            "https://c.example/",
            "the first hop's value"
        );
        assert_eq!(
            derived_endpoint(
                &headers(&[
                    ("host", "c.example"),
                    (
                        "forwarded",
                        "for=1.2.3.4;Proto=\"https\";host=x, proto=http"
                    ),
                    ("x-forwarded-proto", "http"),
                ]),
                None
            ),
            "https://c.example/",
            "Forwarded wins over X-Forwarded-Proto"
        );
        assert_eq!(
            derived_endpoint(
                &headers(&[("host", "c.example"), ("x-forwarded-proto", "gopher")]),
                None
            ),
            "http://c.example/"
        );
        assert_eq!(
            derived_endpoint(&headers(&[]), Some("h2.example:8443")),
            "http://h2.example:8443/"
        );
        assert_eq!(
            derived_endpoint(&headers(&[("host", "evil.example/phish?")]), None),
            "http://localhost/"
        );
        assert_eq!(derived_endpoint(&headers(&[]), None), "http://localhost/");
    }
}
