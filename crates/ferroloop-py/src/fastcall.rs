//! Hand-written `METH_FASTCALL` entry points for the loop's scheduling methods: `call_soon`,
//! `call_soon_threadsafe`, `call_later`, `call_at` and `create_task`.
//!
//! # Implementation
//!
//! These are called once per callback: asyncio's C `Task` calls `loop.call_soon(step,
//! context=ctx)` per step and its `Future` calls `loop.call_soon(cb, fut, context=ctx)` per done
//! callback. `PyO3`'s generated wrapper for `(callback, *args, context=None)` is general: it builds
//! an output table, then matches each keyword name as UTF-8 against the parameter names.
//! Measured with callgrind on `gather(100)` (two such calls per task), that was 460 of 23,600
//! instructions per task (`extract_arguments_fastcall` + `handle_kwargs`), and 81 per plain
//! `call_soon(cb)` on `call_soon batch`. `create_task(coro, **kwargs)` is worse: `PyO3` takes
//! `**kwargs` through `METH_VARARGS`, so each call built an argument tuple and a keyword dict.
//!
//! The entry points here take the shapes those callers use, positional arguments and at most a
//! `context` keyword (compared by identity with an interned string, as the C `Task` passes an
//! interned one, then by value), and call the same Rust methods; `create_task` takes only
//! `create_task(coro)`. Any other shape (too few
//! positional arguments, another keyword) goes to `PyO3`'s own method, kept aside when the module is
//! initialised, so every error message stays the one `PyO3`'s signature gives; except for
//! `create_task`, whose other shapes go to `PyO3`'s method with only `name`/`context` keywords
//! and to asyncio's own `BaseEventLoop.create_task` otherwise (its messages differ by version).
//!
//! [`install`] replaces the methods in `LoopCore`'s type dict with method descriptors built from
//! static `PyMethodDef`s; the descriptor checks the type of `self`, as `PyO3`'s does.

use std::ffi::CStr;
use std::ptr;

use pyo3::exceptions::PySystemError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};
use pyo3::{Borrowed, PyTypeInfo};

use crate::event_loop::{is_plain_task_keyword, LoopCore};
use crate::tasks;

/// One of the methods with a fast entry point.
#[derive(Clone, Copy)]
enum Method {
    CallSoon,
    CallSoonThreadsafe,
    CallLater,
    CallAt,
    CreateTask,
}

impl Method {
    const ALL: [Method; 5] = [
        Method::CallSoon,
        Method::CallSoonThreadsafe,
        Method::CallLater,
        Method::CallAt,
        Method::CreateTask,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::CallSoon => "call_soon",
            Method::CallSoonThreadsafe => "call_soon_threadsafe",
            Method::CallLater => "call_later",
            Method::CallAt => "call_at",
            Method::CreateTask => "create_task",
        }
    }

    /// Positional parameters before `*args`: `callback`, or `delay`/`when` and `callback`
    /// (`coro` for `create_task`, which has no `*args`).
    fn leading(self) -> usize {
        match self {
            Method::CallSoon | Method::CallSoonThreadsafe | Method::CreateTask => 1,
            Method::CallLater | Method::CallAt => 2,
        }
    }

    fn def(self) -> &'static MethodDef {
        match self {
            Method::CallSoon => &CALL_SOON,
            Method::CallSoonThreadsafe => &CALL_SOON_THREADSAFE,
            Method::CallLater => &CALL_LATER,
            Method::CallAt => &CALL_AT,
            Method::CreateTask => &CREATE_TASK,
        }
    }

    /// `PyO3`'s method, for the shapes the fast path does not take.
    fn fallback(self) -> &'static PyOnceLock<Py<PyAny>> {
        &FALLBACK[self as usize]
    }
}

/// `PyO3`'s generated methods, in `Method` order, taken from the type dict by [`install`].
static FALLBACK: [PyOnceLock<Py<PyAny>>; Method::ALL.len()] = [const { PyOnceLock::new() }; Method::ALL.len()];
/// The interned string `"context"`.
static CONTEXT: PyOnceLock<Py<PyString>> = PyOnceLock::new();

/// A `PyMethodDef` that can live in a `static`: it is never written after compilation.
struct MethodDef(ffi::PyMethodDef);

// SAFETY: the definition is immutable; its pointers are to static strings and functions.
unsafe impl Sync for MethodDef {}

const FLAGS: std::ffi::c_int = ffi::METH_FASTCALL | ffi::METH_KEYWORDS;

macro_rules! method_def {
    ($static:ident, $entry:ident, $method:expr, $doc:literal) => {
        /// # Safety
        ///
        /// Called by the interpreter's method descriptor with `slf` an instance of `LoopCore`, `nargs`
        /// positional arguments at `args` followed by the values of `kwnames`, and the thread
        /// attached.
        unsafe extern "C" fn $entry(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: forwarded as received.
            unsafe { entry($method, slf, args, nargs, kwnames) }
        }

        static $static: MethodDef = MethodDef(ffi::PyMethodDef {
            ml_name: {
                const NAME: &CStr = match CStr::from_bytes_with_nul(concat!(stringify!($entry), "\0").as_bytes()) {
                    Ok(name) => name,
                    Err(_) => panic!("a method name with a NUL"),
                };
                NAME.as_ptr()
            },
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: $entry,
            },
            ml_flags: FLAGS,
            // The text signature PyO3 gives its methods, for `inspect.signature`.
            ml_doc: $doc.as_ptr(),
        });
    };
}

method_def!(
    CALL_SOON,
    call_soon,
    Method::CallSoon,
    c"call_soon($self, callback, *args, context=None)\n--\n\nSchedules `callback(*args)` to run in the next iteration of the loop, after the callbacks\nalready scheduled; runs it in `context` (a copy of the current context by default).\nReturns a `Handle` that can cancel it."
);
method_def!(
    CALL_SOON_THREADSAFE,
    call_soon_threadsafe,
    Method::CallSoonThreadsafe,
    c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\n`call_soon` from any thread: also wakes the loop up if it waits for I/O."
);
method_def!(
    CALL_LATER,
    call_later,
    Method::CallLater,
    c"call_later($self, delay, callback, *args, context=None)\n--\n\nSchedules `callback(*args)` to run `delay` seconds from now (`time() + delay`). Returns a\n`TimerHandle` that can cancel it."
);
method_def!(
    CALL_AT,
    call_at,
    Method::CallAt,
    c"call_at($self, when, callback, *args, context=None)\n--\n\nSchedules `callback(*args)` to run at `when`, a time of the loop's clock (`time()`). Returns a\n`TimerHandle` that can cancel it; its `when()` is `when` as given."
);
method_def!(
    CREATE_TASK,
    create_task,
    Method::CreateTask,
    c"create_task($self, coro, **kwargs)\n--\n\nWraps the coroutine `coro` in a new task scheduled on this loop and returns it (the task\nfactory's, if one is set)."
);

/// The shared body of the entry points: `PyO3`'s trampoline duties (catching a panic, turning an
/// error into a raised exception), the fast path, or the fallback.
///
/// # Safety
///
/// As for the entry points.
unsafe fn entry(
    method: Method,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the interpreter calls methods with the thread attached, and the token does not
    // outlive the call.
    // NOTE: not `Python::attach`, which would also count this frame in `PyO3`'s thread-local
    // attach count (51 instructions per call, callgrind). That count only decides whether a `Py`
    // dropped here is released at once or when `PyO3` is next entered; the success paths drop no
    // `Py`, and within the running loop the count is already held by `_run_core`.
    let py = unsafe { Python::assume_attached() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { dispatch(py, method, slf, args, nargs, kwnames) }
    }));
    match result {
        Ok(Ok(obj)) => obj,
        Ok(Err(err)) => {
            err.restore(py);
            ptr::null_mut()
        }
        Err(_) => {
            PySystemError::new_err(format!("ferroloop: panic in {}()", method.name())).restore(py);
            ptr::null_mut()
        }
    }
}

/// # Safety
///
/// As for the entry points.
unsafe fn dispatch(
    py: Python<'_>,
    method: Method,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    let nargs = nargs as usize;
    // SAFETY: `kwnames` is null or a tuple of strings; the argument array holds `nargs` positional
    // values followed by one value per keyword name, all borrowed for the duration of the call.
    let (kwnames, all) = unsafe {
        let kwnames = Borrowed::from_ptr_or_opt(py, kwnames).map(|k| k.cast_unchecked::<PyTuple>());
        let nkw = kwnames.as_ref().map_or(0, |k| k.len());
        (kwnames, std::slice::from_raw_parts(args, nargs + nkw))
    };
    if matches!(method, Method::CreateTask) {
        if nargs != 1 {
            // asyncio's method, for asyncio's message ("BaseEventLoop.create_task() takes 2
            // positional arguments but 3 were given").
            return call_with_self(py, tasks::asyncio_create_task(py)?, slf, all, nargs, kwnames);
        }
        if let Some(names) = &kwnames {
            if !names.iter().all(|n| is_plain_task_keyword(&n)) {
                return call_with_self(py, tasks::asyncio_create_task(py)?, slf, all, nargs, kwnames);
            }
            return fallback(py, method, slf, all, nargs, kwnames);
        }
        // SAFETY: as below.
        let (slf, coro) = unsafe {
            (
                Borrowed::from_ptr(py, slf).cast_unchecked::<LoopCore>(),
                Borrowed::from_ptr(py, all[0]),
            )
        };
        return Ok(LoopCore::create_task(&slf, &coro, None)?.into_ptr());
    }
    let context = match kwnames {
        None => None,
        Some(names) if names.len() == 1 && is_context(py, &names.get_borrowed_item(0)?) => Some(all[nargs]),
        Some(_) => return fallback(py, method, slf, all, nargs, kwnames),
    };
    if nargs < method.leading() {
        return fallback(py, method, slf, all, nargs, kwnames);
    }
    // SAFETY: the descriptor checked that `slf` is a `LoopCore`; every pointer in `all` is a live
    // borrowed reference (see above).
    let slf = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<LoopCore>() };
    // SAFETY: as above.
    let arg = |p: *mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, p) };
    let lead = method.leading();
    let rest = if nargs == lead {
        PyTuple::empty(py)
    } else {
        PyTuple::new(py, all[lead..nargs].iter().map(|&p| arg(p)))?
    };
    let context = context.map(arg);
    let context = context.as_deref();
    let handle = match method {
        Method::CallSoon => LoopCore::call_soon(&slf, &arg(all[0]), &rest, context)?.into_any(),
        Method::CallSoonThreadsafe => LoopCore::call_soon_threadsafe(&slf, &arg(all[0]), &rest, context)?.into_any(),
        Method::CallLater => LoopCore::call_later(&slf, &arg(all[0]), &arg(all[1]), &rest, context)?.into_any(),
        Method::CallAt => LoopCore::call_at(&slf, &arg(all[0]), &arg(all[1]), &rest, context)?.into_any(),
        Method::CreateTask => unreachable!("handled above"),
    };
    Ok(handle.into_ptr())
}

/// Whether a keyword name is `context`: by identity first (names in code are interned), then by
/// value (the C `Task` passes a static string of the interpreter's, a different object on 3.11).
fn is_context(py: Python<'_>, name: &Borrowed<'_, '_, PyAny>) -> bool {
    let context = CONTEXT.get_or_init(py, || PyString::intern(py, "context").unbind());
    if name.as_ptr() == context.as_ptr() {
        return true;
    }
    // SAFETY: keyword names are strings (CPython checks that before calling), so `name` may be
    // viewed as one.
    let name = unsafe { name.cast_unchecked::<PyString>() };
    name.to_str().is_ok_and(|n| n == "context")
}

/// Calls `PyO3`'s method with the same arguments: `(slf, *positional, **keywords)`.
fn fallback(
    py: Python<'_>,
    method: Method,
    slf: *mut ffi::PyObject,
    all: &[*mut ffi::PyObject],
    nargs: usize,
    kwnames: Option<Borrowed<'_, '_, PyTuple>>,
) -> PyResult<*mut ffi::PyObject> {
    let Some(original) = method.fallback().get(py) else {
        return Err(PySystemError::new_err("ferroloop: fast call paths not installed"));
    };
    call_with_self(py, original.bind(py), slf, all, nargs, kwnames)
}

/// Calls `callable(slf, *positional, **keywords)`.
fn call_with_self(
    py: Python<'_>,
    callable: &Bound<'_, PyAny>,
    slf: *mut ffi::PyObject,
    all: &[*mut ffi::PyObject],
    nargs: usize,
    kwnames: Option<Borrowed<'_, '_, PyTuple>>,
) -> PyResult<*mut ffi::PyObject> {
    let mut with_self = Vec::with_capacity(all.len() + 1);
    with_self.push(slf);
    with_self.extend_from_slice(all);
    let kwnames = kwnames.map_or(ptr::null_mut(), Borrowed::as_ptr);
    // SAFETY: `with_self` holds borrowed references alive for the whole call: `self`, `nargs`
    // positional arguments, then one value per name in `kwnames`. The result is a new reference
    // or null with an exception set.
    unsafe {
        let res = ffi::PyObject_Vectorcall(callable.as_ptr(), with_self.as_ptr(), nargs + 1, kwnames);
        Bound::from_owned_ptr_or_err(py, res).map(Bound::into_ptr)
    }
}

/// Puts the fast entry points in `LoopCore`'s type dict, keeping `PyO3`'s methods as fallbacks.
/// Called once, when the module is initialised.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let ty = LoopCore::type_object(py);
    let dict = ty.getattr("__dict__")?;
    for method in Method::ALL {
        let name = method.name();
        let original = dict.get_item(name)?;
        method.fallback().get_or_init(py, || original.unbind());
        // SAFETY: the type is a live heap type and the definition is static (it outlives the
        // descriptor); the result is a new reference or null with an exception set.
        let descr = unsafe {
            let def = ptr::from_ref(&method.def().0).cast_mut();
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?
        };
        ty.setattr(name, descr)?;
    }
    Ok(())
}
