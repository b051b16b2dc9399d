//! An append-only event log that readers follow: what a job's events and a
//! sweep's events both are. Appends wake every follower; a follower reads
//! from where it stands, so a late watcher replays the whole log and then
//! gets live events, with nothing lost or repeated.

use tokio::sync::watch;

/// Events in order, with the count published to followers.
pub struct EventLog<E> {
    events: Vec<E>,
    /// The number of events; followers wait on it.
    published: watch::Sender<usize>,
}

impl<E: Clone> EventLog<E> {
    /// A log holding `events` already (loaded from the database).
    pub fn new(events: Vec<E>) -> Self {
        let (published, _) = watch::channel(events.len());
        Self { events, published }
    }

    /// Appends `event` and wakes the followers.
    pub fn push(&mut self, event: E) {
        self.events.push(event);
        self.published.send_replace(self.events.len());
    }

    /// How many events the log holds; the next event's sequence number.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the log holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Every event.
    pub fn events(&self) -> &[E] {
        &self.events
    }

    /// The events from position `from` on (none past the end).
    pub fn events_from(&self, from: usize) -> Vec<E> {
        self.events[from.min(self.events.len())..].to_vec()
    }

    /// A reader standing at the first event.
    pub fn follow(&self) -> Follower {
        self.follow_from(0)
    }

    /// A reader standing at position `from` (past the end: it waits for
    /// events up to there and reads from then on).
    pub fn follow_from(&self, from: usize) -> Follower {
        Follower {
            next: from,
            published: self.published.subscribe(),
        }
    }
}

/// Where one reader stands in a log.
pub struct Follower {
    next: usize,
    published: watch::Receiver<usize>,
}

impl Follower {
    /// The next events, waiting for an append when there are none yet;
    /// `None` once the log's owner has ended and every event was returned.
    /// `read(from)` returns the events from `from` and whether the owner has
    /// ended, read together under the owner's lock. Cancel-safe: dropped
    /// while waiting, it has read nothing.
    pub async fn next_batch<E>(
        &mut self,
        read: impl Fn(usize) -> (Vec<E>, bool),
    ) -> Option<Vec<E>> {
        loop {
            // Mark the current count seen before reading, so an append that
            // lands after the read wakes `changed` below.
            self.published.borrow_and_update();
            let (events, ended) = read(self.next);
            if !events.is_empty() {
                self.next += events.len();
                return Some(events);
            }
            if ended {
                return None;
            }
            if self.published.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_follower_replays_then_gets_live_events_until_the_end() {
        let log = Arc::new(Mutex::new((EventLog::new(vec![0, 1]), false)));
        let mut follower = log.lock().unwrap().0.follow();
        let read = {
            let log = log.clone();
            move |from: usize| {
                let l = log.lock().unwrap();
                (l.0.events_from(from), l.1)
            }
        };
        assert_eq!(follower.next_batch(&read).await, Some(vec![0, 1]));
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 2..4 {
                    tokio::task::yield_now().await;
                    log.lock().unwrap().0.push(i);
                }
                // The last event ends the owner, under the same lock.
                let mut l = log.lock().unwrap();
                l.1 = true;
                l.0.push(4);
            })
        };
        let mut seen = Vec::new();
        while let Some(batch) = follower.next_batch(&read).await {
            seen.extend(batch);
        }
        writer.await.unwrap();
        assert_eq!(seen, [2, 3, 4]);
        assert_eq!(log.lock().unwrap().0.events(), [0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_follower_from_a_position_replays_only_what_comes_after() {
        let log = Arc::new(Mutex::new((EventLog::new(vec![0, 1, 2]), false)));
        let read = |from: usize| {
            let guard = log.lock().unwrap();
            (guard.0.events_from(from), guard.1)
        };
        let mut follower = log.lock().unwrap().0.follow_from(2);
        assert_eq!(follower.next_batch(read).await, Some(vec![2]));
        log.lock().unwrap().1 = true; // ended
        assert_eq!(follower.next_batch(read).await, None);
        let mut past = log.lock().unwrap().0.follow_from(9);
        assert_eq!(past.next_batch(read).await, None);
    }
}
