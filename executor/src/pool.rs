//! Warm instances per function: reuse, scale-out up to `maxInstances`, `minWarm` kept ready, idle
//! reaping. Each instance serves one invocation at a time, so a function's concurrency is its
//! number of instances.

use std::collections::HashMap;
use std::sync::{
    Arc, Mutex, MutexGuard, PoisonError,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::driver::{Driver, FunctionSpec, StartOutcome};
use crate::error::Error;
use crate::instance::{Instance, Invocation, Request, StartFailure};

/// Scaling settings of one function (a Function's `spec.scaling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scaling {
    /// Instances kept started even when idle.
    pub min_warm: usize,
    /// Most instances at once; invocations beyond wait for one to be free.
    pub max_instances: usize,
    /// How long an instance above `min_warm` may stay idle before it is stopped.
    pub idle_timeout: Duration,
}

impl Default for Scaling {
    fn default() -> Self {
        Self { min_warm: 0, max_instances: 10, idle_timeout: Duration::from_secs(300) }
    }
}

/// The warm instances of every function the executor has run.
#[derive(Debug)]
pub struct Pool {
    driver: Arc<Driver>,
    functions: Mutex<HashMap<String, Arc<FunctionPool>>>,
}

#[derive(Debug)]
struct FunctionPool {
    spec: Arc<FunctionSpec>,
    key: String,
    scaling: Scaling,
    /// One permit per instance that may exist; held while an instance is busy.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Instance>>,
    /// Instances being started (each holds a permit, so [`FunctionPool::busy`] counts it).
    starting: AtomicUsize,
}

/// Counts an instance as starting while alive.
struct Starting<'a>(&'a AtomicUsize);

impl<'a> Starting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FunctionPool {
    fn idle(&self) -> MutexGuard<'_, Vec<Instance>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn busy(&self) -> usize {
        self.scaling.max_instances.saturating_sub(self.permits.available_permits())
    }

    /// Instances started, idle or busy (not those still starting).
    fn started(&self) -> usize {
        (self.idle().len() + self.busy()).saturating_sub(self.starting.load(Ordering::Relaxed))
    }
}

/// What decides whether a warm instance can serve a spec: code, handler, limits, environment.
fn instance_key(spec: &FunctionSpec) -> String {
    format!(
        "{}|{}|{}|{}|{:?}|{:?}",
        spec.language.as_str(),
        spec.checksum,
        spec.handler,
        spec.version,
        spec.limits,
        spec.env
    )
}

impl Pool {
    /// An empty pool over `driver`.
    pub fn new(driver: Arc<Driver>) -> Self {
        Self { driver, functions: Mutex::default() }
    }

    /// The driver the pool starts instances with.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    fn functions(&self) -> MutexGuard<'_, HashMap<String, Arc<FunctionPool>>> {
        self.functions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pool of the function (by [`FunctionSpec::pool_key`]), replaced (and its instances
    /// stopped) when the spec changed.
    fn function(&self, spec: Arc<FunctionSpec>, scaling: Scaling) -> Arc<FunctionPool> {
        let key = instance_key(&spec);
        let mut functions = self.functions();
        let pool_key = spec.pool_key();
        if let Some(existing) = functions.get(&pool_key)
            && existing.key == key
            && existing.scaling == scaling
        {
            return Arc::clone(existing);
        }
        let pool = Arc::new(FunctionPool {
            permits: Arc::new(Semaphore::new(scaling.max_instances.max(1))),
            scaling: Scaling { max_instances: scaling.max_instances.max(1), ..scaling },
            key,
            idle: Mutex::default(),
            starting: AtomicUsize::new(0),
            spec: Arc::clone(&spec),
        });
        // Idle instances of an outdated spec stop when the old pool is dropped; busy ones are
        // dropped when their invocation ends, since they go back to the old pool.
        functions.insert(pool_key, Arc::clone(&pool));
        pool
    }

    /// Runs one invocation on a warm instance of the function, or on a new one if none is idle
    /// and fewer than `max_instances` exist; otherwise waits for one to be free.
    pub async fn invoke(
        &self,
        spec: Arc<FunctionSpec>,
        scaling: Scaling,
        request: &Request,
    ) -> Result<Invocation, Error> {
        let pool = self.function(spec, scaling);
        let _permit = Arc::clone(&pool.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Control(std::io::Error::other("function pool closed")))?;
        let warm = pool.idle().pop();
        let mut instance = match warm {
            Some(instance) => instance,
            None => match self.start(&pool).await? {
                Ok(instance) => instance,
                Err(failure) => return Ok(failure.into_invocation()),
            },
        };
        let invocation = instance.invoke(request).await;
        if instance.is_alive() {
            pool.idle().push(instance);
        }
        Ok(invocation)
    }

    /// Starts an instance of the pool's function (the caller holds a permit for it).
    async fn start(&self, pool: &FunctionPool) -> Result<StartOutcome, Error> {
        let _starting = Starting::new(&pool.starting);
        self.driver.start(Arc::clone(&pool.spec)).await
    }

    /// Starts instances until the function has `min_warm` of them (idle or busy). Returns how
    /// many were started, or why the first that failed to load did not (instances that fail to
    /// load are not kept, and no further start is tried).
    pub async fn ensure_warm(
        &self,
        spec: Arc<FunctionSpec>,
        scaling: Scaling,
    ) -> Result<Result<usize, StartFailure>, Error> {
        let pool = self.function(spec, scaling);
        let mut started = 0;
        while pool.idle().len() + pool.busy() < pool.scaling.min_warm {
            let Ok(permit) = Arc::clone(&pool.permits).try_acquire_owned() else { break };
            match self.start(&pool).await? {
                Ok(mut instance) => {
                    instance.started_ahead();
                    pool.idle().push(instance);
                    started += 1;
                }
                Err(failure) => {
                    tracing::warn!(function = %pool.spec.name, error = ?failure.error, "warm instance failed to start");
                    return Ok(Err(failure));
                }
            }
            drop(permit);
        }
        Ok(Ok(started))
    }

    /// Stops instances idle for longer than their function's idle timeout, keeping `min_warm`
    /// per function. Returns how many were stopped.
    pub fn reap_idle(&self) -> usize {
        let pools: Vec<Arc<FunctionPool>> = self.functions().values().cloned().collect();
        let mut stopped = 0;
        for pool in pools {
            let expired: Vec<Instance> = {
                let mut idle = pool.idle();
                let keep = pool.scaling.min_warm.saturating_sub(pool.busy());
                // Most recently used last; the oldest go first.
                idle.sort_by_key(Instance::last_used);
                let mut expired = Vec::new();
                while idle.len() > keep
                    && idle
                        .first()
                        .is_some_and(|i| i.last_used().elapsed() >= pool.scaling.idle_timeout)
                {
                    expired.push(idle.remove(0));
                }
                expired
            };
            stopped += expired.len();
            drop(expired);
        }
        stopped
    }

    /// Idle instances of a function.
    /// (`function` is the [`FunctionSpec::pool_key`].)
    pub fn idle_instances(&self, function: &str) -> usize {
        self.functions().get(function).map_or(0, |p| p.idle().len())
    }

    /// Instances of a function, idle or busy.
    pub fn instances(&self, function: &str) -> usize {
        self.functions().get(function).map_or(0, |p| p.idle().len() + p.busy())
    }

    /// Every function the pool holds, with its started instances (idle or busy).
    pub fn instance_counts(&self) -> Vec<(Arc<FunctionSpec>, usize)> {
        self.functions().values().map(|p| (Arc::clone(&p.spec), p.started())).collect()
    }

    /// Stops the idle instances of a function and forgets it; busy ones stop when their
    /// invocation ends. (`function` is the [`FunctionSpec::pool_key`].)
    pub fn retire(&self, function: &str) {
        let pool = self.functions().remove(function);
        if let Some(pool) = pool {
            pool.idle().clear();
        }
    }

    /// Stops every idle instance.
    pub fn clear(&self) {
        let pools: Vec<Arc<FunctionPool>> = self.functions().drain().map(|(_, p)| p).collect();
        for pool in pools {
            pool.idle().clear();
        }
    }

    /// Reaps idle instances every `every` until the pool is dropped.
    pub fn spawn_reaper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let stopped = pool.reap_idle();
                if stopped > 0 {
                    tracing::debug!(stopped, "reaped idle instances");
                }
            }
        })
    }
}
