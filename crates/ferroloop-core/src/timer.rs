//! The timer queue: a binary heap keyed by `(deadline_ns, seq)`, with lazy cancellation.
//!
//! The sequence number makes equal deadlines fire in the order they were scheduled (asyncio's heap
//! does not promise that; libuv's does, and users expect it). Cancelling a timer does not touch the
//! heap: the caller marks its payload cancelled and calls [`TimerQueue::note_cancelled`]; cancelled
//! entries are dropped when they reach the head, and the heap is rebuilt without them when they
//! are more than [`COMPACT_MIN`] and more than [`COMPACT_FRACTION`] of it (asyncio's rule in
//! `BaseEventLoop._run_once`).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Below this many cancelled timers the heap is never rebuilt.
pub const COMPACT_MIN: usize = 100;
/// The heap is rebuilt when more than this fraction of it is cancelled.
pub const COMPACT_FRACTION: f64 = 0.5;

struct Entry<T> {
    deadline: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// Timers ordered by deadline, then by scheduling order.
pub struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_seq: u64,
    /// How many entries in the heap the caller has marked cancelled (an upper bound: the caller
    /// may report a timer that already fired).
    cancelled: usize,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerQueue<T> {
    #[must_use]
    pub fn new() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: 0,
        }
    }

    /// Schedules `item` at `deadline` (ns on the [`crate::clock`]).
    pub fn push(&mut self, deadline: u64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Entry { deadline, seq, item }));
    }

    /// The earliest deadline, cancelled or not.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    /// Removes and returns the earliest item if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<T> {
        if self.heap.peek()?.0.deadline > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| e.item)
    }

    /// Records that one scheduled item was cancelled by its owner.
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// Drops cancelled entries: all of them if the compaction rule says so, otherwise those at the
    /// head. Returns the dropped items so that the caller can release them outside any borrow
    /// (dropping a Python object may run arbitrary code).
    pub fn purge_cancelled(&mut self, is_cancelled: impl Fn(&T) -> bool) -> Vec<T> {
        let mut dropped = Vec::new();
        let len = self.heap.len();
        if self.cancelled > COMPACT_MIN && self.cancelled as f64 > len as f64 * COMPACT_FRACTION {
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(len - self.cancelled.min(len));
            for Reverse(e) in entries {
                if is_cancelled(&e.item) {
                    dropped.push(e.item);
                } else {
                    kept.push(Reverse(e));
                }
            }
            self.heap = BinaryHeap::from(kept);
            self.cancelled = 0;
        } else {
            while self.heap.peek().is_some_and(|Reverse(e)| is_cancelled(&e.item)) {
                if let Some(Reverse(e)) = self.heap.pop() {
                    dropped.push(e.item);
                }
                self.cancelled = self.cancelled.saturating_sub(1);
            }
        }
        dropped
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Every scheduled item, in no particular order (for the GC's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.heap.iter().map(|Reverse(e)| &e.item)
    }

    /// Removes every entry (the loop is closing).
    pub fn drain(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|Reverse(e)| e.item)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn fires_in_deadline_order() {
        let mut q = TimerQueue::new();
        q.push(30, 'c');
        q.push(10, 'a');
        q.push(20, 'b');
        assert_eq!(q.next_deadline(), Some(10));
        assert_eq!(q.pop_due(25), Some('a'));
        assert_eq!(q.pop_due(25), Some('b'));
        assert_eq!(q.pop_due(25), None);
        assert_eq!(q.pop_due(30), Some('c'));
        assert!(q.is_empty());
    }

    #[test]
    fn equal_deadlines_are_fifo() {
        let mut q = TimerQueue::new();
        for i in 0..100 {
            q.push(5, i);
        }
        let order: Vec<i32> = std::iter::from_fn(|| q.pop_due(5)).collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn cancelled_head_is_purged() {
        let mut q = TimerQueue::new();
        q.push(1, (1, Cell::new(true)));
        q.push(2, (2, Cell::new(false)));
        q.note_cancelled();
        let dropped = q.purge_cancelled(|(_, c)| c.get());
        assert_eq!(dropped.len(), 1);
        assert_eq!(q.next_deadline(), Some(2));
    }

    #[test]
    fn compaction_follows_asyncio_rule() {
        let mut q = TimerQueue::new();
        // 150 cancelled among 200, the cancelled ones not at the head: only compaction drops them.
        for i in 0..200u64 {
            q.push(i, (i, i >= 50));
        }
        for _ in 0..150 {
            q.note_cancelled();
        }
        let dropped = q.purge_cancelled(|(_, c)| *c);
        assert_eq!(dropped.len(), 150);
        assert_eq!(q.len(), 50);
        let all: Vec<u64> = std::iter::from_fn(|| q.pop_due(u64::MAX)).map(|(i, _)| i).collect();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn no_compaction_below_threshold() {
        let mut q = TimerQueue::new();
        for i in 0..100u64 {
            q.push(i, (i, i >= 1));
        }
        for _ in 0..99 {
            q.note_cancelled();
        }
        // 99 cancelled is not more than COMPACT_MIN: only the (live) head is looked at.
        assert!(q.purge_cancelled(|(_, c)| *c).is_empty());
        assert_eq!(q.len(), 100);
    }
}
