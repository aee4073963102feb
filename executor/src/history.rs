//! Writes the rows of finished synchronous calls to the store, behind their answers.
//!
//! A synchronous call has no row while it runs (`kubefaas_core::queue::live`); once it is
//! answered the worker hands its finished row to [`History::record`], which returns at once. One
//! task writes what has queued up, up to [`MAX_BATCH`] rows in one statement and one commit, and
//! then drops their live keys from Redis. Under light load a batch holds one row; under heavy
//! load the commits are shared. While PostgreSQL is unreachable the task retries the batch
//! with a growing pause and the rows wait, up to [`CAPACITY`] of them; beyond that new rows are
//! not kept (their live keys, and so `GET /invocations/{id}`, still answer for an hour). A row
//! the store refuses as such is logged and dropped rather than retried forever.

use std::time::Duration;

use kubefaas_core::{
    queue::Queue,
    store::{InvocationRow, Store, StoreError},
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use uuid::Uuid;

/// Most rows one statement writes.
pub const MAX_BATCH: usize = 512;
/// Most rows waiting to be written; see the module docs for what happens beyond.
pub const CAPACITY: usize = 65_536;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The handle of the writer task; cheap to clone. The task ends, after writing everything
/// recorded, when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct History {
    entries: mpsc::Sender<Entry>,
}

#[derive(Debug)]
enum Entry {
    Row(Box<InvocationRow>),
    Flush(oneshot::Sender<()>),
}

impl History {
    /// Starts the writer on the current tokio runtime.
    pub fn start(store: Store, queue: Queue) -> (Self, JoinHandle<()>) {
        let (entries, arrivals) = mpsc::channel(CAPACITY);
        (Self { entries }, tokio::spawn(write(store, queue, arrivals)))
    }

    /// Queues a finished row to be written. Returns false when it was not kept: the writer is
    /// [`CAPACITY`] rows behind (PostgreSQL has been unreachable for a while) or gone.
    pub fn record(&self, row: InvocationRow) -> bool {
        let id = row.id;
        match self.entries.try_send(Entry::Row(Box::new(row))) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(invocation = %id, reason = %error,
                    "the history writer is behind; this call's row is not written");
                false
            }
        }
    }

    /// Waits until every row recorded before this call has been written (or dropped as
    /// refused). With PostgreSQL unreachable this waits until it answers; bound it with a
    /// timeout where that matters.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.entries.send(Entry::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

async fn write(store: Store, queue: Queue, mut arrivals: mpsc::Receiver<Entry>) {
    let mut entries = Vec::with_capacity(MAX_BATCH);
    while arrivals.recv_many(&mut entries, MAX_BATCH).await > 0 {
        let mut rows = Vec::with_capacity(entries.len());
        let mut flushes = Vec::new();
        for entry in entries.drain(..) {
            match entry {
                Entry::Row(row) => rows.push(*row),
                Entry::Flush(done) => flushes.push(done),
            }
        }
        if !rows.is_empty() {
            write_batch(&store, &queue, &rows).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Writes one batch, retrying while the store is unreachable, then forgets its live keys.
async fn write_batch(store: &Store, queue: &Queue, rows: &[InvocationRow]) {
    let mut pause = RETRY_MIN;
    loop {
        match store.record_finished(rows).await {
            Ok(_) => break,
            Err(error) if refused(&error) => {
                tracing::error!(rows = rows.len(), error = %error,
                    "the store refused finished calls' rows; they are not written");
                return;
            }
            Err(error) => {
                tracing::warn!(rows = rows.len(), error = %error, ?pause,
                    "cannot write finished calls' rows; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    // Left behind, a key expires on its own; the store answers for the call from now on.
    if let Err(error) = queue.forget_live(&ids).await {
        tracing::debug!(error = %error, "cannot drop written calls' live keys; they expire");
    }
}

/// Whether the store answered and said no to the rows themselves (bad data, a broken
/// constraint, a statement it does not understand), as opposed to not answering or shutting
/// down: only the latter is worth trying again.
fn refused(error: &StoreError) -> bool {
    match error {
        StoreError::Query { source, .. } => source
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| ["22", "23", "42"].iter().any(|class| code.starts_with(class))),
        StoreError::InvalidTransition(_) => true,
        _ => false,
    }
}
