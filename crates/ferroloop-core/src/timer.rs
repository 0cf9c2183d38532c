//! The timer queue: timers keyed by `(deadline_ns, seq)`, with lazy cancellation.
//!
//! The sequence number makes equal deadlines fire in the order they were scheduled (asyncio's heap
//! does not promise that; libuv's does, and users expect it). Cancelling a timer does not touch the
//! queue: the caller marks its payload cancelled and calls [`TimerQueue::note_cancelled`]; cancelled
//! entries are dropped when they reach the head, and the queue is rebuilt without them when they
//! are more than [`COMPACT_MIN`] and more than [`COMPACT_FRACTION`] of it (asyncio's rule in
//! `BaseEventLoop._run_once`).
//!
//! # Implementation
//!
//! Timers live in two places: a FIFO `run` of entries already in key order, and a binary heap for
//! the rest. A new timer whose deadline is not before the last one in the run is appended to the
//! run (O(1)); any other goes to the heap (O(log n)). The head of the queue is the smaller of the
//! two heads. Since the clock only moves forward, timers scheduled with one delay (`call_later(0,
//! ...)`, a server's fixed timeouts, `sleep(d)` in many tasks) all land in the run, and push and pop
//! are O(1) for them, as they are for uvloop, which turns `call_later(0)` into `call_soon`.
//! Measured on the benchmark's `call_later fire` (10,000 `call_later(0)` timers due at once):
//! with the heap alone, `BinaryHeap::pop` was 318 instructions of 5,000 per timer (callgrind) and
//! 7% of the run time (perf); with the run, 4,355 instructions per timer became 4,074 and
//! 2.0-2.1 M timers/s became 2.3 M.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

/// Below this many cancelled timers the queue is never rebuilt.
pub const COMPACT_MIN: usize = 100;
/// The queue is rebuilt when more than this fraction of it is cancelled.
pub const COMPACT_FRACTION: f64 = 0.5;

struct Entry<T> {
    deadline: u64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    fn key(&self) -> (u64, u64) {
        (self.deadline, self.seq)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
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
        self.key().cmp(&other.key())
    }
}

/// Where the earliest entry is.
enum Head {
    Run,
    Heap,
}

/// Timers ordered by deadline, then by scheduling order.
pub struct TimerQueue<T> {
    /// Entries in ascending key order (each appended one is not before the previous).
    run: VecDeque<Entry<T>>,
    /// Every other entry.
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_seq: u64,
    /// How many entries the caller has marked cancelled (an upper bound: the caller may report a
    /// timer that already fired).
    cancelled: usize,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerQueue<T> {
    /// An empty queue.
    #[must_use]
    pub fn new() -> Self {
        TimerQueue {
            run: VecDeque::new(),
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: 0,
        }
    }

    /// Schedules `item` at `deadline` (ns on the [`crate::clock`]).
    pub fn push(&mut self, deadline: u64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry { deadline, seq, item };
        // `seq` grows, so an entry not before the run's last deadline sorts after all of the run.
        if self.run.back().is_none_or(|last| deadline >= last.deadline) {
            self.run.push_back(entry);
        } else {
            self.heap.push(Reverse(entry));
        }
    }

    fn head(&self) -> Option<(Head, &Entry<T>)> {
        match (self.run.front(), self.heap.peek()) {
            (Some(r), Some(Reverse(h))) if h < r => Some((Head::Heap, h)),
            (Some(r), _) => Some((Head::Run, r)),
            (None, Some(Reverse(h))) => Some((Head::Heap, h)),
            (None, None) => None,
        }
    }

    fn pop_head(&mut self, head: &Head) -> Option<T> {
        match head {
            Head::Run => self.run.pop_front().map(|e| e.item),
            Head::Heap => self.heap.pop().map(|Reverse(e)| e.item),
        }
    }

    /// The earliest deadline, cancelled or not.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        self.head().map(|(_, e)| e.deadline)
    }

    /// Removes and returns the earliest item if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<T> {
        let (head, entry) = self.head()?;
        if entry.deadline > now {
            return None;
        }
        self.pop_head(&head)
    }

    /// Whether any scheduled item may be cancelled (`purge_cancelled` has nothing to do if not).
    #[inline]
    #[must_use]
    pub fn has_cancelled(&self) -> bool {
        self.cancelled != 0
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
        let len = self.len();
        if self.cancelled > COMPACT_MIN && self.cancelled as f64 > len as f64 * COMPACT_FRACTION {
            let mut kept_run = VecDeque::with_capacity(self.run.len());
            for e in self.run.drain(..) {
                if is_cancelled(&e.item) {
                    dropped.push(e.item);
                } else {
                    kept_run.push_back(e);
                }
            }
            self.run = kept_run;
            let entries = std::mem::take(&mut self.heap).into_vec();
            let mut kept = Vec::with_capacity(entries.len());
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
            while let Some((head, _)) = self.head().filter(|(_, e)| is_cancelled(&e.item)) {
                dropped.extend(self.pop_head(&head));
                self.cancelled = self.cancelled.saturating_sub(1);
            }
        }
        dropped
    }

    /// How many entries are scheduled, cancelled ones not yet dropped included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    /// True if no entry is scheduled, cancelled or not.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.run.is_empty() && self.heap.is_empty()
    }

    /// Every scheduled item, in no particular order (for the GC's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.run
            .iter()
            .map(|e| &e.item)
            .chain(self.heap.iter().map(|Reverse(e)| &e.item))
    }

    /// Removes every entry (the loop is closing).
    pub fn drain(&mut self) -> Vec<T> {
        self.cancelled = 0;
        let mut items: Vec<T> = self.run.drain(..).map(|e| e.item).collect();
        items.extend(
            std::mem::take(&mut self.heap)
                .into_vec()
                .into_iter()
                .map(|Reverse(e)| e.item),
        );
        items
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

    #[test]
    fn interleaved_pushes_pop_in_key_order() {
        // Deadlines that go up, down and repeat, so entries land in both the run and the heap.
        let mut q = TimerQueue::new();
        let mut expected = Vec::new();
        let mut x: u64 = 12345;
        for i in 0..2000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let deadline = if i % 3 == 0 { i } else { (x >> 33) % 500 };
            q.push(deadline, i);
            expected.push((deadline, i));
        }
        expected.sort_unstable();
        assert_eq!(q.len(), 2000);
        let mut got = Vec::new();
        while let Some(d) = q.next_deadline() {
            let item = q.pop_due(d).unwrap();
            got.push((d, item));
        }
        assert_eq!(got, expected);
        assert!(q.is_empty());
    }

    #[test]
    fn pop_due_takes_the_earlier_of_run_and_heap() {
        let mut q = TimerQueue::new();
        q.push(10, 'a'); // run
        q.push(20, 'b'); // run
        q.push(5, 'c'); // heap: before the run's last deadline
        q.push(20, 'd'); // run, after 'b'
        assert_eq!(q.next_deadline(), Some(5));
        assert_eq!(q.pop_due(4), None);
        let order: Vec<char> = std::iter::from_fn(|| q.pop_due(20)).collect();
        assert_eq!(order, vec!['c', 'a', 'b', 'd']);
    }

    #[test]
    fn cancelled_heads_are_purged_from_both_parts() {
        let mut q = TimerQueue::new();
        q.push(10, (10, true)); // run
        q.push(5, (5, true)); // heap
        q.push(20, (20, false)); // run
        q.note_cancelled();
        q.note_cancelled();
        let dropped = q.purge_cancelled(|(_, c)| *c);
        assert_eq!(dropped.iter().map(|(d, _)| *d).collect::<Vec<_>>(), vec![5, 10]);
        assert_eq!(q.next_deadline(), Some(20));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn compaction_keeps_the_run_in_order() {
        let mut q = TimerQueue::new();
        for i in 0..300u64 {
            q.push(i, (i, i % 3 != 0)); // all in the run; two thirds cancelled
        }
        q.push(1, (1000, false)); // heap
        for _ in 0..200 {
            q.note_cancelled();
        }
        let dropped = q.purge_cancelled(|(_, c)| *c);
        assert_eq!(dropped.len(), 200);
        let all: Vec<u64> = std::iter::from_fn(|| q.pop_due(u64::MAX)).map(|(i, _)| i).collect();
        let mut expected: Vec<u64> = (0..300).filter(|i| i % 3 == 0).collect();
        expected.insert(1, 1000); // deadline 1 sorts after deadline 0
        assert_eq!(all, expected);
    }

    #[test]
    fn drain_and_iter_see_both_parts() {
        let mut q = TimerQueue::new();
        q.push(10, 1);
        q.push(5, 2);
        assert_eq!(q.iter().count(), 2);
        let mut all = q.drain();
        all.sort_unstable();
        assert_eq!(all, vec![1, 2]);
        assert!(q.is_empty());
    }
}
