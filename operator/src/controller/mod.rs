//! The edge of the pipeline: the two controllers and what they share (the API client, the
//! Event recorder, error back-off, and one helper per kind of write). Everything here talks
//! to the API server, the clock or the random source; every decision it acts on comes from
//! the pure `desired` and `token` modules.

pub mod binary_cache;
pub mod cache_token;
pub mod probe;
pub mod queue;
pub mod revocation_push;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::desired::meta::{key_of, owned_by, Note, MANAGED_BY};
use crate::{Error, Result, FIELD_MANAGER};

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch one namespace only; all namespaces when `None`.
    pub namespace: Option<String>,
    /// RSA size of generated token-signing keys (Attic generates 4096).
    pub rsa_bits: usize,
    /// Re-check everything this often even without changes, to undo drift.
    pub resync: Duration,
    /// Where to reach each BinaryCache's garretd to check what it serves and to push
    /// revocations: a URL template with `{name}` and `{namespace}` (see `probe::base_url`);
    /// `None`: its Service (check) and each of its pods (revocations).
    pub garretd_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: None,
            rsa_bits: 4096,
            resync: Duration::from_secs(300),
            garretd_url: None,
        }
    }
}

/// Shared by every reconcile of one controller.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    failures: Mutex<HashMap<String, u32>>,
    /// Parsed token-signing keys (CacheToken controller; see `token::wake::KeyCache`).
    keys: Mutex<crate::token::wake::KeyCache>,
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            failures: Mutex::new(HashMap::new()),
            keys: Mutex::new(Default::default()),
        }
    }

    /// The parsed signing keys kept between reconciles.
    pub fn signing_keys(&self) -> std::sync::MutexGuard<'_, crate::token::wake::KeyCache> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Api for `K` in the object's namespace.
    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Publish `note` as an Event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, note: &Note) {
        let ev = Event {
            type_: EventType::Normal,
            reason: note.reason.into(),
            note: Some(note.note.clone()),
            action: note.action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason = %ev.reason, "publishing event failed");
        }
    }

    fn note_failure(&self, key: String) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn note_success(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
        map.remove(&format!("wait:{key}"));
    }
}

/// Exponential back-off after `failures` consecutive failures: 5 s, 10 s, 20 s … capped at
/// 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// Watch only objects the operator wrote, so it does not cache every Secret in the cluster.
pub fn children_only() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
}

/// How long to wait for something expected to appear (a Secret the other controller is
/// writing, a BinaryCache not applied yet) before looking again after `waits` looks: 1 s,
/// 2 s, 4 s … capped at 30 s. Watches usually wake the object earlier (a BinaryCache appearing
/// or getting its key wakes its tokens).
pub fn wait_retry(waits: u32) -> Duration {
    let exp = waits.saturating_sub(1).min(5);
    Duration::from_secs((1u64 << exp).min(30))
}

/// Requeue after an error. An expected wait ([`Error::Dependency`]: a BinaryCache or its key
/// Secret not there yet, as on every first apply) is logged at info and retried on its own
/// short schedule ([`wait_retry`]), without counting as a failure; anything else is a warning
/// with per-object back-off ([`backoff`]).
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = key_of(obj.as_ref());
    let requeue = |delay| {
        crate::metrics::global().requeued(&K::kind(&()), &key, delay);
        Action::requeue(delay)
    };
    if let Error::Dependency(_) = error {
        let delay = wait_retry(ctx.note_failure(format!("wait:{key}")));
        tracing::info!(object = %key, reason = %error, retry = ?delay, "waiting");
        return requeue(delay);
    }
    let n = ctx.note_failure(key.clone());
    let delay = backoff(n);
    tracing::warn!(object = %key, %error, failures = n, ?delay, "reconcile failed");
    requeue(delay)
}

/// Now, as a Kubernetes timestamp.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// `Api` for `K` in the watched namespace, or in all namespaces.
pub fn scoped_api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Server-side apply `obj` (forced: the operator owns these fields).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| Error::kube(format!("applying {} {name}", K::kind(&())), e))
}

/// Delete if present.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting {name}"), e)),
    }
}

/// Create `obj` unless it exists (409 counts as done): for objects written once.
pub async fn create_if_absent<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(format!("creating {}", obj.name_any()), e)),
    }
}

/// Delete `name` if it exists and `owner_uid` owns it; objects of others are left alone.
pub async fn delete_if_owned<K>(api: &Api<K>, name: &str, owner_uid: Option<&str>) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match get_opt(api, name).await? {
        Some(existing) if owned_by(&existing, owner_uid) => delete_if_present(api, name).await,
        _ => Ok(()),
    }
}

/// Merge-patch `status` into the status subresource of `obj`.
pub async fn patch_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map_err(|e| Error::kube(format!("writing {} status", K::kind(&())), e))?;
    Ok(())
}

/// Get, with `None` for 404.
pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading {name}"), e))
}

/// Run both controllers until the stream ends (shutdown signal or watch failure).
pub async fn run(client: Client, settings: Settings) {
    let bc = binary_cache::controller(client.clone(), settings.clone());
    let ct = cache_token::controller(client, settings);
    futures::join!(bc, ct);
}

/// Drain a controller stream, logging each outcome.
async fn drain<S, T, E>(stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    T: std::fmt::Debug,
    E: std::fmt::Display,
{
    stream
        .for_each(|r| async move {
            match r {
                Ok(o) => tracing::debug!(?o, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }

    #[test]
    fn waits_are_short_and_capped() {
        assert_eq!(wait_retry(1), Duration::from_secs(1));
        assert_eq!(wait_retry(3), Duration::from_secs(4));
        assert_eq!(wait_retry(100), Duration::from_secs(30));
    }
}
