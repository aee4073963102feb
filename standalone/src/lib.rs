//! `kubefaas-standalone`: an embedded Kubernetes API server for development and tests.
//!
//! It serves the Kubernetes REST API for what kubefaas uses — discovery, OpenAPI for the
//! served types, the built-in types the platform needs, custom resources from CRDs, the verbs
//! with resource versions, watches, patches, finalizers and garbage collection — from one
//! process, keeping objects in memory or in a data directory. It is a harness, not a cluster:
//! no authentication or authorization, no admission webhooks, no controllers beyond garbage
//! collection and namespace cleanup. See the crate's README for what is simplified.
//!
//! This crate must not depend on the operator, gateway or executor: they are its clients.

mod api;
mod apply;
mod custom;
mod discovery;
mod error;
mod gc;
pub mod kubeconfig;
pub mod node;
mod openapi;
mod patch;
mod protobuf;
mod registry;
mod selector;
mod server;
mod store;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use error::{ApiError, Error};

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where to persist objects; `None` keeps them in memory only.
    pub data_dir: Option<PathBuf>,
    /// Where to write a kubeconfig for clients, if anywhere.
    pub kubeconfig: Option<PathBuf>,
    /// How many changes the watch history keeps; older resource versions get 410.
    pub history: usize,
    /// How often watches that allow bookmarks receive one.
    pub bookmark_interval: Duration,
    /// Ends every watch after at most this long, whatever `timeoutSeconds` its client asked
    /// for. A fault-injection knob: clients must resume cut watches (a real API server lets a
    /// watch run its `timeoutSeconds`, but proxies and restarts cut them sooner). `None` (the
    /// default) honours the client.
    pub max_watch: Option<Duration>,
    /// Also run the node agent ([`node::NodeAgent`]) with this configuration ([`run`] only;
    /// in-process users start it themselves with [`ApiServer::client`]).
    pub node_agent: Option<node::NodeConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            kubeconfig: None,
            history: 10_000,
            bookmark_interval: Duration::from_secs(10),
            max_watch: None,
            node_agent: None,
        }
    }
}

/// A running server. Dropping it does not stop it; call [`ApiServer::shutdown`].
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl ApiServer {
    /// Opens the store, binds, writes the kubeconfig and starts serving in the background.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let mut store = store::Store::open(config.data_dir.as_deref(), config.history)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind { addr: config.listen.to_string(), source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr: config.listen.to_string(), source })?;
        seed(&mut store);
        let crds: Vec<serde_json::Value> = store
            .list("apiextensions.k8s.io", "customresourcedefinitions", None)
            .map(|(_, v)| v.clone())
            .collect();
        let registry = registry::Registry::new(crds.iter());
        let state = Arc::new(server::AppState {
            cluster: Mutex::new(api::Cluster { store, registry, orphaned: Vec::new() }),
            address: addr.to_string(),
            bookmark_interval: config.bookmark_interval,
            max_watch: config.max_watch,
            stopping: tokio::sync::watch::Sender::new(false),
        });
        let stopping = state.stopping.clone();
        if let Some(path) = &config.kubeconfig {
            kubeconfig::write(path, &addr.to_string())?;
        }
        let app = axum::Router::new().fallback(server::handle).with_state(state);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                    stopping.send_replace(true);
                })
                .await
                .map_err(Error::Serve)
        });
        Ok(Self { addr, stop: Some(stop), task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `kube` client for this server (plain HTTP, namespace `default`).
    pub fn client(&self) -> Result<kube::Client, Error> {
        Ok(node::client_for(self.addr)?)
    }

    /// The kubeconfig text for this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig::render(&self.addr.to_string())
    }

    /// Stops accepting connections and waits for open requests to finish (open watches are
    /// cut when their connections close).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(Error::Serve(std::io::Error::other(join))),
        }
    }
}

/// The namespaces every cluster has.
fn seed(store: &mut store::Store) {
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = store::Key {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: name.into(),
        };
        if store.get(&key).is_none() {
            store.put(
                key,
                json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": name,
                        "uid": uuid::Uuid::new_v4().to_string(),
                        "creationTimestamp": api::now(),
                        "labels": {"kubernetes.io/metadata.name": name},
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }),
            );
        }
    }
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), Error> {
    let server = ApiServer::start(config.clone()).await?;
    tracing::info!(
        addr = %server.addr(),
        data_dir = ?config.data_dir,
        kubeconfig = ?config.kubeconfig,
        "kubefaas-apiserver ready"
    );
    let agent = match config.node_agent {
        Some(node) => Some(node::NodeAgent::start(server.client()?, node)?),
        None => None,
    };
    shutdown_signal().await;
    tracing::info!("stopping");
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    server.shutdown().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            futures::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                futures::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
