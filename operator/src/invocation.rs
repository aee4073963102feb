//! The invocation controller.
//!
//! An Invocation goes: wait (bounded) for its function to be invocable → submit it
//! ([`submit::submit`], the path every producer takes: the row is committed as `queued`,
//! idempotent on the object's uid, and the job is put on the queue) → mirror the row into the
//! status. The executor publishes each completion; the operator follows
//! those notices and reconciles the invocation at once, so the outcome shows up promptly without
//! polling. A periodic requeue is only the safety net for a missed notice.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    api::DeleteParams,
    runtime::{controller::Action, events::EventType},
};
use kubefaas_core::{
    resources::{Function, Invocation, InvocationError, InvocationPhase, InvocationStatus},
    store::{InvocationRow, Source, Status},
    submit::{self, Submission, SubmitError},
    validation,
};
use uuid::Uuid;

use crate::{
    Context, Error,
    function::publish,
    names::{condition, reason},
    status,
};

/// Safety net: how often an unfinished invocation is looked at without a notice.
const UNFINISHED_RESYNC: Duration = Duration::from_secs(60);
/// How often an invocation waiting for its function checks again.
const FUNCTION_POLL: Duration = Duration::from_secs(1);
/// Largest log tail copied into the status.
const MAX_STATUS_LOGS: usize = 4 * 1024;
/// Largest result (serialised) copied into the status; larger ones are read through the REST API.
const MAX_STATUS_RESULT: usize = 64 * 1024;

/// Reconciles one Invocation.
pub(crate) async fn reconcile(
    invocation: Arc<Invocation>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer("Invocation");
    let namespace = invocation
        .namespace()
        .ok_or(Error::MissingField { kind: "Invocation", field: "metadata.namespace" })?;
    let current = invocation.status.clone().unwrap_or_default();
    if current.phase.is_some_and(InvocationPhase::is_terminal) {
        return expire(&invocation, &namespace, &current, &ctx).await;
    }
    let id = invocation_id(&invocation)?;
    match ctx.store.invocation(id).await? {
        Some(row) => follow(&invocation, &namespace, row, &ctx).await,
        None => start(&invocation, &namespace, id, &ctx).await,
    }
}

/// Transient errors back off.
pub(crate) fn error_policy(
    invocation: Arc<Invocation>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.reconcile_failed("Invocation");
    tracing::warn!(invocation = %invocation.name_any(), error = %error, "invocation reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn invocation_id(invocation: &Invocation) -> Result<Uuid, Error> {
    invocation
        .uid()
        .and_then(|uid| Uuid::parse_str(&uid).ok())
        .ok_or(Error::MissingField { kind: "Invocation", field: "metadata.uid in UUID form" })
}

/// No row yet: check the invocation and its function, record it and put it on the queue.
async fn start(
    invocation: &Invocation,
    namespace: &str,
    id: Uuid,
    ctx: &Context,
) -> Result<Action, Error> {
    let name = invocation.name_any();
    let current = invocation.status.clone().unwrap_or_default();
    if let Err(errors) = validation::validate_invocation(&name, &invocation.spec, &ctx.limits) {
        return invalid(invocation, namespace, &current, &errors, ctx).await;
    }
    let function_name = &invocation.spec.function_ref.name;
    let functions: Api<Function> = Api::namespaced(ctx.client.clone(), namespace);
    let function = functions
        .get_opt(function_name)
        .await
        .map_err(Error::kube("get Function", format!("{namespace}/{function_name}")))?;
    let Some(function) = function else {
        let message = format!("function {function_name:?} does not exist");
        let why = reason::FUNCTION_NOT_FOUND;
        return wait_for_function(invocation, namespace, &current, why, &message, ctx).await;
    };
    let submission = Submission {
        id,
        source: Source::Resource,
        resource_name: Some(name.clone()),
        payload: invocation.spec.payload.clone(),
        headers: invocation.spec.headers.clone(),
        timeout_seconds: invocation.spec.timeout_seconds,
    };
    let submitted = submit::submit(&ctx.store, &ctx.queue, &ctx.limits, &function, submission);
    let row = match submitted.await {
        Ok(submitted) => {
            if submitted.new {
                let message = "queued for execution";
                publish(ctx, invocation, EventType::Normal, reason::QUEUED, message).await;
            }
            submitted.row
        }
        Err(SubmitError::NotReady { name, why }) => {
            let message = format!("function {name:?} is not ready: {why}");
            let why = reason::FUNCTION_NOT_READY;
            return wait_for_function(invocation, namespace, &current, why, &message, ctx).await;
        }
        Err(SubmitError::Deleted(name)) => {
            let message = format!("function {name:?} was deleted");
            let why = reason::FUNCTION_NOT_FOUND;
            return wait_for_function(invocation, namespace, &current, why, &message, ctx).await;
        }
        Err(SubmitError::Invalid(errors)) => {
            return invalid(invocation, namespace, &current, &errors, ctx).await;
        }
        Err(SubmitError::Store(error)) => return Err(error.into()),
        // Only a `Submitter` or a carried submission answers these; kept apart so a new kind
        // of refusal is not lost.
        Err(error @ (SubmitError::Batch(_) | SubmitError::Stopped | SubmitError::Queue(_))) => {
            return Err(Error::Submit(error));
        }
    };
    follow(invocation, namespace, row, ctx).await
}

/// The row exists: mirror it into the status (releasing a row an earlier version left pending).
async fn follow(
    invocation: &Invocation,
    namespace: &str,
    row: InvocationRow,
    ctx: &Context,
) -> Result<Action, Error> {
    let mut row = row;
    if row.status == Status::Pending {
        // Left by an earlier version of the operator: recorded, never queued.
        if let Err(error) = submit::release(&ctx.store, &ctx.queue, &row).await? {
            return Err(error.into());
        }
        row = ctx.store.invocation(row.id).await?.unwrap_or(row);
    }
    let current = invocation.status.clone().unwrap_or_default();
    let status = status_from_row(&row, &current, invocation.metadata.generation);
    if status != current {
        status::write::<Invocation>(ctx, namespace, &invocation.name_any(), &status).await?;
    }
    if row.status.is_terminal() {
        ctx.metrics.invocation_finished(row.status.as_str());
        return Ok(ttl_action(invocation, &status).unwrap_or_else(Action::await_change));
    }
    Ok(Action::requeue(UNFINISHED_RESYNC))
}

/// The function is missing or not ready: wait a bounded time, then fail.
async fn wait_for_function(
    invocation: &Invocation,
    namespace: &str,
    current: &InvocationStatus,
    why: &str,
    message: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let age = invocation
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|created| jiff::Timestamp::now().duration_since(created.0).unsigned_abs())
        .unwrap_or_default();
    if age >= ctx.function_wait {
        return fail(invocation, namespace, current, why, message, ctx).await;
    }
    let generation = invocation.metadata.generation;
    let status = InvocationStatus {
        phase: Some(InvocationPhase::Pending),
        conditions: vec![status::condition(
            &current.conditions,
            condition::COMPLETE,
            false,
            reason::WAITING_FOR_FUNCTION,
            message,
            generation,
        )],
        observed_generation: generation,
        ..InvocationStatus::default()
    };
    if &status != current {
        status::write::<Invocation>(ctx, namespace, &invocation.name_any(), &status).await?;
    }
    Ok(Action::requeue(
        FUNCTION_POLL.min(ctx.function_wait.saturating_sub(age)).max(Duration::from_millis(100)),
    ))
}

async fn invalid(
    invocation: &Invocation,
    namespace: &str,
    current: &InvocationStatus,
    errors: &validation::ValidationErrors,
    ctx: &Context,
) -> Result<Action, Error> {
    fail(invocation, namespace, current, reason::INVALID_SPEC, &errors.to_string(), ctx).await
}

/// Fails an invocation that never got a row (its function is missing, not ready, or its spec is
/// invalid). There is nothing to record in PostgreSQL: the row would need a function.
async fn fail(
    invocation: &Invocation,
    namespace: &str,
    current: &InvocationStatus,
    why: &str,
    message: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    let generation = invocation.metadata.generation;
    let status = InvocationStatus {
        phase: Some(InvocationPhase::Failed),
        error: Some(InvocationError {
            type_: why.to_owned(),
            message: message.to_owned(),
            stack: None,
        }),
        completion_time: Some(status::now()),
        conditions: vec![status::condition(
            &current.conditions,
            condition::COMPLETE,
            true,
            why,
            message,
            generation,
        )],
        observed_generation: generation,
        ..InvocationStatus::default()
    };
    status::write::<Invocation>(ctx, namespace, &invocation.name_any(), &status).await?;
    publish(ctx, invocation, EventType::Warning, why, message).await;
    ctx.metrics.invocation_finished(Status::Failed.as_str());
    Ok(ttl_action(invocation, &status).unwrap_or_else(Action::await_change))
}

/// A finished invocation: delete it once its TTL has passed.
async fn expire(
    invocation: &Invocation,
    namespace: &str,
    status: &InvocationStatus,
    ctx: &Context,
) -> Result<Action, Error> {
    match ttl_action(invocation, status) {
        Some(action) => Ok(action),
        None if invocation.spec.ttl_seconds_after_finished.is_some() => {
            let api: Api<Invocation> = Api::namespaced(ctx.client.clone(), namespace);
            let name = invocation.name_any();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => Ok(Action::await_change()),
                // Someone else deleted it first: done.
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    Ok(Action::await_change())
                }
                Err(error) => Err(Error::kube(
                    "delete finished Invocation",
                    format!("{namespace}/{name}"),
                )(error)),
            }
        }
        None => Ok(Action::await_change()),
    }
}

/// When a finished invocation with a TTL still has time left, the requeue for its expiry.
/// `None` when it has no TTL or the TTL has passed.
fn ttl_action(invocation: &Invocation, status: &InvocationStatus) -> Option<Action> {
    let ttl = invocation.spec.ttl_seconds_after_finished?;
    let finished = status.completion_time.as_ref()?.0;
    let expires = finished.checked_add(jiff::SignedDuration::from_secs(ttl.max(0))).ok()?;
    let left = jiff::Timestamp::now().duration_until(expires);
    (left.is_positive()).then(|| Action::requeue(left.unsigned_abs()))
}

/// The status mirroring a row.
pub(crate) fn status_from_row(
    row: &InvocationRow,
    current: &InvocationStatus,
    generation: Option<i64>,
) -> InvocationStatus {
    let phase = InvocationPhase::from(row.status);
    let mut note = String::new();
    let result = row.result.clone().filter(|result| {
        let size = serde_json::to_vec(result).map(|bytes| bytes.len()).unwrap_or(usize::MAX);
        let fits = size <= MAX_STATUS_RESULT;
        if !fits {
            note = format!("; the result ({size} bytes) is too large for the status: read it with GET /invocations/{}", row.id);
        }
        fits
    });
    let terminal = row.status.is_terminal();
    let (why, message) = if terminal {
        (format!("{phase:?}"), format!("finished after {} attempt(s){note}", row.attempts))
    } else {
        (format!("{phase:?}"), format!("{} (attempt {})", row.status, row.attempts))
    };
    InvocationStatus {
        phase: Some(phase),
        result,
        error: row.error.clone(),
        attempts: Some(row.attempts),
        queued_at: row.queued_at.and_then(status::time),
        start_time: row.started_at.and_then(status::time),
        completion_time: row.completed_at.and_then(status::time),
        metrics: row.metrics.clone(),
        logs: row.logs.as_deref().map(|logs| status::tail(logs, MAX_STATUS_LOGS)),
        conditions: vec![status::condition(
            &current.conditions,
            condition::COMPLETE,
            terminal,
            &why,
            message,
            generation,
        )],
        observed_generation: generation,
    }
    .with_queued_at_kept(current)
}

trait KeepQueuedAt {
    fn with_queued_at_kept(self, current: &InvocationStatus) -> Self;
}

impl KeepQueuedAt for InvocationStatus {
    /// The row forgets when it was queued once it is claimed; the status keeps the first time
    /// it saw.
    fn with_queued_at_kept(mut self, current: &InvocationStatus) -> Self {
        if self.queued_at.is_none() {
            self.queued_at = current.queued_at.clone();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use kubefaas_core::resources::InvocationMetrics;
    use serde_json::json;

    use super::*;

    fn row(status: Status) -> InvocationRow {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        InvocationRow {
            id: Uuid::nil(),
            function_id: Uuid::nil(),
            namespace: "default".into(),
            function_name: "hello".into(),
            resource_name: Some("hello-once".into()),
            source: Source::Resource,
            payload: None,
            headers: BTreeMap::new(),
            status,
            result: None,
            error: None,
            metrics: None,
            logs: None,
            timeout_seconds: 30,
            attempts: 1,
            max_attempts: 3,
            backoff_seconds: 1,
            retry_on_function_error: false,
            lease_owner: None,
            lease_expires_at: None,
            queued_at: Some(at),
            created_at: at,
            started_at: None,
            completed_at: None,
            updated_at: at,
        }
    }

    #[test]
    fn a_finished_row_becomes_a_complete_status_with_result_metrics_and_log_tail() {
        let mut finished = row(Status::Succeeded);
        finished.result = Some(json!({"greeting": "hello"}));
        finished.metrics =
            Some(InvocationMetrics { duration_ms: Some(5), ..InvocationMetrics::default() });
        finished.logs = Some("x".repeat(10_000));
        finished.completed_at = Some(finished.created_at);
        let status = status_from_row(&finished, &InvocationStatus::default(), Some(1));
        assert_eq!(status.phase, Some(InvocationPhase::Succeeded));
        assert_eq!(status.result, Some(json!({"greeting": "hello"})));
        assert_eq!(status.metrics.unwrap().duration_ms, Some(5));
        assert!(status.logs.as_ref().unwrap().len() < 4200, "logs are cut to a tail");
        assert!(status.completion_time.is_some());
        assert_eq!(status.conditions[0].type_, condition::COMPLETE);
        assert_eq!(status.conditions[0].status, "True");
        assert_eq!(status.conditions[0].reason, "Succeeded");
    }

    #[test]
    fn an_oversized_result_is_left_out_of_the_status_with_a_pointer() {
        let mut finished = row(Status::Succeeded);
        finished.result = Some(json!("y".repeat(MAX_STATUS_RESULT + 1)));
        let status = status_from_row(&finished, &InvocationStatus::default(), Some(1));
        assert_eq!(status.result, None);
        assert!(
            status.conditions[0].message.contains("GET /invocations/"),
            "{}",
            status.conditions[0].message
        );
    }

    #[test]
    fn the_first_queued_time_survives_the_claim() {
        let queued = status_from_row(&row(Status::Queued), &InvocationStatus::default(), Some(1));
        assert!(queued.queued_at.is_some());
        let mut running = row(Status::Running);
        running.queued_at = None;
        let status = status_from_row(&running, &queued, Some(1));
        assert_eq!(status.queued_at, queued.queued_at);
        assert_eq!(status.conditions[0].status, "False");
    }
}
