//! Watch-backed caches of Kubernetes objects: what the gateway and the executor read instead of
//! asking the API server on every request.
//!
//! A [`Cache`] is a reflector over one kind. The caller starts it with a client and holds the
//! task it hands back; this module never starts work on its own. A cache lags the API server by
//! one watch event at least, so callers that must not act on stale state fall back to a read
//! of their own on a miss (see the executor's `KubeFunctions`).

use std::{fmt::Debug, sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, reflector, reflector::ObjectRef, watcher},
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};

use crate::resources::Function;

/// Objects of one kind, kept current by a watch.
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    reader: reflector::Store<K>,
    changes: watch::Receiver<()>,
}

/// `Function`s of every namespace: the cache the gateway and the executor share.
pub type FunctionCache = Cache<Function>;

impl<K: Resource<DynamicType = ()> + 'static> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self { reader: self.reader.clone(), changes: self.changes.clone() }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Debug for Cache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("kind", &K::kind(&()))
            .field("objects", &self.reader.len())
            .finish()
    }
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts watching the objects of `api` that `config` selects; the task runs until aborted
    /// and retries with backoff when the watch fails. Call [`Cache::ready`] before trusting a
    /// miss.
    pub fn start(api: Api<K>, config: watcher::Config) -> (Self, JoinHandle<()>) {
        let (reader, writer) = reflector::store();
        let (changed, changes) = watch::channel(());
        let stream = reflector(writer, watcher(api, config).default_backoff());
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    // Every event counts, a relist's end included: it may have dropped objects
                    // that were deleted while the watch was down.
                    Ok(_) => changed.send_replace(()),
                    Err(error) => {
                        tracing::warn!(kind = %K::kind(&()), %error, "watch failed; retrying")
                    }
                }
            }
        });
        (Self { reader, changes }, task)
    }

    /// Waits up to `timeout` for the first complete listing. Returns whether it arrived.
    pub async fn ready(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.reader.wait_until_ready()).await.is_ok_and(|r| r.is_ok())
    }

    /// The live (not being deleted) object `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.get_any(namespace, name).filter(|o| o.meta().deletion_timestamp.is_none())
    }

    /// The object `namespace/name` as the cache has it, even while being deleted.
    pub fn get_any(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.reader.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every live object the cache holds.
    pub fn live(&self) -> Vec<Arc<K>> {
        self.reader.state_filter(|o| o.meta().deletion_timestamp.is_none())
    }

    /// A receiver that is marked changed whenever the watch delivers something.
    pub fn changes(&self) -> watch::Receiver<()> {
        let mut changes = self.changes.clone();
        changes.mark_unchanged();
        changes
    }
}
