//! Outcomes of concurrent invocations committed together: one `UPDATE` (one commit, one WAL
//! flush) for all their rows, then one Redis pipeline for their announcements and
//! acknowledgements.
//!
//! An outcome is not held back to wait for others: each batch takes what arrived while the
//! previous ones were being written. Under light load a batch holds one outcome and costs what a
//! lone commit costs; under load the commits, and the flushes behind them, are shared. A batch
//! that fails fails for each of its outcomes alike, and each caller handles that as it would a
//! failed commit of its own (the message stays pending and is reclaimed).

use std::sync::Arc;

use kubefaas_core::{
    queue::{Delivery, Queue},
    store::{InvocationRow, Lease, Outcome, Store},
};
use tokio::sync::{mpsc, oneshot};

use super::{WorkerError, announcement};

/// Most outcomes one batch commits.
const MAX_BATCH: usize = 256;
/// How many batches are written at once.
const WRITERS: usize = 2;

/// The writer of finished attempts (see the module documentation).
#[derive(Debug)]
pub(super) struct Committer {
    waiting: mpsc::Sender<Pending>,
}

#[derive(Debug)]
struct Pending {
    lease: Lease,
    outcome: Outcome,
    delivery: Delivery,
    reply: oneshot::Sender<Result<Option<InvocationRow>, Arc<WorkerError>>>,
}

impl Committer {
    /// Starts the writer on the current tokio runtime; it ends when the `Committer` is dropped.
    pub(super) fn start(store: Store, queue: Queue) -> Self {
        let (waiting, arrivals) = mpsc::channel(MAX_BATCH * WRITERS);
        tokio::spawn(kubefaas_core::batch::write_batches(
            arrivals,
            MAX_BATCH,
            WRITERS,
            move |batch| {
                let (store, queue) = (store.clone(), queue.clone());
                async move { write_batch(&store, &queue, batch).await }
            },
        ));
        Self { waiting }
    }

    /// Commits `outcome` of the attempt holding `lease`, announces it and acknowledges
    /// `delivery`. Returns the finished row, or `None` when the lease was no longer ours (the
    /// delivery is acknowledged all the same: the other holder's outcome stands).
    pub(super) async fn commit(
        &self,
        lease: &Lease,
        outcome: Outcome,
        delivery: &Delivery,
    ) -> Result<Option<InvocationRow>, WorkerError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { lease: lease.clone(), outcome, delivery: delivery.clone(), reply };
        self.waiting.send(pending).await.map_err(|_| WorkerError::Stopped)?;
        answer.await.map_err(|_| WorkerError::Stopped)?.map_err(WorkerError::Batch)
    }
}

/// Commits one batch and answers each of its outcomes.
async fn write_batch(store: &Store, queue: &Queue, batch: Vec<Pending>) {
    let outcomes: Vec<(&Lease, &Outcome)> = batch.iter().map(|p| (&p.lease, &p.outcome)).collect();
    let written = match store.complete_many(&outcomes).await {
        Ok(rows) => {
            let completions: Vec<_> = rows.iter().flatten().map(announcement).collect();
            let deliveries: Vec<&Delivery> = batch.iter().map(|p| &p.delivery).collect();
            match queue.complete_all(&completions, &deliveries).await {
                Ok(()) => Ok(rows),
                Err(error) => Err(Arc::new(WorkerError::Queue(error))),
            }
        }
        Err(error) => Err(Arc::new(WorkerError::Store(error))),
    };
    match written {
        Ok(rows) => {
            for (pending, row) in batch.into_iter().zip(rows) {
                let _ = pending.reply.send(Ok(row));
            }
        }
        Err(error) => {
            for pending in batch {
                let _ = pending.reply.send(Err(Arc::clone(&error)));
            }
        }
    }
}
