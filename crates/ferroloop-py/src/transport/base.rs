//! The transport base: what stream, datagram and pipe transports hold and do alike, written once.
//!
//! A transport is a frozen pyclass holding a [`Base`] (its loop, fd, extra-info dict and context)
//! and an `AttachedCell` of its state; the state embeds [`Flags`] (asyncio's `_closing`,
//! `_conn_lost`, the flow-control water marks, what the loop watches the fd for) next to the parts
//! of its own kind. [`Transport`] and [`State`] plug the kind-specific parts in; the functions here
//! are the shared steps and the bodies of the `#[pymethods]` that are the same for every kind
//! (each pyclass keeps its own `#[pymethods]` entry, a one-line call into this module).

use std::os::fd::RawFd;

use ferroloop_core::driver::Interest;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyClass, PyTraverseError, PyVisit};

use super::{flow_callback, is_exit, write_buffer_limits, WaterMarks};
use crate::cell::AttachedCell;
use crate::glue;
use crate::owner::{IoOp, LoopIo, LoopRef, Owner};

/// What a transport holds besides its state: set at creation, never changed.
pub struct Base {
    pub loop_: LoopRef,
    pub fd: RawFd,
    pub extra: Py<PyDict>,
    /// The context protocol callbacks run in: a copy of the creator's.
    pub context: Py<PyAny>,
}

impl Base {
    #[inline]
    pub fn lp(&self) -> &dyn LoopIo {
        self.loop_.io()
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.loop_.traverse(visit)?;
        visit.call(&self.extra)?;
        visit.call(&self.context)
    }
}

/// The flags every transport's state has, as asyncio's transports name them.
pub struct Flags {
    /// Reading (or watching) was started by the `Start` op (asyncio's deferred `_add_reader`).
    pub started: bool,
    pub paused: bool,
    pub closing: bool,
    pub conn_lost: u32,
    /// asyncio's write-side flow control (`_FlowControlMixin`).
    pub flow: WaterMarks,
    /// What the loop watches the fd for on our behalf.
    pub interest: Interest,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            started: false,
            paused: false,
            closing: false,
            conn_lost: 0,
            flow: WaterMarks::default(),
            interest: Interest::NONE,
        }
    }
}

impl Flags {
    pub fn is_reading(&self) -> bool {
        !self.closing && !self.paused
    }
}

/// A transport's state, as the shared steps see it.
pub trait State: Send {
    /// What `connection_lost` takes out of the state besides the endpoint (the socket or pipe):
    /// the protocol and whatever the kind releases with it.
    type Released;
    /// What `force_close` takes out: the queued writes.
    type Dropped;

    fn flags(&self) -> &Flags;
    fn flags_mut(&mut self) -> &mut Flags;
    fn protocol(&self) -> Option<&Py<PyAny>>;
    /// Whether `connection_lost` is to be told to the protocol (asyncio's `_protocol_connected`).
    fn protocol_connected(&self) -> bool {
        true
    }
    /// What the loop should watch the fd for now.
    fn wanted_interest(&self) -> Interest;
    /// What the transport wants `Read`/`Write` ops for (checked when they are queued).
    fn wants(&self) -> Interest {
        self.wanted_interest()
    }
    /// Reads and writes are `io_uring` operations: the transport drives them itself.
    fn completion(&self) -> bool {
        false
    }
    /// `get_write_buffer_size()`.
    fn buffer_size(&self) -> usize {
        0
    }
    /// Data is queued to be written.
    fn writes_pending(&self) -> bool {
        false
    }
    /// Drops the write queue (the connection is lost); returns what it held.
    fn drop_writes(&mut self) -> Self::Dropped;
    /// Takes the endpoint and what `connection_lost` releases out of the state.
    fn release(&mut self, py: Python<'_>) -> (Option<Py<PyAny>>, Self::Released);
}

/// A transport pyclass, as the shared steps see it.
pub trait Transport: PyClass<Frozen = True> + Sync {
    type State: State;

    fn base(&self) -> &Base;
    fn state(&self) -> &AttachedCell<Self::State>;
    /// The transport as the loop's owner of its fd.
    fn owner(slf: &Bound<'_, Self>) -> Owner;

    /// The completion model's step in place of a readiness interest (see `sync_interest`).
    fn sync_completion(slf: &Bound<'_, Self>) -> PyResult<()> {
        let _ = slf;
        Ok(())
    }
    /// Closes after a fatal error: asyncio's `_force_close` (sockets) or `_close` (pipes).
    fn lose(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()>;
    /// In `connection_lost`, after the fd left the loop and before the endpoint's `close()`
    /// (if there still is an endpoint).
    fn before_close(&self, endpoint: Option<&Py<PyAny>>, released: &mut <Self::State as State>::Released) {
        let _ = (endpoint, released);
    }
    /// In `connection_lost`, after the endpoint's `close()`: drops what was released (the
    /// protocol last but for what the kind does after).
    fn after_close(slf: &Bound<'_, Self>, released: <Self::State as State>::Released) -> PyResult<()> {
        let _ = slf;
        drop(released);
        Ok(())
    }
}

pub fn protocol<T: Transport>(this: &T, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
    this.state().with(py, |s| s.protocol().map(|p| p.clone_ref(py)))
}

/// Schedules `op` for the transport on its loop.
pub fn schedule<T: Transport>(slf: &Bound<'_, T>, op: IoOp) -> PyResult<()> {
    slf.get().base().lp().schedule(slf.py(), T::owner(slf), op)
}

/// `_start`: registers the transport with its loop and schedules `connection_made`.
pub fn start<T: Transport>(slf: &Bound<'_, T>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
    let base = slf.get().base();
    base.lp().attach_owner(slf.py(), base.fd, T::owner(slf))?;
    schedule(slf, IoOp::Start(waiter))
}

/// Tells the loop what to watch the fd for, if that changed; in the completion model, starts
/// or cancels the receive and starts the next send.
pub fn sync_interest<T: Transport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    // One borrow: `Err` for the completion model, else the readiness interest if it changed.
    let change = this.state().with(py, |s| {
        if s.completion() {
            return Err(());
        }
        let want = s.wanted_interest();
        let flags = s.flags_mut();
        Ok((want != flags.interest).then(|| {
            flags.interest = want;
            want
        }))
    })?;
    match change {
        Err(()) => T::sync_completion(slf),
        Ok(Some(interest)) => this.base().lp().set_owner_interest(py, this.base().fd, interest),
        Ok(None) => Ok(()),
    }
}

/// Reports an exception from the protocol callback `callback(*args)` as asyncio's handle would.
pub fn report<T: Transport>(
    slf: &Bound<'_, T>,
    result: PyResult<()>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    let py = slf.py();
    match result {
        Ok(()) => Ok(()),
        Err(err) if is_exit(py, &err) => Err(err),
        Err(err) => glue::helper(py, "report_call_error")?
            .call1((
                slf.get().base().loop_.bind(py),
                callback,
                args,
                glue::exc_value(py, &err),
            ))
            .map(drop),
    }
}

/// Calls `protocol.<name>(*args)`; an exception goes to the exception handler as asyncio's handle
/// would report it.
pub fn call_protocol<'py, T: Transport>(
    slf: &Bound<'py, T>,
    protocol: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<()> {
    let method = protocol.getattr(name)?;
    report(slf, method.call1(args).map(drop), &method, args)
}

/// The end of the `Start` op: the transport counts as started (reading starts), and the waiter
/// is resolved unless it was cancelled.
pub fn started<T: Transport>(slf: &Bound<'_, T>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
    let py = slf.py();
    slf.get().state().with(py, |s| s.flags_mut().started = true)?;
    sync_interest(slf)?;
    if let Some(waiter) = waiter {
        let waiter = waiter.bind(py);
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
    }
    Ok(())
}

/// asyncio's `_call_connection_lost`: tell the protocol, then release the endpoint.
pub fn connection_lost<T: Transport>(slf: &Bound<'_, T>, exc: Option<Py<PyAny>>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let (protocol, connected) = this
        .state()
        .with(py, |s| (s.protocol().map(|p| p.clone_ref(py)), s.protocol_connected()))?;
    let told = match protocol {
        Some(p) if connected => p
            .bind(py)
            .call_method1(intern!(py, "connection_lost"), (exc,))
            .map(drop),
        _ => Ok(()),
    };
    // Whatever the protocol did, the endpoint is released (asyncio's `finally:`).
    let (endpoint, mut released) = this.state().with(py, |s| {
        s.flags_mut().interest = Interest::NONE;
        s.release(py)
    })?;
    this.base().lp().detach_owner(py, this.base().fd)?;
    this.before_close(endpoint.as_ref(), &mut released);
    if let Some(endpoint) = endpoint {
        endpoint.bind(py).call_method0(intern!(py, "close"))?;
    }
    T::after_close(slf, released)?;
    told
}

/// asyncio's `_fatal_error`: report (through the exception handler unless it is an `OSError`),
/// then close the transport with the error.
pub fn fatal_error<T: Transport>(slf: &Bound<'_, T>, exc: &PyErr, message: &str) -> PyResult<()> {
    let py = slf.py();
    glue::helper(py, "transport_fatal_error")?.call1((slf, glue::exc_value(py, exc), message))?;
    T::lose(slf, Some(glue::exc_value(py, exc).clone().into_any().unbind()))
}

/// Marks the transport closing with `mark` (inside the state borrow; `None`: nothing to do),
/// drops what it took out, and schedules `connection_lost(exc)`.
pub fn close_now<T: Transport, D>(
    slf: &Bound<'_, T>,
    exc: Option<Py<PyAny>>,
    mark: impl FnOnce(&mut T::State) -> Option<D>,
) -> PyResult<()> {
    let dropped = slf.get().state().with(slf.py(), mark)?;
    if dropped.is_none() {
        return Ok(());
    }
    drop(dropped);
    sync_interest(slf)?;
    schedule(slf, IoOp::ConnectionLost(exc))
}

/// asyncio's `_force_close`: drop what is queued, `connection_lost(exc)` on the next pass (once).
pub fn force_close<T: Transport>(slf: &Bound<'_, T>, exc: Option<Py<PyAny>>) -> PyResult<()> {
    close_now(slf, exc, |s| {
        if s.flags().conn_lost > 0 {
            return None;
        }
        let dropped = s.drop_writes();
        let flags = s.flags_mut();
        flags.closing = true;
        flags.conn_lost += 1;
        Some(dropped)
    })
}

/// `_force_close(exc)`, asyncio's private method.
pub fn force_close_py<T: Transport>(slf: &Bound<'_, T>, exc: Option<Py<PyAny>>) -> PyResult<()> {
    force_close(slf, exc.filter(|e| !e.is_none(slf.py())))
}

/// A socket transport's `close()`: what is queued is sent first, then `connection_lost(None)`.
pub fn close<T: Transport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let lost = slf.get().state().with(slf.py(), |s| {
        if s.flags().closing {
            return None;
        }
        let pending = s.writes_pending();
        let flags = s.flags_mut();
        flags.closing = true;
        if pending {
            Some(false)
        } else {
            flags.conn_lost += 1;
            Some(true)
        }
    })?;
    let Some(lost) = lost else { return Ok(()) };
    sync_interest(slf)?;
    if lost {
        schedule(slf, IoOp::ConnectionLost(None))?;
    }
    Ok(())
}

pub fn maybe_pause_protocol<T: Transport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let pause = this.state().with(py, |s| {
        let size = s.buffer_size();
        s.flags_mut().flow.should_pause(size)
    })?;
    if pause {
        flow_callback(slf.as_any(), protocol(this, py)?, "pause_writing")?;
    }
    Ok(())
}

pub fn maybe_resume_protocol<T: Transport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let resume = this.state().with(py, |s| {
        let size = s.buffer_size();
        s.flags_mut().flow.should_resume(size)
    })?;
    if resume {
        flow_callback(slf.as_any(), protocol(this, py)?, "resume_writing")?;
    }
    Ok(())
}

/// `set_write_buffer_limits(high, low)`, then `pause_writing()` if the queue is above `high`.
pub fn set_write_buffer_limits<T: Transport>(
    slf: &Bound<'_, T>,
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let (high, low) = write_buffer_limits(high, low)?;
    slf.get().state().with(slf.py(), |s| {
        let flow = &mut s.flags_mut().flow;
        flow.high = high;
        flow.low = low;
    })?;
    maybe_pause_protocol(slf)
}

/// `pause_reading()`, logged in debug mode when it pauses.
pub fn pause_reading<T: Transport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let changed = this.state().with(py, |s| {
        let flags = s.flags_mut();
        let reading = flags.is_reading();
        flags.paused |= reading;
        reading
    })?;
    if changed {
        sync_interest(slf)?;
        if this.base().lp().debug() {
            glue::helper(py, "log_debug")?.call1(("%r pauses reading", slf))?;
        }
    }
    Ok(())
}

/// `resume_reading()`, logged in debug mode when it resumes.
pub fn resume_reading<T: Transport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let changed = this.state().with(py, |s| {
        let flags = s.flags_mut();
        let resume = !flags.closing && flags.paused;
        flags.paused &= !resume;
        resume
    })?;
    if changed {
        sync_interest(slf)?;
        if this.base().lp().debug() {
            glue::helper(py, "log_debug")?.call1(("%r resumes reading", slf))?;
        }
    }
    Ok(())
}

/// Reads one value of the flags (`is_closing()`, `_closing`, `_conn_lost`, ...).
pub fn flag<T: Transport, R>(this: &T, py: Python<'_>, f: impl FnOnce(&Flags) -> R) -> PyResult<R> {
    this.state().with(py, |s| f(s.flags()))
}

/// `get_write_buffer_size()`.
pub fn buffer_size<T: Transport>(this: &T, py: Python<'_>) -> PyResult<usize> {
    this.state().with(py, |s| s.buffer_size())
}

/// `get_write_buffer_limits()`: `(low, high)`.
pub fn write_limits<T: Transport>(this: &T, py: Python<'_>) -> PyResult<(usize, usize)> {
    flag(this, py, |f| (f.flow.low, f.flow.high))
}

/// `_polling()` on a readiness transport: `(reading, writing)`.
pub fn polling<T: Transport>(this: &T, py: Python<'_>) -> PyResult<(bool, bool)> {
    flag(this, py, |f| (f.interest.readable, f.interest.writable))
}

/// What the transport wants `Read`/`Write` ops for (the `Owner` hub asks).
pub fn wants<T: Transport>(this: &T, py: Python<'_>) -> Interest {
    this.state().with(py, |s| s.wants()).unwrap_or(Interest::NONE)
}
