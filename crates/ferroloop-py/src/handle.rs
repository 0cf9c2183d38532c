//! `Handle` and `TimerHandle`: asyncio's callback handles, run by the loop without Python code.
//!
//! A handle owns the callback, its arguments and the `contextvars.Context` to run it in. Running it
//! enters the context and calls the callback through the C API, as `Context.run` would, without
//! building a bound method or an argument tuple. Cancelling drops the callback and arguments at
//! once (asyncio does the same), so a cancelled timer that waits in the heap holds no references.
//!
//! `_ThreadSafeHandle` (3.14+, what `call_soon_threadsafe` returns there) adds asyncio's lock: its
//! `cancel()`/`cancelled()` from another thread wait for a callback that is running, and its run
//! checks for cancellation under the lock. Only handles of that class pay for it.
//!
//! Each class reports asyncio's class of the same role as its `__class__` (`asyncio.Handle`,
//! `asyncio.TimerHandle`, `asyncio.events._ThreadSafeHandle`), so that `isinstance(handle,
//! asyncio.Handle)` holds as it does on asyncio's loop; `type(handle)` stays the Rust class.

use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyFloat, PyTuple, PyType};
use pyo3::{Borrowed, PyTraverseError, PyTypeInfo, PyVisit};

use crate::cell::AttachedCell;
use crate::glue;
use crate::owner::LoopRef;

/// What a handle calls: cleared when the handle is cancelled.
///
/// The references are released by `Callback`'s `Drop` with a plain decref: a callback is only
/// ever dropped with the thread attached (it lives in a `Handle`, a Python object, and is dropped
/// by its deallocation, by `cancel()` or by a failed construction), so the check that dropping a
/// `Py` makes first (a thread-local read: is the thread attached?) is left out, once per handle.
pub struct Callback {
    func: ManuallyDrop<Py<PyAny>>,
    args: ManuallyDrop<Py<PyTuple>>,
    context: ManuallyDrop<Py<PyAny>>,
    /// The context is parked with the handle (see [`Handle::park`]): untracked by the GC until
    /// the handle is unparked or this is dropped.
    context_parked: bool,
}

impl Callback {
    pub fn new(func: Py<PyAny>, args: Py<PyTuple>, context: Py<PyAny>) -> Callback {
        Callback {
            func: ManuallyDrop::new(func),
            args: ManuallyDrop::new(args),
            context: ManuallyDrop::new(context),
            context_parked: false,
        }
    }

    /// Parks the context if the handle is all that holds it and it holds nothing the GC could
    /// miss: a `contextvars.Context` with no variable set (its only reference is to an empty
    /// mapping), which is what `copy_context()` gives a program that sets none.
    #[cfg(not(Py_GIL_DISABLED))]
    fn park_context(&mut self) {
        let ctx = self.context.as_ptr();
        // SAFETY: the thread is attached (the caller holds a `Python` token), and `ctx` is a live
        // object; `PyObject_Size` of an exact `Context` is its variable count and runs no Python
        // code.
        unsafe {
            if !self.context_parked
                && ffi::Py_REFCNT(ctx) == 1
                && ffi::PyContext_CheckExact(ctx) != 0
                && ffi::PyObject_Size(ctx) == 0
                && ffi::PyObject_GC_IsTracked(ctx) != 0
            {
                ffi::PyObject_GC_UnTrack(ctx.cast());
                self.context_parked = true;
            }
        }
    }

    /// Tracks the context again if it was parked.
    fn unpark_context(&mut self) {
        if std::mem::take(&mut self.context_parked) {
            // SAFETY: only a parked context (untracked by `park_context`, on an attached thread)
            // gets here, and a `Callback` is dropped or unparked with the thread attached: it
            // lives in a `Handle`, a Python object.
            unsafe {
                let ctx = self.context.as_ptr();
                if ffi::PyObject_GC_IsTracked(ctx) == 0 {
                    ffi::PyObject_GC_Track(ctx.cast());
                }
            }
        }
    }
}

impl Drop for Callback {
    /// A parked context is tracked again before its reference goes: the interpreter frees a
    /// context with the unchecked untrack of its own internals, which would corrupt the GC's
    /// lists if the context were not tracked.
    fn drop(&mut self) {
        self.unpark_context();
        // SAFETY: the thread is attached (see the type's docs), and each reference is released
        // once, here; the fields are not touched again.
        unsafe {
            let py = Python::assume_attached();
            ManuallyDrop::take(&mut self.func).drop_ref(py);
            ManuallyDrop::take(&mut self.args).drop_ref(py);
            ManuallyDrop::take(&mut self.context).drop_ref(py);
        }
    }
}

#[pyclass(frozen, subclass, weakref, module = "ferroloop._ferroloop")]
pub struct Handle {
    callback: AttachedCell<Option<Callback>>,
    cancelled: AtomicBool,
    /// The loop (the Python `ferroloop.Loop` object).
    loop_: LoopRef,
    /// The stack where the handle was created, in debug mode; asyncio's `_source_traceback`.
    source_traceback: Option<Py<PyAny>>,
    /// The repr taken at cancellation in debug mode (asyncio's `_repr`).
    cancelled_repr: AttachedCell<Option<Py<PyAny>>>,
    /// The object is a [`ThreadSafeHandle`]: its run takes the lock.
    threadsafe: bool,
}

/// asyncio's class that an instance of `ours` reports as its `__class__` (`name` in
/// `ferroloop._compat`); a Python subclass of a handle class reports itself.
fn reported_class(
    slf: &Bound<'_, PyAny>,
    ours: &Bound<'_, PyType>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Py<PyAny>> {
    let py = slf.py();
    let ty = slf.get_type();
    if !ty.is(ours) {
        return Ok(ty.into_any().unbind());
    }
    Ok(cell
        .get_or_try_init(py, || glue::compat(py, name).map(Bound::unbind))?
        .clone_ref(py))
}

static ASYNCIO_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASYNCIO_TIMER_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASYNCIO_THREADSAFE_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl Handle {
    pub fn new(py: Python<'_>, cb: Callback, loop_: LoopRef, debug: bool) -> PyResult<Handle> {
        let source_traceback = if debug {
            Some(glue::helper(py, "extract_stack")?.call0()?.unbind())
        } else {
            None
        };
        Ok(Handle {
            callback: AttachedCell::new(Some(cb)),
            cancelled: AtomicBool::new(false),
            loop_,
            source_traceback,
            cancelled_repr: AttachedCell::new(None),
            threadsafe: false,
        })
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Calls the callback in its context. Exceptions go to the loop's exception handler, except
    /// `SystemExit` and `KeyboardInterrupt`, which are returned so that they stop the loop (asyncio
    /// re-raises exactly those two from `Handle._run`).
    #[inline]
    pub fn run(slf: &Bound<'_, Handle>) -> PyResult<()> {
        if slf.get().threadsafe {
            // SAFETY: `threadsafe` is set only by `ThreadSafeHandle::wrap`, on the base of a
            // `ThreadSafeHandle` (a class that cannot be subclassed), so that is what `slf` is.
            let ts = unsafe { slf.cast_unchecked::<ThreadSafeHandle>() };
            return ThreadSafeHandle::run(ts);
        }
        Handle::run_unlocked(slf)
    }

    fn run_unlocked(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // NOTE: `Bound` clones, not `Py::clone_ref`: dropping a `Bound` is a plain decref, where
        // dropping a `Py` first asks thread-local state whether the thread is attached.
        let target = this.callback.with(py, |c| {
            c.as_ref().map(|c| {
                (
                    c.func.bind(py).clone(),
                    c.args.bind(py).clone(),
                    c.context.bind(py).clone(),
                )
            })
        })?;
        let Some((callback, args, context)) = target else {
            return Ok(());
        };
        // SAFETY: `context` is a live object.
        let result = if unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } == 0 {
            // Not a Context (`call_soon(..., context=1)` is accepted): asyncio's Handle calls
            // `context.run(callback, *args)`, so the same error (or a duck type's `run`) happens.
            let mut call = vec![callback.clone()];
            call.extend(args.iter());
            context
                .getattr("run")
                .and_then(|run| run.call1(PyTuple::new(py, call)?))
                .map(drop)
        } else {
            Self::run_in_context(py, &callback, &args, &context)
        };
        match result {
            Ok(()) => Ok(()),
            Err(err) if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) => {
                Err(err)
            }
            Err(err) => {
                glue::helper(py, "report_callback_error")?.call1((slf, callback, args, glue::exc_value(py, &err)))?;
                Ok(())
            }
        }
    }

    /// Calls `callback(*args)` inside `context` (a `contextvars.Context`).
    fn run_in_context(
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        // SAFETY: all three pointers are owned references held for the duration of the calls.
        // `PyContext_Enter` / `PyContext_Exit` pair up on every path; the result is an owned
        // reference (or null with an exception set) that `from_owned_ptr_or_err` takes over.
        unsafe {
            if ffi::PyContext_Enter(context.as_ptr()) < 0 {
                Err(PyErr::fetch(py))
            } else {
                let res = match ffi::PyTuple_GET_SIZE(args.as_ptr()) {
                    0 => ffi::PyObject_CallNoArgs(callback.as_ptr()),
                    1 => ffi::PyObject_CallOneArg(callback.as_ptr(), ffi::PyTuple_GET_ITEM(args.as_ptr(), 0)),
                    _ => ffi::PyObject_Call(callback.as_ptr(), args.as_ptr(), std::ptr::null_mut()),
                };
                // Exit before looking at the result, so the exception handler runs outside it.
                let res = Bound::from_owned_ptr_or_err(py, res);
                ffi::PyContext_Exit(context.as_ptr());
                res.map(drop)
            }
        }
    }

    /// Puts [`traverse_handle`] in the `tp_traverse` slot of `Handle` and `TimerHandle`, in place
    /// of `PyO3`'s generic one. Called once, when the module is initialised (before any instance
    /// exists).
    ///
    /// Every callback allocates a handle and a context, so handles are most of what the cyclic GC
    /// walks in a busy loop (each one about four times: it survives into older generations while
    /// queued). `PyO3`'s `tp_traverse` wraps the visit in a panic trap, a thread-local "no attaching"
    /// guard and a walk up the type chain to call the base's traversal; for `TimerHandle` that is
    /// done twice (its own, then `Handle`'s). Measured with callgrind, per operation:
    /// `call_soon batch` spent 360 instructions in `PyO3`'s `tp_traverse` against 250 in uvloop's
    /// Cython one, `call_later fire` 590 against 250; with this function, 260 on both.
    pub fn install_traverse(py: Python<'_>) {
        let types = [
            Handle::type_object(py),
            TimerHandle::type_object(py),
            ThreadSafeHandle::type_object(py),
        ];
        for ty in types {
            // SAFETY: all are heap types created by PyO3 with `Py_TPFLAGS_HAVE_GC` (they define or
            // inherit `__traverse__`), so their type objects are writable and the GC calls
            // `tp_traverse`. `traverse_handle` visits exactly what PyO3's generated traversal
            // visits (the `__traverse__` below; `TimerHandle` and `ThreadSafeHandle` hold no
            // references the GC tracks, and no type has a `__dict__`), so swapping the function
            // changes nothing but the cost.
            unsafe {
                (*ty.as_type_ptr()).tp_traverse = Some(traverse_handle);
            }
        }
    }
}

/// `tp_traverse` of `Handle` and `TimerHandle` (see [`Handle::install_traverse`]).
///
/// # Safety
///
/// Called by the GC only, with `slf` an instance of `Handle` or of a subclass and the thread
/// attached.
unsafe extern "C" fn traverse_handle(slf: *mut ffi::PyObject, visit: ffi::visitproc, arg: *mut c_void) -> c_int {
    // SAFETY: the GC runs on a thread attached to the interpreter; the token is only used to view
    // `slf` as a `Handle` (a subclass's layout starts with its base's), and nothing here calls
    // into Python or changes a reference count.
    let handle = unsafe {
        let py = Python::assume_attached();
        Borrowed::from_ptr(py, slf).cast_unchecked::<Handle>()
    };
    let this = handle.get();
    let mut refs = [std::ptr::null_mut(); 5];
    refs[0] = this.loop_.as_ptr();
    if let Some(tb) = &this.source_traceback {
        refs[1] = tb.as_ptr();
    }
    // Bound for the whole function, so it drops only after the visits (or at an early return): on
    // free-threaded builds it holds the cell's lock, which keeps `cancel` from dropping the
    // callback's objects while `refs` points at them. On the GIL build it is a plain reference.
    let callback = this.callback.for_traverse();
    if let Some(Some(cb)) = callback.as_deref() {
        refs[2] = cb.func.as_ptr();
        refs[3] = cb.args.as_ptr();
        refs[4] = cb.context.as_ptr();
    }
    for obj in refs.into_iter().filter(|obj| !obj.is_null()) {
        // SAFETY: `visit`/`arg` come from the GC for this traversal; `obj` is a live object the
        // handle holds a reference to (the callback's, kept so by `callback` above).
        let r = unsafe { visit(obj, arg) };
        if r != 0 {
            return r;
        }
    }
    0
}

#[pymethods]
impl Handle {
    /// Cancels the callback: it will not run (if it has not yet). Cancelling twice does nothing.
    pub fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        if this.loop_.io().debug() {
            // asyncio keeps the repr of a cancelled handle, taken before the callback is dropped.
            let repr = slf.repr()?.into_any().unbind();
            let old = this.cancelled_repr.with(py, |r| r.replace(repr))?;
            drop(old);
        }
        let dropped = this.callback.with(py, Option::take)?;
        drop(dropped); // outside the borrow: may run arbitrary finalizers
        Ok(())
    }

    /// Whether `cancel()` was called.
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The `contextvars.Context` the callback runs in.
    fn get_context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.callback.with(py, |c| c.as_ref().map(|c| c.context.clone_ref(py)))
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::run(slf)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.callback.with(py, |c| c.as_ref().map(|c| c.func.clone_ref(py)))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.callback.with(py, |c| c.as_ref().map(|c| c.args.clone_ref(py)))
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.get_context(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_.object(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.cancelled_repr.with(py, |r| r.as_ref().map(|r| r.clone_ref(py)))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(glue::helper(slf.py(), "handle_repr")?.call1((slf,))?.unbind())
    }

    /// `asyncio.Handle`, so that `isinstance` checks against it hold (see the module docs).
    #[getter(__class__)]
    fn reported_class(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        reported_class(slf.as_any(), &Handle::type_object(slf.py()), &ASYNCIO_HANDLE, "Handle")
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.traverse_refs(&visit)
    }
}

/// Parking: the cyclic GC does not walk the handles the loop queues.
///
/// A handle that `call_soon` or `call_later` makes is held by the loop's ready queue or timer
/// queue until it runs or is dropped, and nothing the GC could find there is garbage while the
/// loop is alive. So the loop parks it (untracks it) as it queues it and unparks it (tracks it
/// again) as it lets go of it; meanwhile the loop's own traversal reports what the handle holds
/// ([`Handle::traverse_refs`]), as if the loop held it, so a loop that becomes garbage with
/// handles queued is still found and finalized (asyncio's `__del__` then closes it). The GC's
/// young collections then walk half as many objects per callback: with them walked, `call_soon
/// batch` spent half its time (wall clock) in the GC.
///
/// The handle's context is parked with it when nothing is lost by it: a context that only the
/// handle holds and that has no variable set refers to nothing but an empty mapping, so the GC
/// has nothing to find through it (`Callback::park_context`). Such a context is tracked again
/// when the handle is unparked, or just before it is freed (`Callback`'s `Drop`): the
/// interpreter frees a context with an untrack that assumes it is tracked. A context with
/// variables stays tracked, so whatever they refer to is walked as on asyncio's loop.
///
/// A parked handle has exactly one loop reference: `_add_callback` unparks a handle it is given
/// before queueing it again, so the loop never reports the same references twice.
impl Handle {
    /// Stops the GC tracking `handle`, which the loop has just queued, and the context it holds
    /// alone (see [`Callback::park_context`]).
    #[inline]
    pub fn park(handle: &Bound<'_, Handle>) {
        // SAFETY: `handle` is a live object of a GC type (`Handle` and its subclasses), and the
        // thread is attached; untracking an untracked object does nothing.
        unsafe { ffi::PyObject_GC_UnTrack(handle.as_ptr().cast()) }
        // NOTE: contexts stay tracked on free-threaded builds, where another thread could take
        // one (`get_context()`) and let it go meanwhile.
        #[cfg(not(Py_GIL_DISABLED))]
        {
            // NOTE: the cell is free (a handle being queued is not running); were it not, the
            // context would just stay tracked.
            let _ = handle
                .get()
                .callback
                .with(handle.py(), |c| c.as_mut().map(Callback::park_context));
        }
    }

    /// Tracks `handle` again if it was parked, and its context: the loop is letting go of it.
    #[inline]
    pub fn unpark(handle: &Bound<'_, Handle>) {
        // SAFETY: as in `park`; `PyObject_GC_Track` is only called on an untracked object.
        unsafe {
            if ffi::PyObject_GC_IsTracked(handle.as_ptr()) == 0 {
                ffi::PyObject_GC_Track(handle.as_ptr().cast());
            }
        }
        // NOTE: a cell in use belongs to a run in progress, which unparks nothing itself; the
        // context is then tracked again when the callback is dropped.
        let _ = handle
            .get()
            .callback
            .with(handle.py(), |c| c.as_mut().map(Callback::unpark_context));
    }

    /// The loop lets go of `handle`, a handle it took from its queue: tracked again, unless this
    /// is its last reference (it is freed now, and freeing an untracked object skips the untrack;
    /// a parked context is tracked again as the callback is dropped, by `Callback`'s `Drop`).
    /// Short-lived handles thus cost one untrack in all, not an untrack, a track and an untrack.
    #[inline]
    pub fn release(handle: Bound<'_, Handle>) {
        // NOTE: not on free-threaded builds, where another thread could revive the handle
        // through a weak reference between the count and the drop.
        // SAFETY: `handle` is a live object; reading its reference count runs nothing.
        #[cfg(not(Py_GIL_DISABLED))]
        if unsafe { ffi::Py_REFCNT(handle.as_ptr()) } == 1 {
            return;
        }
        Self::unpark(&handle);
    }

    /// Whether `obj` is parked (the loop's traversal then reports what it holds).
    #[inline]
    pub fn is_parked<T>(obj: &Py<T>) -> bool {
        // SAFETY: `obj` is a live object; reading its tracked flag runs nothing.
        unsafe { ffi::PyObject_GC_IsTracked(obj.as_ptr()) == 0 }
    }

    /// Visits what the handle holds: its `__traverse__`, and the loop's for a parked handle.
    pub fn traverse_refs(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.loop_.traverse(visit)?;
        visit.call(&self.source_traceback)?;
        if let Some(cb) = self.callback.for_traverse() {
            if let Some(cb) = cb.as_ref() {
                visit.call(&*cb.func)?;
                visit.call(&*cb.args)?;
                visit.call(&*cb.context)?;
            }
        }
        Ok(())
    }
}

/// A handle scheduled at a time: asyncio's `TimerHandle`.
#[pyclass(frozen, extends = Handle, module = "ferroloop._ferroloop")]
pub struct TimerHandle {
    /// Loop time in seconds, as given to `call_at`.
    when: f64,
    /// The `when` object itself when `call_at` got an exact `int`: asyncio keeps what it was
    /// given, so `when()` and the repr say `1`, not `1.0`. (An int holds no references: nothing
    /// for the GC to visit.)
    given: Option<Py<PyAny>>,
    /// True while the handle sits in the loop's timer queue (asyncio's `_scheduled`).
    scheduled: AtomicBool,
}

impl TimerHandle {
    pub fn new(when: f64, given: Option<Py<PyAny>>) -> TimerHandle {
        TimerHandle {
            when,
            given,
            scheduled: AtomicBool::new(true),
        }
    }

    pub fn unschedule(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    /// The loop time the callback is scheduled for, as `call_at` got it.
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.given {
            Some(given) => given.clone_ref(py),
            None => PyFloat::new(py, self.when).into_any().unbind(),
        }
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    /// Cancels the timer: its callback will not run, and the loop forgets it.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        if base.get().is_cancelled() {
            return Ok(());
        }
        if slf.get().scheduled.load(Ordering::Relaxed) {
            base.get().loop_.io().timer_cancelled(py)?;
        }
        Handle::cancel(base)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        // asyncio's TimerHandle.__hash__ is hash(self._when).
        PyFloat::new(py, self.when).hash()
    }

    fn __richcmp__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a < b || Self::same(slf, other)?,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a > b || Self::same(slf, other)?,
            CompareOp::Eq => Self::same(slf, other)?,
            CompareOp::Ne => !Self::same(slf, other)?,
        };
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Handle::__repr__(slf.as_super())
    }

    #[classmethod]
    fn __class_getitem__(cls: &Bound<'_, PyType>, _item: &Bound<'_, PyAny>) -> Py<PyType> {
        cls.clone().unbind()
    }

    /// `asyncio.TimerHandle` (see the module docs).
    #[getter(__class__)]
    fn reported_class(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let ours = TimerHandle::type_object(slf.py());
        reported_class(slf.as_any(), &ours, &ASYNCIO_TIMER_HANDLE, "TimerHandle")
    }
}

impl TimerHandle {
    /// asyncio's `TimerHandle.__eq__`: same time, callback, arguments and cancelled state.
    #[allow(clippy::float_cmp)] // asyncio compares the times exactly, and so must we
    fn same(a: &Bound<'_, TimerHandle>, b: &Bound<'_, TimerHandle>) -> PyResult<bool> {
        if a.is(b) {
            return Ok(true);
        }
        let (ha, hb) = (a.as_super(), b.as_super());
        if a.get().when != b.get().when || ha.get().is_cancelled() != hb.get().is_cancelled() {
            return Ok(false);
        }
        let py = a.py();
        let (ca, cb) = (ha.get()._callback(py)?, hb.get()._callback(py)?);
        let (aa, ab) = (ha.get()._args(py)?, hb.get()._args(py)?);
        Ok(ca.into_pyobject(py)?.eq(cb)? && aa.into_pyobject(py)?.eq(ab)?)
    }
}

/// What `call_soon_threadsafe` returns on 3.14+: asyncio's `events._ThreadSafeHandle`, whose
/// `cancel()`, `cancelled()` and run hold a re-entrant lock, so that a `cancel()` from another
/// thread either comes first (the callback never runs) or returns after the callback did.
#[pyclass(frozen, extends = Handle, name = "_ThreadSafeHandle", module = "ferroloop._ferroloop")]
pub struct ThreadSafeHandle {
    lock: RunLock,
}

impl ThreadSafeHandle {
    /// The handle `base` made thread-safe: its class and its lock.
    pub fn wrap(base: Handle) -> PyClassInitializer<ThreadSafeHandle> {
        PyClassInitializer::from(Handle {
            threadsafe: true,
            ..base
        })
        .add_subclass(ThreadSafeHandle { lock: RunLock::new() })
    }

    fn run(slf: &Bound<'_, ThreadSafeHandle>) -> PyResult<()> {
        let _held = slf.get().lock.hold(slf.py());
        let base = slf.as_super();
        // The loop looked without the lock: a cancel() may have come in between (asyncio checks
        // again under the lock, too).
        if base.get().is_cancelled() {
            return Ok(());
        }
        Handle::run_unlocked(base)
    }
}

#[pymethods]
impl ThreadSafeHandle {
    /// Cancels the callback; from another thread, waits until a run already begun has ended.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let _held = slf.get().lock.hold(slf.py());
        Handle::cancel(slf.as_super())
    }

    /// Whether `cancel()` was called.
    fn cancelled(slf: &Bound<'_, Self>) -> bool {
        let _held = slf.get().lock.hold(slf.py());
        slf.as_super().get().is_cancelled()
    }

    /// `asyncio.events._ThreadSafeHandle` (see the module docs).
    #[getter(__class__)]
    fn reported_class(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let ours = ThreadSafeHandle::type_object(slf.py());
        reported_class(slf.as_any(), &ours, &ASYNCIO_THREADSAFE_HANDLE, "ThreadSafeHandle")
    }
}

/// A re-entrant lock, as the `threading.RLock` of asyncio's `_ThreadSafeHandle`: held by one
/// thread at a time, any number of times by that thread. A thread that must wait for it waits
/// detached from the interpreter, so the holder (a callback running Python code) can go on.
///
/// Taking a free lock and releasing it without waiters are two atomic operations each (the loop
/// runs every thread-safe handle under it); only waiting uses the mutex and condition variable.
struct RunLock {
    /// [`thread_token`] of the holder; 0 when free.
    owner: AtomicUsize,
    /// How many times the holder holds it; only the holder reads or writes it.
    depth: AtomicUsize,
    /// Threads waiting in [`RunLock::hold`]: only then does a release notify.
    waiters: AtomicUsize,
    /// Guards nothing but the sleep: a release notifies under it, so that its notification cannot
    /// fall between a waiter's last look at `owner` and its wait.
    sleep: Mutex<()>,
    released: Condvar,
}

/// A number that identifies the calling thread among the live ones: the address of a
/// thread-local (never 0).
fn thread_token() -> usize {
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.with(|t| std::ptr::from_ref(t) as usize)
}

impl RunLock {
    fn new() -> RunLock {
        RunLock {
            owner: AtomicUsize::new(0),
            depth: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            released: Condvar::new(),
        }
    }

    /// Takes the lock if it is free.
    fn try_take(&self, me: usize) -> bool {
        let taken = self
            .owner
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok();
        if taken {
            self.depth.store(1, Ordering::Relaxed);
        }
        taken
    }

    /// Takes the lock (waiting, detached, while another thread holds it) until the guard drops.
    fn hold(&self, py: Python<'_>) -> Held<'_> {
        let me = thread_token();
        if self.try_take(me) {
            return Held(self);
        }
        if self.owner.load(Ordering::Relaxed) == me {
            self.depth.fetch_add(1, Ordering::Relaxed);
            return Held(self);
        }
        py.detach(|| {
            let mut sleep = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            // SeqCst with the release's store of `owner` and load of `waiters`: either the
            // release sees this waiter (and notifies under `sleep`, so after the wait began), or
            // the `try_take` below sees the lock free.
            self.waiters.fetch_add(1, Ordering::SeqCst);
            while !self.try_take(me) {
                sleep = self.released.wait(sleep).unwrap_or_else(PoisonError::into_inner);
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        });
        Held(self)
    }
}

/// One hold of a [`RunLock`], released when dropped (also when a callback unwinds).
struct Held<'a>(&'a RunLock);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let lock = self.0;
        let depth = lock.depth.load(Ordering::Relaxed) - 1;
        lock.depth.store(depth, Ordering::Relaxed);
        if depth == 0 {
            lock.owner.store(0, Ordering::SeqCst);
            if lock.waiters.load(Ordering::SeqCst) > 0 {
                let _sleep = lock.sleep.lock().unwrap_or_else(PoisonError::into_inner);
                lock.released.notify_all();
            }
        }
    }
}
