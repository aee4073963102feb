//! Group commit for concurrent writers: what arrives while earlier batches are being written is
//! written together.
//!
//! Nothing waits for a batch to fill. Each batch takes what queued up while the writers were
//! busy, so under light load a batch holds one item and costs what a lone write costs, and under
//! load one statement, one commit and one round trip are shared by many. The gateway's
//! submissions ([`crate::submit::Submitter`]) and the executor's outcomes are written this way.

use std::{future::Future, sync::Arc};

use tokio::sync::{Semaphore, mpsc};

/// Takes batches of at most `max_batch` items from `arrivals` and hands each to `write`, with
/// at most `writers` batches being written at once. Returns when every sender of `arrivals` is
/// gone and everything that arrived was handed on.
pub async fn write_batches<T, W, F>(
    mut arrivals: mpsc::Receiver<T>,
    max_batch: usize,
    writers: usize,
    write: W,
) where
    T: Send + 'static,
    W: Fn(Vec<T>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let max_batch = max_batch.max(1);
    let writers = Arc::new(Semaphore::new(writers.max(1)));
    let mut batch = Vec::with_capacity(max_batch);
    while arrivals.recv_many(&mut batch, max_batch).await > 0 {
        let Ok(writer) = Arc::clone(&writers).acquire_owned().await else { return };
        // What arrived while waiting for a writer joins this batch.
        while batch.len() < max_batch
            && let Ok(more) = arrivals.try_recv()
        {
            batch.push(more);
        }
        let written = write(std::mem::replace(&mut batch, Vec::with_capacity(max_batch)));
        tokio::spawn(async move {
            written.await;
            drop(writer);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use super::*;

    #[tokio::test]
    async fn items_that_arrive_while_a_batch_is_written_are_written_together() {
        let (sender, arrivals) = mpsc::channel(64);
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = tokio::sync::watch::channel(false);
        let seen = Arc::clone(&batches);
        let writer = tokio::spawn(write_batches(arrivals, 16, 1, move |batch: Vec<u32>| {
            let (seen, mut released) = (Arc::clone(&seen), released.clone());
            async move {
                // The first batch is held until the test lets it go.
                if batch == [0] {
                    released.wait_for(|go| *go).await.unwrap();
                }
                seen.lock().unwrap().push(batch);
            }
        }));
        sender.send(0).await.unwrap();
        // Wait (bounded) until the first batch is being written, then queue 20 more behind it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while sender.capacity() < 64 {
            assert!(tokio::time::Instant::now() < deadline, "the writer never took the first item");
            tokio::task::yield_now().await;
        }
        for i in 1..=20 {
            sender.send(i).await.unwrap();
        }
        release.send(true).unwrap();
        drop(sender);
        writer.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() < 21 {
            assert!(tokio::time::Instant::now() < deadline, "not every item was written");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let batches = batches.lock().unwrap().clone();
        // One writer: the 20 that waited behind the first batch come in batches of at most 16,
        // in order, and not one by one.
        assert_eq!(batches[0], [0]);
        assert_eq!(batches[1], (1..=16).collect::<Vec<_>>());
        assert_eq!(batches[2], (17..=20).collect::<Vec<_>>());
    }
}
