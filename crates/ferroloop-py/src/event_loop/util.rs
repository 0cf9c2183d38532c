//! Small free functions of the loop: the closed-loop error, the clock, the current context, and
//! `create_task`'s keyword check.

use ferroloop_core::clock::{monotonic_ns, ns_to_secs};
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

pub(super) fn closed_error() -> PyErr {
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

/// Whether `name` is a keyword of `create_task` that every version passes to `Task` as it is when
/// no task factory is set: `name` or `context`.
pub fn is_plain_task_keyword(name: &Bound<'_, PyAny>) -> bool {
    name.cast::<PyString>()
        .is_ok_and(|n| n.to_str().is_ok_and(|n| n == "name" || n == "context"))
}
