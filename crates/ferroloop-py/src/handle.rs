//! `Handle` and `TimerHandle`: asyncio's callback handles, run by the loop without Python code.
//!
//! A handle owns the callback, its arguments and the `contextvars.Context` to run it in. Running it
//! enters the context and calls the callback through the C API, as `Context.run` would, without
//! building a bound method or an argument tuple. Cancelling drops the callback and arguments at
//! once (asyncio does the same), so a cancelled timer that waits in the heap holds no references.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyFloat, PyTuple, PyType};
use pyo3::{Borrowed, PyTraverseError, PyTypeInfo, PyVisit};

use crate::cell::AttachedCell;
use crate::event_loop::LoopCore;
use crate::glue;

/// What a handle calls: cleared when the handle is cancelled.
pub struct Callback {
    pub func: Py<PyAny>,
    pub args: Py<PyTuple>,
    pub context: Py<PyAny>,
}

#[pyclass(frozen, subclass, weakref, module = "ferroloop._ferroloop")]
pub struct Handle {
    callback: AttachedCell<Option<Callback>>,
    cancelled: AtomicBool,
    /// The loop (the Python `ferroloop.Loop` object).
    loop_: Py<LoopCore>,
    /// The stack where the handle was created, in debug mode; asyncio's `_source_traceback`.
    source_traceback: Option<Py<PyAny>>,
    /// The repr taken at cancellation in debug mode (asyncio's `_repr`).
    cancelled_repr: AttachedCell<Option<Py<PyAny>>>,
}

impl Handle {
    pub fn new(py: Python<'_>, cb: Callback, loop_: Py<LoopCore>, debug: bool) -> PyResult<Handle> {
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
        })
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Calls the callback in its context. Exceptions go to the loop's exception handler, except
    /// `SystemExit` and `KeyboardInterrupt`, which are returned so that they stop the loop (asyncio
    /// re-raises exactly those two from `Handle._run`).
    pub fn run(slf: &Bound<'_, Handle>) -> PyResult<()> {
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
        // SAFETY: all three pointers are owned references held for the duration of the calls.
        // `PyContext_Enter` / `PyContext_Exit` pair up on every path; the result is an owned
        // reference (or null with an exception set) that `from_owned_ptr_or_err` takes over.
        let result = unsafe {
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
        };
        match result {
            Ok(()) => Ok(()),
            Err(err) if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) => {
                Err(err)
            }
            Err(err) => {
                glue::helper(py, "report_callback_error")?.call1((slf, callback, args, err.value(py)))?;
                Ok(())
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
        for ty in [Handle::type_object(py), TimerHandle::type_object(py)] {
            // SAFETY: both are heap types created by PyO3 with `Py_TPFLAGS_HAVE_GC` (they define
            // `__traverse__`), so their type objects are writable and the GC calls `tp_traverse`.
            // `traverse_handle` visits exactly what PyO3's generated traversal visits (the
            // `__traverse__` below; `TimerHandle` holds no references of its own, and neither type
            // has a `__dict__`), so swapping the function changes nothing but the cost.
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
    pub fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        if this.loop_.get().debug() {
            // asyncio keeps the repr of a cancelled handle, taken before the callback is dropped.
            let repr = slf.repr()?.into_any().unbind();
            let old = this.cancelled_repr.with(py, |r| r.replace(repr))?;
            drop(old);
        }
        let dropped = this.callback.with(py, Option::take)?;
        drop(dropped); // outside the borrow: may run arbitrary finalizers
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

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
    fn _loop(&self, py: Python<'_>) -> Py<LoopCore> {
        self.loop_.clone_ref(py)
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

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.source_traceback)?;
        if let Some(cb) = self.callback.for_traverse() {
            if let Some(cb) = cb.as_ref() {
                visit.call(&cb.func)?;
                visit.call(&cb.args)?;
                visit.call(&cb.context)?;
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
    /// True while the handle sits in the loop's timer queue (asyncio's `_scheduled`).
    scheduled: AtomicBool,
}

impl TimerHandle {
    pub fn new(when: f64) -> TimerHandle {
        TimerHandle {
            when,
            scheduled: AtomicBool::new(true),
        }
    }

    pub fn unschedule(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let base = slf.as_super();
        if base.get().is_cancelled() {
            return Ok(());
        }
        if slf.get().scheduled.load(Ordering::Relaxed) {
            base.get().loop_.get().timer_cancelled(py)?;
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
