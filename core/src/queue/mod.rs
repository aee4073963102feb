//! The invocation queue on Redis Streams (`docs/ARCHITECTURE.md`, "An invocation's life").
//!
//! Delivery is at least once: a consumer group (`executors`) hands each entry of the invocation
//! stream to one consumer, which acknowledges it when the invocation reached a terminal state in
//! Postgres (or, for a synchronous call carried whole by its job, in its live row: [`live`]). Entries of a consumer that died are reclaimed by another one after a minimum idle
//! time ([`Consumer::reclaim`]); entries handed out more than
//! [`QueueConfig::max_deliveries`] times go to the dead-letter stream instead. Exactly-once in
//! effect comes from the compare-and-set transitions on the invocation row, not from here.
//!
//! Retries go through a sorted set of delayed jobs scored by their due time on the *server's*
//! clock; [`Queue::promote_due`] moves due jobs back onto the stream. Every transition that
//! touches two keys is one Lua script, documented with its `KEYS`/`ARGV` at the top.
//!
//! Completions are announced on one pub/sub channel. [`Completions`] shares a single pub/sub
//! connection between all synchronous waiters and never misses a completion: a waiter registers
//! first and then asks the caller's store whether the invocation already finished.
//!
//! All keys derive from one prefix ([`Keys`]). The scripts touch several keys, so the queue
//! expects a single Redis server (or a primary with replicas), not Redis Cluster.

use std::{
    collections::HashMap,
    future::Future,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::StreamExt;
use redis::{
    AsyncConnectionConfig, Client, RedisError, Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub},
    streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply},
};
use tokio::{
    sync::{Notify, broadcast, watch},
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};
use uuid::Uuid;

pub mod live;

/// The consumer group every executor reads the invocation stream through.
pub const GROUP: &str = "executors";

/// Extra time a blocking read may take beyond its `BLOCK` before the client gives up on it.
const BLOCKING_READ_MARGIN: Duration = Duration::from_secs(5);

/// Errors of the queue module, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Opening a connection to Redis failed.
    #[error("could not connect to Redis")]
    Connect(#[source] RedisError),
    /// `XGROUP CREATE` failed with something other than "group exists".
    #[error("could not create consumer group {GROUP}")]
    CreateGroup(#[source] RedisError),
    /// Adding a job to the invocation stream failed.
    #[error("could not enqueue invocation {invocation_id}")]
    Enqueue {
        /// The invocation that was not enqueued.
        invocation_id: Uuid,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Reading new entries for a consumer failed.
    #[error("could not claim jobs for consumer {consumer}")]
    Claim {
        /// The consumer that tried to claim.
        consumer: String,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Acknowledging an entry failed.
    #[error("could not acknowledge entry {entry_id}")]
    Ack {
        /// The stream entry.
        entry_id: String,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Scheduling a retry failed.
    #[error("could not schedule a retry of entry {entry_id}")]
    RetryLater {
        /// The stream entry.
        entry_id: String,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Moving due retries onto the stream failed.
    #[error("could not promote due retries")]
    PromoteDue(#[source] RedisError),
    /// Claiming idle entries of other consumers failed.
    #[error("could not reclaim idle entries for consumer {consumer}")]
    Reclaim {
        /// The consumer that tried to reclaim.
        consumer: String,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Moving an entry to the dead-letter stream failed.
    #[error("could not dead-letter entry {entry_id}")]
    DeadLetter {
        /// The stream entry.
        entry_id: String,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Reading the dead-letter stream failed.
    #[error("could not read the dead-letter stream")]
    ReadDeadLetters(#[source] RedisError),
    /// Trimming the invocation stream failed.
    #[error("could not trim the invocation stream")]
    Trim(#[source] RedisError),
    /// Collecting queue statistics failed.
    #[error("could not read queue statistics")]
    Stats(#[source] RedisError),
    /// A script answered with something the queue does not understand.
    #[error("unexpected reply from Redis to {operation}: {detail}")]
    UnexpectedReply {
        /// The operation whose reply was wrong.
        operation: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// Publishing a completion failed.
    #[error("could not publish the completion of invocation {invocation_id}")]
    PublishCompletion {
        /// The invocation.
        invocation_id: Uuid,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Reading or writing a synchronous invocation's live row failed.
    #[error("could not keep the live row of invocation {invocation_id}")]
    Live {
        /// The invocation.
        invocation_id: Uuid,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
    /// Subscribing to the completion channel failed.
    #[error("could not subscribe to completion channel {channel}")]
    Subscribe {
        /// The channel.
        channel: String,
        /// What Redis said.
        #[source]
        source: RedisError,
    },
}

type Result<T, E = QueueError> = std::result::Result<T, E>;

/// Redis key names, all derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    stream: String,
    delayed: String,
    dead: String,
    completions: String,
    live: String,
}

impl Keys {
    /// Key names under `prefix` (for example `kubefaas`).
    pub fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}:invocations"),
            delayed: format!("{prefix}:delayed"),
            dead: format!("{prefix}:dead"),
            completions: format!("{prefix}:done"),
            live: format!("{prefix}:live:"),
        }
    }

    /// Where a synchronous invocation's row is kept until it is written to the store
    /// (`{prefix}:live:<id>`); see [`live`].
    pub fn live(&self, id: Uuid) -> String {
        format!("{}{id}", self.live)
    }

    /// The invocation stream (`{prefix}:invocations`).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The sorted set of jobs waiting for a retry, scored by due time in ms
    /// (`{prefix}:delayed`).
    pub fn delayed(&self) -> &str {
        &self.delayed
    }

    /// The dead-letter stream (`{prefix}:dead`).
    pub fn dead(&self) -> &str {
        &self.dead
    }

    /// The pub/sub channel completions are announced on (`{prefix}:done`).
    pub fn completions(&self) -> &str {
        &self.completions
    }

    /// Every key the queue stores data in (the channel is not a key).
    pub fn all(&self) -> [&str; 3] {
        [&self.stream, &self.delayed, &self.dead]
    }
}

/// How the queue is set up.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Prefix of every key; see [`Keys`].
    pub prefix: String,
    /// An entry handed out more often than this without being acknowledged is a poison message:
    /// [`Consumer::reclaim`] moves it to the dead-letter stream.
    pub max_deliveries: u32,
    /// How long a non-blocking command may take before it fails.
    pub response_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            prefix: "kubefaas".to_owned(),
            max_deliveries: 5,
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// One invocation to run, as it travels through the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The invocation's id (its Postgres row).
    pub invocation_id: Uuid,
    /// The function's id (its Postgres row).
    pub function_id: Uuid,
    /// Namespace of the function.
    pub namespace: String,
    /// Name of the function.
    pub function: String,
    /// When the invocation was first enqueued, in ms since the Unix epoch; kept across retries.
    pub enqueued_at_ms: u64,
    /// A synchronous invocation travels whole with its job and has no row until it finished
    /// ([`live`]); every other job names a row.
    pub carried: Option<Arc<live::Carried>>,
}

mod field {
    pub(super) const INVOCATION_ID: &str = "invocation_id";
    pub(super) const FUNCTION_ID: &str = "function_id";
    pub(super) const NAMESPACE: &str = "namespace";
    pub(super) const FUNCTION: &str = "function";
    pub(super) const ENQUEUED_AT_MS: &str = "enqueued_at_ms";
    pub(super) const CARRIED: &str = "carried";
    // Fields the dead-letter script adds in front of the job's own.
    pub(super) const REASON: &str = "reason";
    pub(super) const ATTEMPTS: &str = "attempts";
    pub(super) const SOURCE_ID: &str = "source_id";
}

impl Job {
    /// The first attempt of an invocation, stamped with the current time.
    pub fn new(
        invocation_id: Uuid,
        function_id: Uuid,
        namespace: impl Into<String>,
        function: impl Into<String>,
    ) -> Self {
        Self {
            invocation_id,
            function_id,
            namespace: namespace.into(),
            function: function.into(),
            enqueued_at_ms: now_ms(),
            carried: None,
        }
    }

    /// The job as stream field/value pairs.
    fn fields(&self) -> Result<Vec<(&'static str, String)>> {
        let mut fields = vec![
            (field::INVOCATION_ID, self.invocation_id.to_string()),
            (field::FUNCTION_ID, self.function_id.to_string()),
            (field::NAMESPACE, self.namespace.clone()),
            (field::FUNCTION, self.function.clone()),
            (field::ENQUEUED_AT_MS, self.enqueued_at_ms.to_string()),
        ];
        if let Some(carried) = &self.carried {
            let encoded = serde_json::to_string(carried.as_ref()).map_err(|e| {
                QueueError::UnexpectedReply { operation: "encode job", detail: e.to_string() }
            })?;
            fields.push((field::CARRIED, encoded));
        }
        Ok(fields)
    }

    /// The job as a member of the delayed set: a JSON array of field, value, field, value…,
    /// which the promote script passes to `XADD` as it is.
    fn delayed_member(&self) -> Result<String> {
        let fields = self.fields()?;
        let flat: Vec<&str> =
            fields.iter().flat_map(|(name, value)| [*name, value.as_str()]).collect();
        // Serialising a list of strings cannot fail; map the impossible error rather than panic.
        serde_json::to_string(&flat).map_err(|e| QueueError::UnexpectedReply {
            operation: "encode delayed job",
            detail: e.to_string(),
        })
    }

    /// Reads a job back from stream fields; the error says what is missing or malformed.
    fn from_fields(map: &HashMap<String, Value>) -> std::result::Result<Self, String> {
        fn text(map: &HashMap<String, Value>, name: &str) -> std::result::Result<String, String> {
            match map.get(name) {
                Some(value) => redis::from_redis_value_ref::<String>(value)
                    .map_err(|e| format!("field {name} is not text: {e}")),
                None => Err(format!("field {name} is missing")),
            }
        }
        fn parsed<T: std::str::FromStr>(
            map: &HashMap<String, Value>,
            name: &str,
        ) -> std::result::Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            let raw = text(map, name)?;
            raw.parse().map_err(|e| format!("field {name} ({raw:?}) is invalid: {e}"))
        }
        Ok(Self {
            invocation_id: parsed(map, field::INVOCATION_ID)?,
            function_id: parsed(map, field::FUNCTION_ID)?,
            namespace: text(map, field::NAMESPACE)?,
            function: text(map, field::FUNCTION)?,
            enqueued_at_ms: parsed(map, field::ENQUEUED_AT_MS)?,
            carried: match map.get(field::CARRIED) {
                None => None,
                Some(_) => {
                    let raw = text(map, field::CARRIED)?;
                    let carried = serde_json::from_str(&raw)
                        .map_err(|e| format!("field {} is invalid: {e}", field::CARRIED))?;
                    Some(Arc::new(carried))
                }
            },
        })
    }
}

/// A job handed to a consumer, not yet acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The stream entry id; acknowledging, retrying and dead-lettering go by it.
    pub entry_id: String,
    /// The job.
    pub job: Job,
    /// How many times this entry has been handed out, this time included.
    pub deliveries: u64,
}

/// What [`Consumer::reclaim`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reclaimed {
    /// Entries now owned by the reclaiming consumer, to be run.
    pub deliveries: Vec<Delivery>,
    /// Entries that had been handed out too often (or could not be read) and were moved to the
    /// dead-letter stream. Their invocations will not run: the caller fails them.
    pub dead_lettered: Vec<Abandoned>,
}

/// An entry [`Consumer::reclaim`] moved to the dead-letter stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Abandoned {
    /// Its id in the invocation stream.
    pub entry_id: String,
    /// The job, when the entry could be read.
    pub job: Option<Job>,
    /// How often it had been handed out (deliveries, not attempts: the invocation's row counts
    /// those).
    pub deliveries: u32,
}

/// An entry of the dead-letter stream.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Id of the dead-letter entry.
    pub entry_id: String,
    /// Id the job had in the invocation stream.
    pub source_id: String,
    /// Why it was given up.
    pub reason: String,
    /// How often the entry had been handed out (the stream field is still named `attempts`).
    pub deliveries: u32,
    /// The job, or why it could not be read back (a malformed entry is dead-lettered as is).
    pub job: std::result::Result<Job, String>,
}

/// A point-in-time view of the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Entries in the stream, including acknowledged ones not trimmed yet.
    pub stream_length: u64,
    /// Entries no consumer has been given yet (the group's lag).
    pub undelivered: u64,
    /// Entries handed to a consumer and not acknowledged.
    pub pending: u64,
    /// Jobs waiting in the delayed set for a retry.
    pub delayed: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
    /// Age (by server clock) of the oldest pending entry, if any.
    pub oldest_pending_age_ms: Option<u64>,
    /// Age (by server clock) of the oldest undelivered entry, if any.
    pub oldest_undelivered_age_ms: Option<u64>,
}

impl QueueStats {
    /// Work not finished yet: undelivered, pending and delayed jobs.
    pub fn depth(&self) -> u64 {
        self.undelivered + self.pending + self.delayed
    }
}

/// Exponential backoff for retries: `base * 2^(attempt - 1)`, at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
    /// Pick the delay uniformly from its upper half, so retries of many jobs that failed
    /// together spread out.
    pub jitter: bool,
}

impl Backoff {
    /// The delay before the next attempt after attempt `attempt` (1-based) failed.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        let factor = 2u32.saturating_pow(doublings);
        let delay = self.base.saturating_mul(factor).min(self.cap);
        if !self.jitter {
            return delay;
        }
        // A fresh RandomState is randomly keyed, which is all the randomness jitter needs.
        let random = RandomState::new().hash_one(attempt);
        let half = delay / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let offset = if spread == 0 { 0 } else { random % (spread + 1) };
        delay - half + Duration::from_nanos(offset)
    }
}

// Shared Lua helpers, pasted in front of the scripts that need them.
macro_rules! lua_helpers {
    () => {
        r#"
local function group_info(stream, group)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then return info end
  end
  return nil
end
local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)-'))
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#
    };
}

/// Acknowledges a delivery and schedules the job's next attempt, atomically.
const RETRY_LATER: &str = concat!(
    r#"
-- KEYS[1] invocation stream, KEYS[2] delayed set
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] delay in ms,
-- ARGV[4] the next attempt's job as a JSON array of stream fields and values
-- Returns the due time in server ms, or -1 when the entry was no longer pending (someone else
-- already acknowledged it), in which case nothing is scheduled.
"#,
    lua_helpers!(),
    r#"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
local due = now_ms() + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[4])
return due
"#
);

/// Moves due jobs from the delayed set onto the stream, atomically and never early.
const PROMOTE_DUE: &str = concat!(
    r#"
-- KEYS[1] delayed set, KEYS[2] invocation stream, KEYS[3] dead-letter stream
-- ARGV[1] most jobs to move
-- Due means score <= the server's current time in ms. A member that is not a JSON array of
-- fields and values goes to the dead-letter stream rather than blocking the set.
-- Returns the number of jobs moved onto the stream.
"#,
    lua_helpers!(),
    r#"
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved = 0
for _, member in ipairs(due) do
  local ok, fields = pcall(cjson.decode, member)
  if ok and type(fields) == 'table' and #fields > 0 and #fields % 2 == 0 then
    redis.call('XADD', KEYS[2], '*', unpack(fields))
    moved = moved + 1
  else
    redis.call('XADD', KEYS[3], '*', 'reason', 'malformed delayed job', 'attempts', 0,
      'source_id', '', 'raw', member)
  end
  redis.call('ZREM', KEYS[1], member)
end
return moved
"#
);

/// Acknowledges an entry and copies it to the dead-letter stream, atomically.
const DEAD_LETTER: &str = r#"
-- KEYS[1] invocation stream, KEYS[2] dead-letter stream
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] reason, ARGV[4] attempts
-- The dead letter carries reason, attempts and source_id, then the entry's own fields.
-- Returns 1, or 0 when the entry was no longer pending (already handled; nothing is written).
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local fields = {'reason', ARGV[3], 'attempts', ARGV[4], 'source_id', ARGV[2]}
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if entry[1] then
  for _, v in ipairs(entry[1][2]) do table.insert(fields, v) end
end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
"#;

/// Trims the stream below the oldest entry that still matters.
const TRIM: &str = concat!(
    r#"
-- KEYS[1] invocation stream
-- ARGV[1] group
-- Keeps every pending entry and every entry not delivered yet: trims below the oldest pending
-- entry, or, with nothing pending, below the first entry after the group's last-delivered-id;
-- with nothing pending or undelivered every entry is acknowledged and all go.
-- Assumes the stream has this one group and entries are added with '*' (ids only grow).
-- Returns the number of entries removed.
"#,
    lua_helpers!(),
    r#"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 then
  return redis.call('XTRIM', KEYS[1], 'MINID', pending[2])
end
local info = group_info(KEYS[1], ARGV[1])
if not info then return redis.error_reply('NOGROUP no group ' .. ARGV[1]) end
local first = redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
if first[1] then
  return redis.call('XTRIM', KEYS[1], 'MINID', first[1][1])
end
return redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
"#
);

/// Reads every statistic in one consistent snapshot.
const STATS: &str = concat!(
    r#"
-- KEYS[1] invocation stream, KEYS[2] delayed set, KEYS[3] dead-letter stream
-- ARGV[1] group
-- Returns {stream length, undelivered, pending, delayed, dead letters,
--          oldest pending age ms or -1, oldest undelivered age ms or -1}
"#,
    lua_helpers!(),
    r#"
local now = now_ms()
local info = group_info(KEYS[1], ARGV[1])
if not info then return redis.error_reply('NOGROUP no group ' .. ARGV[1]) end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
local oldest_pending = -1
if pending[1] > 0 then oldest_pending = math.max(0, now - id_ms(pending[2])) end
local after = '(' .. info['last-delivered-id']
local first = redis.call('XRANGE', KEYS[1], after, '+', 'COUNT', 1)
local undelivered, oldest_undelivered = 0, -1
if first[1] then
  oldest_undelivered = math.max(0, now - id_ms(first[1][1]))
  -- The group's lag is unknown after some deletions; count the entries then.
  if type(info['lag']) == 'number' then
    undelivered = info['lag']
  else
    undelivered = #redis.call('XRANGE', KEYS[1], after, '+')
  end
end
return {redis.call('XLEN', KEYS[1]), undelivered, pending[1], redis.call('ZCARD', KEYS[2]),
  redis.call('XLEN', KEYS[3]), oldest_pending, oldest_undelivered}
"#
);

#[derive(Debug)]
struct Scripts {
    retry_later: Script,
    promote_due: Script,
    dead_letter: Script,
    trim: Script,
    stats: Script,
    hold: Script,
}

/// A handle on the queue: cheap to clone, all clones share one multiplexed connection that
/// reconnects on its own. Blocking reads never run on it; see [`Consumer`].
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    conn: ConnectionManager,
    keys: Arc<Keys>,
    max_deliveries: u32,
    scripts: Arc<Scripts>,
}

impl Queue {
    /// Connects to Redis through `client`.
    pub async fn connect(client: Client, config: &QueueConfig) -> Result<Self> {
        let manager_config =
            ConnectionManagerConfig::new().set_response_timeout(Some(config.response_timeout));
        let conn = client
            .get_connection_manager_with_config(manager_config)
            .await
            .map_err(QueueError::Connect)?;
        Ok(Self {
            client,
            conn,
            keys: Arc::new(Keys::new(&config.prefix)),
            max_deliveries: config.max_deliveries,
            scripts: Arc::new(Scripts {
                retry_later: Script::new(RETRY_LATER),
                promote_due: Script::new(PROMOTE_DUE),
                dead_letter: Script::new(DEAD_LETTER),
                trim: Script::new(TRIM),
                stats: Script::new(STATS),
                hold: Script::new(live::HOLD),
            }),
        })
    }

    /// The key names this queue uses.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Creates the stream and the consumer group if they do not exist yet. Safe to call from
    /// every process at start-up; a group that exists is left as it is.
    pub async fn ensure_group(&self) -> Result<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys.stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(QueueError::CreateGroup(e)),
            _ => Ok(()),
        }
    }

    /// Adds a job to the stream; returns its entry id.
    pub async fn enqueue(&self, job: &Job) -> Result<String> {
        redis::cmd("XADD")
            .arg(self.keys.stream())
            .arg("*")
            .arg(&job.fields()?[..])
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| QueueError::Enqueue { invocation_id: job.invocation_id, source })
    }

    /// Appends many jobs in one round trip (a pipeline of `XADD`s). On failure none, some or
    /// all may have been added; enqueueing one twice is harmless (the claim decides who runs
    /// it), so a caller may enqueue them again one by one.
    pub async fn enqueue_all(&self, jobs: &[Job]) -> Result<()> {
        let Some(first) = jobs.first() else { return Ok(()) };
        let mut pipe = redis::pipe();
        for job in jobs {
            pipe.cmd("XADD").arg(self.keys.stream()).arg("*").arg(&job.fields()?[..]).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|source| QueueError::Enqueue { invocation_id: first.invocation_id, source })
    }

    /// Opens a consumer named `name` (unique per executor process) with its own connection for
    /// blocking reads.
    pub async fn consumer(&self, name: impl Into<String>) -> Result<Consumer> {
        let conn = self.blocking_connection().await.map_err(QueueError::Connect)?;
        Ok(Consumer { queue: self.clone(), name: name.into(), conn: Some(conn) })
    }

    async fn blocking_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new())
            .await
    }

    fn xack(&self, delivery: &Delivery) -> redis::Cmd {
        let mut xack = redis::cmd("XACK");
        xack.arg(self.keys.stream()).arg(GROUP).arg(&delivery.entry_id);
        xack
    }

    /// Acknowledges a delivery: the job is done (whatever its outcome) and is never handed out
    /// again. Returns false if it had already been acknowledged.
    pub async fn ack(&self, delivery: &Delivery) -> Result<bool> {
        let acked: u64 =
            self.xack(delivery).query_async(&mut self.conn.clone()).await.map_err(|source| {
                QueueError::Ack { entry_id: delivery.entry_id.clone(), source }
            })?;
        Ok(acked > 0)
    }

    /// Acknowledges a delivery and puts the job back in the delayed
    /// set, due `delay` from now by the server's clock; see [`Backoff`] for the delay. Returns
    /// the due time in ms since the epoch, or `None` if the delivery had already been
    /// acknowledged (then nothing is scheduled).
    pub async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<Option<u64>> {
        let member = delivery.job.delayed_member()?;
        let due: i64 = self
            .scripts
            .retry_later
            .key(self.keys.stream())
            .key(self.keys.delayed())
            .arg(GROUP)
            .arg(&delivery.entry_id)
            .arg(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .arg(member)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| QueueError::RetryLater {
                entry_id: delivery.entry_id.clone(),
                source,
            })?;
        Ok(u64::try_from(due).ok())
    }

    /// Moves up to `limit` jobs whose due time has come from the delayed set onto the stream;
    /// returns how many moved. Call it periodically (every executor may; it is atomic).
    pub async fn promote_due(&self, limit: usize) -> Result<usize> {
        self.scripts
            .promote_due
            .key(self.keys.delayed())
            .key(self.keys.stream())
            .key(self.keys.dead())
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(QueueError::PromoteDue)
    }

    /// Gives a delivery up: acknowledges it and copies it to the dead-letter stream with
    /// `reason` and the delivery count, atomically. Returns false if it had already been acknowledged
    /// (then no dead letter is written).
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        deliveries: u32,
    ) -> Result<bool> {
        self.dead_letter_entry(&delivery.entry_id, reason, deliveries).await
    }

    async fn dead_letter_entry(
        &self,
        entry_id: &str,
        reason: &str,
        deliveries: u32,
    ) -> Result<bool> {
        let moved: u64 = self
            .scripts
            .dead_letter
            .key(self.keys.stream())
            .key(self.keys.dead())
            .arg(GROUP)
            .arg(entry_id)
            .arg(reason)
            .arg(deliveries)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| QueueError::DeadLetter { entry_id: entry_id.to_owned(), source })?;
        Ok(moved > 0)
    }

    /// Reads up to `count` of the oldest dead letters.
    pub async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.keys.dead())
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(QueueError::ReadDeadLetters)?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| DeadLetter {
                source_id: entry.get(field::SOURCE_ID).unwrap_or_default(),
                reason: entry.get(field::REASON).unwrap_or_default(),
                deliveries: entry
                    .get::<String>(field::ATTEMPTS)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_default(),
                job: Job::from_fields(&entry.map),
                entry_id: entry.id,
            })
            .collect())
    }

    /// Removes acknowledged entries from the stream. Never removes an entry that is pending or
    /// not delivered yet (one script, so nothing can be claimed in between). Returns how many
    /// entries were removed.
    pub async fn trim(&self) -> Result<u64> {
        self.scripts
            .trim
            .key(self.keys.stream())
            .arg(GROUP)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(QueueError::Trim)
    }

    /// Current queue statistics, read atomically.
    pub async fn stats(&self) -> Result<QueueStats> {
        let raw: Vec<i64> = self
            .scripts
            .stats
            .key(self.keys.stream())
            .key(self.keys.delayed())
            .key(self.keys.dead())
            .arg(GROUP)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(QueueError::Stats)?;
        let [length, undelivered, pending, delayed, dead, oldest_pending, oldest_undelivered] =
            raw[..]
        else {
            return Err(QueueError::UnexpectedReply {
                operation: "stats",
                detail: format!("expected 7 numbers, got {raw:?}"),
            });
        };
        let count = |n: i64| u64::try_from(n).unwrap_or_default();
        let age = |n: i64| u64::try_from(n).ok();
        Ok(QueueStats {
            stream_length: count(length),
            undelivered: count(undelivered),
            pending: count(pending),
            delayed: count(delayed),
            dead_letters: count(dead),
            oldest_pending_age_ms: age(oldest_pending),
            oldest_undelivered_age_ms: age(oldest_undelivered),
        })
    }

    /// Announces that an invocation reached a terminal state. Publish only after the state is
    /// committed in the store. A completion that carries its [`Outcome`] lets a waiter answer
    /// without reading the store; one without makes it read the store.
    pub async fn publish_completion(&self, completion: &Completion) -> Result<()> {
        let invocation_id = completion.id;
        let _receivers: u64 = redis::cmd("PUBLISH")
            .arg(self.keys.completions())
            .arg(completion.message())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| QueueError::PublishCompletion { invocation_id, source })?;
        Ok(())
    }

    /// Publishes `completions`, then acknowledges `deliveries`, in one round trip (a pipeline,
    /// in that order: nothing is acknowledged before its completion is announced).
    pub async fn complete_all(
        &self,
        completions: &[Completion],
        deliveries: &[&Delivery],
    ) -> Result<()> {
        if completions.is_empty() && deliveries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for completion in completions {
            pipe.cmd("PUBLISH").arg(self.keys.completions()).arg(completion.message()).ignore();
        }
        if !deliveries.is_empty() {
            let mut xack = redis::cmd("XACK");
            xack.arg(self.keys.stream()).arg(GROUP);
            for delivery in deliveries {
                xack.arg(&delivery.entry_id);
            }
            pipe.add_command(xack).ignore();
        }
        let entry_id = deliveries.first().map(|d| d.entry_id.clone()).unwrap_or_default();
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|source| QueueError::Ack { entry_id, source })
    }

    /// Turns stream entries into deliveries; entries that are not jobs are dead-lettered (they
    /// could never be run) and reported in `dead`.
    async fn deliveries(
        &self,
        entries: Vec<(StreamId, u64)>,
        dead: &mut Vec<Abandoned>,
    ) -> Result<Vec<Delivery>> {
        let mut out = Vec::with_capacity(entries.len());
        for (entry, deliveries) in entries {
            match Job::from_fields(&entry.map) {
                Ok(job) => out.push(Delivery { entry_id: entry.id, job, deliveries }),
                Err(problem) => {
                    tracing::warn!(entry_id = %entry.id, %problem, "dead-lettering malformed queue entry");
                    let reason = format!("malformed entry: {problem}");
                    if self.dead_letter_entry(&entry.id, &reason, 0).await? {
                        dead.push(Abandoned { entry_id: entry.id, job: None, deliveries: 0 });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// One consumer of the group. Claims new jobs with a blocking read on its own connection, so a
/// long `BLOCK` never holds up the shared connection of the [`Queue`].
#[derive(Debug)]
pub struct Consumer {
    queue: Queue,
    name: String,
    /// The connection for blocking reads; `None` after it failed, reopened on the next claim.
    conn: Option<MultiplexedConnection>,
}

impl Consumer {
    /// The consumer's name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Claims up to `count` new jobs, waiting up to `block` for the first one to arrive
    /// (`Duration::ZERO` returns at once). Returns an empty list when nothing came.
    ///
    /// If the group is missing (Redis lost its data) it is created again and the read retried.
    pub async fn claim(&mut self, count: usize, block: Duration) -> Result<Vec<Delivery>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let reply = match self.read_group(count, block).await {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.queue.ensure_group().await?;
                self.read_group(count, block).await
            }
            other => other,
        }
        .map_err(|source| QueueError::Claim { consumer: self.name.clone(), source })?;
        let entries = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).map(|e| (e, 1)).collect())
            .unwrap_or_default();
        self.queue.deliveries(entries, &mut Vec::new()).await
    }

    async fn read_group(
        &mut self,
        count: usize,
        block: Duration,
    ) -> redis::RedisResult<Option<StreamReadReply>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&self.name).arg("COUNT").arg(count);
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(self.queue.keys.stream()).arg(">");
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.queue.blocking_connection().await?),
        };
        // The reply may legitimately take as long as the block; only then is the server late.
        conn.set_response_timeout(block.saturating_add(BLOCKING_READ_MARGIN));
        let reply = cmd.query_async(conn).await;
        if let Err(e) = &reply {
            // A multiplexed connection does not reconnect by itself, and after a timeout the
            // late reply would still be on its way: start afresh on the next claim.
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.conn = None;
            }
        }
        reply
    }

    /// Takes over up to `count` entries that other consumers (typically dead ones) have held
    /// for at least `min_idle` without acknowledging them (`XAUTOCLAIM`). Entries now handed
    /// out more than [`QueueConfig::max_deliveries`] times are moved to the dead-letter stream
    /// instead of being returned.
    pub async fn reclaim(&mut self, min_idle: Duration, count: usize) -> Result<Reclaimed> {
        let stream = self.queue.keys.stream().to_owned();
        let map_err = |source| QueueError::Reclaim { consumer: self.name.clone(), source };
        let mut conn = self.queue.conn.clone();
        let mut claimed: Vec<StreamId> = Vec::new();
        let mut cursor = "0-0".to_owned();
        while claimed.len() < count {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.name)
                .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&cursor)
                .arg("COUNT")
                .arg(count - claimed.len())
                .query_async(&mut conn)
                .await
                .map_err(map_err)?;
            if !reply.deleted_ids.is_empty() {
                // Pending entries whose data was deleted; Redis dropped them from the group.
                tracing::warn!(ids = ?reply.deleted_ids, "pending queue entries had been deleted");
            }
            claimed.extend(reply.claimed);
            cursor = reply.next_stream_id;
            if cursor == "0-0" {
                break;
            }
        }
        if claimed.is_empty() {
            return Ok(Reclaimed::default());
        }

        let mut pipe = redis::pipe();
        for entry in &claimed {
            pipe.cmd("XPENDING").arg(&stream).arg(GROUP).arg(&entry.id).arg(&entry.id).arg(1);
        }
        let pending: Vec<StreamPendingCountReply> =
            pipe.query_async(&mut conn).await.map_err(map_err)?;

        let mut result = Reclaimed::default();
        let mut live = Vec::new();
        for (entry, pending) in claimed.into_iter().zip(pending) {
            // Not pending any more: acknowledged by its previous owner since the claim.
            let Some(info) = pending.ids.first() else {
                continue;
            };
            let deliveries = info.times_delivered as u64;
            let handed_out = deliveries.saturating_sub(1);
            if handed_out >= u64::from(self.queue.max_deliveries) {
                let reason = format!("not acknowledged after {handed_out} deliveries");
                let deliveries = u32::try_from(handed_out).unwrap_or(u32::MAX);
                if self.queue.dead_letter_entry(&entry.id, &reason, deliveries).await? {
                    tracing::warn!(entry_id = %entry.id, %reason, "dead-lettered poison queue entry");
                    let job = Job::from_fields(&entry.map).ok();
                    result.dead_lettered.push(Abandoned { entry_id: entry.id, job, deliveries });
                }
            } else {
                live.push((entry, deliveries));
            }
        }
        result.deliveries = self.queue.deliveries(live, &mut result.dead_lettered).await?;
        Ok(result)
    }
}

/// What [`Completions::wait`] ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited<T> {
    /// The check found the invocation finished; here is what it returned.
    Finished(T),
    /// The timeout passed first.
    TimedOut,
}

/// Waiters for completions, sharing one pub/sub connection.
///
/// Created with [`Completions::start`], which also returns the listener task: the one
/// background task of this crate, started only when the caller asks for it. The task ends when
/// the last clone of the `Completions` is dropped.
#[derive(Clone)]
pub struct Completions {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Completions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completions").field("waiting", &self.hub.waiting()).finish()
    }
}

/// What [`Completions::notices`] subscribers hear.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// This invocation finished.
    Completed(Arc<Completion>),
    /// Completions may have been missed (the listener reconnected, or the subscriber fell
    /// behind): re-check everything of interest.
    Resync,
}

/// A finished invocation as the completion channel announces it: enough for the usual
/// listeners (the synchronous caller, the operator) to act without reading the row.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The invocation.
    pub id: Uuid,
    /// Its final status, as the store spells it.
    pub status: String,
    /// Whose invocation it was, when announced.
    pub origin: Option<Origin>,
    /// What a synchronous caller answers with, when it is small enough to travel with the
    /// announcement ([`Outcome::MAX_ANNOUNCED_BYTES`]).
    pub outcome: Option<Outcome>,
}

/// Where a finished invocation came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The function's row id.
    pub function_id: Uuid,
    /// The function's namespace.
    pub namespace: String,
    /// The function's name.
    pub function: String,
    /// The `Invocation` object it was made through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// When it was submitted.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The result and error of a finished invocation, as announced.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// What the handler returned (`null` when it failed).
    #[serde(default)]
    pub result: serde_json::Value,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::resources::InvocationError>,
}

impl Outcome {
    /// Outcomes larger than this, encoded, are not announced: every gateway receives every
    /// announcement, so a large result is read from the store by the one that waits for it.
    pub const MAX_ANNOUNCED_BYTES: usize = 16 * 1024;
}

/// The JSON part of a completion message.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Details {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<Origin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<Outcome>,
}

impl Completion {
    /// A completion that announces only the id and the status: listeners read the store.
    pub fn bare(id: Uuid, status: impl Into<String>) -> Self {
        Self { id, status: status.into(), origin: None, outcome: None }
    }

    /// Announces where the invocation came from too.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    /// Announces the outcome too, when it is small; a large one is left to the store.
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        let small = serde_json::to_vec(&outcome)
            .is_ok_and(|encoded| encoded.len() <= Outcome::MAX_ANNOUNCED_BYTES);
        self.outcome = small.then_some(outcome);
        self
    }

    /// The channel message: `<id> <status>`, then ` <JSON of origin and outcome>` when either
    /// is announced.
    fn message(&self) -> String {
        let mut message = format!("{} {}", self.id, self.status);
        if self.origin.is_some() || self.outcome.is_some() {
            let details = Details { origin: self.origin.clone(), outcome: self.outcome.clone() };
            if let Ok(encoded) = serde_json::to_string(&details) {
                message.push(' ');
                message.push_str(&encoded);
            }
        }
        message
    }

    /// Reads a channel message back; `None` when it is not one. Details that do not parse are
    /// dropped (listeners then read the store).
    fn parse(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.splitn(3, ' ');
        let id = parts.next()?.parse().ok()?;
        let status = parts.next().unwrap_or_default().to_owned();
        let details: Details =
            parts.next().and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default();
        Some(Self { id, status, origin: details.origin, outcome: details.outcome })
    }
}

/// Notices buffered per subscriber before it counts as lagging (and must resync).
const NOTICE_BUFFER: usize = 1024;

/// One registered waiter: woken through `notify`, with the announced completion in `announced`
/// when the announcement carried one.
#[derive(Default)]
struct Slot {
    notify: Notify,
    announced: Mutex<Option<Completion>>,
}

impl Slot {
    fn take(&self) -> Option<Completion> {
        self.announced.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

struct Hub {
    waiters: Mutex<HashMap<Uuid, Vec<Arc<Slot>>>>,
    notices: broadcast::Sender<Notice>,
    /// Dropped with the hub; its receiver in the listener then reports closed.
    _closed: watch::Sender<()>,
}

impl Hub {
    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Arc<Slot>>>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waiting(&self) -> usize {
        self.waiters().values().map(Vec::len).sum()
    }

    fn wake(&self, completion: Completion) {
        let id = completion.id;
        if let Some(list) = self.waiters().get(&id) {
            for slot in list {
                if completion.outcome.is_some() {
                    *slot.announced.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(completion.clone());
                }
                slot.notify.notify_one();
            }
        }
        // No subscriber is not an error.
        let _ = self.notices.send(Notice::Completed(Arc::new(completion)));
    }

    fn wake_all(&self) {
        self.waiters().values().flatten().for_each(|slot| slot.notify.notify_one());
        let _ = self.notices.send(Notice::Resync);
    }
}

/// A registered waiter; unregisters itself when dropped.
struct Registration {
    hub: Arc<Hub>,
    id: Uuid,
    slot: Arc<Slot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiters = self.hub.waiters();
        if let Some(list) = waiters.get_mut(&self.id) {
            list.retain(|n| !Arc::ptr_eq(n, &self.slot));
            if list.is_empty() {
                waiters.remove(&self.id);
            }
        }
    }
}

/// How often the listener pings its connection, and how long it waits for the answer, so a
/// silently dead connection is noticed.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

impl Completions {
    /// Subscribes to the completion channel of `keys` and starts the listener task on the
    /// current tokio runtime. Returns once the subscription is confirmed, so every completion
    /// published after that reaches the waiters. The listener reconnects on its own and, after
    /// each reconnect, wakes every waiter to re-check.
    pub async fn start(client: Client, keys: &Keys) -> Result<(Self, JoinHandle<()>)> {
        let channel = keys.completions().to_owned();
        let pubsub = subscribe(&client, &channel).await?;
        let (closed_tx, closed_rx) = watch::channel(());
        let hub = Arc::new(Hub {
            waiters: Mutex::new(HashMap::new()),
            notices: broadcast::channel(NOTICE_BUFFER).0,
            _closed: closed_tx,
        });
        let task = tokio::spawn(listen(client, channel, Arc::downgrade(&hub), closed_rx, pubsub));
        Ok((Self { hub }, task))
    }

    /// Every completion from now on, for a component that follows all of them (the operator
    /// mirrors each into its `Invocation`). A receiver that falls more than a buffer behind gets
    /// `RecvError::Lagged` and should treat it as [`Notice::Resync`].
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.hub.notices.subscribe()
    }

    /// How many waiters are registered right now.
    pub fn waiting(&self) -> usize {
        self.hub.waiting()
    }

    /// Waits up to `timeout` for invocation `id` to finish.
    ///
    /// `check` asks the source of truth (the store) whether it has finished and returns its
    /// result if so. The waiter registers *before* the first check, so a completion committed
    /// and published at any moment is seen: either by that check or by the wake-up that
    /// follows. The check runs again on every wake-up (a completion for `id`, or a reconnect of
    /// the listener, during which messages may have been lost) and once more at the deadline.
    pub async fn wait<T, E, F, Fut>(
        &self,
        id: Uuid,
        timeout: Duration,
        mut check: F,
    ) -> Result<Waited<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let expected = self.expect(id);
        if let Some(done) = check().await? {
            return Ok(Waited::Finished(done));
        }
        expected.wait(timeout, |_| check()).await
    }

    /// Registers a waiter for invocation `id` now, before it is submitted: every completion
    /// announced from now on reaches [`Expected::wait`], which therefore needs no first look
    /// at the store.
    pub fn expect(&self, id: Uuid) -> Expected {
        let slot = Arc::new(Slot::default());
        self.hub.waiters().entry(id).or_default().push(Arc::clone(&slot));
        Expected { registration: Registration { hub: Arc::clone(&self.hub), id, slot } }
    }
}

/// A waiter registered with [`Completions::expect`]; unregisters itself when dropped.
pub struct Expected {
    registration: Registration,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected").field("id", &self.registration.id).finish()
    }
}

impl Expected {
    /// Waits up to `timeout` for the invocation to finish. On every wake-up `check` is called
    /// with the announced completion when it carried its outcome, else with `None` (a bare
    /// announcement, or a reconnect of the listener during which announcements may have been
    /// lost): it then asks the store. It runs once more at the deadline, with `None`.
    pub async fn wait<T, E, F, Fut>(self, timeout: Duration, mut check: F) -> Result<Waited<T>, E>
    where
        F: FnMut(Option<Completion>) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        // A timeout too large to add is as good as none: a year stands in for it.
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or(now + Duration::from_secs(365 * 86_400));
        let slot = &self.registration.slot;
        loop {
            tokio::select! {
                () = slot.notify.notified() => {
                    if let Some(done) = check(slot.take()).await? {
                        return Ok(Waited::Finished(done));
                    }
                }
                () = sleep_until(deadline) => {
                    return Ok(match check(None).await? {
                        Some(done) => Waited::Finished(done),
                        None => Waited::TimedOut,
                    });
                }
            }
        }
    }
}

async fn subscribe(client: &Client, channel: &str) -> Result<PubSub> {
    let fail = |source| QueueError::Subscribe { channel: channel.to_owned(), source };
    let mut pubsub = client.get_async_pubsub().await.map_err(fail)?;
    pubsub.subscribe(channel).await.map_err(fail)?;
    Ok(pubsub)
}

/// The listener task: dispatches completion messages to waiters, keeps the connection alive and
/// re-subscribes after losing it.
async fn listen(
    client: Client,
    channel: String,
    hub: Weak<Hub>,
    mut closed: watch::Receiver<()>,
    first: PubSub,
) {
    let mut next = Some(first);
    let mut backoff = RECONNECT_MIN;
    loop {
        let pubsub = match next.take() {
            // Subscribed before any waiter could register: nothing can have been missed.
            Some(pubsub) => pubsub,
            None => match subscribe(&client, &channel).await {
                Ok(pubsub) => {
                    // Anything published while we were not subscribed is lost: everyone
                    // re-checks the store.
                    match hub.upgrade() {
                        Some(hub) => hub.wake_all(),
                        None => return,
                    }
                    pubsub
                }
                Err(error) => {
                    tracing::warn!(%channel, error = %error_chain(&error), "completion listener cannot subscribe; retrying");
                    tokio::select! {
                        () = sleep(backoff) => {}
                        _ = closed.changed() => return,
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
            },
        };
        backoff = RECONNECT_MIN;
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                _ = closed.changed() => return,
                message = messages.next() => {
                    let Some(message) = message else {
                        tracing::warn!(%channel, "completion listener lost its connection; reconnecting");
                        break;
                    };
                    let Some(hub) = hub.upgrade() else { return };
                    match Completion::parse(message.get_payload_bytes()) {
                        Some(completion) => hub.wake(completion),
                        None => tracing::warn!(%channel, "ignoring malformed completion message"),
                    }
                }
                _ = ping.tick() => {
                    if !matches!(timeout(PING_TIMEOUT, sink.ping::<Value>()).await, Ok(Ok(_))) {
                        tracing::warn!(%channel, "completion listener's connection does not answer; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            invocation_id: Uuid::new_v4(),
            function_id: Uuid::new_v4(),
            namespace: "default".into(),
            function: "hello".into(),
            enqueued_at_ms: 1_700_000_000_123,
            carried: None,
        }
    }

    #[test]
    fn keys_all_derive_from_the_prefix() {
        let keys = Keys::new("kf");
        assert_eq!(keys.stream(), "kf:invocations");
        assert_eq!(keys.delayed(), "kf:delayed");
        assert_eq!(keys.dead(), "kf:dead");
        assert_eq!(keys.completions(), "kf:done");
    }

    #[test]
    fn job_fields_round_trip() {
        let job = job();
        let map = job
            .fields()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
            .collect();
        assert_eq!(Job::from_fields(&map), Ok(job));
    }

    #[test]
    fn a_carried_invocation_travels_whole_through_the_fields_and_the_delayed_set() {
        let mut job = job();
        let new = crate::store::NewInvocation {
            id: job.invocation_id,
            function_id: job.function_id,
            namespace: job.namespace.clone(),
            function_name: job.function.clone(),
            resource_name: None,
            source: crate::store::Source::Sync,
            payload: Some(serde_json::json!({"big": [1, 2, 3]})),
            headers: [("x-trace".to_owned(), "t".to_owned())].into(),
            timeout_seconds: 7,
            max_attempts: 2,
            backoff_seconds: 1,
            retry_on_function_error: true,
        };
        let row = new.queued_row(chrono::Utc::now());
        job.carried = Some(Arc::new(live::Carried { row, generation: 4 }));
        let map = job
            .fields()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
            .collect();
        assert_eq!(Job::from_fields(&map), Ok(job.clone()));
        let member: Vec<String> =
            serde_json::from_str(&job.delayed_member().unwrap_or_default()).unwrap_or_default();
        assert_eq!(member.len(), 12);
        assert_eq!(member[10], "carried");
        let mut bad: HashMap<String, Value> = map;
        bad.insert("carried".into(), Value::BulkString(b"{}".to_vec()));
        let error = Job::from_fields(&bad).err().unwrap_or_default();
        assert!(error.contains("field carried is invalid"), "{error}");
    }

    #[test]
    fn delayed_member_is_a_flat_field_value_array() {
        let job = job();
        let member: Vec<String> =
            serde_json::from_str(&job.delayed_member().unwrap_or_default()).unwrap_or_default();
        assert_eq!(member.len(), 10);
        assert_eq!(member[0], "invocation_id");
        assert_eq!(member[1], job.invocation_id.to_string());
    }

    #[test]
    fn malformed_job_names_the_bad_field() {
        let mut map: HashMap<String, Value> = job()
            .fields()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::BulkString(v.into_bytes())))
            .collect();
        map.insert("enqueued_at_ms".into(), Value::BulkString(b"soon".to_vec()));
        let error = Job::from_fields(&map).err().unwrap_or_default();
        assert!(error.contains("enqueued_at_ms"), "{error}");
        map.remove("namespace");
        let error = Job::from_fields(&map).err().unwrap_or_default();
        assert!(error.contains("namespace is missing"), "{error}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let backoff =
            Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(10), jitter: false };
        let delays: Vec<u64> = (1..=6).map(|a| backoff.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.delay(0), Duration::from_secs(1));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jittered_backoff_stays_in_the_upper_half() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(60),
            jitter: true,
        };
        for attempt in 1..=12 {
            let full = Backoff { jitter: false, ..backoff }.delay(attempt);
            let delay = backoff.delay(attempt);
            assert!(delay <= full && delay >= full / 2, "{delay:?} vs {full:?}");
        }
    }

    #[test]
    fn completion_messages_carry_the_id_first_and_a_small_outcome_last() {
        let id = Uuid::new_v4();
        let bare = Completion::bare(id, "succeeded");
        assert_eq!(bare.message(), format!("{id} succeeded"));
        assert_eq!(Completion::parse(bare.message().as_bytes()), Some(bare));
        assert_eq!(Completion::parse(b"nonsense"), None);

        // A result with spaces, and a null one, come back as they were.
        let outcome = Outcome { result: serde_json::json!({"say": "a b c"}), error: None };
        let origin = Origin {
            function_id: Uuid::new_v4(),
            namespace: "team".into(),
            function: "echo".into(),
            resource_name: None,
            created_at: chrono::Utc::now(),
        };
        let full =
            Completion::bare(id, "succeeded").with_outcome(outcome.clone()).with_origin(origin);
        assert_eq!(full.outcome.as_ref(), Some(&outcome));
        assert_eq!(Completion::parse(full.message().as_bytes()), Some(full));
        let null = Completion::bare(id, "succeeded").with_outcome(Outcome::default());
        assert_eq!(
            Completion::parse(null.message().as_bytes()).unwrap().outcome,
            Some(Outcome::default())
        );

        // A large one is left to the store.
        let big = "x".repeat(Outcome::MAX_ANNOUNCED_BYTES);
        let large = Completion::bare(id, "succeeded")
            .with_outcome(Outcome { result: big.into(), error: None });
        assert_eq!(large.outcome, None);
        assert_eq!(large.message(), format!("{id} succeeded"));
    }
}
