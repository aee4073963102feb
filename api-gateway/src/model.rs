//! The REST API's JSON: the earlier design's `snake_case` field names and shapes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kubefaas_core::{
    resources::{FunctionPhase, InvocationError, InvocationMetrics},
    store::{FunctionRow, InvocationRow},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `POST /functions`: a new function.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateFunction {
    /// Function name: a DNS-1123 label (lower-case letters, digits and `-`, at most 63).
    #[serde(default)]
    #[schema(required = true, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub name: String,
    /// Version label; `1.0.0` when absent.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._+-]{1,64}$")]
    pub version: Option<String>,
    /// Runtime from the catalogue: `python`, `nodejs`, `go` or a version-qualified name.
    #[serde(default)]
    #[schema(required = true, min_length = 1)]
    pub runtime: String,
    /// Entry point: `main.handler` (python), `index.handler` (nodejs), `Handle` (go).
    #[serde(default)]
    #[schema(required = true, min_length = 1)]
    pub handler: String,
    /// The code, base64-encoded: one source file or a zip archive.
    #[serde(default)]
    #[schema(required = true, min_length = 1)]
    pub code: String,
    /// Seconds an invocation may run; 30 when absent.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 900)]
    pub timeout: Option<i32>,
    /// Memory limit in MiB; 128 when absent.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 16, maximum = 4096)]
    pub memory_mb: Option<i32>,
    /// Environment variables of the function.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Most invocations running at once; 10 when absent.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency: Option<i32>,
    /// Free-form JSON object stored with the function.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// `PUT /functions/{function}`: the fields to change; absent fields keep their values.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct UpdateFunction {
    /// Must be the function's current name when given (functions cannot be renamed), so that
    /// a client may send back what it read. Left out of the document: its one valid value is
    /// the path's function, which a schema cannot say.
    #[serde(default)]
    #[schema(ignore)]
    pub name: Option<String>,
    /// New version label.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._+-]{1,64}$")]
    pub version: Option<String>,
    /// New runtime.
    #[serde(default)]
    pub runtime: Option<String>,
    /// New handler.
    #[serde(default)]
    pub handler: Option<String>,
    /// New code, base64-encoded.
    #[serde(default)]
    pub code: Option<String>,
    /// New timeout in seconds.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 900)]
    pub timeout: Option<i32>,
    /// New memory limit in MiB.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 16, maximum = 4096)]
    pub memory_mb: Option<i32>,
    /// New environment (replaces the old one).
    #[serde(default)]
    pub environment: Option<BTreeMap<String, String>>,
    /// New concurrency limit.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_concurrency: Option<i32>,
    /// New metadata (replaces the old one).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// A function.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FunctionResponse {
    /// Function id (stable for the life of the function).
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Version label.
    pub version: String,
    /// Runtime.
    pub runtime: String,
    /// Entry point.
    pub handler: String,
    /// The stored code.
    pub code: CodeInfo,
    /// Limits and environment.
    pub config: FunctionConfig,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// `ready`, `pending` or `failed`.
    pub status: String,
    /// Why the function is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

/// What is known about the stored code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CodeInfo {
    /// `inline` (one file), `zip`, `configmap` or `url`.
    pub source_type: String,
    /// Lower-case hex SHA-256 of the code.
    pub checksum: String,
    /// Size in bytes.
    pub size: i64,
}

/// Limits and environment of a function.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FunctionConfig {
    /// Seconds an invocation may run.
    pub timeout: i32,
    /// Memory limit in MiB.
    pub memory_mb: i32,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Most invocations running at once.
    pub max_concurrency: i32,
}

impl FunctionResponse {
    /// The response for a stored row and the phase of its `Function` (if known).
    pub fn new(row: FunctionRow, phase: Option<FunctionPhase>, message: Option<String>) -> Self {
        let record = row.record;
        let status = match phase {
            Some(FunctionPhase::Ready) => "ready",
            Some(FunctionPhase::Failed) => "failed",
            Some(FunctionPhase::Pending) | None => "pending",
        };
        Self {
            id: record.id,
            name: record.name,
            namespace: record.namespace,
            version: record.version,
            runtime: record.runtime,
            handler: record.handler,
            code: CodeInfo {
                source_type: record.code_source.as_str().to_owned(),
                checksum: record.code_checksum,
                size: record.code_size,
            },
            config: FunctionConfig {
                timeout: record.timeout_seconds,
                memory_mb: record.memory_mb,
                environment: record.environment,
                max_concurrency: record.max_concurrency,
            },
            metadata: record.metadata,
            created_at: row.created_at,
            updated_at: row.updated_at,
            status: status.to_owned(),
            status_message: message,
        }
    }
}

/// A page of functions.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    /// The functions, oldest first.
    pub functions: Vec<FunctionResponse>,
    /// The page size used.
    pub limit: i64,
    /// The offset used.
    pub offset: i64,
}

/// Filters of `GET /functions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FunctionFilter {
    /// Only functions of this runtime.
    pub runtime: Option<String>,
    /// Page size (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Functions to skip.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Namespace (also `X-Kubefaas-Namespace`): a DNS-1123 label.
    #[param(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub namespace: Option<String>,
}

/// `POST /invoke`: an asynchronous invocation.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct InvokeRequest {
    /// The function's id. Give this or `function`.
    #[serde(default)]
    #[schema(
        pattern = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
    )]
    pub function_id: Option<Uuid>,
    /// The function's name. Give this or `function_id`.
    #[serde(default)]
    #[schema(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub function: Option<String>,
    /// The event passed to the handler (any JSON).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Headers passed to the handler in its context.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Seconds this run may take (at most the function's timeout).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 900)]
    pub timeout: Option<i32>,
}

/// `202 Accepted` of `POST /invoke`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvokeAccepted {
    /// Poll `GET /invocations/{invocation_id}` for the outcome.
    pub invocation_id: Uuid,
    /// `pending`.
    pub status: String,
}

/// One invocation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvocationResponse {
    /// Invocation id.
    pub id: Uuid,
    /// The function's id.
    pub function_id: Uuid,
    /// The function's name.
    pub function: String,
    /// Namespace.
    pub namespace: String,
    /// `pending`, `queued`, `running`, `succeeded`, `failed` or `timed_out`.
    pub status: String,
    /// `sync` (`POST /functions/{name}/invoke`), `async` (`POST /invoke`) or `resource` (an
    /// `Invocation` object, kubectl).
    pub source: String,
    /// The event.
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Headers passed to the handler.
    pub headers: BTreeMap<String, String>,
    /// What the handler returned.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// The error of the last failed attempt.
    pub error: Option<ErrorDetail>,
    /// Measurements of the last attempt.
    pub metrics: Option<MetricsDetail>,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Seconds one attempt may run.
    pub timeout: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When the last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A function's structured error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Exception class or platform reason (`TimedOut`, `OutOfMemory`, `FunctionNotFound`).
    #[serde(rename = "type")]
    pub type_: String,
    /// Description.
    pub message: String,
    /// Stack trace, when the runtime gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl From<InvocationError> for ErrorDetail {
    fn from(e: InvocationError) -> Self {
        Self { type_: e.type_, message: e.message, stack: e.stack }
    }
}

/// Measurements of one attempt.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricsDetail {
    /// Wall-clock milliseconds.
    pub duration_ms: Option<i64>,
    /// CPU milliseconds.
    pub cpu_time_ms: Option<i64>,
    /// Peak memory in bytes.
    pub memory_peak_bytes: Option<i64>,
    /// Whether a new instance had to start.
    pub cold_start: Option<bool>,
}

impl From<InvocationMetrics> for MetricsDetail {
    fn from(m: InvocationMetrics) -> Self {
        Self {
            duration_ms: m.duration_ms,
            cpu_time_ms: m.cpu_time_ms,
            memory_peak_bytes: m.memory_peak_bytes,
            cold_start: m.cold_start,
        }
    }
}

impl From<InvocationRow> for InvocationResponse {
    fn from(row: InvocationRow) -> Self {
        Self {
            id: row.id,
            function_id: row.function_id,
            function: row.function_name,
            namespace: row.namespace,
            status: row.status.as_str().to_owned(),
            source: row.source.as_str().to_owned(),
            payload: row.payload,
            headers: row.headers,
            result: row.result,
            error: row.error.map(ErrorDetail::from),
            metrics: row.metrics.map(MetricsDetail::from),
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            timeout: row.timeout_seconds,
            created_at: row.created_at,
            started_at: row.started_at,
            completed_at: row.completed_at,
        }
    }
}

/// A page of invocations.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvocationList {
    /// The invocations, newest first.
    pub invocations: Vec<InvocationResponse>,
    /// The page size used.
    pub limit: i64,
    /// The offset used.
    pub offset: i64,
}

/// Filters of `GET /invocations`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvocationFilter {
    /// Only invocations of this function (id or name).
    pub function_id: Option<String>,
    /// Only invocations in this state (empty: any).
    #[param(pattern = r"^(pending|queued|running|succeeded|failed|timed_out)?$")]
    pub status: Option<String>,
    /// Page size (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Invocations to skip.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Namespace (also `X-Kubefaas-Namespace`): a DNS-1123 label.
    #[param(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub namespace: Option<String>,
}

/// `GET /invocations/{id}/logs`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogsResponse {
    /// Invocation id.
    pub invocation_id: Uuid,
    /// The invocation's state.
    pub status: String,
    /// What the function wrote to stdout and stderr (bounded tail); empty while none.
    pub logs: String,
}

/// `GET /health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyResponse {
    /// `ok` or `unavailable`.
    pub status: String,
    /// Each dependency (`postgres`, `redis`, `kubernetes`) and `ok` or what failed.
    pub checks: BTreeMap<String, String>,
}

/// Query of `POST /functions/{function}/invoke` and other namespaced routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NamespaceQuery {
    /// Namespace (also `X-Kubefaas-Namespace`), a DNS-1123 label; the gateway's default when
    /// absent.
    #[param(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub namespace: Option<String>,
}

/// `POST /tokens`: a new API token.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateToken {
    /// A name to tell the token apart: 1 to 253 characters, not all blank, no control
    /// characters.
    #[serde(default)]
    #[schema(
        required = true,
        max_length = 253,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    /// Namespaces the token may act in (DNS-1123 labels); `*` for all.
    #[serde(default)]
    #[schema(required = true, min_items = 1, max_items = 100,
        inline, value_type = Vec<TokenNamespace>)]
    pub namespaces: Vec<String>,
    /// When the token stops working (RFC 3339, in the future); never when absent.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A namespace a token may act in, or `*` for all.
#[derive(Debug, ToSchema)]
#[schema(pattern = r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$")]
pub struct TokenNamespace(pub String);

/// A token just created.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// Token id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// The bearer token: shown only in this answer, stored only as a hash.
    pub token: String,
    /// Its first characters, to tell tokens apart later.
    pub token_prefix: String,
    /// Namespaces it may act in.
    pub namespaces: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored token as `GET /tokens` shows it: never the secret or its hash.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Token id (what `DELETE /tokens/{id}` takes).
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its first characters, to tell tokens apart.
    pub token_prefix: String,
    /// Namespaces it may act in.
    pub namespaces: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a gateway last accepted it (to the minute); never when absent.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Whether it works now: neither revoked nor expired.
    pub active: bool,
}

impl TokenInfo {
    /// What may be shown of `row` at `now`.
    pub fn of(row: &kubefaas_core::tokens::TokenRow, now: DateTime<Utc>) -> Self {
        Self {
            id: row.id,
            name: row.name.clone(),
            token_prefix: row.token_prefix.clone(),
            namespaces: row.namespaces.clone(),
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
            active: row.is_active(now),
        }
    }
}

/// `GET /tokens`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// Every token, newest first, revoked and expired ones included.
    pub tokens: Vec<TokenInfo>,
}

/// An optional `i32` that JSON may also write as a whole float (`128.0`): JSON Schema's
/// `integer` admits both, and the document says `integer`.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    let whole = match (number.as_i64(), number.as_f64()) {
        (Some(i), _) => Some(i),
        #[allow(clippy::cast_possible_truncation)]
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => Some(f as i64),
        _ => None,
    };
    whole
        .and_then(|i| i32::try_from(i).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a 32-bit integer")))
}
