//! The one error type of every handler, and the JSON shape all errors share:
//! `{"error": {"code": "...", "message": "..."}}`.
//!
//! 4xx bodies say what to fix; 5xx bodies are generic and the cause is logged (inside the
//! request's span, which carries its `X-Request-Id`).

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use kubefaas_core::{resources::InvocationError, store::StoreError};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::INVOCATION_ID_HEADER;

/// Every error response: one `error` object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorInfo,
}

/// What went wrong. `code` is stable and meant for programs; `message` is for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorInfo {
    /// Machine-readable kind: `invalid_request`, `invalid_json`, `unsupported_media_type`,
    /// `unauthorized`, `forbidden`, `not_found`, `method_not_allowed`, `conflict`,
    /// `not_ready`, `payload_too_large`, `rate_limited`, `backlog_full`, `unavailable`, `timeout`, `internal`,
    /// and for synchronous invocations `function_error`, `function_timeout`, `out_of_memory`,
    /// `invocation_failed`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault (first one, when several are), for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every field at fault, for `invalid_request`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldProblem>,
    /// The function's error type (`ValueError`, `TimedOut`, `OutOfMemory`, ...), for failed
    /// synchronous invocations.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The function's stack trace, when the runtime gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The invocation concerned, for synchronous invocations (also in the
    /// `X-Kubefaas-Invocation-Id` header); poll `GET /invocations/{id}` after a `timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<Uuid>,
}

/// One rejected request field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldProblem {
    /// The field, in the request's own names (`code`, `environment[FOO]`, `memory_mb`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// What a 503 asks the client to wait before trying again: about as long as a restarting
/// PostgreSQL or Redis takes to answer again, and as long as the executors wait themselves.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 2;

/// An error answer of the REST API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Rarely set parts, boxed so results of handlers stay small.
    extra: Box<Extra>,
}

#[derive(Debug, Default)]
struct Extra {
    details: Vec<FieldProblem>,
    function_error: Option<InvocationError>,
    invocation_id: Option<Uuid>,
    retry_after: Option<u64>,
}

/// Result of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), extra: Box::default() }
    }

    /// 400 for one bad field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self::invalid(vec![FieldProblem { field, message }])
    }

    /// 400 for several bad fields (never empty).
    pub fn invalid(details: Vec<FieldProblem>) -> Self {
        let message = details
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut error = Self::new(StatusCode::BAD_REQUEST, "invalid_request", message);
        error.extra.details = details;
        error
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429 with a `Retry-After` of `seconds`.
    pub fn rate_limited(seconds: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests for this token; retry later",
        );
        error.extra.retry_after = Some(seconds.max(1));
        error
    }

    /// 429 because the function's backlog is full, with a `Retry-After` of `seconds`.
    pub fn backlog_full(message: impl Into<String>, seconds: u64) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "backlog_full", message);
        error.extra.retry_after = Some(seconds.max(1));
        error
    }

    /// 503 because a dependency failed, with a `Retry-After` of
    /// [`UNAVAILABLE_RETRY_AFTER_SECONDS`]; the cause is logged, not shown. Nothing was
    /// accepted: the request may be sent again as it is.
    pub fn unavailable(dependency: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(dependency, error = %cause, "dependency failed");
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{dependency} is unavailable; retry later (see X-Request-Id in the logs)"),
        );
        error.extra.retry_after = Some(UNAVAILABLE_RETRY_AFTER_SECONDS);
        error
    }

    /// 500; the cause is logged, not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see X-Request-Id in the gateway's logs)",
        )
    }

    /// Attaches the function's structured error.
    pub fn with_function_error(mut self, error: Option<InvocationError>) -> Self {
        self.extra.function_error = error;
        self
    }

    /// Attaches the invocation id (body and header).
    pub fn with_invocation(mut self, id: Uuid) -> Self {
        self.extra.invocation_id = Some(id);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Connect(_) | StoreError::Query { .. } => {
                Self::unavailable("PostgreSQL", &error)
            }
            StoreError::Conflict { .. } => Self::conflict(error.to_string()),
            StoreError::UnknownFunction(id) => Self::not_found(format!("function {id} not found")),
            other => Self::internal(&other),
        }
    }
}

/// What an error response said, kept in the response's extensions so a layer can answer in
/// another protocol's shape (the Lambda Invoke API's) without parsing the body.
#[derive(Clone, Debug)]
pub(crate) struct Rendered {
    /// The error's code.
    pub code: &'static str,
    /// Its message.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let extra = *self.extra;
        let rendered = Rendered { code: self.code, message: self.message.clone() };
        let (type_, stack) = match extra.function_error {
            Some(e) => (Some(e.type_), e.stack),
            None => (None, None),
        };
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code,
                message: self.message,
                field: extra.details.first().map(|p| p.field.clone()),
                details: extra.details,
                type_,
                stack,
                invocation_id: extra.invocation_id,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(id) = extra.invocation_id
            && let Ok(value) = HeaderValue::from_str(&id.to_string())
        {
            response.headers_mut().insert(INVOCATION_ID_HEADER, value);
        }
        if let Some(seconds) = extra.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(rendered);
        response
    }
}
