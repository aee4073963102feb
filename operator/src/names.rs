//! Names the operator writes into the cluster: finalizers, field managers, labels, condition
//! types and event reasons. Kept in one place so they are spelled the same everywhere.

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "kubefaas-operator";

/// Finalizer that keeps a deleted Function until its row is marked deleted.
pub const FUNCTION_FINALIZER: &str = "kubefaas.io/function-cleanup";

/// Label carrying the function name on objects the operator owns.
pub const FUNCTION_LABEL: &str = "kubefaas.io/function";

/// `app.kubernetes.io/managed-by` value on objects the operator owns.
pub const MANAGED_BY: &str = "kubefaas-operator";

/// Annotation with free-form REST metadata (a JSON object) of a Function.
pub use kubefaas_core::resources::METADATA_ANNOTATION;

/// Condition types.
pub mod condition {
    /// Function: code stored and function recorded; it can be invoked.
    pub const READY: &str = "Ready";
    /// Invocation: it has finished (any terminal phase).
    pub const COMPLETE: &str = "Complete";
}

/// Reasons of conditions and events (PascalCase).
pub mod reason {
    /// The function is ready to run.
    pub const READY: &str = "Ready";
    /// The spec failed validation.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The code could not be obtained.
    pub const CODE_UNAVAILABLE: &str = "CodeUnavailable";
    /// New code was stored.
    pub const CODE_UPDATED: &str = "CodeUpdated";
    /// The function's row was marked deleted.
    pub const DELETED: &str = "Deleted";
    /// The invocation was put on the queue.
    pub const QUEUED: &str = "Queued";
    /// The invocation waits for its function.
    pub const WAITING_FOR_FUNCTION: &str = "WaitingForFunction";
    /// The referenced function does not exist.
    pub const FUNCTION_NOT_FOUND: &str = "FunctionNotFound";
    /// The referenced function exists but is not ready.
    pub const FUNCTION_NOT_READY: &str = "FunctionNotReady";
}
