//! The ready queue, with asyncio's ordering, and the inbox that other threads schedule through.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Callbacks ready to run, in FIFO order.
///
/// asyncio runs, in one iteration, exactly the callbacks that were ready when the iteration began:
/// what they schedule runs in the next one. [`ReadyQueue::begin_pass`] returns that count; the
/// caller pops that many items, one at a time, so that a callback may push while the pass runs.
#[derive(Debug)]
pub struct ReadyQueue<H> {
    queue: VecDeque<H>,
}

impl<H> Default for ReadyQueue<H> {
    fn default() -> Self {
        ReadyQueue { queue: VecDeque::with_capacity(64) }
    }
}

impl<H> ReadyQueue<H> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn push(&mut self, item: H) {
        self.queue.push_back(item);
    }

    /// How many items this pass runs: those queued now.
    #[must_use]
    pub fn begin_pass(&self) -> usize {
        self.queue.len()
    }

    #[inline]
    pub fn pop(&mut self) -> Option<H> {
        self.queue.pop_front()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Every queued item, in order.
    pub fn iter(&self) -> impl Iterator<Item = &H> {
        self.queue.iter()
    }

    /// Removes every item (the loop is closing).
    pub fn drain(&mut self) -> Vec<H> {
        self.queue.drain(..).collect()
    }
}

/// Items pushed by other threads (`call_soon_threadsafe`), moved to the ready queue by the loop
/// thread once per iteration.
///
/// The loop thread pays one atomic load per iteration when nothing was pushed; the mutex is taken
/// only by pushers and by the loop thread when the `pending` flag says there is something to take.
#[derive(Debug)]
pub struct Inbox<H> {
    items: Mutex<Vec<H>>,
    pending: AtomicBool,
}

impl<H> Default for Inbox<H> {
    fn default() -> Self {
        Inbox { items: Mutex::new(Vec::new()), pending: AtomicBool::new(false) }
    }
}

impl<H> Inbox<H> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an item from any thread. The caller then wakes the driver.
    pub fn push(&self, item: H) {
        let mut items = self.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        items.push(item);
        self.pending.store(true, Ordering::Release);
    }

    /// True if something was pushed since the last [`Inbox::take`].
    #[inline]
    #[must_use]
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes everything pushed so far, in push order.
    pub fn take(&self) -> Vec<H> {
        if !self.has_pending() {
            return Vec::new();
        }
        let mut items = self.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pass_runs_only_what_was_queued_before_it() {
        let mut q = ReadyQueue::new();
        q.push(1);
        q.push(2);
        let n = q.begin_pass();
        let mut ran = Vec::new();
        for _ in 0..n {
            let item = q.pop().unwrap();
            ran.push(item);
            q.push(item * 10); // scheduled by the callback: next pass
        }
        assert_eq!(ran, vec![1, 2]);
        assert_eq!(q.drain(), vec![10, 20]);
    }

    #[test]
    fn inbox_keeps_order_across_threads() {
        let inbox = Arc::new(Inbox::new());
        assert!(!inbox.has_pending());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let inbox = Arc::clone(&inbox);
                std::thread::spawn(move || (0..100).for_each(|i| inbox.push((t, i))))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert!(inbox.has_pending());
        let items = inbox.take();
        assert_eq!(items.len(), 400);
        for t in 0..4 {
            let mine: Vec<i32> = items.iter().filter(|(tt, _)| *tt == t).map(|(_, i)| *i).collect();
            assert_eq!(mine, (0..100).collect::<Vec<_>>());
        }
        assert!(!inbox.has_pending());
        assert!(inbox.take().is_empty());
    }
}
