//! Creating asyncio's own C `Future` and `Task` objects without going through Python code.
//!
//! Every task and future costs one `create_task`/`create_future` call and one `get_debug` call
//! (the C `Future.__init__` asks the loop), so all three are Rust. The constructors are called
//! through vectorcall with interned keyword names: no argument tuple or kwargs dict is built.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

static FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static KW_LOOP: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static ASYNCIO_CREATE_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// asyncio's `BaseEventLoop.create_task` (a plain function: pass the loop first).
pub fn asyncio_create_task(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(ASYNCIO_CREATE_TASK
        .get_or_try_init(py, || {
            py.import("asyncio.base_events")?
                .getattr("BaseEventLoop")?
                .getattr("create_task")
                .map(Bound::unbind)
        })?
        .bind(py))
}

fn asyncio_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    Ok(cell
        .get_or_try_init(py, || py.import("asyncio")?.getattr(name).map(Bound::unbind))?
        .bind(py))
}

/// The most positional arguments `call_with_loop` passes (`Task(coro, loop=...)`).
const MAX_POSITIONAL: usize = 1;

/// Calls `callable(*positional, loop=loop_)`.
fn call_with_loop<'py>(
    callable: &Bound<'py, PyAny>,
    positional: &[&Bound<'py, PyAny>],
    loop_: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let kwnames = KW_LOOP.get_or_init(py, || PyTuple::new(py, ["loop"]).expect("a one-string tuple").unbind());
    // On the stack: this runs for every task and future (a `Vec` was a malloc and a free each).
    let mut args = [std::ptr::null_mut::<ffi::PyObject>(); MAX_POSITIONAL + 1];
    assert!(positional.len() <= MAX_POSITIONAL, "call_with_loop: too many arguments");
    for (slot, a) in args.iter_mut().zip(positional) {
        *slot = a.as_ptr();
    }
    args[positional.len()] = loop_.as_ptr();
    // SAFETY: `args` holds borrowed pointers kept alive by the `Bound`s above for the whole call:
    // `positional.len()` positional arguments followed by one keyword value named by `kwnames`.
    // The result is a new reference or null with an exception set.
    unsafe {
        let res = ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), positional.len(), kwnames.as_ptr());
        Bound::from_owned_ptr_or_err(py, res)
    }
}

/// `asyncio.Future(loop=loop_)`.
pub fn new_future<'py>(loop_: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let future = asyncio_attr(loop_.py(), &FUTURE, "Future")?;
    call_with_loop(future, &[], loop_)
}

/// `asyncio.Task(coro, loop=loop_, **kwargs)`, as `BaseEventLoop.create_task` makes it when no
/// task factory is set.
pub fn new_task<'py>(
    loop_: &Bound<'py, PyAny>,
    coro: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let task = asyncio_attr(loop_.py(), &TASK, "Task")?;
    match kwargs.filter(|k| !k.is_empty()) {
        None => call_with_loop(task, &[coro], loop_),
        Some(kwargs) => {
            let kwargs = kwargs.copy()?;
            kwargs.set_item("loop", loop_)?;
            task.call((coro,), Some(&kwargs))
        }
    }
}
