//! The served-ness probe: ask garretd, through its own API, whether it serves each declared
//! cache. The operator signs itself a short-lived pull token with the BinaryCache's key (so
//! garretd needs no new unauthenticated endpoint) and reads `GET
//! /_api/v1/cache-config/<cache>` on one keep-alive connection. Every failure becomes an
//! [`Answer`]; what the answers mean is `desired::status::served`.

use std::time::Duration;

use garret_core::token::{MakeToken, SigningKey};
use garret_core::wire::CacheConfig;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::desired::status::Answer;
use crate::{Error, Result};

/// The probe token's subject, as garretd logs it.
pub const SUBJECT: &str = "garret-operator";
/// Lifetime of a probe token: minted for one round of requests.
pub const VALIDITY: Duration = Duration::from_secs(120);
/// Bound on connecting and on each answer: a probe never holds a reconcile for long.
pub(super) const TIMEOUT: Duration = Duration::from_secs(3);
/// A cache-config answer is a few hundred bytes.
const BODY_LIMIT: usize = 64 * 1024;
/// The Service's port (see `desired::workload::service`).
const SERVICE_PORT: u16 = 80;

/// The environment variable that overrides where garretd is reached (see [`base_url`]).
pub const URL_ENV: &str = "GARRET_OPERATOR_GARRETD_URL";

/// Base URL of a BinaryCache's garretd. With `template` (the operator runs outside the
/// cluster, or Services are reached another way), `{name}` and `{namespace}` in it are
/// replaced. Otherwise the Service's ClusterIP, which needs no cluster DNS, else its DNS name.
pub fn base_url(
    template: Option<&str>,
    name: &str,
    namespace: &str,
    cluster_ip: Option<&str>,
) -> String {
    if let Some(t) = template {
        let url = t.replace("{name}", name).replace("{namespace}", namespace);
        return url.trim_end_matches('/').to_string();
    }
    match cluster_ip.filter(|ip| !ip.is_empty() && *ip != "None") {
        Some(ip) if ip.contains(':') => format!("http://[{ip}]:{SERVICE_PORT}"),
        Some(ip) => format!("http://{ip}:{SERVICE_PORT}"),
        None => format!("http://{name}.{namespace}.svc:{SERVICE_PORT}"),
    }
}

/// A pull token on exactly `caches`, valid from `now` for [`VALIDITY`].
pub fn token(key: &SigningKey, caches: &[String], now: i64) -> Result<String> {
    let request = MakeToken {
        sub: SUBJECT.into(),
        validity: VALIDITY,
        pull: caches.to_vec(),
        ..MakeToken::default()
    };
    request.mint(key, now).map_err(|source| Error::Token {
        context: "signing the served-probe token".into(),
        source,
    })
}

/// garretd's answer for each of `caches`, in order, at `base`.
pub async fn probe(base: &str, token: &str, caches: &[String]) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(caches.len());
    let mut conn = None;
    for cache in caches {
        let answer = match ask(&mut conn, base, token, cache).await {
            Ok(a) => a,
            Err(why) => {
                // A broken connection is not reused: the next cache dials again.
                conn = None;
                Answer::Unreachable(why)
            }
        };
        answers.push(answer);
    }
    answers
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// `base` + `path` as a URI, and its authority; only plain `http://` (in-cluster garretd).
pub(super) fn http_uri(
    base: &str,
    path: &str,
) -> std::result::Result<(Uri, hyper::http::uri::Authority), String> {
    let uri: Uri = format!("{base}{path}")
        .parse()
        .map_err(|e| format!("bad URL {base}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{base}: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{base}: no host"))?
        .clone();
    Ok((uri, authority))
}

/// One request on `conn`, dialled first if there is none.
async fn ask(
    conn: &mut Option<Sender>,
    base: &str,
    token: &str,
    cache: &str,
) -> std::result::Result<Answer, String> {
    let (uri, authority) = http_uri(base, &format!("/_api/v1/cache-config/{cache}"))?;
    // A kept connection garretd closed in the meantime is dialled again, not an answer.
    if let Some(kept) = conn.as_mut() {
        let ready = tokio::time::timeout(TIMEOUT, kept.ready()).await;
        if !matches!(ready, Ok(Ok(()))) {
            *conn = None;
        }
    }
    let sender = match conn {
        Some(s) => s,
        None => conn.insert(dial(&authority).await?),
    };
    let timeout = |what: &str| format!("{what} {authority}: no answer within {TIMEOUT:?}");
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = tokio::time::timeout(TIMEOUT, async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes());
        Ok::<_, hyper::Error>((status, body))
    })
    .await
    .map_err(|_| timeout("GET from"))?
    .map_err(|e| format!("{authority}: {e}"))?;
    let (status, body) = response;
    let body = body.map_err(|e| format!("{authority}: reading the answer: {e}"))?;
    let public_key = (status == 200)
        .then(|| serde_json::from_slice::<CacheConfig>(&body).ok())
        .flatten()
        .and_then(|c| c.public_key);
    Ok(Answer::Http { status, public_key })
}

/// Open an HTTP/1 connection to `authority`; the connection task ends when the sender drops.
pub(super) async fn dial<B>(
    authority: &hyper::http::uri::Authority,
) -> std::result::Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connecting to {authority}: timed out after {TIMEOUT:?}"))?
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "probe connection ended");
        }
    });
    sender
        .ready()
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use garret_core::token::{TokenKeys, Verifier};

    #[test]
    fn base_url_prefers_the_override_then_the_cluster_ip() {
        let t = Some("http://127.0.0.1:9000/{namespace}/{name}/");
        assert_eq!(
            base_url(t, "main", "team", Some("10.0.0.1")),
            "http://127.0.0.1:9000/team/main"
        );
        assert_eq!(
            base_url(None, "main", "team", Some("10.0.0.1")),
            "http://10.0.0.1:80"
        );
        assert_eq!(
            base_url(None, "main", "team", Some("fd00::1")),
            "http://[fd00::1]:80"
        );
        for headless in [None, Some("None"), Some("")] {
            assert_eq!(
                base_url(None, "main", "team", headless),
                "http://main.team.svc:80"
            );
        }
    }

    #[test]
    fn the_token_pulls_the_declared_caches_only_and_is_short_lived() {
        let (key, _) = garret_core::token::generate_rs256(2048).expect("key");
        let now = garret_core::clock::unix_now();
        let caches = vec!["team".to_string(), "ci".to_string()];
        let jwt = token(&key, &caches, now).expect("token");
        let keys = TokenKeys::new(&key).expect("keys");
        let claims = Verifier::from_keys(keys, None, None)
            .verify(&jwt, now)
            .expect("verifies");
        assert_eq!(claims.sub.as_deref(), Some(SUBJECT));
        assert!(claims.exp.is_some_and(|e| e - now <= 120), "{claims:?}");
        for c in &caches {
            let p = claims.permission_for(c);
            assert!(
                p.pull && !p.push && !p.delete && !p.configure_cache,
                "{c}: {p:?}"
            );
        }
        assert!(!claims.permission_for("other").pull);
    }

    #[tokio::test]
    async fn an_unreachable_garretd_is_an_answer_not_an_error() {
        // A port nothing listens on: bound, then released.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let caches = vec!["team".to_string(), "ci".to_string()];
        let answers = probe(&format!("http://127.0.0.1:{port}"), "t", &caches).await;
        assert_eq!(answers.len(), 2);
        for a in &answers {
            assert!(
                matches!(a, Answer::Unreachable(why) if why.contains("connecting to")),
                "{a:?}"
            );
        }
        let bad = probe("https://example.invalid", "t", &caches[..1]).await;
        assert!(
            matches!(&bad[0], Answer::Unreachable(w) if w.contains("http://")),
            "{bad:?}"
        );
    }
}
