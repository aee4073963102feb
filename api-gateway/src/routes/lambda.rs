//! The AWS Lambda Invoke API, so AWS's own SDKs and CLI pointed at the gateway (their endpoint
//! URL set to it) invoke kubefaas functions: `POST /2015-03-31/functions/{name}/invocations`.
//!
//! - `X-Amz-Invocation-Type`: `RequestResponse` (the default) runs the function and answers 200
//!   with its result; `Event` answers 202 once the invocation is durable and queued (the
//!   asynchronous path of `POST /invoke`); `DryRun` answers 204 when the function exists and is
//!   ready, and runs nothing.
//! - A function that raised answers 200 with `X-Amz-Function-Error: Unhandled` and the body
//!   `{"errorMessage", "errorType", "stackTrace"}`, as Lambda does.
//! - `X-Amz-Log-Type: Tail` adds `X-Amz-Log-Result`: the last 4 KiB of the invocation's logs,
//!   base64. Every answer names the invocation in `X-Amzn-RequestId` (its kubefaas id, readable
//!   through `GET /invocations/{id}`) and a run in `X-Amz-Executed-Version: $LATEST`.
//! - Errors come in Lambda's shape (`{"Type", "message"}` with `X-Amzn-ErrorType`), so SDKs raise
//!   their own exceptions: `ResourceNotFoundException`, `TooManyRequestsException`,
//!   `RequestTooLargeException`, … ([`lambda_errors`] translates every error of these routes,
//!   the authentication middleware's included).
//!
//! The function is named as Lambda allows: its name, `name:qualifier`, or an ARN (full or
//! partial) whose last parts are `function:name[:qualifier]`; the qualifier (or the `Qualifier`
//! parameter) may be `$LATEST` or the function's `version`. The namespace is the gateway's
//! usual one (`namespace` parameter, `X-Kubefaas-Namespace`, else the default). An SDK
//! authenticates with the kubefaas token as its session token (`AWS_SESSION_TOKEN`, sent as
//! `X-Amz-Security-Token`); the access key and secret are not checked, and the request's
//! signature is not verified (the token is the credential, as a bearer token is).

use axum::{
    Json,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use kubefaas_core::{
    resources::{FailureKind, InvocationError},
    store::{Source, Status},
    submit::Submission,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    AppState,
    error::{ApiError, ApiResult, Rendered},
    extract::{ApiBytes, ApiQuery, Namespace},
    routes::invocations::{
        Finished, Ran, live_or_stored, not_ready, payload_of, run_sync, still_running, submit_to,
    },
};

const INVOCATION_TYPE: &str = "x-amz-invocation-type";
const LOG_TYPE: &str = "x-amz-log-type";
const FUNCTION_ERROR: HeaderName = HeaderName::from_static("x-amz-function-error");
const LOG_RESULT: HeaderName = HeaderName::from_static("x-amz-log-result");
const EXECUTED_VERSION: HeaderName = HeaderName::from_static("x-amz-executed-version");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");
const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// Most log bytes `X-Amz-Log-Type: Tail` returns, as Lambda.
const LOG_TAIL_BYTES: usize = 4 * 1024;

/// The query of an Invoke call.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct InvokeQuery {
    /// A version or alias; `$LATEST` or the function's version.
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

/// How the caller wants the function run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

/// Invokes a function the way AWS Lambda's Invoke API does.
#[utoipa::path(post, path = "/2015-03-31/functions/{function}/invocations", tag = "lambda",
    params(
        ("function" = String, Path, description = "The function's name, `name:qualifier`, or an ARN ending in `function:name[:qualifier]`"),
        ("Qualifier" = Option<String>, Query, description = "`$LATEST` or the function's version"),
        ("X-Amz-Invocation-Type" = Option<String>, Header, pattern = "^(RequestResponse|Event|DryRun)$", description = "`RequestResponse` (default), `Event` or `DryRun`"),
        ("X-Amz-Log-Type" = Option<String>, Header, pattern = "^(None|Tail)$", description = "`Tail` to get the last 4 KiB of logs in `X-Amz-Log-Result`"),
        crate::model::NamespaceQuery,
    ),
    request_body(content = Object, description = "The event passed to the handler (any JSON; none means {})", content_type = "application/json"),
    responses(
        (status = 200, description = "The handler's result; with `X-Amz-Function-Error: Unhandled` the body is `{errorMessage, errorType, stackTrace}`", body = Object),
        (status = 202, description = "`Event`: accepted, runs to a final state"),
        (status = 204, description = "`DryRun`: the function exists and is ready"),
        (status = 400, description = "`InvalidRequestContentException`, `InvalidParameterValueException`"),
        (status = 403, description = "`UnrecognizedClientException` (no or a bad token), `AccessDeniedException`"),
        (status = 404, description = "`ResourceNotFoundException`"),
        (status = 409, description = "`ResourceConflictException`: the function is not ready"),
        (status = 413, description = "`RequestTooLargeException`"),
        (status = 429, description = "`TooManyRequestsException`"),
        (status = 503, description = "`ServiceException`: a dependency is down; retry"),
        (status = 504, description = "`ServiceException`: still running at the gateway's deadline"),
    ))]
pub(crate) async fn invoke(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    Path(function): Path<String>,
    ApiQuery(query): ApiQuery<InvokeQuery>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let invocation_type = match header_text(&headers, INVOCATION_TYPE)? {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(ApiError::field(
                "X-Amz-Invocation-Type",
                format!("{other:?} is not one of RequestResponse, Event, DryRun"),
            ));
        }
    };
    let tail = match header_text(&headers, LOG_TYPE)? {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(ApiError::field(
                "X-Amz-Log-Type",
                format!("{other:?} is not one of None, Tail"),
            ));
        }
    };
    let qualifier = query.qualifier.as_deref().filter(|q| !q.is_empty());
    let name = function_name(&state, &namespace, &function, qualifier)?;
    // Lambda passes {} to a handler invoked without a payload.
    let payload = payload_of(&state, &body, Some(json!({})))?;
    match invocation_type {
        InvocationType::DryRun => {
            let function =
                state.functions.get(&namespace, &name).ok_or_else(|| not_found(&function))?;
            function.invocable().map_err(|why| not_ready(&name, &why))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        InvocationType::Event => {
            let submitted =
                submit_to(&state, &namespace, &name, Submission::new(Source::Async, payload))
                    .await?;
            Ok(with_request_id(StatusCode::ACCEPTED.into_response(), submitted.row.id))
        }
        InvocationType::RequestResponse => {
            let finished =
                match run_sync(&state, &namespace, &name, payload, Default::default()).await? {
                    Ran::Finished(finished) => finished,
                    Ran::StillRunning(id) => {
                        return Err(still_running(&state, id));
                    }
                };
            answer(&state, finished, tail).await
        }
    }
}

/// The answer to a finished `RequestResponse` invocation.
async fn answer(state: &AppState, finished: Finished, tail: bool) -> ApiResult<Response> {
    let id = finished.id;
    let mut response = match (finished.status, finished.error) {
        (Status::Succeeded, _) => {
            state.metrics.sync_outcome("succeeded");
            Json(finished.result).into_response()
        }
        // Failures of the platform rather than of the function are the service's errors.
        (_, Some(error)) if error.kind() == FailureKind::NoSuchFunction => {
            state.metrics.sync_outcome("failed");
            return Err(ApiError::not_found(error.message).with_invocation(id));
        }
        (_, Some(error))
            if matches!(error.kind(), FailureKind::FunctionNotReady | FailureKind::Platform) =>
        {
            state.metrics.sync_outcome("failed");
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, "invocation_failed", error.message)
                .with_invocation(id));
        }
        (status, error) => {
            state.metrics.sync_outcome(if status == Status::TimedOut {
                "timed_out"
            } else {
                "failed"
            });
            let error = error.unwrap_or_else(|| InvocationError {
                type_: status.as_str().to_owned(),
                message: format!("the invocation ended {status}"),
                stack: None,
            });
            let mut response = Json(function_error(&error)).into_response();
            response.headers_mut().insert(FUNCTION_ERROR, HeaderValue::from_static("Unhandled"));
            response
        }
    };
    if tail {
        // The logs are in the row (an announcement carries the result, not the logs).
        let logs = live_or_stored(state, id).await?.and_then(|row| row.logs).unwrap_or_default();
        let start = logs.len().saturating_sub(LOG_TAIL_BYTES);
        let start = (start..=logs.len()).find(|i| logs.is_char_boundary(*i)).unwrap_or(logs.len());
        let encoded = base64::engine::general_purpose::STANDARD.encode(&logs[start..]);
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            response.headers_mut().insert(LOG_RESULT, value);
        }
    }
    response.headers_mut().insert(EXECUTED_VERSION, HeaderValue::from_static("$LATEST"));
    Ok(with_request_id(response, id))
}

/// A function's error in Lambda's shape: its stack as a list of lines.
fn function_error(error: &InvocationError) -> Value {
    let stack: Vec<&str> = error.stack.as_deref().map(|s| s.lines().collect()).unwrap_or_default();
    json!({"errorMessage": error.message, "errorType": error.type_, "stackTrace": stack})
}

fn with_request_id(mut response: Response, id: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> ApiResult<Option<&'h str>> {
    headers
        .get(name)
        .map(|value| {
            value
                .to_str()
                .map_err(|_| ApiError::field(name.to_owned(), "the header is not valid text"))
        })
        .transpose()
}

/// The function's name from Lambda's `FunctionName` (a name, `name:qualifier`, or an ARN full
/// or partial), checking the qualifier names what kubefaas runs.
fn function_name(
    state: &AppState,
    namespace: &str,
    given: &str,
    qualifier: Option<&str>,
) -> ApiResult<String> {
    let (name, in_name) = split_function_name(given).ok_or_else(|| not_found(given))?;
    let version = match (in_name, qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::field(
                "Qualifier",
                format!("the function name names qualifier {a:?} and the parameter {b:?}"),
            ));
        }
        (Some(q), _) | (None, Some(q)) => Some(q),
        (None, None) => None,
    };
    if let Some(version) = version.filter(|v| *v != "$LATEST") {
        let declared = state.functions.get(namespace, name).map(|f| f.spec.version.clone());
        if declared.as_deref() != Some(version) {
            return Err(not_found(given));
        }
    }
    Ok(name.to_owned())
}

/// The name and qualifier in Lambda's `FunctionName`: `name`, `name:qualifier`, or an ARN,
/// full (`arn:aws:lambda:region:account:function:name[:qualifier]`) or partial
/// (`account:function:name[:qualifier]`). `None` when it is none of these.
fn split_function_name(given: &str) -> Option<(&str, Option<&str>)> {
    let parts: Vec<&str> = given.split(':').collect();
    // `function` after the account (never first: a function may be called `function`).
    let rest = match parts.iter().skip(1).position(|p| *p == "function") {
        Some(at) => &parts[at + 2..],
        None => &parts[..],
    };
    match rest {
        [name] if !name.is_empty() => Some((name, None)),
        [name, qualifier] if !name.is_empty() && !qualifier.is_empty() => {
            Some((name, Some(qualifier)))
        }
        _ => None,
    }
}

fn not_found(given: &str) -> ApiError {
    ApiError::not_found(format!("Function not found: {given}"))
}

/// Answers every error of the Lambda routes in Lambda's shape, whatever produced it (the
/// authentication middleware, an extractor, the handler): `X-Amzn-ErrorType` and
/// `{"Type", "message"}`, which AWS SDKs turn into their exceptions.
pub(crate) async fn lambda_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let Some(rendered) = response.extensions().get::<Rendered>().cloned() else {
        return response;
    };
    let (status, kind, side) = match rendered.code {
        "unauthorized" => (StatusCode::FORBIDDEN, "UnrecognizedClientException", "User"),
        "forbidden" => (StatusCode::FORBIDDEN, "AccessDeniedException", "User"),
        "not_found" => (StatusCode::NOT_FOUND, "ResourceNotFoundException", "User"),
        "payload_too_large" => (StatusCode::PAYLOAD_TOO_LARGE, "RequestTooLargeException", "User"),
        "rate_limited" | "backlog_full" => {
            (StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", "User")
        }
        "invalid_json" => (StatusCode::BAD_REQUEST, "InvalidRequestContentException", "User"),
        "invalid_request" => (StatusCode::BAD_REQUEST, "InvalidParameterValueException", "User"),
        "not_ready" | "conflict" => (StatusCode::CONFLICT, "ResourceConflictException", "User"),
        _ => (response.status(), "ServiceException", "Service"),
    };
    let mut translated =
        (status, Json(json!({"Type": side, "message": rendered.message}))).into_response();
    translated.headers_mut().insert(ERROR_TYPE, HeaderValue::from_static(kind));
    for name in [header::RETRY_AFTER, HeaderName::from_static(crate::INVOCATION_ID_HEADER)] {
        if let Some(value) = response.headers().get(&name) {
            translated.headers_mut().insert(name, value.clone());
        }
    }
    if let Some(id) = response.headers().get(crate::INVOCATION_ID_HEADER).cloned() {
        translated.headers_mut().insert(REQUEST_ID, id);
    }
    translated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_are_read_as_lambda_reads_them() {
        let arn = "arn:aws:lambda:us-east-1:000000000000:function:echo";
        assert_eq!(split_function_name("echo"), Some(("echo", None)));
        assert_eq!(split_function_name("echo:$LATEST"), Some(("echo", Some("$LATEST"))));
        assert_eq!(split_function_name(arn), Some(("echo", None)));
        assert_eq!(split_function_name(&format!("{arn}:2")), Some(("echo", Some("2"))));
        assert_eq!(split_function_name("000000000000:function:echo"), Some(("echo", None)));
        assert_eq!(split_function_name("function"), Some(("function", None)));
        assert_eq!(split_function_name("function:v1"), Some(("function", Some("v1"))));
        for bad in ["", "a:b:c", "arn:aws:lambda:us-east-1:0:function:", "echo:"] {
            assert_eq!(split_function_name(bad), None, "{bad:?}");
        }
    }
}
