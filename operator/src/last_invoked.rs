//! `status.lastInvokedAt` of Functions: when each function was last invoked, whichever way it
//! was (an Invocation resource, the gateway's asynchronous or synchronous invoke).
//!
//! The time comes from PostgreSQL: it is the `created_at` of the function's newest invocation
//! row. The [`Tracker`] learns of invocations three ways:
//! - the executor publishes every completion, and the operator already reads the row of each one
//!   it hears of (`follow_completions` in `lib.rs`); that row's function and `created_at` are
//!   handed over here, so synchronous invocations, which have no object, count too;
//! - every reconcile of a Function hands over what the object shows and the newest `created_at`
//!   among the function's rows (one index probe), so a restarted operator catches up;
//! - when the completion listener says notices may have been missed (it reconnected, or fell
//!   behind), the newest `created_at` of every tracked function is read at once, at most once per
//!   flush interval.
//!
//! An invocation is seen when it finishes (or at the next reconcile), so a long-running one
//! shows up late; the time shown is still when it was made.
//!
//! Writes are coalesced. A hot function may run thousands of times a second; its status is
//! written at most once per flush interval ([`DEFAULT_FLUSH_INTERVAL`] unless configured) by
//! each replica, always with the newest time seen. The first invocation after a quiet spell is
//! written at once.
//!
//! How the write coexists with the function controller and with other replicas:
//! - it is a server-side apply of `status.lastInvokedAt` alone, under a field manager of its own
//!   ([`names::LAST_INVOKED_FIELD_MANAGER`]); the function controller's status applies leave the
//!   field out, so neither removes what the other owns, and neither has to repeat the other's;
//! - the time only moves forward: the writer reads the Function, skips the write when it already
//!   shows that second or a later one, and applies with the `resourceVersion` and `uid` it read
//!   as preconditions, so a write that races another writer fails with a conflict and is redone
//!   from a fresh read instead of putting an older time back, and a Function deleted and created
//!   again under the same name never gets its predecessor's time.
//!
//! Every replica hears every completion and reads the same rows, so replicas converge on the
//! same time; between them they write at most once per interval each.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use kubefaas_core::{resources::Function, store::Store};
use serde_json::json;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{metrics::Metrics, names};

/// Default of `--last-invoked-flush-seconds`: how often, at most, one replica writes one
/// function's `lastInvokedAt`. Fifteen seconds keeps a function that runs all the time to four
/// status writes (and four reconciles they trigger) a minute, while a function invoked after a
/// quiet spell still shows it within a second or so.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(15);

/// Status writes of one flush made at the same time.
const WRITERS: usize = 4;
/// Reads and applies of one write that loses a race with another writer of the Function.
const CONFLICT_ATTEMPTS: usize = 3;
/// Functions per catch-up query.
const CATCH_UP_BATCH: usize = 1000;
/// How long the flusher sleeps with nothing pending (anything new wakes it anyway).
const IDLE: Duration = Duration::from_secs(3600);

/// A Function as the tracker knows it: the uid (which is also its row's id) and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FunctionRef {
    pub(crate) uid: Uuid,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// A write the flusher is to make: show `at` in `function`'s status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Flush {
    pub(crate) function: FunctionRef,
    pub(crate) at: Timestamp,
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// The object now shows this time (the one written, or a later one found there).
    Shown(Timestamp),
    /// The Function is gone, or is another one by now (a new uid): stop tracking it.
    Gone,
    /// Not written; try again after the interval.
    Failed,
}

/// `at` to the second, the precision of a `metav1.Time`: comparing finer times with what the
/// object shows would make every write look stale. `None` outside the range a `Time` can hold.
pub(crate) fn whole_seconds(at: DateTime<Utc>) -> Option<Timestamp> {
    Timestamp::from_second(at.timestamp()).ok()
}

fn shown_in(function: &Function) -> Option<Timestamp> {
    let shown = function.status.as_ref()?.last_invoked_at.as_ref()?;
    Timestamp::from_second(shown.0.as_second()).ok()
}

/// The tracker's bookkeeping, without any I/O: per function, the newest invocation time seen and
/// the newest one known to be shown, and when a write or a catch-up is due.
#[derive(Debug)]
pub(crate) struct Coalescer {
    interval: Duration,
    functions: HashMap<Uuid, Tracked>,
    /// Notices may have been missed since this was set.
    catch_up_wanted: bool,
    last_catch_up: Option<Instant>,
}

#[derive(Debug)]
struct Tracked {
    namespace: String,
    name: String,
    /// Newest invocation time seen.
    newest: Option<Timestamp>,
    /// Newest time known to be in the object's status.
    shown: Option<Timestamp>,
    /// When this replica last set out to write it.
    attempted: Option<Instant>,
}

impl Tracked {
    /// The time to write, while the object does not show it yet.
    fn pending(&self) -> Option<Timestamp> {
        self.newest.filter(|newest| self.shown.is_none_or(|shown| *newest > shown))
    }

    /// When a pending write may be made: at once, or an interval after the last attempt.
    fn due_at(&self, interval: Duration, now: Instant) -> Option<Instant> {
        self.pending()?;
        Some(self.attempted.map_or(Some(now), |at| at.checked_add(interval))?.max(now))
    }
}

impl Coalescer {
    pub(crate) fn new(interval: Duration) -> Self {
        Self { interval, functions: HashMap::new(), catch_up_wanted: false, last_catch_up: None }
    }

    fn entry(&mut self, function: &FunctionRef) -> &mut Tracked {
        let tracked = self.functions.entry(function.uid).or_insert_with(|| Tracked {
            namespace: function.namespace.clone(),
            name: function.name.clone(),
            newest: None,
            shown: None,
            attempted: None,
        });
        if tracked.name != function.name || tracked.namespace != function.namespace {
            tracked.namespace.clone_from(&function.namespace);
            tracked.name.clone_from(&function.name);
        }
        tracked
    }

    /// `function` was invoked at `at`. Returns whether it needs a write now that it did not need
    /// before (the flusher should look again); a function already waiting for its write just
    /// gets the newer time.
    pub(crate) fn invoked(&mut self, function: &FunctionRef, at: Timestamp) -> bool {
        let tracked = self.entry(function);
        let was_pending = tracked.pending().is_some();
        tracked.newest = tracked.newest.max(Some(at));
        !was_pending && tracked.pending().is_some()
    }

    /// `function`'s object shows `at` (`None`: no time yet); registers it when new.
    pub(crate) fn shown(&mut self, function: &FunctionRef, at: Option<Timestamp>) {
        let tracked = self.entry(function);
        tracked.shown = tracked.shown.max(at);
    }

    /// The writes due at `now`: functions whose newest time is not shown yet and which this
    /// replica has not set out to write within the interval. Each is marked as attempted now.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Flush> {
        let interval = self.interval;
        self.functions
            .iter_mut()
            .filter(|(_, tracked)| tracked.due_at(interval, now).is_some_and(|due| due <= now))
            .filter_map(|(uid, tracked)| {
                tracked.attempted = Some(now);
                Some(Flush {
                    function: FunctionRef {
                        uid: *uid,
                        namespace: tracked.namespace.clone(),
                        name: tracked.name.clone(),
                    },
                    at: tracked.pending()?,
                })
            })
            .collect()
    }

    /// Takes in how a write of `flush` ended.
    pub(crate) fn record(&mut self, flush: &Flush, written: Written) {
        match written {
            Written::Shown(at) => self.shown(&flush.function, Some(at)),
            Written::Gone => self.forget(flush.function.uid),
            Written::Failed => {}
        }
    }

    /// Stops tracking a function (it was deleted).
    pub(crate) fn forget(&mut self, uid: Uuid) {
        self.functions.remove(&uid);
    }

    /// Notices may have been missed: the newest times should be read from PostgreSQL. Returns
    /// whether this is news (the flusher should look again).
    pub(crate) fn want_catch_up(&mut self) -> bool {
        !std::mem::replace(&mut self.catch_up_wanted, true)
    }

    /// The functions to read from PostgreSQL, when a catch-up is wanted and the last one was at
    /// least an interval ago (notices are missed in bursts, so this stays bounded).
    pub(crate) fn catch_up(&mut self, now: Instant) -> Option<Vec<FunctionRef>> {
        let allowed = self.catch_up_at(now).is_some_and(|at| at <= now);
        if !allowed {
            return None;
        }
        self.catch_up_wanted = false;
        self.last_catch_up = Some(now);
        Some(
            self.functions
                .iter()
                .map(|(uid, tracked)| FunctionRef {
                    uid: *uid,
                    namespace: tracked.namespace.clone(),
                    name: tracked.name.clone(),
                })
                .collect(),
        )
    }

    fn catch_up_at(&self, now: Instant) -> Option<Instant> {
        if !self.catch_up_wanted {
            return None;
        }
        Some(self.last_catch_up.map_or(Some(now), |at| at.checked_add(self.interval))?.max(now))
    }

    /// When the next write or catch-up is due; `None` when nothing is pending.
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        self.functions
            .values()
            .filter_map(|tracked| tracked.due_at(self.interval, now))
            .chain(self.catch_up_at(now))
            .min()
    }
}

/// Shared between the completion follower, the function controller and the flusher.
#[derive(Debug)]
pub(crate) struct Tracker {
    state: Mutex<Coalescer>,
    wake: Notify,
    /// The one namespace the operator watches, if it watches one.
    namespace: Option<String>,
}

impl Tracker {
    pub(crate) fn new(interval: Duration, namespace: Option<String>) -> Self {
        Self { state: Mutex::new(Coalescer::new(interval)), wake: Notify::new(), namespace }
    }

    fn state(&self) -> MutexGuard<'_, Coalescer> {
        // Every update is one call that leaves the map consistent, even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An invocation of `function` was made at `created_at` (its row's time).
    pub(crate) fn invoked(&self, function: FunctionRef, created_at: DateTime<Utc>) {
        if self.namespace.as_deref().is_some_and(|watched| watched != function.namespace) {
            return;
        }
        let Some(at) = whole_seconds(created_at) else {
            tracing::warn!(function = %function.name, namespace = %function.namespace, %created_at, "invocation time out of range; ignored");
            return;
        };
        if self.state().invoked(&function, at) {
            self.wake.notify_one();
        }
    }

    /// Completion notices may have been missed.
    pub(crate) fn notices_missed(&self) {
        if self.state().want_catch_up() {
            self.wake.notify_one();
        }
    }

    /// Stops tracking a deleted function.
    pub(crate) fn forget(&self, uid: Uuid) {
        self.state().forget(uid);
    }

    /// Called by every reconcile of a Function: registers it with what its status shows and when
    /// PostgreSQL says it was last invoked. Best effort: a failed query is logged, and the next
    /// reconcile or completion fills the gap.
    pub(crate) async fn reconciled(&self, function: &Function, store: &Store) {
        let uid = function.uid().and_then(|uid| Uuid::parse_str(&uid).ok());
        let (Some(uid), Some(namespace)) = (uid, function.namespace()) else { return };
        let function_ref = FunctionRef { uid, namespace, name: function.name_any() };
        self.state().shown(&function_ref, shown_in(function));
        match store.last_invoked(&[uid]).await {
            Ok(found) => {
                for (_, created_at) in found {
                    self.invoked(function_ref.clone(), created_at);
                }
            }
            Err(error) => tracing::warn!(
                function = %function_ref.name,
                namespace = %function_ref.namespace,
                error = %error,
                "cannot read when the function was last invoked"
            ),
        }
    }

    /// Reads the newest invocation time of `functions` from PostgreSQL.
    async fn catch_up(&self, store: &Store, functions: Vec<FunctionRef>) {
        for batch in functions.chunks(CATCH_UP_BATCH) {
            let ids: Vec<Uuid> = batch.iter().map(|function| function.uid).collect();
            match store.last_invoked(&ids).await {
                Ok(found) => {
                    for (uid, created_at) in found {
                        if let Some(function) = batch.iter().find(|f| f.uid == uid) {
                            self.invoked(function.clone(), created_at);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot read when functions were last invoked; trying again later");
                    self.state().want_catch_up();
                    return;
                }
            }
        }
    }
}

/// Makes the writes the tracker calls for, as they fall due, until `shutdown` resolves. What is
/// still unwritten then is found again by the next operator's reconciles.
pub(crate) async fn flush(
    tracker: Arc<Tracker>,
    client: Client,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let caught_up = tracker.state().catch_up(Instant::now());
        if let Some(functions) = caught_up {
            tracker.catch_up(&store, functions).await;
        }
        let due = tracker.state().due(Instant::now());
        stream::iter(due)
            .for_each_concurrent(WRITERS, |flush| {
                let (tracker, client, metrics) = (&tracker, &client, &metrics);
                async move {
                    let written = write(client, &flush, metrics).await;
                    tracker.state().record(&flush, written);
                }
            })
            .await;
        let now = Instant::now();
        let next = tracker.state().next_due(now).unwrap_or(now + IDLE);
        tokio::select! {
            () = &mut shutdown => return,
            () = tracker.wake.notified() => {}
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// Shows `flush.at` in the Function's status, unless it shows that time or a later one already.
async fn write(client: &Client, flush: &Flush, metrics: &Metrics) -> Written {
    let FunctionRef { uid, namespace, name } = &flush.function;
    let api: Api<Function> = Api::namespaced(client.clone(), namespace);
    let uid = uid.to_string();
    for _ in 0..CONFLICT_ATTEMPTS {
        let function = match api.get_opt(name).await {
            Ok(Some(function)) => function,
            Ok(None) => return Written::Gone,
            Err(error) => {
                tracing::warn!(function = %name, %namespace, error = %error, "cannot read the Function to record when it was last invoked");
                return Written::Failed;
            }
        };
        if function.uid().as_deref() != Some(uid.as_str()) {
            return Written::Gone;
        }
        if let Some(shown) = shown_in(&function).filter(|shown| *shown >= flush.at) {
            return Written::Shown(shown);
        }
        let patch = json!({
            "apiVersion": Function::api_version(&()),
            "kind": Function::kind(&()),
            "metadata": {
                "name": name,
                "uid": uid,
                "resourceVersion": function.resource_version(),
            },
            "status": {"lastInvokedAt": Time(flush.at)},
        });
        let params = PatchParams::apply(names::LAST_INVOKED_FIELD_MANAGER).force();
        match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => {
                metrics.last_invoked_written();
                return Written::Shown(flush.at);
            }
            // Changed since it was read (by anyone): read it again.
            Err(kube::Error::Api(status)) if status.is_conflict() => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => return Written::Gone,
            Err(error) => {
                tracing::warn!(function = %name, %namespace, error = %error, "cannot record when the function was last invoked");
                return Written::Failed;
            }
        }
    }
    tracing::debug!(function = %name, %namespace, "lastInvokedAt kept losing races; trying again later");
    Written::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(15);

    fn hello() -> FunctionRef {
        FunctionRef {
            uid: Uuid::from_u128(1),
            namespace: "default".to_owned(),
            name: "hello".to_owned(),
        }
    }

    fn second(n: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + n).unwrap()
    }

    /// `hello` invoked at second 1, and the write of it handed out at `start`.
    fn writing_hello(start: Instant) -> (Coalescer, Flush) {
        let mut coalescer = Coalescer::new(INTERVAL);
        coalescer.invoked(&hello(), second(1));
        let flush = coalescer.due(start).remove(0);
        (coalescer, flush)
    }

    #[test]
    fn the_first_invocation_after_a_quiet_spell_is_written_at_once() {
        let mut coalescer = Coalescer::new(INTERVAL);
        let now = Instant::now();
        assert_eq!(coalescer.next_due(now), None, "nothing to write yet");
        assert!(coalescer.invoked(&hello(), second(1)), "the flusher is woken");
        assert_eq!(coalescer.next_due(now), Some(now));
        assert_eq!(coalescer.due(now), [Flush { function: hello(), at: second(1) }]);
    }

    #[test]
    fn a_hot_function_is_written_at_most_once_per_interval_and_with_the_newest_time() {
        let mut coalescer = Coalescer::new(INTERVAL);
        let start = Instant::now();
        coalescer.invoked(&hello(), second(0));
        let first = coalescer.due(start);
        assert_eq!(first.len(), 1);
        coalescer.record(&first[0], Written::Shown(second(0)));

        let mut woken = 0;
        for n in 1..=5000 {
            woken += usize::from(coalescer.invoked(&hello(), second(n / 1000)));
        }
        assert_eq!(woken, 1, "only the first new time wakes the flusher");
        assert!(coalescer.due(start + INTERVAL / 2).is_empty(), "too soon after the last write");
        assert_eq!(coalescer.next_due(start + INTERVAL / 2), Some(start + INTERVAL));
        assert_eq!(
            coalescer.due(start + INTERVAL),
            [Flush { function: hello(), at: second(5) }],
            "one write, with the newest time"
        );
        assert!(coalescer.due(start + INTERVAL).is_empty());
    }

    #[test]
    fn a_time_the_object_already_shows_is_not_written_again() {
        let mut coalescer = Coalescer::new(INTERVAL);
        let now = Instant::now();
        coalescer.shown(&hello(), Some(second(7)));
        assert!(!coalescer.invoked(&hello(), second(7)));
        assert!(!coalescer.invoked(&hello(), second(3)), "an older invocation changes nothing");
        assert!(coalescer.due(now).is_empty());
        assert_eq!(coalescer.next_due(now), None);
        assert!(coalescer.invoked(&hello(), second(8)));
        assert_eq!(coalescer.due(now), [Flush { function: hello(), at: second(8) }]);
    }

    #[test]
    fn times_only_move_forward() {
        let mut coalescer = Coalescer::new(INTERVAL);
        coalescer.invoked(&hello(), second(9));
        coalescer.invoked(&hello(), second(4));
        assert_eq!(coalescer.due(Instant::now())[0].at, second(9));
    }

    #[test]
    fn a_failed_write_is_tried_again_after_the_interval() {
        let start = Instant::now();
        let (mut coalescer, flush) = writing_hello(start);
        coalescer.record(&flush, Written::Failed);
        assert!(coalescer.due(start + Duration::from_secs(1)).is_empty());
        assert_eq!(coalescer.due(start + INTERVAL), [flush]);
    }

    #[test]
    fn a_later_time_found_on_the_object_counts_as_written() {
        let start = Instant::now();
        let (mut coalescer, flush) = writing_hello(start);
        // Another replica had written a later invocation already.
        coalescer.record(&flush, Written::Shown(second(2)));
        assert!(!coalescer.invoked(&hello(), second(2)));
        assert_eq!(coalescer.next_due(start + INTERVAL), None);
    }

    #[test]
    fn a_function_that_is_gone_is_no_longer_tracked() {
        let start = Instant::now();
        let (mut coalescer, flush) = writing_hello(start);
        coalescer.invoked(&hello(), second(2));
        coalescer.record(&flush, Written::Gone);
        assert_eq!(coalescer.next_due(start), None);
        assert!(coalescer.due(start + INTERVAL).is_empty());
        coalescer.want_catch_up();
        assert_eq!(coalescer.catch_up(start), Some(vec![]));
    }

    #[test]
    fn missed_notices_read_every_tracked_function_at_most_once_per_interval() {
        let mut coalescer = Coalescer::new(INTERVAL);
        let start = Instant::now();
        let quiet = FunctionRef { uid: Uuid::from_u128(2), name: "quiet".to_owned(), ..hello() };
        coalescer.invoked(&hello(), second(1));
        coalescer.shown(&quiet, None);
        assert_eq!(coalescer.catch_up(start), None, "not wanted");

        assert!(coalescer.want_catch_up());
        assert!(!coalescer.want_catch_up(), "already wanted");
        let mut functions = coalescer.catch_up(start).unwrap();
        functions.sort_by_key(|f| f.uid);
        assert_eq!(functions, [hello(), quiet]);

        coalescer.due(start);
        coalescer.want_catch_up();
        let soon = start + Duration::from_secs(1);
        assert_eq!(coalescer.catch_up(soon), None, "too soon after the last one");
        assert_eq!(coalescer.next_due(soon), Some(start + INTERVAL));
        assert_eq!(coalescer.catch_up(start + INTERVAL).map(|f| f.len()), Some(2));
    }

    #[test]
    fn times_compare_at_the_precision_of_the_field() {
        let early = DateTime::from_timestamp_micros(1_800_000_000_100_000).unwrap();
        let late = DateTime::from_timestamp_micros(1_800_000_000_900_000).unwrap();
        assert_eq!(whole_seconds(early), Some(second(0)));
        let mut coalescer = Coalescer::new(INTERVAL);
        coalescer.shown(&hello(), whole_seconds(early));
        assert!(
            !coalescer.invoked(&hello(), whole_seconds(late).unwrap()),
            "a later invocation within the second shown needs no write"
        );
        // What the object holds is what was written: a Time serialises to the second.
        let written = serde_json::to_value(Time(second(0))).unwrap();
        assert_eq!(written, "2027-01-15T08:00:00Z");
    }

    #[test]
    fn a_namespaced_operator_ignores_invocations_elsewhere() {
        let tracker = Tracker::new(INTERVAL, Some("team".to_owned()));
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        tracker.invoked(hello(), at);
        assert_eq!(tracker.state().next_due(Instant::now()), None);
        let ours = FunctionRef { namespace: "team".to_owned(), ..hello() };
        tracker.invoked(ours.clone(), at);
        assert_eq!(tracker.state().due(Instant::now()), [Flush { function: ours, at: second(0) }]);
    }
}
