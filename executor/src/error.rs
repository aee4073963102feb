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
pub use kubefaas_core::resources::error_types;
