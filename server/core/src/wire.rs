//! Attic's JSON bodies, field for field. Shared by the server and the `garret` client so
//! both sides of the wire have one definition.

use serde::{Deserialize, Serialize};

/// `GET /_api/v1/cache-config/{cache}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypair: Option<KeypairConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substituter_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cache_key_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_period: Option<RetentionPeriodConfig>,
    /// Garret extension (docs/pull-through.md): upstream caches a miss is fetched from.
    /// Only sent when the cache has some, so Attic's answer is unchanged otherwise; the
    /// stock attic client ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<crate::upstream::Upstream>>,
}

/// `POST /_api/v1/cache-config/{cache}`: every field required.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateCacheRequest {
    pub keypair: KeypairConfig,
    pub is_public: bool,
    pub store_dir: String,
    pub priority: i32,
    pub upstream_cache_key_names: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum KeypairConfig {
    Generate,
    Keypair(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum RetentionPeriodConfig {
    Global,
    Period(u32),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetMissingPathsRequest {
    pub cache: String,
    pub store_path_hashes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetMissingPathsResponse {
    pub missing_paths: Vec<String>,
}

/// Upload metadata: `X-Attic-Nar-Info` header or the body preamble.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadPathNarInfo {
    pub cache: String,
    pub store_path_hash: String,
    pub store_path: String,
    pub references: Vec<String>,
    #[serde(default)]
    pub system: Option<String>,
    #[serde(default)]
    pub deriver: Option<String>,
    #[serde(default)]
    pub sigs: Vec<String>,
    #[serde(default)]
    pub ca: Option<String>,
    pub nar_hash: String,
    pub nar_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadPathResult {
    pub kind: UploadPathResultKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    #[serde(default)]
    pub frac_deduplicated: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum UploadPathResultKind {
    Uploaded,
    Deduplicated,
    /// Anything a newer server sends that we don't know.
    #[serde(other)]
    Unknown,
}

/// Header names of the upload endpoint.
pub const NAR_INFO_HEADER: &str = "x-attic-nar-info";
pub const NAR_INFO_PREAMBLE_SIZE_HEADER: &str = "x-attic-nar-info-preamble-size";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_serde_external_tagging_like_attic() {
        assert_eq!(
            serde_json::to_string(&KeypairConfig::Generate).unwrap(),
            "\"Generate\""
        );
        assert_eq!(
            serde_json::to_string(&RetentionPeriodConfig::Period(60)).unwrap(),
            "{\"Period\":60}"
        );
        let r: UploadPathResult =
            serde_json::from_str("{\"kind\":\"Teleported\",\"frac_deduplicated\":null}").unwrap();
        assert_eq!(r.kind, UploadPathResultKind::Unknown);
    }
}
