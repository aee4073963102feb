//! Accepted means done, at scale: 10,000 asynchronous `POST /invoke` through the real binaries
//! (standalone API server, operator, two `local` executors, gateway) on a PostgreSQL and a Redis
//! of the test's own, while, one after another: an executor is SIGKILLed, then every executor,
//! then the operator, Redis restarts with its data wiped, and PostgreSQL is stopped for 60 s.
//!
//! Every invocation answered 202 must end `succeeded` with its own result. A request the gateway
//! could not keep (503 while PostgreSQL is down) is not accepted, and the client sends it again,
//! as a client would. Each run of the function appends its invocation id to a file, so the test
//! counts executions rather than inferring them, and reports how many ran more than once.
//!
//! Needs `DATABASE_URL` and `REDIS_URL` only for the binaries' defaults (`make test` provides
//! them); the PostgreSQL server binaries and `redis-server` (`make deps`) and the workspace's
//! binaries built.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use kubefaas_core::store::{InvocationQuery, Status, Store, StoreConfig};
use serde_json::{Value, json};
use support::{PATIENCE, Platform, PrivatePostgres, PrivateRedis};
use uuid::Uuid;

const COUNT: usize = 10_000;
/// Clients sending at once.
const CLIENTS: usize = 16;
/// How long PostgreSQL stays down.
const OUTAGE: Duration = Duration::from_secs(60);

const HANDLER: &str = concat!(
    "import os\n",
    "def handler(event, context):\n",
    "    with open(os.environ['EXECUTIONS'], 'a') as f:\n",
    "        f.write(context.aws_request_id + '\\n')\n",
    "    return {'n': event['n']}\n",
);

/// Deploys `echo` (the handler above) and waits until it is Ready; returns the file each run
/// appends its invocation id to.
async fn deploy_echo(platform: &Platform) -> std::path::PathBuf {
    let executions = platform.dir.join("executions");
    platform
        .apply(&format!(
            "apiVersion: kubefaas.io/v1alpha1\nkind: Function\nmetadata:\n  name: echo\nspec:\n  runtime: python\n  handler: main.handler\n  code:\n    inline: {}\n  env:\n    EXECUTIONS: {}\n  maxConcurrency: 16\n",
            serde_json::to_string(HANDLER).unwrap(),
            executions.display()
        ))
        .await;
    platform.wait_phase("function/echo", "Ready").await;
    executions
}

/// Sends `POST /invoke` for `n` until it is accepted; what a careful client does with 503, 429
/// and a refused or cut connection (nothing was accepted, so sending again creates no duplicate).
async fn submit(client: &reqwest::Client, base: &str, n: usize) -> Uuid {
    let body = serde_json::to_vec(&json!({"function": "echo", "payload": {"n": n}})).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "invocation {n} was never accepted");
        let sent = client
            .post(format!("{base}/invoke"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(reply) if reply.status().as_u16() == 202 => {
                let bytes = reply.bytes().await.unwrap();
                let accepted: Value = serde_json::from_slice(&bytes).unwrap();
                return accepted["invocation_id"].as_str().unwrap().parse().unwrap();
            }
            // Unavailable (PostgreSQL is down), or the function's backlog is full.
            Ok(reply) if matches!(reply.status().as_u16(), 503 | 429) => {
                assert!(reply.headers().contains_key("retry-after"), "it says when to retry");
            }
            Ok(reply) => {
                let status = reply.status();
                panic!("invocation {n}: {status} {:?}", reply.text().await);
            }
            // The gateway runs throughout; a connection can still be cut by a timeout.
            Err(error) => eprintln!("invocation {n}: {error}; sending again"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until at least `count` invocations have been accepted.
async fn accepted_at_least(accepted: &AtomicUsize, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while accepted.load(Ordering::Relaxed) < count {
        assert!(Instant::now() < deadline, "only {accepted:?} of {count} accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_accepted_invocations_all_succeed_through_process_redis_and_database_faults() {
    let scratch = std::env::temp_dir().join(format!("kubefaas-10k-{}", Uuid::new_v4().simple()));
    let mut redis = PrivateRedis::start(scratch.join("redis")).await;
    let postgres = PrivatePostgres::start(scratch.join("postgres")).await;
    let mut platform = Platform::start_on(&postgres.url(), redis.url(), false).await;
    platform.start_executor().await;
    let executions = deploy_echo(&platform).await;
    let gateway = platform.start_gateway().await;
    let base = format!("http://{gateway}");

    // The clients: each sends its share of the 10,000 and keeps what was accepted.
    let started = Instant::now();
    let accepted = Arc::new(AtomicUsize::new(0));
    let client =
        kubefaas_core::http::client_builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut senders = Vec::new();
    for first in 0..CLIENTS {
        let (client, base, accepted) = (client.clone(), base.clone(), Arc::clone(&accepted));
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in (first..COUNT).step_by(CLIENTS) {
                ids.push((submit(&client, &base, n).await, n));
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            ids
        }));
    }

    // The faults, one after another as the stream goes on.
    accepted_at_least(&accepted, COUNT * 10 / 100).await;
    let mut executor = platform.executors.remove(0);
    executor.kill().await.unwrap();
    platform.start_executor().await;
    eprintln!("{:?}: one executor SIGKILLed and replaced", started.elapsed());

    accepted_at_least(&accepted, COUNT * 25 / 100).await;
    for mut executor in std::mem::take(&mut platform.executors) {
        executor.kill().await.unwrap();
    }
    platform.start_executor().await;
    platform.start_executor().await;
    eprintln!("{:?}: every executor SIGKILLed, two new ones started", started.elapsed());

    accepted_at_least(&accepted, COUNT * 40 / 100).await;
    platform.operator.take().unwrap().kill().await.unwrap();
    platform.start_operator();
    eprintln!("{:?}: the operator SIGKILLed and restarted", started.elapsed());

    accepted_at_least(&accepted, COUNT * 55 / 100).await;
    redis.restart().await;
    eprintln!("{:?}: Redis restarted with its data wiped", started.elapsed());

    accepted_at_least(&accepted, COUNT * 70 / 100).await;
    postgres.stop().await;
    eprintln!("{:?}: PostgreSQL stopped", started.elapsed());
    tokio::time::sleep(OUTAGE).await; // the fault itself lasts this long; nothing waits on it
    postgres.start_again().await;
    eprintln!("{:?}: PostgreSQL started again", started.elapsed());

    let mut ids = BTreeMap::new();
    for sender in senders {
        ids.extend(sender.await.unwrap());
    }
    assert_eq!(ids.len(), COUNT, "each accepted invocation has its own id");
    let submitted = started.elapsed();

    // Every accepted invocation ends, succeeded, with its own result.
    let store = Store::connect(&StoreConfig::new(platform.database_url.clone())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let rows = loop {
        let rows = all_rows(&store).await;
        let done = rows.values().filter(|row| row.0.is_terminal()).count();
        if done >= COUNT {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {COUNT} finished; by status: {:?}\n{}",
            by_status(&rows),
            platform.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let finished = started.elapsed();
    for (id, n) in &ids {
        let (status, result) = rows.get(id).unwrap_or_else(|| panic!("{id} has no row"));
        assert_eq!(*status, Status::Succeeded, "invocation {n} ({id}): {result:?}");
        assert_eq!(result.as_ref().map(|r| r["n"].clone()), Some(json!(n)), "{id}'s own result");
    }
    assert_eq!(rows.len(), COUNT, "no invocation was recorded that was not accepted");

    let log = std::fs::read_to_string(&executions).unwrap();
    let runs: Vec<&str> = log.lines().collect();
    let distinct: BTreeSet<&str> = runs.iter().copied().collect();
    assert_eq!(distinct.len(), COUNT, "every invocation ran");
    eprintln!(
        "{COUNT} accepted in {submitted:?}, all succeeded after {finished:?}; {} executions, {} \
         of them repeats of an attempt cut short by a fault",
        runs.len(),
        runs.len() - COUNT
    );
    drop(platform);
    drop(postgres);
    let _ = std::fs::remove_dir_all(&scratch);
}

/// `Invocation` objects through the API server's watch expiring under load. The server keeps
/// only 100 changes and cuts every watch after 2 s, and the operator is stopped (SIGSTOP) for a
/// while now and then, so it keeps resuming from versions the server no longer has (410), and
/// relists, in pages, while objects keep being created with names that sort anywhere. Every
/// object must still run once and show its own result, and no reconcile request may name an
/// object the operator's store lacks. The two ways objects were once lost here are pinned where
/// they lived, deterministically: `operator/src/trigger.rs` (triggers ahead of the store) and
/// `standalone/tests/kube_client.rs` (later pages of a list served from the current state). This
/// test is the whole under load; on its own it would not catch either (a later relist heals a
/// miss while watches keep expiring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_objects_all_run_while_the_operators_watch_keeps_expiring() {
    const OBJECTS: usize = 1_200;
    const BATCH: usize = 100;
    let platform = Platform::start_configured(
        &support::env("DATABASE_URL"),
        support::env("REDIS_URL"),
        false,
        &["--history", "100", "--max-watch-seconds", "2"],
    )
    .await;
    let executions = deploy_echo(&platform).await;

    let operator = platform.operator.as_ref().unwrap().id().unwrap().to_string();
    let signal = |name: &'static str| {
        let operator = operator.clone();
        async move {
            let status =
                tokio::process::Command::new("kill").args([name, &operator]).status().await;
            assert!(status.unwrap().success(), "kill {name} {operator}");
        }
    };
    for batch in 0..OBJECTS / BATCH {
        // Names that sort anywhere among those already listed.
        let manifests: String = (batch * BATCH..(batch + 1) * BATCH)
            .map(|n| {
                let name = format!("w{}-{n}", &Uuid::new_v4().simple().to_string()[..6]);
                format!("---\napiVersion: kubefaas.io/v1alpha1\nkind: Invocation\nmetadata:\n  name: {name}\nspec:\n  functionRef:\n    name: echo\n  payload: {{\"n\": {n}}}\n")
            })
            .collect();
        let stop = batch % 3 == 1;
        if stop {
            signal("-STOP").await;
        }
        let path = platform.dir.join(format!("batch-{batch}.yaml"));
        std::fs::write(&path, manifests).unwrap();
        platform.kubectl_ok(&["create", "-f", path.to_str().unwrap()]).await;
        if stop {
            signal("-CONT").await;
        }
    }

    // Every object ends Succeeded with its own result.
    let deadline = Instant::now() + PATIENCE;
    loop {
        // One unpaged list: with so short a history, kubectl's own pages would expire too.
        let listed = platform.kubectl_ok(&["get", "invocations", "-o", "json", "--chunk-size=0"]);
        let listed: Value = serde_json::from_str(&listed.await).unwrap();
        let items = listed["items"].as_array().unwrap();
        assert_eq!(items.len(), OBJECTS);
        let succeeded = items.iter().filter(|i| i["status"]["phase"] == "Succeeded").count();
        if succeeded == OBJECTS {
            for item in items {
                assert_eq!(item["status"]["result"]["n"], item["spec"]["payload"]["n"], "{item}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {succeeded} of {OBJECTS} Invocations show Succeeded\n{}",
            platform.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let operator_log = std::fs::read_dir(&platform.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("operator-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    let expired = operator_log.matches("too old resource version").count();
    assert!(expired > 0, "the watch never expired, so this tested nothing:\n{operator_log}");
    assert!(!operator_log.contains("not found in local store"), "{operator_log}");
    let log = std::fs::read_to_string(&executions).unwrap();
    let runs: Vec<&str> = log.lines().collect();
    let distinct: BTreeSet<&str> = runs.iter().copied().collect();
    assert_eq!(distinct.len(), OBJECTS, "every invocation ran");
    eprintln!(
        "{OBJECTS} Invocation objects, {expired} watch expiries seen by the operator, {} \
         executions ({} repeated)",
        runs.len(),
        runs.len() - OBJECTS
    );
}

/// Every invocation's status and result, by id.
async fn all_rows(store: &Store) -> BTreeMap<Uuid, (Status, Option<Value>)> {
    let mut rows = BTreeMap::new();
    let mut offset = 0;
    loop {
        let query =
            InvocationQuery { limit: Some(1000), offset: Some(offset), ..Default::default() };
        let page = match store.list_invocations(&query).await {
            Ok(page) => page,
            Err(error) => panic!("listing invocations: {error}"),
        };
        let len = page.len();
        rows.extend(page.into_iter().map(|row| (row.id, (row.status, row.result))));
        if len < 1000 {
            return rows;
        }
        offset += 1000;
    }
}

fn by_status(rows: &BTreeMap<Uuid, (Status, Option<Value>)>) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (status, _) in rows.values() {
        *counts.entry(status.as_str()).or_default() += 1;
    }
    counts
}
