//! Chunks as objects in an S3 bucket (AWS, Garage, any S3-compatible server).
//!
//! Built on `aws-sdk-s3` without `aws-config`: credentials are static (config file, else
//! the standard `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` variables), TLS is rustls on
//! ring like the rest of the workspace. Every request is bounded by timeouts and a small
//! retry budget so an S3 outage turns into `StorageError::Unavailable` (HTTP 503) within
//! seconds instead of a hung request.

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use bytes::Bytes;

use super::{check_key, Storage, StorageError, StorageResult};
use crate::config::S3Config;

/// A dead endpoint must fail fast: readiness probes and uploads wait on this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One HTTP attempt; chunks are at most a few MiB, so this is generous.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole operation including retries; nothing may hang longer than this.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Readiness probes (`/readyz`) usually give up after a few seconds themselves.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Rides out a dropped connection or a single 503 without stretching an outage.
const MAX_ATTEMPTS: u32 = 3;

pub struct S3Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
    endpoint: Option<String>,
}

/// Never prints credentials; the client itself is opaque anyway.
impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Builds the client; does not contact S3 (an unreachable S3 at start-up makes the
    /// server unready, not dead).
    pub fn new(cfg: &S3Config) -> anyhow::Result<S3Storage> {
        let credentials = match &cfg.credentials {
            Some(c) => Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                None,
                None,
                "garret-config",
            ),
            None => credentials_from_env()?,
        };
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(credentials)
            // Garage rejects the aws-chunked trailer signature of streaming checksums
            // (real-s3.md, pitfall 2); only send checksums where S3 demands them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(1)),
            );
        if let Some(endpoint) = &cfg.endpoint {
            // Self-hosted servers: path-style, because virtual hosts need wildcard DNS.
            conf = conf.endpoint_url(endpoint.clone()).force_path_style(true);
        }
        Ok(S3Storage {
            client: aws_sdk_s3::Client::from_conf(conf.build()),
            bucket: cfg.bucket.clone(),
            endpoint: cfg.endpoint.clone(),
        })
    }
}

/// The standard AWS variables, so secrets can stay out of the config file.
fn credentials_from_env() -> anyhow::Result<Credentials> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        )),
        _ => anyhow::bail!(
            "S3 storage needs credentials: set [storage.credentials] access_key_id and \
             secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ),
    }
}

/// Sorts an SDK failure into the storage error the API layer maps to a status:
/// missing object → `NotFound`; unreachable, timed out or 5xx → 503 `Unavailable`;
/// anything else (403, missing bucket, …) → an internal error with the reason. A missing
/// bucket is deliberately not `NotFound`: it is a misconfiguration, not a lost chunk.
/// Reads a whole response body. A body cut off mid-way is the network's fault, not the
/// object's.
async fn collect(key: &str, body: aws_sdk_s3::primitives::ByteStream) -> StorageResult<Bytes> {
    let body = body.collect().await.map_err(|e| {
        let detail = DisplayErrorContext(&e).to_string();
        tracing::warn!(key, error = %detail, "S3 body read failed: storage unavailable");
        StorageError::Unavailable(detail)
    })?;
    Ok(body.into_bytes())
}

fn classify<E, R>(key: &str, err: SdkError<E, R>) -> StorageError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let status = err.raw_response().map(HasStatus::status);
    let code = err.as_service_error().and_then(|e| e.code());
    let no_such_key = match code {
        Some(code) => code == "NoSuchKey",
        None => status == Some(404), // HEAD-style replies carry no error body
    };
    let detail = DisplayErrorContext(&err).to_string();
    let unavailable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(_) | SdkError::ServiceError(_) => status.is_some_and(|s| s >= 500),
        _ => false,
    };
    if no_such_key && matches!(err, SdkError::ServiceError(_)) {
        StorageError::NotFound(key.to_string())
    } else if unavailable {
        tracing::warn!(key, error = %detail, "S3 request failed: storage unavailable");
        StorageError::Unavailable(detail)
    } else {
        StorageError::Io {
            key: key.to_string(),
            source: std::io::Error::other(detail),
        }
    }
}

/// Lets `classify` read the HTTP status of whatever raw response type the SDK hands back.
trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

#[async_trait::async_trait]
impl Storage for S3Storage {
    async fn put(&self, key: &str, data: Bytes) -> StorageResult<()> {
        check_key(key)?;
        // An in-memory body: S3 PUTs are atomic, so readers never see a partial chunk.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> StorageResult<Bytes> {
        check_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        collect(key, out.body).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> StorageResult<Bytes> {
        check_key(key)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={offset}-{}", offset + len - 1))
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        let body = collect(key, out.body).await?;
        // A range past the end comes back short (or as 416): never hand out a partial chunk.
        if body.len() as u64 != len {
            return Err(StorageError::Io {
                key: key.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("asked for {len} bytes at {offset}, got {}", body.len()),
                ),
            });
        }
        Ok(body)
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        check_key(key)?;
        // S3 answers 204 for a missing key too, which is the contract we want.
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match classify(key, e) {
                StorageError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn check(&self) -> StorageResult<()> {
        // HeadBucket proves endpoint, credentials and bucket in one cheap request. No
        // retries and a short deadline: a readiness probe reports what it sees right now,
        // even when S3 accepts connections but never answers.
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(
                aws_sdk_s3::Config::builder()
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .operation_timeout(CHECK_TIMEOUT)
                            .build(),
                    ),
            )
            .send()
            .await
            .map_err(|e| match classify(&self.bucket, e) {
                StorageError::Unavailable(d) => StorageError::Unavailable(d),
                other => StorageError::Unavailable(format!("bucket {}: {other}", self.bucket)),
            })?;
        Ok(())
    }
}
