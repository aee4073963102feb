//! Synchronous calls, carried whole by their jobs: run with no claim in the store, their rows
//! kept in Redis and written behind (`kubefaas_core::queue::live`).
//!
//! The consumer group's delivery is the claim and [`Queue::hold`] its lease; every delivery of
//! the entry is one attempt, so a call whose executor died is run again after a reclaim, up to
//! its `max_attempts`, like any other. Retries go through the delayed set with the row, updated,
//! in the job.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use kubefaas_core::{
    queue::{
        Delivery, Queue,
        live::{Carried, Started},
    },
    resources::InvocationError,
    store::{InvocationRow, Outcome, Status},
};
use tokio::time::MissedTickBehavior;

use super::{
    Backend, Expected, FunctionSource, Handled, Resolution, Worker, WorkerError, WorkerObserver,
    announcement, decide_retry, outcome_of,
};
use crate::{
    Invocation, Request,
    error::{error_types, platform_error},
};

impl<S: FunctionSource, O: WorkerObserver, B: Backend> Worker<S, O, B> {
    /// Handles one delivery of a carried call, from its start to its acknowledgement.
    pub(super) async fn process_carried(
        &self,
        delivery: Delivery,
        carried: Arc<Carried>,
    ) -> Result<Handled, WorkerError> {
        let job = &delivery.job;
        let mut row = carried.row.clone();
        let deliveries = i32::try_from(delivery.deliveries).unwrap_or(i32::MAX);
        let attempt = row.attempts.saturating_add(deliveries.max(1));
        if attempt > row.max_attempts {
            // Handed out again after the executors running it stopped, more often than its
            // policy allows.
            let error = platform_error(
                error_types::INSTANCE_START_FAILED,
                format!("given up after {} attempts that ended without an outcome", attempt - 1),
            );
            row.attempts = attempt - 1;
            return self.finish(&delivery, row, Outcome::failed(Status::Failed, error), None).await;
        }
        let now = Utc::now();
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::MAX);
        let started = Started {
            attempt,
            owner: self.config.name.clone(),
            at: now,
            held_until: now.checked_add_signed(lease).unwrap_or(now),
        };
        // Readers learn that it runs; nothing waits for that.
        let (queue, id) = (self.queue.clone(), row.id);
        tokio::spawn(async move {
            if let Err(error) = queue.start_live(id, &started).await {
                tracing::debug!(invocation = %id, %error, "cannot announce a call's start");
            }
        });
        row.attempts = attempt;
        row.started_at = Some(now);

        let expected =
            Expected { id: job.function_id, state: None, generation: Some(carried.generation) };
        let function = match self.resolve_for(job, &expected).await {
            Resolution::Ready(function) => function,
            Resolution::Gone(error) => {
                let outcome = Outcome::failed(Status::Failed, error);
                return self.finish(&delivery, row, outcome, None).await;
            }
            Resolution::Unavailable(failure) => {
                return self.retry_or_fail_carried(&delivery, &carried, row, failure).await;
            }
        };
        let request = Request {
            id: job.invocation_id.to_string(),
            payload: row.payload.clone().unwrap_or(serde_json::Value::Null),
            timeout: Duration::from_secs(u64::try_from(row.timeout_seconds).unwrap_or(1).max(1)),
        };
        let holder = self.hold_while_running(&delivery);
        let run = match self.run_holding(job, &function, &request, holder).await {
            Ok(run) => run,
            Err(failure) => {
                return self.retry_or_fail_carried(&delivery, &carried, row, failure).await;
            }
        };
        let outcome = outcome_of(&run);
        if let Some(error) = outcome.error.clone()
            && outcome.status == Some(Status::Failed)
            && let Some(delay) = decide_retry(
                &error,
                attempt,
                row.max_attempts,
                &row.retry_policy(),
                self.config.max_backoff,
            )
        {
            return self.retry_carried(&delivery, &carried, row, error, delay).await;
        }
        self.finish(&delivery, row, outcome, Some(&run)).await
    }

    /// Gives up on a carried call whose entry went to the dead-letter stream: its row ends
    /// `failed` with `error`, is announced and is written.
    pub(super) async fn give_up_carried(
        &self,
        carried: &Carried,
        error: InvocationError,
    ) -> Result<(), WorkerError> {
        let row = finished(carried.row.clone(), Outcome::failed(Status::Failed, error));
        self.queue.keep_live(&row).await?;
        self.queue.publish_completion(&announcement(&row)).await?;
        self.history.record(row);
        Ok(())
    }

    /// The call ends with `outcome`: its finished row is kept, announced, acknowledged and
    /// handed to the history writer.
    async fn finish(
        &self,
        delivery: &Delivery,
        row: InvocationRow,
        outcome: Outcome,
        run: Option<&Invocation>,
    ) -> Result<Handled, WorkerError> {
        let row = finished(row, outcome);
        let status = row.status;
        if !self.queue.finish_carried(&row, &announcement(&row), delivery).await? {
            // Reclaimed meanwhile (this executor was presumed dead): the call ran twice, and
            // the first row written stands.
            tracing::warn!(invocation = %row.id, "a reclaimed call finished here too");
        }
        self.history.record(row);
        Ok(self.observe(&delivery.job, Handled::Finished(status), run))
    }

    async fn retry_or_fail_carried(
        &self,
        delivery: &Delivery,
        carried: &Carried,
        row: InvocationRow,
        failure: InvocationError,
    ) -> Result<Handled, WorkerError> {
        let max_backoff = self.config.max_backoff;
        let policy = row.retry_policy();
        match decide_retry(&failure, row.attempts, row.max_attempts, &policy, max_backoff) {
            Some(delay) => self.retry_carried(delivery, carried, row, failure, delay).await,
            None => {
                self.finish(delivery, row, Outcome::failed(Status::Failed, failure), None).await
            }
        }
    }

    /// Puts the call back, through the delayed set, for another attempt after `delay`; its job
    /// carries the row with this attempt counted and its error.
    async fn retry_carried(
        &self,
        delivery: &Delivery,
        carried: &Carried,
        mut row: InvocationRow,
        error: InvocationError,
        delay: Duration,
    ) -> Result<Handled, WorkerError> {
        let now = Utc::now();
        tracing::info!(invocation = %row.id, attempt = row.attempts, ?delay, error = %error.type_, "retrying");
        row.status = Status::Queued;
        row.error = Some(error);
        row.queued_at =
            chrono::Duration::from_std(delay).ok().and_then(|d| now.checked_add_signed(d));
        row.updated_at = now;
        let mut retried = delivery.clone();
        retried.job.carried =
            Some(Arc::new(Carried { row: row.clone(), generation: carried.generation }));
        // The row first: while the job waits, readers see the attempt's error.
        self.queue.keep_live(&row).await?;
        let handled = match self.queue.retry_later(&retried, delay).await? {
            Some(_) => Handled::Retrying(delay),
            None => Handled::Dropped,
        };
        Ok(self.observe(&delivery.job, handled, None))
    }

    /// Renews this executor's hold on `delivery` every third of a lease while it runs.
    fn hold_while_running(&self, delivery: &Delivery) -> tokio::task::JoinHandle<()> {
        let (queue, name, delivery) =
            (self.queue.clone(), self.config.name.clone(), delivery.clone());
        let lease = self.config.lease;
        tokio::spawn(async move { hold(&queue, &name, &delivery, lease).await })
    }
}

async fn hold(queue: &Queue, name: &str, delivery: &Delivery, lease: Duration) {
    let mut every = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        match queue.hold(name, delivery).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(invocation = %delivery.job.invocation_id, "hold on a call lost while running");
                return;
            }
            Err(error) => {
                tracing::warn!(invocation = %delivery.job.invocation_id, %error, "renewing the hold on a call failed");
            }
        }
    }
}

/// `row` ended with `outcome`.
fn finished(mut row: InvocationRow, outcome: Outcome) -> InvocationRow {
    let now = Utc::now();
    row.status = outcome.status.unwrap_or(Status::Failed);
    row.result = outcome.result;
    row.error = outcome.error;
    row.metrics = outcome.metrics;
    row.logs = outcome.logs;
    row.lease_owner = None;
    row.lease_expires_at = None;
    row.queued_at = None;
    row.completed_at = Some(now);
    row.updated_at = now;
    row
}
