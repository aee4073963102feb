//! The queue consumer: claims invocations from Redis, runs them on the pool under a lease in
//! PostgreSQL, and commits the outcome.
//!
//! One delivery goes through:
//!
//! 1. `store.claim` — the compare-and-set `queued → running` (or takeover of an expired lease).
//!    A duplicate of a finished invocation, or one another executor holds, is acknowledged and
//!    dropped: the row, not the message, decides who runs it.
//! 2. resolve the function (code, limits, scaling, retry policy) through a [`FunctionSource`].
//! 3. run it on the [`Backend`] (the local [`Pool`], or runtime pods) while a task renews the
//!    lease.
//! 4. commit: `store.complete` (only the lease holder's attempt is accepted), publish the
//!    completion, acknowledge the message. Retryable failures go back through
//!    `store.retry_later` and the queue's delayed set with exponential backoff.
//!
//! Background duties run beside the consumer loop: reclaiming messages of dead executors
//! (`XAUTOCLAIM`, poison messages to the dead-letter stream and the row to `failed`), promoting due
//! retries, trimming the stream, and sweeping PostgreSQL for rows stuck in `queued` or running
//! under an expired lease (re-enqueued; covers a Redis that lost data).
//!
//! A process that dies at any point loses nothing: its messages stay pending in the consumer
//! group until reclaimed, and its leases expire.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use kubefaas_core::{
    env_from::EnvSource,
    queue::{self, Backoff, Completion, Consumer, Delivery, Job, Queue, QueueError},
    resources::{FailureKind, InvocationMetrics, RetryPolicy},
    store::{
        Claim, FunctionState, InvocationRow, Lease, Outcome, Source, Status, Store, StoreError,
    },
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::MissedTickBehavior,
};
use uuid::Uuid;

use crate::{
    FunctionSpec, Invocation, Pool, Request, Scaling,
    error::{error_types, platform_error},
    history::History,
};

mod carried;
mod commit;

/// How long a job waits in the delayed set when PostgreSQL cannot be reached to claim it.
const STORE_UNAVAILABLE_DELAY: Duration = Duration::from_secs(2);

/// What the store answered when asked to claim an invocation.
type Claimed = Result<Claim, Arc<StoreError>>;

/// Where the worker runs invocations: the local [`Pool`] (sandboxed processes on this
/// machine) or [`crate::kubernetes::KubernetesBackend`] (runtime pods).
pub trait Backend: Send + Sync + 'static {
    /// Why an invocation could not be run at all (as opposed to the function failing).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether the backend's instances read a function's `envFrom` Secrets and ConfigMaps
    /// themselves (a kubelet does, for a pod). When not, they are read into the function's
    /// environment before it reaches the backend.
    const READS_ENV_FROM: bool = false;

    /// Runs `request` on an instance of `function` (of `namespace`), waiting for a free one.
    fn invoke(
        &self,
        namespace: &str,
        function: &Arc<ResolvedFunction>,
        request: &Request,
    ) -> impl Future<Output = Result<Invocation, Self::Error>> + Send;

    /// Starts instances of `function` until it has `minWarm`, ahead of any invocation, and
    /// replaces idle instances of its earlier code or settings. Returns once the instances it
    /// started are ready (or failed to start).
    fn keep_warm(
        &self,
        namespace: &str,
        function: &Arc<ResolvedFunction>,
    ) -> impl Future<Output = ()> + Send;

    /// Stops the instances of the function `namespace/name` (it was deleted) and forgets it;
    /// busy instances stop when their invocation ends.
    fn retire(&self, namespace: &str, name: &str) -> impl Future<Output = ()> + Send;

    /// The functions the backend holds instances for, with how many are started (idle or
    /// busy; not those still starting).
    fn warm_instances(&self) -> Vec<WarmInstances>;
}

/// Started instances of one function (see [`Backend::warm_instances`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmInstances {
    /// Namespace of the function (empty for functions without one).
    pub namespace: String,
    /// Its name.
    pub function: String,
    /// Instances started, idle or busy.
    pub instances: usize,
}

impl Backend for Arc<Pool> {
    type Error = crate::Error;

    async fn invoke(
        &self,
        _namespace: &str,
        function: &Arc<ResolvedFunction>,
        request: &Request,
    ) -> Result<Invocation, crate::Error> {
        if let Some(error) = &function.env_from_error {
            return Err(crate::Error::EnvFrom(error.clone()));
        }
        Pool::invoke(self, Arc::clone(&function.spec), function.scaling, request).await
    }

    async fn keep_warm(&self, _namespace: &str, function: &Arc<ResolvedFunction>) {
        if function.env_from_error.is_some() {
            return;
        }
        let spec = Arc::clone(&function.spec);
        // A load failure is logged by the pool and reported by the next invocation.
        if let Err(error) = self.ensure_warm(spec, function.scaling).await {
            tracing::warn!(function = %function.spec.pool_key(), %error, "starting warm instances failed");
        }
    }

    async fn retire(&self, namespace: &str, name: &str) {
        Pool::retire(self, &format!("{namespace}/{name}"));
    }

    fn warm_instances(&self) -> Vec<WarmInstances> {
        self.instance_counts()
            .into_iter()
            .map(|(spec, instances)| WarmInstances {
                namespace: spec.namespace.clone().unwrap_or_default(),
                function: spec.name.clone(),
                instances,
            })
            .collect()
    }
}

/// Failures of the worker itself (not of functions).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The batch this operation was written in failed.
    #[error(transparent)]
    Batch(Arc<WorkerError>),
    /// The worker is stopping and took no more work.
    #[error("the worker is stopping")]
    Stopped,
    /// The function could not be resolved for a reason other than its absence.
    #[error("resolving function {namespace}/{name}: {message}")]
    Resolve {
        /// Namespace of the function.
        namespace: String,
        /// Its name.
        name: String,
        /// What failed.
        message: String,
    },
}

/// A function ready to run: what the pool needs, plus how its invocations are scheduled.
#[derive(Clone, Debug)]
pub struct ResolvedFunction {
    /// The function's row id; a job for another id (an older function of the same name) is not
    /// run with this one.
    pub id: Uuid,
    /// Code, handler, limits and environment.
    pub spec: Arc<FunctionSpec>,
    /// The function's `envFrom` sources. A backend that reads them itself
    /// ([`Backend::READS_ENV_FROM`]) passes them on; for the others they are already resolved
    /// into `spec.env`.
    pub env_from: Vec<EnvSource>,
    /// Why `env_from` could not be resolved into `spec.env` (a Secret or ConfigMap is missing,
    /// say); the local backend starts no instance of the function while it is set.
    pub env_from_error: Option<String>,
    /// Warm instances and their bounds.
    pub scaling: Scaling,
    /// Most invocations of the function running at once on this executor. (How failures are
    /// retried is not here: the policy is frozen into each invocation's row when submitted.)
    pub max_concurrency: usize,
}

/// What [`Worker::resolve_for`] found.
enum Resolution {
    /// The function, ready to run.
    Ready(Arc<ResolvedFunction>),
    /// It no longer exists: the invocation fails with this.
    Gone(kubefaas_core::resources::InvocationError),
    /// It could not be looked up: a platform failure, retried.
    Unavailable(kubefaas_core::resources::InvocationError),
}

/// What PostgreSQL says of the function an invocation was claimed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The row id the invocation was queued for (the Function's uid).
    pub id: Uuid,
    /// How the function's row says it runs at the claim (code, handler, limits, environment),
    /// when known. The operator records a changed Function in the row before it reports it
    /// ready, so a copy of the Function that says otherwise has not caught up.
    pub state: Option<FunctionState>,
    /// The Function's generation that was ready when the invocation was submitted, when known
    /// (a synchronous call, which the store was not asked about): a copy of an older generation
    /// has not caught up.
    pub generation: Option<i64>,
}

impl Expected {
    /// The function of row `id`, however it runs.
    pub fn id(id: Uuid) -> Self {
        Self { id, state: None, generation: None }
    }
}

/// Where the worker finds functions: the Kubernetes API in a cluster (see
/// [`crate::functions::KubeFunctions`]), a fixed table in tests.
pub trait FunctionSource: Send + Sync + 'static {
    /// The function `namespace/name`, or `None` when it does not exist (or is being deleted).
    /// A cached copy that is not what `expected` says (another id: the function was deleted
    /// and created again; another checksum: its code was edited) must not be trusted without a
    /// fresh look.
    fn resolve(
        &self,
        namespace: &str,
        name: &str,
        expected: &Expected,
    ) -> impl Future<Output = Result<Option<Arc<ResolvedFunction>>, WorkerError>> + Send;
}

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This executor's name: its consumer name in the group and the lease owner.
    pub name: String,
    /// Most invocations in flight at once.
    pub max_in_flight: usize,
    /// Lease length; renewed every third of it while the invocation runs.
    pub lease: Duration,
    /// How long one blocking read of the queue waits.
    pub block: Duration,
    /// How often reclaim, promotion of due retries and trimming run.
    pub maintenance_interval: Duration,
    /// How often PostgreSQL is swept for stuck invocations.
    pub sweep_interval: Duration,
    /// A `queued` row due longer than this without a claim is re-enqueued.
    pub stuck_after: Duration,
    /// Backoff of retried invocations (the function's `retry.backoffSeconds` sets the base).
    pub max_backoff: Duration,
}

impl WorkerConfig {
    /// Defaults for an executor called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            max_in_flight: 16,
            lease: Duration::from_secs(30),
            block: Duration::from_secs(2),
            maintenance_interval: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(15),
            stuck_after: Duration::from_secs(60),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// What happened to one delivery, for metrics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Ran and committed with this final status.
    Finished(Status),
    /// Ran and failed retryably; it comes back after the delay.
    Retrying(Duration),
    /// Not run: finished already, held by another executor, or its row is gone.
    Dropped,
    /// Not run now: its row is not released to the queue yet; the message comes back later.
    Deferred,
}

/// Observes what the worker does (the executor's metrics implement it).
pub trait WorkerObserver: Send + Sync + 'static {
    /// One delivery was handled.
    fn handled(&self, _function: &str, _handled: &Handled, _run: Option<&Invocation>) {}
}

/// An observer that observes nothing.
#[derive(Debug, Default)]
pub struct NoObserver;
impl WorkerObserver for NoObserver {}

/// The consumer and its background duties.
#[derive(Debug)]
pub struct Worker<S, O = NoObserver, B = Arc<Pool>> {
    config: WorkerConfig,
    store: Store,
    queue: Queue,
    backend: B,
    functions: S,
    observer: O,
    concurrency: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    history: History,
    committer: commit::Committer,
}

impl<S: FunctionSource, O: WorkerObserver, B: Backend> Worker<S, O, B> {
    /// A worker over these parts. Starts the writer of synchronous calls' history
    /// ([`History`]) on the current tokio runtime.
    pub fn new(
        config: WorkerConfig,
        store: Store,
        queue: Queue,
        backend: B,
        functions: S,
        observer: O,
    ) -> Arc<Self> {
        let history = History::start(store.clone(), queue.clone()).0;
        let committer = commit::Committer::start(store.clone(), queue.clone());
        Arc::new(Self {
            config,
            store,
            queue,
            backend,
            functions,
            observer,
            concurrency: Mutex::default(),
            history,
            committer,
        })
    }

    /// The writer of synchronous calls' history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Consumes the queue until `shutdown` resolves, then stops claiming and gives in-flight
    /// invocations up to `grace` to finish. Whatever is still running then is abandoned: its
    /// messages stay pending and its leases expire, so another executor takes it over.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send,
        grace: Duration,
    ) -> Result<(), WorkerError> {
        self.queue.ensure_group().await?;
        let mut consumer = self.queue.consumer(self.config.name.clone()).await?;
        let slots = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        let mut running = JoinSet::new();
        let background = tokio::spawn(Arc::clone(&self).background(Arc::clone(&slots)));
        tokio::pin!(shutdown);
        loop {
            // Claim only as many as there are free slots, so nothing claimed waits on us.
            let free = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&slots).acquire_many_owned(1) => match permit {
                    Ok(permit) => { drop(permit); slots.available_permits() }
                    Err(_) => break,
                },
            };
            let deliveries = tokio::select! {
                () = &mut shutdown => break,
                claimed = consumer.claim(free, self.config.block) => claimed,
            };
            let deliveries = match deliveries {
                Ok(deliveries) => deliveries,
                Err(error) => {
                    tracing::warn!(error = %error, "claiming from the queue failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for (delivery, claim, slot) in self.claim_all(deliveries, &slots).await {
                running.spawn(Arc::clone(&self).handle_holding(delivery, claim, slot));
            }
            while running.try_join_next().is_some() {}
        }
        background.abort();
        tracing::info!(
            in_flight = running.len(),
            ?grace,
            "stopping: finishing in-flight invocations"
        );
        let drained =
            tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = running.len(),
                "grace period over; abandoning in-flight invocations to other executors"
            );
            running.abort_all();
        }
        if tokio::time::timeout(grace, self.history.flush()).await.is_err() {
            tracing::warn!("grace period over; finished calls not yet written are not recorded");
        }
        Ok(())
    }

    /// Takes an in-flight slot for each of `deliveries` and claims those that are not carried
    /// in one statement ([`Store::claim_many`]). A delivery that gets no slot (the worker is
    /// stopping) is left pending, to be reclaimed.
    async fn claim_all(
        &self,
        deliveries: Vec<Delivery>,
        slots: &Arc<Semaphore>,
    ) -> Vec<(Delivery, Option<Claimed>, OwnedSemaphorePermit)> {
        let mut taken = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let Ok(slot) = Arc::clone(slots).acquire_owned().await else { break };
            taken.push((delivery, slot));
        }
        let ids: Vec<Uuid> = taken
            .iter()
            .filter(|(delivery, _)| delivery.job.carried.is_none())
            .map(|(delivery, _)| delivery.job.invocation_id)
            .collect();
        let mut claims = if ids.is_empty() {
            Ok(Vec::new().into_iter())
        } else {
            self.store
                .claim_many(&ids, &self.config.name, self.config.lease)
                .await
                .map(Vec::into_iter)
                .map_err(Arc::new)
        };
        taken
            .into_iter()
            .map(|(delivery, slot)| {
                let claim = delivery.job.carried.is_none().then(|| match &mut claims {
                    Ok(claims) => claims.next().ok_or_else(|| {
                        Arc::new(StoreError::Corrupt {
                            what: "claim",
                            value: "fewer answers than invocations".to_owned(),
                        })
                    }),
                    Err(error) => Err(Arc::clone(error)),
                });
                (delivery, claim, slot)
            })
            .collect()
    }

    /// Handles one delivery, claimed already unless carried, while holding an in-flight slot;
    /// failures are logged, and the message stays pending for a later reclaim.
    async fn handle_holding(
        self: Arc<Self>,
        delivery: Delivery,
        claim: Option<Claimed>,
        _slot: OwnedSemaphorePermit,
    ) {
        let id = delivery.job.invocation_id;
        let handled = match claim {
            Some(claim) => self.process_claimed(delivery, claim).await,
            None => self.process(delivery).await,
        };
        if let Err(error) = handled {
            // The message stays pending: it is reclaimed and tried again.
            tracing::warn!(invocation = %id, error = %error, "handling invocation failed");
        }
    }

    /// Handles one delivery from claim to acknowledgement.
    pub async fn process(&self, delivery: Delivery) -> Result<Handled, WorkerError> {
        if let Some(carried) = delivery.job.carried.clone() {
            return self.process_carried(delivery, carried).await;
        }
        let claim =
            self.store.claim(delivery.job.invocation_id, &self.config.name, self.config.lease);
        let claim = claim.await.map_err(Arc::new);
        self.process_claimed(delivery, claim).await
    }

    /// Handles a delivery whose row the store was asked to claim, with the answer.
    async fn process_claimed(
        &self,
        delivery: Delivery,
        claimed: Claimed,
    ) -> Result<Handled, WorkerError> {
        let job = delivery.job.clone();
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(error) => {
                // PostgreSQL is unreachable: nothing was claimed. Park the job in the delayed set
                // instead of leaving it unacknowledged, where every redelivery would count
                // towards the dead-letter bound although it never ran.
                tracing::warn!(invocation = %job.invocation_id, %error, "cannot claim; trying again later");
                self.queue.retry_later(&delivery, STORE_UNAVAILABLE_DELAY).await?;
                return Ok(self.observe(&job, Handled::Deferred, None));
            }
        };
        let (lease, row, function_state) = match claimed {
            Claim::Acquired { lease, invocation, function } => (lease, invocation, function),
            Claim::NotQueued => {
                // Enqueued before the row was released (should not happen); look again later.
                self.queue.retry_later(&delivery, Duration::from_secs(1)).await?;
                return Ok(self.observe(&job, Handled::Deferred, None));
            }
            Claim::Finished(_) | Claim::HeldElsewhere { .. } | Claim::Missing => {
                self.queue.ack(&delivery).await?;
                return Ok(self.observe(&job, Handled::Dropped, None));
            }
        };

        let expected =
            Expected { id: job.function_id, state: Some(function_state), generation: None };
        let function = match self.resolve_for(&job, &expected).await {
            Resolution::Ready(function) => function,
            Resolution::Gone(error) => {
                return self
                    .commit(&delivery, &lease, Outcome::failed(Status::Failed, error), None)
                    .await;
            }
            // The platform's fault, and the claim counted an attempt: retried like any
            // platform failure, up to the row's maxAttempts, then failed.
            Resolution::Unavailable(failure) => {
                return self.retry_or_fail(&delivery, &lease, &row, failure).await;
            }
        };

        let request = Request {
            id: job.invocation_id.to_string(),
            payload: row.payload.clone().unwrap_or(serde_json::Value::Null),
            timeout: Duration::from_secs(u64::try_from(row.timeout_seconds).unwrap_or(1).max(1)),
        };
        let renewer = self.renew_while_running(lease.clone());
        let run = match self.run_holding(&job, &function, &request, renewer).await {
            Ok(run) => run,
            Err(failure) => return self.retry_or_fail(&delivery, &lease, &row, failure).await,
        };
        let outcome = outcome_of(&run);
        if let Some(error) = outcome.error.clone()
            && outcome.status == Some(Status::Failed)
            && let Some(delay) = decide_retry(
                &error,
                lease.attempt,
                row.max_attempts,
                &row.retry_policy(),
                self.config.max_backoff,
            )
        {
            return self.retry(&delivery, &lease, &row, error, delay).await;
        }
        self.commit(&delivery, &lease, outcome, Some(&run)).await
    }

    /// The function `job` was submitted for, as `expected` says it runs.
    async fn resolve_for(&self, job: &Job, expected: &Expected) -> Resolution {
        match self.functions.resolve(&job.namespace, &job.function, expected).await {
            Ok(Some(function)) if function.id == job.function_id => Resolution::Ready(function),
            Ok(_) => Resolution::Gone(platform_error(
                error_types::FUNCTION_NOT_FOUND,
                format!("function {}/{} no longer exists", job.namespace, job.function),
            )),
            Err(error) => {
                tracing::warn!(invocation = %job.invocation_id, error = %error, "cannot resolve function");
                Resolution::Unavailable(platform_error(
                    error_types::INSTANCE_START_FAILED,
                    error.to_string(),
                ))
            }
        }
    }

    /// Runs `request` on the backend within the function's concurrency bound, while `keeper`
    /// renews the hold on the invocation; stops `keeper` when the run ends. A backend failure
    /// is the platform's, as an error to retry or fail with.
    async fn run_holding(
        &self,
        job: &Job,
        function: &Arc<ResolvedFunction>,
        request: &Request,
        keeper: tokio::task::JoinHandle<()>,
    ) -> Result<Invocation, kubefaas_core::resources::InvocationError> {
        let _slot = self.function_slot(job, function).acquire_owned().await;
        let run = self.backend.invoke(&job.namespace, function, request).await;
        keeper.abort();
        run.map_err(|error| platform_error(error_types::INSTANCE_START_FAILED, error.to_string()))
    }

    async fn commit(
        &self,
        delivery: &Delivery,
        lease: &Lease,
        outcome: Outcome,
        run: Option<&Invocation>,
    ) -> Result<Handled, WorkerError> {
        let job = &delivery.job;
        match self.committer.commit(lease, outcome, delivery).await? {
            Some(row) => Ok(self.observe(job, Handled::Finished(row.status), run)),
            None => {
                // Our lease was taken over (we were too slow, or presumed dead): the other
                // holder's outcome stands. The delivery was acknowledged all the same.
                tracing::warn!(invocation = %job.invocation_id, attempt = lease.attempt, "lost the lease; discarding this attempt's outcome");
                Ok(self.observe(job, Handled::Dropped, run))
            }
        }
    }

    /// A platform failure after the claim: retried while the row's policy allows, else the
    /// invocation fails with it.
    async fn retry_or_fail(
        &self,
        delivery: &Delivery,
        lease: &Lease,
        row: &InvocationRow,
        failure: kubefaas_core::resources::InvocationError,
    ) -> Result<Handled, WorkerError> {
        let policy = row.retry_policy();
        let max_backoff = self.config.max_backoff;
        match decide_retry(&failure, lease.attempt, row.max_attempts, &policy, max_backoff) {
            Some(delay) => self.retry(delivery, lease, row, failure, delay).await,
            None => {
                let outcome = Outcome::failed(Status::Failed, failure);
                self.commit(delivery, lease, outcome, None).await
            }
        }
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        lease: &Lease,
        row: &InvocationRow,
        error: kubefaas_core::resources::InvocationError,
        delay: Duration,
    ) -> Result<Handled, WorkerError> {
        if self.store.retry_later(lease, &error, delay).await? {
            self.queue.retry_later(delivery, delay).await?;
            tracing::info!(invocation = %row.id, attempt = lease.attempt, ?delay, error = %error.type_, "retrying");
            Ok(self.observe(&delivery.job, Handled::Retrying(delay), None))
        } else {
            self.queue.ack(delivery).await?;
            Ok(self.observe(&delivery.job, Handled::Dropped, None))
        }
    }

    fn observe(&self, job: &Job, handled: Handled, run: Option<&Invocation>) -> Handled {
        self.observer.handled(&job.function, &handled, run);
        handled
    }

    /// The per-function limit of `maxConcurrency`, resized when the function's changes.
    fn function_slot(&self, job: &Job, function: &ResolvedFunction) -> Arc<Semaphore> {
        let key = format!("{}/{}", job.namespace, job.function);
        let limit = function.max_concurrency.max(1);
        let mut slots = self.concurrency.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = slots.entry(key).or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
        if entry.0 != limit {
            *entry = (limit, Arc::new(Semaphore::new(limit)));
        }
        Arc::clone(&entry.1)
    }

    fn renew_while_running(&self, lease: Lease) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let lease_for = self.config.lease;
        tokio::spawn(async move {
            let mut every = tokio::time::interval((lease_for / 3).max(Duration::from_millis(100)));
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                match store.renew_lease(&lease, lease_for).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        tracing::warn!(invocation = %lease.invocation_id, "lease lost while running");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(invocation = %lease.invocation_id, error = %error, "renewing lease failed")
                    }
                }
            }
        })
    }

    /// Reclaim, promotion, trimming and sweeping, forever.
    async fn background(self: Arc<Self>, slots: Arc<Semaphore>) {
        let mut maintenance = tokio::time::interval(self.config.maintenance_interval);
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        maintenance.set_missed_tick_behavior(MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reclaimer = match self.queue.consumer(self.config.name.clone()).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::error!(error = %error, "cannot open the reclaiming consumer; reclaim disabled");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = maintenance.tick() => {
                    if let Err(error) = self.maintain(&mut reclaimer, &slots).await {
                        tracing::warn!(error = %error, "queue maintenance failed");
                    }
                }
                _ = sweep.tick() => {
                    if let Err(error) = self.sweep().await {
                        tracing::warn!(error = %error, "sweeping for stuck invocations failed");
                    }
                }
            }
        }
    }

    /// One round of queue maintenance: promote due retries, reclaim abandoned messages (and
    /// fail the rows of poison messages), trim.
    pub async fn maintain(
        self: &Arc<Self>,
        reclaimer: &mut Consumer,
        slots: &Arc<Semaphore>,
    ) -> Result<(), WorkerError> {
        self.queue.promote_due(1000).await?;
        let free = slots.available_permits();
        if free > 0 {
            // Idle longer than a lease: its executor stopped renewing, so it is presumed dead.
            let reclaimed =
                reclaimer.reclaim(self.config.lease + self.config.lease / 2, free).await?;
            for dead in &reclaimed.dead_lettered {
                let Some(job) = &dead.job else { continue };
                let error = platform_error(
                    error_types::DEAD_LETTERED,
                    format!("given up after {} deliveries without an outcome", dead.deliveries),
                );
                if let Some(carried) = &job.carried {
                    self.give_up_carried(carried, error).await?;
                    continue;
                }
                if let Some(row) = self.store.fail_unclaimed(job.invocation_id, &error).await? {
                    self.queue.publish_completion(&announcement(&row)).await?;
                }
            }
            for (delivery, claim, slot) in self.claim_all(reclaimed.deliveries, slots).await {
                tokio::spawn(Arc::clone(self).handle_holding(delivery, claim, slot));
            }
        }
        self.queue.trim().await?;
        Ok(())
    }

    /// One sweep of PostgreSQL: re-enqueue rows stuck in `pending` or `queued` and rows whose
    /// lease expired, in batches until none is left (a Redis that lost its data can leave
    /// thousands). Duplicate messages are harmless: the claim decides.
    pub async fn sweep(&self) -> Result<usize, WorkerError> {
        const BATCH: i64 = 500;
        let mut total = 0;
        loop {
            let stuck = self.store.stuck_queued(self.config.stuck_after, BATCH).await?;
            let full = stuck.len() >= usize::try_from(BATCH).unwrap_or(usize::MAX);
            let mut rows = stuck;
            // Expired leases are re-enqueued, not moved: they stay `running` until a claim
            // takes them over, so they are only looked at once per sweep.
            if total == 0 {
                rows.extend(self.store.expired_leases(self.config.lease, BATCH).await?);
            }
            for row in &rows {
                let job = Job::new(row.id, row.function_id, &row.namespace, &row.function_name);
                self.queue.enqueue(&job).await?;
            }
            total += rows.len();
            if !full {
                break;
            }
        }
        if total > 0 {
            tracing::info!(count = total, "re-enqueued stuck invocations");
        }
        Ok(total)
    }
}

/// The final outcome of a run, as the store records it.
pub fn outcome_of(run: &Invocation) -> Outcome {
    let metrics = Some(InvocationMetrics {
        duration_ms: Some(i64::try_from(run.metrics.duration.as_millis()).unwrap_or(i64::MAX)),
        cpu_time_ms: run.metrics.cpu_time.map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
        memory_peak_bytes: run
            .metrics
            .memory_peak_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        cold_start: Some(run.metrics.cold_start),
    });
    let logs = (!run.logs.is_empty()).then(|| run.logs.clone());
    match &run.outcome {
        Ok(value) => Outcome { metrics, logs, ..Outcome::succeeded(Some(value.clone())) },
        Err(error) => {
            let status = if error.type_ == error_types::TIMED_OUT {
                Status::TimedOut
            } else {
                Status::Failed
            };
            Outcome { metrics, logs, ..Outcome::failed(status, error.clone()) }
        }
    }
}

/// Failures of the platform rather than of the function: worth another attempt.
fn is_platform_failure(error: &kubefaas_core::resources::InvocationError) -> bool {
    error.kind() == FailureKind::Platform
}

/// Failures that retrying cannot fix whatever the policy says: the code does not load or build,
/// the result cannot be delivered, or the function is gone.
fn is_permanent(error: &kubefaas_core::resources::InvocationError) -> bool {
    matches!(error.kind(), FailureKind::Load | FailureKind::Result | FailureKind::NoSuchFunction)
}

/// The announcement of a finished row: where it came from (so the operator need not read the
/// row back), and for a synchronous invocation, whose caller waits for it, the outcome when
/// small (so the gateway answers without reading the row either).
fn announcement(row: &InvocationRow) -> Completion {
    let completion = Completion::bare(row.id, row.status.as_str()).with_origin(row.origin());
    if row.source != Source::Sync {
        return completion;
    }
    let outcome =
        queue::Outcome { result: row.result.clone().unwrap_or_default(), error: row.error.clone() };
    completion.with_outcome(outcome)
}

/// Whether a failed attempt is tried again, and after how long. Platform failures are retried;
/// the function's own failures (its exceptions, crashes, running out of memory) only when its
/// retry policy says `onFunctionError`. Never past `max_attempts`.
pub fn decide_retry(
    error: &kubefaas_core::resources::InvocationError,
    attempt: i32,
    max_attempts: i32,
    policy: &RetryPolicy,
    max_backoff: Duration,
) -> Option<Duration> {
    if attempt >= max_attempts || is_permanent(error) || error.kind() == FailureKind::TimedOut {
        return None;
    }
    if !is_platform_failure(error) && !policy.on_function_error {
        return None;
    }
    let base = Duration::from_secs(u64::try_from(policy.backoff_seconds).unwrap_or(1).max(1));
    let backoff = Backoff { base, cap: max_backoff.max(base), jitter: false };
    Some(backoff.delay(u32::try_from(attempt).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metrics;

    fn policy(on_function_error: bool) -> RetryPolicy {
        RetryPolicy { max_attempts: 3, backoff_seconds: 2, on_function_error }
    }

    #[test]
    fn platform_failures_are_retried_with_growing_backoff_until_the_attempts_run_out() {
        let lost = platform_error(error_types::INSTANCE_START_FAILED, "spawn failed");
        let cap = Duration::from_secs(300);
        let first = decide_retry(&lost, 1, 3, &policy(false), cap).unwrap();
        let second = decide_retry(&lost, 2, 3, &policy(false), cap).unwrap();
        assert!(second > first, "{first:?} then {second:?}");
        assert_eq!(decide_retry(&lost, 3, 3, &policy(false), cap), None);
    }

    #[test]
    fn function_errors_are_retried_only_when_the_function_asks() {
        let raised = platform_error("ValueError", "bad input");
        let cap = Duration::from_secs(300);
        assert_eq!(decide_retry(&raised, 1, 3, &policy(false), cap), None);
        assert!(decide_retry(&raised, 1, 3, &policy(true), cap).is_some());
        let oom = platform_error(error_types::OUT_OF_MEMORY, "killed");
        assert_eq!(decide_retry(&oom, 1, 3, &policy(false), cap), None);
    }

    #[test]
    fn timeouts_and_broken_code_are_never_retried() {
        let cap = Duration::from_secs(300);
        for kind in [
            error_types::TIMED_OUT,
            error_types::INIT_FAILED,
            error_types::BUILD_FAILED,
            "Runtime.ImportModuleError",
        ] {
            assert_eq!(
                decide_retry(&platform_error(kind, "x"), 1, 5, &policy(true), cap),
                None,
                "{kind}"
            );
        }
    }

    #[test]
    fn a_timeout_is_recorded_as_timed_out_and_metrics_are_kept() {
        let run = Invocation {
            outcome: Err(platform_error(error_types::TIMED_OUT, "deadline")),
            logs: "partial\n".into(),
            logs_truncated: false,
            metrics: Metrics {
                duration: Duration::from_millis(1500),
                cold_start: true,
                ..Metrics::default()
            },
        };
        let outcome = outcome_of(&run);
        assert_eq!(outcome.status, Some(Status::TimedOut));
        assert_eq!(outcome.logs.as_deref(), Some("partial\n"));
        let metrics = outcome.metrics.unwrap();
        assert_eq!((metrics.duration_ms, metrics.cold_start), (Some(1500), Some(true)));
    }
}
