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
    /// Yield only events whose flags share a bit with this mask (0 = every event).
    flags: u8,
}

impl EventStore {
    /// A subscription whose first event is `from_seq` (1 = the start of the log).
    pub fn subscribe(&self, from_seq: u64) -> Subscription {
        Subscription {
            store: self.clone(),
            next: from_seq.max(1),
            head: self.watch_head(),
            flags: 0,
        }
    }
}

impl Subscription {
    /// Yields only events carrying one of `flags` (e.g. [`crate::FLAG_PUBLISH`]); the others are
    /// skipped without being decoded. A batch may then be empty while the position moves on.
    pub fn only_flagged(mut self, flags: u8) -> Subscription {
        self.flags = flags;
        self
    }

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
        if self.flags != 0 {
            let (batch, scanned_to) = self.store.read_flagged(self.next, want, self.flags)?;
            self.next = self.next.max(scanned_to + 1);
            return Ok(Some(batch));
        }
        let batch = self.store.read(self.next, want)?;
        if let Some(last) = batch.last() {
            self.next = last.seq + 1;
        }
        Ok(Some(batch))
    }
}
