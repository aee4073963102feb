//! Small pieces every kubefaas service binary needs: waiting for the signal to stop, and the
//! readiness check of its dependencies.

use crate::{queue::Queue, store::Store};

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
