//! Catch-up-then-live subscriptions: read committed events from a sequence number on, then wait
//! for the head to move. A cursor over the gap-free sequence makes gaps and repeats impossible.

use tokio::sync::watch;

use crate::StoreError;
use crate::record::RecordedEvent;
use crate::store::{EventStore, Head};

/// Reads the log in order from a starting sequence number, waiting at the head for more.
pub struct Subscription {
    store: EventStore,
    next: u64,
    head: watch::Receiver<Head>,
}

impl EventStore {
    /// A subscription whose first event is `from_seq` (1 = the start of the log).
    pub fn subscribe(&self, from_seq: u64) -> Subscription {
        Subscription {
            store: self.clone(),
            next: from_seq.max(1),
            head: self.watch_head(),
        }
    }
}

impl Subscription {
    /// The sequence number of the next event this subscription yields.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next committed events, at most `max`; waits while the subscription is at the head.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            if let Some(batch) = self.try_next_batch(max)? {
                return Ok(batch);
            }
            self.head.changed().await.map_err(|_| StoreError::Closed)?;
        }
    }

    /// The next committed events, or `None` when there are none yet.
    pub fn try_next_batch(&mut self, max: usize) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let head = self.head.borrow_and_update().seq;
        if head < self.next {
            return Ok(None);
        }
        let want = ((head - self.next + 1) as usize).min(max.max(1));
        let batch = self.store.read(self.next, want)?;
        if let Some(last) = batch.last() {
            self.next = last.seq + 1;
        }
        Ok(Some(batch))
    }
}
