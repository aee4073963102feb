//! The `Invocation` custom resource: one asynchronous run of a function.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Requests one run of a Function with a payload. The operator queues it, an executor runs it,
/// and the outcome (result or error, attempts, timings, a tail of the logs) appears in
/// `.status`. PostgreSQL keeps the record after the resource is deleted.
// kube's derive takes one `printcolumn(...)` per column; clippy mistakes the repeats for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubefaas.io",
    version = "v1alpha1",
    kind = "Invocation",
    plural = "invocations",
    shortname = "inv",
    category = "kubefaas",
    namespaced,
    status = "InvocationStatus",
    derive = "PartialEq",
    doc = "One run of a Function with a payload; the outcome appears in .status.",
    printcolumn(name = "Function", type_ = "string", json_path = ".spec.functionRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attempts"),
    printcolumn(
        name = "Duration",
        type_ = "integer",
        description = "Wall-clock duration of the last attempt in milliseconds",
        json_path = ".status.metrics.durationMs"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct InvocationSpec {
    /// The Function to run, in the same namespace.
    pub function_ref: FunctionRef,

    /// The event passed to the handler: any JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::resources::any_json")]
    pub payload: Option<serde_json::Value>,

    /// Headers passed to the handler in its context, like the headers of an HTTP request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,

    /// Time limit for this run in seconds; never above the function's `timeoutSeconds`, which
    /// applies when this is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,

    /// Seconds after the invocation finished when the resource is deleted. PostgreSQL keeps the
    /// record. Unset keeps the resource until it is deleted by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

impl InvocationSpec {
    /// A spec that runs `function` with `payload` and nothing else set.
    pub fn new(function: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            function_ref: FunctionRef { name: function.into() },
            payload: Some(payload),
            headers: BTreeMap::new(),
            timeout_seconds: None,
            ttl_seconds_after_finished: None,
        }
    }
}

/// A reference to a Function in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FunctionRef {
    /// Name of the Function.
    pub name: String,
}

/// Observed state of an Invocation, written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvocationStatus {
    /// `Pending` → `Queued` → `Running` → one of `Succeeded`, `Failed`, `TimedOut`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InvocationPhase>,
    /// The handler's return value, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::resources::any_json")]
    pub result: Option<serde_json::Value>,
    /// What went wrong, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<InvocationError>,
    /// Attempts made so far, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// When the invocation was put on the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Time>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the invocation reached its final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Measurements of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<InvocationMetrics>,
    /// The last lines the function wrote to stdout and stderr (bounded; the full log is available
    /// through the REST API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// Standard conditions: `Complete`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Lifecycle phase of an Invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum InvocationPhase {
    Pending,
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
}

impl InvocationPhase {
    /// Whether the invocation has reached its final phase.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::TimedOut)
    }
}

/// A structured error of a failed invocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvocationError {
    /// Kind of error: the exception class for a function error (`ValueError`, `TypeError`), or a
    /// platform reason (`TimedOut`, `OutOfMemory`, `FunctionNotFound`, `FunctionNotReady`, …:
    /// see `error_types`).
    #[serde(rename = "type")]
    pub type_: String,
    /// Human-readable description.
    pub message: String,
    /// Stack trace of a function error, when the runtime provides one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

impl InvocationError {
    /// What kind of failure this is, from its type (see [`error_types`]).
    pub fn kind(&self) -> FailureKind {
        FailureKind::of(&self.type_)
    }
}

/// What a failed invocation's error means to whoever answers the caller or decides on a retry.
/// One place for the rule, rather than each component matching type names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler raised, rejected or returned an error, or its interpreter exited: the
    /// function's own failure, retried only when its retry policy says so.
    Function,
    /// The invocation ran past its deadline. Never retried.
    TimedOut,
    /// The instance went over its memory limit.
    OutOfMemory,
    /// The code cannot load or build, or its handler cannot be used: no attempt can succeed
    /// until the code changes. Never retried.
    Load,
    /// The handler's result cannot be delivered (not JSON, too large). Never retried.
    Result,
    /// The function does not exist (any more). Never retried.
    NoSuchFunction,
    /// The function never became ready while the invocation waited for it.
    FunctionNotReady,
    /// The platform failed the attempt (an instance that could not start, a broken protocol):
    /// always worth another attempt.
    Platform,
}

impl FailureKind {
    /// The kind of an error of type `type_`.
    pub fn of(type_: &str) -> Self {
        use error_types::*;
        match type_ {
            TIMED_OUT => Self::TimedOut,
            OUT_OF_MEMORY => Self::OutOfMemory,
            INIT_FAILED | INVALID_CODE | BUILD_FAILED => Self::Load,
            t if t.starts_with(RUNTIME_LOAD_PREFIX) => Self::Load,
            RESULT_NOT_SERIALIZABLE | RESULT_TOO_LARGE => Self::Result,
            FUNCTION_NOT_FOUND => Self::NoSuchFunction,
            FUNCTION_NOT_READY => Self::FunctionNotReady,
            INSTANCE_START_FAILED | PROTOCOL => Self::Platform,
            _ => Self::Function,
        }
    }
}

/// The error types the platform itself reports, as opposed to the exception types of users'
/// code (which keep their own names: `ValueError`, `TypeError`, …).
pub mod error_types {
    /// The invocation ran past its deadline; the instance was killed.
    pub const TIMED_OUT: &str = "TimedOut";
    /// The instance went over its memory limit and was killed.
    pub const OUT_OF_MEMORY: &str = "OutOfMemory";
    /// The interpreter exited or crashed during the invocation.
    pub const RUNTIME_EXITED: &str = "RuntimeExited";
    /// The handler name cannot be used for the language (e.g. not a Go identifier).
    pub const INIT_FAILED: &str = "InitFailed";
    /// The prefix of the types the python and node runtimes give a handler that cannot load, as
    /// AWS Lambda's do: `Runtime.ImportModuleError`, `Runtime.UserCodeSyntaxError`,
    /// `Runtime.HandlerNotFound`, `Runtime.MalformedHandlerName`.
    pub const RUNTIME_LOAD_PREFIX: &str = "Runtime.";
    /// The function's code cannot be used (a broken archive, an unsafe path, over the size
    /// limit).
    pub const INVALID_CODE: &str = "InvalidCode";
    /// The Go code did not compile.
    pub const BUILD_FAILED: &str = "BuildFailed";
    /// The handler returned a value that cannot be encoded as JSON.
    pub const RESULT_NOT_SERIALIZABLE: &str = "ResultNotSerializable";
    /// The handler's result is over the size limit.
    pub const RESULT_TOO_LARGE: &str = "ResultTooLarge";
    /// The instance could not be started for a platform reason.
    pub const INSTANCE_START_FAILED: &str = "InstanceStartFailed";
    /// The bootstrap broke the driver protocol.
    pub const PROTOCOL: &str = "RuntimeProtocolError";
    /// The invocation's function does not exist (any more).
    pub const FUNCTION_NOT_FOUND: &str = "FunctionNotFound";
    /// The invocation's function did not become ready in time.
    pub const FUNCTION_NOT_READY: &str = "FunctionNotReady";
    /// The invocation's message was delivered over and over without any executor reporting an
    /// outcome (each one died or lost it), and the queue gave up on it.
    pub const DEAD_LETTERED: &str = "DeadLettered";
}

/// Measurements of one attempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvocationMetrics {
    /// Wall-clock time the handler ran, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// CPU time the instance used for the invocation, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<i64>,
    /// Peak memory of the instance, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<i64>,
    /// Whether the attempt had to start a new instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_platform_error_type_has_its_kind_and_users_types_are_the_functions() {
        use error_types::*;
        let kinds = [
            (TIMED_OUT, FailureKind::TimedOut),
            (OUT_OF_MEMORY, FailureKind::OutOfMemory),
            (RUNTIME_EXITED, FailureKind::Function),
            (INIT_FAILED, FailureKind::Load),
            (INVALID_CODE, FailureKind::Load),
            (BUILD_FAILED, FailureKind::Load),
            ("Runtime.ImportModuleError", FailureKind::Load),
            (RESULT_NOT_SERIALIZABLE, FailureKind::Result),
            (RESULT_TOO_LARGE, FailureKind::Result),
            (INSTANCE_START_FAILED, FailureKind::Platform),
            (PROTOCOL, FailureKind::Platform),
            (FUNCTION_NOT_FOUND, FailureKind::NoSuchFunction),
            (FUNCTION_NOT_READY, FailureKind::FunctionNotReady),
            ("ValueError", FailureKind::Function),
            // A user's class that only resembles ours is still the user's.
            ("RuntimeError", FailureKind::Function),
        ];
        for (type_, kind) in kinds {
            let error = InvocationError { type_: type_.into(), ..InvocationError::default() };
            assert_eq!(error.kind(), kind, "{type_}");
        }
    }
}
