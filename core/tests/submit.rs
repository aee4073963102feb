//! The batching [`Submitter`] against real PostgreSQL and Redis (`make test` starts both).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly by design

use std::collections::{BTreeMap, HashSet};

use futures::future::join_all;
use kubefaas_core::{
    queue::{Queue, QueueConfig},
    resources::{Function, FunctionCode, FunctionPhase, FunctionSpec, FunctionStatus},
    store::{CodeSource, FunctionRecord, Source, Status, Store, StoreConfig},
    submit::{Submission, SubmitError, Submitter},
    validation::Limits,
};
use serde_json::json;
use uuid::Uuid;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run these tests with `make test`"))
}

async fn store() -> Store {
    let schema = format!("test_{}", Uuid::new_v4().simple());
    let url = kubefaas_core::store::create_schema(&env("DATABASE_URL"), &schema).await.unwrap();
    let store = Store::connect(&StoreConfig::new(url)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

async fn queue() -> Queue {
    let config = QueueConfig {
        prefix: format!("submit-{}", Uuid::new_v4().simple()),
        ..QueueConfig::default()
    };
    let queue =
        Queue::connect(redis::Client::open(env("REDIS_URL")).unwrap(), &config).await.unwrap();
    queue.ensure_group().await.unwrap();
    queue
}

/// A function as the operator leaves it: recorded in the store and `Ready`.
async fn ready_function(store: &Store, name: &str) -> Function {
    let id = Uuid::new_v4();
    let record = FunctionRecord {
        id,
        namespace: "default".into(),
        name: name.into(),
        version: "1.0.0".into(),
        runtime: "python".into(),
        handler: "main.handler".into(),
        code_source: CodeSource::Inline,
        code_location: None,
        code_checksum: "sha256:aa".into(),
        code_size: 1,
        timeout_seconds: 30,
        memory_mb: 128,
        cpu_millis: 100,
        max_concurrency: 10,
        environment: BTreeMap::new(),
        metadata: json!({}),
    };
    store.upsert_function(&record).await.unwrap();
    let mut function =
        Function::new(name, FunctionSpec::new("python", "main.handler", FunctionCode::inline("x")));
    function.metadata.namespace = Some("default".into());
    function.metadata.generation = Some(1);
    function.status = Some(FunctionStatus {
        phase: Some(FunctionPhase::Ready),
        observed_generation: Some(1),
        function_id: Some(id.to_string()),
        ..FunctionStatus::default()
    });
    function
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_are_each_recorded_and_queued_once_and_a_missing_function_is_told_apart()
 {
    let (store, queue) = (store().await, queue().await);
    let (submitter, _writer) = Submitter::start(store.clone(), queue.clone());
    let live = ready_function(&store, "live").await;
    // Its status names a row that is not (or no longer) in the store.
    let mut ghost = ready_function(&store, "ghost").await;
    ghost.status.as_mut().unwrap().function_id = Some(Uuid::new_v4().to_string());
    let limits = Limits::default();

    // 300 at once: more than one batch holds, with one for a deleted function among them.
    let submissions = (0..300).map(|n| {
        let (submitter, limits) = (submitter.clone(), limits.clone());
        let function = if n == 150 { ghost.clone() } else { live.clone() };
        async move {
            let submission = Submission::new(Source::Async, Some(json!({"n": n})));
            (n, submitter.submit(&limits, &function, submission).await)
        }
    });
    let mut ids = HashSet::new();
    for (n, answer) in join_all(submissions).await {
        if n == 150 {
            assert!(
                matches!(answer, Err(SubmitError::Deleted(ref name)) if name == "ghost"),
                "{answer:?}"
            );
            continue;
        }
        let submitted = answer.unwrap();
        assert!(submitted.new && submitted.enqueue_error.is_none());
        assert_eq!(submitted.row.payload, Some(json!({"n": n})), "each gets its own row back");
        let row = store.invocation(submitted.row.id).await.unwrap().unwrap();
        assert_eq!((row.status, row.source), (Status::Queued, Source::Async));
        ids.insert(row.id);
    }
    assert_eq!(ids.len(), 299);
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.stream_length, 299, "one job per recorded invocation");

    // A function that is not ready is refused before anything is written.
    let mut failed = live.clone();
    failed.status.as_mut().unwrap().phase = Some(FunctionPhase::Failed);
    let refused = submitter.submit(&limits, &failed, Submission::new(Source::Sync, None)).await;
    assert!(matches!(refused, Err(SubmitError::NotReady { .. })), "{refused:?}");
    assert_eq!(queue.stats().await.unwrap().stream_length, 299);
}
