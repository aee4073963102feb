//! Synchronous invocations in flight: carried by their job, kept in Redis, written behind.
//!
//! A synchronous caller waits for its answer, and gets an error when the platform fails, so its
//! invocation's row is history, not a promise: nothing on its way needs a PostgreSQL commit. The
//! gateway puts the whole invocation into its job ([`Carried`]) and its row, `queued`, under
//! [`Keys::live`](super::Keys::live); the executor runs it without a claim in the store (the
//! consumer group's delivery is the claim, [`Queue::hold`] renews it), keeps the row there
//! as it changes, announces the outcome and hands the finished row to a writer that records it
//! in batches ([`Store::record_finished`](crate::store::Store::record_finished)) and then forgets
//! the key. Readers look in the store first and here second, so a call is visible from its
//! submission on.
//!
//! What a crash can lose: an executor that dies after answering and before its writer committed
//! takes the rows it had not written yet with it (the batch being written and what queued up
//! behind it, normally a few milliseconds' worth); their keys expire after [`LIVE_TTL`]. An
//! executor that dies while running a call leaves its entry pending, and another executor runs
//! the call again once the entry has been idle for a lease and a half, as for every job.

use std::time::Duration;

use redis::AsyncCommands as _;
use uuid::Uuid;

use super::{Completion, Delivery, GROUP, Job, Queue, QueueError, Result};
use crate::store::{InvocationRow, Status};

/// How long a live row is kept when nobody forgets it: its writer died, or PostgreSQL was
/// unreachable for longer than the writer could hold the rows.
pub const LIVE_TTL: Duration = Duration::from_secs(3600);

/// A synchronous invocation as its job carries it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    /// The row it becomes, as it stands: `queued`, with the attempts made so far.
    pub row: InvocationRow,
    /// The generation of the Function that was ready when the call was submitted: an executor
    /// whose copy of the Function is older must look again before running it.
    pub generation: i64,
}

fn live_error(invocation_id: Uuid) -> impl FnOnce(redis::RedisError) -> QueueError {
    move |source| QueueError::Live { invocation_id, source }
}

fn encode(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| QueueError::UnexpectedReply { operation: "encode row", detail: e.to_string() })
}

fn ttl_seconds() -> u64 {
    LIVE_TTL.as_secs()
}

/// An attempt of a live call that an executor started: kept beside the row rather than in it,
/// so announcing the start never has to wait for, or race with, writing the outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Started {
    /// The attempt's number (the row's `attempts` once it ends).
    pub attempt: i32,
    /// The executor running it.
    pub owner: String,
    /// When it started.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Until when the executor holds it unless it renews its hold.
    pub held_until: chrono::DateTime<chrono::Utc>,
}

/// The hash fields of a live key: the row, and the attempt running now.
const ROW: &str = "row";
const STARTED: &str = "started";

impl Queue {
    /// Keeps `job`'s row under its live key and adds the job to the stream, in one round trip.
    /// The job must carry its invocation ([`Job::carried`]).
    pub async fn submit_carried(&self, job: &Job) -> Result<()> {
        let id = job.invocation_id;
        let Some(carried) = &job.carried else {
            return Err(QueueError::UnexpectedReply {
                operation: "submit carried job",
                detail: format!("job {id} carries no invocation"),
            });
        };
        let key = self.keys.live(id);
        redis::pipe()
            .hset(&key, ROW, encode(&carried.row)?)
            .ignore()
            .expire(&key, i64::try_from(ttl_seconds()).unwrap_or(i64::MAX))
            .ignore()
            .cmd("XADD")
            .arg(self.keys.stream())
            .arg("*")
            .arg(&job.fields()?[..])
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|source| QueueError::Enqueue { invocation_id: id, source })
    }

    /// The live row of invocation `id` (a synchronous call not yet written to the store), as it
    /// stands: `running` while an executor runs an attempt of it.
    pub async fn live(&self, id: Uuid) -> Result<Option<InvocationRow>> {
        let fields: std::collections::HashMap<String, String> =
            self.conn.clone().hgetall(self.keys.live(id)).await.map_err(live_error(id))?;
        let decode = |what: &'static str, raw: &str| QueueError::UnexpectedReply {
            operation: what,
            detail: format!("invocation {id}: {raw}"),
        };
        let Some(raw) = fields.get(ROW) else { return Ok(None) };
        let mut row: InvocationRow =
            serde_json::from_str(raw).map_err(|e| decode("read live row", &e.to_string()))?;
        if let Some(raw) = fields.get(STARTED) {
            let started: Started = serde_json::from_str(raw)
                .map_err(|e| decode("read live attempt", &e.to_string()))?;
            if !row.status.is_terminal() && started.attempt > row.attempts {
                row.status = Status::Running;
                row.attempts = started.attempt;
                row.lease_owner = Some(started.owner);
                row.lease_expires_at = Some(started.held_until);
                row.started_at = Some(started.at);
                row.queued_at = None;
                row.updated_at = started.at;
            }
        }
        Ok(Some(row))
    }

    /// Says that an attempt of live call `id` started. Nothing waits for it: an announcement
    /// that arrives after the outcome changes nothing, as a finished row wins.
    pub async fn start_live(&self, id: Uuid, started: &Started) -> Result<()> {
        let key = self.keys.live(id);
        redis::pipe()
            .hset(&key, STARTED, encode(started)?)
            .ignore()
            .expire(&key, i64::try_from(ttl_seconds()).unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(live_error(id))
    }

    /// Replaces the live row of `row.id` (an attempt failed and the call waits for a retry).
    pub async fn keep_live(&self, row: &InvocationRow) -> Result<()> {
        self.conn
            .clone()
            .hset::<_, _, _, ()>(self.keys.live(row.id), ROW, encode(row)?)
            .await
            .map_err(live_error(row.id))
    }

    /// Keeps the finished `row` under its live key, announces `completion` and acknowledges
    /// `delivery`, in one round trip and in that order: whoever hears the announcement finds
    /// the row. Returns whether the delivery was still pending.
    pub async fn finish_carried(
        &self,
        row: &InvocationRow,
        completion: &Completion,
        delivery: &Delivery,
    ) -> Result<bool> {
        let (acked,): (u64,) = redis::pipe()
            .hset(self.keys.live(row.id), ROW, encode(row)?)
            .ignore()
            .cmd("PUBLISH")
            .arg(self.keys.completions())
            .arg(completion.message())
            .ignore()
            .add_command(self.xack(delivery))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(live_error(row.id))?;
        Ok(acked > 0)
    }

    /// Drops the live rows of `ids`, once the store holds them.
    pub async fn forget_live(&self, ids: &[Uuid]) -> Result<()> {
        let Some(first) = ids.first() else { return Ok(()) };
        let keys: Vec<String> = ids.iter().map(|id| self.keys.live(*id)).collect();
        self.conn.clone().del::<_, ()>(keys).await.map_err(live_error(*first))
    }

    /// Renews `consumer`'s hold on `delivery`: resets the entry's idle time, so it is not
    /// reclaimed while its run goes on. A carried job has no lease in the store; this is its
    /// lease. Returns false when the entry is no longer `consumer`'s (it was reclaimed, or
    /// acknowledged).
    pub async fn hold(&self, consumer: &str, delivery: &Delivery) -> Result<bool> {
        let held: i64 = self
            .scripts
            .hold
            .key(self.keys.stream())
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .arg(consumer)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(live_error(delivery.job.invocation_id))?;
        Ok(held == 1)
    }
}

/// Resets the idle time of an entry its consumer still holds.
pub(super) const HOLD: &str = r#"
-- KEYS[1] invocation stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] consumer
-- Returns 1 when the consumer held the entry (its idle time is now 0), 0 when it did not (then
-- nothing changed: the entry is not taken from whoever holds it).
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"#;
