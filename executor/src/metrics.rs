//! Prometheus metrics of the executor: invocations by status, durations, cold starts, the
//! queue's depth and lag, and warm instances per function.

use std::{
    collections::HashSet,
    sync::{Mutex, PoisonError, atomic::AtomicU64},
};

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
    worker::{Handled, WarmInstances, WorkerObserver},
};

/// Most functions with a warm-instances series of their own; the instances of the others are
/// summed under [`OTHER_FUNCTIONS`], so the series stay bounded however many functions run.
pub const MAX_WARM_SERIES: usize = 100;

/// The `function` label of the instances of functions beyond [`MAX_WARM_SERIES`].
pub const OTHER_FUNCTIONS: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    namespace: String,
    function: String,
}

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
    warm_instances: Family<FunctionLabels, Gauge>,
    /// The series of `warm_instances` last set, so those of functions gone are removed.
    warm_series: Mutex<HashSet<FunctionLabels>>,
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
            warm_instances: Family::default(),
            warm_series: Mutex::default(),
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
        registry.register(
            "warm_instances",
            "Started instances (idle or busy) per function on this executor",
            metrics.warm_instances.clone(),
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

    /// Records the backend's warm instances. Functions without instances have no series; past
    /// [`MAX_WARM_SERIES`] functions (the busiest first) the rest are summed.
    pub fn warm_instances(&self, warm: &[WarmInstances]) {
        let mut warm: Vec<&WarmInstances> = warm.iter().filter(|w| w.instances > 0).collect();
        warm.sort_by(|a, b| {
            b.instances
                .cmp(&a.instances)
                .then_with(|| (&a.namespace, &a.function).cmp(&(&b.namespace, &b.function)))
        });
        let mut series: Vec<(FunctionLabels, usize)> = warm
            .iter()
            .take(MAX_WARM_SERIES)
            .map(|w| {
                let labels =
                    FunctionLabels { namespace: w.namespace.clone(), function: w.function.clone() };
                (labels, w.instances)
            })
            .collect();
        let others: usize = warm.iter().skip(MAX_WARM_SERIES).map(|w| w.instances).sum();
        if others > 0 {
            let labels =
                FunctionLabels { namespace: String::new(), function: OTHER_FUNCTIONS.to_owned() };
            series.push((labels, others));
        }
        let mut shown = self.warm_series.lock().unwrap_or_else(PoisonError::into_inner);
        let now: HashSet<FunctionLabels> =
            series.iter().map(|(labels, _)| labels.clone()).collect();
        for gone in shown.difference(&now) {
            self.warm_instances.remove(gone);
        }
        for (labels, instances) in &series {
            self.warm_instances
                .get_or_create(labels)
                .set(i64::try_from(*instances).unwrap_or(i64::MAX));
        }
        *shown = now;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn warm(function: &str, instances: usize) -> WarmInstances {
        WarmInstances { namespace: "team".into(), function: function.into(), instances }
    }

    /// The warm-instance series, sorted (the registry renders them in no set order).
    fn series(metrics: &ExecutorMetrics) -> Vec<String> {
        let mut series: Vec<String> = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("kubefaas_executor_warm_instances{"))
            .map(str::to_owned)
            .collect();
        series.sort();
        series
    }

    #[test]
    fn warm_instances_have_a_series_per_function_until_the_function_has_none() {
        let metrics = ExecutorMetrics::default();
        metrics.warm_instances(&[warm("a", 2), warm("b", 1), warm("idle", 0)]);
        assert_eq!(
            series(&metrics),
            [
                r#"kubefaas_executor_warm_instances{namespace="team",function="a"} 2"#,
                r#"kubefaas_executor_warm_instances{namespace="team",function="b"} 1"#,
            ]
        );
        metrics.warm_instances(&[warm("b", 3)]);
        assert_eq!(
            series(&metrics),
            [r#"kubefaas_executor_warm_instances{namespace="team",function="b"} 3"#]
        );
    }

    #[test]
    fn warm_instances_past_the_series_bound_are_summed() {
        let metrics = ExecutorMetrics::default();
        let many: Vec<WarmInstances> =
            (0..MAX_WARM_SERIES + 5).map(|i| warm(&format!("f{i:03}"), 1)).collect();
        metrics.warm_instances(&many);
        let series = series(&metrics);
        assert_eq!(series.len(), MAX_WARM_SERIES + 1);
        let other = format!(
            r#"kubefaas_executor_warm_instances{{namespace="",function="{OTHER_FUNCTIONS}"}} 5"#
        );
        assert!(series.contains(&other), "{series:?}");
    }
}
