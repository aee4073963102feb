//! Errors: [`Error`] for starting and running the server, [`ApiError`] for what a request gets
//! back, rendered as a Kubernetes `Status` object.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kubefaas_core::validation::{ErrorKind, ValidationErrors};
use serde_json::{Value, json};

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The data directory could not be read or written.
    #[error("data directory {path}")]
    DataDir {
        /// The file or directory involved.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A line of the data directory's log is not valid JSON.
    #[error("corrupt record in {path}")]
    CorruptData {
        /// The file involved.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The kubeconfig could not be written.
    #[error("writing kubeconfig {path}")]
    WriteKubeconfig {
        /// Where it was to go.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    /// The node agent could not start.
    #[error("node agent")]
    NodeAgent(#[from] crate::node::NodeError),
}

/// A failed request, as the Kubernetes API reports it: HTTP code, `reason` and message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `StatusReason`, like `NotFound`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details` of the `Status` object.
    pub details: Option<Value>,
}

/// Result of a request handler.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), details: None }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for an object: `functions.kubefaas.io "hello" not found`.
    pub fn not_found(group_resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{group_resource} \"{name}\" not found"))
            .with_details(name, group_resource)
    }

    /// 404 for a path that serves nothing.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group_resource: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{group_resource} \"{name}\" already exists"))
            .with_details(name, group_resource)
    }

    /// 409 Conflict on a stale `resourceVersion` or a failed precondition.
    pub fn conflict(group_resource: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {group_resource} \"{name}\": {why}"),
        )
        .with_details(name, group_resource)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// 410 with reason `Expired`, what a real API server answers to a watch or list from a
    /// `resourceVersion` that is no longer in its history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 500 for a bug; the cause is logged by the caller.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// 422 Invalid with one cause per field.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &ValidationErrors) -> Self {
        let qualified = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        let causes: Vec<Value> = errors
            .errors()
            .iter()
            .map(|e| {
                let reason = match e.kind {
                    ErrorKind::Required => "FieldValueRequired",
                    ErrorKind::Invalid => "FieldValueInvalid",
                    ErrorKind::NotSupported => "FieldValueNotSupported",
                    ErrorKind::TooLong => "FieldValueTooLong",
                    ErrorKind::Forbidden => "FieldValueForbidden",
                };
                let text = e.to_string();
                let message = text.strip_prefix(&format!("{}: ", e.path)).unwrap_or(&text);
                json!({"reason": reason, "message": message, "field": e.path})
            })
            .collect();
        let mut err =
            Self::new(422, "Invalid", format!("{qualified} \"{name}\" is invalid: {errors}"));
        err.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        err
    }

    fn with_details(mut self, name: &str, group_resource: &str) -> Self {
        let (kind, group) = group_resource.split_once('.').unwrap_or((group_resource, ""));
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (code, self.status().to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
