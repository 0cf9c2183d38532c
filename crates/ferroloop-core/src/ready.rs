//! The ready queue, with asyncio's ordering.

use std::collections::VecDeque;

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
        ReadyQueue {
            queue: VecDeque::with_capacity(64),
        }
    }
}

impl<H> ReadyQueue<H> {
    /// An empty queue, with room for 64 items before it grows.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item` at the back. Pushed while a pass runs, it runs in the next pass.
    #[inline]
    pub fn push(&mut self, item: H) {
        self.queue.push_back(item);
    }

    /// How many items this pass runs: those queued now.
    #[must_use]
    pub fn begin_pass(&self) -> usize {
        self.queue.len()
    }

    /// Takes the oldest item. Call it at most [`ReadyQueue::begin_pass`] times per pass.
    #[inline]
    pub fn pop(&mut self) -> Option<H> {
        self.queue.pop_front()
    }

    /// True if nothing is queued: the loop may block in its next wait.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many items are queued.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
