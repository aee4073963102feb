//! The one way an invocation enters the data plane.
//!
//! Every producer — the gateway's synchronous and asynchronous invokes, and the operator for
//! `Invocation` objects — hands [`submit`] the function as the cluster holds it and what the
//! caller asked for. [`submit`] decides whether the function can be invoked
//! ([`Function::invocable`], the one readiness rule), checks the request, freezes what the run
//! needs into the row (payload, headers, the timeout, the function's whole retry policy),
//! commits the row as `queued` in one statement and puts the job on the queue.
//!
//! Once [`submit`] returns `Ok` the invocation runs to a final state whatever happens next: the
//! row is durable, and a job that did not reach Redis (or that Redis lost) is queued again by
//! the executors' sweeper once it has been due for `--stuck-after-seconds`. Submitting the same
//! id twice is harmless: the second call finds the row and queues nothing.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde_json::Value;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use uuid::Uuid;

use crate::{
    queue::{Job, Queue, QueueError, live::Carried},
    resources::{Function, InvocationSpec},
    store::{Created, InvocationRow, NewInvocation, Source, Status, Store, StoreError},
    validation::{self, Limits, ValidationErrors},
};

/// What a producer asks to run.
#[derive(Clone, Debug)]
pub struct Submission {
    /// The invocation's id: an `Invocation` object's uid, or a fresh id.
    pub id: Uuid,
    /// How it was made.
    pub source: Source,
    /// The `Invocation` object's name, when made through one.
    pub resource_name: Option<String>,
    /// The event given to the handler.
    pub payload: Option<Value>,
    /// Headers passed to the handler in its context.
    pub headers: BTreeMap<String, String>,
    /// The caller's time limit for one attempt; the function's `timeoutSeconds` when `None`.
    pub timeout_seconds: Option<i32>,
}

impl Submission {
    /// A submission of `payload` with a fresh id and nothing else set.
    pub fn new(source: Source, payload: Option<Value>) -> Self {
        Self {
            id: Uuid::new_v4(),
            source,
            resource_name: None,
            payload,
            headers: BTreeMap::new(),
            timeout_seconds: None,
        }
    }
}

/// Why a submission was not accepted. Nothing was recorded unless it is [`Self::Store`] after
/// the insert, which the caller cannot tell apart: it may submit the same id again.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The function cannot be invoked now (the operator has not recorded it, or rejected its
    /// spec); the message says why.
    #[error("function {name:?} is not ready: {why}")]
    NotReady { name: String, why: String },
    /// The request breaks a rule; the errors name the fields.
    #[error(transparent)]
    Invalid(ValidationErrors),
    /// The function's row is gone: it was deleted meanwhile.
    #[error("function {0:?} was deleted")]
    Deleted(String),
    /// PostgreSQL did not take the row.
    #[error(transparent)]
    Store(StoreError),
    /// PostgreSQL did not take the batch this submission was part of; nothing of it was
    /// recorded.
    #[error(transparent)]
    Batch(Arc<StoreError>),
    /// Redis did not take a synchronous call's job; nothing was recorded.
    #[error(transparent)]
    Queue(QueueError),
    /// The [`Submitter`]'s writer is gone (the process is shutting down); nothing was recorded
    /// unless a batch was being written, and submitting the same id again is harmless.
    #[error("the submission writer has stopped")]
    Stopped,
}

/// An accepted invocation.
#[derive(Debug)]
pub struct Submitted {
    /// The row as it was recorded (or as an earlier submission of the same id left it).
    pub row: InvocationRow,
    /// Whether this call recorded the row (false: an earlier submission of the same id did).
    pub new: bool,
    /// Why the job did not reach the queue, if it did not. The invocation is accepted all the
    /// same: the sweeper queues it again.
    pub enqueue_error: Option<QueueError>,
}

/// Releases a row that an earlier version of a producer left `pending` (recorded, never
/// queued): `pending → queued`, then onto the queue. Only the caller that makes the move
/// enqueues; a row already queued or beyond is left alone (whoever queued it enqueued it, and the
/// sweeper covers a job that got lost). `Ok(Err(_))`: moved but not enqueued, which the sweeper
/// mends.
pub async fn release(
    store: &Store,
    queue: &Queue,
    row: &InvocationRow,
) -> Result<Result<(), QueueError>, StoreError> {
    if row.status != Status::Pending || !store.mark_queued(row.id).await? {
        return Ok(Ok(()));
    }
    Ok(enqueue(queue, row).await)
}

async fn enqueue(queue: &Queue, row: &InvocationRow) -> Result<(), QueueError> {
    let job = Job::new(row.id, row.function_id, &row.namespace, &row.function_name);
    queue.enqueue(&job).await.map(drop).inspect_err(|error| {
        tracing::warn!(invocation = %row.id, %error,
            "the invocation is recorded but not queued; the sweeper will queue it");
    })
}

/// The spec [`validation`] checks, built from a submission.
fn spec_of(function: &str, submission: &Submission) -> InvocationSpec {
    let mut spec = InvocationSpec::new(function, Value::Null);
    spec.payload = submission.payload.clone();
    spec.headers = submission.headers.clone();
    spec.timeout_seconds = submission.timeout_seconds;
    spec
}

/// The row a submission becomes, or why it cannot be made. Pure: reads only its arguments.
pub fn prepare(
    function: &Function,
    submission: &Submission,
    limits: &Limits,
) -> Result<NewInvocation, SubmitError> {
    let name = function.metadata.name.clone().unwrap_or_default();
    let function_id =
        function.invocable().map_err(|why| SubmitError::NotReady { name: name.clone(), why })?;
    let spec = spec_of(&name, submission);
    let object_name = submission.resource_name.as_deref().unwrap_or("invocation");
    validation::validate_invocation(object_name, &spec, limits).map_err(SubmitError::Invalid)?;
    validation::validate_invocation_for_function(&spec, &function.spec)
        .map_err(SubmitError::Invalid)?;
    Ok(NewInvocation {
        id: submission.id,
        function_id,
        namespace: function.metadata.namespace.clone().unwrap_or_default(),
        function_name: name,
        resource_name: submission.resource_name.clone(),
        source: submission.source,
        payload: spec.payload,
        headers: spec.headers,
        timeout_seconds: spec.timeout_seconds.unwrap_or(function.spec.timeout_seconds).max(1),
        max_attempts: function.spec.retry.max_attempts.max(1),
        backoff_seconds: function.spec.retry.backoff_seconds.max(0),
        retry_on_function_error: function.spec.retry.on_function_error,
    })
}

/// Records `submission` of `function` and puts it on the queue. See the module docs for what
/// `Ok` promises.
pub async fn submit(
    store: &Store,
    queue: &Queue,
    limits: &Limits,
    function: &Function,
    submission: Submission,
) -> Result<Submitted, SubmitError> {
    let new = prepare(function, &submission, limits)?;
    record_one(store, queue, &new).await
}

/// Hands a synchronous call to the queue, carried whole by its job: no row is written until it
/// finished ([`crate::queue::live`]), so no PostgreSQL commit is on its way. Returns the row as
/// submitted. `Ok` promises less than [`submit`]'s: the call runs unless Redis loses it, and its
/// caller, who waits for the answer, is told when it does not come.
pub async fn submit_carried(
    queue: &Queue,
    limits: &Limits,
    function: &Function,
    submission: Submission,
) -> Result<InvocationRow, SubmitError> {
    let new = prepare(function, &submission, limits)?;
    let row = new.queued_row(chrono::Utc::now());
    let mut job = Job::new(row.id, row.function_id, &row.namespace, &row.function_name);
    job.carried = Some(Arc::new(Carried {
        row: row.clone(),
        generation: function.metadata.generation.unwrap_or_default(),
    }));
    queue.submit_carried(&job).await.map_err(SubmitError::Queue)?;
    Ok(row)
}

/// Records one prepared invocation and puts it on the queue.
async fn record_one(
    store: &Store,
    queue: &Queue,
    new: &NewInvocation,
) -> Result<Submitted, SubmitError> {
    let (row, fresh) = match store.create_queued_invocation(new).await {
        Ok(Created::New(row)) => (row, true),
        Ok(Created::Existing(row)) => (row, false),
        Err(StoreError::UnknownFunction(_)) => {
            return Err(SubmitError::Deleted(new.function_name.clone()));
        }
        Err(error) => return Err(SubmitError::Store(error)),
    };
    let enqueue_error = if fresh {
        enqueue(queue, &row).await.err()
    } else {
        release(store, queue, &row).await.map_err(SubmitError::Store)?.err()
    };
    Ok(Submitted { row, new: fresh, enqueue_error })
}

/// How many submissions one batch writes at most.
const MAX_BATCH: usize = 256;
/// How many batches are written at once.
const WRITERS: usize = 4;

/// [`submit`] with the writes of concurrent submissions batched: one `INSERT` (one commit) for
/// all the rows, one pipeline of `XADD`s for all the jobs. A submission is not delayed to wait
/// for others: each batch takes what queued up while the previous ones were being written, so
/// under light load every batch holds one submission and under heavy load the commits are
/// shared. What `Ok` promises is [`submit`]'s.
#[derive(Clone, Debug)]
pub struct Submitter {
    waiting: mpsc::Sender<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    new: NewInvocation,
    reply: oneshot::Sender<Result<Submitted, SubmitError>>,
}

impl Submitter {
    /// Starts the writer task on the current tokio runtime; it ends when the last clone of the
    /// `Submitter` is dropped.
    pub fn start(store: Store, queue: Queue) -> (Self, JoinHandle<()>) {
        let (waiting, arrivals) = mpsc::channel(MAX_BATCH * WRITERS);
        let writer = crate::batch::write_batches(arrivals, MAX_BATCH, WRITERS, move |batch| {
            let (store, queue) = (store.clone(), queue.clone());
            async move { write_batch(&store, &queue, batch).await }
        });
        (Self { waiting }, tokio::spawn(writer))
    }

    /// Records `submission` of `function` and puts it on the queue, as [`submit`] does.
    pub async fn submit(
        &self,
        limits: &Limits,
        function: &Function,
        submission: Submission,
    ) -> Result<Submitted, SubmitError> {
        let new = prepare(function, &submission, limits)?;
        let (reply, answer) = oneshot::channel();
        self.waiting.send(Waiting { new, reply }).await.map_err(|_| SubmitError::Stopped)?;
        answer.await.map_err(|_| SubmitError::Stopped)?
    }
}

/// Writes one batch and answers each submission of it.
async fn write_batch(store: &Store, queue: &Queue, batch: Vec<Waiting>) {
    let news: Vec<NewInvocation> = batch.iter().map(|w| w.new.clone()).collect();
    let inserted = match store.create_queued_invocations(&news).await {
        Ok(rows) => rows,
        // One of them names a function deleted meanwhile: one by one, to tell which.
        Err(StoreError::UnknownFunction(_)) => {
            for waiting in batch {
                let answer = record_one(store, queue, &waiting.new).await;
                let _ = waiting.reply.send(answer);
            }
            return;
        }
        Err(error) => {
            let error = Arc::new(error);
            for waiting in batch {
                let _ = waiting.reply.send(Err(SubmitError::Batch(Arc::clone(&error))));
            }
            return;
        }
    };
    let jobs: Vec<Job> = inserted
        .iter()
        .map(|row| Job::new(row.id, row.function_id, &row.namespace, &row.function_name))
        .collect();
    let queued = queue.enqueue_all(&jobs).await.is_ok();
    let mut inserted: HashMap<Uuid, InvocationRow> =
        inserted.into_iter().map(|row| (row.id, row)).collect();
    for waiting in batch {
        let answer = match inserted.remove(&waiting.new.id) {
            Some(row) if queued => Ok(Submitted { row, new: true, enqueue_error: None }),
            // The pipeline failed: this job's own try says whether it reached the queue.
            Some(row) => {
                let enqueue_error = enqueue(queue, &row).await.err();
                Ok(Submitted { row, new: true, enqueue_error })
            }
            // The id had a row already: as [`submit`] does for a second submission.
            None => record_one(store, queue, &waiting.new).await,
        };
        let _ = waiting.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{FunctionCode, FunctionPhase, FunctionSpec, FunctionStatus};

    fn ready(timeout: i32, attempts: i32) -> (Function, Uuid) {
        let mut spec = FunctionSpec::new("python", "main.handler", FunctionCode::inline("x"));
        spec.timeout_seconds = timeout;
        spec.retry.max_attempts = attempts;
        let mut function = Function::new("hello", spec);
        function.metadata.namespace = Some("team".into());
        function.metadata.generation = Some(3);
        let id = Uuid::new_v4();
        function.status = Some(FunctionStatus {
            phase: Some(FunctionPhase::Ready),
            observed_generation: Some(3),
            function_id: Some(id.to_string()),
            ..FunctionStatus::default()
        });
        (function, id)
    }

    #[test]
    fn the_row_freezes_the_functions_timeout_and_retry_bound_unless_the_caller_sets_less() {
        let (function, id) = ready(20, 4);
        let mut submission = Submission::new(Source::Async, Some(serde_json::json!({"a": 1})));
        submission.headers.insert("x-trace".into(), "t".into());
        let row = prepare(&function, &submission, &Limits::default()).unwrap();
        assert_eq!((row.function_id, row.namespace.as_str()), (id, "team"));
        assert_eq!((row.timeout_seconds, row.max_attempts), (20, 4));
        assert_eq!((row.backoff_seconds, row.retry_on_function_error), (1, false));
        assert_eq!(row.headers["x-trace"], "t");
        assert_eq!(row.source, Source::Async);
        submission.timeout_seconds = Some(5);
        assert_eq!(prepare(&function, &submission, &Limits::default()).unwrap().timeout_seconds, 5);
    }

    #[test]
    fn a_timeout_above_the_functions_or_an_oversized_payload_is_refused_by_field() {
        let (function, _) = ready(20, 1);
        let mut submission = Submission::new(Source::Sync, None);
        submission.timeout_seconds = Some(21);
        let error = prepare(&function, &submission, &Limits::default()).unwrap_err();
        assert!(error.to_string().contains("spec.timeoutSeconds"), "{error}");
        let limits = Limits { max_payload_bytes: 4, ..Limits::default() };
        let big = Submission::new(Source::Sync, Some(serde_json::json!("too large")));
        let error = prepare(&function, &big, &limits).unwrap_err();
        assert!(error.to_string().contains("spec.payload"), "{error}");
    }

    #[test]
    fn a_function_the_operator_has_not_recorded_or_rejected_is_not_ready() {
        let (mut function, _) = ready(20, 1);
        let submission = Submission::new(Source::Sync, None);
        function.status.as_mut().unwrap().phase = Some(FunctionPhase::Failed);
        function.status.as_mut().unwrap().message = Some("bad handler".into());
        let error = prepare(&function, &submission, &Limits::default()).unwrap_err();
        assert!(matches!(&error, SubmitError::NotReady { why, .. } if why == "bad handler"));
        function.status = None;
        assert!(matches!(
            prepare(&function, &submission, &Limits::default()),
            Err(SubmitError::NotReady { .. })
        ));
    }
}
