//! Small pieces every kubefaas service binary needs: waiting for the signal to stop, and the
//! readiness check of its dependencies.

use crate::{
    queue::{Queue, QueueConfig, QueueError},
    store::{Store, StoreConfig, StoreError},
};

/// PostgreSQL (migrated) and the Redis queue, as every service opens them at start.
#[derive(Clone, Debug)]
pub struct Backends {
    /// The store, migrated.
    pub store: Store,
    /// The Redis client (for the completion listener).
    pub redis: redis::Client,
    /// The queue, with its consumer group in place.
    pub queue: Queue,
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// PostgreSQL could not be reached or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Redis queue could not be set up.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The Redis URL is unusable.
    #[error("connecting to Redis: {0}")]
    Redis(#[source] redis::RedisError),
}

/// Connects to PostgreSQL and applies the migrations (several services starting at once
/// serialise on an advisory lock), then connects to Redis and makes sure the queue's consumer
/// group exists.
pub async fn connect(
    database_url: &str,
    redis_url: &str,
    queue_prefix: &str,
) -> Result<Backends, ConnectError> {
    let store = Store::connect(&StoreConfig::new(database_url)).await?;
    store.migrate().await?;
    let redis = redis::Client::open(redis_url).map_err(ConnectError::Redis)?;
    let config = QueueConfig { prefix: queue_prefix.to_owned(), ..QueueConfig::default() };
    let queue = Queue::connect(redis.clone(), &config).await?;
    queue.ensure_group().await?;
    Ok(Backends { store, redis, queue })
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). If a signal cannot be watched, only the other one
/// stops the process.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

/// Checks PostgreSQL and Redis answer. The error lists each dependency that does not, one per
/// line, for a `/readyz` body.
pub async fn readiness(store: &Store, queue: &Queue) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Err(error) = store.ping().await {
        problems.push(format!("postgres: {error}"));
    }
    if let Err(error) = queue.stats().await {
        problems.push(format!("redis: {error}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}
