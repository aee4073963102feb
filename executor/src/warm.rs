//! Keeps a backend's instances in step with the Functions the watch sees: `minWarm` instances
//! start as soon as a Function is Ready (ahead of its first invocation), instances of earlier
//! code or settings are replaced when the Function changes, and the instances of a deleted
//! Function are retired.
//!
//! It is level-triggered: every change the watch delivers, and every `resync` besides, compares
//! the whole cache with what the backend holds, so a missed event costs at most one `resync`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use kube::ResourceExt;
use kubefaas_core::resources::Readiness;
use tokio::time::MissedTickBehavior;

use crate::{functions::KubeFunctions, worker::Backend};

/// Runs until aborted: syncs `backend` with `functions` on every change of the watch and every
/// `resync`.
pub async fn keep_warm<B: Backend + Clone>(
    functions: Arc<KubeFunctions>,
    backend: B,
    resync: Duration,
) {
    let warming: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let mut changes = functions.cache().changes();
    let mut tick = tokio::time::interval(resync);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watching = true;
    loop {
        tokio::select! {
            changed = changes.changed(), if watching => watching = changed.is_ok(),
            _ = tick.tick() => {}
        }
        sync(&functions, &backend, &warming).await;
    }
}

/// One comparison of the cache with the backend.
async fn sync<B: Backend + Clone>(
    functions: &Arc<KubeFunctions>,
    backend: &B,
    warming: &Arc<Mutex<HashSet<(String, String)>>>,
) {
    let held: HashSet<(String, String)> =
        backend.warm_instances().into_iter().map(|w| (w.namespace, w.function)).collect();
    let mut live = HashSet::new();
    for function in functions.cache().live() {
        let key = (function.namespace().unwrap_or_default(), function.name_any());
        live.insert(key.clone());
        // A function without instances and without `minWarm` needs nothing; one that is not
        // Ready for its current spec keeps what it has until it is.
        if (function.spec.scaling.min_warm <= 0 && !held.contains(&key))
            || !matches!(function.readiness(), Readiness::Ready(_))
        {
            continue;
        }
        if !warming.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone()) {
            continue;
        }
        let (functions, backend, warming) =
            (Arc::clone(functions), backend.clone(), Arc::clone(warming));
        tokio::spawn(async move {
            let (namespace, name) = &key;
            if let Some(resolved) = functions.resolve_cached(namespace, name, None).await {
                backend.keep_warm(namespace, &resolved).await;
            }
            warming.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        });
    }
    for (namespace, name) in held.difference(&live) {
        // The watch may not have delivered a function created a moment ago: only a function the
        // API server does not have either is retired.
        if let Ok(None) = functions.fetch(namespace, name).await {
            tracing::info!(%namespace, function = %name, "function deleted; retiring its instances");
            backend.retire(namespace, name).await;
        }
    }
}
