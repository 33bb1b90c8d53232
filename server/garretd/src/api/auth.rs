//! Who is calling, and what may they do on a cache. Tokens come as `Bearer <jwt>` or, from
//! Nix's netrc, as `Basic base64(user:<jwt>)`. A bad token grants nothing but is remembered
//! so a 401 can say why.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use base64::Engine;

use super::state::{CacheEntry, SharedState};
use crate::error::{ServerError, ServerResult};
use garret_core::token::{Claims, Permission, Rejection};

#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub claims: Option<Arc<Claims>>,
    pub rejection: Option<Rejection>,
}

impl Caller {
    /// What the token grants on `cache` (public pull is added by [`authorize`]).
    pub fn permission(&self, cache: &str) -> Permission {
        self.claims
            .as_ref()
            .map(|c| c.permission_for(cache))
            .unwrap_or_default()
    }

    pub fn subject(&self) -> Option<String> {
        self.claims.as_ref().and_then(|c| c.sub.clone())
    }

    pub fn unauthorized(&self) -> ServerError {
        ServerError::Unauthorized {
            reason: self.rejection.as_ref().map(|r| r.to_string()),
        }
    }
}

/// The token in an `Authorization` header, if it has one of the two accepted shapes.
pub fn token_from_headers(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (_, password) = text.split_once(':')?;
        Some(password.to_string())
    } else {
        None
    }
}

impl FromRequestParts<SharedState> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = token_from_headers(&parts.headers) else {
            return Ok(Caller::default());
        };
        if token.is_empty() {
            return Ok(Caller::default());
        }
        Ok(match state.verify_token(&token) {
            Ok(claims) => Caller {
                claims: Some(claims),
                rejection: None,
            },
            Err(r) => Caller {
                claims: None,
                rejection: Some(r),
            },
        })
    }
}

/// Loads a cache and checks a right, hiding whether the cache exists from anyone who has no
/// right at all on its name: they get 401 both when it is missing and when it is private.
pub async fn authorize(
    state: &SharedState,
    caller: &Caller,
    name: &str,
    needs: impl Fn(&Permission) -> bool,
) -> ServerResult<Arc<CacheEntry>> {
    let cache = state.cache(name).await?;
    let mut perm = caller.permission(name);
    if cache.as_ref().is_some_and(|c| c.row.is_public) {
        perm.pull = true;
    }
    decide(cache, &perm, needs).map_err(|e| match e {
        ServerError::Unauthorized { .. } => caller.unauthorized(),
        other => other,
    })
}

/// The discovery rule as a pure function of what was found and what is granted.
pub fn decide<T>(
    found: Option<T>,
    perm: &Permission,
    needs: impl Fn(&Permission) -> bool,
) -> ServerResult<T> {
    match found {
        _ if perm.is_empty() => Err(ServerError::Unauthorized { reason: None }),
        None => Err(ServerError::NoSuchCache),
        Some(_) if !needs(perm) => Err(ServerError::AccessError),
        Some(c) => Ok(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_and_netrc_basic_forms() {
        assert_eq!(
            token_from_headers(&headers("bearer abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_from_headers(&headers("Bearer abc")).as_deref(),
            Some("abc")
        );
        // base64(":tok123") as curl sends it from `machine h password tok123`
        assert_eq!(
            token_from_headers(&headers("Basic OnRvazEyMw==")).as_deref(),
            Some("tok123")
        );
        // user name is ignored, the password is the token
        assert_eq!(
            token_from_headers(&headers("Basic YWxpY2U6czNjcmV0")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(token_from_headers(&headers("Digest x")), None);
        assert_eq!(token_from_headers(&headers("Basic !!!")), None);
    }

    #[test]
    fn discovery_rule() {
        let none = Permission::default();
        let pull = Permission {
            pull: true,
            ..Default::default()
        };
        let push = |p: &Permission| p.push;
        assert!(matches!(
            decide(Some(1), &none, push),
            Err(ServerError::Unauthorized { .. })
        ));
        assert!(matches!(
            decide(None::<i32>, &none, push),
            Err(ServerError::Unauthorized { .. })
        ));
        assert!(matches!(
            decide(None::<i32>, &pull, push),
            Err(ServerError::NoSuchCache)
        ));
        assert!(matches!(
            decide(Some(1), &pull, push),
            Err(ServerError::AccessError)
        ));
        assert!(matches!(
            decide(Some(1), &pull, |p: &Permission| p.pull),
            Ok(1)
        ));
    }
}
