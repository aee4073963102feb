//! The queue consumer end to end against real PostgreSQL (`DATABASE_URL`), Redis (`REDIS_URL`)
//! and python: an invocation recorded and enqueued the way the operator does it is claimed, run,
//! committed and announced; failures, timeouts, duplicates, dead executors and lost messages
//! end where the lifecycle says.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kubefaas_core::{
    queue::{Completions, Job, Notice, Queue, QueueConfig, Waited, live::Carried},
    store::{FunctionRecord, InvocationRow, Status, Store},
};
use kubefaas_executor::{
    Pool, Scaling,
    worker::{Expected, FunctionSource, ResolvedFunction, Worker, WorkerConfig, WorkerError},
};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Bound on waits, only so a broken worker fails instead of hanging.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Functions from a table, as the Kubernetes API would resolve them.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<HashMap<String, Arc<ResolvedFunction>>>>);

impl FunctionSource for Table {
    async fn resolve(
        &self,
        _namespace: &str,
        name: &str,
        _expected: &Expected,
    ) -> Result<Option<Arc<ResolvedFunction>>, WorkerError> {
        Ok(self.0.lock().unwrap().get(name).cloned())
    }
}

struct Harness {
    store: Store,
    queue: Queue,
    redis: redis::Client,
    functions: Table,
}

impl Harness {
    async fn new() -> Self {
        let (_, store) = support::fresh_store().await;
        let redis = redis::Client::open(support::env("REDIS_URL")).unwrap();
        let config = QueueConfig {
            prefix: format!("exec-test-{}", Uuid::new_v4().simple()),
            ..QueueConfig::default()
        };
        let queue = Queue::connect(redis.clone(), &config).await.unwrap();
        queue.ensure_group().await.unwrap();
        Self { store, queue, redis, functions: Table::default() }
    }

    /// Registers a python function (row and resolvable spec).
    async fn function(&self, name: &str, source: &str, timeout_seconds: i32) -> Uuid {
        let record = FunctionRecord {
            code_size: i64::try_from(source.len()).unwrap(),
            timeout_seconds,
            cpu_millis: 500,
            max_concurrency: 4,
            ..support::python_record(Uuid::new_v4(), name)
        };
        let (row, _) = self.store.upsert_function(&record).await.unwrap();
        let mut spec = support::python(name, source);
        spec.limits.cpu_millis = 500;
        let resolved = ResolvedFunction {
            id: row.record.id,
            spec: Arc::new(spec),
            env_from: Vec::new(),
            env_from_error: None,
            scaling: Scaling::default(),
            max_concurrency: 4,
        };
        self.functions.0.lock().unwrap().insert(name.into(), Arc::new(resolved));
        row.record.id
    }

    /// Records an invocation and releases it to the queue, as the operator does.
    async fn invoke(&self, function_id: Uuid, name: &str, payload: Value, timeout: i32) -> Uuid {
        support::enqueue(&self.store, &self.queue, function_id, name, payload, timeout).await
    }

    async fn record(&self, function_id: Uuid, name: &str, payload: Value, timeout: i32) -> Uuid {
        support::record(&self.store, function_id, name, payload, timeout).await
    }

    fn worker_config(&self, name: &str) -> WorkerConfig {
        let mut config = WorkerConfig::new(name);
        config.block = Duration::from_millis(200);
        config.maintenance_interval = Duration::from_millis(200);
        config.sweep_interval = Duration::from_millis(200);
        config
    }

    /// Starts a worker; dropping the returned sender stops it.
    fn start(&self, config: WorkerConfig) -> oneshot::Sender<()> {
        let worker = Worker::new(
            config,
            self.store.clone(),
            self.queue.clone(),
            Arc::new(Pool::new(support::driver())),
            self.functions.clone(),
            kubefaas_executor::worker::NoObserver,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(worker.run(
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        stop
    }

    /// Waits for the invocation to finish, woken by its completion notice.
    async fn finished(&self, id: Uuid) -> InvocationRow {
        let (completions, _listener) =
            Completions::start(self.redis.clone(), self.queue.keys()).await.unwrap();
        let store = self.store.clone();
        let waited = completions
            .wait(id, HANG_GUARD, || {
                let store = store.clone();
                async move {
                    let row = store.invocation(id).await?;
                    Ok::<_, kubefaas_core::store::StoreError>(
                        row.filter(|r| r.status.is_terminal()),
                    )
                }
            })
            .await
            .unwrap();
        match waited {
            Waited::Finished(row) => row,
            Waited::TimedOut => panic!("invocation {id} did not finish within {HANG_GUARD:?}"),
        }
    }

    async fn pending(&self) -> u64 {
        self.queue.stats().await.unwrap().pending
    }
}

const GREETER: &str = r#"
def handler(event, context):
    print("greeting", event["name"])
    return {"greeting": "hello " + event["name"], "request": context.aws_request_id}
"#;

const RAISER: &str = r#"
def handler(event, context):
    raise ValueError("no good: " + str(event))
"#;

const SLEEPER: &str = r#"
import time
def handler(event, context):
    time.sleep(event["sleep"])
    return "woke"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_invocation_runs_and_its_outcome_is_committed_and_announced() {
    let h = Harness::new().await;
    let function = h.function("greeter", GREETER, 30).await;
    let _worker = h.start(h.worker_config("exec-a"));
    let id = h.invoke(function, "greeter", json!({"name": "world"}), 30).await;

    let row = h.finished(id).await;
    assert_eq!(row.status, Status::Succeeded, "{:?}\nlogs: {:?}", row.error, row.logs);
    assert_eq!(row.result, Some(json!({"greeting": "hello world", "request": id.to_string()})));
    assert_eq!(row.attempts, 1);
    assert!(row.logs.as_deref().unwrap_or_default().contains("greeting world"), "{:?}", row.logs);
    let metrics = row.metrics.expect("metrics recorded");
    assert!(metrics.duration_ms.is_some());
    assert_eq!(metrics.cold_start, Some(true));
    assert_eq!(row.lease_owner, None);

    // The message was acknowledged.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while h.pending().await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "message never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_function_fails_once_with_its_error_type_and_stack() {
    let h = Harness::new().await;
    let function = h.function("raiser", RAISER, 30).await;
    let _worker = h.start(h.worker_config("exec-a"));
    let id = h.invoke(function, "raiser", json!({"n": 1}), 30).await;

    let row = h.finished(id).await;
    assert_eq!(row.status, Status::Failed);
    let error = row.error.unwrap();
    assert_eq!(error.type_, "ValueError", "{error:?}\nlogs: {:?}", row.logs);
    assert!(error.message.contains("no good"), "{}", error.message);
    assert!(error.stack.unwrap_or_default().contains("main.py"));
    assert_eq!(row.attempts, 1, "function errors are not retried by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_policy_frozen_into_the_row_is_the_one_that_applies() {
    let h = Harness::new().await;
    let function = h.function("raiser", RAISER, 30).await;
    // Submitted when the function asked for retries of its own errors, two attempts, no delay;
    // whatever the function says now, this row is retried as it was accepted.
    let new = kubefaas_core::store::NewInvocation {
        id: Uuid::new_v4(),
        function_id: function,
        namespace: "default".into(),
        function_name: "raiser".into(),
        resource_name: None,
        source: kubefaas_core::store::Source::Async,
        payload: Some(json!({"n": 1})),
        headers: Default::default(),
        timeout_seconds: 30,
        max_attempts: 2,
        backoff_seconds: 0,
        retry_on_function_error: true,
    };
    let id = h.store.create_queued_invocation(&new).await.unwrap().into_row().id;
    h.queue.enqueue(&Job::new(id, function, "default", "raiser")).await.unwrap();
    let _worker = h.start(h.worker_config("exec-a"));

    let row = h.finished(id).await;
    assert_eq!(row.status, Status::Failed);
    assert_eq!(row.error.unwrap().type_, "ValueError");
    assert_eq!(row.attempts, 2, "retried once, then stopped at the row's max_attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_past_its_deadline_ends_timed_out() {
    let h = Harness::new().await;
    let function = h.function("sleeper", SLEEPER, 1).await;
    let _worker = h.start(h.worker_config("exec-a"));
    let id = h.invoke(function, "sleeper", json!({"sleep": 30}), 1).await;

    let row = h.finished(id).await;
    assert_eq!(row.status, Status::TimedOut);
    assert_eq!(row.error.unwrap().type_, "TimedOut");
    let duration = row.metrics.unwrap().duration_ms.unwrap();
    assert!((1000..10_000).contains(&duration), "killed near its 1 s deadline, took {duration} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_of_a_deleted_function_fails_with_function_not_found() {
    let h = Harness::new().await;
    let function = h.function("gone", GREETER, 30).await;
    h.functions.0.lock().unwrap().clear();
    let _worker = h.start(h.worker_config("exec-a"));
    let id = h.invoke(function, "gone", json!({"name": "x"}), 30).await;

    let row = h.finished(id).await;
    assert_eq!(row.status, Status::Failed);
    assert_eq!(row.error.unwrap().type_, "FunctionNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_message_runs_the_invocation_only_once() {
    let h = Harness::new().await;
    let function = h.function("greeter", GREETER, 30).await;
    let id = h.invoke(function, "greeter", json!({"name": "once"}), 30).await;
    // A second copy, as after an operator crash between enqueue and its bookkeeping.
    h.queue.enqueue(&Job::new(id, function, "default", "greeter")).await.unwrap();
    let _worker = h.start(h.worker_config("exec-a"));

    let row = h.finished(id).await;
    assert_eq!(row.status, Status::Succeeded);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while h.pending().await != 0 || h.queue.stats().await.unwrap().undelivered != 0 {
        assert!(tokio::time::Instant::now() < deadline, "duplicate never consumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.store.invocation(id).await.unwrap().unwrap().attempts, 1, "ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_of_a_dead_executor_is_taken_over_after_its_lease() {
    let h = Harness::new().await;
    let function = h.function("greeter", GREETER, 30).await;
    let id = h.invoke(function, "greeter", json!({"name": "again"}), 30).await;

    // An executor claims the message and the row, then dies without a word.
    let mut dead = h.queue.consumer("exec-dead").await.unwrap();
    assert_eq!(dead.claim(1, Duration::from_secs(1)).await.unwrap().len(), 1);
    let lease_for = Duration::from_millis(300);
    assert!(matches!(
        h.store.claim(id, "exec-dead", lease_for).await.unwrap(),
        kubefaas_core::store::Claim::Acquired { .. }
    ));
    drop(dead);

    let mut config = h.worker_config("exec-b");
    config.lease = lease_for;
    let _worker = h.start(config);
    let row = h.finished(id).await;
    assert_eq!(row.status, Status::Succeeded);
    assert_eq!(row.attempts, 2, "the takeover is the second attempt");
    assert_eq!(row.result.unwrap()["greeting"], "hello again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_invocation_whose_message_was_lost_is_swept_back_onto_the_queue() {
    let h = Harness::new().await;
    let function = h.function("greeter", GREETER, 30).await;
    // Released in PostgreSQL but never (or no longer) in Redis.
    let id = h.record(function, "greeter", json!({"name": "lost"}), 30).await;
    assert!(h.store.mark_queued(id).await.unwrap());

    let mut config = h.worker_config("exec-a");
    config.stuck_after = Duration::from_millis(100);
    let _worker = h.start(config);
    let row = h.finished(id).await;
    assert_eq!(row.status, Status::Succeeded);
    assert_eq!(row.result.unwrap()["greeting"], "hello lost");
}

/// A synchronous call as the gateway hands it over: carried whole by its job, no row.
async fn submit_carried(
    h: &Harness,
    function_id: Uuid,
    name: &str,
    payload: Value,
    retry: (i32, bool),
) -> Uuid {
    let mut new = support::new_invocation(function_id, name, payload, 30);
    (new.max_attempts, new.retry_on_function_error) = retry;
    let row = new.queued_row(chrono::Utc::now());
    let mut job = Job::new(row.id, function_id, "default", name);
    job.carried = Some(Arc::new(Carried { row: row.clone(), generation: 1 }));
    h.queue.submit_carried(&job).await.unwrap();
    row.id
}

impl Harness {
    /// Waits until `id`'s row is in the store, written behind by the worker.
    async fn written(&self, id: Uuid) -> InvocationRow {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(row) = self.store.invocation(id).await.unwrap() {
                return row;
            }
            let live = self.queue.live(id).await.unwrap();
            assert!(tokio::time::Instant::now() < deadline, "never written; live: {live:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the live row of `id` satisfies `done`.
    async fn live_until(&self, id: Uuid, done: impl Fn(&InvocationRow) -> bool) -> InvocationRow {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let live = self.queue.live(id).await.unwrap();
            if let Some(row) = live.as_ref().filter(|row| done(row)) {
                return row.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "live row never got there: {live:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_call_runs_without_a_row_is_announced_with_its_outcome_and_written_behind() {
    let h = Harness::new().await;
    let function = h.function("greeter", GREETER, 30).await;
    let (completions, _listener) =
        Completions::start(h.redis.clone(), h.queue.keys()).await.unwrap();
    let mut notices = completions.notices();
    let id = submit_carried(&h, function, "greeter", json!({"name": "live"}), (1, false)).await;
    assert_eq!(h.store.invocation(id).await.unwrap(), None, "no row while it waits");
    assert_eq!(h.queue.live(id).await.unwrap().unwrap().status, Status::Queued);

    let _worker = h.start(h.worker_config("exec-live"));
    let announced = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Ok(Notice::Completed(completion)) = notices.recv().await
                && completion.id == id
            {
                return completion;
            }
        }
    })
    .await
    .expect("the completion is announced");
    assert_eq!(announced.status, "succeeded");
    let expected = json!({"greeting": "hello live", "request": id.to_string()});
    assert_eq!(announced.outcome.as_ref().map(|o| &o.result), Some(&expected));

    let row = h.written(id).await;
    assert_eq!((row.status, row.attempts), (Status::Succeeded, 1));
    assert_eq!(row.source, kubefaas_core::store::Source::Sync);
    assert_eq!(row.result, Some(expected));
    assert!(row.logs.as_deref().unwrap_or_default().contains("greeting live"), "{:?}", row.logs);
    assert!(row.metrics.and_then(|m| m.duration_ms).is_some());
    assert!(row.started_at.is_some() && row.completed_at >= row.started_at);
    // Once written, the store answers for it: the live key is dropped.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while h.queue.live(id).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "live key never dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.pending().await, 0, "the entry was acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_carried_call_reads_as_running_and_is_run_again_when_its_executor_dies() {
    let h = Harness::new().await;
    let function = h.function("sleeper", SLEEPER, 30).await;
    let id = submit_carried(&h, function, "sleeper", json!({"sleep": 0.5}), (3, false)).await;

    // An executor takes the entry and dies without a word.
    let mut dead = h.queue.consumer("exec-dead").await.unwrap();
    assert_eq!(dead.claim(1, Duration::from_secs(1)).await.unwrap().len(), 1);
    drop(dead);

    let mut config = h.worker_config("exec-c");
    config.lease = Duration::from_millis(300);
    let _worker = h.start(config);
    let running = h.live_until(id, |row| row.status == Status::Running).await;
    assert_eq!(running.lease_owner.as_deref(), Some("exec-c"));
    assert_eq!(running.attempts, 2, "the takeover is the second attempt");
    assert_eq!(h.store.invocation(id).await.unwrap(), None, "still no row while it runs");

    let row = h.written(id).await;
    assert_eq!((row.status, row.attempts), (Status::Succeeded, 2));
    assert_eq!(row.result, Some(json!("woke")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_call_is_retried_by_its_own_policy_through_the_delayed_set() {
    let h = Harness::new().await;
    let function = h.function("raiser", RAISER, 30).await;
    let id = submit_carried(&h, function, "raiser", json!("x"), (2, true)).await;
    let _worker = h.start(h.worker_config("exec-r"));

    // Between the attempts the live row says what the first one died of.
    let waiting = h.live_until(id, |row| row.status == Status::Queued && row.error.is_some()).await;
    assert_eq!(waiting.attempts, 1);
    assert_eq!(waiting.error.unwrap().type_, "ValueError");
    let row = h.written(id).await;
    assert_eq!((row.status, row.attempts), (Status::Failed, 2), "{:?}", row.error);
    assert_eq!(row.error.unwrap().type_, "ValueError");
}
