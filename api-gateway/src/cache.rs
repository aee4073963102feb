//! The watch-backed cache of `Function` resources: what the synchronous path reads instead of
//! asking the Kubernetes API on every request.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, reflector::ObjectRef, watcher},
};
use kubefaas_core::resources::{Function, FunctionPhase};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Functions of every namespace, kept current by a watch.
#[derive(Clone)]
pub(crate) struct FunctionCache {
    reader: reflector::Store<Function>,
}

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCache").field("functions", &self.reader.len()).finish()
    }
}

impl FunctionCache {
    /// Starts watching Functions through `client`; the task runs until aborted. Call
    /// [`FunctionCache::ready`] before trusting a miss.
    pub(crate) fn start(client: Client) -> (Self, JoinHandle<()>) {
        let api: Api<Function> = Api::all(client);
        let (reader, writer) = reflector::store();
        let stream = reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                if let Err(error) = item {
                    tracing::warn!(error = %error, "watching Functions failed; retrying");
                }
            }
        });
        (Self { reader }, task)
    }

    /// Waits up to `timeout` for the first complete listing. Returns whether it arrived.
    pub(crate) async fn ready(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.reader.wait_until_ready()).await.is_ok_and(|r| r.is_ok())
    }

    /// The live (not being deleted) Function `namespace/name`.
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<Function>> {
        self.reader
            .get(&ObjectRef::new(name).within(namespace))
            .filter(|f| f.metadata.deletion_timestamp.is_none())
    }

    /// The Function `namespace/name` as the cache has it, even while being deleted.
    pub(crate) fn get_any(&self, namespace: &str, name: &str) -> Option<Arc<Function>> {
        self.reader.get(&ObjectRef::new(name).within(namespace))
    }
}

/// Where a Function stands, as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Ready for its current spec; its row id.
    Ready(Uuid),
    /// The operator rejected its current spec.
    Failed(String),
    /// The operator has not finished with its current spec.
    Pending,
}

/// Whether `function` is ready for its current generation.
pub(crate) fn readiness(function: &Function) -> Readiness {
    let Some(status) = &function.status else {
        return Readiness::Pending;
    };
    if status.observed_generation != function.metadata.generation {
        return Readiness::Pending;
    }
    match status.phase {
        Some(FunctionPhase::Ready) => {
            match status.function_id.as_deref().and_then(|id| Uuid::parse_str(id).ok()) {
                Some(id) => Readiness::Ready(id),
                None => Readiness::Pending,
            }
        }
        Some(FunctionPhase::Failed) => Readiness::Failed(
            status.message.clone().unwrap_or_else(|| "the function failed".to_owned()),
        ),
        _ => Readiness::Pending,
    }
}

/// The row id to invoke `function` with, or why it cannot be invoked. A function being updated
/// can: its row id does not change, and the executor waits for the new code.
pub(crate) fn invocable(function: &Function) -> Result<Uuid, String> {
    match readiness(function) {
        Readiness::Ready(id) => Ok(id),
        Readiness::Failed(message) => Err(message),
        Readiness::Pending => function
            .status
            .as_ref()
            .and_then(|s| s.function_id.as_deref())
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| "the operator has not finished with it".to_owned()),
    }
}
