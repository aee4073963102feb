//! `kubefaas-api-gateway`: the REST API of kubefaas (`docs/ARCHITECTURE.md`, "Components").
//!
//! It translates the earlier design's REST API into operations on `Function` and `Invocation`
//! resources, and serves results from PostgreSQL:
//!
//! - function create/update/delete write `Function` resources and wait (bounded) for the
//!   operator to report them ready; reads come from PostgreSQL;
//! - both invokes go straight onto the data plane: the function comes from a watch-backed
//!   cache, the invocation is recorded in PostgreSQL and put on the Redis queue
//!   (`kubefaas_core::submit::Submitter`: concurrent submissions share one `INSERT` and one
//!   pipeline of `XADD`s), with no Kubernetes API round trip and no object per call.
//!   `POST /invoke` answers 202 once the row is durable; `POST /functions/{name}/invoke` waits
//!   for the answer on the completion channel;
//! - admission by backlog: 429 with `Retry-After` while a function has too many unfinished
//!   invocations;
//! - bearer-token authentication (hashed tokens, constant-time comparison, namespace scopes),
//!   a per-token rate limit, body size limits, JSON errors everywhere, `/metrics`, health
//!   checks and `/openapi.json`.
//!
//! This crate must not run functions or reconcile resources: the executor and the operator do.
//! Start it in-process with [`Gateway::bind`] (port 0 works; [`Gateway::local_addr`] says which
//! port was taken) or with [`run`]/[`run_with_client`].

mod admission;
mod auth;
pub mod error;
mod extract;
mod metrics;
pub mod model;
pub mod openapi;
mod routes;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::DefaultBodyLimit, http::HeaderValue, middleware};
use kube::{Api, Client, runtime::watcher};
use kubefaas_core::{
    queue::{Completions, Queue, QueueError},
    service::{Backends, ConnectError, connect},
    store::{Store, StoreConfig, StoreError},
    submit::Submitter,
    tokens::NewToken,
    validation::Limits,
    watch::FunctionCache,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

pub use auth::RateLimit;

use crate::{
    admission::Admission,
    auth::{RateLimiter, Tokens},
    metrics::Metrics,
};

/// Response header carrying the invocation id of a synchronous invocation.
pub const INVOCATION_ID_HEADER: &str = "x-kubefaas-invocation-id";
/// Request header choosing the namespace (the `namespace` query parameter wins).
pub const NAMESPACE_HEADER: &str = "x-kubefaas-namespace";

/// Unfinished invocations a function may have before the gateway refuses new ones, unless
/// configured otherwise: minutes of work for a function the executors keep up with.
pub const DEFAULT_MAX_BACKLOG: u64 = 10_000;

/// Whether API requests need a bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Every API request needs `Authorization: Bearer <token>`.
    Token,
    /// No authentication: anyone who reaches the gateway may do anything. For local use.
    None,
}

/// Everything the gateway needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// PostgreSQL URL.
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Prefix of every Redis key (shared with the operator and executor).
    pub queue_prefix: String,
    /// Where to listen; port 0 picks a free port (see [`Gateway::local_addr`]).
    pub addr: SocketAddr,
    /// Authentication.
    pub auth: AuthMode,
    /// Namespace of requests that name none.
    pub default_namespace: String,
    /// Origins allowed by CORS; empty turns CORS off, `*` allows any origin.
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Per-token rate limit; `None` turns it off.
    pub rate_limit: Option<RateLimit>,
    /// Unfinished invocations a function may have before new ones are refused with 429;
    /// `None` admits without bound.
    pub max_backlog: Option<u64>,
    /// How long function create/update/delete wait for the operator.
    pub function_wait: Duration,
    /// Longest a synchronous invocation holds the HTTP request before answering 504 with the
    /// invocation id.
    pub sync_timeout: Duration,
    /// Platform bounds applied by validation (the operator's must be the same).
    pub limits: Limits,
}

impl Config {
    /// Settings with the defaults: port 8080 on all interfaces, token authentication, namespace
    /// `default`, no CORS, 6 MiB bodies, [`RateLimit::DEFAULT`] per token,
    /// [`DEFAULT_MAX_BACKLOG`] unfinished invocations per function, 30 s function wait, 60 s
    /// synchronous deadline.
    pub fn new(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            queue_prefix: "kubefaas".to_owned(),
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            auth: AuthMode::Token,
            default_namespace: "default".to_owned(),
            cors_origins: Vec::new(),
            max_body_bytes: 6 * 1024 * 1024,
            rate_limit: Some(RateLimit::DEFAULT),
            max_backlog: Some(DEFAULT_MAX_BACKLOG),
            function_wait: Duration::from_secs(30),
            sync_timeout: Duration::from_secs(60),
            limits: Limits::default(),
        }
    }
}

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the Kubernetes client failed.
    #[error("connecting to the Kubernetes API: {0}")]
    KubeClient(#[source] kube::Error),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// PostgreSQL or Redis could not be set up at start.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The Function watch did not deliver its first listing in time.
    #[error("the Function watch did not start within {0:?}; is the CRD installed?")]
    WatchStart(Duration),
    /// A CORS origin is not a valid header value.
    #[error("invalid CORS origin {0:?}")]
    CorsOrigin(String),
    /// Binding or serving HTTP failed.
    #[error("serving HTTP on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Settings the handlers read.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) auth: AuthMode,
    pub(crate) default_namespace: String,
    pub(crate) function_wait: Duration,
    pub(crate) sync_timeout: Duration,
    pub(crate) limits: Limits,
}

/// Shared state of every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) client: Client,
    pub(crate) store: Store,
    pub(crate) queue: Queue,
    pub(crate) completions: Completions,
    pub(crate) functions: FunctionCache,
    pub(crate) settings: Arc<Settings>,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) submitter: Submitter,
    pub(crate) rate_limiter: Option<Arc<RateLimiter>>,
    pub(crate) admission: Option<Arc<Admission>>,
    pub(crate) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// A gateway that is connected and listening, not yet serving.
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Connects to PostgreSQL (migrating it), Redis and the Kubernetes API, starts the Function
    /// watch and binds the listener.
    pub async fn bind(client: Client, config: Config) -> Result<Self, Error> {
        let Backends { store, redis, queue } =
            connect(&config.database_url, &config.redis_url, &config.queue_prefix).await?;
        let (completions, listener_task) = Completions::start(redis, queue.keys()).await?;
        let (functions, watch_task) =
            FunctionCache::start(Api::all(client.clone()), watcher::Config::default());
        let watch_wait = Duration::from_secs(30);
        if !functions.ready(watch_wait).await {
            watch_task.abort();
            listener_task.abort();
            return Err(Error::WatchStart(watch_wait));
        }
        let (submitter, submitter_task) = Submitter::start(store.clone(), queue.clone());
        let state = AppState {
            client,
            submitter,
            tokens: Arc::new(Tokens::new(store.clone())),
            store,
            queue,
            completions,
            functions,
            settings: Arc::new(Settings {
                auth: config.auth,
                default_namespace: config.default_namespace.clone(),
                function_wait: config.function_wait,
                sync_timeout: config.sync_timeout,
                limits: config.limits.clone(),
            }),
            rate_limiter: config.rate_limit.map(|limit| Arc::new(RateLimiter::new(limit))),
            admission: config.max_backlog.map(|bound| Arc::new(Admission::new(bound))),
            metrics: Arc::new(Metrics::default()),
        };
        let router = router(state, &config)?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Serve { addr: config.addr, source })?;
        let addr =
            listener.local_addr().map_err(|source| Error::Serve { addr: config.addr, source })?;
        Ok(Self { listener, addr, router, tasks: vec![listener_task, watch_task, submitter_task] })
    }

    /// The address the gateway listens on (the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves requests until `shutdown` resolves, then finishes the requests in flight.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let result = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| Error::Serve { addr: self.addr, source });
        for task in self.tasks {
            task.abort();
        }
        result
    }
}

fn router(state: AppState, config: &Config) -> Result<Router, Error> {
    let mut router = routes::router(state.clone())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state, metrics::observe));
    if !config.cors_origins.is_empty() {
        let origins = if config.cors_origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let values = config
                .cors_origins
                .iter()
                .map(|o| HeaderValue::from_str(o).map_err(|_| Error::CorsOrigin(o.clone())))
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(values)
        };
        router = router.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(Any)
                .allow_headers(Any)
                .expose_headers(Any),
        );
    }
    Ok(router)
}

/// Runs the gateway with the Kubernetes client from the environment (`KUBECONFIG`, or the
/// in-cluster service account) until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::KubeClient)?;
    run_with_client(client, config, shutdown).await
}

/// Runs the gateway with `client` until `shutdown` resolves. Logs the bound address once it
/// listens; use [`Gateway::bind`] to learn it programmatically.
pub async fn run_with_client(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let gateway = Gateway::bind(client, config).await?;
    tracing::info!(addr = %gateway.local_addr(), "kubefaas-api-gateway listening");
    gateway.serve(shutdown).await
}

/// Creates an API token named `name` for `namespaces` (`*` for all) in the database at
/// `database_url`, migrating it first. The returned secret is shown once and stored only as
/// its hash.
pub async fn create_token(
    database_url: &str,
    name: &str,
    namespaces: &[String],
) -> Result<NewToken, Error> {
    Ok(token_store(database_url).await?.create_token(name, namespaces, None).await?)
}

/// The API tokens in the database at `database_url`, newest first, as `GET /tokens` shows
/// them (never a secret or a hash).
pub async fn list_tokens(database_url: &str) -> Result<Vec<model::TokenInfo>, Error> {
    let rows = token_store(database_url).await?.list_tokens().await?;
    let now = chrono::Utc::now();
    Ok(rows.iter().map(|row| model::TokenInfo::of(row, now)).collect())
}

/// Revokes the API token `id` in the database at `database_url`: the revoked token, or `None`
/// when no active token has that id. Gateways stop accepting it within their token cache's
/// lifetime (10 s).
pub async fn revoke_token(
    database_url: &str,
    id: uuid::Uuid,
) -> Result<Option<model::TokenInfo>, Error> {
    let row = token_store(database_url).await?.revoke_token(id).await?;
    Ok(row.map(|row| model::TokenInfo::of(&row, chrono::Utc::now())))
}

/// The store at `database_url`, migrated (token commands may run before any gateway did).
async fn token_store(database_url: &str) -> Result<Store, Error> {
    let store = Store::connect(&StoreConfig::new(database_url)).await?;
    store.migrate().await?;
    Ok(store)
}
