//! The routes: which path runs which handler, and which ones need a token.

pub(crate) mod functions;
pub(crate) mod health;
pub(crate) mod invocations;
pub(crate) mod lambda;
pub(crate) mod tokens;

use axum::{
    Router,
    http::{StatusCode, Uri},
    middleware,
    routing::{delete, get, post},
};

use kube::api::PostParams;

use crate::{AppState, auth, error::ApiError};

/// Field manager of every object the gateway writes.
pub(crate) const FIELD_MANAGER: &str = "kubefaas-api-gateway";

/// Create/replace parameters naming the gateway as the field manager.
pub(crate) fn post_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() }
}

/// Every route. The API routes sit behind authentication and the rate limit; health, metrics
/// and the OpenAPI document do not.
pub(crate) fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/functions", post(functions::create).get(functions::list))
        .route(
            "/functions/{function}",
            get(functions::get).put(functions::update).delete(functions::delete),
        )
        .route("/functions/{function}/invoke", post(invocations::invoke_sync))
        .route("/invoke", post(invocations::invoke_async))
        .route("/invocations", get(invocations::list))
        .route("/invocations/{id}", get(invocations::get))
        .route("/invocations/{id}/logs", get(invocations::logs))
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{id}", delete(tokens::revoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    // AWS Lambda's Invoke API, with its errors (authentication's included) in Lambda's shape.
    let lambda = Router::new()
        .route("/2015-03-31/functions/{function}/invocations", post(lambda::invoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route_layer(middleware::from_fn(lambda::lambda_errors));
    let open = Router::new()
        .route("/health", get(health::health))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi));
    api.merge(lambda)
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}; see /openapi.json", uri.path()))
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not allow this method; see /openapi.json", uri.path()),
    )
}
