//! Invocations: the synchronous fast path, asynchronous invokes, and reads of results and logs
//! from PostgreSQL. Both invokes go through [`submit`], straight onto the data plane: no
//! Kubernetes API call is on their path (the function comes from the watch-backed cache).

use std::collections::BTreeMap;

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use kubefaas_core::{
    queue::{Completion, Waited},
    resources::{FailureKind, InvocationError},
    store::{InvocationQuery, InvocationRow, Source, Status},
    submit::{self, Submission, SubmitError},
};
use uuid::Uuid;

use crate::{
    AppState, INVOCATION_ID_HEADER, NAMESPACE_HEADER,
    admission::Refused,
    error::{ApiError, ApiResult, ErrorBody},
    extract::{ApiBytes, ApiJson, ApiQuery, Namespace},
    model::{
        InvocationFilter, InvocationList, InvocationResponse, InvokeAccepted, InvokeRequest,
        LogsResponse,
    },
    routes::functions::{find, invalid, page},
};

/// Runs a function and answers with its result.
///
/// The body is the event (any JSON; empty means `null`); the request's headers (except
/// credentials, hop-by-hop headers and `X-Kubefaas-Namespace`) reach the handler's context.
/// The answer's body is what the handler returned, and the `X-Kubefaas-Invocation-Id` header
/// names the invocation (also readable through `GET /invocations/{id}`). Failures answer with
/// the structured error: a function error (an exception) is 500 `function_error`, running out of memory is 502
/// `out_of_memory`, the function's own timeout is 504 `function_timeout`, a function deleted
/// meanwhile is 404. When the invocation is still running at the gateway's deadline the answer
/// is 504 `timeout` with the invocation id: poll `GET /invocations/{id}`.
#[utoipa::path(post, path = "/functions/{function}/invoke", tag = "invocations",
    params(("function" = String, Path, description = "Function name"), crate::model::NamespaceQuery),
    request_body(content = Object, description = "The event passed to the handler (any JSON)", content_type = "application/json"),
    responses(
        (status = 200, description = "The handler's result", body = Object,
            headers(("x-kubefaas-invocation-id" = String, description = "The invocation's id"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
        (status = 409, description = "The function is not ready", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 500, description = "The function raised an error (`function_error`)", body = ErrorBody),
        (status = 502, description = "The function ran out of memory (`out_of_memory`) or the platform failed it (`invocation_failed`)", body = ErrorBody),
        (status = 503, body = ErrorBody),
        (status = 504, description = "The function timed out (`function_timeout`), or is still running at the gateway's deadline (`timeout`)", body = ErrorBody),
    ))]
pub(crate) async fn invoke_sync(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    Path(name): Path<String>,
    request_headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let headers = forwarded_headers(&request_headers, state.settings.limits.max_header_bytes)?;
    let payload = payload_of(&state, &body, None)?;
    match run_sync(&state, &namespace, &name, payload, headers).await? {
        Ran::Finished(finished) => outcome(&state, finished),
        Ran::StillRunning(id) => Err(still_running(&state, id)),
    }
}

/// The event of an invoke: the body as JSON, `empty` when there is none.
pub(crate) fn payload_of(
    state: &AppState,
    body: &[u8],
    empty: Option<serde_json::Value>,
) -> ApiResult<Option<serde_json::Value>> {
    if body.len() > state.settings.limits.max_payload_bytes {
        return Err(payload_too_large(state.settings.limits.max_payload_bytes));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(empty);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}"))
    })
}

/// How a synchronous invocation came out within the gateway's deadline.
pub(crate) enum Ran {
    /// It finished.
    Finished(Finished),
    /// It is still running at the deadline: this is its id.
    StillRunning(Uuid),
}

/// Submits a synchronous invocation of `namespace/name` and waits for its outcome, at most the
/// gateway's sync deadline.
pub(crate) async fn run_sync(
    state: &AppState,
    namespace: &str,
    name: &str,
    payload: Option<serde_json::Value>,
    headers: BTreeMap<String, String>,
) -> ApiResult<Ran> {
    let mut submission = Submission::new(Source::Sync, payload);
    submission.headers = headers;
    let id = submission.id;
    // Registered before the submission, so no announcement can be missed and nothing need be
    // read before the first one arrives.
    let expected = state.completions.expect(id);
    let function = admitted(state, namespace, name).await?;
    submit::submit_carried(&state.queue, &state.settings.limits, &function, submission)
        .await
        .map_err(|e| submit_error(e, name))?;
    let state = state.clone();
    let waited = expected
        .wait(state.settings.sync_timeout, |announced| {
            let state = state.clone();
            async move {
                // An announcement that carries the outcome is the answer; otherwise the row is.
                if let Some(finished) = announced.and_then(Finished::announced) {
                    return Ok(Some(finished));
                }
                let row = live_or_stored(&state, id).await?.ok_or_else(|| {
                    // Its live row was there when it was submitted: Redis lost it.
                    ApiError::unavailable(
                        "Redis",
                        &format!("the call {id} was lost with Redis's data"),
                    )
                    .with_invocation(id)
                })?;
                Ok::<_, ApiError>(row.status.is_terminal().then(|| Finished::from(row)))
            }
        })
        .await?;
    Ok(match waited {
        Waited::Finished(finished) => Ran::Finished(finished),
        Waited::TimedOut => Ran::StillRunning(id),
    })
}

/// 504 `timeout` for an invocation still running at the gateway's deadline.
pub(crate) fn still_running(state: &AppState, id: Uuid) -> ApiError {
    state.metrics.sync_outcome("waiting");
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "the invocation is still running after {:?}; poll GET /invocations/{id}",
            state.settings.sync_timeout
        ),
    )
    .with_invocation(id)
}

/// A finished synchronous invocation: what its answer is made of.
pub(crate) struct Finished {
    pub(crate) id: Uuid,
    pub(crate) status: Status,
    pub(crate) result: serde_json::Value,
    pub(crate) error: Option<InvocationError>,
}

impl Finished {
    /// From an announcement that carried the outcome of a final status.
    fn announced(completion: Completion) -> Option<Self> {
        let outcome = completion.outcome?;
        let status = completion.status.parse::<Status>().ok().filter(|s| s.is_terminal())?;
        Some(Self { id: completion.id, status, result: outcome.result, error: outcome.error })
    }
}

impl From<InvocationRow> for Finished {
    fn from(row: InvocationRow) -> Self {
        Self {
            id: row.id,
            status: row.status,
            result: row.result.unwrap_or_default(),
            error: row.error,
        }
    }
}

/// The HTTP answer of a finished synchronous invocation.
fn outcome(state: &AppState, finished: Finished) -> ApiResult<Response> {
    let id = finished.id;
    let kind = finished.error.as_ref().map_or(FailureKind::Function, InvocationError::kind);
    let (status, code, outcome) = match (finished.status, kind) {
        (Status::Succeeded, _) => {
            state.metrics.sync_outcome("succeeded");
            let mut response = Json(finished.result).into_response();
            if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
                response.headers_mut().insert(INVOCATION_ID_HEADER, value);
            }
            return Ok(response);
        }
        (Status::TimedOut, _) | (_, FailureKind::TimedOut) => {
            (StatusCode::GATEWAY_TIMEOUT, "function_timeout", "timed_out")
        }
        (_, FailureKind::OutOfMemory) => {
            (StatusCode::BAD_GATEWAY, "out_of_memory", "out_of_memory")
        }
        (_, FailureKind::NoSuchFunction) => (StatusCode::NOT_FOUND, "not_found", "failed"),
        (_, FailureKind::FunctionNotReady | FailureKind::Platform) => {
            (StatusCode::BAD_GATEWAY, "invocation_failed", "failed")
        }
        (_, FailureKind::Function | FailureKind::Load | FailureKind::Result) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "function_error", "failed")
        }
    };
    state.metrics.sync_outcome(outcome);
    let message = finished
        .error
        .as_ref()
        .map_or_else(|| format!("the invocation ended {}", finished.status), |e| e.message.clone());
    Err(ApiError::new(status, code, message)
        .with_function_error(finished.error)
        .with_invocation(id))
}

/// Request headers that reach the handler's context: all but credentials, the connection's own
/// and the gateway's, with names in lower case. Values that are not text are left out.
fn forwarded_headers(headers: &HeaderMap, limit: usize) -> ApiResult<BTreeMap<String, String>> {
    const HELD_BACK: &[&str] = &[
        "authorization",
        "x-amz-security-token",
        "cookie",
        "proxy-authorization",
        "host",
        "connection",
        "keep-alive",
        "content-length",
        "transfer-encoding",
        "te",
        "upgrade",
        NAMESPACE_HEADER,
    ];
    let mut forwarded = BTreeMap::new();
    let mut size = 0;
    for (name, value) in headers {
        if HELD_BACK.contains(&name.as_str()) {
            continue;
        }
        if let Ok(text) = value.to_str() {
            size += name.as_str().len() + text.len();
            forwarded.insert(name.as_str().to_owned(), text.to_owned());
        }
    }
    if size > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request headers passed to the function exceed {limit} bytes"),
        ));
    }
    Ok(forwarded)
}

/// 409 `not_ready`: the function exists but cannot take invocations yet.
pub(crate) fn not_ready(name: &str, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_ready",
        format!("function {name:?} is not ready: {why}"),
    )
}

fn payload_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the payload is larger than {limit} bytes"),
    )
}

/// Runs a function asynchronously.
///
/// Answers 202 once the invocation is recorded in PostgreSQL and on the queue; it then runs to a
/// final state whatever process dies. No Kubernetes object is made for it: read it with
/// `GET /invocations/{invocation_id}` (`kubectl get invocations` lists only the `Invocation`
/// objects people create themselves).
#[utoipa::path(post, path = "/invoke", tag = "invocations", request_body = InvokeRequest,
    params(crate::model::NamespaceQuery),
    responses(
        (status = 202, description = "Accepted; poll GET /invocations/{invocation_id}", body = InvokeAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "The function is not ready", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn invoke_async(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    ApiJson(body): ApiJson<InvokeRequest>,
) -> ApiResult<(StatusCode, Json<InvokeAccepted>)> {
    let name = match (&body.function_id, &body.function) {
        (Some(id), _) => find(&state, &namespace, &id.to_string()).await?.record.name,
        (None, Some(name)) if !name.is_empty() => name.clone(),
        _ => return Err(ApiError::field("function", "give function or function_id")),
    };
    let mut submission = Submission::new(Source::Async, body.payload);
    submission.headers = body.headers;
    submission.timeout_seconds = body.timeout;
    // A job that did not reach Redis is queued again by the sweeper: the row is what counts.
    let submitted = submit_to(&state, &namespace, &name, submission).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(InvokeAccepted { invocation_id: submitted.row.id, status: "pending".into() }),
    ))
}

/// What a 429 for a full backlog asks the client to wait: a few of the admission counter's
/// refresh intervals.
const BACKLOG_RETRY_AFTER_SECONDS: u64 = 1;

/// Submits an invocation of the live function `namespace/name` once its backlog admits it.
pub(crate) async fn submit_to(
    state: &AppState,
    namespace: &str,
    name: &str,
    submission: Submission,
) -> ApiResult<submit::Submitted> {
    let function = admitted(state, namespace, name).await?;
    let limits = &state.settings.limits;
    state.submitter.submit(limits, &function, submission).await.map_err(|e| submit_error(e, name))
}

/// The live function `namespace/name`, taken from the watch-backed cache, once its backlog
/// admits another invocation.
async fn admitted(
    state: &AppState,
    namespace: &str,
    name: &str,
) -> ApiResult<std::sync::Arc<kubefaas_core::resources::Function>> {
    let function = state.functions.get(namespace, name).ok_or_else(|| {
        ApiError::not_found(format!("function {name:?} not found in namespace {namespace:?}"))
    })?;
    if let (Some(admission), Some(function_id)) = (&state.admission, function.function_id()) {
        admission.admit(&state.store, function_id).await.map_err(|refused| match refused {
            Refused::Full { .. } => {
                state.metrics.backlog_refused();
                ApiError::backlog_full(
                    format!("function {name:?} is not taking more invocations now: {refused}; retry later"),
                    BACKLOG_RETRY_AFTER_SECONDS,
                )
            }
            Refused::Store(error) => error.into(),
        })?;
    }
    Ok(function)
}

/// Invocation `id` as it stands: a synchronous call's live row until it is written, else the
/// store's row. The live row is read first: its writer drops it only once the store has it.
pub(crate) async fn live_or_stored(state: &AppState, id: Uuid) -> ApiResult<Option<InvocationRow>> {
    match state.queue.live(id).await {
        Ok(Some(row)) => Ok(Some(row)),
        Ok(None) => Ok(state.store.invocation(id).await?),
        Err(error) => Err(ApiError::unavailable("Redis", &error)),
    }
}

/// The HTTP answer to a refused submission.
fn submit_error(error: SubmitError, name: &str) -> ApiError {
    match error {
        SubmitError::NotReady { why, .. } => not_ready(name, &why),
        SubmitError::Invalid(errors) => invalid(&errors),
        SubmitError::Deleted(_) => ApiError::not_found(format!("function {name:?} was deleted")),
        SubmitError::Store(error) => error.into(),
        SubmitError::Batch(error) => ApiError::unavailable("PostgreSQL", &error),
        SubmitError::Queue(error) => ApiError::unavailable("Redis", &error),
        SubmitError::Stopped => ApiError::unavailable("the submission writer", &"stopped"),
    }
}

/// One invocation: status, result, error, metrics and timestamps.
#[utoipa::path(get, path = "/invocations/{id}", tag = "invocations",
    params(("id" = Uuid, Path, description = "Invocation id"), crate::model::NamespaceQuery),
    responses(
        (status = 200, body = InvocationResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    Path(id): Path<String>,
) -> ApiResult<Json<InvocationResponse>> {
    Ok(Json(find_invocation(&state, &namespace, &id).await?.into()))
}

/// The logs (stdout and stderr, a bounded tail) of one invocation.
#[utoipa::path(get, path = "/invocations/{id}/logs", tag = "invocations",
    params(("id" = Uuid, Path, description = "Invocation id"), crate::model::NamespaceQuery),
    responses(
        (status = 200, body = LogsResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn logs(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    Path(id): Path<String>,
) -> ApiResult<Json<LogsResponse>> {
    let row = find_invocation(&state, &namespace, &id).await?;
    Ok(Json(LogsResponse {
        invocation_id: row.id,
        status: row.status.as_str().to_owned(),
        logs: row.logs.unwrap_or_default(),
    }))
}

/// Lists invocations, newest first.
#[utoipa::path(get, path = "/invocations", tag = "invocations", params(InvocationFilter),
    responses(
        (status = 200, body = InvocationList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    ApiQuery(filter): ApiQuery<InvocationFilter>,
) -> ApiResult<Json<InvocationList>> {
    let (limit, offset) = page(filter.limit, filter.offset)?;
    let status = match filter.status.as_deref() {
        None | Some("") => None,
        Some(text) => {
            Some(text.parse::<Status>().map_err(|e| ApiError::field("status", e.to_string()))?)
        }
    };
    let function_id = match filter.function_id.as_deref() {
        None | Some("") => None,
        Some(text) => match Uuid::parse_str(text) {
            Ok(id) => Some(id),
            // Text that is no function name (a NUL byte, say) names no function.
            Err(_) if !kubefaas_core::validation::is_dns1123_label(text) => {
                return Ok(Json(InvocationList { invocations: Vec::new(), limit, offset }));
            }
            // A name: the live function of that name; none means nothing can match.
            Err(_) => match state.store.function_by_name(&namespace, text).await? {
                Some(row) => Some(row.record.id),
                None => return Ok(Json(InvocationList { invocations: Vec::new(), limit, offset })),
            },
        },
    };
    let query = InvocationQuery {
        namespace: Some(namespace),
        function_id,
        status,
        limit: Some(limit),
        offset: Some(offset),
    };
    let rows = state.store.list_invocations(&query).await?;
    Ok(Json(InvocationList {
        invocations: rows.into_iter().map(Into::into).collect(),
        limit,
        offset,
    }))
}

async fn find_invocation(state: &AppState, namespace: &str, id: &str) -> ApiResult<InvocationRow> {
    let uuid = Uuid::parse_str(id)
        .map_err(|_| ApiError::field("id", format!("{id:?} is not an invocation id (a UUID)")))?;
    live_or_stored(state, uuid).await?.filter(|row| row.namespace == namespace).ok_or_else(|| {
        ApiError::not_found(format!("invocation {id} not found in namespace {namespace:?}"))
    })
}
