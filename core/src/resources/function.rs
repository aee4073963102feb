//! The `Function` custom resource: code, runtime, limits and scaling of one function.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Annotation of a Function holding the REST API's free-form `metadata` (a JSON object); the
/// operator copies it into the function's row.
pub const METADATA_ANNOTATION: &str = "kubefaas.io/metadata";

/// Declares a function: its code, the runtime that runs it, and the limits and scaling it runs
/// with. The operator stores the code, records the function in PostgreSQL and reports readiness
/// in `.status`; invoke it by creating an `Invocation` or through the REST gateway.
// kube's derive takes one `printcolumn(...)` per column; clippy mistakes the repeats for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubefaas.io",
    version = "v1alpha1",
    kind = "Function",
    plural = "functions",
    shortname = "fn",
    category = "kubefaas",
    namespaced,
    status = "FunctionStatus",
    derive = "PartialEq",
    doc = "A function: code, runtime, limits and scaling. Invoke it with an Invocation or through the REST gateway.",
    printcolumn(name = "Runtime", type_ = "string", json_path = ".spec.runtime"),
    printcolumn(name = "Handler", type_ = "string", json_path = ".spec.handler", priority = "1"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Warm", type_ = "integer", json_path = ".status.warmInstances"),
    printcolumn(
        name = "Checksum",
        type_ = "string",
        json_path = ".status.codeChecksum",
        priority = "1"
    ),
    printcolumn(name = "Invoked", type_ = "date", json_path = ".status.lastInvokedAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// Runtime that runs the code, from the runtime catalogue: `python`, `nodejs` or `go` (the
    /// current default version of each language), or a version-qualified name such as
    /// `python3.13`, `nodejs22` or `go1.22`.
    pub runtime: String,

    /// Entry point inside the code. python: `module.function` (`main.handler` calls
    /// `handler(event, context)` in `main.py`); nodejs: `file.export` (`index.handler` loads
    /// `index.js` or `index.mjs`); go: the exported function name (`Handle`, with signature
    /// `func Handle(ctx context.Context, event json.RawMessage) (any, error)`).
    pub handler: String,

    /// Source of the function's code. Set exactly one of `inline`, `base64`, `configMapRef` or
    /// `url` (with `sha256`).
    pub code: FunctionCode,

    /// Version label of the function, recorded with every invocation.
    #[serde(default = "default_version")]
    #[schemars(length(min = 1, max = 64))]
    pub version: String,

    /// Environment variables set in every instance of the function. Names must be valid
    /// environment variable names and must not start with the reserved prefix `KUBEFAAS_`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,

    /// Secrets and ConfigMaps (in the function's namespace) whose keys become environment
    /// variables of every instance, as a pod's `envFrom` does. A later entry wins over an
    /// earlier one on a name clash, and `env` wins over them all. Keys that are not valid
    /// variable names, or that start with `KUBEFAAS_`, are skipped. The values are read when an
    /// instance starts: an edit of the Secret or ConfigMap reaches instances started after it.
    /// A missing Secret or ConfigMap keeps instances from starting, and invocations fail saying
    /// which.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// Memory and CPU limits of each instance.
    #[serde(default)]
    pub resources: FunctionResources,

    /// Longest an invocation may run, in seconds, before it is stopped and marked `TimedOut`.
    /// At most the platform's maximum: 900 unless its operators set `--max-timeout-seconds`
    /// (chart value `limits.maxTimeoutSeconds`), which may go up to 3600.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: i32,

    /// Most invocations of this function that one executor runs at the same time. Each
    /// executor enforces it on its own, so with N executors up to N times this many may run at
    /// once (as with `scaling.maxInstances`).
    #[serde(default = "default_max_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrency: i32,

    /// How many instances are kept warm and how many may exist.
    #[serde(default)]
    pub scaling: Scaling,

    /// How failed attempts are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl FunctionSpec {
    /// A spec with every optional field at its default, as the API server would fill it in.
    pub fn new(runtime: impl Into<String>, handler: impl Into<String>, code: FunctionCode) -> Self {
        Self {
            runtime: runtime.into(),
            handler: handler.into(),
            code,
            version: default_version(),
            env: BTreeMap::new(),
            env_from: Vec::new(),
            resources: FunctionResources::default(),
            timeout_seconds: default_timeout_seconds(),
            max_concurrency: default_max_concurrency(),
            scaling: Scaling::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// The memory limit in whole MiB, rounded up, as PostgreSQL records it (at least 1; 1 for
    /// a quantity that does not parse, which validation refuses before anything is recorded).
    pub fn memory_mb(&self) -> i32 {
        let bytes = crate::validation::parse_memory_bytes(&self.resources.memory).unwrap_or(0);
        i32::try_from(bytes.div_ceil(1024 * 1024)).unwrap_or(i32::MAX).max(1)
    }

    /// The CPU limit in millicores, as PostgreSQL records it (at least 1, like
    /// [`memory_mb`](Self::memory_mb)).
    pub fn cpu_millis(&self) -> i32 {
        let millis = crate::validation::parse_cpu_millis(&self.resources.cpu).unwrap_or(0);
        i32::try_from(millis).unwrap_or(i32::MAX).max(1)
    }
}

impl FunctionCode {
    /// Code given as the source text of one file.
    pub fn inline(source: impl Into<String>) -> Self {
        Self { inline: Some(source.into()), ..Self::default() }
    }
}

/// Where the function's code comes from. Exactly one source is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCode {
    /// Source text of a single file, for example the whole of `main.py`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,

    /// A single source file or a zip archive, base64-encoded (what the REST API sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,

    /// A key of a ConfigMap in the function's namespace that holds the code (text data or
    /// binaryData; a zip archive is unpacked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,

    /// HTTP(S) address the code (a single file or a zip archive) is downloaded from. Requires
    /// `sha256`. The operator downloads it once, checks the digest and stores the code in the
    /// function's code ConfigMap, so it is bounded by the same size as inline code; runtime pods
    /// never reach the address. Credentials in the query string stay out of status messages.
    /// A failed download leaves the function `Failed` (reason `CodeUnavailable`) and is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// Lower-case hex SHA-256 of the content at `url`; a download that does not match is
    /// rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A key inside a ConfigMap of the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    pub name: String,
    /// Key inside the ConfigMap.
    pub key: String,
}

/// A Secret or ConfigMap whose keys all become environment variables. Set exactly one of
/// `secretRef` and `configMapRef`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    /// A ConfigMap in the function's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<LocalObjectRef>,
    /// A Secret in the function's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectRef>,
    /// Prefix added to every variable name taken from this source (letters, digits and `_`;
    /// not starting with `KUBEFAAS_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A reference to an object by name in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object.
    pub name: String,
}

/// Resource limits of one function instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionResources {
    /// Memory limit as a Kubernetes quantity (`128Mi`, `1Gi`). An instance that exceeds it is
    /// killed and the invocation fails with error type `OutOfMemory`.
    #[serde(default = "default_memory")]
    pub memory: String,
    /// CPU limit as a Kubernetes quantity (`100m` is a tenth of a core, `1` a whole core).
    #[serde(default = "default_cpu")]
    pub cpu: String,
}

impl Default for FunctionResources {
    fn default() -> Self {
        Self { memory: default_memory(), cpu: default_cpu() }
    }
}

/// Warm-instance and scale-out settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Instances kept started and idle, ready for the next invocation. Counted per executor
    /// replica: with the Helm chart's two executors, twice this many are kept.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub min_warm: i32,
    /// Most instances of the function that one executor replica runs at once (each executor
    /// runs its own pods or processes, so N executors may run up to N times this many). Never
    /// below `minWarm`.
    #[serde(default = "default_max_instances")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_instances: i32,
    /// Seconds an instance may stay idle before it is stopped (instances up to `minWarm` are
    /// kept).
    #[serde(default = "default_idle_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_timeout_seconds: i32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            min_warm: 0,
            max_instances: default_max_instances(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
        }
    }
}

/// Retry policy of the function's invocations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Most attempts an invocation gets, the first included. Infrastructure failures (a lost
    /// instance, an executor that died) are always retried up to this bound.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: i32,
    /// Delay before the first retry, in seconds; each further retry waits twice as long as the
    /// one before, up to five minutes.
    #[serde(default = "default_backoff_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub backoff_seconds: i32,
    /// Also retry when the function itself fails (an exception, a rejected promise, a returned
    /// Go error, a timeout). Off by default: user errors usually repeat.
    #[serde(default)]
    pub on_function_error: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_seconds: default_backoff_seconds(),
            on_function_error: false,
        }
    }
}

/// Observed state of a Function, written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// `Pending` until the code is stored and the function recorded, then `Ready`; `Failed`
    /// when the spec is invalid or the code cannot be obtained (see `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FunctionPhase>,
    /// Standard conditions; `Ready` (with the reason and message of the phase) is the one
    /// written today.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Id of the function's row in PostgreSQL (the REST API's function id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_id: Option<String>,
    /// Lower-case hex SHA-256 of the stored code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_checksum: Option<String>,
    /// Size of the stored code in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_size: Option<i64>,
    /// Runtime pods of the function that are running and ready to serve (the executor's
    /// `kubernetes` backend); a pod still starting, or still building Go code, is not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_instances: Option<i32>,
    /// When the function was last invoked: the creation time of its newest invocation, however
    /// it was made (Invocation, or the REST API's asynchronous or synchronous invoke), to the
    /// second. Seen when an invocation finishes; written at most once per function every
    /// `--last-invoked-flush-seconds` (15 s by default), so it may lag by that much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_invoked_at: Option<Time>,
    /// Human-readable explanation of the phase, set when something needs attention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Lifecycle phase of a Function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FunctionPhase {
    Pending,
    Ready,
    Failed,
}

/// Where a Function stands for the components that invoke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Ready for its current spec; its row id.
    Ready(Uuid),
    /// The operator rejected its current spec.
    Failed(String),
    /// The operator has not finished with its current spec.
    Pending,
}

impl Function {
    /// Whether the function is ready for its current generation.
    pub fn readiness(&self) -> Readiness {
        let Some(status) = &self.status else {
            return Readiness::Pending;
        };
        if status.observed_generation != self.metadata.generation {
            return Readiness::Pending;
        }
        match status.phase {
            Some(FunctionPhase::Ready) => match self.function_id() {
                Some(id) => Readiness::Ready(id),
                None => Readiness::Pending,
            },
            Some(FunctionPhase::Failed) => Readiness::Failed(
                status.message.clone().unwrap_or_else(|| "the function failed".to_owned()),
            ),
            _ => Readiness::Pending,
        }
    }

    /// The row id to invoke the function with, or why it cannot be invoked. A function being
    /// updated can: its row id does not change, and the executor waits for the new code.
    pub fn invocable(&self) -> Result<Uuid, String> {
        match self.readiness() {
            Readiness::Ready(id) => Ok(id),
            Readiness::Failed(message) => Err(message),
            Readiness::Pending => {
                self.function_id().ok_or_else(|| "the operator has not finished with it".to_owned())
            }
        }
    }

    /// `status.functionId`, when the operator has recorded the function.
    pub fn function_id(&self) -> Option<Uuid> {
        let id = self.status.as_ref()?.function_id.as_deref()?;
        Uuid::parse_str(id).ok()
    }
}

fn default_version() -> String {
    "1.0.0".to_owned()
}
fn default_memory() -> String {
    "128Mi".to_owned()
}
fn default_cpu() -> String {
    "100m".to_owned()
}
fn default_timeout_seconds() -> i32 {
    30
}
fn default_max_concurrency() -> i32 {
    10
}
fn default_max_instances() -> i32 {
    10
}
fn default_idle_timeout_seconds() -> i32 {
    300
}
fn default_max_attempts() -> i32 {
    3
}
fn default_backoff_seconds() -> i32 {
    1
}
