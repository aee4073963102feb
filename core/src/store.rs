//! The PostgreSQL store: functions, invocations and the invocation lifecycle.
//!
//! PostgreSQL is the source of truth for invocation history. Redis carries invocations at least
//! once; what makes each one run to completion exactly once in effect is that every lifecycle step
//! here is a compare-and-set on the invocation's row:
//!
//! ```text
//! pending ──mark_queued──▶ queued ──claim──▶ running ──complete──▶ succeeded | failed | timed_out
//!                            ▲                  │
//!                            └───retry_later────┘   (expired lease: claim takes it over)
//! ```
//!
//! A claim hands out a [`Lease`] whose `attempt` is the row's attempt counter at the time of the
//! claim. Only the holder of the current attempt may renew the lease, send the invocation back for
//! a retry, or commit a terminal state; a holder whose lease expired and was taken over finds its
//! writes rejected. SQL lives here only, one function per query, with parameters bound.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    str::FromStr,
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
};
use uuid::Uuid;

use crate::resources::{InvocationError, InvocationMetrics, InvocationPhase, RetryPolicy};

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Most rows one list query returns, whatever the caller asks for.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// Failures of store operations. Each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL could not be parsed or the server could not be reached.
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// Applying the migrations failed.
    #[error("running database migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("{op}: {source}")]
    Query {
        /// The store operation that ran the query.
        op: &'static str,
        /// What the database or driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The write conflicts with a row that already exists.
    #[error("{op}: {message}")]
    Conflict {
        /// The store operation that was refused.
        op: &'static str,
        /// What conflicted.
        message: String,
    },
    /// An invocation names a function id that has no row.
    #[error("function {0} does not exist")]
    UnknownFunction(Uuid),
    /// A row holds a value this version of kubefaas does not understand.
    #[error("unexpected {what} {value:?} in the database")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// The value found.
        value: String,
    },
    /// The caller asked for a transition the lifecycle does not have.
    #[error("{0}")]
    InvalidTransition(String),
    /// A schema name that is not a plain lower-case identifier.
    #[error(
        "schema name {0:?}: use 1 to 63 lower-case letters, digits and '_', not starting with a digit"
    )]
    InvalidSchema(String),
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn query_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// Connection settings for [`Store::connect`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a free connection (and for the first connection) before failing.
    pub acquire_timeout: Duration,
    /// Schema to use for every table instead of the user's default `search_path`; tests give each
    /// test its own.
    pub schema: Option<String>,
}

impl StoreConfig {
    /// Settings for `url` with the defaults: 10 connections, 10 s acquire timeout, default schema.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            schema: None,
        }
    }
}

/// Creates `schema` on the server at `url` if it does not exist, and returns `url` with every
/// connection's `search_path` set to it: stores, and processes given the URL, that share one
/// database but none of its tables. The tests give each test its own schema this way.
pub async fn create_schema(url: &str, schema: &str) -> Result<String> {
    let valid = (1..=63).contains(&schema.len())
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(StoreError::InvalidSchema(schema.to_owned()));
    }
    let admin =
        Store::connect(&StoreConfig { max_connections: 1, ..StoreConfig::new(url) }).await?;
    // The name was checked above to be a plain identifier.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
        .execute(admin.pool())
        .await
        .map_err(query_error("create schema"))?;
    admin.pool().close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}options=-c%20search_path%3D{schema}"))
}

/// Handle on the kubefaas database. Cheap to clone; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Opens a connection pool and checks the server answers.
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        let mut options: PgConnectOptions = config.url.parse().map_err(StoreError::Connect)?;
        if let Some(schema) = &config.schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool, for callers that need a transaction across store operations.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations. Already-applied ones are skipped, and concurrent callers
    /// serialise on an advisory lock, so every component may call this at start.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(StoreError::Migrate)
    }

    /// Checks the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(query_error("ping"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------------

/// Where a function's code comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeSource {
    /// Base64 source text in the Function spec.
    Inline,
    /// A base64 zip archive in the Function spec.
    Zip,
    /// A key of a ConfigMap.
    ConfigMap,
    /// Downloaded from a URL and checked against a SHA-256.
    Url,
}

impl CodeSource {
    /// The value stored in `functions.code_source_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Zip => "zip",
            Self::ConfigMap => "configmap",
            Self::Url => "url",
        }
    }
}

impl TryFrom<String> for CodeSource {
    type Error = StoreError;

    fn try_from(value: String) -> Result<Self> {
        Ok(match value.as_str() {
            "inline" => Self::Inline,
            "zip" => Self::Zip,
            "configmap" => Self::ConfigMap,
            "url" => Self::Url,
            _ => {
                return Err(StoreError::Corrupt { what: "code source type", value });
            }
        })
    }
}

/// What the store records about a function: everything but the bookkeeping timestamps.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct FunctionRecord {
    /// Row id. Used when the row is first inserted; an update keeps the existing id.
    pub id: Uuid,
    /// Kubernetes namespace of the Function.
    pub namespace: String,
    /// Name of the Function (a DNS-1123 label).
    pub name: String,
    /// Version label from the spec.
    pub version: String,
    /// Runtime name from the catalogue.
    pub runtime: String,
    /// Entry point inside the code.
    pub handler: String,
    /// Where the code comes from.
    #[sqlx(rename = "code_source_type", try_from = "String")]
    pub code_source: CodeSource,
    /// ConfigMap `name/key` or URL of the code, when it is not in the spec.
    pub code_location: Option<String>,
    /// Lower-case hex SHA-256 of the code bytes.
    pub code_checksum: String,
    /// Size of the code in bytes.
    pub code_size: i64,
    /// Default deadline of one invocation.
    pub timeout_seconds: i32,
    /// Memory limit in MiB.
    pub memory_mb: i32,
    /// CPU limit in millicores.
    pub cpu_millis: i32,
    /// Most invocations running at once.
    pub max_concurrency: i32,
    /// Environment variables given to the function.
    #[sqlx(json)]
    pub environment: BTreeMap<String, String>,
    /// Free-form metadata from the REST API (a JSON object).
    pub metadata: Value,
}

/// A stored function.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct FunctionRow {
    /// The recorded fields.
    #[sqlx(flatten)]
    pub record: FunctionRecord,
    /// When the row was inserted.
    pub created_at: DateTime<Utc>,
    /// When a field last changed.
    pub updated_at: DateTime<Utc>,
    /// When the function was deleted; `None` while it is live.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// What [`Store::upsert_function`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsert {
    /// No live function had the name: a row was inserted.
    Created,
    /// The live row changed.
    Updated,
    /// The live row already held these values; nothing was written.
    Unchanged,
}

/// Filters for [`Store::list_functions`]. Only live functions are listed, oldest first.
#[derive(Clone, Debug, Default)]
pub struct FunctionQuery {
    /// Only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Only this runtime name (exact match).
    pub runtime: Option<String>,
    /// Page size, clamped to `1..=MAX_PAGE_SIZE`; 100 when `None`.
    pub limit: Option<i64>,
    /// Rows to skip.
    pub offset: Option<i64>,
}

fn page(limit: Option<i64>, offset: Option<i64>) -> (i64, i64) {
    (limit.unwrap_or(100).clamp(1, MAX_PAGE_SIZE), offset.unwrap_or(0).max(0))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}

impl Store {
    /// Inserts the live function `(namespace, name)` or brings it up to date with `record`.
    ///
    /// Idempotent: writing the same record again changes nothing (not even `updated_at`). The id
    /// of `record` is used only for an insert; it conflicts if a deleted function holds it.
    pub async fn upsert_function(&self, record: &FunctionRecord) -> Result<(FunctionRow, Upsert)> {
        const OP: &str = "upsert function";
        #[derive(sqlx::FromRow)]
        struct Written {
            #[sqlx(flatten)]
            row: FunctionRow,
            inserted: bool,
        }
        let written: Option<Written> = sqlx::query_as(
            "INSERT INTO functions (id, namespace, name, version, runtime, handler, \
                 code_source_type, code_location, code_checksum, code_size, timeout_seconds, \
                 memory_mb, cpu_millis, max_concurrency, environment, metadata) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (namespace, name) WHERE deleted_at IS NULL DO UPDATE SET \
                 version = EXCLUDED.version, runtime = EXCLUDED.runtime, \
                 handler = EXCLUDED.handler, code_source_type = EXCLUDED.code_source_type, \
                 code_location = EXCLUDED.code_location, code_checksum = EXCLUDED.code_checksum, \
                 code_size = EXCLUDED.code_size, timeout_seconds = EXCLUDED.timeout_seconds, \
                 memory_mb = EXCLUDED.memory_mb, cpu_millis = EXCLUDED.cpu_millis, \
                 max_concurrency = EXCLUDED.max_concurrency, environment = EXCLUDED.environment, \
                 metadata = EXCLUDED.metadata, updated_at = now() \
             WHERE (functions.version, functions.runtime, functions.handler, \
                    functions.code_source_type, functions.code_location, functions.code_checksum, \
                    functions.code_size, functions.timeout_seconds, functions.memory_mb, \
                    functions.cpu_millis, functions.max_concurrency, functions.environment, \
                    functions.metadata) \
                IS DISTINCT FROM \
                   (EXCLUDED.version, EXCLUDED.runtime, EXCLUDED.handler, \
                    EXCLUDED.code_source_type, EXCLUDED.code_location, EXCLUDED.code_checksum, \
                    EXCLUDED.code_size, EXCLUDED.timeout_seconds, EXCLUDED.memory_mb, \
                    EXCLUDED.cpu_millis, EXCLUDED.max_concurrency, EXCLUDED.environment, \
                    EXCLUDED.metadata) \
             RETURNING *, (xmax = 0) AS inserted",
        )
        .bind(record.id)
        .bind(&record.namespace)
        .bind(&record.name)
        .bind(&record.version)
        .bind(&record.runtime)
        .bind(&record.handler)
        .bind(record.code_source.as_str())
        .bind(&record.code_location)
        .bind(&record.code_checksum)
        .bind(record.code_size)
        .bind(record.timeout_seconds)
        .bind(record.memory_mb)
        .bind(record.cpu_millis)
        .bind(record.max_concurrency)
        .bind(Json(&record.environment))
        .bind(&record.metadata)
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| {
            if is_unique_violation(&source) {
                StoreError::Conflict {
                    op: OP,
                    message: format!("function id {} is already taken", record.id),
                }
            } else {
                StoreError::Query { op: OP, source }
            }
        })?;
        match written {
            Some(Written { row, inserted: true }) => Ok((row, Upsert::Created)),
            Some(Written { row, .. }) => Ok((row, Upsert::Updated)),
            None => {
                let row = self
                    .function_by_name(&record.namespace, &record.name)
                    .await?
                    .ok_or_else(|| StoreError::Conflict {
                        op: OP,
                        message: format!(
                            "function {}/{} was deleted while being written",
                            record.namespace, record.name
                        ),
                    })?;
                Ok((row, Upsert::Unchanged))
            }
        }
    }

    /// The function with this id, live or deleted.
    pub async fn function(&self, id: Uuid) -> Result<Option<FunctionRow>> {
        sqlx::query_as("SELECT * FROM functions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("get function"))
    }

    /// The live function with this name.
    pub async fn function_by_name(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<FunctionRow>> {
        sqlx::query_as(
            "SELECT * FROM functions WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL",
        )
        .bind(namespace)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("get function by name"))
    }

    /// Live functions matching `query`, oldest first.
    pub async fn list_functions(&self, query: &FunctionQuery) -> Result<Vec<FunctionRow>> {
        let (limit, offset) = page(query.limit, query.offset);
        sqlx::query_as(
            "SELECT * FROM functions \
             WHERE deleted_at IS NULL \
               AND ($1::text IS NULL OR namespace = $1) \
               AND ($2::text IS NULL OR runtime = $2) \
             ORDER BY created_at, id \
             LIMIT $3 OFFSET $4",
        )
        .bind(&query.namespace)
        .bind(&query.runtime)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list functions"))
    }

    /// Marks the function deleted; its row and invocation history stay. Returns whether a live
    /// function was deleted (false when it was already deleted or never existed).
    pub async fn delete_function(&self, id: Uuid) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE functions SET deleted_at = now(), updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("delete function"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks the live function with this name deleted. Returns whether there was one.
    pub async fn delete_function_by_name(&self, namespace: &str, name: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE functions SET deleted_at = now(), updated_at = now() \
             WHERE namespace = $1 AND name = $2 AND deleted_at IS NULL",
        )
        .bind(namespace)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(query_error("delete function by name"))?;
        Ok(done.rows_affected() == 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Invocations
// ---------------------------------------------------------------------------------------------

/// Lifecycle state of an invocation row (`invocations.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Recorded, not yet on the queue.
    Pending,
    /// On the queue (or waiting in the delayed set for a retry).
    Queued,
    /// Claimed by an executor that holds the lease.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Killed at its deadline.
    TimedOut,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 6] =
        [Self::Pending, Self::Queued, Self::Running, Self::Succeeded, Self::Failed, Self::TimedOut];

    /// The value stored in the database and used by the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    /// Whether the invocation has finished.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::TimedOut)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown status name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown invocation status {0:?} (expected one of pending, queued, running, succeeded, failed, timed_out)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl TryFrom<String> for Status {
    type Error = StoreError;

    fn try_from(value: String) -> Result<Self> {
        value.parse().map_err(|UnknownStatus(value)| StoreError::Corrupt {
            what: "invocation status",
            value,
        })
    }
}

impl From<Status> for InvocationPhase {
    fn from(status: Status) -> Self {
        match status {
            Status::Pending => Self::Pending,
            Status::Queued => Self::Queued,
            Status::Running => Self::Running,
            Status::Succeeded => Self::Succeeded,
            Status::Failed => Self::Failed,
            Status::TimedOut => Self::TimedOut,
        }
    }
}

/// How an invocation was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Through an `Invocation` resource (kubectl, or the gateway's asynchronous invoke before
    /// it stopped making one).
    Resource,
    /// The gateway's synchronous path, which creates no resource.
    Sync,
    /// The gateway's asynchronous `POST /invoke`, which creates no resource either.
    Async,
}

impl Source {
    /// The value stored in `invocations.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resource => "resource",
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }
}

impl TryFrom<String> for Source {
    type Error = StoreError;

    fn try_from(value: String) -> Result<Self> {
        match value.as_str() {
            "resource" => Ok(Self::Resource),
            "sync" => Ok(Self::Sync),
            "async" => Ok(Self::Async),
            _ => Err(StoreError::Corrupt { what: "invocation source", value }),
        }
    }
}

/// A new invocation for [`Store::create_invocation`].
#[derive(Clone, Debug, PartialEq)]
pub struct NewInvocation {
    /// Invocation id: the `Invocation` resource's uid, or a fresh id for synchronous calls.
    /// Creating the same id twice is harmless.
    pub id: Uuid,
    /// The function's row id.
    pub function_id: Uuid,
    /// Namespace of the function.
    pub namespace: String,
    /// Name of the function.
    pub function_name: String,
    /// Name of the `Invocation` object, when made through one.
    pub resource_name: Option<String>,
    /// How the invocation was made.
    pub source: Source,
    /// The event given to the handler.
    pub payload: Option<Value>,
    /// Headers passed to the handler in its context.
    pub headers: BTreeMap<String, String>,
    /// Deadline of one attempt.
    pub timeout_seconds: i32,
    /// Attempts before the invocation fails for good (at least 1).
    pub max_attempts: i32,
    /// Delay before the first retry in seconds, doubling for each further one.
    pub backoff_seconds: i32,
    /// Whether the function's own failures are retried too (platform failures always are).
    pub retry_on_function_error: bool,
}

impl NewInvocation {
    /// The row this invocation is, `queued` at `now` and not yet tried, as the store would
    /// insert it; a synchronous call lives in this form until it finished
    /// ([`crate::queue::live`]).
    pub fn queued_row(self, now: DateTime<Utc>) -> InvocationRow {
        InvocationRow {
            id: self.id,
            function_id: self.function_id,
            namespace: self.namespace,
            function_name: self.function_name,
            resource_name: self.resource_name,
            source: self.source,
            payload: self.payload,
            headers: self.headers,
            status: Status::Queued,
            result: None,
            error: None,
            metrics: None,
            logs: None,
            timeout_seconds: self.timeout_seconds,
            attempts: 0,
            max_attempts: self.max_attempts,
            backoff_seconds: self.backoff_seconds.max(0),
            retry_on_function_error: self.retry_on_function_error,
            lease_owner: None,
            lease_expires_at: None,
            queued_at: Some(now),
            created_at: now,
            started_at: None,
            completed_at: None,
            updated_at: now,
        }
    }
}

/// A claimed invocation and how its function runs now.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    invocation: InvocationRow,
    #[sqlx(flatten)]
    function: FunctionState,
}

/// The fields of a function's row that decide how one invocation runs, as they stand when the
/// invocation is claimed.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct FunctionState {
    /// Runtime name from the catalogue.
    pub runtime: String,
    /// Entry point inside the code.
    pub handler: String,
    /// Lower-case hex SHA-256 of the code bytes.
    pub code_checksum: String,
    /// Memory limit in MiB.
    pub memory_mb: i32,
    /// CPU limit in millicores.
    pub cpu_millis: i32,
    /// Environment variables given to the function.
    #[sqlx(json)]
    pub environment: BTreeMap<String, String>,
}

/// A stored invocation. Its JSON form has the table's column names: a synchronous call's row
/// travels in that form through Redis until it is written ([`Store::record_finished`]).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct InvocationRow {
    /// Invocation id.
    pub id: Uuid,
    /// The function's row id.
    pub function_id: Uuid,
    /// Namespace of the function.
    pub namespace: String,
    /// Name of the function.
    pub function_name: String,
    /// Name of the `Invocation` object, when made through one.
    pub resource_name: Option<String>,
    /// How the invocation was made.
    #[sqlx(try_from = "String")]
    pub source: Source,
    /// The event given to the handler.
    pub payload: Option<Value>,
    /// Headers passed to the handler.
    #[sqlx(json)]
    pub headers: BTreeMap<String, String>,
    /// Lifecycle state.
    #[sqlx(try_from = "String")]
    pub status: Status,
    /// What the handler returned, once succeeded.
    pub result: Option<Value>,
    /// The structured error of the last failed attempt.
    #[sqlx(json(nullable))]
    pub error: Option<InvocationError>,
    /// Measurements of the last attempt.
    #[sqlx(json(nullable))]
    pub metrics: Option<InvocationMetrics>,
    /// Tail of the function's stdout/stderr.
    pub logs: Option<String>,
    /// Deadline of one attempt.
    pub timeout_seconds: i32,
    /// Claims so far; the current lease's fencing token.
    pub attempts: i32,
    /// Attempts before the invocation fails for good.
    pub max_attempts: i32,
    /// Delay before the first retry in seconds, doubling for each further one.
    pub backoff_seconds: i32,
    /// Whether the function's own failures are retried too (platform failures always are).
    pub retry_on_function_error: bool,
    /// Executor holding the lease while running.
    pub lease_owner: Option<String>,
    /// When the lease runs out unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// While queued: when it became (or, for a delayed retry, becomes) due.
    pub queued_at: Option<DateTime<Utc>>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the current or last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
}

impl InvocationRow {
    /// Where the invocation came from, as its completion announces it.
    pub fn origin(&self) -> crate::queue::Origin {
        crate::queue::Origin {
            function_id: self.function_id,
            namespace: self.namespace.clone(),
            function: self.function_name.clone(),
            resource_name: self.resource_name.clone(),
            created_at: self.created_at,
        }
    }

    /// The retry policy frozen into the row when it was submitted: the one that applies.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            backoff_seconds: self.backoff_seconds,
            on_function_error: self.retry_on_function_error,
        }
    }
}

/// What [`Store::create_invocation`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    /// The row was inserted by this call.
    New(InvocationRow),
    /// A row with this id already existed (an earlier try of the same request); it is returned
    /// as it is now.
    Existing(InvocationRow),
}

impl Created {
    /// The row, however it came to exist.
    pub fn into_row(self) -> InvocationRow {
        match self {
            Self::New(row) | Self::Existing(row) => row,
        }
    }
}

/// Filters for [`Store::list_invocations`]. Newest first.
#[derive(Clone, Debug, Default)]
pub struct InvocationQuery {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only invocations of this function.
    pub function_id: Option<Uuid>,
    /// Only invocations in this state.
    pub status: Option<Status>,
    /// Page size, clamped to `1..=MAX_PAGE_SIZE`; 100 when `None`.
    pub limit: Option<i64>,
    /// Rows to skip.
    pub offset: Option<i64>,
}

/// The right to run one attempt of an invocation, handed out by [`Store::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The invocation.
    pub invocation_id: Uuid,
    /// The executor holding it.
    pub owner: String,
    /// The attempt number this lease is for (the fencing token).
    pub attempt: i32,
    /// When it runs out unless renewed.
    pub expires_at: DateTime<Utc>,
    /// How the invocation was made; a synchronous one's outcome is committed without waiting
    /// for the WAL flush (see [`Store::complete`]).
    pub source: Source,
}

/// What [`Store::claim`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The caller now runs the invocation under this lease.
    Acquired {
        /// The lease to renew and to commit with.
        lease: Lease,
        /// The row after the claim.
        invocation: Box<InvocationRow>,
        /// How the function's row says it runs now. The operator records a changed Function
        /// here before it reports it ready, so a copy of the Function that says otherwise is
        /// out of date.
        function: FunctionState,
    },
    /// Already finished: a duplicate delivery; acknowledge it and move on.
    Finished(Status),
    /// Another executor holds a live lease; it will finish or its lease will expire.
    HeldElsewhere {
        /// Who holds it.
        owner: String,
        /// Until when.
        expires_at: DateTime<Utc>,
    },
    /// Still `pending`: not yet released to the queue.
    NotQueued,
    /// No such invocation.
    Missing,
}

/// The terminal outcome of one attempt, for [`Store::complete`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// `Succeeded`, `Failed` or `TimedOut` (anything else is refused).
    pub status: Option<Status>,
    /// What the handler returned.
    pub result: Option<Value>,
    /// The structured error, when it did not succeed.
    pub error: Option<InvocationError>,
    /// Measurements of the attempt.
    pub metrics: Option<InvocationMetrics>,
    /// Tail of the function's output.
    pub logs: Option<String>,
}

impl Outcome {
    /// A success with this result.
    pub fn succeeded(result: Option<Value>) -> Self {
        Self { status: Some(Status::Succeeded), result, ..Self::default() }
    }

    /// A failure (`Failed` or `TimedOut`) with this error.
    pub fn failed(status: Status, error: InvocationError) -> Self {
        Self { status: Some(status), error: Some(error), ..Self::default() }
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn error_json(error: &InvocationError) -> Json<&InvocationError> {
    Json(error)
}

/// `ids` in ascending order: the order batch statements take their rows' locks in.
fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort_unstable();
    ids
}

/// A value as JSON text, for a `text[]` column of a batch statement cast to `jsonb` there.
/// Encoding a JSON value, an error or a map of strings cannot fail.
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

impl Store {
    /// Records a new invocation in `pending`. Idempotent on the id: when the row exists already
    /// it is returned unchanged as [`Created::Existing`] — unless it belongs to another function,
    /// which is a conflict.
    pub async fn create_invocation(&self, new: &NewInvocation) -> Result<Created> {
        self.insert_invocation(new, Status::Pending).await
    }

    /// Records a new invocation straight in `queued`, due now: one statement, one commit. The
    /// caller then puts it on the queue; should that fail, or the caller die first, the sweeper
    /// ([`Store::stuck_queued`]) queues it again. Idempotent on the id, as
    /// [`Store::create_invocation`].
    ///
    /// A synchronous invocation's row is history, not a promise (its caller waits for the
    /// answer, and gets an error if the platform fails), so it is committed without waiting for
    /// the WAL flush: only a crash of PostgreSQL itself within its WAL writer's window (600 ms
    /// by default) can forget it. Every other row is committed durably before this returns.
    pub async fn create_queued_invocation(&self, new: &NewInvocation) -> Result<Created> {
        self.insert_invocation(new, Status::Queued).await
    }

    /// Records many new invocations straight in `queued`, due now, in one statement and one
    /// commit; returns the rows it inserted. An id that already had a row is skipped and not
    /// returned (the caller looks it up, as [`Store::create_queued_invocation`] does). Fails as
    /// a whole when one of them names a function that is gone: the caller then records them one
    /// by one, to tell which. A batch of synchronous invocations only is committed as
    /// [`Store::create_queued_invocation`] commits one.
    pub async fn create_queued_invocations(
        &self,
        batch: &[NewInvocation],
    ) -> Result<Vec<InvocationRow>> {
        const OP: &str = "create invocations";
        if let Some(bad) = batch.iter().find(|new| new.max_attempts < 1) {
            return Err(StoreError::InvalidTransition(format!(
                "max_attempts must be at least 1, got {}",
                bad.max_attempts
            )));
        }
        let column = |f: &dyn Fn(&NewInvocation) -> Option<String>| -> Vec<Option<String>> {
            batch.iter().map(f).collect()
        };
        sqlx::query_as(
            "INSERT INTO invocations (id, function_id, namespace, function_name, resource_name, \
                 source, payload, headers, timeout_seconds, max_attempts, backoff_seconds, \
                 retry_on_function_error, status, queued_at) \
             SELECT id, function_id, namespace, function_name, resource_name, source, \
                 payload::jsonb, headers::jsonb, timeout_seconds, max_attempts, backoff_seconds, \
                 retry_on_function_error, 'queued', now() \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::int4[], $10::int4[], $11::int4[], $12::bool[]) \
                 AS t(id, function_id, namespace, function_name, resource_name, source, payload, \
                      headers, timeout_seconds, max_attempts, backoff_seconds, \
                      retry_on_function_error) \
             CROSS JOIN (SELECT set_config('synchronous_commit', \
                 CASE WHEN $13 THEN 'off' ELSE current_setting('synchronous_commit') END, \
                 true)) AS commit_mode \
             ON CONFLICT (id) DO NOTHING \
             RETURNING *",
        )
        .bind(batch.iter().map(|n| n.id).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.function_id).collect::<Vec<_>>())
        .bind(column(&|n| Some(n.namespace.clone())))
        .bind(column(&|n| Some(n.function_name.clone())))
        .bind(column(&|n| n.resource_name.clone()))
        .bind(column(&|n| Some(n.source.as_str().to_owned())))
        .bind(column(&|n| n.payload.as_ref().map(json)))
        .bind(column(&|n| Some(json(&n.headers))))
        .bind(batch.iter().map(|n| n.timeout_seconds).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.max_attempts).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.backoff_seconds.max(0)).collect::<Vec<_>>())
        .bind(batch.iter().map(|n| n.retry_on_function_error).collect::<Vec<_>>())
        .bind(batch.iter().all(|n| n.source == Source::Sync))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| {
            if is_foreign_key_violation(&source) {
                // Which function is gone is not known here; any of the batch's will do for
                // the message, and the caller retries one by one.
                StoreError::UnknownFunction(
                    batch.first().map(|n| n.function_id).unwrap_or_default(),
                )
            } else {
                StoreError::Query { op: OP, source }
            }
        })
    }

    async fn insert_invocation(&self, new: &NewInvocation, status: Status) -> Result<Created> {
        const OP: &str = "create invocation";
        if new.max_attempts < 1 {
            return Err(StoreError::InvalidTransition(format!(
                "max_attempts must be at least 1, got {}",
                new.max_attempts
            )));
        }
        let inserted: Option<InvocationRow> = sqlx::query_as(
            "INSERT INTO invocations (id, function_id, namespace, function_name, resource_name, \
                 source, payload, headers, timeout_seconds, max_attempts, backoff_seconds, \
                 retry_on_function_error, status, queued_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 CASE WHEN $13 = 'queued' THEN now() END \
             FROM (SELECT set_config('synchronous_commit', \
                 CASE WHEN $6 = 'sync' THEN 'off' ELSE current_setting('synchronous_commit') END, \
                 true)) AS commit_mode \
             ON CONFLICT (id) DO NOTHING \
             RETURNING *",
        )
        .bind(new.id)
        .bind(new.function_id)
        .bind(&new.namespace)
        .bind(&new.function_name)
        .bind(&new.resource_name)
        .bind(new.source.as_str())
        .bind(&new.payload)
        .bind(Json(&new.headers))
        .bind(new.timeout_seconds)
        .bind(new.max_attempts)
        .bind(new.backoff_seconds.max(0))
        .bind(new.retry_on_function_error)
        .bind(status.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| {
            if is_foreign_key_violation(&source) {
                StoreError::UnknownFunction(new.function_id)
            } else {
                StoreError::Query { op: OP, source }
            }
        })?;
        if let Some(row) = inserted {
            return Ok(Created::New(row));
        }
        // ON CONFLICT DO NOTHING returns nothing for an existing row; this second statement runs
        // on a fresh snapshot, so it sees a row a concurrent creator committed meanwhile.
        let existing = self.invocation(new.id).await?.ok_or_else(|| StoreError::Conflict {
            op: OP,
            message: format!("invocation {} vanished while being created", new.id),
        })?;
        if existing.function_id != new.function_id {
            return Err(StoreError::Conflict {
                op: OP,
                message: format!(
                    "invocation {} already exists for function {}",
                    new.id, existing.function_id
                ),
            });
        }
        Ok(Created::Existing(existing))
    }

    /// Writes the rows of finished synchronous invocations, which had none until now (their
    /// history is written behind: see `docs/ARCHITECTURE.md`), in one statement and one commit
    /// that does not wait for the WAL flush. Returns how many were written: a row whose id
    /// exists already (a second run of the same call) is skipped, and so is one whose function
    /// was deleted meanwhile, whose history went with it.
    pub async fn record_finished(&self, rows: &[InvocationRow]) -> Result<u64> {
        if let Some(row) = rows.iter().find(|row| !row.status.is_terminal()) {
            return Err(StoreError::InvalidTransition(format!(
                "only finished invocations are recorded behind, {} is {}",
                row.id, row.status
            )));
        }
        let written = sqlx::query(
            "INSERT INTO invocations \
             SELECT r.* FROM jsonb_populate_recordset(NULL::invocations, $1) AS r \
                 CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed \
             WHERE EXISTS (SELECT 1 FROM functions f WHERE f.id = r.function_id) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(Json(rows))
        .execute(&self.pool)
        .await
        .map_err(query_error("record finished invocations"))?;
        Ok(written.rows_affected())
    }

    /// One invocation.
    pub async fn invocation(&self, id: Uuid) -> Result<Option<InvocationRow>> {
        sqlx::query_as("SELECT * FROM invocations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("get invocation"))
    }

    /// The invocations of `ids` that exist, in no particular order.
    pub async fn invocations(&self, ids: &[Uuid]) -> Result<Vec<InvocationRow>> {
        sqlx::query_as("SELECT * FROM invocations WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("get invocations"))
    }

    /// Invocations matching `query`, newest first.
    pub async fn list_invocations(&self, query: &InvocationQuery) -> Result<Vec<InvocationRow>> {
        let (limit, offset) = page(query.limit, query.offset);
        sqlx::query_as(
            "SELECT * FROM invocations \
             WHERE ($1::text IS NULL OR namespace = $1) \
               AND ($2::uuid IS NULL OR function_id = $2) \
               AND ($3::text IS NULL OR status = $3) \
             ORDER BY created_at DESC, id DESC \
             LIMIT $4 OFFSET $5",
        )
        .bind(&query.namespace)
        .bind(query.function_id)
        .bind(query.status.map(Status::as_str))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("list invocations"))
    }

    /// When each of `function_ids` was last invoked: the `created_at` of its newest invocation,
    /// however it was made. Functions without invocations are left out. One probe of the
    /// `(function_id, created_at)` index per function, so it stays cheap for busy functions.
    pub async fn last_invoked(&self, function_ids: &[Uuid]) -> Result<Vec<(Uuid, DateTime<Utc>)>> {
        sqlx::query_as(
            "SELECT f.id, latest.created_at \
             FROM unnest($1::uuid[]) AS f(id) \
             CROSS JOIN LATERAL ( \
                 SELECT created_at FROM invocations \
                 WHERE function_id = f.id \
                 ORDER BY created_at DESC \
                 LIMIT 1) AS latest",
        )
        .bind(function_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("find when functions were last invoked"))
    }

    /// `pending → queued`, called just before the invocation is put on the queue. Returns whether
    /// this call made the move (false when it was already queued or beyond).
    pub async fn mark_queued(&self, id: Uuid) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE invocations SET status = 'queued', queued_at = now(), updated_at = now() \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(query_error("mark invocation queued"))?;
        Ok(done.rows_affected() == 1)
    }

    /// `queued → running` for `owner`, or takes over a `running` row whose lease has expired.
    /// Either way the attempt counter goes up by one and becomes the new lease's fencing token.
    /// [`Store::claim_many`] for one invocation.
    pub async fn claim(&self, id: Uuid, owner: &str, lease_for: Duration) -> Result<Claim> {
        let mut claims = self.claim_many(&[id], owner, lease_for).await?;
        claims.pop().ok_or_else(|| StoreError::Corrupt {
            what: "claim",
            value: "no answer for the one invocation asked for".to_owned(),
        })
    }

    /// [`Store::claim`] for each of `ids` in one statement and one commit; the answers are in
    /// the order of `ids`. An id given twice is claimed once: its second answer is
    /// [`Claim::HeldElsewhere`] by `owner` itself.
    ///
    /// The claims are committed without waiting for the WAL flush (`synchronous_commit = off`
    /// for this transaction): should PostgreSQL itself crash within its WAL writer's window
    /// (three times `wal_writer_delay`, 600 ms by default), a claim is forgotten and its row is
    /// back in `queued`. That costs at most a second run, never a lost invocation: the outcome
    /// is accepted only from the lease holder, the forgotten lease is nobody's, and the sweeper
    /// queues the row again.
    ///
    /// Of several executors claiming one row at once exactly one gets [`Claim::Acquired`]: the
    /// update locks the row, and the others re-check the condition against the winner's write.
    /// The ids go to the server sorted, so that overlapping batches lock their rows in the same
    /// order rather than deadlock.
    pub async fn claim_many(
        &self,
        ids: &[Uuid],
        owner: &str,
        lease_for: Duration,
    ) -> Result<Vec<Claim>> {
        let claimed: Vec<ClaimedRow> = sqlx::query_as(
            "WITH claimed AS ( \
                 UPDATE invocations SET status = 'running', lease_owner = $2, \
                     lease_expires_at = now() + make_interval(secs => $3), \
                     attempts = attempts + 1, started_at = now(), queued_at = NULL, \
                     updated_at = now() \
                 WHERE id = ANY($1) \
                   AND (status = 'queued' OR (status = 'running' AND lease_expires_at < now())) \
                 RETURNING *) \
             SELECT claimed.*, f.runtime, f.handler, f.code_checksum, f.memory_mb, \
                 f.cpu_millis, f.environment \
             FROM claimed JOIN functions f ON f.id = claimed.function_id \
                 CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed",
        )
        .bind(sorted(ids.to_vec()))
        .bind(owner)
        .bind(seconds(lease_for))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("claim invocations"))?;
        let mut acquired = HashMap::with_capacity(claimed.len());
        for ClaimedRow { invocation, function } in claimed {
            let expires_at = invocation.lease_expires_at.ok_or_else(|| StoreError::Corrupt {
                what: "lease expiry",
                value: "NULL on a running invocation".to_owned(),
            })?;
            let lease = Lease {
                invocation_id: invocation.id,
                owner: owner.to_owned(),
                attempt: invocation.attempts,
                expires_at,
                source: invocation.source,
            };
            acquired.insert(
                invocation.id,
                Claim::Acquired { lease, invocation: Box::new(invocation), function },
            );
        }
        let others: Vec<Uuid> =
            ids.iter().filter(|id| !acquired.contains_key(id)).copied().collect();
        let found: HashMap<Uuid, InvocationRow> = if others.is_empty() {
            HashMap::new()
        } else {
            self.invocations(&others).await?.into_iter().map(|row| (row.id, row)).collect()
        };
        // Ids answered `Acquired` already, with their lease's expiry: a second answer is "held
        // by us".
        let mut answered = HashMap::new();
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(claim) = acquired.remove(id) {
                if let Claim::Acquired { lease, .. } = &claim {
                    answered.insert(*id, lease.expires_at);
                }
                claims.push(claim);
                continue;
            }
            if let Some(expires_at) = answered.get(id) {
                claims.push(Claim::HeldElsewhere {
                    owner: owner.to_owned(),
                    expires_at: *expires_at,
                });
                continue;
            }
            let Some(row) = found.get(id) else {
                claims.push(Claim::Missing);
                continue;
            };
            claims.push(match (row.status, &row.lease_owner, row.lease_expires_at) {
                (status, _, _) if status.is_terminal() => Claim::Finished(status),
                (Status::Running, Some(owner), Some(expires_at)) => {
                    Claim::HeldElsewhere { owner: owner.clone(), expires_at }
                }
                // Queued again, or its lease expired, between our update and our read: the
                // next delivery will claim it.
                (Status::Queued | Status::Running, _, _) => {
                    Claim::HeldElsewhere { owner: String::new(), expires_at: row.updated_at }
                }
                (Status::Pending, _, _) => Claim::NotQueued,
                (status, _, _) => {
                    return Err(StoreError::InvalidTransition(format!(
                        "claim found invocation {id} in state {status}"
                    )));
                }
            });
        }
        Ok(claims)
    }

    /// Extends the lease by `lease_for` from now. Returns the new expiry, or `None` when the
    /// caller no longer holds the lease (it must stop working on the invocation).
    pub async fn renew_lease(
        &self,
        lease: &Lease,
        lease_for: Duration,
    ) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(
            "UPDATE invocations SET lease_expires_at = now() + make_interval(secs => $4), \
                 updated_at = now() \
             WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND attempts = $3 \
             RETURNING lease_expires_at",
        )
        .bind(lease.invocation_id)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .bind(seconds(lease_for))
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("renew lease"))
    }

    /// Commits the terminal outcome of the leased attempt. Returns the finished row, or `None`
    /// when the caller no longer holds the lease (another executor took it over, or it already
    /// finished): the caller's outcome is then discarded. [`Store::complete_many`] for one.
    pub async fn complete(
        &self,
        lease: &Lease,
        outcome: &Outcome,
    ) -> Result<Option<InvocationRow>> {
        let mut rows = self.complete_many(&[(lease, outcome)]).await?;
        Ok(rows.pop().flatten())
    }

    /// [`Store::complete`] for each of `outcomes` in one statement and one commit; the answers
    /// are in the order of `outcomes`. A batch of synchronous invocations only is committed
    /// without waiting for the WAL flush, as their rows were
    /// ([`Store::create_queued_invocation`]); any other batch durably. The outcomes go to the
    /// server sorted by id, as [`Store::claim_many`]'s ids do. The statement finds the rows by
    /// primary key, from the ids as an array; it does not name their status, which a lease
    /// owner implies (the table's check), so that the planner cannot take the index of running
    /// rows instead and read through every row that ran since the last vacuum.
    pub async fn complete_many(
        &self,
        outcomes: &[(&Lease, &Outcome)],
    ) -> Result<Vec<Option<InvocationRow>>> {
        let answer_order: Vec<Uuid> =
            outcomes.iter().map(|(lease, _)| lease.invocation_id).collect();
        let mut outcomes = outcomes.to_vec();
        outcomes.sort_by_key(|(lease, _)| lease.invocation_id);
        let mut statuses = Vec::with_capacity(outcomes.len());
        for (_, outcome) in &outcomes {
            match outcome.status {
                Some(status) if status.is_terminal() => statuses.push(status.as_str()),
                other => {
                    return Err(StoreError::InvalidTransition(format!(
                        "complete needs a terminal status, got {other:?}"
                    )));
                }
            }
        }
        let column = |f: &dyn Fn(&Outcome) -> Option<String>| -> Vec<Option<String>> {
            outcomes.iter().map(|(_, outcome)| f(outcome)).collect()
        };
        let finished: Vec<InvocationRow> = sqlx::query_as(
            "UPDATE invocations SET status = o.status, result = o.result::jsonb, \
                 error = o.error::jsonb, metrics = o.metrics::jsonb, logs = o.logs, \
                 completed_at = now(), lease_owner = NULL, lease_expires_at = NULL, \
                 updated_at = now() \
             FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], \
                     $6::text[], $7::text[], $8::text[]) \
                     AS o(id, owner, attempt, status, result, error, metrics, logs) \
                 CROSS JOIN (SELECT set_config('synchronous_commit', \
                     CASE WHEN $9 THEN 'off' ELSE current_setting('synchronous_commit') END, \
                     true)) AS commit_mode \
             WHERE invocations.id = ANY($1) AND invocations.id = o.id \
               AND invocations.lease_owner = o.owner AND invocations.attempts = o.attempt \
             RETURNING invocations.*",
        )
        .bind(outcomes.iter().map(|(lease, _)| lease.invocation_id).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|(lease, _)| lease.owner.clone()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|(lease, _)| lease.attempt).collect::<Vec<_>>())
        .bind(statuses)
        .bind(column(&|o| o.result.as_ref().map(json)))
        .bind(column(&|o| o.error.as_ref().map(json)))
        .bind(column(&|o| o.metrics.as_ref().map(json)))
        .bind(column(&|o| o.logs.clone()))
        .bind(outcomes.iter().all(|(lease, _)| lease.source == Source::Sync))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("complete invocations"))?;
        let mut finished: HashMap<Uuid, InvocationRow> =
            finished.into_iter().map(|row| (row.id, row)).collect();
        Ok(answer_order.iter().map(|id| finished.remove(id)).collect())
    }

    /// `running → queued` for another attempt after `delay`: records the attempt's error and
    /// releases the lease. Returns false when the caller no longer holds the lease.
    pub async fn retry_later(
        &self,
        lease: &Lease,
        error: &InvocationError,
        delay: Duration,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE invocations SET status = 'queued', error = $4, \
                 queued_at = now() + make_interval(secs => $5), lease_owner = NULL, \
                 lease_expires_at = NULL, updated_at = now() \
             WHERE id = $1 AND status = 'running' AND lease_owner = $2 AND attempts = $3",
        )
        .bind(lease.invocation_id)
        .bind(&lease.owner)
        .bind(lease.attempt)
        .bind(error_json(error))
        .bind(seconds(delay))
        .execute(&self.pool)
        .await
        .map_err(query_error("requeue invocation"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Fails an invocation nobody is running: `pending`/`queued`, or `running` under an expired
    /// lease. Used when its function is gone or its message was dead-lettered. Returns the failed
    /// row, or `None` when it finished or is running under a live lease.
    pub async fn fail_unclaimed(
        &self,
        id: Uuid,
        error: &InvocationError,
    ) -> Result<Option<InvocationRow>> {
        sqlx::query_as(
            "UPDATE invocations SET status = 'failed', error = $2, completed_at = now(), \
                 lease_owner = NULL, lease_expires_at = NULL, queued_at = NULL, updated_at = now() \
             WHERE id = $1 \
               AND (status IN ('pending', 'queued') \
                    OR (status = 'running' AND lease_expires_at < now())) \
             RETURNING *",
        )
        .bind(id)
        .bind(error_json(error))
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("fail invocation"))
    }

    /// The sweeper's query: up to `limit` invocations that have been due in `queued` for longer
    /// than `older_than` without being claimed (their message was lost, say with a Redis that lost
    /// data), or left in `pending` that long (recorded by a producer that died before queueing
    /// it). They become `queued` with their due time reset to now, so concurrent sweepers (which
    /// skip rows locked by each other) and the next sweep do not pick them again at once;
    /// re-enqueue each one.
    pub async fn stuck_queued(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<InvocationRow>> {
        sqlx::query_as(
            "UPDATE invocations SET status = 'queued', queued_at = now(), updated_at = now() \
             WHERE status IN ('pending', 'queued') AND id IN ( \
                 SELECT id FROM invocations \
                 WHERE (status = 'queued' AND queued_at < now() - make_interval(secs => $1)) \
                    OR (status = 'pending' AND created_at < now() - make_interval(secs => $1)) \
                 ORDER BY COALESCE(queued_at, created_at) \
                 LIMIT $2 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(seconds(older_than))
        .bind(limit.clamp(1, MAX_PAGE_SIZE))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("find stuck queued invocations"))
    }

    /// How many invocations of the function `function_id` have not finished (`pending`,
    /// `queued` or `running`): its backlog.
    pub async fn backlog(&self, function_id: Uuid) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT count(*) FROM invocations \
             WHERE function_id = $1 AND status IN ('pending', 'queued', 'running')",
        )
        .bind(function_id)
        .fetch_one(&self.pool)
        .await
        .map_err(query_error("count unfinished invocations"))
    }

    /// Up to `limit` running invocations whose lease expired more than `grace` ago: their
    /// executor died. Re-enqueue them; [`Store::claim`] takes the lease over.
    pub async fn expired_leases(&self, grace: Duration, limit: i64) -> Result<Vec<InvocationRow>> {
        sqlx::query_as(
            "SELECT * FROM invocations \
             WHERE status = 'running' AND lease_expires_at < now() - make_interval(secs => $1) \
             ORDER BY lease_expires_at \
             LIMIT $2",
        )
        .bind(seconds(grace))
        .bind(limit.clamp(1, MAX_PAGE_SIZE))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("find expired leases"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip_and_unknown_names_are_refused() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
        }
        assert_eq!("done".parse::<Status>(), Err(UnknownStatus("done".to_owned())));
        assert!(Status::try_from("Running".to_owned()).is_err());
    }

    #[test]
    fn only_finished_statuses_are_terminal_and_they_map_to_terminal_phases() {
        for status in Status::ALL {
            assert_eq!(status.is_terminal(), InvocationPhase::from(status).is_terminal());
        }
        assert!(!Status::Running.is_terminal());
        assert!(Status::TimedOut.is_terminal());
    }

    #[test]
    fn pages_are_clamped() {
        assert_eq!(page(None, None), (100, 0));
        assert_eq!(page(Some(0), Some(-5)), (1, 0));
        assert_eq!(page(Some(1_000_000), Some(7)), (MAX_PAGE_SIZE, 7));
    }
}
