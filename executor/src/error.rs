//! The crate's error type and the error types the platform reports for failed invocations.

use std::path::PathBuf;

pub use kubefaas_core::resources::InvocationError;

/// What went wrong in the driver itself (not in the user's function: those end as an
/// [`InvocationError`] inside an [`Invocation`](crate::Invocation)).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory of the driver's work area could not be prepared.
    #[error("preparing {path}: {source}")]
    PrepareFiles {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The function's code archive is unusable (bad zip, unsafe path, too large).
    #[error("function code: {0}")]
    InvalidCode(String),
    /// The handler name cannot be used for the language.
    #[error("invalid handler {handler:?}: {reason}")]
    InvalidHandler {
        /// The handler as given.
        handler: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The interpreter or toolchain of a language is not installed.
    #[error("{program} not found for the {language} runtime: {reason}")]
    MissingInterpreter {
        /// Program looked for.
        program: String,
        /// Language that needs it.
        language: &'static str,
        /// What failed.
        reason: String,
    },
    /// The instance process could not be started.
    #[error("starting the instance: {0}")]
    SpawnInstance(#[source] std::io::Error),
    /// The function's `envFrom` could not be read, so no instance can start with the
    /// environment it asks for.
    #[error("spec.envFrom: {0}")]
    EnvFrom(String),
    /// The per-instance cgroup could not be created or configured.
    #[error("setting up cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The control connection between driver and bootstrap failed.
    #[error("control connection: {0}")]
    Control(#[source] std::io::Error),
}

/// An error of the platform's own type (one of [`error_types`]), without a stack.
pub fn platform_error(type_: &str, message: impl Into<String>) -> InvocationError {
    InvocationError { type_: type_.to_owned(), message: message.into(), stack: None }
}

/// Error types the platform itself reports (as opposed to the user's exception types).
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
}
