//! `SERVER:CACHE` or `CACHE` (default server) addressing, as in Attic.

use std::fmt;
use std::str::FromStr;

use garret_core::cache_name::CacheName;

/// A cache on an optional, named server from the client config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRef {
    /// `None` means "the default server" (or `GARRET_SERVER`).
    pub server: Option<String>,
    pub cache: CacheName,
}

impl FromStr for CacheRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (server, cache) = match s.split_once(':') {
            Some((server, cache)) => {
                // Server names follow cache-name rules so they are safe TOML keys.
                CacheName::parse(server)
                    .map_err(|_| format!("invalid server name {server:?} in {s:?}"))?;
                (Some(server.to_string()), cache)
            }
            None => (None, s),
        };
        let cache = CacheName::parse(cache).map_err(|e| e.to_string())?;
        Ok(CacheRef { server, cache })
    }
}

impl fmt::Display for CacheRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Some(s) => write!(f, "{s}:{}", self.cache),
            None => write!(f, "{}", self.cache),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let r: CacheRef = "main:hello".parse().unwrap();
        assert_eq!(r.server.as_deref(), Some("main"));
        assert_eq!(r.cache.as_str(), "hello");
        let r: CacheRef = "alice+shared".parse().unwrap();
        assert_eq!(r.server, None);
        assert_eq!(r.cache.as_str(), "alice+shared");
        assert_eq!(r.to_string(), "alice+shared");
    }

    #[test]
    fn rejects_bad_names() {
        assert!("".parse::<CacheRef>().is_err());
        assert!("main:".parse::<CacheRef>().is_err());
        assert!(":cache".parse::<CacheRef>().is_err());
        assert!("_api".parse::<CacheRef>().is_err());
        assert!("a:b:c".parse::<CacheRef>().is_err());
        assert!("srv/x:cache".parse::<CacheRef>().is_err());
    }
}
