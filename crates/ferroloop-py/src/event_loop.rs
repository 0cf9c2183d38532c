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

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferroloop_core::clock::{monotonic_ns, monotonic_resolution_ns, ns_to_secs, secs_to_ns};
use ferroloop_core::driver::uring::Uring;
use ferroloop_core::driver::{Backend, Driver, Event, Interest};
use ferroloop_core::ready::ReadyQueue;
use ferroloop_core::sources::Sources;
use ferroloop_core::timer::TimerQueue;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::cell::AttachedCell;
use crate::completion::{Buffers, OpTable};
use crate::glue::{self, os_error};
use crate::handle::{Callback, Handle, ThreadSafeHandle, TimerHandle};
use crate::owner::{IoOp, Owner};
use crate::sockops;
use crate::stats::{Gauges, Stats};
use crate::stream::MAX_READ;
use crate::tasks;
use crate::transport::is_exit;

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: the longest single wait, 24 hours.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

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

/// What `_io_key` reports for an fd: `(selectors event mask, reader, writer)`.
type IoKey = (u8, Option<Py<Handle>>, Option<Py<Handle>>);

/// What is registered for one fd: `add_reader`/`add_writer` callbacks, a transport, or both
/// (asyncio's sendfile adds a writer to a transport's fd while the transport is paused).
#[derive(Default)]
struct IoEntry {
    reader: Option<Py<Handle>>,
    writer: Option<Py<Handle>>,
    owner: Option<Owner>,
    /// What the owner asked to be told about.
    owner_interest: Interest,
    /// The file object (not a plain int) whose `add_reader`/`add_writer` created the entry:
    /// selectors' key keeps it, and finds the fd by it once its `fileno()` is -1 (closed).
    fileobj: Option<Py<PyAny>>,
}

impl IoEntry {
    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some() || self.owner_interest.readable,
            writable: self.writer.is_some() || self.owner_interest.writable,
        }
    }

    fn is_empty(&self) -> bool {
        self.reader.is_none() && self.writer.is_none() && self.owner.is_none()
    }
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

#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct LoopCore {
    state: AttachedCell<State>,
    /// The one buffer every stream read of this loop goes through (allocated on first use).
    read_buf: AttachedCell<Vec<u8>>,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// What `stats()` reports.
    pub stats: Stats,
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// `loop.time()`: the monotonic clock in seconds.
pub fn loop_time() -> f64 {
    ns_to_secs(monotonic_ns())
}

/// `contextvars.copy_context()`.
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: PyContext_CopyCurrent returns a new reference or null with an exception set.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?.unbind()) }
}

/// selectors' `_fileobj_to_fd`: an int, or an object with `fileno()`; never negative.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd = if obj.is_instance_of::<PyInt>() {
        obj.clone()
    } else {
        let invalid = || {
            PyValueError::new_err(format!(
                "Invalid file object: {}",
                obj.repr().map_or_else(|_| "?".into(), |r| r.to_string())
            ))
        };
        let fileno = obj.call_method0("fileno").map_err(|e| {
            let py = obj.py();
            if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                || e.is_instance_of::<PyTypeError>(py)
                || e.is_instance_of::<PyValueError>(py)
            {
                invalid()
            } else {
                e
            }
        })?;
        fileno.call_method0("__int__").map_err(|_| invalid())?
    };
    if let Ok(fd) = fd.extract::<RawFd>() {
        if fd >= 0 {
            return Ok(fd);
        }
    }
    // Past a C int, or negative: as big as Python's ints go.
    if fd.lt(0)? {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    // What the selectors' C calls say of an fd past a C int.
    Err(PyOverflowError::new_err("Python int too large to convert to C int"))
}

/// Whether `call_soon_threadsafe` returns a `_ThreadSafeHandle` (asyncio 3.14+; `_compat`'s switch).
fn threadsafe_handles(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    SWITCH
        .get_or_try_init(py, || Ok(!glue::compat(py, "ThreadSafeHandle")?.is_none()))
        .copied()
}

/// Whether `name` is a keyword of `create_task` that every version passes to `Task` as it is when
/// no task factory is set: `name` or `context`.
pub fn is_plain_task_keyword(name: &Bound<'_, PyAny>) -> bool {
    name.cast::<PyString>()
        .is_ok_and(|n| n.to_str().is_ok_and(|n| n == "name" || n == "context"))
}

/// The kernel has what the completion model needs (only `io_uring` asks).
fn completion_supported() -> bool {
    #[cfg(target_os = "linux")]
    return ferroloop_core::driver::uring::Uring::completion_supported();
    #[cfg(not(target_os = "linux"))]
    false
}

/// Gives starved receives (see [`LoopCore::starve`]) their `IoOp::Rearm`: as many as buffers
/// came back since the last time, and at least one, so that a receive restarted too early (and
/// starved again) cannot stall the rest. Queued before the wait, which then does not block.
fn restart_starved(s: &mut State) {
    let n = s.recycled.max(1).min(s.starved.len());
    s.recycled = 0;
    for owner in s.starved.drain(..n) {
        s.ready.push(Ready::Io(owner, IoOp::Rearm, None));
    }
}

/// How long an iteration may wait for I/O: not at all if callbacks are ready or the loop is
/// stopping, else until the first timer is due (forever if there is none); with the time read
/// to work that out, if it was read.
fn wait_timeout(s: &State, stopping: bool) -> (Option<Duration>, Option<u64>) {
    if !s.ready.is_empty() || stopping {
        return (Some(Duration::ZERO), None);
    }
    match s.timers.next_deadline() {
        Some(d) => {
            let now = monotonic_ns();
            (
                Some(Duration::from_nanos(d.saturating_sub(now)).min(MAX_WAIT)),
                Some(now),
            )
        }
        None => (None, None),
    }
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

    /// Runs `f` on the loop's read buffer (`MAX_READ` bytes).
    pub fn with_read_buf<R>(&self, py: Python<'_>, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
        self.read_buf.with(py, |buf| {
            if buf.len() < MAX_READ {
                buf.resize(MAX_READ, 0);
            }
            f(&mut buf[..MAX_READ])
        })
    }

    /// Makes `owner` the owner of `fd`'s readiness (with no interest yet).
    pub fn attach_owner(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<()> {
        self.check_closed()?;
        let old = self.state.with(py, |s| {
            let token = s.sources.insert(fd, IoEntry::default());
            let entry = &mut s.sources.get_mut(token).expect("just inserted").data;
            entry.owner_interest = Interest::NONE;
            entry.owner.replace(owner)
        })?;
        drop(old);
        Ok(())
    }

    /// Changes what the loop watches `fd` for on its owner's behalf.
    pub fn set_owner_interest(&self, py: Python<'_>, fd: RawFd, interest: Interest) -> PyResult<()> {
        self.state
            .with(py, |s| {
                let (Some(driver), Some(token)) = (s.driver.clone(), s.sources.token_of(fd)) else {
                    return Ok(());
                };
                let entry = &mut s.sources.get_mut(token).expect("token from the fd map").data;
                entry.owner_interest = interest;
                let want = entry.interest();
                s.sources.set_interest(&driver, token, want)
            })?
            .map_err(|e| os_error(&e))
    }

    /// Forgets `fd`'s owner (before its socket is closed).
    pub fn detach_owner(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let old = self.state.with(py, |s| {
            let (Some(driver), Some(token)) = (s.driver.clone(), s.sources.token_of(fd)) else {
                return None;
            };
            let entry = &mut s.sources.get_mut(token).expect("token from the fd map").data;
            let old = entry.owner.take();
            entry.owner_interest = Interest::NONE;
            if entry.is_empty() {
                s.sources.remove(&driver, token);
            } else {
                let want = entry.interest();
                let _ = s.sources.set_interest(&driver, token, want);
            }
            old
        })?;
        drop(old);
        Ok(())
    }

    /// Queues `op` for `owner` at the end of the ready queue, as `call_soon` would (a connection
    /// loss with a copy of the current context, as `call_soon` takes one, unless the owner's
    /// connection loss runs in its own context: `Owner::loses_in_own_context`).
    pub fn schedule(&self, py: Python<'_>, owner: Owner, op: IoOp) -> PyResult<()> {
        let context = match op {
            IoOp::ConnectionLost(_) if !owner.loses_in_own_context(py)? => Some(copy_context(py)?),
            _ => None,
        };
        self.state.with(py, |s| s.ready.push(Ready::Io(owner, op, context)))
    }

    /// `owner`'s multishot receive ended with `ENOBUFS`: every provided buffer was taken. It
    /// waits here instead of starting again at once: with thousands of connections, restarting
    /// each at once made every batch of buffers cost a failed receive per connection (5,000
    /// connections echoing 1 KiB: 35,000 requests/s against 220,000 on epoll). Restarted in order,
    /// as many per iteration as buffers came back (at least one), by `restart_starved`.
    pub fn starve(&self, py: Python<'_>, owner: Owner) -> PyResult<()> {
        self.state.with(py, |s| s.starved.push_back(owner))
    }

    /// Whether stream transports of this loop use the completion model.
    pub fn completion_streams(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.completion_streams && s.driver.is_some())
    }

    /// Starts an operation for `owner` with `start(driver, tag)`; `keep` lives until its last
    /// completion. Returns the operation (its tag).
    fn start_op(
        &self,
        py: Python<'_>,
        owner: Owner,
        keep: Option<Py<PyBytes>>,
        start: impl FnOnce(&Uring, u64) -> std::io::Result<()>,
    ) -> PyResult<usize> {
        let started = self.state.with(py, |s| {
            let uring = s.driver.as_deref().and_then(Driver::uring)?;
            let op = s.ops.insert(owner, keep);
            Some(match start(uring, op as u64) {
                Ok(()) => Ok(op),
                Err(e) => Err((e, s.ops.abandon(op))),
            })
        })?;
        match started {
            Some(Ok(op)) => Ok(op),
            Some(Err((e, dropped))) => {
                drop(dropped);
                Err(os_error(&e))
            }
            None => Err(closed_error()),
        }
    }

    /// Starts a multishot receive on `fd` for `owner`; returns the operation.
    pub fn start_recv(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize> {
        self.start_op(py, owner, None, |u, tag| u.recv_multishot(fd, tag))
    }

    /// Starts a multishot accept on the listening socket `fd` for `owner`; returns the operation.
    pub fn start_accept(&self, py: Python<'_>, fd: RawFd, owner: Owner) -> PyResult<usize> {
        self.start_op(py, owner, None, |u, tag| u.accept_multishot(fd, tag))
    }

    /// Starts sending `data[offset..]` on `fd` for `owner`, keeping `data` alive until the send
    /// completes; returns the operation.
    pub fn start_send(
        &self,
        py: Python<'_>,
        fd: RawFd,
        owner: Owner,
        data: Py<PyBytes>,
        offset: usize,
    ) -> PyResult<usize> {
        // SAFETY: a bytes object's buffer never moves or changes, and the table keeps `data` until
        // the send's completion (or until the driver ended the send, at close).
        let (ptr, len) = unsafe {
            let p = data.as_ptr();
            (
                ffi::PyBytes_AS_STRING(p).cast::<u8>().add(offset),
                (ffi::PyBytes_Size(p) as usize).saturating_sub(offset),
            )
        };
        // SAFETY: see above: the memory lives in the table entry of the operation.
        self.start_op(py, owner, Some(data), |u, tag| unsafe { u.send(fd, tag, ptr, len) })
    }

    /// Runs `f` with the `io_uring` driver (`None` on other backends or after close). `f` must not
    /// run Python code.
    pub fn with_uring<R>(&self, py: Python<'_>, f: impl FnOnce(Option<&Uring>) -> R) -> PyResult<R> {
        self.state.with(py, |s| f(s.driver.as_deref().and_then(Driver::uring)))
    }

    /// Asks the kernel to end operation `op`; its last completion still comes.
    pub fn cancel_op(&self, py: Python<'_>, op: usize) -> PyResult<()> {
        self.state
            .with(py, |s| match s.driver.as_deref().and_then(Driver::uring) {
                Some(u) => u.cancel(op as u64),
                None => Ok(()),
            })?
            .map_err(|e| os_error(&e))
    }

    /// The data receives left in provided buffers, as one `bytes`; the buffers go back to the
    /// kernel. `None` if there were none.
    pub fn take_buffers<'py>(&self, py: Python<'py>, buffers: &Buffers) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let parts = buffers.as_slice();
        if parts.is_empty() {
            return Ok(None);
        }
        let total: usize = parts.iter().map(|&(_, len)| len).sum();
        // NOTE: making the bytes inside the borrow is allowed: bytes are not GC-tracked.
        let taken = self.state.with(py, |s| {
            let uring = s.driver.as_deref().and_then(Driver::uring)?;
            // SAFETY: `PyBytes_FromStringAndSize(NULL, n)` returns a new bytes of `n` bytes, not
            // yet initialised (or null with an exception set), referenced only here; the parts
            // fill all `total` bytes before the object is handed out. (`PyBytes::new_with` zeroes
            // it first: a 100 KiB memset per delivery, 5% of the server's CPU on tcp proto 100KiB.)
            let joined = unsafe {
                Bound::from_owned_ptr_or_err(py, ffi::PyBytes_FromStringAndSize(std::ptr::null(), total as isize)).map(
                    |obj| {
                        let ptr = ffi::PyBytes_AS_STRING(obj.as_ptr()).cast_mut().cast::<u8>();
                        let out = std::slice::from_raw_parts_mut(ptr, total);
                        let mut at = 0;
                        for &(buf, len) in parts {
                            at += uring.copy_out(buf, len, 0, &mut out[at..]);
                        }
                        obj.cast_into_unchecked::<PyBytes>()
                    },
                )
            };
            // Given back whether or not the bytes could be made.
            for &(buf, _) in parts {
                uring.recycle(buf);
            }
            s.recycled += parts.len();
            Some(joined)
        })?;
        taken.transpose()
    }

    /// A timer in the queue was cancelled: counts towards compaction.
    pub fn timer_cancelled(&self, py: Python<'_>) -> PyResult<()> {
        self.state.with(py, |s| s.timers.note_cancelled())
    }

    fn new_handle(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Handle> {
        let py = slf.py();
        let context = match context {
            Some(c) if !c.is_none() => c.clone().unbind(),
            _ => copy_context(py)?,
        };
        let cb = Callback {
            func: callback.clone().unbind(),
            args: args.clone().unbind(),
            context,
        };
        Handle::new(py, cb, slf.clone().unbind(), slf.get().debug())
    }

    /// asyncio's debug-mode checks of `call_soon` and friends (`_check_thread`, `_check_callback`).
    fn debug_checks(slf: &Bound<'_, Self>, callback: &Bound<'_, PyAny>, method: &str, thread: bool) -> PyResult<()> {
        if thread {
            slf.call_method0("_check_thread")?;
        }
        slf.call_method1("_check_callback", (callback, method))?;
        Ok(())
    }

    /// `call_soon` and, with `threadsafe`, `call_soon_threadsafe`: asyncio's debug checks (the
    /// thread check only for `call_soon`), a new handle at the end of the ready queue, and for
    /// the thread-safe variant a wake-up of a loop blocked in its wait.
    fn enqueue(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.debug() {
            let method = if threadsafe {
                "call_soon_threadsafe"
            } else {
                "call_soon"
            };
            Self::debug_checks(slf, callback, method, !threadsafe)?;
        }
        let base = Self::new_handle(slf, callback, args, context)?;
        let handle = if threadsafe && threadsafe_handles(py)? {
            Py::new(py, ThreadSafeHandle::wrap(base))?
                .into_bound(py)
                .into_super()
                .unbind()
        } else {
            Py::new(py, base)?
        };
        let queued = handle.clone_ref(py);
        this.state.with(py, |s| {
            s.ready.push(Ready::Native(queued));
            if threadsafe {
                if let Some(d) = &s.driver {
                    // NOTE: a failed wake (no memory for the eventfd write) only delays the callback.
                    let _ = d.waker().wake();
                }
            }
        })?;
        Ok(handle)
    }

    fn schedule_at(
        slf: &Bound<'_, Self>,
        when: f64,
        given: Option<Py<PyAny>>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.debug() {
            Self::debug_checks(slf, callback, "call_at", true)?;
        }
        let handle = Self::new_handle(slf, callback, args, context)?;
        let timer = Py::new(
            py,
            PyClassInitializer::from(handle).add_subclass(TimerHandle::new(when, given)),
        )?;
        let queued = timer.clone_ref(py);
        this.state.with(py, |s| s.timers.push(secs_to_ns(when), queued))?;
        Ok(timer)
    }

    /// Changes the callback for one direction of `fd`, registering or deregistering the fd as
    /// needed. Returns the callback it replaced (to be cancelled by the caller).
    fn set_io_callback(
        &self,
        py: Python<'_>,
        fd: RawFd,
        write: bool,
        handle: Option<Py<Handle>>,
        fileobj: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<Handle>>> {
        self.state
            .with(py, |s| {
                let Some(driver) = s.driver.clone() else {
                    return Err((closed_error(), None, None));
                };
                let token = match s.sources.token_of(fd) {
                    Some(t) => t,
                    None if handle.is_none() => return Ok((None, None)),
                    None => s.sources.insert(
                        fd,
                        IoEntry {
                            fileobj: fileobj
                                .filter(|f| !f.is_instance_of::<PyInt>())
                                .map(|f| f.clone().unbind()),
                            ..IoEntry::default()
                        },
                    ),
                };
                let entry = &mut s.sources.get_mut(token).expect("token from the fd map").data;
                let slot = if write { &mut entry.writer } else { &mut entry.reader };
                let old = std::mem::replace(slot, handle);
                let interest = entry.interest();
                // NOTE: not "no interest": a paused transport still owns its fd (asyncio's
                // sendfile adds and removes a writer on the fd of a paused transport).
                let empty = entry.is_empty();
                if empty {
                    // Forgets it even when the fd is closed already (selectors' epoll `unregister`
                    // ignores the OSError).
                    let gone = s.sources.remove(&driver, token);
                    return Ok((old, gone));
                }
                match s.sources.set_interest(&driver, token, interest) {
                    Ok(()) => Ok((old, None)),
                    Err(e) => {
                        // Leave things as they were; forget an fd that never got registered.
                        let entry = &mut s.sources.get_mut(token).expect("still there").data;
                        let slot = if write { &mut entry.writer } else { &mut entry.reader };
                        let new = std::mem::replace(slot, old);
                        // selectors forget a key whose register/modify failed (e.g. a closed fd);
                        // a transport's fd stays.
                        let gone = if s.sources.get(token).is_some_and(|src| {
                            src.data.owner.is_none() || (src.interest().is_none() && src.data.is_empty())
                        }) {
                            s.sources.remove(&driver, token)
                        } else {
                            None
                        };
                        // Returned, not dropped here: the caller drops them after the borrow.
                        Err((os_error(&e), new, gone))
                    }
                }
            })?
            .map(|(old, gone)| {
                drop(gone);
                old
            })
            .map_err(|(err, new, gone)| {
                drop((new, gone));
                err
            })
    }

    /// selectors' `_fileobj_lookup`: the fd of `obj`, or, when `obj` has none (a closed socket's
    /// `fileno()` is -1), the fd whose entry was created by that very object.
    fn lookup_fd(&self, obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
        let py = obj.py();
        match fileobj_to_fd(obj) {
            Err(e) if e.is_instance_of::<PyValueError>(py) && !obj.is_instance_of::<PyInt>() => {
                let found = self.state.with(py, |s| {
                    s.sources
                        .iter()
                        .find(|(_, src)| src.data.fileobj.as_ref().is_some_and(|f| f.is(obj)))
                        .map(|(_, src)| src.fd)
                })?;
                found.ok_or(e)
            }
            r => r,
        }
    }

    fn add_io(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let raw = this.lookup_fd(fd)?;
        let handle = Py::new(py, Self::new_handle(slf, callback, args, context)?)?;
        if let Some(old) = this.set_io_callback(py, raw, write, Some(handle.clone_ref(py)), Some(fd))? {
            Handle::cancel(old.bind(py))?;
        }
        Ok(handle)
    }

    /// `_add_reader`/`_add_writer` for an fd already checked; the callback runs in `context`
    /// (a copy of the current one when `None`).
    pub fn add_io_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let handle = Py::new(py, Self::new_handle(slf, callback, args, context)?)?;
        if let Some(old) = this.set_io_callback(py, fd, write, Some(handle.clone_ref(py)), None)? {
            Handle::cancel(old.bind(py))?;
        }
        Ok(handle)
    }

    fn remove_io(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, write: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match this.lookup_fd(fd) {
            Ok(fd) => this.remove_io_fd(py, fd, write),
            // Too large to be registered, so not registered (asyncio's selector finds no key).
            Err(e) if e.is_instance_of::<PyOverflowError>(py) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `_remove_reader`/`_remove_writer` for an fd already checked.
    pub fn remove_io_fd(&self, py: Python<'_>, fd: RawFd, write: bool) -> PyResult<bool> {
        match self.set_io_callback(py, fd, write, None, None)? {
            Some(old) => {
                Handle::cancel(old.bind(py))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// One loop iteration. Errors are what must stop `run_forever`: `SystemExit`,
    /// `KeyboardInterrupt`, an exception from a signal handler, or a failing wait.
    fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let events = this.wait_for_io(slf.py())?;
        let now = this.queue_ready(slf.py(), events)?;
        this.stats.iteration_began(now);
        let ran = Self::run_ready(slf)?;
        this.stats.iteration_ended(ran);
        Ok(())
    }

    /// Drops cancelled timers, then waits for I/O: not at all if callbacks are ready or the loop
    /// is stopping, else until the first timer is due. Returns the events (the state's reusable
    /// buffer, to be given back by `queue_ready`).
    fn wait_for_io(&self, py: Python<'_>) -> PyResult<Vec<Event>> {
        let stopping = self.stopping.load(Ordering::Relaxed);
        // The common case (callbacks ready, no cancelled timer, no starved receive) takes one
        // borrow: the wait that does not block runs inside it (it runs no Python code), so the
        // driver's `Arc` is not cloned and no empty `Vec` is made and dropped.
        let (driver, mut events, purged, waited) = self.state.with(py, |s| {
            let purged = s.timers.has_cancelled().then(|| {
                let purged = s.timers.purge_cancelled(|t| t.bind(py).as_super().get().is_cancelled());
                for t in &purged {
                    t.get().unschedule();
                }
                purged
            });
            if !s.starved.is_empty() {
                restart_starved(s);
            }
            let (timeout, _) = wait_timeout(s, stopping);
            let mut events = std::mem::take(&mut s.events);
            if timeout == Some(Duration::ZERO) {
                let waited = match s.driver.as_deref() {
                    Some(d) => d.wait(&mut events, timeout).map_err(|e| os_error(&e)),
                    None => Err(closed_error()),
                };
                (None, events, purged, Some(waited))
            } else {
                (s.driver.clone(), events, purged, None)
            }
        })?;
        drop(purged);
        // Python-level signal handlers (KeyboardInterrupt on SIGINT) run after a wait that may
        // have blocked, as they would when asyncio's select() returns EINTR. After a wait that
        // does not block they are the interpreter's to run, before the next callback's bytecode,
        // as with asyncio's select(timeout=0).
        let waited = match (waited, driver) {
            (Some(waited), _) => waited,
            (None, Some(driver)) => self
                .look_then_wait(py, &driver, &mut events)
                .and_then(|()| py.check_signals()),
            (None, None) => Err(closed_error()),
        };
        if let Err(e) = waited {
            events.clear();
            self.state.with(py, |s| s.events = events)?;
            return Err(e);
        }
        Ok(events)
    }

    /// Waits for I/O when the iteration may block: first a look that does not block, and only if
    /// it finds nothing, the blocking wait (detached, so other threads run meanwhile).
    ///
    /// A busy loop mostly finds I/O already pending, so the look saves detaching (releasing and
    /// re-taking the GIL) around a wait that would not have blocked; a loop with nothing to do
    /// pays one more `epoll_wait`, just before it sleeps anyway. Measured on
    /// `unix bufproto 1KiB` (paired runs against uvloop): server CPU per request 1.075x of
    /// uvloop's without the look, 1.099x with it.
    fn look_then_wait(&self, py: Python<'_>, driver: &Driver, events: &mut Vec<Event>) -> PyResult<()> {
        driver.wait(events, Some(Duration::ZERO)).map_err(|e| os_error(&e))?;
        if !events.is_empty() || driver.has_completions() {
            return Ok(());
        }
        // A signal that interrupted the look would otherwise not be handled until the blocking
        // wait ends: run its Python handler now. The handler, or another thread, may have queued
        // callbacks or stopped the loop (the look may even have consumed the wake-up of a
        // `call_soon_threadsafe`, which queues before it wakes): work out the timeout again.
        py.check_signals()?;
        let stopping = self.stopping.load(Ordering::Relaxed);
        let (timeout, now) = self.state.with(py, |s| wait_timeout(s, stopping))?;
        if timeout == Some(Duration::ZERO) {
            return Ok(());
        }
        // The wait ends where the next iteration reads the clock (`Stats::iteration_began`).
        self.stats.wait_begins(now.unwrap_or_else(monotonic_ns));
        py.detach(|| driver.wait(events, timeout)).map_err(|e| os_error(&e))
    }

    /// Queues the callbacks of ready fds, then the due timers: as asyncio's `_run_once`, those
    /// due before `time() + _clock_resolution` (`end_time`), read after the wait.
    ///
    /// Returns the time read after the wait (nanoseconds).
    fn queue_ready(&self, py: Python<'_>, mut events: Vec<Event>) -> PyResult<u64> {
        // Due means `deadline < end_time`, i.e. `deadline <= end_time - 1` in whole nanoseconds.
        let now = monotonic_ns();
        let last_due = now + monotonic_resolution_ns() - 1;
        let stale = self.state.with(py, |s| {
            if events.is_empty() && s.timers.is_empty() && s.ops.is_empty() {
                // Nothing became ready (the common case of an iteration with callbacks ready).
                s.events = events;
                return None;
            }
            let mut stale: Vec<Py<Handle>> = Vec::new();
            for ev in events.drain(..) {
                let Some(src) = s.sources.get_mut(ev.token) else {
                    continue;
                };
                let mut changed = false;
                let entry = &mut src.data;
                for (ready, slot) in [(ev.readable, &mut entry.reader), (ev.writable, &mut entry.writer)] {
                    let Some(h) = slot.as_ref().filter(|_| ready) else {
                        continue;
                    };
                    if h.get().is_cancelled() {
                        // asyncio's _process_events: a cancelled reader or writer is removed.
                        stale.extend(slot.take());
                        changed = true;
                    } else {
                        s.ready.push(Ready::Native(h.clone_ref(py)));
                    }
                }
                if let Some(owner) = &entry.owner {
                    if ev.readable && entry.owner_interest.readable {
                        s.ready.push(Ready::Io(owner.clone_ref(py), IoOp::Read, None));
                    }
                    if ev.writable && entry.owner_interest.writable {
                        s.ready.push(Ready::Io(owner.clone_ref(py), IoOp::Write, None));
                    }
                }
                if changed {
                    let interest = entry.interest();
                    let empty = entry.is_empty();
                    if let Some(d) = s.driver.as_deref() {
                        if empty {
                            s.sources.remove(d, ev.token);
                        } else {
                            // NOTE: a failure means the fd is gone; the next add reports it.
                            let _ = s.sources.set_interest(d, ev.token, interest);
                        }
                    }
                }
            }
            s.events = events;
            let finished = match s.driver.clone() {
                Some(d) => {
                    let ready = &mut s.ready;
                    s.ops.dispatch(py, &d, |owner, done| {
                        ready.push(Ready::Io(owner, IoOp::Done(done), None));
                    })
                }
                None => Vec::new(),
            };
            let mut due = 0;
            while let Some(t) = s.timers.pop_due(last_due) {
                t.get().unschedule();
                s.ready.push(Ready::Native(t.into_bound(py).into_super().unbind()));
                due += 1;
            }
            self.stats.timers.add(due);
            Some((stale, finished))
        })?;
        drop(stale);
        Ok(now)
    }

    /// Debug mode: warns, as asyncio does for a slow handle, when an owner's work that started at
    /// `t0` took `slow_callback_duration` or longer.
    fn report_slow_io(slf: &Bound<'_, Self>, owner: &Owner, method: &'static str, t0: f64) -> PyResult<()> {
        let py = slf.py();
        let dt = loop_time() - t0;
        let threshold: f64 = slf.getattr(pyo3::intern!(py, "slow_callback_duration"))?.extract()?;
        if dt >= threshold {
            glue::helper(py, "report_slow_io")?.call1((owner.object(py), method, dt))?;
        }
        Ok(())
    }

    /// Runs what is ready now; what these callbacks schedule runs in the next iteration. Returns
    /// how many were taken from the queue.
    fn run_ready(slf: &Bound<'_, Self>) -> PyResult<u64> {
        let py = slf.py();
        let this = slf.get();
        let ntodo = this.state.with(py, |s| s.ready.begin_pass())?;
        let debug = this.debug();
        for _ in 0..ntodo {
            let Some(item) = this.state.with(py, |s| s.ready.pop())? else {
                break;
            };
            match item {
                Ready::Native(h) => {
                    let h = h.bind(py);
                    if h.get().is_cancelled() {
                        continue;
                    }
                    this.stats.callbacks.add(1);
                    if debug {
                        glue::helper(py, "run_handle_debug")?.call1((slf, h))?;
                    } else {
                        Handle::run(h)?;
                    }
                }
                Ready::Io(owner, op, context) => {
                    this.stats.io_events.add(1);
                    // Debug mode times each dispatch as asyncio's `_run_once` times the
                    // transports' `_read_ready` handles; otherwise nothing is done.
                    let started = debug.then(|| (op.method_name(), loop_time()));
                    let result = owner.run(py, op, context);
                    if let Some((method, t0)) = started {
                        // A SystemExit/KeyboardInterrupt leaves at once, as from asyncio's handle.
                        if !matches!(&result, Err(err) if is_exit(py, err)) {
                            Self::report_slow_io(slf, &owner, method, t0)?;
                        }
                    }
                    if let Err(err) = result {
                        if is_exit(py, &err) {
                            return Err(err);
                        }
                        // Nothing a transport raises may stop the loop: report it as asyncio
                        // reports an exception from a callback.
                        glue::helper(py, "report_call_error")?.call1((
                            slf,
                            owner.object(py),
                            (),
                            glue::exc_value(py, &err),
                        ))?;
                    }
                }
                Ready::Foreign(obj) => {
                    let obj = obj.bind(py);
                    if obj.getattr("_cancelled")?.is_truthy()? {
                        continue;
                    }
                    this.stats.callbacks.add(1);
                    if debug {
                        glue::helper(py, "run_handle_debug")?.call1((slf, obj))?;
                    } else {
                        obj.call_method0("_run")?;
                    }
                }
            }
        }
        Ok(ntodo as u64)
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
            read_buf: AttachedCell::new(Vec::new()),
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
        let completion = backend == Backend::IoUring
            && completion_supported()
            && std::env::var("FERROLOOP_URING_STREAMS").map_or(true, |v| v != "readiness");
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

    fn _sock_wait_recv(slf: &Bound<'_, Self>, fd: RawFd, n: usize) -> PyResult<Py<PyAny>> {
        sockops::wait_recv(slf, fd, n)
    }

    /// `(supported, result)`: `result` is the count, or `None` when not ready.
    fn _sock_try_recv_into(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<(bool, Option<Py<PyAny>>)> {
        sockops::try_recv_into(slf, fd, buf)
    }

    fn _sock_wait_recv_into(slf: &Bound<'_, Self>, fd: RawFd, buf: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        sockops::wait_recv_into(slf, fd, buf)
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
        let py = slf.py();
        let item = if let Ok(h) = handle.cast::<Handle>() {
            if h.get().is_cancelled() {
                return Ok(());
            }
            Ready::Native(h.clone().unbind())
        } else {
            if handle.getattr("_cancelled")?.is_truthy()? {
                return Ok(());
            }
            Ready::Foreign(handle.clone().unbind())
        };
        slf.get().state.with(py, |s| s.ready.push(item))
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
        self.state.with(py, |s| {
            let src = s.sources.get(s.sources.token_of(fd)?)?;
            let d = &src.data;
            let mask = u8::from(d.reader.is_some()) | (u8::from(d.writer.is_some()) << 1);
            Some((
                mask,
                d.reader.as_ref().map(|h| h.clone_ref(py)),
                d.writer.as_ref().map(|h| h.clone_ref(py)),
            ))
        })
    }

    /// Every fd with a reader or writer.
    fn _io_fds(&self, py: Python<'_>) -> PyResult<Vec<RawFd>> {
        self.state
            .with(py, |s| s.sources.iter().map(|(_, src)| src.fd).collect())
    }

    /// Runs iterations until `stop()`; `run_forever` in Python sets up around it.
    fn _run_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.stats.run_started();
        let result = loop {
            if let Err(e) = Self::run_once(slf) {
                break Err(e);
            }
            if this.stopping.load(Ordering::Relaxed) {
                break Ok(());
            }
        };
        this.stopping.store(false, Ordering::Relaxed);
        this.stats.run_ended();
        result
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
    /// Counted since the loop was made: `iterations`; `running`, seconds in `run_forever` (the
    /// current run included); `io_wait`, seconds of it blocked waiting for I/O (utilisation is
    /// `1 - io_wait / running`); `callbacks`, handles run (callbacks, timers, task steps,
    /// `add_reader` callbacks); `timers`, timers that came due; `io_events`, readiness and
    /// completions handled by ferroloop's transports and servers; `longest_iteration`, the most
    /// seconds one iteration was busy (from the end of its wait to the start of the next blocking
    /// one), and `longest_iteration_callbacks`, how many callbacks and events it ran; `bytes_read`, `bytes_written`, what ferroloop's transports received and sent;
    /// `accepted`, connections its servers accepted. Held now: `ready`, callbacks waiting to run;
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
        // The kernel must be done with every operation's memory before the table lets go of it.
        let driver = self.state.with(py, |s| s.driver.clone())?;
        if let Some(u) = driver.as_deref().and_then(Driver::uring) {
            py.detach(|| u.drain_ops());
        }
        let ops = self.state.with(py, |s| s.ops.drain())?;
        drop(ops);
        let dropped = self.state.with(py, |s| {
            let sources = match s.driver.as_deref() {
                Some(d) => s.sources.drain(d),
                None => Vec::new(),
            };
            (s.ready.drain(), s.timers.drain(), sources, s.driver.take())
        })?;
        for t in &dropped.1 {
            t.get().unschedule();
        }
        drop(dropped);
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.state.for_traverse() else {
            return Ok(());
        };
        for item in s.ready.iter() {
            match item {
                Ready::Native(h) => visit.call(h)?,
                Ready::Foreign(o) => visit.call(o)?,
                Ready::Io(owner, _, context) => {
                    owner.traverse(&visit)?;
                    visit.call(context)?;
                }
            }
        }
        for t in s.timers.iter() {
            visit.call(t)?;
        }
        for (_, src) in s.sources.iter() {
            visit.call(&src.data.reader)?;
            visit.call(&src.data.writer)?;
            visit.call(&src.data.fileobj)?;
            if let Some(owner) = &src.data.owner {
                owner.traverse(&visit)?;
            }
        }
        visit.call(&s.task_factory)?;
        s.ops.traverse(&visit)?;
        Ok(())
    }
}
