//! `kubefaas-executor`: runs functions.
//!
//! This crate owns the *driver*: it starts an instance (a long-lived interpreter running a
//! small per-language bootstrap) for a function, sends it one invocation at a time over a
//! private control socket, enforces the deadline by killing the instance, captures the user's
//! stdout/stderr as the invocation's logs, and measures wall time, CPU time and peak memory. On
//! one machine instances run in a sandbox ([`sandbox`]: a cgroup per instance, rlimits where no
//! cgroup is writable, namespaces where the host allows). The [`Pool`] keeps instances warm per
//! function.
//!
//! What the local sandbox does and does not protect against is written down in `SANDBOX.md`
//! next to this crate. The driver modules do not talk to Postgres, Redis or the Kubernetes API;
//! the [`worker`] (the queue consumer, over a [`worker::Backend`]: the local [`Pool`] or
//! [`kubernetes`] runtime pods invoked over HTTP), [`functions`] (functions from a watch of the
//! Kubernetes API), [`warm`] (instances kept warm ahead of invocations as Functions come and
//! go) and [`service`] (the `kubefaas-executor` binary's body) do.

mod code;
mod driver;
mod error;
pub mod functions;
pub mod history;
mod instance;
pub mod kubernetes;
mod logs;
pub mod metrics;
mod pool;
mod process;
mod runtime;
pub mod sandbox;
pub mod service;
pub mod warm;
pub mod watchdog;
pub mod worker;

pub use code::{Code, DEFAULT_MAX_UNPACKED_BYTES};
pub use driver::{Driver, DriverConfig, FunctionSpec, StartOutcome};
pub use error::{Error, InvocationError, error_types, platform_error};
pub use instance::{
    ACCOUNT_ID, DEFAULT_REGION, Instance, Invocation, Metrics, Request, StartFailure,
};
pub use kubefaas_core::runtime::Language;
pub use logs::{Segment, TRUNCATION_MARKER};
pub use pool::{Pool, Scaling};
pub use runtime::{GO_MAIN_TEMPLATE, NODEJS_BOOTSTRAP, PYTHON_BOOTSTRAP};
pub use sandbox::{Limits, Mechanism, SandboxMode, SandboxReport};
