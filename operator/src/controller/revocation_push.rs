//! Pushing a BinaryCache's revocation list to each of its garretd pods, so a revocation
//! applies within the second rather than when the kubelet next refreshes the mounted
//! ConfigMap (`syncFrequency`, a minute by default). The ConfigMap stays the durable copy: it
//! is written first, a pod started later reads it, and garretd holds a pushed entry only until
//! its file carries it (`POST /_api/v1/revocations`, see garretd's `api/revocations.rs`).
//!
//! The push is signed with the BinaryCache's token key, a 2-minute token carrying only the
//! server right `push-revocations` (no cache permission). Every pod the Service selects gets
//! the whole list, ready or not (a pod that is starting serves as soon as it is ready, and
//! may have mounted the list before this write); a failed push is counted and logged, and
//! the mounted list covers that pod within the kubelet's bound.

use std::time::Duration;

use garret_core::token::{new_jti, MakeToken, ServerRights, TokenKeys};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::Request;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

use super::probe::{dial, http_uri, TIMEOUT};
use super::Context;
use crate::desired::HTTP_PORT;
use crate::metrics::{global, ResultLabel};
use crate::{Error, Result};

/// The push token's subject, as garretd logs it.
pub const SUBJECT: &str = "garret-operator";
/// Lifetime of a push token: minted for one push.
const VALIDITY: Duration = Duration::from_secs(120);
/// garretd answers with two counts.
const ANSWER_LIMIT: usize = 4096;

/// Claims of a push token: the server right `push-revocations`, no cache permission.
pub fn token(keys: &TokenKeys, now: i64) -> Result<String> {
    let request = MakeToken {
        sub: SUBJECT.into(),
        validity: VALIDITY,
        server: ServerRights {
            push_revocations: true,
        },
        ..MakeToken::default()
    };
    let claims = request
        .claims(now, new_jti())
        .and_then(|c| keys.mint(&c))
        .map_err(|source| Error::Token {
            context: "signing the revocation push token".into(),
            source,
        })?;
    Ok(claims)
}

/// Base URLs of every pod behind the Service, from its EndpointSlices: each address once,
/// terminating endpoints left out (they no longer get requests), the slice's port when it
/// names one.
pub fn pod_urls(slices: &[EndpointSlice]) -> Vec<String> {
    let mut urls = Vec::new();
    for slice in slices {
        let port = slice
            .ports
            .as_ref()
            .and_then(|ports| ports.iter().find_map(|p| p.port))
            .unwrap_or(HTTP_PORT);
        let ipv6 = slice.address_type == "IPv6";
        for endpoint in &slice.endpoints {
            let terminating = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.terminating)
                .unwrap_or(false);
            if terminating {
                continue;
            }
            for address in &endpoint.addresses {
                let url = if ipv6 {
                    format!("http://[{address}]:{port}")
                } else {
                    format!("http://{address}:{port}")
                };
                if !urls.contains(&url) {
                    urls.push(url);
                }
            }
        }
    }
    urls
}

/// Push `list` (the revocation file's text) to every garretd of BinaryCache `bc_name`:
/// the override URL when the operator runs outside the cluster (`--garretd-url`), else each
/// pod of its Service. Never fails the reconcile: the ConfigMap is already written.
pub async fn push(ctx: &Context, keys: &TokenKeys, namespace: &str, bc_name: &str, list: &str) {
    let targets = match targets(ctx, namespace, bc_name).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(binary_cache = bc_name, namespace, error = %e,
                "cannot list garretd pods to push revocations; the mounted list will carry them");
            return;
        }
    };
    if targets.is_empty() {
        return;
    }
    let token = match token(keys, garret_core::clock::unix_now()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(binary_cache = bc_name, namespace, error = %e, "revocation push");
            return;
        }
    };
    let body = Bytes::copy_from_slice(list.as_bytes());
    let sends = targets.iter().map(|base| send(base, &token, body.clone()));
    for (base, outcome) in targets.iter().zip(futures::future::join_all(sends).await) {
        let result = match outcome {
            Ok(()) => {
                tracing::debug!(binary_cache = bc_name, namespace, %base, "revocations pushed");
                "ok"
            }
            Err(why) => {
                tracing::warn!(binary_cache = bc_name, namespace, %base, error = %why,
                    "revocation push failed; the mounted list will carry it");
                "failed"
            }
        };
        global()
            .revocation_pushes
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

async fn targets(ctx: &Context, namespace: &str, bc_name: &str) -> Result<Vec<String>> {
    if let Some(template) = ctx.settings.garretd_url.as_deref() {
        return Ok(vec![super::probe::base_url(
            Some(template),
            bc_name,
            namespace,
            None,
        )]);
    }
    let slices: Api<EndpointSlice> = ctx.api(namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={bc_name}"));
    let list = slices
        .list(&lp)
        .await
        .map_err(|e| Error::kube(format!("listing EndpointSlices of {bc_name}"), e))?;
    Ok(pod_urls(&list.items))
}

/// One `POST /_api/v1/revocations` on a fresh connection.
async fn send(base: &str, token: &str, body: Bytes) -> std::result::Result<(), String> {
    let (uri, authority) = http_uri(base, "/_api/v1/revocations")?;
    let mut sender = dial::<Full<Bytes>>(&authority).await?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = Request::post(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let (status, answer) = tokio::time::timeout(TIMEOUT, async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), ANSWER_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, hyper::Error>((status, answer))
    })
    .await
    .map_err(|_| format!("POST to {authority}: no answer within {TIMEOUT:?}"))?
    .map_err(|e| format!("{authority}: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "{authority} answered {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garret_core::token::Verifier;
    use serde_json::json;

    #[test]
    fn the_token_carries_the_push_right_and_no_cache_permission() {
        let (key, _) = garret_core::token::generate_rs256(2048).expect("key");
        let keys = TokenKeys::new(&key).expect("keys");
        let now = garret_core::clock::unix_now();
        let jwt = token(&keys, now).expect("token");
        let claims = Verifier::from_keys(keys, None, None)
            .verify(&jwt, now)
            .expect("verifies");
        assert!(claims.server.push_revocations);
        assert!(claims.caches.is_empty(), "{claims:?}");
        assert!(claims.exp.is_some_and(|e| e - now <= 120), "{claims:?}");
        assert_eq!(claims.sub.as_deref(), Some(SUBJECT));
    }

    fn slice(address_type: &str, port: Option<i32>, endpoints: serde_json::Value) -> EndpointSlice {
        let ports = port.map(|p| json!([{ "name": "http", "port": p, "protocol": "TCP" }]));
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "main-x" },
            "addressType": address_type,
            "ports": ports,
            "endpoints": endpoints,
        }))
        .expect("slice")
    }

    #[test]
    fn every_pod_once_ready_or_not_but_never_terminating() {
        let v4 = slice(
            "IPv4",
            Some(8080),
            json!([
                { "addresses": ["10.0.0.5"], "conditions": { "ready": true } },
                { "addresses": ["10.0.0.6"], "conditions": { "ready": false } },
                { "addresses": ["10.0.0.7"], "conditions": { "ready": false, "terminating": true } },
                { "addresses": ["10.0.0.5"] },
            ]),
        );
        let v6 = slice("IPv6", None, json!([{ "addresses": ["fd00::9"] }]));
        assert_eq!(
            pod_urls(&[v4, v6]),
            [
                "http://10.0.0.5:8080",
                "http://10.0.0.6:8080",
                "http://[fd00::9]:8080"
            ]
        );
        assert!(pod_urls(&[slice("IPv4", Some(8080), json!([]))]).is_empty());
    }
}
