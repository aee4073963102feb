//! `kubefaas-core`: everything two or more kubefaas binaries share.
//!
//! - [`resources`]: the `Function` and `Invocation` custom resources and their CRDs.
//! - [`validation`]: the checks on those resources that the operator and the gateway both apply.
//! - [`schema`]: structural-schema rules and validation of objects against a CRD schema.
//! - [`runtime`]: the runtime catalogue.
//! - [`store`]: the PostgreSQL store of functions and invocations, and the invocation lifecycle.
//!
//! This crate owns data shapes and the rules on them. It must not talk to the Kubernetes API,
//! start tasks on its own or read configuration from the environment: the binaries decide that.

pub mod resources;
pub mod runtime;
pub mod schema;
pub mod store;
pub mod validation;
