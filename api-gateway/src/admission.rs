//! Admission by backlog: a function takes new invocations while fewer than a bound of its
//! invocations are unfinished (`pending`, `queued` or `running`), and refuses more with 429 and
//! `Retry-After` until its executors catch up. A client that is merely fast is never throttled
//! by this; one that submits faster than the function can run, for long, is told to wait
//! instead of filling the queue without limit.
//!
//! Counting reads PostgreSQL (an index of the unfinished rows), at most once per
//! [`REFRESH`] per function and gateway replica; between counts, each replica adds what it
//! admitted itself. The bound is therefore soft: replicas admitting at once can pass it by
//! what each admits in one refresh interval.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kubefaas_core::store::{Store, StoreError};
use uuid::Uuid;

/// How old a function's count may be before it is read again.
pub(crate) const REFRESH: Duration = Duration::from_millis(250);

/// Counts older than this are forgotten when the table grows (functions deleted or idle).
const FORGET_AFTER: Duration = Duration::from_secs(60);
const TRIM_AT: usize = 4096;

/// The backlog bound and each function's last count.
#[derive(Debug)]
pub(crate) struct Admission {
    bound: i64,
    counts: Mutex<HashMap<Uuid, Count>>,
}

#[derive(Clone, Copy, Debug)]
struct Count {
    at: Instant,
    unfinished: i64,
}

/// Why an invocation was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The function has `bound` or more unfinished invocations.
    #[error("the function has {unfinished} unfinished invocations, its bound is {bound}")]
    Full { unfinished: i64, bound: i64 },
    /// Counting failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Admission {
    /// Admits while fewer than `bound` invocations of a function are unfinished.
    pub(crate) fn new(bound: u64) -> Self {
        Self { bound: i64::try_from(bound).unwrap_or(i64::MAX), counts: Mutex::new(HashMap::new()) }
    }

    /// Admits one more invocation of `function_id`, or says why not.
    pub(crate) async fn admit(&self, store: &Store, function_id: Uuid) -> Result<(), Refused> {
        let now = Instant::now();
        {
            let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = counts.get_mut(&function_id)
                && now.duration_since(count.at) < REFRESH
            {
                return self.take(count);
            }
            // This caller counts afresh; the others go on with the old count meanwhile (a new
            // function starts from zero) rather than all asking PostgreSQL at once.
            let unfinished = counts.get(&function_id).map_or(0, |c| c.unfinished);
            counts.insert(function_id, Count { at: now, unfinished });
            if counts.len() > TRIM_AT {
                counts.retain(|_, c| now.duration_since(c.at) < FORGET_AFTER);
            }
        }
        let unfinished = store.backlog(function_id).await?;
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.take(counts.entry(function_id).insert_entry(Count { at: now, unfinished }).into_mut())
    }

    fn take(&self, count: &mut Count) -> Result<(), Refused> {
        if count.unfinished >= self.bound {
            return Err(Refused::Full { unfinished: count.unfinished, bound: self.bound });
        }
        count.unfinished += 1;
        Ok(())
    }
}
