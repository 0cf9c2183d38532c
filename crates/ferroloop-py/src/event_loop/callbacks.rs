//! Handles: making them for `call_soon`, `call_at` and the readers and writers, and queueing them
//! on the ready queue or the timer queue, with asyncio's debug-mode checks.

use ferroloop_core::clock::secs_to_ns;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use super::{LoopCore, Ready};
use crate::glue;
use crate::glue::copy_context;
use crate::handle::{Callback, Handle, ThreadSafeHandle, TimerHandle};
use crate::owner::LoopRef;

/// Whether `call_soon_threadsafe` returns a `_ThreadSafeHandle` (asyncio 3.14+; `_compat`'s switch).
fn threadsafe_handles(py: Python<'_>) -> PyResult<bool> {
    static SWITCH: PyOnceLock<bool> = PyOnceLock::new();
    SWITCH
        .get_or_try_init(py, || Ok(!glue::compat(py, "ThreadSafeHandle")?.is_none()))
        .copied()
}

/// How many callbacks must be queued ahead of a new `call_soon` handle for it to be parked. A
/// chain of callbacks (one queued at a time, as task steps are) parks none; a burst parks all but
/// the first few. Measured with callgrind on 3.11: parking every handle cost the chained row 30
/// instructions per callback and saved the batch row 700.
const PARK_BEHIND: usize = 16;

impl LoopCore {
    /// A timer in the queue was cancelled: counts towards compaction.
    pub(super) fn timer_cancelled(&self, py: Python<'_>) -> PyResult<()> {
        self.state.with(py, |s| s.timers.note_cancelled())
    }

    pub(super) fn new_handle(
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
        let cb = Callback::new(callback.clone().unbind(), args.clone().unbind(), context);
        Handle::new(py, cb, LoopRef::new(slf), slf.get().debug())
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
    pub(super) fn enqueue(
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
            // Parked only behind others: a handle near the head of the queue runs before a
            // collection is likely to walk it, and parking costs an untrack (see `Handle::park`).
            // `call_soon_threadsafe` parks too: the caller holds the GIL (on free-threaded builds
            // the cell's lock), and a burst from another thread queues as a burst of `call_soon`.
            if s.ready.len() >= PARK_BEHIND {
                Handle::park(queued.bind(py));
            }
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

    pub(super) fn schedule_at(
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
        Handle::park(timer.bind(py).as_super());
        let queued = timer.clone_ref(py);
        this.state.with(py, |s| s.timers.push(secs_to_ns(when), queued))?;
        Ok(timer)
    }

    /// `_add_callback`: queues `handle` unless it is cancelled.
    pub(super) fn add_callback(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let item = if let Ok(h) = handle.cast::<Handle>() {
            if h.get().is_cancelled() {
                return Ok(());
            }
            // Queued a second time, it would be reported twice (see `Handle::park`).
            Handle::unpark(h);
            Ready::Native(h.clone().unbind())
        } else {
            if handle.getattr("_cancelled")?.is_truthy()? {
                return Ok(());
            }
            Ready::Foreign(handle.clone().unbind())
        };
        slf.get().state.with(py, |s| s.ready.push(item))
    }
}
