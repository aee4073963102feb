//! Prometheus metrics of the executor: invocations by status, durations, cold starts, and the
//! queue's depth and lag.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use kubefaas_core::queue::QueueStats;

use crate::{
    Invocation,
    worker::{Handled, WorkerObserver},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    function: String,
    outcome: String,
}

/// The executor's metrics and their registry.
#[derive(Debug)]
pub struct ExecutorMetrics {
    registry: Registry,
    invocations: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    cold_starts: Counter,
    queue_depth: Gauge,
    queue_lag: Gauge,
    queue_pending: Gauge,
    queue_delayed: Gauge,
    dead_letters: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
}

impl Default for ExecutorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubefaas_executor");
        let metrics = Self {
            invocations: Family::default(),
            // 1 ms … ~65 s.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            cold_starts: Counter::default(),
            queue_depth: Gauge::default(),
            queue_lag: Gauge::default(),
            queue_pending: Gauge::default(),
            queue_delayed: Gauge::default(),
            dead_letters: Gauge::default(),
            oldest_age: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "invocations",
            "Deliveries handled, by function and outcome (succeeded, failed, timed_out, retrying, dropped, deferred)",
            metrics.invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Wall-clock time of function runs",
            metrics.duration.clone(),
        );
        registry.register(
            "cold_starts",
            "Runs that had to start an instance",
            metrics.cold_starts.clone(),
        );
        registry.register(
            "queue_depth",
            "Jobs not finished: undelivered, pending and delayed",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "queue_lag",
            "Jobs no executor has been given yet",
            metrics.queue_lag.clone(),
        );
        registry.register(
            "queue_pending",
            "Jobs handed out and not acknowledged",
            metrics.queue_pending.clone(),
        );
        registry.register(
            "queue_delayed",
            "Jobs waiting for a retry",
            metrics.queue_delayed.clone(),
        );
        registry.register(
            "dead_letters",
            "Entries in the dead-letter stream",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest job not yet delivered",
            metrics.oldest_age.clone(),
        );
        Self { registry, ..metrics }
    }
}

impl ExecutorMetrics {
    /// Records a snapshot of the queue.
    pub fn queue(&self, stats: &QueueStats) {
        let set = |gauge: &Gauge, value: u64| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.queue_depth, stats.depth());
        set(&self.queue_lag, stats.undelivered);
        set(&self.queue_pending, stats.pending);
        set(&self.queue_delayed, stats.delayed);
        set(&self.dead_letters, stats.dead_letters);
        self.oldest_age.set(stats.oldest_undelivered_age_ms.unwrap_or(0) as f64 / 1000.0);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl WorkerObserver for std::sync::Arc<ExecutorMetrics> {
    fn handled(&self, function: &str, handled: &Handled, run: Option<&Invocation>) {
        let outcome = match handled {
            Handled::Finished(status) => status.as_str(),
            Handled::Retrying(_) => "retrying",
            Handled::Dropped => "dropped",
            Handled::Deferred => "deferred",
        };
        self.invocations
            .get_or_create(&OutcomeLabels {
                function: function.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Some(run) = run {
            self.duration.observe(run.metrics.duration.as_secs_f64());
            if run.metrics.cold_start {
                self.cold_starts.inc();
            }
        }
    }
}
