//! Function CRUD. Writes go through `Function` resources (the operator stores the code and the
//! row); reads come from PostgreSQL, with the phase from the watch-backed cache.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Preconditions},
};
use kubefaas_core::{
    resources::{Function, FunctionCode, FunctionSpec, METADATA_ANNOTATION, Readiness},
    store::{FunctionQuery, FunctionRow},
    validation::{self, ValidationErrors},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    AppState,
    error::{ApiError, ApiResult, ErrorBody, FieldProblem},
    extract::{ApiJson, ApiQuery, Namespace},
    model::{CreateFunction, FunctionFilter, FunctionList, FunctionResponse, UpdateFunction},
    routes::post_params,
};

/// How often a wait for the operator looks at the cache again.
const POLL: Duration = Duration::from_millis(20);

/// Creates a function and waits (bounded) until the operator has made it ready.
#[utoipa::path(post, path = "/functions", tag = "functions", request_body = CreateFunction,
    params(crate::model::NamespaceQuery),
    responses(
        (status = 201, description = "Created and ready", body = FunctionResponse),
        (status = 400, description = "Invalid input, with the field named; or the operator rejected the function", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "The namespace does not exist", body = ErrorBody),
        (status = 409, description = "A function with this name exists", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
        (status = 504, description = "Created, but not ready within the gateway's wait", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    ApiJson(body): ApiJson<CreateFunction>,
) -> ApiResult<(StatusCode, Json<FunctionResponse>)> {
    let name = body.name.clone();
    let mut spec = FunctionSpec::new(
        body.runtime,
        body.handler,
        FunctionCode { base64: Some(body.code), ..FunctionCode::default() },
    );
    if let Some(version) = body.version {
        spec.version = version;
    }
    if let Some(timeout) = body.timeout {
        spec.timeout_seconds = timeout;
    }
    if let Some(memory) = body.memory_mb {
        spec.resources.memory = format!("{memory}Mi");
    }
    if let Some(max) = body.max_concurrency {
        spec.max_concurrency = max;
    }
    spec.env = body.environment;
    let metadata = metadata_annotation(body.metadata.as_ref())?;
    validation::validate_function(&name, &spec, &state.settings.limits).map_err(|e| invalid(&e))?;

    let mut function = Function::new(&name, spec);
    function.metadata.namespace = Some(namespace.clone());
    if let Some(text) = metadata {
        function.metadata.annotations = Some(BTreeMap::from([(METADATA_ANNOTATION.into(), text)]));
    }
    let api: Api<Function> = Api::namespaced(state.client.clone(), &namespace);
    let created = api
        .create(&post_params(), &function)
        .await
        .map_err(|e| kube_error(e, &format!("function {name:?}")))?;
    let uid = created.uid().unwrap_or_default();
    match wait_for_operator(&state, &namespace, &name, &uid, created.metadata.generation).await {
        Some(Readiness::Ready(id)) => {
            let row = live_row(&state, id).await?;
            Ok((StatusCode::CREATED, Json(FunctionResponse::new(row, phase_ready(), None))))
        }
        Some(Readiness::Failed(message)) => {
            // Nothing is left behind for input the operator refused.
            let params = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                ..DeleteParams::default()
            };
            if let Err(error) = api.delete(&name, &params).await {
                tracing::warn!(%namespace, %name, %error, "cannot delete a refused function");
            }
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message))
        }
        _ => Err(not_ready_in_time(&state, &name)),
    }
}

/// Lists functions, oldest first.
#[utoipa::path(get, path = "/functions", tag = "functions", params(FunctionFilter),
    responses(
        (status = 200, body = FunctionList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    ApiQuery(filter): ApiQuery<FunctionFilter>,
) -> ApiResult<Json<FunctionList>> {
    let (limit, offset) = page(filter.limit, filter.offset)?;
    // A runtime the catalogue does not have matches nothing (and text that is no runtime name,
    // a NUL byte for one, never reaches PostgreSQL).
    if let Some(runtime) = filter.runtime.as_deref().filter(|r| !r.is_empty())
        && kubefaas_core::runtime::lookup(runtime).is_none()
    {
        return Ok(Json(FunctionList { functions: Vec::new(), limit, offset }));
    }
    let query = FunctionQuery {
        namespace: Some(namespace),
        runtime: filter.runtime.filter(|r| !r.is_empty()),
        limit: Some(limit),
        offset: Some(offset),
    };
    let rows = state.store.list_functions(&query).await?;
    let functions = rows.into_iter().map(|row| response(&state, row)).collect();
    Ok(Json(FunctionList { functions, limit, offset }))
}

/// One function, by id or by name.
#[utoipa::path(get, path = "/functions/{function}", tag = "functions",
    params(("function" = String, Path, description = "Function id or name"), crate::model::NamespaceQuery),
    responses(
        (status = 200, body = FunctionResponse),
        (status = 400, description = "A malformed namespace", body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    Path(function): Path<String>,
) -> ApiResult<Json<FunctionResponse>> {
    let row = find(&state, &namespace, &function).await?;
    Ok(Json(response(&state, row)))
}

/// Changes a function; absent fields keep their values. Waits (bounded) for the operator.
#[utoipa::path(put, path = "/functions/{function}", tag = "functions", request_body = UpdateFunction,
    params(("function" = String, Path, description = "Function id or name"), crate::model::NamespaceQuery),
    responses(
        (status = 200, description = "Updated and ready", body = FunctionResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Changed concurrently; retry", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody), (status = 504, body = ErrorBody),
    ))]
pub(crate) async fn update(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    Path(function): Path<String>,
    ApiJson(body): ApiJson<UpdateFunction>,
) -> ApiResult<Json<FunctionResponse>> {
    let name = find(&state, &namespace, &function).await?.record.name;
    if let Some(given) = &body.name
        && *given != name
    {
        return Err(ApiError::field("name", format!("functions cannot be renamed (is {name:?})")));
    }
    let metadata = metadata_annotation(body.metadata.as_ref())?;
    let api: Api<Function> = Api::namespaced(state.client.clone(), &namespace);
    let mut current =
        api.get(&name).await.map_err(|e| kube_error(e, &format!("function {name:?}")))?;
    let spec = &mut current.spec;
    if let Some(v) = body.version {
        spec.version = v;
    }
    if let Some(v) = body.runtime {
        spec.runtime = v;
    }
    if let Some(v) = body.handler {
        spec.handler = v;
    }
    if let Some(v) = body.code {
        spec.code = FunctionCode { base64: Some(v), ..FunctionCode::default() };
    }
    if let Some(v) = body.timeout {
        spec.timeout_seconds = v;
    }
    if let Some(v) = body.memory_mb {
        spec.resources.memory = format!("{v}Mi");
    }
    if let Some(v) = body.environment {
        spec.env = v;
    }
    if let Some(v) = body.max_concurrency {
        spec.max_concurrency = v;
    }
    validation::validate_function(&name, &current.spec, &state.settings.limits)
        .map_err(|e| invalid(&e))?;
    if let Some(text) = metadata {
        current.annotations_mut().insert(METADATA_ANNOTATION.to_owned(), text);
    }
    // `replace` carries the resourceVersion read above: a concurrent change makes it a 409.
    let replaced = api
        .replace(&name, &post_params(), &current)
        .await
        .map_err(|e| kube_error(e, &format!("function {name:?}")))?;
    let uid = replaced.uid().unwrap_or_default();
    match wait_for_operator(&state, &namespace, &name, &uid, replaced.metadata.generation).await {
        Some(Readiness::Ready(id)) => {
            let row = live_row(&state, id).await?;
            Ok(Json(FunctionResponse::new(row, phase_ready(), None)))
        }
        Some(Readiness::Failed(message)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message))
        }
        _ => Err(not_ready_in_time(&state, &name)),
    }
}

/// Deletes a function; its invocation history stays. Waits (bounded) until it is gone.
#[utoipa::path(delete, path = "/functions/{function}", tag = "functions",
    params(("function" = String, Path, description = "Function id or name"), crate::model::NamespaceQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A malformed namespace", body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    Namespace(namespace): Namespace,
    Path(function): Path<String>,
) -> ApiResult<StatusCode> {
    let name = find(&state, &namespace, &function).await?.record.name;
    let api: Api<Function> = Api::namespaced(state.client.clone(), &namespace);
    api.delete(&name, &DeleteParams::default())
        .await
        .map_err(|e| kube_error(e, &format!("function {name:?}")))?;
    // The operator's finalizer marks the row deleted before the object goes; wait for that so
    // a read right after the answer sees the function gone.
    let deadline = tokio::time::Instant::now() + state.settings.function_wait;
    while state.functions.get_any(&namespace, &name).is_some() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(%namespace, %name, "function still being deleted");
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The live function `id_or_name` of `namespace`.
pub(crate) async fn find(
    state: &AppState,
    namespace: &str,
    id_or_name: &str,
) -> ApiResult<FunctionRow> {
    let row = match Uuid::parse_str(id_or_name) {
        Ok(id) => state.store.function(id).await?,
        Err(_) => state.store.function_by_name(namespace, id_or_name).await?,
    };
    row.filter(|r| r.deleted_at.is_none() && r.record.namespace == namespace).ok_or_else(|| {
        ApiError::not_found(format!("function {id_or_name:?} not found in namespace {namespace:?}"))
    })
}

async fn live_row(state: &AppState, id: Uuid) -> ApiResult<FunctionRow> {
    state
        .store
        .function(id)
        .await?
        .ok_or_else(|| ApiError::internal(&format!("function row {id} is missing")))
}

fn response(state: &AppState, row: FunctionRow) -> FunctionResponse {
    let cached = state.functions.get(&row.record.namespace, &row.record.name);
    let (phase, message) = match cached.as_deref().map(Function::readiness) {
        Some(Readiness::Ready(_)) => (phase_ready(), None),
        Some(Readiness::Failed(message)) => {
            (Some(kubefaas_core::resources::FunctionPhase::Failed), Some(message))
        }
        _ => (None, None),
    };
    FunctionResponse::new(row, phase, message)
}

fn phase_ready() -> Option<kubefaas_core::resources::FunctionPhase> {
    Some(kubefaas_core::resources::FunctionPhase::Ready)
}

/// Waits until the cached Function with `uid` has been handled by the operator for
/// `generation` (or a later one). `None` when the wait ran out.
async fn wait_for_operator(
    state: &AppState,
    namespace: &str,
    name: &str,
    uid: &str,
    generation: Option<i64>,
) -> Option<Readiness> {
    let deadline = tokio::time::Instant::now() + state.settings.function_wait;
    loop {
        if let Some(function) = state.functions.get(namespace, name)
            && function.uid().as_deref() == Some(uid)
            && function.metadata.generation >= generation
        {
            match function.readiness() {
                Readiness::Pending => {}
                done => return Some(done),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn not_ready_in_time(state: &AppState, name: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "function {name:?} was written but the operator did not make it ready within {:?}; \
             check GET /functions/{name} later",
            state.settings.function_wait
        ),
    )
}

/// The annotation text for REST `metadata`, which must be a JSON object.
fn metadata_annotation(metadata: Option<&Value>) -> ApiResult<Option<String>> {
    match metadata {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value.to_string())),
        Some(_) => Err(ApiError::field("metadata", "must be a JSON object")),
    }
}

/// Validated page parameters.
pub(crate) fn page(limit: Option<i64>, offset: Option<i64>) -> ApiResult<(i64, i64)> {
    let limit = limit.unwrap_or(100);
    if !(1..=kubefaas_core::store::MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("must be between 1 and {}", kubefaas_core::store::MAX_PAGE_SIZE),
        ));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::field("offset", "must not be negative"));
    }
    Ok((limit, offset))
}

/// A 400 naming each field in the REST API's own words.
pub(crate) fn invalid(errors: &ValidationErrors) -> ApiError {
    ApiError::invalid(
        errors
            .errors()
            .iter()
            .map(|e| {
                let text = e.to_string();
                let message = text.strip_prefix(&format!("{}: ", e.path)).unwrap_or(&text);
                FieldProblem { field: rest_field(&e.path), message: message.to_owned() }
            })
            .collect(),
    )
}

/// The REST field of a resource field path (`spec.code.base64` → `code`).
fn rest_field(path: &str) -> String {
    const FIELDS: &[(&str, &str)] = &[
        ("metadata.name", "name"),
        ("spec.runtime", "runtime"),
        ("spec.handler", "handler"),
        ("spec.code", "code"),
        ("spec.version", "version"),
        ("spec.env", "environment"),
        ("spec.resources.memory", "memory_mb"),
        ("spec.timeoutSeconds", "timeout"),
        ("spec.maxConcurrency", "max_concurrency"),
        ("spec.functionRef.name", "function"),
        ("spec.payload", "payload"),
        ("spec.headers", "headers"),
    ];
    for (prefix, field) in FIELDS {
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest.starts_with('[') {
                return format!("{field}{rest}");
            }
            if rest.is_empty() || rest.starts_with('.') {
                return (*field).to_owned();
            }
        }
    }
    path.to_owned()
}

/// Maps a Kubernetes API failure about `what`.
pub(crate) fn kube_error(error: kube::Error, what: &str) -> ApiError {
    match &error {
        kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists" => {
            ApiError::conflict(format!("{what} already exists"))
        }
        kube::Error::Api(status) if status.code == 409 => {
            ApiError::conflict(format!("{what} was changed concurrently; retry"))
        }
        kube::Error::Api(status) if status.code == 404 => {
            ApiError::not_found(format!("{what} not found: {}", status.message))
        }
        kube::Error::Api(status) if status.code == 400 || status.code == 422 => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", status.message.clone())
        }
        _ => ApiError::unavailable("the Kubernetes API", &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths_are_named_as_the_rest_api_names_them() {
        assert_eq!(rest_field("spec.code.base64"), "code");
        assert_eq!(rest_field("spec.env[FOO]"), "environment[FOO]");
        assert_eq!(rest_field("spec.resources.memory"), "memory_mb");
        assert_eq!(rest_field("metadata.name"), "name");
        assert_eq!(rest_field("spec.timeoutSeconds"), "timeout");
        assert_eq!(rest_field("spec.scaling.minWarm"), "spec.scaling.minWarm");
    }
}
