//! `kubefaas-watchdog`: the driver behind a small HTTP server, for use inside runtime
//! containers. It runs one function, whose code is mounted at a directory, with one warm
//! instance serving one invocation at a time (the pod is the unit of scale on Kubernetes).
//!
//! - `POST /invoke` with `{"id"?, "payload", "timeoutMs"?}` → 200 with `{"id", "result"}` or
//!   `{"id", "error": {type, message, stack}}`, plus `logs`, `logsTruncated` and `metrics` in
//!   the Invocation status's shape. Function failures are 200s: the HTTP status only says
//!   whether the watchdog could run the invocation.
//! - `GET /healthz` → 200 while an instance is warm or busy (a killed one is replaced first).
//!
//! In the container the pod enforces limits, so the driver's own sandbox is off.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kubefaas_core::resources::{InvocationError, InvocationMetrics};
use kubefaas_core::runtime::{self, Language};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::code::Code;
use crate::driver::{Driver, DriverConfig, FunctionSpec};
use crate::error::Error;
use crate::instance::{Metrics, Request};
use crate::pool::{Pool, Scaling};
use crate::sandbox::{Limits, SandboxMode};

/// Environment variables that configure the watchdog; all others are the function's.
pub mod env {
    /// Runtime name from the catalogue (`python`, `nodejs20`, `go`).
    pub const RUNTIME: &str = "KUBEFAAS_RUNTIME";
    /// The handler.
    pub const HANDLER: &str = "KUBEFAAS_HANDLER";
    /// Directory holding the function's code (one file or several, or a `code.zip`).
    pub const CODE_DIR: &str = "KUBEFAAS_CODE_DIR";
    /// Writable directory for instance files and caches.
    pub const WORK_DIR: &str = "KUBEFAAS_WORK_DIR";
    /// Address to listen on.
    pub const LISTEN: &str = "KUBEFAAS_LISTEN";
    /// Function name, for the context.
    pub const FUNCTION_NAME: &str = "KUBEFAAS_FUNCTION_NAME";
    /// Function version, for the context.
    pub const FUNCTION_VERSION: &str = "KUBEFAAS_FUNCTION_VERSION";
    /// Memory limit in MiB, for the context (the pod enforces it).
    pub const MEMORY_MB: &str = "KUBEFAAS_MEMORY_MB";
    /// Timeout of an invocation that names none.
    pub const TIMEOUT_SECONDS: &str = "KUBEFAAS_TIMEOUT_SECONDS";
    /// `auto` to apply the local sandbox as well (outside containers); default `off`.
    pub const SANDBOX: &str = "KUBEFAAS_SANDBOX";
}

/// Configuration of the watchdog.
#[derive(Clone, Debug)]
pub struct WatchdogConfig {
    /// Address to listen on.
    pub listen: String,
    /// Directory with the function's code.
    pub code_dir: PathBuf,
    /// Writable work directory.
    pub work_dir: PathBuf,
    /// Runtime language.
    pub language: Language,
    /// The handler.
    pub handler: String,
    /// Function name.
    pub function_name: String,
    /// Function version.
    pub function_version: String,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// Timeout of invocations that name none.
    pub default_timeout: Duration,
    /// Whether to apply the local sandbox.
    pub sandbox: SandboxMode,
    /// The function's environment.
    pub env: BTreeMap<String, String>,
}

impl WatchdogConfig {
    /// Reads the configuration from environment variables (see [`env`]); every variable not
    /// prefixed `KUBEFAAS_` is passed to the function.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, Error> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let get = |key: &str| vars.get(key).cloned();
        let invalid = |key: &str, why: &str| Error::InvalidConfig(format!("{key}: {why}"));
        let runtime_name = get(env::RUNTIME).ok_or_else(|| invalid(env::RUNTIME, "not set"))?;
        let language = runtime::lookup(&runtime_name)
            .map(|r| r.language)
            .ok_or_else(|| invalid(env::RUNTIME, "not a runtime of the catalogue"))?;
        let number = |key: &str, default: u64| -> Result<u64, Error> {
            get(key).map_or(Ok(default), |v| v.parse().map_err(|_| invalid(key, "not a number")))
        };
        let sandbox = match get(env::SANDBOX).as_deref() {
            None | Some("off") => SandboxMode::Off,
            Some("auto") => SandboxMode::Auto,
            Some(_) => return Err(invalid(env::SANDBOX, "must be off or auto")),
        };
        Ok(Self {
            listen: get(env::LISTEN).unwrap_or_else(|| "0.0.0.0:8080".into()),
            code_dir: get(env::CODE_DIR).unwrap_or_else(|| "/var/task".into()).into(),
            work_dir: get(env::WORK_DIR).unwrap_or_else(|| "/tmp/kubefaas".into()).into(),
            language,
            handler: get(env::HANDLER).ok_or_else(|| invalid(env::HANDLER, "not set"))?,
            function_name: get(env::FUNCTION_NAME).unwrap_or_else(|| "function".into()),
            function_version: get(env::FUNCTION_VERSION).unwrap_or_else(|| "1.0.0".into()),
            memory_mb: number(env::MEMORY_MB, 128)?,
            default_timeout: Duration::from_secs(number(env::TIMEOUT_SECONDS, 30)?),
            sandbox,
            env: vars.into_iter().filter(|(k, _)| !k.starts_with("KUBEFAAS_")).collect(),
        })
    }
}

/// The body of `POST /invoke`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvokeRequest {
    /// Invocation id; generated when missing.
    #[serde(default)]
    pub id: Option<String>,
    /// The event.
    #[serde(default)]
    pub payload: Value,
    /// Timeout in milliseconds; the configured default when missing.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// The body of a `POST /invoke` answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvokeResponse {
    /// Invocation id.
    pub id: String,
    /// The handler's result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The structured error, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<InvocationError>,
    /// What the function printed.
    pub logs: String,
    /// Whether the logs were cut.
    pub logs_truncated: bool,
    /// Measurements, in the Invocation status's shape.
    pub metrics: InvocationMetrics,
}

/// Converts driver metrics to the Invocation status's shape.
pub fn status_metrics(metrics: &Metrics) -> InvocationMetrics {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    InvocationMetrics {
        duration_ms: Some(ms(metrics.duration)),
        cpu_time_ms: metrics.cpu_time.map(ms),
        memory_peak_bytes: metrics.memory_peak_bytes.and_then(|b| i64::try_from(b).ok()),
        cold_start: Some(metrics.cold_start),
    }
}

#[derive(Debug)]
struct AppState {
    pool: Pool,
    spec: Arc<FunctionSpec>,
    default_timeout: Duration,
    /// Why the handler did not load, once it failed to (see [`healthz`]).
    load_failure: Mutex<Option<InvocationError>>,
}

const SCALING: Scaling =
    Scaling { min_warm: 1, max_instances: 1, idle_timeout: Duration::from_secs(u64::MAX / 4) };

/// Runs the watchdog on `listener` until `shutdown` completes, then stops accepting, lets the
/// invocation in flight finish and stops the instance.
pub async fn run(
    config: WatchdogConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let zip = config.code_dir.join("code.zip");
    let code = if zip.is_file() {
        Code::Zip(std::fs::read(&zip).map_err(|source| Error::PrepareFiles { path: zip, source })?)
    } else {
        Code::Directory(config.code_dir.clone())
    };
    let mut spec =
        FunctionSpec::new(&config.function_name, config.language, &config.handler, code)?;
    spec.version = config.function_version.clone();
    spec.env = config.env.clone();
    spec.limits = Limits { memory_bytes: config.memory_mb * 1024 * 1024, ..Limits::default() };
    let mut driver_config = DriverConfig::under(&config.work_dir);
    driver_config.sandbox = config.sandbox;
    let pool = Pool::new(Driver::new(driver_config)?);
    let spec = Arc::new(spec);
    // Warm before serving, so a ready pod answers its first invocation warm.
    let load_failure = pool.ensure_warm(Arc::clone(&spec), SCALING).await?.err().map(|f| f.error);
    let state = Arc::new(AppState {
        pool,
        spec,
        default_timeout: config.default_timeout,
        load_failure: Mutex::new(load_failure),
    });
    let app = router(Arc::clone(&state));
    tracing::info!(addr = ?listener.local_addr().ok(), function = %config.function_name, "watchdog listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(Error::Control)?;
    state.pool.clear();
    tracing::info!("watchdog stopped");
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    Router::new().route("/invoke", post(invoke)).route("/healthz", get(healthz)).with_state(state)
}

/// 200 when an instance is warm or busy. An instance that was killed (timeout, crash) is
/// replaced here rather than on the next invocation, so probes keep the pod warm.
///
/// Code that does not load (an import error, a syntax error, no such handler) cannot load in
/// this pod ever: its code does not change. The pod is then Ready all the same, so invocations
/// reach it and fail at once with the load error and what the module printed, rather than
/// waiting for a pod that never becomes Ready; the body says why.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let known = state.load_failure.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(error) = known {
        let body = format!("the handler does not load: {}: {}", error.type_, error.message);
        return (StatusCode::OK, body).into_response();
    }
    match state.pool.ensure_warm(Arc::clone(&state.spec), SCALING).await {
        Ok(Err(failure)) => {
            *state.load_failure.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(failure.error);
        }
        Err(e) => tracing::warn!(error = %e, "no instance could be started"),
        Ok(Ok(_)) => {}
    }
    if state.pool.instances(&state.spec.name) > 0 {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no warm instance").into_response()
    }
}

fn bad_request(message: String) -> Response {
    let body = json!({"error": {"code": "BadRequest", "message": message}});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn invoke(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request: InvokeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid invoke body: {e}")),
    };
    let timeout = request.timeout_ms.map_or(state.default_timeout, Duration::from_millis);
    let mut req = Request::new(request.payload, timeout);
    if let Some(id) = request.id {
        req.id = id;
    }
    match state.pool.invoke(Arc::clone(&state.spec), SCALING, &req).await {
        Ok(invocation) => {
            let (result, error) = match invocation.outcome {
                Ok(value) => (Some(value), None),
                Err(error) => (None, Some(error)),
            };
            let response = InvokeResponse {
                id: req.id,
                result,
                error,
                logs: invocation.logs,
                logs_truncated: invocation.logs_truncated,
                metrics: status_metrics(&invocation.metrics),
            };
            (StatusCode::OK, Json(response)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "invocation could not run");
            let body = json!({"error": {"code": "InstanceUnavailable", "message": "the function instance could not be started"}});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
