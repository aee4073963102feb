//! Liveness, readiness, metrics and the OpenAPI document.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use utoipa::OpenApi;

use crate::{
    AppState,
    model::{HealthResponse, ReadyResponse},
    openapi::ApiDoc,
};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The gateway is alive", body = HealthResponse)))]
pub(crate) async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".to_owned() })
}

/// Liveness, Kubernetes-style name: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The gateway is alive", body = HealthResponse)))]
pub(crate) async fn healthz() -> Json<HealthResponse> {
    health().await
}

/// Readiness: PostgreSQL, Redis and the Kubernetes API answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Every dependency answers", body = ReadyResponse),
        (status = 503, description = "Some dependency does not", body = ReadyResponse),
    ))]
pub(crate) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let (postgres, redis, kubernetes) = tokio::join!(
        bounded(state.store.ping()),
        bounded(state.queue.stats()),
        bounded(state.client.apiserver_version())
    );
    let mut checks = BTreeMap::new();
    let mut ok = true;
    for (name, result) in [("postgres", postgres), ("redis", redis), ("kubernetes", kubernetes)] {
        let value = match result {
            Ok(()) => "ok".to_owned(),
            Err(error) => {
                ok = false;
                tracing::warn!(dependency = name, %error, "readiness check failed");
                error
            }
        };
        checks.insert(name.to_owned(), value);
    }
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = ReadyResponse { status: if ok { "ok" } else { "unavailable" }.to_owned(), checks };
    (status, Json(body))
}

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A readiness check, bounded in time, with its error as text.
async fn bounded<T, E: std::fmt::Display>(
    check: impl Future<Output = Result<T, E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object)))]
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
