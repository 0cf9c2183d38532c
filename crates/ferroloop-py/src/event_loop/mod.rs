//! `LoopCore`: the Rust base class of `ferroloop.Loop`, holding everything that runs per iteration,
//! per callback and per readiness event.
//!
//! The Python class `ferroloop.Loop` derives from `LoopCore` and from asyncio's own Unix selector
//! loop; the methods defined here (`call_soon`, `call_at`, `time`, `_add_reader`, ... and the loop
//! iteration itself) take precedence, and asyncio's Python code supplies the once-per-call API
//! around them (argument checking, executors, DNS, servers, signals), calling back into these.
//!
//! One iteration ([`LoopCore::run_once`]) follows asyncio's `BaseEventLoop._run_once`: drop
//! cancelled timers, wait for I/O (not at all if callbacks are ready or the loop is stopping),
//! queue the callbacks of ready fds, queue the due timers, then run exactly the callbacks that
//! were queued when the pass began.
//!
//! Every Python-facing method (the one `#[pymethods]` block a class may have) is in this file,
//! with the struct and its state; the work behind them is in plain `impl LoopCore` blocks beside
//! it: `run.rs` the iteration, `callbacks.rs` the handles of `call_soon`/`call_at`, `readers.rs` the
//! fd registry (readers, writers and the transports that own an fd), `ops.rs` the `io_uring`
//! operations, `sockops.rs` the `sock_*` fast path, `util.rs` small free functions. `io.rs` is
//! the loop as its transports, listeners, TLS protocols and handles see it: they hold a
//! [`LoopRef`](crate::owner::LoopRef) and call the [`LoopIo`](crate::owner::LoopIo) interface,
//! and never name `LoopCore`, so nothing below the loop depends on it.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferroloop_core::driver::{Backend, Driver, Event};
use ferroloop_core::ready::ReadyQueue;
use ferroloop_core::sources::Sources;
use ferroloop_core::timer::TimerQueue;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::buffers::ReadBuf;
use crate::cell::AttachedCell;
use crate::completion::OpTable;
use crate::glue::{loop_time, os_error};
use crate::handle::{Handle, TimerHandle};
use crate::owner::{IoOp, Owner};
use crate::stats::{Gauges, Stats};
use crate::tasks;

mod callbacks;
mod io;
mod ops;
mod readers;
mod run;
mod sockops;
mod util;

use ops::completion_wanted;
use readers::{IoEntry, IoKey};
use util::closed_error;
pub use util::is_plain_task_keyword;

/// A callback waiting in the ready queue.
pub enum Ready {
    /// One of ours: run without any Python-level dispatch.
    Native(Py<Handle>),
    /// Any object with `_run()` and `_cancelled`, e.g. the `asyncio.Handle` that asyncio's signal
    /// code passes to `_add_callback`.
    Foreign(Py<PyAny>),
    /// Work for a transport or listener: readiness, its start, its connection loss; with the
    /// context it was scheduled from, where that matters (see `IoOp::ConnectionLost`).
    Io(Owner, IoOp, Option<Py<PyAny>>),
}

struct State {
    /// `None` before `_core_init` and after close.
    driver: Option<Arc<Driver>>,
    ready: ReadyQueue<Ready>,
    timers: TimerQueue<Py<TimerHandle>>,
    sources: Sources<IoEntry>,
    /// Reused across iterations so that a wait allocates nothing.
    events: Vec<Event>,
    /// `set_task_factory`'s factory (asyncio's `_task_factory`).
    task_factory: Option<Py<PyAny>>,
    /// Operations of the completion model in flight (`io_uring`).
    ops: OpTable,
    /// Stream transports use the completion model (the `io_uring` backend, unless
    /// `FERROLOOP_URING_STREAMS=readiness`).
    completion_streams: bool,
    /// Transports whose receive ended for want of a provided buffer (`ENOBUFS`), oldest first:
    /// each gets its receive back as buffers come back (see [`LoopCore::starve`]).
    starved: VecDeque<Owner>,
    /// Provided buffers given back since starved receives were last restarted.
    recycled: usize,
}

impl State {
    /// True if a wait that does not block could report nothing, so the iteration may leave it
    /// out: a readiness backend watching no fd at all.
    ///
    /// asyncio's self-pipe counts only while a signal handler is installed: `Loop` watches it
    /// then alone (`Loop._watch_self_pipe`), since only the C-level signal handler writes to it
    /// (ferroloop's `_write_to_self` wakes the loop through the driver's eventfd). The waker needs
    /// no look either: what it announces (`call_soon_threadsafe`, a signal-safe callback) is
    /// queued before the wake, and a wake left pending only makes the next blocking wait return
    /// at once. So the callbacks run in the order a look would have given them, without a system
    /// call per iteration: a loop running callbacks and timers without I/O (the micro benchmarks,
    /// a computation in tasks) skips the `epoll_wait` that a loop with sockets makes on every
    /// iteration.
    fn quiet(&self, driver: &Driver) -> bool {
        driver.reports_only_fds() && self.sources.is_empty()
    }
}

#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct LoopCore {
    state: AttachedCell<State>,
    /// The one buffer every stream read of this loop goes through.
    read_buf: ReadBuf,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// What `stats()` reports.
    pub stats: Stats,
}

impl LoopCore {
    #[inline]
    pub fn debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    #[inline]
    fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed_error());
        }
        Ok(())
    }

    /// Wakes the loop if it is blocked waiting for I/O.
    fn wake(&self, py: Python<'_>) -> PyResult<()> {
        self.state.with(py, |s| {
            if let Some(d) = &s.driver {
                // NOTE: a failed wake (no memory for the eventfd write) only delays the callback.
                let _ = d.waker().wake();
            }
        })
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> LoopCore {
        LoopCore {
            state: AttachedCell::new(State {
                driver: None,
                ready: ReadyQueue::new(),
                timers: TimerQueue::new(),
                sources: Sources::new(),
                events: Vec::with_capacity(64),
                task_factory: None,
                ops: OpTable::default(),
                completion_streams: false,
                starved: VecDeque::new(),
                recycled: 0,
            }),
            read_buf: ReadBuf::default(),
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            stats: Stats::default(),
        }
    }

    /// Creates the I/O driver. `backend` is a name from `ferroloop.backends()`.
    fn _core_init(&self, py: Python<'_>, backend: &str) -> PyResult<()> {
        let backend: Backend = backend.parse().map_err(PyValueError::new_err)?;
        let driver = Driver::new(backend).map_err(|e| os_error(&e))?;
        let completion = completion_wanted(backend);
        let old = self.state.with(py, |s| {
            s.completion_streams = completion;
            s.driver.replace(Arc::new(driver))
        })?;
        drop(old);
        Ok(())
    }

    /// The name of the I/O backend this loop runs on.
    #[getter]
    fn backend(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        self.state.with(py, |s| s.driver.as_ref().map(|d| d.backend().name()))
    }

    /// The loop's clock: seconds on the monotonic clock, as `call_at` takes them.
    #[allow(clippy::unused_self)] // an instance method in asyncio's API
    fn time(&self) -> f64 {
        loop_time()
    }

    /// (The method Python calls is `fastcall.rs`'s, with the docstring.)
    #[pyo3(signature = (callback, *args, context=None))]
    pub fn call_soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::enqueue(slf, callback, args, context, false)
    }

    /// (The method Python calls is `fastcall.rs`'s, with the docstring.)
    #[pyo3(signature = (callback, *args, context=None))]
    pub fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::enqueue(slf, callback, args, context, true)
    }

    /// (The method Python calls is `fastcall.rs`'s, with the docstring.)
    #[pyo3(signature = (delay, callback, *args, context=None))]
    pub fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let now = slf.get().time();
        let when = match delay.extract::<f64>() {
            Ok(d) if delay.is_instance_of::<PyFloat>() || delay.is_instance_of::<PyInt>() => now + d,
            // Anything else goes through Python's `+`, so errors read as asyncio's do.
            _ => PyFloat::new(py, now).add(delay)?.extract::<f64>()?,
        };
        Self::schedule_at(slf, when, None, callback, args, context)
    }

    /// (The method Python calls is `fastcall.rs`'s, with the docstring.)
    #[pyo3(signature = (when, callback, *args, context=None))]
    pub fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        // asyncio keeps `when` as given; an exact int is kept beside the float the queue uses.
        let given = when.is_exact_instance_of::<PyInt>().then(|| when.clone().unbind());
        Self::schedule_at(slf, when.extract::<f64>()?, given, callback, args, context)
    }

    // The sock_* fast path (see `sockops`): a try that returns `None` when the socket is not
    // ready, and a wait that returns a future. `NotImplemented`-like `None`s for buffers the
    // fast path cannot take send the caller down asyncio's own path.

    /// `sock_recv`'s first try from the socket object itself (see `sockops::recv_now`).
    fn _sock_recv_now(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, n: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sockops::recv_now(slf, sock, n)
    }

    /// `sock_sendall`'s first try from the socket object itself (see `sockops::send_now`).
    fn _sock_send_now(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        sockops::send_now(slf, sock, data)
    }

    fn _sock_try_recv(slf: &Bound<'_, Self>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyAny>>> {
        sockops::try_recv(slf, fd, n)
    }

    fn _sock_wait_recv(slf: &Bound<'_, Self>, sock: &Bound<'_, PyAny>, fd: RawFd, n: usize) -> PyResult<Py<PyAny>> {
        sockops::wait_recv(slf, sock, fd, n)
    }

    /// `(supported, result)`: `result` is the count, or `None` when not ready.
    fn _sock_try_recv_into(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<(bool, Option<Py<PyAny>>)> {
        sockops::try_recv_into(slf, fd, buf)
    }

    fn _sock_wait_recv_into(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyAny>>> {
        sockops::wait_recv_into(slf, sock, fd, buf)
    }

    /// `(sent, total)` bytes of `data` now, or `None` for data the fast path cannot take.
    fn _sock_try_send(slf: &Bound<'_, Self>, fd: RawFd, data: &Bound<'_, PyAny>) -> PyResult<Option<(usize, usize)>> {
        sockops::try_send(slf, fd, data)
    }

    fn _sock_wait_sendall(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        data: &Bound<'_, PyAny>,
        sent: usize,
    ) -> PyResult<Option<Py<PyAny>>> {
        sockops::wait_sendall(slf, fd, data, sent)
    }

    /// Whether the loop is in debug mode.
    fn get_debug(&self) -> bool {
        self.debug()
    }

    /// A new `asyncio.Future` attached to this loop.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        tasks::new_future(slf.as_any())
    }

    /// (The method Python calls is `fastcall.rs`'s, with the docstring.)
    ///
    /// `asyncio.Task(coro, loop=self, name=..., context=...)`. With a task factory set, or
    /// keywords other than `name` and `context`, asyncio's own `create_task` runs instead: what it
    /// passes to factories, which keywords it takes and how it refuses the others differ between
    /// versions (3.14 passes any keyword to `Task` or to the factory; before, only these two).
    #[pyo3(signature = (coro, **kwargs))]
    pub fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let plain = kwargs.is_none_or(|k| k.keys().iter().all(|n| is_plain_task_keyword(&n)));
        if !plain || this.state.with(py, |s| s.task_factory.is_some())? {
            let args = PyTuple::new(py, [slf.as_any(), coro])?;
            return tasks::asyncio_create_task(py)?.call(args, kwargs);
        }
        this.check_closed()?;
        tasks::new_task(slf.as_any(), coro, kwargs)
    }

    #[getter(_task_factory)]
    fn task_factory_attr(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state
            .with(py, |s| s.task_factory.as_ref().map(|f| f.clone_ref(py)))
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, factory: Option<Py<PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none(py));
        let old = self
            .state
            .with(py, |s| std::mem::replace(&mut s.task_factory, factory))?;
        drop(old);
        Ok(())
    }

    /// asyncio's hook for handles made elsewhere (signal handlers): queue unless cancelled.
    fn _add_callback(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::add_callback(slf, handle)
    }

    fn _add_callback_signalsafe(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::_add_callback(slf, handle)?;
        slf.get().wake(slf.py())
    }

    /// Wakes the loop if it is blocked waiting for I/O (asyncio writes to its self-pipe here).
    fn _write_to_self(&self, py: Python<'_>) -> PyResult<()> {
        self.wake(py)
    }

    fn _timer_handle_cancelled(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        if handle.getattr("_scheduled")?.is_truthy()? {
            self.timer_cancelled(py)?;
        }
        Ok(())
    }

    /// asyncio's hook behind `add_reader` (`context=` since 3.15, where asyncio's transports pass it).
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_io(slf, fd, callback, args, context, false)
    }

    /// asyncio's hook behind `add_writer` (`context=` since 3.15, where asyncio's transports pass it).
    #[pyo3(signature = (fd, callback, *args, context=None))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::add_io(slf, fd, callback, args, context, true)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_io(slf, fd, false)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_io(slf, fd, true)
    }

    /// What is registered for `fd`: `(events, reader, writer)` with selectors' event bits, or None.
    fn _io_key(&self, py: Python<'_>, fd: RawFd) -> PyResult<Option<IoKey>> {
        self.io_key(py, fd)
    }

    /// Every fd with a reader or writer.
    fn _io_fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        self.io_fds(py)
    }

    /// Runs iterations until `stop()`; `run_forever` in Python sets up around it.
    fn _run_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::run_core(slf)
    }

    /// One iteration, as asyncio's `_run_once` (for code and tests that drive the loop by hand).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.get().stats.run_started();
        let result = Self::run_once(slf);
        slf.get().stats.run_ended();
        result
    }

    /// Stops the loop once the callbacks ready now have run: `run_forever` returns then.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the loop was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    #[getter(_closed)]
    fn closed_attr(&self) -> bool {
        self.is_closed()
    }

    #[setter(_closed)]
    fn set_closed_attr(&self, value: bool) {
        self.closed.store(value, Ordering::Relaxed);
    }

    #[getter(_stopping)]
    fn stopping_attr(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[setter(_stopping)]
    fn set_stopping_attr(&self, value: bool) {
        self.stopping.store(value, Ordering::Relaxed);
    }

    #[getter(_debug)]
    fn debug_attr(&self) -> bool {
        self.debug()
    }

    #[setter(_debug)]
    fn set_debug_attr(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.debug.store(value.is_truthy()?, Ordering::Relaxed);
        Ok(())
    }

    /// A snapshot of what the loop has done and holds: a new dict each call.
    ///
    /// Counted since the loop was made: `iterations` completed; `running`, seconds in
    /// `run_forever` (the current run included); `io_wait`, seconds of it blocked waiting for I/O
    /// (utilisation is `1 - io_wait / running`); `callbacks`, handles run (callbacks, timers, task
    /// steps, `add_reader` callbacks); `timers`, timers that came due; `io_events`, readiness and
    /// completions handled by ferroloop's transports and servers; `longest_iteration`, the most
    /// seconds one iteration was busy (from the end of its wait to the start of the next blocking
    /// one), and `longest_iteration_callbacks`, how many callbacks and events it ran;
    /// `bytes_read`, `bytes_written`, what ferroloop's transports received and sent; `accepted`,
    /// connections its servers accepted. Held now: `ready`, callbacks waiting to run;
    /// `scheduled`, timers waiting; `fds`, file descriptors registered; `transports`, those of
    /// them that ferroloop's transports own; `servers`, its listening sockets accepting now.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let gauges = self.state.with(py, |s| {
            let transports = s
                .sources
                .iter()
                .filter(|(_, src)| matches!(&src.data.owner, Some(o) if !matches!(o, Owner::Listener(_))))
                .count();
            Gauges {
                ready: s.ready.len(),
                scheduled: s.timers.len(),
                fds: s.sources.len(),
                transports,
            }
        })?;
        self.stats.snapshot(py, &gauges)
    }

    /// Counts for tests and introspection: `(ready, timers, fds)`.
    fn _core_counts(&self, py: Python<'_>) -> PyResult<(usize, usize, usize)> {
        self.state
            .with(py, |s| (s.ready.len(), s.timers.len(), s.sources.len()))
    }

    /// Drops every queued callback, timer and fd registration and closes the driver's fds.
    fn _close_core(&self, py: Python<'_>) -> PyResult<()> {
        self.closed.store(true, Ordering::Relaxed);
        self.end_ops(py)?;
        let (ready, timers, sources, driver) = self.state.with(py, |s| {
            let sources = match s.driver.as_deref() {
                Some(d) => s.sources.drain(d),
                None => Vec::new(),
            };
            (s.ready.drain(), s.timers.drain(), sources, s.driver.take())
        })?;
        for item in ready {
            if let Ready::Native(h) = item {
                Handle::release(h.into_bound(py));
            }
        }
        for t in timers {
            t.get().unschedule();
            Handle::release(t.into_bound(py).into_super());
        }
        drop((sources, driver));
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.state.for_traverse() else {
            return Ok(());
        };
        // A parked handle's references are reported here, as if the loop held them.
        for item in s.ready.iter() {
            match item {
                Ready::Native(h) if Handle::is_parked(h) => h.get().traverse_refs(&visit)?,
                Ready::Native(h) => visit.call(h)?,
                Ready::Foreign(o) => visit.call(o)?,
                Ready::Io(owner, _, context) => {
                    owner.traverse(&visit)?;
                    visit.call(context)?;
                }
            }
        }
        // SAFETY: the GC traverses with the thread attached; the token only views a timer as its
        // `Handle` base (no Python code runs, no reference count changes).
        let py = unsafe { Python::assume_attached() };
        for t in s.timers.iter() {
            if Handle::is_parked(t) {
                t.bind(py).as_super().get().traverse_refs(&visit)?;
            } else {
                visit.call(t)?;
            }
        }
        for (_, src) in s.sources.iter() {
            visit.call(&src.data.reader)?;
            visit.call(&src.data.writer)?;
            visit.call(&src.data.fileobj)?;
            visit.call(&src.data.kept_for)?;
            if let Some(owner) = &src.data.owner {
                owner.traverse(&visit)?;
            }
        }
        visit.call(&s.task_factory)?;
        s.ops.traverse(&visit)?;
        Ok(())
    }
}
