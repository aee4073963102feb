//! `kubefaas-operator`: reconciles `Function` and `Invocation` resources.
//!
//! - The **function controller** validates a Function, stores its code in an owned
//!   ConfigMap, records it in PostgreSQL and reports readiness in its status. A finalizer marks
//!   the row deleted when the Function goes (its history stays).
//! - The **invocation controller** waits (bounded) for the referenced function to
//!   be ready, records the invocation in PostgreSQL (idempotent on the object's uid), puts it on
//!   the Redis queue, and mirrors the outcome from PostgreSQL into the status as soon as the
//!   executor publishes the completion. Finished invocations are deleted after
//!   `ttlSecondsAfterFinished`.
//! - The **last-invoked tracker** keeps each Function's `status.lastInvokedAt` at the creation
//!   time of its newest invocation, from the completions the executor publishes and the rows in
//!   PostgreSQL, writing each function at most once per flush interval (see `last_invoked`).
//!
//! The operator is the only writer of both kinds' status. It needs no leader election: every step
//! is idempotent and every state change that must happen once is a compare-and-set in PostgreSQL
//! (`pending → queued` decides which replica enqueues), so two replicas side by side do the same
//! work twice at worst, never twice in effect. `lastInvokedAt` only moves forward: each write is
//! conditional on the `resourceVersion` it read, so replicas racing each other cannot put an
//! older time back. See `operator/README.md`.
//!
//! This crate must not run functions or touch the queue's consumer side: that is the executor.

pub mod fetch;
mod function;
pub mod http;
mod invocation;
mod last_invoked;
pub mod metrics;
pub mod names;
mod status;
mod trigger;
mod warm;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, future::Shared, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api, Client,
    runtime::{
        Controller, WatchStreamExt,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use kubefaas_core::{
    queue::{Completions, Notice, Queue, QueueError},
    resources::{Function, Invocation},
    service::{Backends, ConnectError, connect},
    store::{Store, StoreError},
    validation::Limits,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};

pub use crate::last_invoked::DEFAULT_FLUSH_INTERVAL as DEFAULT_LAST_INVOKED_FLUSH;
use crate::{
    fetch::{CodeFetcher, FetchConfig, FetchError},
    last_invoked::{FunctionRef, Tracker},
    metrics::Metrics,
};

/// Everything the operator needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Prefix of every Redis key (shared with the executor).
    pub queue_prefix: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// How long an Invocation waits for its function to exist and be ready before it fails.
    pub function_wait: Duration,
    /// Platform bounds applied by validation.
    pub limits: Limits,
    /// How `spec.code.url` is downloaded. Its `max_bytes` is raised to no more than
    /// `limits.max_code_bytes`, the bound on code stored in a ConfigMap.
    pub code_download: FetchConfig,
    /// How often, at most, a function's `status.lastInvokedAt` is written (by one replica);
    /// [`DEFAULT_LAST_INVOKED_FLUSH`] unless there is a reason to change it.
    pub last_invoked_flush: Duration,
}

/// Why the operator stopped or a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the Kubernetes client failed.
    #[error("connecting to the Kubernetes API: {0}")]
    KubeClient(#[source] kube::Error),
    /// A Kubernetes API call failed.
    #[error("{op} {object}: {source}")]
    Kube {
        /// What was being done.
        op: &'static str,
        /// Which object.
        object: String,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A submission was not recorded (retried by the controller).
    #[error(transparent)]
    Submit(kubefaas_core::submit::SubmitError),
    /// PostgreSQL or Redis could not be set up at start.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An object lacks a field the API server always sets.
    #[error("{kind} has no {field}")]
    MissingField {
        /// Kind of object.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Adding or removing the function finalizer failed.
    #[error("function finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The code downloader could not be set up.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The HTTP endpoint could not be served.
    #[error("serving HTTP on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn kube(
        op: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Self {
        let object = object.into();
        move |source| Self::Kube { op, object, source }
    }
}

/// Shared state of both controllers.
pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) store: Store,
    pub(crate) queue: Queue,
    pub(crate) recorder: Recorder,
    pub(crate) limits: Limits,
    pub(crate) fetcher: CodeFetcher,
    pub(crate) function_wait: Duration,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) last_invoked: Arc<Tracker>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Runs the operator with the Kubernetes client from the environment (`KUBECONFIG`, or the
/// in-cluster service account) until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::KubeClient)?;
    run_with_client(client, config, shutdown).await
}

/// Runs the operator with `client` until `shutdown` resolves: migrates the database, then runs
/// both controllers, the completion follower and the HTTP endpoint.
pub async fn run_with_client(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown: Shared<futures::future::BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let fetcher = CodeFetcher::new(&FetchConfig {
        max_bytes: config.code_download.max_bytes.min(config.limits.max_code_bytes),
        ..config.code_download.clone()
    })?;

    let Backends { store, redis, queue } =
        connect(&config.database_url, &config.redis_url, &config.queue_prefix).await?;
    let (completions, listener) = Completions::start(redis, queue.keys()).await?;

    let metrics = Arc::new(Metrics::default());
    let last_invoked = Arc::new(Tracker::new(config.last_invoked_flush, config.namespace.clone()));
    let reporter = Reporter {
        controller: names::FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        store: store.clone(),
        queue: queue.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        limits: config.limits.clone(),
        fetcher,
        function_wait: config.function_wait,
        metrics: Arc::clone(&metrics),
        last_invoked: Arc::clone(&last_invoked),
    });

    let listener_addr = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Serve { addr: config.http_addr, source })?;
    let http = tokio::spawn(http::serve(
        listener_addr,
        http::Health { store: store.clone(), queue },
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let flusher = tokio::spawn(last_invoked::flush(
        Arc::clone(&last_invoked),
        client.clone(),
        store,
        Arc::clone(&metrics),
        shutdown.clone(),
    ));

    let (functions, invocations, config_maps, pods) = match &config.namespace {
        Some(ns) => (
            Api::<Function>::namespaced(client.clone(), ns),
            Api::<Invocation>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };

    let owned = watcher::Config::default()
        .labels(&format!("app.kubernetes.io/managed-by={}", names::MANAGED_BY));
    // Runtime pods (the executor's kubernetes backend) are owned by their Function: their coming
    // and going updates `warmInstances`, through a writer of its own (`warm`), not the Function
    // pipeline.
    let runtime_pods = watcher::Config::default().labels(names::FUNCTION_LABEL);
    let warm = tokio::spawn(warm::follow(client.clone(), pods, runtime_pods, shutdown.clone()));
    // Each controller's own watch, with triggers held back until its store has them (see
    // `trigger`: kube-runtime's default trigger drops objects created while a watch expired).
    let (function_store, writer) = reflector::store();
    let function_events = watcher(functions, watcher::Config::default()).default_backoff();
    let function_triggers = trigger::after_store(function_events.reflect(writer));
    let (invocation_store, writer) = reflector::store();
    let invocation_events = watcher(invocations, watcher::Config::default()).default_backoff();
    let invocation_triggers = trigger::after_store(invocation_events.reflect(writer));
    let function_controller = Controller::for_stream(function_triggers, function_store)
        .owns(config_maps, owned)
        .graceful_shutdown_on(shutdown.clone())
        .run(function::reconcile, function::error_policy, Arc::clone(&ctx))
        .for_each(|result| async move { log_reconcile("Function", result) });

    let (one, all) = follow_completions(&completions, &ctx.store, last_invoked);
    let invocation_controller = Controller::for_stream(invocation_triggers, invocation_store)
        .reconcile_on(one)
        .reconcile_all_on(all)
        .graceful_shutdown_on(shutdown.clone())
        .run(invocation::reconcile, invocation::error_policy, Arc::clone(&ctx))
        .for_each(|result| async move { log_reconcile("Invocation", result) });

    tracing::info!(http = %config.http_addr, "kubefaas-operator running");
    tokio::join!(function_controller, invocation_controller);
    if let Err(join) = warm.await {
        tracing::warn!(error = %join, "warmInstances writer ended abnormally");
    }
    drop(completions);
    listener.abort();
    if let Err(join) = flusher.await {
        tracing::warn!(error = %join, "lastInvokedAt flusher ended abnormally");
    }
    match http.await {
        Ok(result) => result,
        Err(join) => {
            tracing::warn!(error = %join, "HTTP task ended abnormally");
            Ok(())
        }
    }
}

fn log_reconcile<K: kube::Resource, E: std::fmt::Display>(
    kind: &str,
    result: Result<(ObjectRef<K>, kube::runtime::controller::Action), E>,
) {
    match result {
        Ok((object, _)) => tracing::debug!(kind, %object, "reconciled"),
        Err(error) => tracing::warn!(kind, error = %error, "reconcile failed"),
    }
}

/// Turns completion notices into reconcile requests: one Invocation for each completion made
/// through one (the announcement says which), every Invocation after the notices may have been
/// missed. Each completed row also
/// tells `last_invoked` when its function was invoked.
#[allow(clippy::type_complexity)]
fn follow_completions(
    completions: &Completions,
    store: &Store,
    last_invoked: Arc<Tracker>,
) -> (
    impl futures::Stream<Item = ObjectRef<Invocation>> + Send + 'static,
    impl futures::Stream<Item = ()> + Send + 'static,
) {
    let mut notices = completions.notices();
    let (one_tx, one_rx) = mpsc::channel::<ObjectRef<Invocation>>(1024);
    let (all_tx, all_rx) = mpsc::channel::<()>(1);
    let store = store.clone();
    tokio::spawn(async move {
        loop {
            let completion = match notices.recv().await {
                Ok(Notice::Completed(completion)) => completion,
                Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                    last_invoked.notices_missed();
                    // A full channel already holds a pending resync.
                    let _ = all_tx.try_send(());
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            // The announcement says whose invocation it was; an older executor's does not,
            // and then the row does.
            let origin = match &completion.origin {
                Some(origin) => Ok(Some(origin.clone())),
                None => store.invocation(completion.id).await.map(|row| row.map(|r| r.origin())),
            };
            let id = completion.id;
            match origin {
                Ok(Some(origin)) => {
                    let function = FunctionRef {
                        uid: origin.function_id,
                        namespace: origin.namespace.clone(),
                        name: origin.function,
                    };
                    last_invoked.invoked(function, origin.created_at);
                    if let Some(name) = origin.resource_name {
                        let object = ObjectRef::new(&name).within(&origin.namespace);
                        if one_tx.send(object).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%id, error = %error, "cannot look up a completed invocation");
                    last_invoked.notices_missed();
                    let _ = all_tx.try_send(());
                }
            }
        }
    });
    let one =
        stream::unfold(one_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let all =
        stream::unfold(all_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    (one, all)
}
