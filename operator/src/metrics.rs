//! Prometheus metrics of the operator, served on `/metrics`.

use std::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

fn reconcile_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    failures: Family<ControllerLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    finished: Family<StatusLabels, Counter>,
    last_invoked_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubefaas_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ControllerLabels, Counter>::default();
        let durations =
            Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                reconcile_histogram as fn() -> Histogram,
            );
        let finished = Family::<StatusLabels, Counter>::default();
        let last_invoked_writes = Counter::default();
        registry.register(
            "reconciles",
            "Reconciliations started, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by controller",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took, by controller",
            durations.clone(),
        );
        registry.register(
            "invocations_finished",
            "Invocations whose final status the operator mirrored, by status",
            finished.clone(),
        );
        registry.register(
            "last_invoked_writes",
            "Writes of a Function's status.lastInvokedAt (coalesced per function and flush interval)",
            last_invoked_writes.clone(),
        );
        Self { registry, reconciles, failures, durations, finished, last_invoked_writes }
    }
}

/// Observes a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    histogram: Histogram,
    started: Instant,
    _metrics: &'a Metrics,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Counts a reconcile of `controller` and times it until the returned guard drops.
    pub fn reconcile_timer(&self, controller: &'static str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            histogram: self.durations.get_or_create(&labels).clone(),
            started: Instant::now(),
            _metrics: self,
        }
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, controller: &'static str) {
        self.failures.get_or_create(&ControllerLabels { controller }).inc();
    }

    /// Counts an invocation whose final status was mirrored.
    pub fn invocation_finished(&self, status: &str) {
        self.finished.get_or_create(&StatusLabels { status: status.to_owned() }).inc();
    }

    /// Counts a write of a Function's `status.lastInvokedAt`.
    pub fn last_invoked_written(&self) {
        self.last_invoked_writes.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_outcomes_show_up_in_the_exposition() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_timer("Function"));
        metrics.reconcile_failed("Function");
        metrics.invocation_finished("succeeded");
        metrics.last_invoked_written();
        let text = metrics.render();
        assert!(
            text.contains(r#"kubefaas_operator_reconciles_total{controller="Function"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kubefaas_operator_reconcile_errors_total{controller="Function"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kubefaas_operator_invocations_finished_total{status="succeeded"} 1"#),
            "{text}"
        );
        assert!(text.contains("kubefaas_operator_reconcile_duration_seconds_count"), "{text}");
        assert!(text.contains("kubefaas_operator_last_invoked_writes_total 1"), "{text}");
    }
}
