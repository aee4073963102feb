//! The operator's HTTP endpoint: `/metrics`, `/healthz` (the process answers) and `/readyz`
//! (PostgreSQL and Redis answer).

use std::{future::Future, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kubefaas_core::{queue::Queue, store::Store};
use tokio::net::TcpListener;

use crate::{Error, metrics::Metrics};

/// What `/readyz` checks.
#[derive(Clone, Debug)]
pub struct Health {
    /// The database.
    pub store: Store,
    /// The queue.
    pub queue: Queue,
}

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: Arc<Metrics>,
}

/// The router, for tests and for [`serve`].
pub fn router(health: Health, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState { health, metrics })
}

/// Serves the endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(|source| Error::Serve {
        addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    axum::serve(listener, router(health, metrics))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Serve { addr, source })
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match kubefaas_core::service::readiness(&state.health.store, &state.health.queue).await {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(problems) => (StatusCode::SERVICE_UNAVAILABLE, problems),
    }
}
