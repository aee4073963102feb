//! `kubefaas-core`: everything two or more kubefaas binaries share.
//!
//! - [`code`]: function code as stored in its ConfigMap: one source file or a zip archive.
//! - [`env_from`]: a Function's `envFrom`, resolved from ConfigMaps and Secrets where no
//!   kubelet does it.
//! - [`resources`]: the `Function` and `Invocation` custom resources and their CRDs.
//! - [`http`]: outbound HTTP(S) clients with the platform's TLS set-up.
//! - [`validation`]: the checks on those resources that the operator and the gateway both apply.
//! - [`schema`]: structural-schema rules and validation of objects against a CRD schema.
//! - [`runtime`]: the runtime catalogue.
//! - [`service`]: shutdown signals and readiness checks shared by the service binaries.
//! - [`submit`]: the one way an invocation enters the data plane (row committed, job queued),
//!   used by every producer.
//! - [`store`]: the PostgreSQL store of functions and invocations, and the invocation lifecycle.
//! - [`tokens`]: the gateway's API tokens, stored as SHA-256 hashes.
//! - [`queue`]: the Redis Streams invocation queue: claims, retries with backoff, reclaim of
//!   abandoned work, dead letters, trimming, stats and completion notifications.
//! - [`watch`]: watch-backed caches of Kubernetes objects (the `Function`s the gateway and the
//!   executor read).
//!
//! This crate owns data shapes, the rules on them and the platform's use of PostgreSQL and
//! Redis. It must not write to the Kubernetes API or read configuration from the environment:
//! the binaries decide that; its uses of the API, [`watch`] and [`env_from`], read through a client
//! the caller passes in. It starts no background work behind the caller's back: its tasks, the
//! completion listener and the watches, are started by the caller through
//! [`queue::Completions::start`] and [`watch::Cache::start`], which hand back their
//! `JoinHandle`s (the redis client's own connection drivers aside).

pub mod batch;
pub mod code;
pub mod env_from;
pub mod http;
pub mod queue;
pub mod resources;
pub mod runtime;
pub mod schema;
pub mod service;
pub mod store;
pub mod submit;
pub mod tokens;
pub mod validation;
pub mod watch;
