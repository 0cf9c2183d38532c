//! Small free functions of the loop: the closed-loop error and `create_task`'s keyword check.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

pub(super) fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// Whether `name` is a keyword of `create_task` that every version passes to `Task` as it is when
/// no task factory is set: `name` or `context`.
pub fn is_plain_task_keyword(name: &Bound<'_, PyAny>) -> bool {
    name.cast::<PyString>()
        .is_ok_and(|n| n.to_str().is_ok_and(|n| n == "name" || n == "context"))
}
