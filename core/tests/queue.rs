//! The Redis queue against a real Redis server (`REDIS_URL`; `make test` starts one). Each test
//! works under its own key prefix, so tests run in parallel against one server.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers fail loudly by design

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use kubefaas_core::queue::{
    Abandoned, Completion, Completions, Consumer, Delivery, Job, Notice, Outcome, Queue,
    QueueConfig, QueueStats, Waited,
};
use redis::{Client, ConnectionAddr, aio::MultiplexedConnection};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
};
use uuid::Uuid;

/// Bound on any wait in these tests; only there so a broken queue fails instead of hanging.
const HANG_GUARD: Duration = Duration::from_secs(15);

fn redis_url() -> String {
    std::env::var("REDIS_URL").expect(
        "REDIS_URL is not set: these tests need a real Redis server. Run `make test`, which \
         starts one, or export REDIS_URL=redis://host:port",
    )
}

struct Fixture {
    client: Client,
    config: QueueConfig,
    queue: Queue,
}

async fn fixture() -> Fixture {
    fixture_with(QueueConfig::default()).await
}

async fn fixture_with(config: QueueConfig) -> Fixture {
    let client = Client::open(redis_url()).expect("REDIS_URL is a valid Redis URL");
    let config =
        QueueConfig { prefix: format!("kubefaas-test-{}", Uuid::new_v4().simple()), ..config };
    let queue =
        Queue::connect(client.clone(), &config).await.expect("Redis at REDIS_URL is reachable");
    queue.ensure_group().await.unwrap();
    // A second call finds the group and is fine.
    queue.ensure_group().await.unwrap();
    Fixture { client, config, queue }
}

impl Fixture {
    async fn conn(&self) -> MultiplexedConnection {
        self.client.get_multiplexed_async_connection().await.unwrap()
    }

    async fn completions(&self) -> (Completions, tokio::task::JoinHandle<()>) {
        Completions::start(self.client.clone(), self.queue.keys()).await.unwrap()
    }

    async fn consumer(&self, name: &str) -> Consumer {
        self.queue.consumer(name).await.unwrap()
    }

    async fn enqueue(&self, n: usize) -> Vec<(String, Job)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let job = job();
            out.push((self.queue.enqueue(&job).await.unwrap(), job));
        }
        out
    }

    async fn stats(&self) -> QueueStats {
        self.queue.stats().await.unwrap()
    }

    async fn stream_ids(&self) -> BTreeSet<String> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.queue.keys().stream())
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        reply.ids.into_iter().map(|e| e.id).collect()
    }

    /// Removes this test's keys so a shared development Redis does not fill up.
    async fn cleanup(self) {
        let _: () = redis::cmd("DEL")
            .arg(&self.queue.keys().all()[..])
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
    }
}

fn job() -> Job {
    Job::new(Uuid::new_v4(), Uuid::new_v4(), "default", "hello")
}

fn ids(deliveries: &[Delivery]) -> BTreeSet<String> {
    deliveries.iter().map(|d| d.entry_id.clone()).collect()
}

fn id_ms(entry_id: &str) -> u64 {
    entry_id.split('-').next().unwrap().parse().unwrap()
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {HANG_GUARD:?}"))
}

/// The pause between two looks at a condition that is polled (under [`within`]).
async fn pause() {
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn jobs_held_by_a_dead_consumer_are_all_reclaimed_by_another() {
    let fx = fixture().await;
    let enqueued = fx.enqueue(5).await;

    let mut a = fx.consumer("executor-a").await;
    let held = a.claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(held.len(), 5);
    assert!(held.iter().all(|d| d.deliveries == 1));
    drop(a); // dies without acknowledging anything

    let mut b = fx.consumer("executor-b").await;
    assert!(b.claim(10, Duration::ZERO).await.unwrap().is_empty(), "nothing new to claim");
    let not_idle_yet = b.reclaim(Duration::from_secs(600), 10).await.unwrap();
    assert!(not_idle_yet.deliveries.is_empty());

    let mut reclaimed = Vec::new();
    within("reclaiming every held job", async {
        while reclaimed.len() < 5 {
            pause().await;
            let got = b.reclaim(Duration::from_millis(100), 10).await.unwrap();
            assert!(got.dead_lettered.is_empty());
            reclaimed.extend(got.deliveries);
        }
    })
    .await;

    assert_eq!(ids(&reclaimed), ids(&held));
    let jobs: Vec<&Job> = reclaimed.iter().map(|d| &d.job).collect();
    for (_, job) in &enqueued {
        assert!(jobs.contains(&job), "{job:?} was lost");
    }
    assert!(reclaimed.iter().all(|d| d.deliveries == 2));

    for delivery in &reclaimed {
        assert!(fx.queue.ack(delivery).await.unwrap());
        assert!(!fx.queue.ack(delivery).await.unwrap(), "second ack is a no-op");
    }
    assert_eq!(fx.stats().await.pending, 0);
    fx.cleanup().await;
}

#[tokio::test]
async fn poison_message_ends_in_the_dead_letter_stream_after_max_deliveries() {
    let fx = fixture_with(QueueConfig { max_deliveries: 3, ..QueueConfig::default() }).await;
    let (entry_id, job) = fx.enqueue(1).await.remove(0);

    // Every consumer that takes it "crashes" (never acknowledges); the next one reclaims it.
    let mut first = fx.consumer("executor-1").await;
    let claimed = first.claim(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(claimed[0].deliveries, 1);
    for (n, expected_deliveries) in [(2, Some(2)), (3, Some(3)), (4, None)] {
        let mut next = fx.consumer(&format!("executor-{n}")).await;
        let got = next.reclaim(Duration::ZERO, 10).await.unwrap();
        match expected_deliveries {
            Some(deliveries) => {
                assert_eq!(got.deliveries.len(), 1);
                assert_eq!(got.deliveries[0].deliveries, deliveries);
                assert!(got.dead_lettered.is_empty());
            }
            None => {
                assert!(got.deliveries.is_empty(), "handed out a 4th time");
                assert_eq!(
                    got.dead_lettered,
                    vec![Abandoned {
                        entry_id: entry_id.clone(),
                        job: Some(job.clone()),
                        deliveries: 3
                    }]
                );
            }
        }
    }

    let dead = fx.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].source_id, entry_id);
    assert_eq!(dead[0].deliveries, 3);
    assert!(dead[0].reason.contains("not acknowledged after 3 deliveries"), "{}", dead[0].reason);
    assert_eq!(dead[0].job, Ok(job));

    let stats = fx.stats().await;
    assert_eq!((stats.pending, stats.dead_letters), (0, 1));
    let mut last = fx.consumer("executor-5").await;
    assert_eq!(last.reclaim(Duration::ZERO, 10).await.unwrap(), Default::default());
    fx.cleanup().await;
}

#[tokio::test]
async fn malformed_entry_is_dead_lettered_instead_of_delivered() {
    let fx = fixture().await;
    let bad_id: String = redis::cmd("XADD")
        .arg(fx.queue.keys().stream())
        .arg("*")
        .arg("invocation_id")
        .arg("not-a-uuid")
        .query_async(&mut fx.conn().await)
        .await
        .unwrap();
    let (good_id, _) = fx.enqueue(1).await.remove(0);

    let mut consumer = fx.consumer("executor").await;
    let claimed = consumer.claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(ids(&claimed), BTreeSet::from([good_id]));

    let dead = fx.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].source_id, bad_id);
    assert!(dead[0].reason.contains("invocation_id"), "{}", dead[0].reason);
    assert!(dead[0].job.is_err());
    assert_eq!(fx.stats().await.pending, 1, "only the good job is pending");
    fx.cleanup().await;
}

#[tokio::test]
async fn delayed_retry_comes_back_no_earlier_than_its_due_time() {
    let fx = fixture().await;
    fx.enqueue(2).await;
    let mut consumer = fx.consumer("executor").await;
    let claimed = consumer.claim(2, Duration::from_secs(1)).await.unwrap();
    let (soon, later) = (&claimed[0], &claimed[1]);

    let due = fx
        .queue
        .retry_later(soon, Duration::from_millis(300))
        .await
        .unwrap()
        .expect("the delivery was pending");
    fx.queue
        .retry_later(later, Duration::from_secs(3600))
        .await
        .unwrap()
        .expect("the delivery was pending");
    assert_eq!(
        fx.queue.retry_later(soon, Duration::ZERO).await.unwrap(),
        None,
        "an acknowledged delivery is not scheduled twice"
    );
    let stats = fx.stats().await;
    assert_eq!((stats.pending, stats.delayed), (0, 2));

    let retried = within("the retry to come back", async {
        loop {
            fx.queue.promote_due(10).await.unwrap();
            // The blocking read paces this loop.
            let mut got = consumer.claim(10, Duration::from_millis(50)).await.unwrap();
            if let Some(delivery) = got.pop() {
                break delivery;
            }
        }
    })
    .await;

    // The stream entry id carries the server time it was added at.
    assert!(
        id_ms(&retried.entry_id) >= due,
        "promoted at {} before its due time {due}",
        id_ms(&retried.entry_id)
    );
    assert_eq!(retried.job.invocation_id, soon.job.invocation_id);
    assert_eq!(retried.job, soon.job, "the job comes back as it was; the row counts attempts");

    assert_eq!(fx.queue.promote_due(10).await.unwrap(), 0, "the job due in an hour stays put");
    assert_eq!(fx.stats().await.delayed, 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn trimming_removes_acknowledged_entries_and_keeps_pending_and_undelivered_ones() {
    let fx = fixture().await;
    let entries: Vec<String> = fx.enqueue(6).await.into_iter().map(|(id, _)| id).collect();
    let mut consumer = fx.consumer("executor").await;
    let claimed = consumer.claim(4, Duration::from_secs(1)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    for i in [0, 1, 3] {
        fx.queue.ack(&claimed[i]).await.unwrap();
    }
    let from = |i: usize| entries[i..].iter().cloned().collect::<BTreeSet<_>>();

    // Entry 2 is pending: it and everything after stay, even the acknowledged entry 3.
    assert_eq!(fx.queue.trim().await.unwrap(), 2);
    assert_eq!(fx.stream_ids().await, from(2));

    // Nothing pending: trimmed up to the first undelivered entry (4).
    fx.queue.ack(&claimed[2]).await.unwrap();
    assert_eq!(fx.queue.trim().await.unwrap(), 2);
    assert_eq!(fx.stream_ids().await, from(4));

    // Everything delivered and acknowledged: the stream empties, the group keeps working.
    for delivery in consumer.claim(10, Duration::from_secs(1)).await.unwrap() {
        fx.queue.ack(&delivery).await.unwrap();
    }
    assert_eq!(fx.queue.trim().await.unwrap(), 2);
    assert!(fx.stream_ids().await.is_empty());
    assert_eq!(fx.queue.trim().await.unwrap(), 0);

    let (after, _) = fx.enqueue(1).await.remove(0);
    let claimed = consumer.claim(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(ids(&claimed), BTreeSet::from([after]));
    fx.cleanup().await;
}

#[tokio::test]
async fn stats_count_each_state_a_job_can_be_in() {
    let fx = fixture().await;
    assert_eq!(fx.stats().await, QueueStats::default());

    fx.enqueue(5).await;
    let mut consumer = fx.consumer("executor").await;
    let claimed = consumer.claim(4, Duration::from_secs(1)).await.unwrap();
    fx.queue.ack(&claimed[0]).await.unwrap();
    fx.queue.retry_later(&claimed[1], Duration::from_secs(3600)).await.unwrap();
    assert!(fx.queue.dead_letter(&claimed[2], "function not found", 1).await.unwrap());
    assert!(
        !fx.queue.dead_letter(&claimed[2], "function not found", 1).await.unwrap(),
        "a handled delivery is not dead-lettered twice"
    );

    let stats = fx.stats().await;
    assert_eq!(stats.stream_length, 5);
    assert_eq!(stats.undelivered, 1);
    assert_eq!(stats.pending, 1);
    assert_eq!(stats.delayed, 1);
    assert_eq!(stats.dead_letters, 1);
    assert_eq!(stats.depth(), 3);
    let pending_age = stats.oldest_pending_age_ms.expect("one entry is pending");
    let undelivered_age = stats.oldest_undelivered_age_ms.expect("one entry is undelivered");
    assert!(pending_age >= undelivered_age, "the pending entry was enqueued first");

    let dead = fx.queue.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].reason, "function not found");
    assert_eq!(dead[0].deliveries, 1);
    assert_eq!(dead[0].job.as_ref().ok(), Some(&claimed[2].job));
    fx.cleanup().await;
}

#[tokio::test]
async fn blocking_claim_returns_when_a_job_arrives() {
    let fx = fixture().await;
    let mut idle = fx.consumer("idle").await;
    assert!(
        idle.claim(10, Duration::from_millis(50)).await.unwrap().is_empty(),
        "an empty queue yields nothing once the block ends"
    );

    // The consumer connects through a proxy, so the test can tell its connection on the server.
    let proxy = Proxy::start(&fx.client).await;
    let proxied = Queue::connect(proxy.client(&fx.client), &fx.config).await.unwrap();
    let mut consumer = proxied.consumer("executor").await.unwrap();
    let waiting = tokio::spawn(async move {
        let claimed = consumer.claim(10, Duration::from_secs(60)).await.unwrap();
        (consumer, claimed)
    });
    // Enqueue only once the server shows the read blocked, so it is known to wake on arrival.
    let mut conn = fx.conn().await;
    within("the read to block on the server", async {
        loop {
            let clients: String =
                redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
            let ours = proxy.upstream_addrs();
            let blocked = clients.lines().any(|line| {
                let field = |name: &str| {
                    line.split(' ').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                };
                field("addr").is_some_and(|a| ours.iter().any(|o| o == a))
                    && field("flags").is_some_and(|f| f.contains('b'))
            });
            if blocked {
                break;
            }
            pause().await;
        }
    })
    .await;
    // The shared connection is not held up by the blocked read.
    assert_eq!(proxied.stats().await.unwrap().undelivered, 0);
    let (entry_id, job) = fx.enqueue(1).await.remove(0);

    let (_consumer, claimed) = within("the blocked claim to return", waiting).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((&claimed[0].entry_id, &claimed[0].job), (&entry_id, &job));
    fx.cleanup().await;
}

/// A fake store for completion tests: the "row" and how often it was looked at.
#[derive(Default)]
struct Store {
    status: Mutex<Option<String>>,
    checks: AtomicUsize,
    checked: Notify,
}

impl Store {
    fn finish(&self, status: &str) {
        *self.status.lock().unwrap() = Some(status.to_owned());
    }

    async fn check(&self) -> Result<Option<String>, std::convert::Infallible> {
        let status = self.status.lock().unwrap().clone();
        self.checks.fetch_add(1, Ordering::SeqCst);
        self.checked.notify_one();
        Ok(status)
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }
}

/// Starts a waiter in the background and returns once it has checked the store once (and so is
/// registered).
async fn waiter(
    completions: &Completions,
    id: Uuid,
    store: &Arc<Store>,
) -> tokio::task::JoinHandle<Waited<String>> {
    let (completions, waiting_store) = (completions.clone(), Arc::clone(store));
    let checked = store.checked.notified();
    let task = tokio::spawn(async move {
        completions.wait(id, Duration::from_secs(600), || waiting_store.check()).await.unwrap()
    });
    within("the waiter's first check", checked).await;
    assert_eq!(store.checks(), 1);
    task
}

#[tokio::test]
async fn completion_published_before_the_waiter_subscribed_is_not_missed() {
    let fx = fixture().await;
    let id = Uuid::new_v4();
    let store = Arc::new(Store::default());
    store.finish("Succeeded");
    fx.queue.publish_completion(&Completion::bare(id, "Succeeded")).await.unwrap();

    let (completions, listener) = fx.completions().await;
    let waited =
        within("the wait", completions.wait(id, Duration::from_secs(600), || store.check()))
            .await
            .unwrap();
    assert_eq!(waited, Waited::Finished("Succeeded".to_owned()));
    assert_eq!(store.checks(), 1);
    assert_eq!(completions.waiting(), 0);

    drop(completions);
    within("the listener to stop", listener).await.unwrap();
    fx.cleanup().await;
}

#[tokio::test]
async fn completion_published_after_the_waiter_registered_wakes_it() {
    let fx = fixture().await;
    let (completions, _listener) = fx.completions().await;
    let id = Uuid::new_v4();
    let store = Arc::new(Store::default());
    let other = Arc::new(Store::default());
    let task = waiter(&completions, id, &store).await;
    let other_task = waiter(&completions, Uuid::new_v4(), &other).await;
    assert_eq!(completions.waiting(), 2);

    store.finish("Failed");
    fx.queue.publish_completion(&Completion::bare(id, "Failed")).await.unwrap();

    // The deadline is ten minutes away: only the published message can end this wait in time.
    let waited = within("the waiter to wake", task).await.unwrap();
    assert_eq!(waited, Waited::Finished("Failed".to_owned()));
    assert_eq!(store.checks(), 2);
    assert_eq!(other.checks(), 1, "a waiter for another invocation sleeps on");
    other_task.abort();
    fx.cleanup().await;
}

#[tokio::test]
async fn notice_subscribers_hear_every_completion_and_a_resync_after_reconnect() {
    let fx = fixture().await;
    let proxy = Proxy::start(&fx.client).await;
    let (completions, _listener) =
        Completions::start(proxy.client(&fx.client), fx.queue.keys()).await.unwrap();
    let mut notices = completions.notices();

    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    fx.queue.publish_completion(&Completion::bare(first, "succeeded")).await.unwrap();
    fx.queue.publish_completion(&Completion::bare(second, "failed")).await.unwrap();
    let heard = within("the first notice", notices.recv()).await.unwrap();
    assert!(matches!(&heard, Notice::Completed(c) if c.id == first && c.status == "succeeded"));
    let heard = within("the second notice", notices.recv()).await.unwrap();
    assert!(matches!(&heard, Notice::Completed(c) if c.id == second && c.status == "failed"));

    proxy.cut();
    assert_eq!(within("the resync notice", notices.recv()).await.unwrap(), Notice::Resync);
    fx.cleanup().await;
}

#[tokio::test]
async fn a_waiter_registered_ahead_hears_the_outcome_without_asking_the_store() {
    let fx = fixture().await;
    let (completions, _listener) = fx.completions().await;
    let (small, large) = (Uuid::new_v4(), Uuid::new_v4());
    let expected_small = completions.expect(small);
    let expected_large = completions.expect(large);
    assert_eq!(completions.waiting(), 2);

    // Announced before anyone waits: the registration keeps it.
    let outcome = Outcome { result: serde_json::json!({"n": 1}), error: None };
    fx.queue
        .publish_completion(&Completion::bare(small, "succeeded").with_outcome(outcome.clone()))
        .await
        .unwrap();
    let big = Outcome { result: "x".repeat(Outcome::MAX_ANNOUNCED_BYTES).into(), error: None };
    fx.queue
        .publish_completion(&Completion::bare(large, "succeeded").with_outcome(big))
        .await
        .unwrap();

    let heard = within(
        "the small outcome",
        expected_small.wait(Duration::from_secs(600), |announced| async move {
            Ok::<_, ()>(Some(announced))
        }),
    )
    .await
    .unwrap();
    let Waited::Finished(Some(announced)) = heard else { panic!("{heard:?}") };
    assert_eq!((announced.id, announced.outcome), (small, Some(outcome)));

    // A large outcome is not announced: the waiter is woken and must read the store.
    let heard = within(
        "the large one",
        expected_large.wait(Duration::from_secs(600), |announced| async move {
            Ok::<_, ()>(Some(announced))
        }),
    )
    .await
    .unwrap();
    assert_eq!(heard, Waited::Finished(None));
    assert_eq!(completions.waiting(), 0, "waiters unregister when done");
    fx.cleanup().await;
}

#[tokio::test]
async fn waiter_times_out_when_nothing_completes() {
    let fx = fixture().await;
    let (completions, _listener) = fx.completions().await;
    let store = Store::default();
    let waited = within(
        "the timeout",
        completions.wait(Uuid::new_v4(), Duration::from_millis(100), || store.check()),
    )
    .await
    .unwrap();
    assert_eq!(waited, Waited::TimedOut);
    assert_eq!(store.checks(), 2, "checked on entry and at the deadline");
    assert_eq!(completions.waiting(), 0);
    fx.cleanup().await;
}

#[tokio::test]
async fn waiters_recheck_the_store_after_the_listener_reconnects() {
    let fx = fixture().await;
    let proxy = Proxy::start(&fx.client).await;
    let (completions, _listener) =
        Completions::start(proxy.client(&fx.client), fx.queue.keys()).await.unwrap();
    let id = Uuid::new_v4();
    let store = Arc::new(Store::default());
    let task = waiter(&completions, id, &store).await;

    // The completion is committed while the listener's connection is cut and never published:
    // only the re-check after reconnecting can find it before the distant deadline.
    store.finish("Succeeded");
    proxy.cut();

    let waited = within("the waiter to re-check", task).await.unwrap();
    assert_eq!(waited, Waited::Finished("Succeeded".to_owned()));
    fx.cleanup().await;
}

#[tokio::test]
async fn consumer_reconnects_after_losing_its_connection() {
    let fx = fixture().await;
    let proxy = Proxy::start(&fx.client).await;
    let proxied = Queue::connect(proxy.client(&fx.client), &fx.config).await.unwrap();
    let mut consumer = proxied.consumer("executor").await.unwrap();
    assert!(consumer.claim(1, Duration::ZERO).await.unwrap().is_empty());

    proxy.cut();
    let (entry_id, _) = fx.enqueue(1).await.remove(0);
    let mut failed_claims = 0;
    let claimed = within("a claim on a new connection", async {
        loop {
            match consumer.claim(10, Duration::from_millis(50)).await {
                Ok(claimed) if !claimed.is_empty() => break claimed,
                Ok(_) => {}
                Err(_) => failed_claims += 1,
            }
        }
    })
    .await;
    assert!(failed_claims <= 1, "{failed_claims} claims failed after one cut");
    assert_eq!(ids(&claimed), BTreeSet::from([entry_id]));
    fx.cleanup().await;
}

/// A TCP proxy in front of Redis whose connections the test can cut, to simulate a network
/// failure of one client without touching anyone else's connections.
struct Proxy {
    port: u16,
    cut: watch::Sender<u64>,
    /// Local addresses of the proxy's connections to Redis, as `CLIENT LIST` shows them.
    upstream: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start(direct: &Client) -> Self {
        let target = match direct.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            other => panic!("the reconnect test needs a plain TCP REDIS_URL, not {other:?}"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(0);
        let cuts = cut.subscribe();
        let upstream = Arc::new(Mutex::new(Vec::new()));
        let addrs = Arc::clone(&upstream);
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                let target = target.clone();
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                let addrs = Arc::clone(&addrs);
                tokio::spawn(async move {
                    let mut outbound = TcpStream::connect(target).await.unwrap();
                    let local = outbound.local_addr().unwrap().to_string();
                    addrs.lock().unwrap().push(local);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { port, cut, upstream }
    }

    /// A client like `direct` that connects through the proxy.
    fn client(&self, direct: &Client) -> Client {
        let info = direct
            .get_connection_info()
            .clone()
            .set_addr(ConnectionAddr::Tcp("127.0.0.1".to_owned(), self.port));
        Client::open(info).unwrap()
    }

    fn upstream_addrs(&self) -> Vec<String> {
        self.upstream.lock().unwrap().clone()
    }

    /// Drops every connection open through the proxy right now.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}
