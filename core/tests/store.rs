//! The PostgreSQL store against a real server (`DATABASE_URL`; `make test` starts one).
//!
//! Each test migrates its own schema, so the tests run in parallel on one database.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests fail loudly by design

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use kubefaas_core::{
    resources::{InvocationError, InvocationMetrics},
    store::{
        Claim, CodeSource, Created, FunctionQuery, FunctionRecord, InvocationQuery, Lease,
        MIGRATOR, NewInvocation, Outcome, Source, Status, Store, StoreConfig, StoreError, Upsert,
    },
};
use serde_json::json;
use uuid::Uuid;

fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: these tests need a real PostgreSQL (run them with `make test`)",
    )
}

/// A schema of its own for one test, migrated.
struct TestDb {
    /// The URL that selects the schema.
    url: String,
    store: Store,
}

impl TestDb {
    async fn new() -> Self {
        let schema = format!("test_{}", Uuid::new_v4().simple());
        let url = kubefaas_core::store::create_schema(&database_url(), &schema)
            .await
            .expect("create a test schema on DATABASE_URL");
        let store = Self::connect(&url).await;
        store.migrate().await.expect("migrate");
        Self { url, store }
    }

    async fn connect(url: &str) -> Store {
        let mut config = StoreConfig::new(url);
        config.max_connections = 20;
        Store::connect(&config).await.expect("connect to test schema")
    }

    /// Runs test-only SQL (to stage states the store API has no reason to offer).
    async fn exec(&self, sql: &str, id: Uuid) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(id)
            .execute(self.store.pool())
            .await
            .expect(sql);
    }
}

fn function(namespace: &str, name: &str) -> FunctionRecord {
    FunctionRecord {
        id: Uuid::new_v4(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        runtime: "python".to_owned(),
        handler: "main.handler".to_owned(),
        code_source: CodeSource::Inline,
        code_location: None,
        code_checksum: "sha256:aa".to_owned(),
        code_size: 42,
        timeout_seconds: 30,
        memory_mb: 128,
        cpu_millis: 100,
        max_concurrency: 10,
        environment: BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]),
        metadata: json!({"team": "core"}),
    }
}

fn invocation(function_id: Uuid) -> NewInvocation {
    NewInvocation {
        id: Uuid::new_v4(),
        function_id,
        namespace: "default".to_owned(),
        function_name: "hello".to_owned(),
        resource_name: Some("hello-once".to_owned()),
        source: Source::Resource,
        payload: Some(json!({"name": "world"})),
        headers: BTreeMap::from([("x-trace".to_owned(), "abc".to_owned())]),
        timeout_seconds: 30,
        max_attempts: 3,
        backoff_seconds: 1,
        retry_on_function_error: false,
    }
}

fn error(kind: &str) -> InvocationError {
    InvocationError {
        type_: kind.to_owned(),
        message: format!("{kind} happened"),
        stack: Some("at handler".to_owned()),
    }
}

/// A function and one of its invocations, still `pending`.
async fn pending_invocation(db: &TestDb) -> Uuid {
    let (function, _) = db.store.upsert_function(&function("default", "hello")).await.unwrap();
    let created = db.store.create_invocation(&invocation(function.record.id)).await.unwrap();
    created.into_row().id
}

/// A function and one of its invocations, already `queued`.
async fn queued_invocation(db: &TestDb) -> Uuid {
    let id = pending_invocation(db).await;
    assert!(db.store.mark_queued(id).await.unwrap());
    id
}

/// A function and `n` of its invocations, `queued`.
async fn queued_invocations(db: &TestDb, n: usize) -> Vec<Uuid> {
    let (function, _) = db.store.upsert_function(&function("default", "hello")).await.unwrap();
    let news: Vec<NewInvocation> = (0..n).map(|_| invocation(function.record.id)).collect();
    let created = db.store.create_queued_invocations(&news).await.unwrap();
    created.iter().map(|row| row.id).collect()
}

fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired { lease, .. } => lease,
        other => panic!("expected the claim to succeed, got {other:?}"),
    }
}

/// Claims with a lease that has already run out by the time the claim returns.
async fn claim_with_expired_lease(db: &TestDb, id: Uuid, owner: &str) -> Lease {
    let lease = acquired(db.store.claim(id, owner, Duration::ZERO).await.unwrap());
    // A zero lease expires at the claiming transaction's start; wait (bounded) until the
    // server's clock has moved past it.
    for _ in 0..200 {
        let expired: bool =
            sqlx::query_scalar("SELECT lease_expires_at < now() FROM invocations WHERE id = $1")
                .bind(id)
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        if expired {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("lease of {id} did not expire");
}

#[tokio::test]
async fn migrations_are_a_no_op_when_run_again_or_concurrently() {
    let db = TestDb::new().await;
    let others = join_all((0..4).map(|_| TestDb::connect(&db.url))).await;
    let runs = join_all(others.iter().map(Store::migrate)).await;
    for run in runs {
        run.expect("concurrent migrate");
    }
    db.store.migrate().await.expect("second migrate");

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(applied, MIGRATOR.iter().count() as i64);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' \
         ORDER BY table_name",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(tables, ["api_tokens", "function_permissions", "functions", "invocations", "users"]);
}

#[tokio::test]
async fn upserting_a_function_creates_updates_and_leaves_identical_rows_alone() {
    let db = TestDb::new().await;
    let record = function("default", "hello");

    let (created, what) = db.store.upsert_function(&record).await.unwrap();
    assert_eq!(what, Upsert::Created);
    assert_eq!(created.record, record);
    assert_eq!(created.deleted_at, None);

    let (again, what) = db.store.upsert_function(&record).await.unwrap();
    assert_eq!(what, Upsert::Unchanged);
    assert_eq!(again, created, "an identical upsert must not touch the row");

    let mut changed = record.clone();
    changed.id = Uuid::new_v4(); // ignored on update: the live row keeps its id
    changed.code_checksum = "sha256:bb".to_owned();
    changed.environment.insert("EXTRA".to_owned(), "1".to_owned());
    let (updated, what) = db.store.upsert_function(&changed).await.unwrap();
    assert_eq!(what, Upsert::Updated);
    assert_eq!(updated.record.id, record.id);
    assert_eq!(updated.record.code_checksum, "sha256:bb");
    assert_eq!(updated.record.environment["EXTRA"], "1");
    assert!(updated.updated_at > created.updated_at);
    assert_eq!(updated.created_at, created.created_at);

    let by_id = db.store.function(record.id).await.unwrap().unwrap();
    let by_name = db.store.function_by_name("default", "hello").await.unwrap().unwrap();
    assert_eq!(by_id, updated);
    assert_eq!(by_name, updated);
    assert_eq!(db.store.function_by_name("other", "hello").await.unwrap(), None);
    assert_eq!(db.store.function(Uuid::new_v4()).await.unwrap(), None);
}

#[tokio::test]
async fn deleting_a_function_keeps_its_row_and_frees_its_name() {
    let db = TestDb::new().await;
    let first = function("default", "hello");
    db.store.upsert_function(&first).await.unwrap();

    assert!(db.store.delete_function_by_name("default", "hello").await.unwrap());
    assert!(!db.store.delete_function_by_name("default", "hello").await.unwrap());
    assert!(!db.store.delete_function(first.id).await.unwrap());
    assert_eq!(db.store.function_by_name("default", "hello").await.unwrap(), None);
    let history = db.store.function(first.id).await.unwrap().unwrap();
    assert!(history.deleted_at.is_some(), "the deleted row stays for history");
    assert!(db.store.list_functions(&FunctionQuery::default()).await.unwrap().is_empty());

    let second = function("default", "hello");
    let (recreated, what) = db.store.upsert_function(&second).await.unwrap();
    assert_eq!(what, Upsert::Created);
    assert_eq!(recreated.record.id, second.id);

    // The deleted function's id cannot be reused for another function.
    let mut reuse = function("default", "other");
    reuse.id = first.id;
    let err = db.store.upsert_function(&reuse).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");

    assert!(db.store.delete_function(second.id).await.unwrap());
    assert_eq!(db.store.function_by_name("default", "hello").await.unwrap(), None);
}

#[tokio::test]
async fn listing_functions_filters_by_namespace_and_runtime_and_pages() {
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for (namespace, name, runtime) in [
        ("default", "a", "python"),
        ("default", "b", "nodejs"),
        ("team", "c", "python"),
        ("default", "d", "python"),
    ] {
        let mut record = function(namespace, name);
        record.runtime = runtime.to_owned();
        ids.push(db.store.upsert_function(&record).await.unwrap().0.record.name);
    }
    let names = |rows: Vec<kubefaas_core::store::FunctionRow>| -> Vec<String> {
        rows.into_iter().map(|row| row.record.name).collect()
    };

    let all = db.store.list_functions(&FunctionQuery::default()).await.unwrap();
    assert_eq!(names(all), ids, "oldest first");
    let python_default = db
        .store
        .list_functions(&FunctionQuery {
            namespace: Some("default".to_owned()),
            runtime: Some("python".to_owned()),
            ..FunctionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(names(python_default), ["a", "d"]);
    let second_page = db
        .store
        .list_functions(&FunctionQuery {
            limit: Some(2),
            offset: Some(1),
            ..FunctionQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(names(second_page), ["b", "c"]);
}

#[tokio::test]
async fn creating_an_invocation_twice_returns_the_first_row() {
    let db = TestDb::new().await;
    let (function_row, _) = db.store.upsert_function(&function("default", "hello")).await.unwrap();
    let new = invocation(function_row.record.id);

    let first = match db.store.create_invocation(&new).await.unwrap() {
        Created::New(row) => row,
        other => panic!("first create should insert, got {other:?}"),
    };
    assert_eq!(first.status, Status::Pending);
    assert_eq!(first.payload, new.payload);
    assert_eq!(first.headers, new.headers);
    assert_eq!(first.resource_name.as_deref(), Some("hello-once"));
    assert_eq!(first.attempts, 0);
    assert_eq!(first.max_attempts, 3);
    assert_eq!(db.store.create_invocation(&new).await.unwrap(), Created::Existing(first.clone()));

    // Many creators at once: one inserts, every other one gets the same row back.
    let racer = invocation(function_row.record.id);
    let results = join_all((0..8).map(|_| db.store.create_invocation(&racer))).await;
    let mut inserted = 0;
    for result in results {
        match result.unwrap() {
            Created::New(row) => {
                inserted += 1;
                assert_eq!(row.id, racer.id);
            }
            Created::Existing(row) => assert_eq!(row.id, racer.id),
        }
    }
    assert_eq!(inserted, 1);

    // The same id for another function is a conflict, an unknown function is named.
    let (other, _) = db.store.upsert_function(&function("default", "other")).await.unwrap();
    let mut clash = new.clone();
    clash.function_id = other.record.id;
    let err = db.store.create_invocation(&clash).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let ghost = Uuid::new_v4();
    let err = db.store.create_invocation(&invocation(ghost)).await.unwrap_err();
    assert!(matches!(err, StoreError::UnknownFunction(id) if id == ghost), "{err}");
}

#[tokio::test]
async fn listing_invocations_filters_by_function_status_and_namespace_newest_first() {
    let db = TestDb::new().await;
    let (f1, _) = db.store.upsert_function(&function("default", "one")).await.unwrap();
    let (f2, _) = db.store.upsert_function(&function("default", "two")).await.unwrap();
    let mut created = Vec::new();
    for function_id in [f1.record.id, f2.record.id, f1.record.id, f1.record.id] {
        let row = db.store.create_invocation(&invocation(function_id)).await.unwrap().into_row();
        created.push(row.id);
    }
    db.store.mark_queued(created[2]).await.unwrap();

    let ids = |rows: Vec<kubefaas_core::store::InvocationRow>| -> Vec<Uuid> {
        rows.into_iter().map(|row| row.id).collect()
    };
    let of_f1 = db
        .store
        .list_invocations(&InvocationQuery {
            function_id: Some(f1.record.id),
            ..InvocationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(of_f1), [created[3], created[2], created[0]]);
    let queued = db
        .store
        .list_invocations(&InvocationQuery {
            status: Some(Status::Queued),
            ..InvocationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(queued), [created[2]]);
    let paged = db
        .store
        .list_invocations(&InvocationQuery {
            namespace: Some("default".to_owned()),
            limit: Some(2),
            offset: Some(1),
            ..InvocationQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(paged), [created[2], created[1]]);
    let elsewhere = db
        .store
        .list_invocations(&InvocationQuery {
            namespace: Some("team".to_owned()),
            ..InvocationQuery::default()
        })
        .await
        .unwrap();
    assert!(elsewhere.is_empty());
}

#[tokio::test]
async fn a_function_was_last_invoked_when_its_newest_invocation_was_created() {
    let db = TestDb::new().await;
    let mut ids = Vec::new();
    for name in ["busy", "quiet", "never"] {
        ids.push(db.store.upsert_function(&function("default", name)).await.unwrap().0.record.id);
    }
    let (busy, quiet, never) = (ids[0], ids[1], ids[2]);
    // The newest of busy's invocations is not the one created last, so insertion order or ids
    // cannot stand in for the creation time.
    for (function_id, created_at) in [
        (busy, "2030-01-01T00:00:01Z"),
        (busy, "2030-01-01T00:00:03.250Z"),
        (busy, "2030-01-01T00:00:02Z"),
        (quiet, "2030-01-01T00:00:05Z"),
    ] {
        let id = db.store.create_invocation(&invocation(function_id)).await.unwrap().into_row().id;
        db.exec(&format!("UPDATE invocations SET created_at = '{created_at}' WHERE id = $1"), id)
            .await;
    }

    let mut last = db.store.last_invoked(&[busy, quiet, never]).await.unwrap();
    last.sort();
    let at = |text: &str| text.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let mut expected =
        vec![(busy, at("2030-01-01T00:00:03.250Z")), (quiet, at("2030-01-01T00:00:05Z"))];
    expected.sort();
    assert_eq!(last, expected, "one entry per invoked function, none for `never`");
    assert!(db.store.last_invoked(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_invocation_runs_from_pending_to_succeeded_under_a_lease() {
    let db = TestDb::new().await;
    let id = pending_invocation(&db).await;

    assert_eq!(
        db.store.claim(id, "exec-a", Duration::from_secs(30)).await.unwrap(),
        Claim::NotQueued
    );
    assert!(db.store.mark_queued(id).await.unwrap());
    assert!(!db.store.mark_queued(id).await.unwrap(), "queued only once");
    let queued = db.store.invocation(id).await.unwrap().unwrap();
    assert_eq!(queued.status, Status::Queued);
    assert!(queued.queued_at.is_some());

    let (lease, running) =
        match db.store.claim(id, "exec-a", Duration::from_secs(30)).await.unwrap() {
            Claim::Acquired { lease, invocation, function: state } => {
                let recorded = function("default", "hello");
                assert_eq!(state.code_checksum, recorded.code_checksum);
                assert_eq!(state.environment, recorded.environment);
                assert_eq!(
                    (state.memory_mb, state.cpu_millis),
                    (recorded.memory_mb, recorded.cpu_millis)
                );
                (lease, invocation)
            }
            other => panic!("claim failed: {other:?}"),
        };
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.owner, "exec-a");
    assert_eq!(running.status, Status::Running);
    assert_eq!(running.lease_owner.as_deref(), Some("exec-a"));
    assert!(running.started_at.is_some());
    assert_eq!(running.queued_at, None);

    let renewed = db.store.renew_lease(&lease, Duration::from_secs(300)).await.unwrap().unwrap();
    assert!(renewed > lease.expires_at);

    let metrics = InvocationMetrics {
        duration_ms: Some(12),
        cpu_time_ms: Some(3),
        memory_peak_bytes: Some(1 << 20),
        cold_start: Some(true),
    };
    let outcome = Outcome {
        metrics: Some(metrics.clone()),
        logs: Some("hello from stdout\n".to_owned()),
        ..Outcome::succeeded(Some(json!({"greeting": "hello world"})))
    };
    let done = db.store.complete(&lease, &outcome).await.unwrap().expect("holder commits");
    assert_eq!(done.status, Status::Succeeded);
    assert_eq!(done.result, Some(json!({"greeting": "hello world"})));
    assert_eq!(done.metrics, Some(metrics));
    assert_eq!(done.logs.as_deref(), Some("hello from stdout\n"));
    assert!(done.completed_at.is_some());
    assert_eq!(done.lease_owner, None);
    assert_eq!(db.store.invocation(id).await.unwrap().unwrap(), done);

    // A duplicate delivery finds it finished; a second commit changes nothing.
    assert_eq!(
        db.store.claim(id, "exec-b", Duration::from_secs(30)).await.unwrap(),
        Claim::Finished(Status::Succeeded)
    );
    assert_eq!(db.store.complete(&lease, &Outcome::succeeded(None)).await.unwrap(), None);
    assert_eq!(db.store.renew_lease(&lease, Duration::from_secs(30)).await.unwrap(), None);
    assert_eq!(
        db.store.claim(Uuid::new_v4(), "exec-a", Duration::from_secs(30)).await.unwrap(),
        Claim::Missing
    );
}

#[tokio::test]
async fn of_many_executors_claiming_one_invocation_exactly_one_wins() {
    let db = TestDb::new().await;
    let id = queued_invocation(&db).await;
    // Separate pools, so the claims really run on different connections at once.
    let executors = join_all((0..12).map(|_| TestDb::connect(&db.url))).await;
    let claims = join_all(executors.iter().enumerate().map(|(i, store)| async move {
        (
            format!("exec-{i}"),
            store.claim(id, &format!("exec-{i}"), Duration::from_secs(30)).await.unwrap(),
        )
    }))
    .await;

    let winners: Vec<&String> = claims
        .iter()
        .filter(|(_, claim)| matches!(claim, Claim::Acquired { .. }))
        .map(|(owner, _)| owner)
        .collect();
    assert_eq!(winners.len(), 1, "claims: {claims:?}");
    let winner = winners[0];
    for (owner, claim) in &claims {
        if owner != winner {
            assert!(
                matches!(claim, Claim::HeldElsewhere { owner: holder, .. } if holder == winner),
                "{owner} got {claim:?}"
            );
        }
    }
    let row = db.store.invocation(id).await.unwrap().unwrap();
    assert_eq!(row.attempts, 1);
    assert_eq!(row.lease_owner.as_ref(), Some(winner));
}

#[tokio::test]
async fn a_stale_lease_holder_cannot_commit_after_its_lease_was_taken_over() {
    let db = TestDb::new().await;
    let id = queued_invocation(&db).await;
    let stale = claim_with_expired_lease(&db, id, "exec-a").await;

    let fresh = acquired(db.store.claim(id, "exec-b", Duration::from_secs(30)).await.unwrap());
    assert_eq!(fresh.attempt, 2, "a takeover is a new attempt");

    assert_eq!(
        db.store.complete(&stale, &Outcome::succeeded(Some(json!("stale")))).await.unwrap(),
        None
    );
    assert_eq!(db.store.renew_lease(&stale, Duration::from_secs(30)).await.unwrap(), None);
    assert!(!db.store.retry_later(&stale, &error("Lost"), Duration::ZERO).await.unwrap());
    let row = db.store.invocation(id).await.unwrap().unwrap();
    assert_eq!((row.status, row.lease_owner.as_deref()), (Status::Running, Some("exec-b")));

    let done = db
        .store
        .complete(&fresh, &Outcome::succeeded(Some(json!("fresh"))))
        .await
        .unwrap()
        .expect("current holder commits");
    assert_eq!(done.result, Some(json!("fresh")));
    assert_eq!(done.attempts, 2);

    // The same owner name does not help a stale attempt either.
    let id = queued_invocation(&db).await;
    let old = claim_with_expired_lease(&db, id, "exec-a").await;
    let new = acquired(db.store.claim(id, "exec-a", Duration::from_secs(30)).await.unwrap());
    assert_eq!(db.store.complete(&old, &Outcome::succeeded(None)).await.unwrap(), None);
    assert!(db.store.complete(&new, &Outcome::succeeded(None)).await.unwrap().is_some());
}

#[tokio::test]
async fn a_retried_invocation_is_queued_again_for_later_with_its_error() {
    let db = TestDb::new().await;
    let id = queued_invocation(&db).await;
    let lease = acquired(db.store.claim(id, "exec-a", Duration::from_secs(30)).await.unwrap());

    assert!(
        db.store
            .retry_later(&lease, &error("InstanceLost"), Duration::from_secs(60))
            .await
            .unwrap()
    );
    let row = db.store.invocation(id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Queued);
    assert_eq!(row.error, Some(error("InstanceLost")));
    assert_eq!(row.lease_owner, None);
    let due = row.queued_at.unwrap();
    let delay = due - row.updated_at;
    assert_eq!(delay.num_seconds(), 60, "due a minute after the retry was recorded");
    // Not due yet, so the sweeper leaves it alone.
    assert!(db.store.stuck_queued(Duration::ZERO, 10).await.unwrap().is_empty());

    let second = acquired(db.store.claim(id, "exec-b", Duration::from_secs(30)).await.unwrap());
    assert_eq!(second.attempt, 2);
    let failed = db
        .store
        .complete(&second, &Outcome::failed(Status::TimedOut, error("TimedOut")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, Status::TimedOut);
    assert_eq!(failed.error, Some(error("TimedOut")));
}

#[tokio::test]
async fn only_invocations_nobody_is_running_can_be_failed_from_outside() {
    let db = TestDb::new().await;
    let pending = pending_invocation(&db).await;
    let failed =
        db.store.fail_unclaimed(pending, &error("FunctionNotFound")).await.unwrap().unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.error, Some(error("FunctionNotFound")));
    assert!(failed.completed_at.is_some());
    assert_eq!(db.store.fail_unclaimed(pending, &error("Again")).await.unwrap(), None);

    let running = queued_invocation(&db).await;
    let lease = acquired(db.store.claim(running, "exec-a", Duration::from_secs(30)).await.unwrap());
    assert_eq!(db.store.fail_unclaimed(running, &error("DeadLettered")).await.unwrap(), None);

    let abandoned = queued_invocation(&db).await;
    let dead = claim_with_expired_lease(&db, abandoned, "exec-dead").await;
    assert!(db.store.fail_unclaimed(abandoned, &error("DeadLettered")).await.unwrap().is_some());
    assert_eq!(db.store.complete(&dead, &Outcome::succeeded(None)).await.unwrap(), None);

    assert!(db.store.complete(&lease, &Outcome::succeeded(None)).await.unwrap().is_some());
}

#[tokio::test]
async fn the_sweeper_finds_invocations_stuck_in_queued_once_per_sweep() {
    let db = TestDb::new().await;
    let stuck = queued_invocation(&db).await;
    let fresh = queued_invocation(&db).await;
    db.exec(
        "UPDATE invocations SET queued_at = now() - interval '10 minutes' WHERE id = $1",
        stuck,
    )
    .await;

    // Two sweepers at once: the stuck row goes to exactly one of them.
    let other = TestDb::connect(&db.url).await;
    let (a, b) = tokio::join!(
        db.store.stuck_queued(Duration::from_secs(60), 10),
        other.stuck_queued(Duration::from_secs(60), 10)
    );
    let found: Vec<Uuid> = a.unwrap().into_iter().chain(b.unwrap()).map(|row| row.id).collect();
    assert_eq!(found, [stuck]);
    assert!(!found.contains(&fresh));

    // Its due time was reset, so the next sweep does not find it again at once.
    assert!(db.store.stuck_queued(Duration::from_secs(60), 10).await.unwrap().is_empty());
    let row = db.store.invocation(stuck).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Queued);
}

#[tokio::test]
async fn a_submitted_invocation_is_recorded_queued_and_due_in_one_step_and_only_once() {
    let db = TestDb::new().await;
    let (function, _) = db.store.upsert_function(&function("default", "hello")).await.unwrap();
    let mut new = invocation(function.record.id);
    new.source = Source::Async;
    let row = match db.store.create_queued_invocation(&new).await.unwrap() {
        Created::New(row) => row,
        other => panic!("expected a new row, got {other:?}"),
    };
    assert_eq!((row.status, row.source), (Status::Queued, Source::Async));
    assert!(row.queued_at.is_some(), "due now, so the sweeper can see it");
    assert_eq!(row.attempts, 0);
    // Submitting the same id again finds the row and changes nothing.
    assert_eq!(db.store.create_queued_invocation(&new).await.unwrap(), Created::Existing(row));
    assert!(!db.store.mark_queued(new.id).await.unwrap(), "already queued");
}

#[tokio::test]
async fn the_sweeper_queues_invocations_left_pending_by_a_producer_that_died() {
    let db = TestDb::new().await;
    let abandoned = pending_invocation(&db).await;
    let recent = pending_invocation(&db).await;
    db.exec(
        "UPDATE invocations SET created_at = now() - interval '10 minutes' WHERE id = $1",
        abandoned,
    )
    .await;
    let found: Vec<Uuid> = db
        .store
        .stuck_queued(Duration::from_secs(60), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(found, [abandoned], "only the one left pending for longer than a minute");
    let row = db.store.invocation(abandoned).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Queued);
    assert_eq!(db.store.invocation(recent).await.unwrap().unwrap().status, Status::Pending);
    assert!(db.store.stuck_queued(Duration::from_secs(60), 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn expired_leases_are_reported_and_live_ones_are_not() {
    let db = TestDb::new().await;
    let live = queued_invocation(&db).await;
    acquired(db.store.claim(live, "exec-a", Duration::from_secs(30)).await.unwrap());
    let dead = queued_invocation(&db).await;
    claim_with_expired_lease(&db, dead, "exec-dead").await;

    let expired: Vec<Uuid> = db
        .store
        .expired_leases(Duration::ZERO, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.id)
        .collect();
    assert_eq!(expired, [dead]);
    assert!(db.store.expired_leases(Duration::from_secs(3600), 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn impossible_requests_are_refused_with_a_reason() {
    let db = TestDb::new().await;
    let id = queued_invocation(&db).await;
    let lease = acquired(db.store.claim(id, "exec-a", Duration::from_secs(30)).await.unwrap());
    let not_terminal = Outcome { status: Some(Status::Running), ..Outcome::default() };
    let err = db.store.complete(&lease, &not_terminal).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidTransition(_)), "{err}");
    assert!(err.to_string().contains("terminal"), "{err}");

    let (function_row, _) = db.store.upsert_function(&function("default", "x")).await.unwrap();
    let mut zero = invocation(function_row.record.id);
    zero.max_attempts = 0;
    let err = db.store.create_invocation(&zero).await.unwrap_err();
    assert!(err.to_string().contains("max_attempts"), "{err}");
    // Nothing was written for the refused request.
    assert_eq!(db.store.invocation(zero.id).await.unwrap(), None);
}

#[tokio::test]
async fn a_schema_name_that_is_not_a_plain_identifier_is_refused_before_any_sql() {
    for bad in ["", "9lives", "Upper", "drop table x; --", &"a".repeat(64)] {
        let error = kubefaas_core::store::create_schema(&database_url(), bad).await.unwrap_err();
        assert!(
            matches!(error, kubefaas_core::store::StoreError::InvalidSchema(_)),
            "{bad:?}: {error}"
        );
    }
}

#[tokio::test]
async fn a_claim_reports_how_the_function_row_says_it_runs_at_that_moment() {
    let db = TestDb::new().await;
    let id = queued_invocation(&db).await;
    // The function changes after the invocation was queued.
    let mut changed = function("default", "hello");
    changed.code_checksum = "sha256:bb".to_owned();
    changed.memory_mb = 256;
    changed.environment.insert("MODE".to_owned(), "new".to_owned());
    db.store.upsert_function(&changed).await.unwrap();
    match db.store.claim(id, "exec-a", Duration::from_secs(30)).await.unwrap() {
        Claim::Acquired { function: state, .. } => {
            assert_eq!(state.code_checksum, "sha256:bb");
            assert_eq!(state.memory_mb, 256);
            assert_eq!(state.environment, changed.environment);
            assert_eq!(state.handler, changed.handler);
        }
        other => panic!("claim failed: {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_of_submissions_is_recorded_queued_in_one_statement_as_given() {
    let db = TestDb::new().await;
    let (function, _) = db.store.upsert_function(&function("default", "hello")).await.unwrap();
    let existing = queued_invocation(&db).await;
    let mut first = invocation(function.record.id);
    first.source = Source::Async;
    let mut second = invocation(function.record.id);
    (second.payload, second.resource_name, second.headers) = (None, None, BTreeMap::new());
    second.retry_on_function_error = true;
    let mut again = invocation(function.record.id);
    again.id = existing;

    let rows =
        db.store.create_queued_invocations(&[first.clone(), second.clone(), again]).await.unwrap();
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    assert_eq!(ids.len(), 2, "the id that had a row is skipped");
    assert!(ids.contains(&first.id) && ids.contains(&second.id));
    for new in [&first, &second] {
        let row = db.store.invocation(new.id).await.unwrap().unwrap();
        assert_eq!((row.status, row.source), (Status::Queued, new.source));
        assert!(row.queued_at.is_some());
        assert_eq!((&row.payload, &row.headers), (&new.payload, &new.headers));
        assert_eq!(row.resource_name, new.resource_name);
        let frozen = (row.timeout_seconds, row.max_attempts, row.retry_on_function_error);
        assert_eq!(frozen, (new.timeout_seconds, new.max_attempts, new.retry_on_function_error));
    }

    // A function that is gone fails the whole batch, and nothing of it is recorded.
    let orphan = invocation(Uuid::new_v4());
    let fine = invocation(function.record.id);
    let error = db.store.create_queued_invocations(&[fine.clone(), orphan]).await.unwrap_err();
    assert!(matches!(error, StoreError::UnknownFunction(_)), "{error:?}");
    assert!(db.store.invocation(fine.id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_relaxed_commit_of_a_sync_row_does_not_leak_into_the_connections_later_commits() {
    let db = TestDb::new().await;
    let (function, _) = db.store.upsert_function(&function("default", "hello")).await.unwrap();
    // One connection, so every statement below runs on the same session.
    let mut config = StoreConfig::new(&db.url);
    config.max_connections = 1;
    let store = Store::connect(&config).await.unwrap();
    let setting = || async {
        sqlx::query_scalar::<_, String>("SELECT current_setting('synchronous_commit')")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    sqlx::query("SET synchronous_commit = on").execute(store.pool()).await.unwrap();

    let mut sync = invocation(function.record.id);
    sync.source = Source::Sync;
    store.create_queued_invocation(&sync).await.unwrap();
    assert_eq!(setting().await, "on", "the insert's relaxed commit was its own");
    store.create_queued_invocations(&[invocation(function.record.id)]).await.unwrap();
    let lease = acquired(store.claim(sync.id, "exec-a", Duration::from_secs(30)).await.unwrap());
    assert_eq!(setting().await, "on", "the claim's too");
    assert_eq!(lease.source, Source::Sync);
    let done = store.complete(&lease, &Outcome::succeeded(Some(json!(1)))).await.unwrap();
    assert_eq!(done.map(|row| row.status), Some(Status::Succeeded));
    assert_eq!(setting().await, "on", "and the completion's");
}

#[tokio::test]
async fn a_batch_of_claims_answers_each_invocation_in_order_as_a_lone_claim_would() {
    let db = TestDb::new().await;
    let ids = queued_invocations(&db, 4).await;
    let (queued, held, finished, expired) = (ids[0], ids[1], ids[2], ids[3]);
    let other = acquired(db.store.claim(held, "exec-b", Duration::from_secs(30)).await.unwrap());
    let done = acquired(db.store.claim(finished, "exec-b", Duration::from_secs(30)).await.unwrap());
    db.store.complete(&done, &Outcome::succeeded(None)).await.unwrap().unwrap();
    claim_with_expired_lease(&db, expired, "exec-dead").await;
    let pending = pending_invocation(&db).await;
    let missing = Uuid::new_v4();

    let asked = [queued, held, finished, expired, pending, missing, queued];
    let claims = db.store.claim_many(&asked, "exec-a", Duration::from_secs(30)).await.unwrap();
    assert_eq!(claims.len(), asked.len(), "{claims:?}");
    let mine = acquired(claims[0].clone());
    assert_eq!((mine.invocation_id, mine.attempt), (queued, 1));
    assert!(
        matches!(&claims[1], Claim::HeldElsewhere { owner, expires_at } if *owner == other.owner && *expires_at == other.expires_at),
        "{:?}",
        claims[1]
    );
    assert_eq!(claims[2], Claim::Finished(Status::Succeeded));
    let taken_over = acquired(claims[3].clone());
    assert_eq!((taken_over.invocation_id, taken_over.attempt), (expired, 2));
    assert_eq!(claims[4], Claim::NotQueued);
    assert_eq!(claims[5], Claim::Missing);
    // The same id twice in one batch is claimed once; the second answer says we hold it.
    assert!(
        matches!(&claims[6], Claim::HeldElsewhere { owner, .. } if owner == "exec-a"),
        "{:?}",
        claims[6]
    );
    let row = db.store.invocation(queued).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.attempts, row.lease_owner.as_deref()),
        (Status::Running, 1, Some("exec-a"))
    );
}

#[tokio::test]
async fn overlapping_batches_of_claims_from_many_executors_give_each_invocation_one_winner() {
    let db = TestDb::new().await;
    let mut ids = queued_invocations(&db, 40).await;
    // Separate pools, each asking for all 40 in another order, at once.
    let executors = join_all((0..6).map(|_| TestDb::connect(&db.url))).await;
    let mut orders = Vec::new();
    for i in 0..executors.len() {
        let by = 7 * i % ids.len();
        ids.rotate_left(by);
        if i % 2 == 1 {
            ids.reverse();
        }
        orders.push(ids.clone());
    }
    let claims =
        join_all(executors.iter().zip(&orders).enumerate().map(|(i, (store, order))| async move {
            store.claim_many(order, &format!("exec-{i}"), Duration::from_secs(30)).await
        }))
        .await;
    let mut winners = std::collections::HashMap::new();
    for (claims, order) in claims.into_iter().zip(&orders) {
        let claims = claims.expect("no batch fails");
        for (claim, id) in claims.into_iter().zip(order) {
            if let Claim::Acquired { lease, .. } = claim {
                assert_eq!(lease.invocation_id, *id);
                assert!(winners.insert(*id, lease.owner).is_none(), "{id} was claimed twice");
            }
        }
    }
    assert_eq!(winners.len(), 40, "every invocation has exactly one winner");
    for (id, owner) in winners {
        let row = db.store.invocation(id).await.unwrap().unwrap();
        assert_eq!((row.attempts, row.lease_owner), (1, Some(owner)));
    }
}

#[tokio::test]
async fn a_batch_of_outcomes_commits_those_whose_lease_is_held_and_discards_the_rest() {
    let db = TestDb::new().await;
    let ids = queued_invocations(&db, 3).await;
    let first = acquired(db.store.claim(ids[0], "exec-a", Duration::from_secs(30)).await.unwrap());
    let stale = claim_with_expired_lease(&db, ids[1], "exec-a").await;
    let fresh = acquired(db.store.claim(ids[1], "exec-b", Duration::from_secs(30)).await.unwrap());
    let third = acquired(db.store.claim(ids[2], "exec-a", Duration::from_secs(30)).await.unwrap());

    let succeeded = Outcome::succeeded(Some(json!({"n": 1})));
    let failed = Outcome::failed(Status::Failed, error("Boom"));
    let logs = Outcome { logs: Some("line\n".to_owned()), ..Outcome::succeeded(None) };
    let rows = db
        .store
        .complete_many(&[(&first, &succeeded), (&stale, &logs), (&third, &failed)])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let row = rows[0].as_ref().expect("the holder of the first lease commits");
    assert_eq!(
        (row.id, row.status, row.result.clone()),
        (ids[0], Status::Succeeded, Some(json!({"n": 1})))
    );
    assert!(row.lease_owner.is_none() && row.completed_at.is_some());
    assert_eq!(rows[1], None, "a stale lease's outcome is discarded");
    let row = rows[2].as_ref().expect("the holder of the third lease commits");
    assert_eq!((row.status, row.error.clone()), (Status::Failed, Some(error("Boom"))));
    // The taken-over row still belongs to its new holder, untouched.
    let row = db.store.invocation(ids[1]).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.lease_owner.as_deref(), row.logs),
        (Status::Running, Some("exec-b"), None)
    );
    assert!(db.store.complete(&fresh, &logs).await.unwrap().is_some());
    // A batch holding something that is not an outcome is refused as a whole.
    let running = Outcome { status: Some(Status::Running), ..Outcome::default() };
    assert!(db.store.complete_many(&[(&first, &running)]).await.is_err());
}

#[tokio::test]
async fn payload_numbers_come_back_from_postgresql_exactly_even_the_largest() {
    // PostgreSQL keeps a jsonb number as the decimal it was given and prints it in full, without
    // an exponent: f64::MAX comes back as 309 digits, which serde_json reads only with its
    // `float_roundtrip` parser (without it: "number out of range", and other numbers off by one
    // unit in the last place).
    let db = TestDb::new().await;
    let (function, _) = db.store.upsert_function(&function("default", "hello")).await.unwrap();
    let numbers = [f64::MAX, -1.797_693_134_862_315_5e308, 0.1, 5e-324, 123_456.789_012_345_67];
    let mut new = invocation(function.record.id);
    new.payload = Some(json!(numbers));
    db.store.create_queued_invocations(std::slice::from_ref(&new)).await.unwrap();
    let row = db.store.invocation(new.id).await.unwrap().expect("the row reads back");
    let read: Vec<f64> = serde_json::from_value(row.payload.unwrap()).unwrap();
    assert_eq!(read, numbers);
}
