//! The `kubefaas-executor` service: the worker over PostgreSQL, Redis and a backend, plus its
//! `/metrics`, `/healthz` and `/readyz` endpoint.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::FutureExt;
use kubefaas_core::{
    queue::{Queue, QueueError},
    service::{Backends, ConnectError, connect},
    store::{Store, StoreError},
};

use crate::{
    Driver, DriverConfig, Pool, SandboxMode,
    functions::KubeFunctions,
    kubernetes::{KubernetesBackend, KubernetesConfig},
    metrics::ExecutorMetrics,
    worker::{Backend, FunctionSource, Worker, WorkerConfig, WorkerError},
};

/// How often the queue and warm-instance gauges are refreshed.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the executor needs to start.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Prefix of every Redis key (shared with the operator).
    pub queue_prefix: String,
    /// Where instances and caches live (the local backend).
    pub work_dir: PathBuf,
    /// Limits and isolation of local instances.
    pub sandbox: SandboxMode,
    /// Consumer loop settings, including this executor's name.
    pub worker: WorkerConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// How long in-flight invocations may take to finish on shutdown.
    pub grace: Duration,
}

/// Why the executor could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// PostgreSQL.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// PostgreSQL or Redis could not be set up at start.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The Kubernetes client could not be built.
    #[error("connecting to the Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// The driver could not prepare its directories.
    #[error("preparing the runtime driver: {0}")]
    Driver(#[source] crate::Error),
    /// The worker failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
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

/// How often the instances of every function are compared with the watched Functions, besides
/// on every change (see [`crate::warm`]).
const WARM_RESYNC: Duration = Duration::from_secs(10);

/// Runs the executor with functions from the Kubernetes API (`KUBECONFIG` or in-cluster) and
/// the local backend until `shutdown` resolves.
pub async fn run(
    config: ExecutorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let client = kube::Client::try_default().await.map_err(ServiceError::Kube)?;
    run_with_client(config, client, shutdown).await
}

/// [`run`] over a given client: what `kubefaas up --backend local-unsafe` uses in-process.
pub async fn run_with_client(
    config: ExecutorConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    on_local_pool(config, |config, pool| run_watching(config, client, pool, shutdown)).await
}

/// Runs the executor with functions from the Kubernetes API and the `kubernetes` backend:
/// invocations run in runtime pods (see [`crate::kubernetes`]).
pub async fn run_kubernetes(
    config: ExecutorConfig,
    kubernetes: KubernetesConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let client = kube::Client::try_default().await.map_err(ServiceError::Kube)?;
    run_kubernetes_with_client(config, kubernetes, client, shutdown).await
}

/// [`run_kubernetes`] over a given client: what `kubefaas up` uses in-process, beside the
/// standalone control plane and its node agent.
pub async fn run_kubernetes_with_client(
    config: ExecutorConfig,
    kubernetes: KubernetesConfig,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let backend = KubernetesBackend::start(client.clone(), kubernetes).await;
    run_watching(config, client, backend, shutdown).await
}

/// Runs the executor with functions from a watch through `client` and `backend` running them;
/// the backend's warm instances follow the watched Functions (see [`crate::warm`]).
pub async fn run_watching<B: Backend + Clone>(
    config: ExecutorConfig,
    client: kube::Client,
    backend: B,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let (functions, watch) = KubeFunctions::start(client, !B::READS_ENV_FROM);
    let warmer =
        tokio::spawn(crate::warm::keep_warm(Arc::clone(&functions), backend.clone(), WARM_RESYNC));
    let result = run_with_backend(config, functions, backend, shutdown).await;
    warmer.abort();
    watch.abort();
    result
}

/// Runs the executor with `functions` as the source of functions and the local backend.
pub async fn run_with<S: FunctionSource>(
    config: ExecutorConfig,
    functions: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    on_local_pool(config, |config, pool| run_with_backend(config, functions, pool, shutdown)).await
}

/// Runs `run` over the local backend's pool, reaping its idle instances meanwhile and stopping
/// them all after.
async fn on_local_pool<F, R>(config: ExecutorConfig, run: F) -> Result<(), ServiceError>
where
    F: FnOnce(ExecutorConfig, Arc<Pool>) -> R,
    R: Future<Output = Result<(), ServiceError>>,
{
    let mut driver_config = DriverConfig::under(&config.work_dir);
    driver_config.sandbox = config.sandbox;
    let driver = Driver::new(driver_config).map_err(ServiceError::Driver)?;
    tracing::info!(sandbox = ?driver.sandbox(), "runtime driver ready");
    let pool = Arc::new(Pool::new(driver));
    let reaper = pool.spawn_reaper(Duration::from_secs(5));
    let result = run(config, Arc::clone(&pool)).await;
    reaper.abort();
    pool.clear();
    result
}

/// Runs the executor with `functions` as the source of functions and `backend` running them.
pub async fn run_with_backend<S: FunctionSource, B: Backend + Clone>(
    config: ExecutorConfig,
    functions: S,
    backend: B,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let shutdown = shutdown.boxed().shared();
    let Backends { store, queue, .. } =
        connect(&config.database_url, &config.redis_url, &config.queue_prefix).await?;

    let metrics = Arc::new(ExecutorMetrics::default());
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| ServiceError::Serve { addr: config.http_addr, source })?;
    let http_addr = listener.local_addr().unwrap_or(config.http_addr);
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            store: store.clone(),
            queue: queue.clone(),
            metrics: Arc::clone(&metrics),
        });
    let http = tokio::spawn(
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone()).into_future(),
    );

    let stats = {
        let (queue, metrics, backend) = (queue.clone(), Arc::clone(&metrics), backend.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(STATS_INTERVAL);
            loop {
                every.tick().await;
                if let Ok(stats) = queue.stats().await {
                    metrics.queue(&stats);
                }
                metrics.warm_instances(&backend.warm_instances());
            }
        })
    };

    tracing::info!(name = %config.worker.name, http = %http_addr, "kubefaas-executor running");
    let worker = Worker::new(config.worker.clone(), store, queue, backend, functions, metrics);
    let result = worker.run(shutdown, config.grace).await;
    stats.abort();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => return Err(ServiceError::Serve { addr: http_addr, source }),
        Err(join) => tracing::warn!(error = %join, "HTTP task ended abnormally"),
    }
    Ok(result?)
}

#[derive(Clone)]
struct AppState {
    store: Store,
    queue: Queue,
    metrics: Arc<ExecutorMetrics>,
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match kubefaas_core::service::readiness(&state.store, &state.queue).await {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(problems) => (StatusCode::SERVICE_UNAVAILABLE, problems),
    }
}
