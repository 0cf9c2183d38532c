//! Python-side helpers the Rust code calls on rare paths (reprs, error reports, debug mode), and
//! small conversions shared by the modules.
//!
//! The helpers live in `ferroloop/_glue.py`: formatting a callback the way asyncio does is
//! Python's job, and keeping it there keeps the messages identical to asyncio's.

use std::io;

use ferroloop_core::clock::{monotonic_ns, ns_to_secs};
use pyo3::exceptions::PyOSError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PySlice};

static GLUE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static COMPAT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The function `name` of `ferroloop._glue`.
pub fn helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let module = GLUE.get_or_try_init(py, || PyModule::import(py, "ferroloop._glue").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

/// The attribute `name` of `ferroloop._compat`: asyncio's private names and version switches.
pub fn compat<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let module = COMPAT.get_or_try_init(py, || PyModule::import(py, "ferroloop._compat").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

/// An `OSError` with `errno` and `strerror` set, so Python maps it to the right subclass
/// (`PermissionError` for `EPERM`, ...), as the `select` module's errors are.
pub fn os_error(err: &io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(code) => {
            let msg = io::Error::from_raw_os_error(code).to_string();
            // Rust appends " (os error N)"; Python's strerror has no such suffix.
            let msg = msg.split(" (os error").next().unwrap_or(&msg).to_owned();
            PyOSError::new_err((code, msg))
        }
        None => PyOSError::new_err(err.to_string()),
    }
}

/// The exception object of `err`, carrying its traceback as a Python `except` clause would
/// see it: what asyncio hands to the exception handler and to `connection_lost()`.
///
/// On 3.11 `PyErr` keeps the traceback beside the value (3.12+ stores it on the value), so
/// `err.value(py)` alone would reach Python with `__traceback__` None there.
pub fn exc_value<'a, 'py>(py: Python<'py>, err: &'a PyErr) -> &'a Bound<'py, pyo3::exceptions::PyBaseException> {
    let value = err.value(py);
    if let Some(tb) = err.traceback(py) {
        // SAFETY: both pointers are live objects; PyException_SetTraceback takes a new reference.
        unsafe { pyo3::ffi::PyException_SetTraceback(value.as_ptr(), tb.as_ptr()) };
    }
    value
}

/// `slice(start, stop)`. Not `PySlice::new`: `PyO3` 0.30.1 hands `PySlice_New` three new ints
/// and never releases them (`PySlice_New` takes references of its own), so every slice leaked
/// the ints past 256 (`isize::MAX` each time): 4 KiB per MiB received over TLS into a
/// `BufferedProtocol`, found by the `AddressSanitizer` run's leak check.
pub fn slice(py: Python<'_>, start: isize, stop: isize) -> PyResult<Bound<'_, PySlice>> {
    let (start, stop) = (start.into_pyobject(py)?, stop.into_pyobject(py)?);
    // SAFETY: two live ints and a null step (None); the result is a new reference or null with
    // an exception set, and a slice when not null.
    unsafe {
        let obj = pyo3::ffi::PySlice_New(start.as_ptr(), stop.as_ptr(), std::ptr::null_mut());
        Ok(Bound::from_owned_ptr_or_err(py, obj)?.cast_into_unchecked())
    }
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
