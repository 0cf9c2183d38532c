//! `loop.stats()`: what the loop has done, counted as it works.
//!
//! The counters are plain integers in Rust (no Python object per event): the loop thread adds to
//! them with a relaxed load and store, which compiles to ordinary moves, and `stats()` reads them
//! from any thread. Only the loop thread writes them, so no increment is lost; a reader on another
//! thread may see a snapshot a few events old.
//!
//! Time is counted where the clock is read anyway, or where the loop is about to sleep. Each
//! iteration reads the clock after its wait (to find the due timers): a blocking wait is timed
//! from just before it (a clock read when the loop is about to sleep, unless working out the
//! timeout just read it) to that read, and an iteration's busy time is the time between two such
//! reads less the second one's blocking wait. A busy loop, whose waits do not block, reads the
//! clock no more often than it did without the statistics.

use std::sync::atomic::{AtomicU64, Ordering};

use ferroloop_core::clock::{monotonic_ns, ns_to_secs};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One counter, written by the loop thread only.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // A single writer: a load and a store, not a locked read-modify-write.
        self.0
            .store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    #[inline]
    fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// The counters of one loop.
#[derive(Default)]
pub struct Stats {
    /// Loop iterations completed (asyncio's `_run_once`).
    iterations: Counter,
    /// Handles run: `call_soon`/`call_later` callbacks, task steps, `add_reader` callbacks.
    pub callbacks: Counter,
    /// Timers that came due (their handles are among `callbacks`).
    pub timers: Counter,
    /// Readiness and completions handed to the Rust transports and servers.
    pub io_events: Counter,
    /// Nanoseconds blocked in the I/O wait.
    io_wait_ns: Counter,
    /// Nanoseconds in `run_forever` before the current run.
    running_ns: Counter,
    /// When the current run began (0: not running).
    run_started_ns: Counter,
    /// The longest time one iteration was busy (not blocked in its wait), and how many
    /// callbacks and I/O events it took from the ready queue.
    longest_ns: Counter,
    longest_callbacks: Counter,
    /// When the previous iteration read the clock after its wait (0: none in this run), and what
    /// it took from the ready queue.
    prev_now_ns: Counter,
    prev_ran: Counter,
    /// When the current blocking wait began (0: the iteration's wait does not block).
    wait_started_ns: Counter,
    /// Bytes the Rust transports received and sent (TLS: the encrypted bytes).
    bytes_read: Counter,
    bytes_written: Counter,
    /// Connections the Rust servers accepted.
    pub accepted: Counter,
    /// Listening sockets accepting now (a gauge: the listeners say when they start and stop).
    servers: Counter,
}

impl Stats {
    #[inline]
    pub fn read(&self, n: usize) {
        self.bytes_read.add(n as u64);
    }

    #[inline]
    pub fn wrote(&self, n: usize) {
        self.bytes_written.add(n as u64);
    }

    /// A blocking wait begins (`now`: the time just read).
    #[inline]
    pub fn wait_begins(&self, now: u64) {
        self.wait_started_ns.set(now.max(1));
    }

    /// An iteration's wait is over and it read the clock (`now`): its blocking wait, if any, and
    /// the previous iteration's busy time are known.
    #[inline]
    pub fn iteration_began(&self, now: u64) {
        let started = self.wait_started_ns.get();
        let blocked = if started == 0 {
            0
        } else {
            self.wait_started_ns.set(0);
            let dt = now.saturating_sub(started);
            self.io_wait_ns.add(dt);
            dt
        };
        let prev = self.prev_now_ns.get();
        if prev != 0 {
            self.busy(now.saturating_sub(prev).saturating_sub(blocked));
        }
        self.prev_now_ns.set(now);
    }

    /// The iteration took `ran` callbacks and I/O events from the ready queue.
    #[inline]
    pub fn iteration_ended(&self, ran: u64) {
        self.iterations.add(1);
        self.prev_ran.set(ran);
    }

    /// The previous iteration was busy for `ns`.
    #[inline]
    fn busy(&self, ns: u64) {
        if ns > self.longest_ns.get() {
            self.longest_ns.set(ns);
            self.longest_callbacks.set(self.prev_ran.get());
        }
    }

    /// A listener started (`on`) or stopped accepting.
    pub fn servers_changed(&self, on: bool) {
        let n = self.servers.get();
        self.servers.set(if on { n + 1 } else { n.saturating_sub(1) });
    }

    pub fn run_started(&self) {
        self.run_started_ns.set(monotonic_ns().max(1));
        self.prev_now_ns.set(0);
        self.wait_started_ns.set(0);
    }

    pub fn run_ended(&self) {
        let now = monotonic_ns();
        let prev = self.prev_now_ns.get();
        if prev != 0 {
            self.busy(now.saturating_sub(prev));
            self.prev_now_ns.set(0);
        }
        // A wait that ended in an error (the run ends with it) is not counted.
        self.wait_started_ns.set(0);
        let t0 = self.run_started_ns.get();
        if t0 != 0 {
            self.running_ns.add(now.saturating_sub(t0));
            self.run_started_ns.set(0);
        }
    }

    /// Nanoseconds in `run_forever`, the current run included.
    fn running_now_ns(&self) -> u64 {
        let t0 = self.run_started_ns.get();
        let current = if t0 == 0 { 0 } else { monotonic_ns().saturating_sub(t0) };
        self.running_ns.get() + current
    }

    /// The snapshot `loop.stats()` returns; `now` holds the gauges the loop's state answers.
    pub fn snapshot<'py>(&self, py: Python<'py>, now: &Gauges) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("iterations", self.iterations.get())?;
        d.set_item("running", ns_to_secs(self.running_now_ns()))?;
        d.set_item("io_wait", ns_to_secs(self.io_wait_ns.get()))?;
        d.set_item("callbacks", self.callbacks.get())?;
        d.set_item("timers", self.timers.get())?;
        d.set_item("io_events", self.io_events.get())?;
        d.set_item("longest_iteration", ns_to_secs(self.longest_ns.get()))?;
        d.set_item("longest_iteration_callbacks", self.longest_callbacks.get())?;
        d.set_item("ready", now.ready)?;
        d.set_item("scheduled", now.scheduled)?;
        d.set_item("fds", now.fds)?;
        d.set_item("transports", now.transports)?;
        d.set_item("servers", self.servers.get())?;
        d.set_item("bytes_read", self.bytes_read.get())?;
        d.set_item("bytes_written", self.bytes_written.get())?;
        d.set_item("accepted", self.accepted.get())?;
        Ok(d)
    }
}

/// What the loop holds now (counted when asked).
pub struct Gauges {
    pub ready: usize,
    pub scheduled: usize,
    pub fds: usize,
    pub transports: usize,
}
