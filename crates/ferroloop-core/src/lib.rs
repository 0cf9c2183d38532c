//! The pure-Rust core of ferroloop: what an asyncio event loop needs below Python.
//!
//! Nothing here knows about Python. The binding crate (`ferroloop-py`) owns a loop state made of
//! the pieces below and drives them from `run_forever`:
//!
//! - [`driver`]: readiness notification from the OS, one file per OS API, the backend chosen at run
//!   time ([`driver::Backend`]). Level-triggered, as asyncio's `add_reader` requires.
//! - [`waker`]: wakes a driver blocked in `wait` from another thread (`call_soon_threadsafe`).
//! - [`timer`]: the timer queue, keyed by `(deadline_ns, seq)` so equal deadlines fire in FIFO
//!   order, with asyncio's lazy cancellation and compaction rule.
//! - [`ready`]: the ready queue with asyncio's ordering (one pass runs only what was queued before
//!   it started).
//! - [`sources`]: registered file descriptors, indexed by slab token, with the interest cache that
//!   skips `epoll_ctl` calls when nothing changed.
//! - [`writeq`]: a stream transport's write queue: chunks kept as given, flushed with `writev`.
//! - [`clock`]: the monotonic clock in integer nanoseconds.
//!
//! # Implementation
//!
//! The loop is single-threaded by contract: everything but the [`waker::Waker`] is owned by
//! whichever thread holds the loop's state (the binding guards it) and takes `&mut self`. The driver's
//! methods take `&self` because the kernel object behind them (an epoll fd) may be changed while
//! another thread waits on it; the binding waits with the interpreter detached.
//!
//! ```
//! use ferroloop_core::{driver::{Backend, Driver, Interest}, timer::TimerQueue};
//! let driver = Driver::new(Backend::default()).unwrap();
//! let mut events = Vec::new();
//! driver.wait(&mut events, Some(std::time::Duration::ZERO)).unwrap();
//! assert!(events.is_empty());
//! let mut timers = TimerQueue::new();
//! timers.push(10, "b");
//! timers.push(5, "a");
//! assert_eq!(timers.pop_due(7), Some("a"));
//! ```

#![warn(missing_docs)]

pub mod clock;
pub mod driver;
pub mod ready;
pub mod sources;
pub mod timer;
pub mod waker;
pub mod writeq;
