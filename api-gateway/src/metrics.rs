//! Prometheus metrics of the gateway, served on `/metrics`.

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use uuid::Uuid;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The gateway's metrics and their registry.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    sync_invocations: Family<OutcomeLabels, Counter>,
    rate_limited: Counter,
    backlog_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kubefaas_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let sync_invocations = Family::<OutcomeLabels, Counter>::default();
        let rate_limited = Counter::default();
        let backlog_refused = Counter::default();
        registry.register(
            "backlog_refused",
            "Invocations refused with 429 because their function's backlog was full",
            backlog_refused.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            durations.clone(),
        );
        registry.register(
            "sync_invocations",
            "Synchronous invocations, by outcome (succeeded, failed, timed_out, out_of_memory, waiting)",
            sync_invocations.clone(),
        );
        registry.register(
            "rate_limited_requests",
            "Requests refused by the per-token rate limit",
            rate_limited.clone(),
        );
        Self { registry, requests, durations, sync_invocations, rate_limited, backlog_refused }
    }
}

impl Metrics {
    /// Counts a synchronous invocation's outcome.
    pub(crate) fn sync_outcome(&self, outcome: &'static str) {
        self.sync_invocations.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a request refused by the rate limit.
    pub(crate) fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Counts an invocation refused because its function's backlog was full.
    pub(crate) fn backlog_refused(&self) {
        self.backlog_refused.inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Header carrying the request id (taken from the request when present, else generated).
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// Middleware around every request: gives it an id and a span, counts it and times it.
pub(crate) async fn observe(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| Uuid::new_v4().to_string(), str::to_owned);
    let span = tracing::info_span!("request", %method, %route, request_id = %request_id);
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels { method, route: route.clone(), status })
        .inc();
    state.metrics.durations.get_or_create(&RouteLabels { route }).observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(status, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "answered");
    });
    if let Ok(value) = axum::http::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
