//! Request extractors whose rejections come back in the API's JSON error shape, and the
//! namespace a request acts in.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{
        FromRequest, FromRequestParts, Query, Request,
        rejection::{BytesRejection, JsonRejection, QueryRejection},
    },
    http::{StatusCode, request::Parts},
};
use kubefaas_core::{tokens::TokenRow, validation::is_dns1123_label};
use serde::de::DeserializeOwned;

use crate::{AppState, NAMESPACE_HEADER, error::ApiError};

/// A JSON body. Malformed JSON, a wrong content type or an oversized body are JSON errors.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(bytes) => bytes_rejection(bytes),
        // Syntax errors (400) and type errors (422) both mean the body is wrong: 400.
        other => ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", other.body_text()),
    }
}

/// A raw body, whose rejections (over the size limit) are JSON errors.
#[derive(Debug)]
pub(crate) struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(Self).map_err(|r| bytes_rejection(&r))
    }
}

fn bytes_rejection(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the gateway accepts",
        )
    } else {
        ApiError::new(rejection.status(), "invalid_request", rejection.body_text())
    }
}

/// Query parameters; a malformed query string is a JSON 400.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", rejection.body_text())
}

/// Who is calling: the token that authenticated the request, or nobody when authentication is
/// off. Put into the request's extensions by the authentication middleware.
#[derive(Clone, Debug, Default)]
pub(crate) struct Principal {
    /// The token; `None` when authentication is off.
    pub token: Option<Arc<TokenRow>>,
}

/// The namespace a request acts in: the `namespace` query parameter, else the
/// `X-Kubefaas-Namespace` header, else the configured default. The caller's token must be
/// scoped to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Namespace(pub String);

#[derive(serde::Deserialize)]
struct NamespaceParam {
    namespace: Option<String>,
}

impl FromRequestParts<AppState> for Namespace {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let from_query = Query::<NamespaceParam>::try_from_uri(&parts.uri)
            .map_err(|r| query_rejection(&r))?
            .0
            .namespace;
        let from_header = match parts.headers.get(NAMESPACE_HEADER) {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| ApiError::field("namespace", "the header is not valid text"))?
                    .to_owned(),
            ),
            None => None,
        };
        let namespace =
            from_query.or(from_header).unwrap_or_else(|| state.settings.default_namespace.clone());
        if !is_dns1123_label(&namespace) {
            return Err(ApiError::field(
                "namespace",
                format!("{namespace:?} is not a valid namespace name (a DNS-1123 label)"),
            ));
        }
        let principal = parts.extensions.get::<Principal>().cloned().unwrap_or_default();
        if let Some(token) = &principal.token
            && !token.allows(&namespace)
        {
            return Err(ApiError::forbidden(format!(
                "token {:?} may not act in namespace {namespace:?}",
                token.name
            )));
        }
        Ok(Self(namespace))
    }
}
