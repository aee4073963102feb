//! Names the operator writes into the cluster: finalizers, field managers, labels, condition
//! types and event reasons. Kept in one place so they are spelled the same everywhere.

/// Field manager of the operator's server-side applies (all but [`LAST_INVOKED_FIELD_MANAGER`]'s
/// and [`WARM_FIELD_MANAGER`]'s).
pub const FIELD_MANAGER: &str = "kubefaas-operator";

/// Field manager of a Function's `status.lastInvokedAt`, and of nothing else. Kept apart from
/// [`FIELD_MANAGER`] so the function controller's status applies (which leave the field out)
/// neither remove it nor need to know it, and its own applies need not repeat the rest.
pub const LAST_INVOKED_FIELD_MANAGER: &str = "kubefaas-operator-last-invoked";

/// Field manager of a Function's `status.warmInstances`, and of nothing else (see `warm`).
pub const WARM_FIELD_MANAGER: &str = "kubefaas-operator-warm";

/// Finalizer that keeps a deleted Function until its row is marked deleted.
pub const FUNCTION_FINALIZER: &str = "kubefaas.io/function-cleanup";

/// Label carrying the function name on objects the operator owns, and on the runtime pods it
/// watches.
pub use kubefaas_core::resources::labels::FUNCTION as FUNCTION_LABEL;

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
    /// The referenced function does not exist (also the error type of an Invocation that gave
    /// up on it).
    pub const FUNCTION_NOT_FOUND: &str = kubefaas_core::resources::error_types::FUNCTION_NOT_FOUND;
    /// The referenced function exists but is not ready (also the error type of an Invocation
    /// that gave up waiting).
    pub const FUNCTION_NOT_READY: &str = kubefaas_core::resources::error_types::FUNCTION_NOT_READY;
}
